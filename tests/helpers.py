"""Assertions the tests share: a CLI failure that speaks to a person, and what is on disk."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path


def folder_names(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()} if path.exists() else set()


def assert_fails(result, exit_code: int, *phrases: str, absent: Path | None = None) -> None:
    """The command failed with ``exit_code``, printed ``error: ...`` with every phrase and no
    traceback, and (when given) ``absent`` does not exist."""
    assert result.exit_code == exit_code, result.output
    assert result.output.startswith("error: ") or "\nerror: " in result.output, result.output
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output, result.output
    if absent is not None:
        assert not absent.exists(), f"{absent} was written"

TESTS_DIR = Path(__file__).parent


def cosines(a, b):
    """Row-wise cosine similarity of two [N, D] arrays."""
    import numpy as np

    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def edit_manifest(folder: Path, edit, reseal: bool = True) -> None:
    """Apply ``edit(data)`` to the artifact's edgeport.json.  ``reseal``: recompute its seal, as
    someone who knows the format would (what is tested then is the check behind the seal)."""
    import json

    from edgeport.manifest import seal_of

    path = folder / "edgeport.json"
    data = json.loads(path.read_text())
    edit(data)
    if reseal and "seal" in data:
        data["seal"] = seal_of(data)
    path.write_text(json.dumps(data))


def rewrite_bundle(bundle: Path, out: Path, edit) -> Path:
    """``bundle`` re-packed into ``out`` with ``edit(members)`` applied to its list of
    (TarInfo, bytes or None), in order: the way a hostile or careless hand changes a bundle."""
    with tarfile.open(bundle) as archive:
        members = [(m, archive.extractfile(m).read() if m.isfile() else None) for m in archive.getmembers()]
    edit(members)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for info, payload in members:
            archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
    out.write_bytes(gzip.compress(raw.getvalue()))
    return out


def tar_member(name: str, payload: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    """A regular-file member ``name`` holding ``payload``, for ``rewrite_bundle`` edits."""
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload
