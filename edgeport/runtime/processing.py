"""Pre- and post-processing described by the manifest: tokenization, pooling, softmax,
image resizing and normalisation.  numpy and tokenizers only (part of the light runtime).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ArtifactError, ModelInputError


def load_tokenizer(path: Path):
    """A ``tokenizers.Tokenizer`` from an artifact's tokenizer.json; a bad file is an ArtifactError."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for every kind of bad file
        raise ArtifactError(f"cannot load tokenizer '{path}': {exc}") from exc


@dataclass
class TextProcessor:
    """Tokenizes text with the artifact's ``tokenizer.json`` into model feeds."""

    tokenizer_file: Path
    max_length: int
    input_names: Sequence[str]
    pad_token: str | None = None
    pad_id: int = 0

    def __post_init__(self):
        self._tokenizer = load_tokenizer(self.tokenizer_file)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_length)

    @classmethod
    def from_artifact(cls, artifact, input_names: Sequence[str] | None = None,
                      longest: int | None = None) -> "TextProcessor":
        """``longest``: the engine's own longest sequence, where it ends before the manifest's
        max_length (texts are truncated there, not refused)."""
        processing = artifact.manifest.processing
        name = processing.get("tokenizer")
        if not name:
            raise ModelInputError("this artifact has no tokenizer, so it cannot take text; pass feeds instead")
        names = input_names if input_names is not None else [s["name"] for s in artifact.manifest.graph["inputs"]]
        max_length = int(processing.get("max_length", 512))
        return cls(artifact.member(name), min(max_length, longest or max_length), list(names),
                   processing.get("pad_token"), int(processing.get("pad_id", 0)))

    def tokenize(self, texts: Sequence[str]) -> list:
        """``tokenizers`` encodings (ids, type ids, offsets), truncated to max_length."""
        check_texts(texts)
        return self._tokenizer.encode_batch(list(texts))

    def encode(self, texts: Sequence[str] | str, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Feeds for ``texts``, padded to the longest (or to ``pad_to``), truncated to max_length."""
        if isinstance(texts, str):
            texts = [texts]
        if not len(texts):
            raise ModelInputError("no text given: pass at least one string")
        return self.feeds(self.tokenize(texts), pad_to)

    def feeds(self, encodings: Sequence, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Pad already tokenized texts into model feeds."""
        width = max(1, max(len(e.ids) for e in encodings))
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


def check_texts(texts: Sequence[Any]) -> None:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ModelInputError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ModelInputError(f"text #{i} is a {type(text).__name__}, not a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ModelInputError(f"text #{i} is not valid Unicode ({exc.reason} at position {exc.start}); "
                                  "lone surrogates cannot be tokenized") from exc


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


def resize_images(images: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """Nearest-neighbour resize of [N, C, H, W] images and channel repeat (numpy only)."""
    n, c, h, w = images.shape
    rows = (np.arange(size[0]) * h // size[0]).clip(0, h - 1)
    cols = (np.arange(size[1]) * w // size[1]).clip(0, w - 1)
    out = images[:, :, rows][:, :, :, cols]
    if c != channels:
        out = np.repeat(out[:, :1], channels, axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclass
class ImageProcessor:
    """Turns images into the model's pixel feeds: float images in [0, 1] (or raw uint8
    pixels, divided by 255) in the model's layout, resized (nearest) to the exported size
    unless the model takes any size, then ``(x - mean) / std`` per channel."""

    size: tuple[int, int]
    channels: int
    mean: Sequence[float]
    std: Sequence[float]
    layout: str = "NCHW"
    dynamic_size: bool = False

    @classmethod
    def from_manifest(cls, processing: dict[str, Any]) -> "ImageProcessor":
        image = processing.get("image")
        if not image:
            raise ModelInputError("this artifact has no image pre-processing; pass feeds instead")
        return cls(tuple(image["size"]), int(image["channels"]), image["mean"], image["std"],
                   image.get("layout", "NCHW"), bool(image.get("dynamic_size", False)))

    def __call__(self, images, layout: str | None = None) -> np.ndarray:
        layout = layout or self.layout
        if _ragged(images):
            # images of several sizes (a folder of photos): each resized on its own, to the model's size
            fixed = replace(self, dynamic_size=False)
            return np.concatenate([fixed(np.asarray(image)[None] if np.ndim(image) == 3 else image, layout)
                                   for image in images])
        try:
            array = np.asarray(images)
        except (ValueError, TypeError) as exc:
            raise ModelInputError(f"images cannot be made into an array: {exc}") from exc
        if array.dtype.kind not in "uif" or array.dtype == object:
            raise ModelInputError(f"images must be numbers (float in [0, 1] or uint8 pixels), not {array.dtype}")
        pixels = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.ndim != 4:
            raise ModelInputError(f"images must be [N, {', '.join(layout[1:])}] (or one image without N); "
                                  f"got shape {list(array.shape)}")
        if not np.isfinite(pixels).all():
            raise ModelInputError("images hold NaN or infinite values")
        nchw = pixels if layout == "NCHW" else pixels.transpose(0, 3, 1, 2)
        if nchw.shape[1] == 3 and self.channels != 3 and (nchw == nchw[:, :1]).all():
            nchw = nchw[:, :1]          # greyscale read as RGB (image files are): one channel, repeated below
        if nchw.shape[1] not in (1, self.channels):
            raise ModelInputError(f"images have {nchw.shape[1]} channels in {layout} layout; the model takes "
                                  f"{self.channels} (or 1, which is repeated)")
        size = nchw.shape[2:] if self.dynamic_size else self.size
        nchw = resize_images(nchw, tuple(size), self.channels)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        normalized = (nchw - mean) / std
        return np.ascontiguousarray(normalized if self.layout == "NCHW" else normalized.transpose(0, 2, 3, 1))


def _ragged(images) -> bool:
    """A list of images that differ in shape, which no single array holds."""
    return isinstance(images, (list, tuple)) and len(images) > 1 and \
        all(isinstance(image, np.ndarray) for image in images) and len({image.shape for image in images}) > 1
