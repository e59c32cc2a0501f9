"""Artifacts: a folder holding a model, its pre-processing files and ``edgeport.json``.

Every stage reads an artifact and writes a new one (through ``outputs.staged_output``).
Loading validates the whole manifest and, by default, checks every file against its
size and sha256, so a truncated or tampered file is caught before use.  Every file the
manifest names is reached through ``Artifact.member``: it must be listed (so it is
checksummed), lie inside the folder and not be a link.  The manifest itself is covered
by ``manifest_sha256``, which bundles, verify reports and later stages record.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .manifest import GOLDEN_NAME, MANIFEST_NAME, Manifest, manifest_sha256, sha256_file
from .vocabulary import BUNDLE_SUFFIXES


@dataclass
class Artifact:
    """A loaded artifact folder."""

    path: Path
    manifest: Manifest
    manifest_sha256: str

    @classmethod
    def load(cls, path: str | os.PathLike, check_files: bool = True,
             expected_manifest_sha256: str | None = None) -> "Artifact":
        if path is None or not str(path):
            raise ArtifactError("no artifact path given")
        path = Path(path)
        if not path.exists():
            if path.name.endswith(BUNDLE_SUFFIXES):
                raise ArtifactError(f"no bundle at '{path}': the file does not exist")
            raise ArtifactError(f"no artifact at '{path}': the folder does not exist")
        if not path.is_dir():
            if path.name.endswith(BUNDLE_SUFFIXES):      # run, serve and inspect open bundles; this does not
                raise ArtifactError(f"'{path}' is a bundle, and this command takes an artifact folder: give the "
                                    "folder it was packaged from, or the 'artifact' folder inside what 'tar -xzf' "
                                    "unpacks")
            raise ArtifactError(f"'{path}' is a file, not an artifact folder")
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ArtifactError(f"'{path}' has no {MANIFEST_NAME}: it is not an edgeport artifact "
                                "(make one with 'edgeport export onnx')")
        try:
            raw = manifest_path.read_bytes()
            data = json.loads(raw.decode("utf-8"))
        except OSError as exc:
            raise ArtifactError(f"cannot read {manifest_path}: {exc.strerror}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); the artifact is damaged") from exc
        digest = manifest_sha256(raw)
        if expected_manifest_sha256 is not None and digest != expected_manifest_sha256:
            raise ArtifactError(f"{manifest_path} was edited: its sha256 is {digest[:16]}..., the record says "
                                f"{expected_manifest_sha256[:16]}...; re-create the artifact or the bundle")
        artifact = cls(path, Manifest.from_dict(data, str(manifest_path)), digest)
        for name in artifact.manifest.files:
            artifact.member(name)          # every listed name is confined before anything is read
        if check_files:
            artifact.check_files()
        return artifact

    def check_files(self) -> None:
        """Check size and sha256 of every listed file; raise on the first mismatch."""
        for name, entry in self.manifest.files.items():
            file = self.member(name)
            if not file.is_file():
                raise ArtifactError(f"artifact '{self.path}' is missing its file '{name}'")
            size = file.stat().st_size
            if size != entry["size"]:
                raise ArtifactError(f"'{file}' is {size} bytes but the manifest says {entry['size']}: "
                                    "the file was truncated or replaced; re-create the artifact")
            try:
                digest = sha256_file(file)
            except OSError as exc:
                raise ArtifactError(f"cannot read '{file}': {exc.strerror or exc}") from exc
            if digest != entry["sha256"]:
                raise ArtifactError(f"'{file}' does not match its sha256 in the manifest: the file was "
                                    "modified or corrupted; re-create the artifact")

    def member(self, name: str) -> Path:
        """The file ``name`` of this artifact: listed under ``files`` (so checksummed), inside
        the folder, and not a link."""
        if name not in self.manifest.files:
            raise ArtifactError(f"the manifest names '{name}', which is not one of the artifact's checksummed files")
        candidate = self.path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"manifest lists '{name}', which lies outside the artifact")
        if candidate.is_symlink() or any(p.is_symlink() for p in candidate.parents if self.path in p.parents):
            raise ArtifactError(f"'{name}' in artifact '{self.path}' is a link; artifacts hold plain files only")
        if self.path.resolve() not in candidate.resolve().parents:
            raise ArtifactError(f"manifest lists '{name}', which lies outside the artifact")
        return candidate

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def model_path(self) -> Path:
        return self.member(self.manifest.graph["file"])

    def file(self, name: str) -> Path | None:
        """A listed file, or None when the artifact has no such file."""
        return self.member(name) if name in self.manifest.files else None

    def golden(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The inputs export validated with and the reference (PyTorch) outputs."""
        from .golden import load_golden

        path = self.file(GOLDEN_NAME)
        return load_golden(path) if path else None

    def size_bytes(self) -> int:
        return sum(entry["size"] for entry in self.manifest.files.values())


# ONNX graphs larger than this are saved with their weights in ``<graph>.data`` beside them:
# protobuf cannot serialize a message over 2 GiB.
ONNX_EXTERNAL_DATA_BYTES = 1_800_000_000


def save_onnx(model, path: Path, external: bool | None = None) -> None:
    """Save an ONNX ModelProto at ``path``; its weights go to ``<path>.data`` when ``external``
    (None: only when the model is too large for one file).  A stale data file is removed."""
    import onnx

    data_file = path.with_name(path.name + ".data")
    if data_file.exists():
        data_file.unlink()
    large = model.ByteSize() > ONNX_EXTERNAL_DATA_BYTES if external is None else external
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=data_file.name, size_threshold=1024)
    if data_file.exists():           # onnx creates it owner-only (0600); it is as public as the graph beside it
        data_file.chmod(path.stat().st_mode & 0o777)


def finalize_manifest(folder: Path, manifest: Manifest) -> None:
    """Hash every file in ``folder`` into the manifest, then write the manifest."""
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder).as_posix()
        if name == MANIFEST_NAME:
            continue
        files[name] = {"sha256": sha256_file(file), "size": file.stat().st_size}
    manifest.files = files
    (folder / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")


def copy_companions(source: Artifact, folder: Path) -> None:
    """The source artifact's files other than the graph (tokenizer, golden data, configs)."""
    graph_file = source.manifest.graph["file"]
    for name in source.manifest.files:
        if not name.startswith(graph_file) and name != MANIFEST_NAME:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.member(name), folder / name)
