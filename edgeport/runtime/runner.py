"""The one shape every engine that runs a model has (after Polygraphy's runners and httpx's
transports): a public ``run()`` that checks the feeds against the model's declared
inputs, a private ``_infer()`` that only executes, ``close()``, and ``with`` support.
``device`` says what it runs on.  ONNX Runtime, the PyTorch baseline (in export, which
may import torch), TensorRT and ONNX Runtime GenAI are runners; a new backend is a new
subclass, nothing else changes.  Runners never time themselves: the bench does.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ModelInputError
from ..manifest import TensorSpec


class Runner:
    """Base class: feed checking and the lifecycle; subclasses implement ``_infer``.

    ``run`` may be called from several threads at once on every runner (each serializes what
    its engine cannot share).  ``shape_range`` bounds the shapes an engine accepts beyond
    the manifest (input name -> (min shape, max shape), a TensorRT optimisation profile);
    ``Model`` pads and batches within it."""

    def __init__(self, inputs: Sequence[TensorSpec], output_names: Sequence[str], device: str):
        self.inputs = {spec.name: spec for spec in inputs}
        self.output_names = list(output_names)
        self.device = device
        self.shape_range: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._closed = False

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` (input name → array), checked first."""
        self._check_open()
        return self._infer(self.check(feeds))

    def _check_open(self) -> None:
        if self._closed:
            raise ModelInputError(f"this {type(self).__name__} was closed; load the model again to run it")

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def max_rows(self) -> int | None:
        """The most rows one call takes (an engine's profile or a program's bounds), or None."""
        limits = [high[0] for _, high in self.shape_range.values() if high]
        return min(limits) if limits else None

    def run_in_rows(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """``run``, in chunks of rows no larger than the engine's largest batch (``shape_range``),
        outputs concatenated: for checks whose batches were made for another engine, a server's
        joined requests, a file of examples."""
        return _joined([self.run(chunk) for chunk in self._row_chunks(feeds)])

    def run_row_by_row(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """``run`` one row per call, outputs joined: for graphs whose rows depend on the rows
        run beside them (dynamically quantized activations)."""
        self._check_open()
        feeds = self.check_in_rows(feeds)              # once: each row is a slice of checked arrays
        rows = _rows(feeds) or 1
        return _joined([self._infer({name: value[row:row + 1] for name, value in feeds.items()})
                        for row in range(rows)])

    def check_in_rows(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """``check``, chunk by chunk as ``run_in_rows`` will run them: every value is checked
        (a server checks a request before it joins others), only the row count may exceed
        the engine's largest batch."""
        return _joined([self.check(chunk) for chunk in self._row_chunks(feeds)])

    def _row_chunks(self, feeds: dict[str, Any]) -> list[dict[str, Any]]:
        return _in_chunks(feeds, self.max_rows)

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Validate names, dtypes, ranks, fixed dims, shared symbolic dims and declared value
        limits; return contiguous arrays."""
        if not isinstance(feeds, dict):
            raise ModelInputError(f"feeds must be a dict of input name to array, got {type(feeds).__name__}")
        missing = [name for name in self.inputs if name not in feeds]
        unknown = [str(name) for name in feeds if name not in self.inputs]
        if missing or unknown:
            expected = "; ".join(spec.describe() for spec in self.inputs.values())
            problem = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                  f"unknown {', '.join(unknown)}" if unknown else "") if part)
            raise ModelInputError(f"wrong inputs ({problem}); the model takes {expected}")
        checked = {}
        symbols: dict[str, tuple[str, int]] = {}
        for name, spec in self.inputs.items():
            value = _as_array(name, feeds[name])
            if value.dtype != spec.dtype:
                raise ModelInputError(f"input '{name}' is {value.dtype.name}, expected {spec.describe()}")
            if value.ndim != len(spec.shape):
                raise ModelInputError(f"input '{name}' has rank {value.ndim} {list(value.shape)}, "
                                      f"expected {spec.describe()}")
            for axis, (got, want) in enumerate(zip(value.shape, spec.shape)):
                if isinstance(want, int) and want > 0 and got != want:
                    raise ModelInputError(f"input '{name}' has size {got} on axis {axis}, expected {spec.describe()}")
                if isinstance(want, str):
                    seen = symbols.setdefault(want, (name, got))
                    if seen[1] != got:
                        raise ModelInputError(f"inputs '{seen[0]}' and '{name}' disagree on '{want}' "
                                              f"({seen[1]} and {got}); they must have the same {want} size")
            if value.size == 0:
                raise ModelInputError(f"input '{name}' is empty {list(value.shape)}")
            _check_limits(name, value, spec)
            checked[name] = value if value.flags.c_contiguous else np.ascontiguousarray(value)
        return checked


def in_calls_of(run, rows_per_call: int):
    """``run`` in calls of at most ``rows_per_call`` rows, outputs joined: a server's request
    never makes a call larger than its --max-batch, nor run's feed file one over --batch-size."""
    def chunked(feeds: dict) -> dict:
        return _joined([run(chunk) for chunk in _in_chunks(feeds, rows_per_call)])
    chunked.runs, chunked.rows_per_call = run, rows_per_call
    return chunked


def _in_chunks(feeds: Any, step: int | None) -> list:
    """``feeds`` in chunks of at most ``step`` rows; as they are when no step is set, when they
    fit, or when they are not row-aligned arrays (the runner's check then says why)."""
    rows = _rows(feeds)
    if step is None or rows is None or rows <= step:
        return [feeds]
    return [{name: value[start:start + step] for name, value in feeds.items()} for start in range(0, rows, step)]


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Chunks' arrays joined along the rows again (one chunk: as it is)."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _rows(feeds: Any) -> int | None:
    """The row count every feed agrees on, or None (not feeds, or not arrays yet: ``check``
    says what is wrong with them)."""
    if not isinstance(feeds, dict) or not feeds:
        return None
    counts = {len(value) if isinstance(value, np.ndarray) and value.ndim else None for value in feeds.values()}
    return counts.pop() if len(counts) == 1 else None


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ModelInputError(f"input '{name}' is ragged or not numeric ({str(exc).splitlines()[0]}); give a "
                              "rectangular array of numbers") from exc
    if array.dtype == object:
        raise ModelInputError(f"input '{name}' is ragged or holds non-numbers; give a rectangular numeric array")
    return array


def _check_limits(name: str, value: np.ndarray, spec: TensorSpec) -> None:
    if spec.max_shape:
        for axis, (got, limit) in enumerate(zip(value.shape, spec.max_shape)):
            if limit is not None and got > limit:
                raise ModelInputError(f"input '{name}' has size {got} on axis {axis}; the model supports at most "
                                      f"{limit} there (its position embeddings end at {limit})")
    check_values(name, value, spec)


def check_values(name: str, value: np.ndarray, spec: TensorSpec) -> None:
    """Finite values within the range the manifest declares for an input (also checked where feeds
    files are read, so that a bad file is named before any measuring)."""
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ModelInputError(f"input '{name}' holds NaN or infinite values")
    if spec.value_range is not None:
        low, high = spec.value_range
        smallest, largest = value.min(), value.max()
        if smallest < low or largest > high:
            bad = smallest if smallest < low else largest
            ids = f" (the vocabulary has {int(high) + 1} entries)" if "ids" in name else ""
            raise ModelInputError(f"input '{name}' holds {bad}, outside the model's range [{low:g}, {high:g}]{ids}")
