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


SENTENCES_FILE = Path(__file__).parent / "resources" / "stdlib_sentences.txt"


def extract_docstring_sentences() -> list[str]:
    """Sentences from the docstrings of ``_DOC_MODULES`` (how the bundled file was made).

    Run in a fresh interpreter: test runners and other tools patch standard-library
    objects, which changes what this returns; that is why the result is shipped as a file.
    """
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
    return list(seen)


@lru_cache(maxsize=1)
def _all_docstring_sentences() -> tuple[str, ...]:
    return tuple(line for line in SENTENCES_FILE.read_text(encoding="utf-8").splitlines() if line)


def stdlib_sentences(count: int = 200, split: str = "eval") -> list[str]:
    """``count`` real English sentences from standard-library docstrings, deterministic.

    The pool is shuffled once with a fixed seed; ``split="eval"`` takes from the front and
    ``split="calib"`` from the back, so evaluation never sees calibration sentences.
    """
    import random

    pool = list(_all_docstring_sentences())
    random.Random(0).shuffle(pool)
    if count > len(pool) // 2:
        raise ValueError(f"only {len(pool) // 2} docstring sentences are available per split")
    if split == "eval":
        return pool[:count]
    if split == "calib":
        return pool[len(pool) - count:]
    raise ValueError(f"split must be 'eval' or 'calib', not {split!r}")


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


# ---------------------------------------------------------------- examples as model feeds

DEFAULT_COUNTS = {"eval": 128, "calib": 64}


def concat_padded(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate batches along axis 0, zero-padding axis 1 (the sequence) to the widest.
    Zero is the attention mask's "padding" value, so the model ignores the added tokens."""
    if parts[0].ndim >= 2:
        widest = max(p.shape[1] for p in parts)
        parts = [np.pad(p, [(0, 0), (0, widest - p.shape[1])] + [(0, 0)] * (p.ndim - 2)) for p in parts]
    return np.concatenate(parts)


class ExampleSet:
    """Examples turned into feed batches for one artifact, plus what they were and their hash.

    ``get_next()`` hands out the batches one by one, which is all onnxruntime's
    calibration reader protocol asks for.
    """

    def __init__(self, description: str, sha256: str, batches: list[dict[str, np.ndarray]]):
        self.description = description
        self.sha256 = sha256
        self.batches = batches
        self.count = sum(len(next(iter(b.values()))) for b in batches)
        self._cursor = 0

    def get_next(self):
        if self._cursor >= len(self.batches):
            return None
        self._cursor += 1
        return self.batches[self._cursor - 1]

    def rewind(self) -> None:
        self._cursor = 0

    def to_dict(self) -> dict:
        return {"data": self.description, "sha256": self.sha256, "samples": self.count}


def _hash_path(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _hash_values(values) -> str:
    import hashlib

    digest = hashlib.sha256()
    for value in values:
        digest.update(value.encode() if isinstance(value, str) else np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def examples_for(artifact, path: str | Path | None = None, role: str = "eval", limit: int | None = None,
                 batch_size: int = 16) -> ExampleSet:
    """Real examples for ``artifact`` as feed batches.

    With ``path``: the user's file (see ``read_examples``).  Without: standard-library
    sentences for text models, scikit-learn digits for vision models, and the golden
    inputs recorded at export for anything else.  ``role`` picks disjoint default data
    for evaluation and calibration.
    """
    from .runtime.processing import ImageProcessor, TextProcessor

    manifest = artifact.manifest
    specs = {spec["name"]: spec for spec in manifest.graph["inputs"]}
    first_shape = next(iter(specs.values()))["shape"] if specs else []
    static_batch = first_shape[0] if first_shape and isinstance(first_shape[0], int) else None
    if static_batch:
        batch_size = static_batch
    processing = manifest.processing
    limit = limit or (None if path else DEFAULT_COUNTS[role])
    if path is None:
        if processing.get("tokenizer"):
            kind, data = "text", stdlib_sentences(limit, split=role)
            description, digest = f"{len(data)} standard-library docstring sentences ({role} split)", _hash_values(data)
        elif processing.get("image"):
            images, _ = digits_images()
            data = images[:limit] if role == "eval" else images[-limit:]
            kind, description, digest = "images", f"{len(data)} scikit-learn digits ({role} split)", _hash_values([data])
        else:
            golden = artifact.golden()
            if golden is None:
                raise CalibrationDataError("this artifact has no golden inputs and no tokenizer or image "
                                           "processing; give data with --data / --calib (.npz of feeds)")
            kind, data = "feeds", golden[0]
            description, digest = "the golden inputs recorded at export", _hash_values(list(data.values()))
    else:
        kind, data = read_examples(path, limit)
        description, digest = f"{Path(path).name} ({kind})", _hash_path(Path(path))

    if kind == "text":
        if not processing.get("tokenizer"):
            raise CalibrationDataError(f"'{path}' holds text but this model takes {', '.join(specs)} "
                                       "without a tokenizer; give an .npz with one array per input")
        text = TextProcessor.from_manifest(artifact.path, processing, list(specs))
        static_length = first_shape[1] if len(first_shape) > 1 and isinstance(first_shape[1], int) else None
        batches = [text.encode(data[i:i + batch_size], pad_to=static_length) for i in range(0, len(data), batch_size)]
    elif kind == "images":
        if not processing.get("image"):
            raise CalibrationDataError(f"'{path}' holds images but this model takes {', '.join(specs)}; "
                                       "give an .npz with one array per input")
        pixels = ImageProcessor.from_manifest(processing)(data)
        name = next(iter(specs))
        batches = [{name: pixels[i:i + batch_size]} for i in range(0, len(pixels), batch_size)]
    else:
        feeds = _check_feeds(data, specs, path)
        total = len(next(iter(feeds.values())))
        batches = [{k: v[i:i + batch_size] for k, v in feeds.items()} for i in range(0, total, batch_size)]
    return ExampleSet(description, digest, batches)


def _check_feeds(data: dict[str, np.ndarray], specs: dict, path) -> dict[str, np.ndarray]:
    expected = "; ".join(f"{n}: {s['dtype']} {s['shape']}" for n, s in specs.items())
    if set(data) != set(specs):
        raise CalibrationDataError(
            f"'{path}' has arrays {sorted(data)} but the model's inputs are {sorted(specs)} ({expected})")
    feeds = {}
    for name, spec in specs.items():
        value = np.asarray(data[name])
        want = np.dtype(spec["dtype"])
        if value.dtype != want:
            if value.dtype.kind != want.kind and not (value.dtype.kind in "iu" and want.kind in "iu"):
                raise CalibrationDataError(f"'{path}': '{name}' is {value.dtype.name}, the model takes {want.name}")
            value = value.astype(want)
        if value.ndim != len(spec["shape"]) or any(
            isinstance(d, int) and d > 0 and got != d for axis, (got, d) in enumerate(zip(value.shape, spec["shape"]))
            if axis > 0
        ):
            raise CalibrationDataError(f"'{path}': '{name}' has shape {list(value.shape)}, the model takes "
                                       f"{spec['shape']} ({expected})")
        feeds[name] = value
    return feeds
