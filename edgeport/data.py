"""Input data: real sentences and images bundled with Python and scikit-learn, and readers
for the files users pass with ``--data`` / ``--calib``.

Readers stay small, in the spirit of onnxruntime.quantization's CalibrationDataReader:
each returns plain Python / numpy values, and the model's own processing turns them into
feeds.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import CalibrationDataError

# Standard-library modules whose docstrings give real English sentences of many lengths.
_DOC_MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "collections", "configparser", "contextlib",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "fractions",
    "ftplib", "functools", "gettext", "glob", "gzip", "heapq", "hmac", "http.client",
    "imaplib", "inspect", "ipaddress", "itertools", "json", "logging", "mailbox",
    "multiprocessing.pool", "numbers", "operator", "optparse", "os", "pathlib", "pickle",
    "pprint", "queue", "random", "re", "shlex", "shutil", "smtplib", "socket", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "traceback", "typing", "unittest.case", "urllib.parse", "uuid", "warnings",
    "weakref", "zipfile",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@lru_cache(maxsize=1)
def _all_docstring_sentences() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for module_name in _DOC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module)]
        for name in sorted(vars(module)):
            if not name.startswith("_"):
                docs.append(inspect.getdoc(getattr(module, name)))
        for doc in docs:
            if not doc:
                continue
            for paragraph in doc.split("\n\n"):
                text = " ".join(paragraph.split())
                for sentence in _SENTENCE_END.split(text):
                    if 30 <= len(sentence) <= 400 and sentence[0].isalpha() and ">>>" not in sentence:
                        seen.setdefault(sentence, None)
    return tuple(seen)


def stdlib_sentences(count: int = 200, offset: int = 0) -> list[str]:
    """``count`` real English sentences from standard-library docstrings, deterministic.

    Sentences are interleaved across the whole pool so a small sample still mixes
    modules and lengths.
    """
    pool = _all_docstring_sentences()
    if count + offset > len(pool):
        raise ValueError(f"only {len(pool)} docstring sentences are available")
    stride = max(1, len(pool) // (count + offset))
    picked = [pool[(i * stride) % len(pool)] for i in range(offset, offset + count)]
    return picked


def digits_images(count: int | None = None, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits as float32 [N, 1, 8, 8] in [0, 1], and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    end = None if count is None else offset + count
    return images[offset:end], labels[offset:end]


def resize_images(images: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """Nearest-neighbour resize of [N, C, H, W] images and channel repeat (numpy only)."""
    n, c, h, w = images.shape
    rows = (np.arange(size[0]) * h // size[0]).clip(0, h - 1)
    cols = (np.arange(size[1]) * w // size[1]).clip(0, w - 1)
    out = images[:, :, rows][:, :, :, cols]
    if c != channels:
        out = np.repeat(out[:, :1], channels, axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


# ---------------------------------------------------------------- user data files

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def read_examples(path: str | Path, limit: int | None = None):
    """Read examples for calibration or evaluation.

    Returns ``("text", [str, ...])``, ``("images", float32 array [N, C, H, W])`` or
    ``("feeds", {input name: array})`` depending on what the file holds:

    - ``.txt``: one text example per non-empty line;
    - ``.jsonl``: one JSON object a line with a ``"text"`` field, or with one field per
      model input (arrays of numbers), which become feeds;
    - ``.npz``: one array per model input name, batch on axis 0;
    - a folder of images (needs Pillow).
    """
    path = Path(path)
    if not path.exists():
        raise CalibrationDataError(f"data '{path}' does not exist")
    if path.is_dir():
        kind, data = "images", _read_image_folder(path)
    elif path.suffix == ".npz":
        kind, data = "feeds", _read_npz(path)
    elif path.suffix == ".jsonl":
        kind, data = _read_jsonl(path)
    else:
        kind, data = "text", _read_text(path)
    count = len(next(iter(data.values()))) if kind == "feeds" else len(data)
    if count == 0:
        raise CalibrationDataError(f"data '{path}' holds no examples")
    if limit is not None:
        data = {k: v[:limit] for k, v in data.items()} if kind == "feeds" else data[:limit]
    return kind, data


def _read_text(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CalibrationDataError(f"'{path}' is not UTF-8 text ({exc}); give one example per line") from exc
    return [line.strip() for line in lines if line.strip()]


def _read_jsonl(path: Path):
    texts, feeds = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationDataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise CalibrationDataError(f"{path}:{number}: each line must be a JSON object")
        if "text" in record:
            texts.append(str(record["text"]))
        else:
            for key, value in record.items():
                feeds.setdefault(key, []).append(value)
    if texts and feeds:
        raise CalibrationDataError(f"{path}: mixes 'text' records with raw input records; use one kind")
    if texts or not feeds:
        return "text", texts
    try:
        return "feeds", {k: np.asarray(v) for k, v in feeds.items()}
    except ValueError as exc:
        raise CalibrationDataError(f"{path}: records of one input have different shapes ({exc})") from exc


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            feeds = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise CalibrationDataError(f"cannot read '{path}' as .npz ({exc})") from exc
    lengths = {len(v) if v.ndim else 0 for v in feeds.values()}
    if len(lengths) > 1:
        raise CalibrationDataError(f"'{path}': arrays differ in batch size {sorted(lengths)}")
    return feeds


def _read_image_folder(path: Path) -> np.ndarray:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationDataError(f"folder '{path}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        from PIL import Image
    except ImportError as exc:
        raise CalibrationDataError("reading an image folder needs Pillow: pip install pillow") from exc
    arrays = []
    for file in files:
        with Image.open(file) as image:
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise CalibrationDataError(f"images in '{path}' differ in size {sorted(shapes)}; resize them to one size")
    return np.stack(arrays).transpose(0, 3, 1, 2)
