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
from dataclasses import asdict, dataclass
from pathlib import Path

from ..artifact import Artifact
from ..errors import InvalidOptionError, require
from ..outputs import KSERVE_FOLDER, staged_output
from ..runtime.formats import format_of
from .bundle import bundle_bytes
from .triton import TritonOptions, write_model
from ..processes import python_module

MARKER = ".edgeport-kserve.json"
PORT = 8080
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
DEFAULT_IMAGE = "python:3.11-slim"       # edgeport and the bundle's requirements installed when the pod starts
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# What KServe's storage initializer downloads (Azure storage is reached over https://).
STORAGE_SCHEMES = ("s3", "gs", "pvc", "https", "http", "hdfs", "webhdfs")


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
            if not re.search(r"[1-9]", str(value)):     # a limit of 0: a pod that can never run the model
                raise InvalidOptionError(f"{option} '{value}' is zero; each replica needs some (e.g. 500m, 2, 4Gi)")
        for option, value in (("--min-replicas", self.min_replicas), ("--max-replicas", self.max_replicas)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidOptionError(f"{option} must be a whole number >= 0 (got {value!r})")
        if self.max_replicas < max(1, self.min_replicas):
            raise InvalidOptionError("--max-replicas must be >= --min-replicas and >= 1")
        if self.image is not None and (not self.image.strip() or any(c.isspace() for c in self.image)):
            raise InvalidOptionError(f"--image {self.image!r} is not a container image reference (e.g. "
                                     "registry.example.com/team/edgeport:0.1); leave it out to install edgeport when "
                                     "the pod starts")
        scheme, separator, rest = (self.storage_uri or "").partition("://")
        if self.storage_uri is not None and (not separator or scheme not in STORAGE_SCHEMES or not rest.strip("/")):
            raise InvalidOptionError(f"--storage-uri '{self.storage_uri}' must be a URI KServe's storage initializer "
                                     f"fetches: {', '.join(s + '://' for s in STORAGE_SCHEMES)}")


def _sdk_call(request: dict) -> dict:
    """Run ``request`` in kserve_sdk.py in a child process.  ``import kserve`` also loads
    KServe's gRPC protos, which define the same ``inference.*`` messages as tritonclient's:
    whichever is imported second in a process fails (protobuf's descriptor pool refuses
    duplicates), so the SDK never enters the caller's process."""
    import importlib.util
    import subprocess

    from ..errors import MissingDependencyError

    if importlib.util.find_spec("kserve") is None:
        raise MissingDependencyError("package --format kserve needs KServe's SDK, which is not installed; install "
                                     "it with: pip install 'edgeport[kserve]'")
    proc = subprocess.run(python_module("edgeport.package.kserve_sdk"), input=json.dumps(request),
                          capture_output=True, text=True, timeout=300)
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise InvalidOptionError(f"KServe's SDK failed: {lines[-1] if lines else 'no output'}") from None
    if "error" in answer:
        raise InvalidOptionError(answer["error"])
    return answer


def validate(document: dict, kind: str, path: str = "$") -> None:
    """Check a manifest (plain, camelCase) against KServe's SDK class for ``kind`` and the
    Kubernetes client's classes under it, strictly (kserve_sdk.py)."""
    _sdk_call({"action": "validate", "document": document, "kind": kind, "path": path})


# ------------------------------------------------------------------ writing

def _yaml(document: dict) -> str:
    import yaml

    return yaml.safe_dump(document, sort_keys=False)


def package_kserve(artifact_path, out, options: KServeOptions = KServeOptions(), force: bool = False) -> Path:
    options.check()
    require("yaml", "export")
    artifact = Artifact.load(artifact_path)
    name = options.name or _kubernetes_name(Path(artifact_path).resolve().name)     # '.' names its folder
    base = (options.storage_uri or f"pvc://edgeport-models/{name}").rstrip("/")
    bundle = bundle_bytes(artifact, name)
    requirements = json.loads(_bundle_meta(bundle))["runtime_requirements"]
    triton = format_of(artifact).triton is not None and artifact.task != "text-generation"
    built = _sdk_call({"action": "build", "name": name, "base": base, "options": asdict(options),
                       "requirements": requirements, "triton": triton})      # built and validated there
    plain = {file: tuple(entry) for file, entry in built["documents"].items()}
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
    lines += ["", ("Both speak" if triton else "It speaks") + " the Open Inference Protocol v2 "
              f"(/v2/models/NAME/infer); the edgeport predictor also has /v2/models/{name}/text and, for causal LMs, "
              "the OpenAI endpoints."]
    return "\n".join(lines) + "\n"
