"""``edgeport package --format bundle``: one reproducible archive to copy onto a device.

The layout and the reader (safe extraction, checksum verification) are
``edgeport.runtime.bundle``: a device opens bundles with the runtime alone.  The same
artifact always gives the same bytes: members sorted, times, owners and modes fixed, and
the gzip header without a time or a name.

``--target ort-mobile`` adds ONNX Runtime's mobile format (``mobile/model.ort``) and the
operator list a reduced ONNX Runtime build needs (``mobile/required_operators.config``),
made by onnxruntime's own converter.  That converter's output is not byte-stable (it wrote
one of two layouts, alternating over six runs on one model), so only portable bundles are
byte-reproducible.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from importlib import metadata
from pathlib import Path

from ..artifact import Artifact
from ..errors import InvalidOptionError, QuantizationError
from ..outputs import BUNDLE, staged_output
from ..runtime.formats import format_of
from ..runtime.bundle import (ARTIFACT_DIR, BUNDLE_FORMAT, BUNDLE_META, BUNDLE_VERSION, CHECKSUMS, REQUIREMENTS,
                              SIGNATURE, format_checksums, sha256_of)
from ..processes import python_module
from ..vocabulary import BUNDLE_SUFFIXES
from ..workdirs import work_folder

BUNDLE_TARGETS = ("portable", "ort-mobile")


def runtime_requirements(artifact: Artifact) -> list[str]:
    """The runtime's pip requirements, pinned to the versions this bundle was built and checked with."""
    names = ["edgeport", "numpy", "onnxruntime", "tokenizers", "click", *format_of(artifact).runtime_requirements]
    pins = []
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        # A local label ("2.13.0+cpu") names a build from another index (PyTorch's own);
        # pip on PyPI finds no such version, so the pin is to the public release.
        pins.append(f"{name}=={version.split('+')[0]}")
    return pins


def _mobile_files(artifact: Artifact, work: Path) -> dict[str, Path]:
    """model.ort and required_operators.config from onnxruntime's converter."""
    source = work / "model.onnx"
    source.write_bytes(artifact.model_path.read_bytes())
    data = artifact.file(artifact.manifest.graph["file"] + ".data")
    if data is not None:
        (work / data.name).write_bytes(data.read_bytes())
    proc = subprocess.run(python_module("onnxruntime.tools.convert_onnx_models_to_ort", source,
                                        "--output_dir", work / "ort"), capture_output=True, text=True)
    model, operators = work / "ort" / "model.ort", work / "ort" / "model.required_operators.config"
    if proc.returncode != 0 or not model.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise QuantizationError(f"onnxruntime could not convert the model to its mobile format: {tail[0]}")
    # The converter writes its temporary path in a comment: drop comments, keep the bundle reproducible.
    operators.write_text("".join(line for line in operators.read_text().splitlines(keepends=True)
                                 if not line.startswith("#")))
    return {"mobile/model.ort": model, "mobile/required_operators.config": operators}


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    archive.addfile(info, io.BytesIO(payload))


def _add_folder(archive: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mtime, info.mode = tarfile.DIRTYPE, 0, 0o755
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    archive.addfile(info)


def bundle_bytes(artifact: Artifact, name: str, target: str = "portable", sign: str | None = None) -> bytes:
    """The bundle for ``artifact`` as bytes (deterministic for a given artifact and target).
    With ``sign`` (a private key), the content is signed and the signature is the last
    member: everything before it stays the same bytes."""
    check_bundle_name(name)
    if target not in BUNDLE_TARGETS:
        raise InvalidOptionError(f"--target must be one of {', '.join(BUNDLE_TARGETS)} (got '{target}')")
    if target == "ort-mobile" and not format_of(artifact).mobile_convertible:
        raise InvalidOptionError(f"--target ort-mobile converts ONNX graphs to ONNX Runtime's mobile format; "
                                 f"'{artifact.path}' holds {format_of(artifact).a_description}")
    files: dict[str, bytes] = {}
    for member in sorted(artifact.manifest.files):
        files[f"{ARTIFACT_DIR}/{member}"] = artifact.member(member).read_bytes()
    files[f"{ARTIFACT_DIR}/edgeport.json"] = (artifact.path / "edgeport.json").read_bytes()
    with work_folder("edgeport-bundle-") as work:
        if target == "ort-mobile":
            for member, path in _mobile_files(artifact, Path(work)).items():
                files[member] = path.read_bytes()
    requirements = runtime_requirements(artifact)
    files[REQUIREMENTS] = ("\n".join(requirements) + "\n").encode()
    meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "name": name, "task": artifact.task,
            "precision": artifact.manifest.precision.get("mode", "fp32"), "manifest_sha256": artifact.manifest_sha256,
            "target": target, "runtime_requirements": requirements,
            # The sizes of the files outside the artifact that are not small (mobile/model.ort): the
            # reader refuses an undeclared member over 1 MiB before it extracts anything.
            "member_sizes": {m: len(payload) for m, payload in files.items() if m.startswith("mobile/")}}
    meta_bytes = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    import hashlib

    checksums = {member: hashlib.sha256(payload).hexdigest() for member, payload in files.items()}
    checksums[BUNDLE_META] = hashlib.sha256(meta_bytes).hexdigest()
    files[BUNDLE_META] = meta_bytes
    files[CHECKSUMS] = format_checksums(checksums).encode()
    signature = _signature(files, name, sign) if sign else None
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        _add_folder(archive, name)
        _add(archive, f"{name}/{BUNDLE_META}", files.pop(BUNDLE_META))
        _add(archive, f"{name}/{CHECKSUMS}", files.pop(CHECKSUMS))
        folders = sorted({str(Path(m).parent) for m in files if str(Path(m).parent) != "."}
                         | {str(p) for m in files for p in Path(m).parents if str(p) != "."})
        for folder in folders:
            _add_folder(archive, f"{name}/{folder}")
        for member in sorted(files):
            _add(archive, f"{name}/{member}", files[member])
        if signature is not None:
            _add(archive, f"{name}/{SIGNATURE}", signature)
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as handle:
        handle.write(raw.getvalue())
    return compressed.getvalue()


def check_bundle_name(name: str) -> None:
    """The bundle's top folder: every member's name starts with it, so it must be a plain,
    non-empty folder name (``out/.tar.gz`` would give members named ``/bundle.json``)."""
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise InvalidOptionError(f"the bundle name '{name}' (from -o) must be a plain file name before .tar.gz, "
                                 "e.g. -o dist/minilm-int8.tar.gz")
    if ":" in name:                 # 'c:x' names a Windows drive: readers refuse such members as absolute paths
        raise InvalidOptionError(f"the bundle name '{name}' (from -o) holds ':', which a bundle's reader takes for a "
                                 "drive letter and refuses; use '-' or '_' instead")


def _signature(files: dict[str, bytes], name: str, private_key: str) -> bytes:
    """model-signing's signature over the bundle's members as a reader extracts them."""
    from ..runtime.signing import sign_folder

    with work_folder("edgeport-sign-") as work:
        folder = Path(work) / name
        for member, payload in files.items():
            (folder / member).parent.mkdir(parents=True, exist_ok=True)
            (folder / member).write_bytes(payload)
        sign_folder(folder, Path(private_key), Path(work) / SIGNATURE)
        return (Path(work) / SIGNATURE).read_bytes()


def package_bundle(artifact_path, out, target: str = "portable", force: bool = False,
                   sign: str | None = None) -> Path:
    out = Path(out)
    if not out.name.endswith(BUNDLE_SUFFIXES):
        raise InvalidOptionError(f"-o '{out}': a bundle is a .tar.gz file")
    name = out.name.removesuffix(".tar.gz").removesuffix(".tgz")
    check_bundle_name(name)
    artifact = Artifact.load(artifact_path)
    payload = bundle_bytes(artifact, name, target, sign)
    with staged_output(out, force, (artifact_path,), BUNDLE) as staging:
        staging.write_bytes(payload)
    return out


def bundle_sha256(path: Path) -> str:
    return sha256_of(path)
