"""Readers for the example files users pass (``--calib``, ``--data``, ``run --input``).

Each returns plain Python / numpy values, in the spirit of onnxruntime.quantization's
CalibrationDataReader; the model's own processing turns them into feeds.  Every way a
file can be unreadable ends in the caller's error class (``CalibrationDataError`` for
calibration and evaluation, ``ModelInputError`` for ``run``) with the file named.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..errors import CalibrationDataError, EdgeportError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
MAX_IMAGE_PIXELS = 64_000_000        # 8000 x 8000: larger is a decompression bomb, not a photo


def read_examples(path: str | Path, limit: int | None = None, error: type[EdgeportError] = CalibrationDataError,
                  one_per_line: bool = False):
    """Read examples for calibration, evaluation or ``run``.

    Returns ``("text", [str, ...])``, ``("images", float32 array [N, C, H, W])`` or
    ``("feeds", {input name: array})`` depending on what the file holds:

    - ``.txt``: one text example per non-empty line;
    - ``.jsonl``: one JSON object a line with a ``"text"`` field, or with one field per
      model input (arrays of numbers), which become feeds;
    - ``.npz``: one array per model input name, batch on axis 0;
    - a folder of images (needs Pillow).

    ``one_per_line`` (``run``, whose outputs follow the file's lines): a blank line before
    the last example is refused, since skipping it would shift every output after it.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise error(f"the example limit must be a whole number >= 1 (got {limit!r})")
    path = Path(path)
    if not path.exists():
        raise error(f"data '{path}' does not exist")
    try:
        if path.is_dir():
            kind, data = "images", _read_image_folder(path, error)
        elif path.suffix.lower() == ".npz":            # DATA.NPZ is one too
            kind, data = "feeds", _read_npz(path, error)
        elif path.suffix.lower() == ".jsonl":
            kind, data = _read_jsonl(path, error, one_per_line)
        elif path.suffix.lower() == ".npy":            # one array has no input names to feed by
            raise error(f"'{path}' is a single .npy array; save the inputs with numpy.savez as an .npz, one "
                        "array per input name")
        else:
            kind, data = "text", _read_text(path, error, one_per_line)
    except PermissionError as exc:
        raise error(f"cannot read '{path}': permission denied") from exc
    except IsADirectoryError as exc:
        raise error(f"'{path}' is a folder; give a file") from exc
    count = len(next(iter(data.values()))) if kind == "feeds" else len(data)
    if count == 0:
        raise error(f"data '{path}' holds no examples")
    if limit is not None:
        data = {k: v[:limit] for k, v in data.items()} if kind == "feeds" else data[:limit]
    return kind, data


def _read_text(path: Path, error, one_per_line: bool = False) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise error(f"'{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}); give text one example a line, "
                    "or arrays as an .npz with one array per input") from exc
    if one_per_line:
        _refuse_blank_lines(path, lines, error)
    return [line.strip() for line in lines if line.strip()]


def _refuse_blank_lines(path: Path, lines: list[str], error) -> None:
    """Blank lines after the last example are only the file's end; one before it is refused."""
    last = max((number for number, line in enumerate(lines, 1) if line.strip()), default=0)
    blank = [number for number, line in enumerate(lines[:last], 1) if not line.strip()]
    if blank:
        shown = ", ".join(str(n) for n in blank[:5]) + (" ..." if len(blank) > 5 else "")
        which = f"line {shown} is" if len(blank) == 1 else f"lines {shown} are"
        raise error(f"{path}: {which} blank; run gives one output a line, in order, and skipping a blank line "
                    "would shift every output after it: remove it, or put the text it stands for on it")


def _read_jsonl(path: Path, error, one_per_line: bool = False):
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise error(f"'{path}' is not UTF-8 ({exc.reason} at byte {exc.start}); JSON lines must be UTF-8") from exc
    if one_per_line:
        _refuse_blank_lines(path, lines, error)
    texts, feeds = [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise error(f"{path}:{number}: not valid JSON ({getattr(exc, 'msg', exc)})") from exc
        if not isinstance(record, dict):
            raise error(f"{path}:{number}: each line must be a JSON object")
        if "text" in record:
            if not isinstance(record["text"], str):
                raise error(f"{path}:{number}: 'text' must be a string")
            if not record["text"].strip():
                raise error(f"{path}:{number}: 'text' is empty (a blank line of a .txt file is skipped; here it "
                            "would be an example of nothing)")
            texts.append(record["text"])
        else:
            for key, value in record.items():
                feeds.setdefault(key, []).append(value)
    if texts and feeds:
        raise error(f"{path}: mixes 'text' records with raw input records; use one kind")
    if texts or not feeds:
        return "text", texts
    arrays = {}
    for key, values in feeds.items():
        try:
            array = np.asarray(values)
        except ValueError as exc:
            raise error(f"{path}: records of '{key}' have different shapes ({exc})") from exc
        if array.dtype.kind == "U":          # text under another name: the reader only knows "text"
            raise error(f"{path}: '{key}' holds text; name the field \"text\" (one object a line: "
                        "{\"text\": \"...\"}), or give each model input as arrays of numbers")
        if array.dtype.kind not in "biuf":
            raise error(f"{path}: '{key}' must hold numbers in rectangular arrays")
        arrays[key] = array
    return "feeds", arrays


def _read_npz(path: Path, error) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):       # numpy would read other bytes as a pickle and suggest allow_pickle
        raise error(f"'{path}' is not an .npz archive (numpy.savez writes one: a zip of arrays)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            feeds = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise error(f"cannot read '{path}' as .npz ({exc})") from exc
    if not feeds:
        raise error(f"'{path}' holds no arrays")
    for name, value in feeds.items():
        if value.ndim == 0:
            raise error(f"'{path}': '{name}' is a single number; arrays need the batch on axis 0")
        if value.dtype.kind not in "biuf":
            raise error(f"'{path}': '{name}' holds {value.dtype}, not numbers")
    if len({len(v) for v in feeds.values()}) > 1:
        sizes = ", ".join(f"'{name}' {len(value)}" for name, value in feeds.items())
        raise error(f"'{path}': arrays differ in batch size ({sizes}); every array needs the same rows on axis 0")
    return feeds


def _read_image_folder(path: Path, error) -> np.ndarray | list[np.ndarray]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise error(f"folder '{path}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        from PIL import Image
    except ImportError as exc:
        raise error("reading an image folder needs Pillow: pip install pillow") from exc
    arrays = []
    for file in files:
        arrays.append(_read_image(file, Image, error))
    if len({a.shape for a in arrays}) > 1:
        # photos of several sizes: each is resized to the model's own size when it is processed
        return [a.transpose(2, 0, 1) for a in arrays]
    return np.stack(arrays).transpose(0, 3, 1, 2)


def _read_image(file: Path, Image, error) -> np.ndarray:
    """One image as float32 [H, W, 3] in [0, 1]; refuses files that are not images and
    decompression bombs (a small file that claims billions of pixels)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise error(f"image '{file}' claims {width}x{height} pixels, over the {MAX_IMAGE_PIXELS} "
                                "pixel limit (a decompression bomb, or far larger than any model input)")
                return _as_rgb(image, file, error)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise error(f"image '{file}' is a decompression bomb ({exc})") from exc
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise error(f"'{file}' is not a readable image ({exc})") from exc


def _as_rgb(image, file: Path, error) -> np.ndarray:
    """[H, W, 3] in [0, 1].  16-bit greyscale is scaled by its own range (Pillow's RGB
    conversion clips it at 255: a whole image white; older Pillows open 16-bit PNGs as mode
    I); other 32-bit integer and float images carry no range to scale by, so they are
    refused rather than guessed."""
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        grey = np.asarray(image, dtype=np.float32) / 65535.0
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("I", "F"):
        raise error(f"image '{file}' has 32-bit {'integer' if image.mode == 'I' else 'float'} pixels, whose range "
                    "cannot be known; save it as 8- or 16-bit")
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def read_labels(path: str | Path, names: list[str] | None, error: type[EdgeportError] = CalibrationDataError
                ) -> np.ndarray:
    """The true classes of evaluation examples, as class indices.

    ``.npy``: one integer (class index) or string (label name) per example; ``.txt``: one
    per line.  Names are looked up in the model's labels (``names``)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"labels '{path}' do not exist" if not path.exists() else f"labels '{path}' is not a file")
    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            values = np.array([line.strip() for line in lines if line.strip()])
    except PermissionError as exc:
        raise error(f"cannot read '{path}': permission denied") from exc
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
        raise error(f"cannot read labels from '{path}' ({exc}); give an .npy or a .txt with one label a line") from exc
    if values.ndim != 1 or len(values) == 0:
        raise error(f"'{path}' must hold one label per example (got shape {list(values.shape)})")
    if values.dtype.kind in "iu" or (values.dtype.kind == "U" and all(v.lstrip("-").isdigit() for v in values)):
        indices = values.astype(np.int64)
        classes = len(names) if names else None
        wrong = indices[(indices < 0) | (indices >= (classes or np.iinfo(np.int64).max))]
        if len(wrong):
            raise error(f"'{path}': class index {int(wrong[0])} is outside the model's classes "
                        f"(0..{classes - 1 if classes else 'n'})")
        return indices
    if values.dtype.kind != "U":
        raise error(f"'{path}' holds {values.dtype} labels; give class indices or label names")
    index = {name: i for i, name in enumerate(names or [])}
    unknown = sorted({v for v in values if v not in index})
    if unknown:
        raise error(f"'{path}': labels {', '.join(unknown[:5])} are not among the model's labels "
                    f"({', '.join(list(index)[:10]) or 'none recorded'})")
    return np.array([index[v] for v in values], dtype=np.int64)
