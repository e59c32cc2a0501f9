"""Model sources for export and merge: Hugging Face folders and ``module:callable`` factories.

Everything here checks the source before the heavy libraries touch it, so a user
mistake becomes a clear ``EdgeportError`` rather than a transformers stack trace.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import EdgeportError, InvalidOptionError, SourceError, UnsafeFileError

PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def is_callable_source(source: str) -> bool:
    """``pkg.module:factory`` rather than a path (a Windows drive letter is a path)."""
    return bool(re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", source)) and not Path(source).exists()


def is_keras_file(source) -> bool:
    """A Keras file by its name, in any case (CNN.KERAS was taken for a model folder)."""
    return str(source).lower().endswith((".keras", ".h5"))


def recorded_source(source) -> str:
    """How the export lineage names its source: a module:callable as given, a folder as an
    absolute path (so that ``bench --baseline torch`` finds it from any working directory)."""
    return str(source) if is_callable_source(str(source)) else str(Path(source).resolve())


def read_config(folder: Path) -> dict:
    if not folder.exists():
        raise SourceError(f"model folder '{folder}' does not exist")
    if not folder.is_dir():
        raise SourceError(f"'{folder}' is a file; give a Hugging Face model folder (export also takes a .keras file "
                          "or module:callable)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SourceError(
            f"'{folder}' has no config.json, so it is not a Hugging Face model folder "
            "(save one with model.save_pretrained(folder), or pass module:callable)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise SourceError(f"{config_path} must hold a JSON object")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise SourceError(f"{config_path}: 'model_type' must be a non-empty string (got {model_type!r})")
    return config


def load_hf_config(folder: Path):
    """transformers' config for the folder; a field of the wrong type ("hidden_size": "big")
    or any other value transformers refuses is a SourceError naming the file."""
    import transformers

    from .quiet import quiet_transformers

    refusals: tuple[type[BaseException], ...] = (OSError, TypeError, ValueError, KeyError)
    try:
        from huggingface_hub.errors import StrictDataclassError    # transformers 5 validates config fields

        refusals += (StrictDataclassError,)
    except ImportError:
        pass
    with quiet_transformers():
        try:
            return transformers.AutoConfig.from_pretrained(folder)
        except refusals as exc:
            reason = " ".join(str(exc).split())[:300]
            raise SourceError(f"transformers cannot read {folder / 'config.json'}: {reason}") from exc


def weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    """The weight files transformers will read, after refusing pickle and checking safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = [folder / s for s in _index_shards(index)]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        pickled = [p for p in PICKLE_WEIGHTS if (folder / p).is_file()]
        if not pickled:
            raise SourceError(f"'{folder}' has no weights: expected model.safetensors (or a sharded index)")
        if not any(name.startswith("pytorch_model.bin") for name in pickled):      # --allow-pickle would not help
            raise SourceError(f"'{folder}' holds {pickled[0]}, which transformers does not read as a model folder's "
                              "weights: save its state dict as model.safetensors (or name it pytorch_model.bin)")
        if not allow_pickle:
            raise UnsafeFileError(
                f"'{folder}' only has pickle weights ({', '.join(pickled)}); loading pickle can run "
                "arbitrary code. Convert them to safetensors, or pass --allow-pickle if you trust the file"
            )
        files = [folder / p for p in pickled]
        index = folder / "pytorch_model.bin.index.json"
        shards = [folder / s for s in _index_shards(index)] if index.is_file() else []
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise SourceError(f"{index} names the shard '{missing[0]}', which is missing")
        for file in [f for f in files if f != index] + shards:
            check_pickle(file, SourceError)
        return files
    for file in files:
        check_safetensors(file)
    return files


def _index_shards(index: Path) -> list[str]:
    """Shard names from a sharded checkpoint's index, each confined to the model folder."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise SourceError(f"{index} is not a valid safetensors index: {exc}") from exc
    if not isinstance(weight_map, dict) or not weight_map or \
            not all(isinstance(v, str) and v for v in weight_map.values()):
        raise SourceError(f"{index}: 'weight_map' must map tensor names to shard file names")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        parts = PurePosixPath(shard.replace("\\", "/")).parts
        if shard.startswith(("/", "\\")) or ".." in parts or len(parts) != 1:
            raise UnsafeFileError(f"{index} names the shard '{shard}', which is not a file in the model folder; "
                                  "refusing to read outside it")
    return shards


def check_safetensors(path: Path) -> None:
    """Validate a safetensors header and that the file holds every byte it declares."""
    if not path.is_file():
        raise SourceError(f"weights file '{path}' is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError("header length is past the end of the file")
            header = json.loads(handle.read(header_len))
        end = _declared_end(header)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        raise SourceError(f"'{path}' is not a valid safetensors file ({exc}); re-save or re-download it") from exc
    if 8 + header_len + end != size:
        raise SourceError(
            f"'{path}' is truncated or corrupted: its header declares {8 + header_len + end} bytes, "
            f"the file has {size}; re-save or re-download it"
        )


def check_pickle(path: Path, error: type[EdgeportError] = SourceError) -> None:
    """Read pickle weights (trusted: --allow-pickle) once with torch's weights-only loader, so
    an empty, truncated or foreign file is named here instead of failing inside transformers or
    peft (an empty one escaped as a bare EOFError)."""
    import pickle
    import warnings
    import zipfile

    import torch

    if path.stat().st_size == 0:
        raise error(f"weights file '{path}' is empty; re-save or re-download it")
    try:
        with warnings.catch_warnings():        # torch warns of old pickle protocols before it refuses them
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        # transformers loads with weights_only too: what fails here would fail there
        raise error(f"'{path}' is not PyTorch weights (or holds more than tensors, which the weights-only loader "
                    "refuses); re-save it with torch.save(state_dict) or as safetensors") from exc
    except Exception as exc:   # torch raises anything from EOFError to OSError for a damaged file
        reason = " ".join(str(exc).split())[:200].split(". ")[0] or type(exc).__name__
        raise error(f"'{path}' cannot be read as PyTorch weights ({reason}); re-save or re-download it") from exc


def safetensors_shapes(paths: list[Path]) -> dict[str, list[int]]:
    """Tensor name -> shape, from safetensors headers only (no weights read, no torch)."""
    shapes = {}
    for path in paths:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        shapes.update({k: list(v["shape"]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)})
    return shapes


def _declared_end(header) -> int:
    """The last byte the header's tensors claim, after checking the header's shape."""
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and
                all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise ValueError(f"tensor '{name}' has malformed data_offsets {offsets!r}")
        end = max(end, offsets[1])
    return end


# ----------------------------------------------------------------- module:callable


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


MAX_SAMPLE_ELEMENTS = 1 << 28        # 1 GiB of float32
_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")


def parse_input_spec(text: str) -> InputSpec:
    """``name:1x3x32x32:float32`` → InputSpec; the first dimension is the batch."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise InvalidOptionError(f"--input '{text}' must look like name:1x3x32x32:float32")
    name, shape_text, dtype = parts
    if not re.fullmatch(r"[A-Za-z_][\w.\-]*", name):
        raise InvalidOptionError(f"--input '{text}': '{name}' is not a valid input name")
    try:
        shape = tuple(int(d) for d in shape_text.lower().split("x"))
    except ValueError:
        raise InvalidOptionError(
            f"--input '{text}': shape '{shape_text}' must be positive integers joined by 'x', e.g. 1x3x32x32"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise InvalidOptionError(f"--input '{text}': every dimension must be a positive integer")
    if dtype not in _DTYPES:
        raise InvalidOptionError(f"--input '{text}': dtype '{dtype}' is not one of {', '.join(_DTYPES)}")
    if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
        # export traces and validates with random samples of this shape; past this it is a typo
        # (numpy failed with a traceback trying to allocate terabytes)
        raise InvalidOptionError(f"--input '{text}' is {math.prod(shape):,} values per sample, more than export's "
                                 f"{MAX_SAMPLE_ELEMENTS:,}; give the shape of one typical input")
    return InputSpec(name, shape, dtype)


@contextlib.contextmanager
def _current_folder_importable():
    """Make the current folder importable for the duration of the import only, as
    ``python -m`` would, without leaving the process's ``sys.path`` changed."""
    folder = str(Path.cwd())
    added = "" not in sys.path and folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def load_callable(source: str):
    """Import ``module:callable`` (the current folder is importable) and call it."""
    import torch

    module_name, _, attr = source.partition(":")
    try:
        with _current_folder_importable():
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceError(f"cannot import module '{module_name}' for '{source}': {exc}") from exc
    except Exception as exc:  # the user's module ran and fell over: its own code, reported as the source's fault
        raise SourceError(f"importing '{module_name}' failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise SourceError(f"'{module_name}' has no callable '{attr}'")
    try:
        model = factory()
    except Exception as exc:
        raise SourceError(f"calling {source}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"{source}() returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()
