"""Artifacts: a folder holding a model, its pre-processing files and ``edgeport.json``.

Every stage reads an artifact and writes a new one.  Writing is atomic: the stage fills
a temporary sibling folder, the manifest (with the sha256 of every file) is written
last, and the folder is renamed into place.  Loading validates the manifest's schema
and, by default, every checksum, so a truncated or tampered file is caught before use.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError, InvalidOptionError, OutputExistsError

MANIFEST_NAME = "edgeport.json"
GOLDEN_NAME = "golden.npz"
SCHEMA_VERSION = 1

TASKS = (
    "feature-extraction",
    "text-classification",
    "token-classification",
    "image-classification",
    "text-generation",
    "custom",
)
GRAPH_FORMATS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def tool_versions(*packages: str) -> dict[str, str]:
    """Versions of edgeport, Python and the given packages, for lineage entries."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("edgeport", *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class Manifest:
    """The contents of ``edgeport.json``; see docs/manifest.md for every field."""

    task: str
    graph: dict[str, Any]
    processing: dict[str, Any] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=lambda: {"mode": "fp32"})
    parity: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "task": self.task,
            "processing": self.processing,
            "graph": self.graph,
            "precision": self.precision,
            "parity": self.parity,
            "files": self.files,
            "lineage": self.lineage,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> "Manifest":
        problems = _schema_problems(data)
        if problems:
            raise ArtifactError(f"{where} is not a valid edgeport manifest: " + "; ".join(problems))
        return cls(
            task=data["task"],
            graph=data["graph"],
            processing=data.get("processing", {}),
            precision=data.get("precision", {"mode": "fp32"}),
            parity=data.get("parity", {}),
            files=data["files"],
            lineage=data.get("lineage", []),
            schema_version=data["schema_version"],
        )

    def add_lineage(self, stage: str, parameters: dict[str, Any], tools: dict[str, str],
                    sources: dict[str, str] | None = None, **extra: Any) -> None:
        entry = {"stage": stage, "parameters": parameters, "tools": tools,
                 "sources": sources or {}, "time": now_iso()}
        entry.update(extra)
        self.lineage.append(entry)


def _schema_problems(data: Any) -> list[str]:
    if not isinstance(data, dict):
        return ["the top level must be a JSON object"]
    problems = []
    version = data.get("schema_version")
    if not isinstance(version, int):
        problems.append("'schema_version' is missing")
    elif version > SCHEMA_VERSION:
        problems.append(f"schema_version {version} is newer than this edgeport understands "
                        f"({SCHEMA_VERSION}); upgrade edgeport")
    if data.get("task") not in TASKS:
        problems.append(f"'task' must be one of {', '.join(TASKS)} (got {data.get('task')!r})")
    graph = data.get("graph")
    if not isinstance(graph, dict):
        problems.append("'graph' is missing")
    else:
        if graph.get("format") not in GRAPH_FORMATS:
            problems.append(f"'graph.format' must be one of {', '.join(GRAPH_FORMATS)}")
        if not isinstance(graph.get("file"), str):
            problems.append("'graph.file' is missing")
        for key in ("inputs", "outputs"):
            specs = graph.get(key)
            if not isinstance(specs, list) or not all(
                isinstance(s, dict) and {"name", "dtype", "shape"} <= s.keys() for s in specs
            ):
                problems.append(f"'graph.{key}' must list objects with name, dtype and shape")
    files = data.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and "sha256" in v and "size" in v for v in files.values()
    ):
        problems.append("'files' must map each file name to its sha256 and size")
    precision = data.get("precision", {})
    if not isinstance(precision, dict) or precision.get("mode", "fp32") not in PRECISIONS:
        problems.append(f"'precision.mode' must be one of {', '.join(PRECISIONS)}")
    if not isinstance(data.get("lineage", []), list):
        problems.append("'lineage' must be a list")
    return problems


@dataclass
class Artifact:
    """A loaded artifact folder."""

    path: Path
    manifest: Manifest

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Artifact":
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"no artifact at '{path}': the folder does not exist")
        if not path.is_dir():
            raise ArtifactError(f"'{path}' is a file, not an artifact folder")
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ArtifactError(
                f"'{path}' has no {MANIFEST_NAME}: it is not an edgeport artifact "
                "(make one with 'edgeport export onnx')"
            )
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); the artifact is damaged") from exc
        artifact = cls(path, Manifest.from_dict(data, str(manifest_path)))
        if artifact.manifest.graph["file"] not in artifact.manifest.files:
            raise ArtifactError(f"{manifest_path}: the graph file is not listed under 'files'")
        if verify:
            artifact.verify()
        return artifact

    def verify(self) -> None:
        """Check size and sha256 of every listed file; raise on the first mismatch."""
        for name, entry in self.manifest.files.items():
            file = self._member(name)
            if not file.is_file():
                raise ArtifactError(f"artifact '{self.path}' is missing its file '{name}'")
            size = file.stat().st_size
            if size != entry["size"]:
                raise ArtifactError(
                    f"'{file}' is {size} bytes but the manifest says {entry['size']}: "
                    "the file was truncated or replaced; re-create the artifact"
                )
            if sha256_file(file) != entry["sha256"]:
                raise ArtifactError(
                    f"'{file}' does not match its sha256 in the manifest: the file was "
                    "modified or corrupted; re-create the artifact"
                )

    def _member(self, name: str) -> Path:
        member = (self.path / name).resolve()
        if self.path.resolve() not in member.parents:
            raise ArtifactError(f"manifest lists '{name}', which lies outside the artifact")
        return member

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def model_path(self) -> Path:
        return self._member(self.manifest.graph["file"])

    @property
    def golden_path(self) -> Path | None:
        path = self.path / GOLDEN_NAME
        return path if GOLDEN_NAME in self.manifest.files else None

    def golden(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The inputs export validated with and the reference (PyTorch) outputs."""
        from .golden import load_golden

        return load_golden(self.golden_path) if self.golden_path else None

    def file(self, name: str) -> Path | None:
        return self._member(name) if name in self.manifest.files else None

    def size_bytes(self) -> int:
        return sum(entry["size"] for entry in self.manifest.files.values())


def check_output_path(out: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing output unless forced; refuse an output that is a file."""
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"'{out}' already exists; choose another -o or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise InvalidOptionError(f"'{out}' exists and is a file; -o must name a folder")
    return out


def finalize_manifest(folder: Path, manifest: Manifest) -> None:
    """Hash every file in ``folder`` into the manifest, then write the manifest."""
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder).as_posix()
        if name == MANIFEST_NAME:
            continue
        files[name] = {"sha256": sha256_file(file), "size": file.stat().st_size}
    manifest.files = files
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False, default=_json_default)
    (folder / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a manifest")


@contextlib.contextmanager
def staging_folder(out: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success rename it to ``out``.

    On any exception the temporary folder is removed and ``out`` is left untouched.
    With ``force`` an existing ``out`` is replaced only after the new one is complete.
    """
    out = check_output_path(out, force)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        _replace(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(new: Path, out: Path, force: bool) -> None:
    if out.exists():
        if not force:  # appeared while we worked
            raise OutputExistsError(f"'{out}' appeared while writing; pass --force to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)
