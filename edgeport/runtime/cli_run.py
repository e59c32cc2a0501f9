"""What ``edgeport run`` does: load, run on texts / feeds / images, return JSON-ready data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelInputError
from .session import load


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def run_artifact(path, texts: list[str], input_file: str | None, device: str, threads: int | None,
                 batch_size: int) -> dict[str, Any]:
    from ..data import read_examples

    model = load(path, device=device, threads=threads)
    result: dict[str, Any] = {"task": model.task, "provider": model.provider}
    if texts:
        result["predictions"] = _jsonable(model.predict(texts, batch_size=batch_size))
        return result
    try:
        kind, data = read_examples(Path(input_file))
    except Exception as exc:
        from ..errors import EdgeportError
        if isinstance(exc, EdgeportError):
            raise ModelInputError(str(exc)) from exc
        raise
    if kind == "feeds":
        result["outputs"] = _jsonable(model.run(data))
    else:
        result["predictions"] = _jsonable(model.predict(data, batch_size=batch_size))
    return result
