"""The part of ``package --format kserve`` that needs KServe's SDK, run as a child process of
package/kserve.py (``import kserve`` loads gRPC protos that clash with tritonclient's in one
process).  Reads one JSON request on stdin, writes one JSON answer line on stdout:

    {"action": "build", "name", "base", "options", "requirements", "triton"} -> {"documents": {file: [kind, doc]}}
    {"action": "validate", "document", "kind", "path"}                          -> {"ok": true}

An error is ``{"error": "..."}``.  Every manifest is built from KServe's own classes (and the
Kubernetes client's) and validated strictly: their own deserializer drops unknown fields
and coerces types, so validation walks the document against the classes' declared types.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import InvalidOptionError, require
from .kserve import DEFAULT_IMAGE, PORT, TRITON_IMAGE, KServeOptions


def _sdk():
    require("kserve", "kserve")
    from kserve import ApiClient, models
    from kubernetes import client

    return models, client, ApiClient()


def _edgeport_service(name: str, bundle_uri: str, options: KServeOptions, requirements: list[str]):
    models, k8s, _ = _sdk()
    # The folder, not the archive: KServe's storage initializer unpacks a single archive it
    # downloads (and deletes it), and copies one from a volume as it is; edgeport serve opens
    # a folder holding just one bundle either way.
    serve = ["edgeport", "serve", "/mnt/models", "--host", "0.0.0.0", "--port", str(PORT), "--name", name]
    if options.image:
        command, args = serve[:1], serve[1:]
    else:
        # The version the bundle was made with, as its requirements.txt pins it, with the serve extra.
        pin = next((r.removeprefix("edgeport") for r in requirements if r.startswith("edgeport==")), "")
        install = " ".join(f"'{r}'" for r in requirements if not r.startswith("edgeport=="))
        command = ["sh", "-c"]
        args = [f"pip install --no-cache-dir 'edgeport[serve]{pin}' {install} && exec {' '.join(serve)}"]
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



def _build(request: dict) -> dict:
    options = KServeOptions(**request["options"])
    name, base = request["name"], request["base"]
    _, _, api = _sdk()
    documents = {"inferenceservice-edgeport.yaml": ("V1beta1InferenceService", _edgeport_service(
        name, f"{base}/bundle/{name}.tar.gz", options, request["requirements"]))}
    if request["triton"]:
        documents["inferenceservice-triton.yaml"] = ("V1beta1InferenceService",
                                                     _triton_service(name, f"{base}/triton", options))
        documents["servingruntime-triton.yaml"] = ("V1alpha1ServingRuntime", _triton_runtime(options))
    plain = {file: (kind, api.sanitize_for_serialization(obj)) for file, (kind, obj) in documents.items()}
    for file, (kind, document) in plain.items():
        validate(document, kind, file)
    return {"documents": plain}


def main() -> None:
    from ..errors import EdgeportError

    request = json.loads(sys.stdin.read())
    try:
        if request["action"] == "build":
            answer = _build(request)
        else:
            validate(request["document"], request["kind"], request.get("path", "$"))
            answer = {"ok": True}
    except EdgeportError as exc:
        answer = {"error": str(exc)}
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
