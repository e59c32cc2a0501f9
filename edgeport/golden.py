"""``golden.npz``: the real inputs a model was validated with and its reference outputs.

Written by export (PyTorch outputs) and read by every later stage, and by a device in
the field, to check parity without torch.  numpy only.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import ArtifactError

_INPUT, _OUTPUT = "input:", "output:"


def save_golden(path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    arrays = {_INPUT + k: np.asarray(v) for k, v in inputs.items()}
    arrays.update({_OUTPUT + k: np.asarray(v) for k, v in outputs.items()})
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_golden(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            inputs = {k[len(_INPUT):]: data[k] for k in data.files if k.startswith(_INPUT)}
            outputs = {k[len(_OUTPUT):]: data[k] for k in data.files if k.startswith(_OUTPUT)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ArtifactError(f"cannot read golden data '{path}': {exc}") from exc
    if not inputs or not outputs:
        raise ArtifactError(f"golden data '{path}' holds no inputs or no outputs")
    for name, value in {**inputs, **outputs}.items():
        if value.dtype.kind not in "biuf" or value.ndim == 0:
            raise ArtifactError(f"golden data '{path}': '{name}' is not a numeric array with a batch axis")
    return inputs, outputs
