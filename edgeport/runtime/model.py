"""``load()`` and ``Model``: an artifact ready to run, with the pre- and post-processing its
manifest describes, on the runner its graph needs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import Artifact
from ..errors import ArtifactError, InvalidOptionError, ModelInputError
from ..manifest import MANIFEST_NAME
from ..vocabulary import ENCODER_TEXT_TASKS
from .formats import format_of
from .onnxrt import SessionSettings
from .processing import POOLING, ImageProcessor, TextProcessor, l2_normalize, softmax
from .runner import Runner


def load(path: str | os.PathLike, device: str = "auto", threads: int | None = None,
         check_files: bool = True, adapters: dict[str, str] | None = None, trusted_key: str | None = None,
         **settings: Any):
    """Load an artifact folder or a bundle (``.tar.gz`` from ``edgeport package``) for inference.

    ``device``: auto (TensorRT → CUDA → CPU, whichever ONNX Runtime offers), cpu, cuda or
    tensorrt (an explicit device that is not available is an error, never a fallback).
    ``settings``: optimization, inter_op_threads, memory_arena, spinning (SessionSettings).
    A causal language model (task text-generation) loads as a ``GenerativeModel``;
    ``adapters`` (name -> .onnx_adapter file) adds LoRA adapters to switch at run time.
    ``trusted_key``: a bundle must be signed by this public key (PEM), or it is refused.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArtifactError(f"load() takes the path of an artifact folder or bundle, not {type(path).__name__}")
    artifact = open_artifact(path, check_files, trusted_key)
    try:
        session_settings = SessionSettings(device=device, threads=threads, **settings)
    except TypeError as exc:
        raise InvalidOptionError(f"unknown runtime setting: {exc}") from exc
    graph_format = format_of(artifact)
    graph_format.check_device(session_settings.device)
    if graph_format.generative:
        return graph_format.generator(artifact, session_settings, adapters)
    if adapters:
        raise InvalidOptionError("runtime adapters are for causal language models (task text-generation)")
    return Model(artifact, graph_format.runner(artifact, session_settings))


def open_artifact(path: str | os.PathLike, check_files: bool = True, trusted_key: str | None = None) -> Artifact:
    """An artifact folder, or the artifact inside a bundle (every checksum verified first;
    with ``trusted_key``, its signature too): the archive, the folder it unpacks to, or a
    folder holding just one of those (where KServe's storage initializer leaves a bundle:
    it unpacks a single archive it downloads, and copies one from a volume as it is)."""
    from .bundle import BUNDLE_META, lone_bundle, open_bundle, verify_extracted

    path = Path(path)
    if path.is_dir() and not (path / MANIFEST_NAME).exists():
        path = lone_bundle(path) or path
    if path.is_file():
        return open_bundle(path, trusted_key=trusted_key)
    if (path / BUNDLE_META).is_file():
        return verify_extracted(path, trusted_key)
    if trusted_key is not None:
        raise InvalidOptionError(f"--trusted-key checks the signature of a bundle; '{path}' is an artifact folder, "
                                 "which carries none (package it with --sign)")
    return Artifact.load(path, check_files=check_files)


def rows_depend_on_batch(artifact: Artifact) -> bool:
    """Whether a row's outputs depend on the rows run beside it: dynamically quantized
    activations take one scale per call from the whole batch, padding included (measured on
    MiniLM INT8: a text's embedding moved to cosine 0.993 of its own when batched with
    others).  Such models run one row per call, so a result depends on its input alone."""
    precision = artifact.manifest.precision or {}
    operators = precision.get("operators") or {}
    return precision.get("mode") == "int8-dynamic" or \
        any(op in operators for op in ("DynamicQuantizeLinear", "DynamicQuantizeMatMul"))


class Model:
    """A loaded artifact.  ``run`` takes raw feeds; ``predict`` takes texts or images."""

    def __init__(self, artifact: Artifact, runner: Runner):
        self.artifact = artifact
        self.task = artifact.task
        self.runner = runner
        self.inputs = list(runner.inputs.values())
        self.output_names = runner.output_names
        self.provider = runner.device
        self.processing = artifact.manifest.processing
        self.labels = self.processing.get("labels")
        self._text: TextProcessor | None = None
        self._lock = threading.Lock()
        fixed = self.inputs[0].shape if self.inputs else ()
        self.static_batch = fixed[0] if fixed and isinstance(fixed[0], int) else None
        self.static_length = (fixed[1] if len(fixed) > 1 and isinstance(fixed[1], int)
                              and self.task in ENCODER_TEXT_TASKS else None)
        # An engine's optimisation profile: batches and (text) lengths must lie within it.
        low, high = runner.shape_range.get(self.inputs[0].name, ((), ())) if self.inputs else ((), ())
        self.min_rows, self.max_rows = (low[0], high[0]) if low else (1, None)
        self.min_length = low[1] if len(low) > 1 and self.task in ENCODER_TEXT_TASKS else None
        self.max_length = high[1] if len(high) > 1 and self.task in ENCODER_TEXT_TASKS else None
        self.rows_alone = rows_depend_on_batch(artifact) and self.min_rows <= 1

    # ------------------------------------------------------------------ raw feeds

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run the graph on ``feeds`` (input name → array); checked against the manifest.  More
        rows than the engine takes in one call (a TensorRT profile, an ExecuTorch program's
        bounds) run in chunks it takes; a model whose rows depend on their batch
        (``rows_alone``) runs one row per call."""
        if self.rows_alone:
            return self.runner.run_row_by_row(feeds)
        return self.runner.run_in_rows(feeds)

    # ------------------------------------------------------------------ processed

    @property
    def text_processor(self) -> TextProcessor:
        if self._text is None:
            with self._lock:
                if self._text is None:
                    self._text = TextProcessor.from_artifact(self.artifact, [s.name for s in self.inputs],
                                                             longest=self.max_length)
        return self._text

    def takes_text(self) -> bool:
        return self.task in ENCODER_TEXT_TASKS and "image" not in self.processing

    def takes_images(self) -> bool:
        return "image" in self.processing

    def predict(self, inputs, batch_size: int = 8, layout: str | None = None):
        """Texts (or images for vision models) in; embeddings or labelled predictions out,
        in input order.

        Texts are sorted by token length and padded per micro-batch so a short sentence
        never pays for the longest one.  Micro-batches of 8 measured twice as fast as one
        batch of 32 for MiniLM on 2 cores (less padding, activations that stay in cache).
        Text longer than the exported max length is truncated (as the source model's
        tokenizer would).  An empty list gives an empty result.  Images are float in [0, 1]
        or uint8 pixels, in the model's layout unless ``layout`` says otherwise.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidOptionError(f"batch_size must be a whole number >= 1 (got {batch_size!r})")
        if inputs is None:
            raise ModelInputError("predict() needs inputs: a list of texts, or images")
        if self.takes_text():
            return self._predict_text(inputs, batch_size)
        if self.takes_images():
            if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
                raise ModelInputError("this is an image model; pass images (an array), not text")
            return self._predict_images(inputs, batch_size, layout)
        raise ModelInputError(f"this {self.task} model takes no text or images, only its raw inputs (edgeport run "
                              f"--input FILE.npz, or run() in Python): {'; '.join(s.describe() for s in self.inputs)}")

    def _predict_text(self, texts: Sequence[str] | str, batch_size: int):
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)):
            raise ModelInputError(f"predict() takes a list of texts, not {type(texts).__name__}")
        texts = list(texts)
        if not texts:
            return self._empty_result()
        processor = self.text_processor
        batch_size = self._batch_size(batch_size)
        encodings = processor.tokenize(texts)          # once: lengths for sorting, ids for feeds
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        results: list[Any] = [None] * len(texts)
        pad_to = max(self.static_length or 0, self.min_length or 0) or None
        for start in range(0, len(texts), batch_size):
            index = order[start:start + batch_size]
            chunk = [encodings[i] for i in index]
            filled = chunk + [chunk[-1]] * (self.min_rows - len(chunk))    # rows an engine's profile asks for
            feeds = processor.feeds(filled, pad_to=pad_to)
            outputs = self.run(feeds)
            for row, item in zip(index, self.postprocess_text(outputs, feeds, filled)):
                results[row] = item
        if self.task == "feature-extraction":
            return np.stack(results)
        return results

    def _batch_size(self, asked: int) -> int:
        """The micro-batch size: the graph's fixed batch, or ``asked`` within an engine's profile."""
        if self.static_batch:
            return self.static_batch
        if self.rows_alone:
            return 1               # no padding to a neighbour's length either: it moves the scales
        return min(max(asked, self.min_rows), self.max_rows or asked)

    def _empty_result(self):
        if self.task == "feature-extraction":
            width = self.artifact.manifest.graph["outputs"][0]["shape"][-1]
            return np.zeros((0, width if isinstance(width, int) else 0), dtype=np.float32)
        return []

    def postprocess_text(self, outputs, feeds, encodings):
        mask = feeds["attention_mask"]
        if self.task == "feature-extraction":
            hidden = outputs[self.output_names[0]]
            pooling = self.processing.get("pooling", "mean")
            vectors = POOLING[pooling](hidden, mask) if pooling else hidden
            if self.processing.get("normalize"):
                vectors = l2_normalize(vectors)
            return list(vectors.astype(np.float32))
        logits = outputs["logits"]
        if self.task == "text-classification":
            return [self._label(row) for row in softmax(logits.astype(np.float64))]
        results = []
        for row, enc in enumerate(encodings):
            probs = softmax(logits[row].astype(np.float64))
            tokens = []
            for position, (token, special) in enumerate(zip(enc.tokens, enc.special_tokens_mask)):
                if special or position >= mask.shape[1]:
                    continue
                item = self._label(probs[position])
                item.update(token=token, start=enc.offsets[position][0], end=enc.offsets[position][1])
                tokens.append(item)
            results.append(tokens)
        return results

    def _label(self, probs: np.ndarray) -> dict[str, Any]:
        best = int(probs.argmax())
        name = self.labels[best] if self.labels and best < len(self.labels) else str(best)
        return {"label": name, "score": float(probs[best]), "probabilities": [float(p) for p in probs]}

    def _predict_images(self, images, batch_size: int, layout: str | None):
        if isinstance(images, (list, tuple)) and len(images) == 0:
            return self._empty_result()
        pixels = ImageProcessor.from_manifest(self.processing)(images, layout)
        if len(pixels) == 0:
            return self._empty_result()
        name = self.inputs[0].name
        pixels = pixels.astype(self.inputs[0].dtype, copy=False)       # a float16 image model takes float16
        batch_size = self._batch_size(batch_size)
        results: list[Any] = []
        classify = self.task in ("image-classification", "custom")
        for start in range(0, len(pixels), batch_size):
            chunk = pixels[start:start + batch_size]
            filled = np.concatenate([chunk, np.repeat(chunk[-1:], self.min_rows - len(chunk), axis=0)]) \
                if len(chunk) < self.min_rows else chunk
            scores = self.run({name: filled})[self.output_names[0]][:len(chunk)]
            if classify:
                results.extend(self._label(row) for row in softmax(scores.astype(np.float64)))
            else:
                results.extend(scores)
        return results if classify else np.stack(results)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({str(self.artifact.path)!r}, task={self.task!r}, provider={self.provider!r})"
