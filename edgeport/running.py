"""What ``edgeport run`` does: load, run on texts / feeds / images, return JSON-ready data.

Non-finite outputs are an error rather than ``NaN`` in the JSON (which JSON does not
allow and most readers refuse): a model that produces them is broken for that input.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidOptionError, ModelInputError
from .runtime import load
from .runtime.runner import in_calls_of
from .vocabulary import DEFAULT_MAX_NEW_TOKENS


def jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ModelInputError("the model produced NaN or infinite values for these inputs")
        return value.tolist()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ModelInputError("the model produced NaN or infinite values for these inputs")
    return value


def run_artifact(path, texts: list[str], input_file: str | None, device: str = "auto", threads: int | None = None,
                 batch_size: int = 8, trusted_key: str | None = None, note=None) -> dict[str, Any]:
    """Run an artifact (or bundle) on ``texts`` or on the examples in ``input_file``.  ``note``:
    where to say that ``batch_size`` does not apply (a model whose rows run alone)."""
    from .data import in_model_dtype, raw_images, read_examples

    model = load(path, device=device, threads=threads, trusted_key=trusted_key)
    with model:
        if model.task == "text-generation":
            raise ModelInputError(f"'{path}' is a causal language model: give --prompt, not --text or --input")
        if note is not None and getattr(model, "rows_alone", False) and batch_size > 1:
            note(f"note: --batch-size {batch_size} does not apply: this model quantizes its activations per call "
                 "(dynamic INT8), so every row runs alone and its result depends on its input only")
        result: dict[str, Any] = {"task": model.task, "provider": model.provider}
        if texts:
            result["predictions"] = jsonable(model.predict(texts, batch_size=batch_size))
            return result
        kind, data = read_examples(Path(input_file), error=ModelInputError, one_per_line=True)
        if kind == "feeds" and raw_images(data, model.processing) is not None:
            result["predictions"] = jsonable(model.predict(raw_images(data, model.processing), batch_size=batch_size))
        elif kind == "feeds":
            wanted = {spec.name: spec.dtype for spec in model.inputs}      # cast as verify and quantize read them
            feeds = {name: in_model_dtype(name, value, wanted[name], input_file, ModelInputError) if name in wanted
                     else value for name, value in data.items()}        # an unknown name: the runner says which
            result["outputs"] = jsonable(in_calls_of(model.run, batch_size)(feeds))
        elif kind == "images" and not model.takes_images():
            raise ModelInputError(f"'{input_file}' is a folder of images and this {model.task} model takes no images; "
                                  + ("give --text or a .txt / .jsonl file" if model.takes_text() else
                                     "give its inputs in an .npz file"))
        elif kind == "images":
            result["predictions"] = jsonable(model.predict(data, batch_size=batch_size, layout="NCHW"))
        else:
            result["predictions"] = jsonable(model.predict(data, batch_size=batch_size))
        return result


def stream_generation(path, prompts: list[str], max_new_tokens: int | None = None, temperature: float | None = None,
                      top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                      adapter: str | None = None, device: str = "auto", threads: int | None = None,
                      trusted_key: str | None = None):
    """What ``edgeport run --prompt`` prints: each prompt, then its continuation token by
    token as it is generated."""
    model = load(path, device=device, threads=threads, trusted_key=trusted_key)
    with model:
        if model.task != "text-generation":
            raise ModelInputError(f"'{path}' is a {model.task} model; --prompt is for causal language models "
                                  "(task text-generation): use --text or --input")
        new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens     # 0 is refused, not "default"
        if new_tokens >= model.context_length:      # past any prompt's room: the option, not the prompt (as bench says)
            raise InvalidOptionError(f"--max-new-tokens {new_tokens} is past the model's context of "
                                     f"{model.context_length} tokens with any prompt; give at most "
                                     f"{model.context_length - 1}")
        streams = [model.stream(prompt, new_tokens, temperature, top_k, top_p, seed, adapter=adapter)
                   for prompt in prompts]          # every prompt checked before the first is printed
        for index, (prompt, pieces) in enumerate(zip(prompts, streams)):
            if index:
                yield "\n"
            yield prompt
            for piece in pieces:
                yield piece.text
