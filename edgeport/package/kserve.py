"""``edgeport package --format kserve``: what a Kubernetes cluster with KServe needs to serve an
artifact, in one folder to upload and apply:

    <out>/bundle/<name>.tar.gz               the bundle (edgeport serve runs it)
    <out>/triton/                            a Triton model repository (for formats Triton serves)
    <out>/inferenceservice-edgeport.yaml     a custom predictor running `edgeport serve` on the bundle
    <out>/inferenceservice-triton.yaml       the Triton runtime over the repository ...
    <out>/servingruntime-triton.yaml         ... and the ServingRuntime it names
    <out>/README.txt                         where to upload what, and the kubectl commands

Resources, replicas (KServe scales between min and max), the storage URI the folder is
uploaded to, the serving image and the Kubernetes Secret holding the bearer token are
settings.  Every manifest is built from KServe's own SDK classes (and the Kubernetes
client's) and validated against them strictly before anything is written: an unknown field
or a wrong type is an error, where their own deserializer would drop or coerce it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import Artifact
from ..errors import InvalidOptionError, require
from ..outputs import KSERVE_FOLDER, staged_output
from ..runtime.formats import format_of
from .bundle import bundle_bytes
from .triton import TritonOptions, write_model

MARKER = ".edgeport-kserve.json"
PORT = 8080
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
DEFAULT_IMAGE = "python:3.11-slim"       # edgeport and the bundle's requirements installed when the pod starts
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class KServeOptions:
    name: str | None = None                 # the InferenceService name (default: from the artifact folder)
    namespace: str = "default"
    storage_uri: str | None = None          # where <out> is uploaded (default pvc://edgeport-models/<name>)
    image: str | None = None                # an image with edgeport installed (default: installed at start)
    cpu: str = "1"
    memory: str = "2Gi"
    min_replicas: int = 1
    max_replicas: int = 1
    auth_secret: str | None = None          # a Secret whose key "token" becomes EDGEPORT_AUTH_TOKEN

    def check(self) -> None:
        for option, value in (("--name", self.name), ("--namespace", self.namespace),
                              ("--auth-secret", self.auth_secret)):
            if value is not None and not DNS_NAME.match(value):
                raise InvalidOptionError(f"{option} '{value}' must be a Kubernetes name: lowercase letters, digits "
                                         "and '-', at most 63 characters")
        for option, value in (("--cpu", self.cpu), ("--memory", self.memory)):
            if not QUANTITY.match(str(value)):
                raise InvalidOptionError(f"{option} '{value}' is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
        for option, value in (("--min-replicas", self.min_replicas), ("--max-replicas", self.max_replicas)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidOptionError(f"{option} must be a whole number >= 0 (got {value!r})")
        if self.max_replicas < max(1, self.min_replicas):
            raise InvalidOptionError("--max-replicas must be >= --min-replicas and >= 1")
        if self.storage_uri is not None and "://" not in self.storage_uri:
            raise InvalidOptionError(f"--storage-uri '{self.storage_uri}' must be a URI KServe can fetch (s3://, "
                                     "gs://, pvc://, https://...)")


def _sdk():
    require("kserve", "kserve")
    from kserve import ApiClient, models
    from kubernetes import client

    return models, client, ApiClient()


def _edgeport_service(name: str, bundle_uri: str, options: KServeOptions, requirements: list[str]):
    models, k8s, _ = _sdk()
    bundle_path = f"/mnt/models/{name}.tar.gz"
    serve = ["edgeport", "serve", bundle_path, "--host", "0.0.0.0", "--port", str(PORT), "--name", name]
    if options.image:
        command, args = serve[:1], serve[1:]
    else:
        install = " ".join(f"'{r}'" for r in requirements if not r.startswith("edgeport=="))
        command = ["sh", "-c"]
        args = [f"pip install --no-cache-dir 'edgeport[serve]' {install} && exec {' '.join(serve)}"]
    env = [k8s.V1EnvVar(name="STORAGE_URI", value=bundle_uri)]   # KServe's storage initializer fetches it
    if options.auth_secret:
        env.append(k8s.V1EnvVar(name="EDGEPORT_AUTH_TOKEN", value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=options.auth_secret, key="token"))))
    probe = {"ready": k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path="/v2/health/ready", port=PORT),
                                  initial_delay_seconds=10, period_seconds=10),
             "live": k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path="/v2/health/live", port=PORT),
                                 initial_delay_seconds=30, period_seconds=15)}
    container = k8s.V1Container(
        name="kserve-container", image=options.image or DEFAULT_IMAGE, command=command, args=args, env=env,
        ports=[k8s.V1ContainerPort(container_port=PORT, protocol="TCP")], resources=_resources(k8s, options),
        readiness_probe=probe["ready"], liveness_probe=probe["live"])
    return models.V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1", kind="InferenceService",
        metadata=_metadata(k8s, name, options),
        spec=models.V1beta1InferenceServiceSpec(predictor=models.V1beta1PredictorSpec(
            min_replicas=options.min_replicas, max_replicas=options.max_replicas, containers=[container])))


def _triton_service(name: str, repository_uri: str, options: KServeOptions):
    models, k8s, _ = _sdk()
    return models.V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1", kind="InferenceService",
        metadata=_metadata(k8s, f"{name}-triton", options),
        spec=models.V1beta1InferenceServiceSpec(predictor=models.V1beta1PredictorSpec(
            min_replicas=options.min_replicas, max_replicas=options.max_replicas,
            model=models.V1beta1ModelSpec(model_format=models.V1beta1ModelFormat(name="triton", version="2"),
                                          runtime="edgeport-triton", protocol_version="v2",
                                          storage_uri=repository_uri, resources=_resources(k8s, options)))))


def _triton_runtime(options: KServeOptions):
    models, k8s, _ = _sdk()
    return models.V1alpha1ServingRuntime(
        api_version="serving.kserve.io/v1alpha1", kind="ServingRuntime",
        metadata=k8s.V1ObjectMeta(name="edgeport-triton", namespace=options.namespace),
        spec=models.V1alpha1ServingRuntimeSpec(
            supported_model_formats=[models.V1alpha1SupportedModelFormat(name="triton", version="2",
                                                                         auto_select=True)],
            protocol_versions=["v2"],
            containers=[k8s.V1Container(
                name="kserve-container", image=TRITON_IMAGE, command=["tritonserver"],
                args=["--model-repository=/mnt/models", f"--http-port={PORT}", "--grpc-port=9000",
                      "--allow-http=true", "--allow-grpc=true"],
                ports=[k8s.V1ContainerPort(container_port=PORT, protocol="TCP")],
                resources=_resources(k8s, options))]))


def _metadata(k8s, name: str, options: KServeOptions):
    return k8s.V1ObjectMeta(name=name, namespace=options.namespace,
                            labels={"app.kubernetes.io/managed-by": "edgeport"},
                            annotations={"serving.kserve.io/deploymentMode": "Standard"})


def _resources(k8s, options: KServeOptions):
    amounts = {"cpu": str(options.cpu), "memory": str(options.memory)}
    return k8s.V1ResourceRequirements(requests=amounts, limits=amounts)


# ------------------------------------------------------------------ validation

def validate(document: dict, kind: str, path: str = "$") -> None:
    """Check a manifest (plain, camelCase) against KServe's SDK class for ``kind`` and the
    Kubernetes client's classes under it: every field known, every value of its type,
    required fields present.  (KServe's own ApiClient deserializer drops unknown fields and
    coerces types; the Kubernetes client's pydantic models are strict.)"""
    models, _, _ = _sdk()
    try:
        _strict(document, kind, path, models)
    except (TypeError, ValueError) as exc:
        raise InvalidOptionError(f"the {kind} manifest edgeport built is invalid: {exc}") from exc


def _strict(data: Any, klass: str, path: str, models) -> None:
    if data is None:
        return
    if klass.startswith("list["):
        if not isinstance(data, list):
            raise TypeError(f"{path}: expected a list, got {type(data).__name__}")
        for index, value in enumerate(data):
            _strict(value, klass[5:-1], f"{path}[{index}]", models)
        return
    if klass.startswith("dict("):
        if not isinstance(data, dict):
            raise TypeError(f"{path}: expected a mapping, got {type(data).__name__}")
        for key, value in data.items():
            _strict(value, klass[5:-1].split(", ", 1)[1], f"{path}.{key}", models)
        return
    primitives = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object, "datetime": str}
    if klass in primitives:
        if not isinstance(data, primitives[klass]) or (klass in ("int", "float") and isinstance(data, bool)):
            raise TypeError(f"{path}: expected {klass}, got {type(data).__name__} {data!r}")
        return
    cls = getattr(models, klass, None)
    if cls is None:                                       # a Kubernetes type: strict pydantic models
        from kubernetes.client import models as k8s_models

        try:
            getattr(k8s_models, klass).model_validate(data)
        except Exception as exc:       # pydantic's ValidationError, or a type it does not know
            errors = exc.errors() if hasattr(exc, "errors") else [{"loc": (), "msg": str(exc)}]
            where = ".".join(map(str, errors[0]["loc"]))
            raise ValueError(f"{path}.{where}: {errors[0]['msg']} ({klass})") from None
        return
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a {klass} mapping, got {type(data).__name__}")
    fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown} for {klass}")
    for key, value in data.items():
        _strict(value, cls.openapi_types[fields[key]], f"{path}.{key}", models)
    try:
        cls(**{fields[key]: value for key, value in data.items()})   # the SDK's required-field checks
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# ------------------------------------------------------------------ writing

def _yaml(document: dict) -> str:
    import yaml

    return yaml.safe_dump(document, sort_keys=False)


def package_kserve(artifact_path, out, options: KServeOptions = KServeOptions(), force: bool = False) -> Path:
    options.check()
    require("yaml", "export")
    artifact = Artifact.load(artifact_path)
    name = options.name or _kubernetes_name(Path(artifact_path).name)
    base = (options.storage_uri or f"pvc://edgeport-models/{name}").rstrip("/")
    _, _, api = _sdk()
    bundle = bundle_bytes(artifact, name)
    requirements = json.loads(_bundle_meta(bundle))["runtime_requirements"]
    documents = {"inferenceservice-edgeport.yaml": ("V1beta1InferenceService",
                                                    _edgeport_service(name, f"{base}/bundle/{name}.tar.gz", options,
                                                                      requirements))}
    triton = format_of(artifact).triton is not None and artifact.task != "text-generation"
    if triton:
        documents["inferenceservice-triton.yaml"] = ("V1beta1InferenceService",
                                                     _triton_service(name, f"{base}/triton", options))
        documents["servingruntime-triton.yaml"] = ("V1alpha1ServingRuntime", _triton_runtime(options))
    plain = {file: (kind, api.sanitize_for_serialization(obj)) for file, (kind, obj) in documents.items()}
    for file, (kind, document) in plain.items():
        validate(document, kind, file)
    with staged_output(out, force, (artifact_path,), KSERVE_FOLDER) as folder:
        (folder / "bundle").mkdir()
        (folder / "bundle" / f"{name}.tar.gz").write_bytes(bundle)
        if triton:
            (folder / "triton").mkdir()
            write_model(folder / "triton", artifact, name.replace("-", "_"), TritonOptions(instances=1))
        for file, (_, document) in plain.items():
            (folder / file).write_text(_yaml(document))
        (folder / "README.txt").write_text(_readme(name, base, options, triton))
        (folder / MARKER).write_text(json.dumps({"name": name, "manifest_sha256": artifact.manifest_sha256,
                                                 "files": sorted(plain)}, indent=2) + "\n")
    return Path(out)


def _bundle_meta(bundle: bytes) -> str:
    import gzip
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bundle))) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("/bundle.json"))
        return archive.extractfile(member).read().decode()


def _kubernetes_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    if not name:
        raise InvalidOptionError(f"cannot make a Kubernetes name from '{text}'; give --name")
    return name


def _readme(name: str, base: str, options: KServeOptions, triton: bool) -> str:
    lines = [f"edgeport deployment of '{name}' for KServe (namespace {options.namespace})", "",
             f"1. Upload this folder to {base} (bundle/ and{' triton/ and' if triton else ''} the manifests).",
             "2. Create the token Secret the predictor reads (if any):",
             f"   kubectl -n {options.namespace} create secret generic {options.auth_secret} --from-literal=token=..."
             if options.auth_secret else "   (no --auth-secret: the predictor serves without a token)",
             "3. Apply the edgeport predictor:",
             f"   kubectl -n {options.namespace} apply -f inferenceservice-edgeport.yaml"]
    if triton:
        lines += ["   or Triton over the model repository:",
                  f"   kubectl -n {options.namespace} apply -f servingruntime-triton.yaml -f inferenceservice-triton.yaml"]
    lines += ["", "Both speak the Open Inference Protocol v2 (/v2/models/NAME/infer); the edgeport predictor also has "
              f"/v2/models/{name}/text and, for causal LMs, the OpenAI endpoints."]
    return "\n".join(lines) + "\n"
