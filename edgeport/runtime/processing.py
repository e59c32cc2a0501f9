"""Pre- and post-processing described by the manifest: tokenization, pooling, softmax,
image normalisation.  numpy and tokenizers only (this module is part of the light runtime).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ArtifactError, ModelInputError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class TextProcessor:
    """Tokenizes text with the artifact's ``tokenizer.json`` into model feeds."""

    tokenizer_file: Path
    max_length: int
    input_names: Sequence[str]
    pad_token: str | None = None
    pad_id: int = 0

    def __post_init__(self):
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ArtifactError(f"cannot load tokenizer '{self.tokenizer_file}': {exc}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_length)

    @classmethod
    def from_manifest(cls, folder: Path, processing: dict[str, Any], input_names: Sequence[str]):
        name = processing.get("tokenizer")
        if not name:
            raise ArtifactError("this artifact has no tokenizer, so it cannot take text; pass feeds instead")
        return cls(folder / name, int(processing.get("max_length", 512)), list(input_names),
                   processing.get("pad_token"), int(processing.get("pad_id", 0)))

    def tokenize(self, texts: Sequence[str]) -> list:
        """``tokenizers`` encodings (ids, type ids, offsets), truncated to max_length."""
        _check_texts(texts)
        return self._tokenizer.encode_batch(list(texts))

    def encode(self, texts: Sequence[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Feeds for ``texts``, padded to the longest (or to ``pad_to``), truncated to max_length."""
        if isinstance(texts, str):
            texts = [texts]
        if not len(texts):
            raise ModelInputError("no text given: pass at least one string")
        return self.feeds(self.tokenize(texts), pad_to)

    def feeds(self, encodings: Sequence, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Pad already tokenized texts into model feeds."""
        width = max(len(e.ids) for e in encodings)
        if pad_to is not None:
            width = max(width, min(pad_to, self.max_length))
        batch = len(encodings)
        ids = np.full((batch, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        types = np.zeros((batch, width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: available[name] for name in self.input_names if name in available}


def _check_texts(texts: Sequence[str]) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ModelInputError(f"text #{i} is a {type(text).__name__}, not a string")


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask.astype(hidden.dtype)[..., None]
    return (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)


def cls_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return hidden[:, 0]


def max_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    masked = np.where(mask[..., None].astype(bool), hidden, -np.inf)
    return masked.max(axis=1)


def last_token_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    last = mask.sum(axis=1).astype(np.int64) - 1
    return hidden[np.arange(len(hidden)), np.clip(last, 0, None)]


POOLING = {"mean": mean_pool, "cls": cls_pool, "max": max_pool, "last": last_token_pool}


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.clip(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12, None)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass
class ImageProcessor:
    """Resizes (nearest) and normalises float images [N, C, H, W] in [0, 1]."""

    size: tuple[int, int]
    channels: int
    mean: Sequence[float]
    std: Sequence[float]

    @classmethod
    def from_manifest(cls, processing: dict[str, Any]) -> "ImageProcessor":
        image = processing.get("image")
        if not image:
            raise ArtifactError("this artifact has no image pre-processing; pass feeds instead")
        return cls(tuple(image["size"]), int(image["channels"]), image["mean"], image["std"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from ..data import resize_images

        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise ModelInputError(f"images must be [N, C, H, W] (or one [C, H, W]); got shape {images.shape}")
        images = resize_images(images, self.size, self.channels)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return (images - mean) / std
