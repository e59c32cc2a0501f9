"""Examples as model feeds: the real data (bundled, or the user's file) turned into feed
batches for one artifact, through the runtime's own processing, with a hash of the data
for the manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import CalibrationDataError, ModelInputError
from ..manifest import TensorSpec
from ..runtime.processing import ImageProcessor, TextProcessor
from ..runtime.runner import check_values
from .bundled import digits_images, sentences_per_split, stdlib_sentences
from .readers import read_examples

DEFAULT_COUNTS = {"eval": 128, "calib": 64}


def concat_padded(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate batches along axis 0, zero-padding axis 1 (the sequence) to the widest.
    Zero is the attention mask's "padding" value, so the model ignores the added tokens."""
    if parts[0].ndim >= 2:
        widest = max(p.shape[1] for p in parts)
        parts = [np.pad(p, [(0, 0), (0, widest - p.shape[1])] + [(0, 0)] * (p.ndim - 2)) for p in parts]
    return np.concatenate(parts)


def fit_to_range(examples: "ExampleSet", shape_range: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
                 batch_size: int = 16) -> "ExampleSet":
    """The same examples in batches whose shapes lie within ``shape_range`` (input name ->
    (min shape, max shape), as a TensorRT optimisation profile bounds its engine): rows
    between the profile's batch bounds (the last batch repeats rows to reach the minimum),
    sequences padded with zeros (mask 0: ignored by the model) up to the minimum length and
    cut at the maximum."""
    if not shape_range:
        return examples
    names = list(examples.batches[0])
    merged = {name: concat_padded([b[name] for b in examples.batches]) for name in names}
    low = {name: shape_range[name][0] if name in shape_range else None for name in names}
    high = {name: shape_range[name][1] if name in shape_range else None for name in names}
    ranged = [n for n in names if low[n] is not None]
    if not ranged:
        return examples
    first = ranged[0]
    rows = min(max(batch_size, low[first][0]), high[first][0])
    total = len(merged[first])
    batches = []
    for start in range(0, total, rows):
        batch = {}
        for name, value in merged.items():
            part = value[start:start + rows]
            if len(part) < (low[name] or [1])[0]:
                part = np.concatenate([part, np.repeat(part[-1:], low[name][0] - len(part), axis=0)])
            if low[name] is not None and part.ndim >= 2 and len(low[name]) >= 2:
                part = part[:, :high[name][1]]
                missing = low[name][1] - part.shape[1]
                if missing > 0:
                    part = np.pad(part, [(0, 0), (0, missing)] + [(0, 0)] * (part.ndim - 2))
            batch[name] = np.ascontiguousarray(part)
        batches.append(batch)
    return ExampleSet(f"{examples.description}, batched within the engine's profile", examples.sha256,
                      tuple(batches))


@dataclass(frozen=True)
class ExampleSet:
    """Feed batches for one artifact, plus what they were and their hash.  Immutable: a
    calibration run takes its own ``reader()``, so two users never share a cursor."""

    description: str
    sha256: str
    batches: tuple[dict[str, np.ndarray], ...]

    @property
    def count(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches)

    def first_example(self) -> dict[str, np.ndarray]:
        """The first example alone (batch 1): what latency probes time."""
        return {name: value[:1] for name, value in self.batches[0].items()}

    def reader(self, progress=None) -> "CalibrationReader":
        return CalibrationReader(self.batches, progress)

    def to_dict(self) -> dict:
        return {"data": self.description, "sha256": self.sha256, "samples": self.count}


class CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader protocol (``get_next``, ``rewind``)
    over a fixed list of batches, with an optional progress callback (done, total)."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]], progress=None):
        self.batches = list(batches)
        self.progress = progress
        self._cursor = 0

    def get_next(self):
        if self._cursor >= len(self.batches):
            return None
        self._cursor += 1
        if self.progress:
            self.progress(self._cursor, len(self.batches))
        return self.batches[self._cursor - 1]

    def rewind(self) -> None:
        self._cursor = 0


def _hash_path(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def hash_values(values) -> str:
    digest = hashlib.sha256()
    for value in values:
        digest.update(value.encode() if isinstance(value, str) else np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def raw_images(data: dict[str, np.ndarray], processing: dict):
    """The pixels of an .npz that holds one uint8 array for an image model, else None.

    Such a file holds raw images in the model's own layout (what Keras users keep:
    [N, H, W, C] uint8), whatever the array is called; they get the model's
    pre-processing.  A float array is taken as ready feeds."""
    if processing.get("image") and len(data) == 1:
        (array,) = data.values()
        if np.asarray(array).dtype == np.uint8:
            return array
    return None


def shared_text_length(*artifacts) -> int | None:
    """Where text is cut for models compared on it: the shortest max_length among those that
    take text (an ExecuTorch program bounded at 32 tokens beside its ONNX export: both see the
    same 32 tokens, as each would in use), or None."""
    lengths = [int(a.manifest.processing.get("max_length", 512)) for a in artifacts
               if a.manifest.processing.get("tokenizer")]
    return min(lengths) if lengths else None


def examples_for(artifact, path: str | Path | None = None, role: str = "eval", limit: int | None = None,
                 batch_size: int = 16, texts: Sequence[str] | None = None, description: str | None = None,
                 longest: int | None = None) -> ExampleSet:
    """Real examples for ``artifact`` as feed batches.

    With ``path``: the user's file (see ``read_examples``).  With ``texts``: those texts.
    Otherwise standard-library sentences for text models, scikit-learn digits for vision
    models, and the golden inputs recorded at export for anything else.  ``role`` picks
    disjoint default data for evaluation and calibration.  ``longest``: cut text there when
    it is shorter than the artifact's own max_length (``shared_text_length``).
    """
    manifest = artifact.manifest
    specs = {spec["name"]: spec for spec in manifest.graph["inputs"]}
    first_shape = next(iter(specs.values()))["shape"] if specs else []
    static_batch = first_shape[0] if first_shape and isinstance(first_shape[0], int) else None
    if static_batch:
        batch_size = static_batch
    processing = manifest.processing
    if limit is None and path is None and texts is None:
        limit = DEFAULT_COUNTS[role]
    if texts is not None:
        kind, data = "text", list(texts)[:limit]
        description, digest = description or f"{len(data)} given texts", hash_values(data)
    elif path is None:
        kind, data, description, digest = _default_examples(artifact, role, limit)
    else:
        kind, data = read_examples(path, limit)
        description, digest = f"{Path(path).name} ({kind})", _hash_path(Path(path))
    layout = "NCHW"    # image folders are read as NCHW
    if kind == "feeds" and raw_images(data, processing) is not None:
        kind, data, layout = "images", raw_images(data, processing), processing["image"].get("layout", "NCHW")
        description = f"{Path(path).name} (raw images)"

    if kind == "text":
        if not processing.get("tokenizer"):
            raise CalibrationDataError(f"'{path}' holds text but this model takes {', '.join(specs)} "
                                       "without a tokenizer; give an .npz with one array per input")
        text = TextProcessor.from_artifact(artifact, list(specs), longest=longest)
        static_length = first_shape[1] if len(first_shape) > 1 and isinstance(first_shape[1], int) else None
        batches = [text.encode(data[i:i + batch_size], pad_to=static_length) for i in range(0, len(data), batch_size)]
    elif kind == "images":
        if not processing.get("image"):
            raise CalibrationDataError(f"'{path}' holds images but this model takes {', '.join(specs)}; "
                                       "give an .npz with one array per input")
        try:
            pixels = ImageProcessor.from_manifest(processing)(data, layout=layout)
        except ModelInputError as exc:       # the user's data file, not a request: bad data (10)
            raise CalibrationDataError(f"'{path or description}': {exc}") from exc
        name = next(iter(specs))
        pixels = pixels.astype(specs[name]["dtype"], copy=False)       # a float16 image model takes float16
        batches = [{name: pixels[i:i + batch_size]} for i in range(0, len(pixels), batch_size)]
    else:
        feeds = _check_feeds(data, specs, path)
        total = len(next(iter(feeds.values())))
        batches = [{k: v[i:i + batch_size] for k, v in feeds.items()} for i in range(0, total, batch_size)]
    return ExampleSet(description, digest, tuple(batches))


def _default_examples(artifact, role: str, limit: int):
    processing = artifact.manifest.processing
    if processing.get("tokenizer"):
        data = stdlib_sentences(min(limit, sentences_per_split()), split=role)     # --limit: at most
        return "text", data, f"{len(data)} standard-library docstring sentences ({role} split)", hash_values(data)
    if processing.get("image"):
        images, _ = digits_images()
        data = images[:limit] if role == "eval" else images[-limit:]
        return "images", data, f"{len(data)} scikit-learn digits ({role} split)", hash_values([data])
    golden = artifact.golden()
    if golden is None:
        raise CalibrationDataError("this artifact has no golden inputs and no tokenizer or image "
                                   "processing; give data with --data / --calib (.npz of feeds)")
    data = golden[0]
    return "feeds", data, "the golden inputs recorded at export", hash_values(list(data.values()))


def in_model_dtype(name: str, value: np.ndarray, want: np.dtype, path, error) -> np.ndarray:
    """A feeds file's array in the dtype the model takes, cast within its kind as long as the
    values survive (float32 data for a float16 model, int32 ids for int64, int64 for int32 while
    every value fits); otherwise ``error``, naming the file."""
    if value.dtype == want:
        return value
    same_kind = value.dtype.kind == want.kind or {value.dtype.kind, want.kind} <= set("iu")
    if same_kind:
        with np.errstate(over="ignore", invalid="ignore"):
            converted = value.astype(want)
        if want.kind == "f":        # finite values must stay finite (70000 is inf in float16)
            fits = bool((np.isfinite(converted) | ~np.isfinite(value)).all())
        else:
            fits = np.array_equal(converted, value)
        if fits:
            return converted
    raise error(f"'{path}': '{name}' is {value.dtype.name}, the model takes {want.name}"
                + (" and its values do not fit" if same_kind else ""))


def _check_feeds(data: dict[str, np.ndarray], specs: dict, path) -> dict[str, np.ndarray]:
    expected = "; ".join(f"{n}: {s['dtype']} {s['shape']}" for n, s in specs.items())
    if set(data) != set(specs):
        raise CalibrationDataError(
            f"'{path}' has arrays {sorted(data)} but the model's inputs are {sorted(specs)} ({expected})")
    feeds = {}
    for name, spec in specs.items():
        value = in_model_dtype(name, np.asarray(data[name]), np.dtype(spec["dtype"]), path, CalibrationDataError)
        if value.ndim != len(spec["shape"]) or any(
            isinstance(d, int) and d > 0 and got != d for axis, (got, d) in enumerate(zip(value.shape, spec["shape"]))
            if axis > 0
        ):
            raise CalibrationDataError(f"'{path}': '{name}' has shape {list(value.shape)}, the model takes "
                                       f"{spec['shape']} ({expected})")
        try:
            if value.size:      # the runtime's own limits, said here naming the file, before any measuring
                check_values(name, value, TensorSpec.from_manifest(spec))
        except ModelInputError as exc:
            raise CalibrationDataError(f"'{path}': {exc}") from exc
        feeds[name] = value
    mask = feeds.get("attention_mask")
    if mask is not None and mask.ndim == 2:
        # A row that masks every token carries nothing: a parity measured on it is a perfect 0,
        # and a calibration range from it is empty.
        empty = np.flatnonzero(~mask.astype(bool).any(axis=1))
        if empty.size:
            raise CalibrationDataError(f"'{path}': attention_mask masks every token of row {int(empty[0])} "
                                       f"({empty.size} such row(s)); every example needs at least one real token")
    return feeds
