"""Steps cached by content: a step's key is the hash of everything its result depends on
(input file hashes or manifest digests, parameters, tool versions).  A step whose key and
output are unchanged is not run again, so editing the benchmark section of a recipe does
not re-export the model."""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Any

from ..manifest import tool_versions

CACHE_FOLDER = ".ship-cache"
VERSIONS = tool_versions("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-genai", "peft")


def folder_digest(path: Path) -> str:
    """sha256 over every file of a folder (names and contents), or of one file."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


class StepCache:
    def __init__(self, root: Path, force: bool = False):
        self.folder = root / CACHE_FOLDER
        self.force = force

    @staticmethod
    def key(step: str, **inputs: Any) -> str:
        payload = json.dumps({"step": step, "inputs": inputs, "versions": VERSIONS}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _record(self, step: str) -> Path:
        return self.folder / f"{step}.json"

    def _read(self, step: str) -> dict:
        try:
            record = json.loads(self._record(step).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def hit(self, step: str, key: str, output: Path) -> bool:
        """The step ran with this very key and its output is still there, byte for byte as it
        wrote it (a truncated bundle or an edited artifact is made again)."""
        if self.force or not output.exists():
            return False
        return self._read(step).get("key") == key and self.wrote(step, output)

    def wrote(self, step: str, output: Path) -> bool:
        """Whether ``output`` is, byte for byte, what ``step`` last wrote (not a file of the
        user's put in its place)."""
        recorded = self._read(step).get("digest")
        try:
            return recorded is not None and recorded == folder_digest(output)
        except OSError:
            return False

    def steps(self, prefix: str) -> list[str]:
        """The steps with a record whose name starts with ``prefix``."""
        return sorted(record.stem for record in self.folder.glob(f"{glob.escape(prefix)}*.json"))

    def store(self, step: str, key: str, output: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "output": str(output), "digest": folder_digest(output)}
        self._record(step).write_text(json.dumps(record) + "\n", encoding="utf-8")

    def forget(self, step: str) -> None:
        self._record(step).unlink(missing_ok=True)
