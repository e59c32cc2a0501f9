"""What a vision model takes: its image size, channels and normalisation (from its config
and image processor), whether its graph accepts other sizes (convolutional networks do;
transformers with a fixed patch grid do not), and real digits to trace and validate with."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import digits_images
from ..errors import SourceError
from ..runtime.processing import ImageProcessor
from ..vocabulary import BATCH, HEIGHT, MAX_IMAGE_CHANNELS, WIDTH

TRACE_BATCH = 2


@dataclass
class VisionSetup:
    size: tuple[int, int]
    channels: int
    mean: list[float]
    std: list[float]
    alternate_size: tuple[int, int]
    fixed_size_reason: str | None = None          # None: the network takes other sizes too
    copy_files: dict[str, Path] = field(default_factory=dict)

    def processing(self, dynamic_size: bool) -> dict[str, Any]:
        return {"image": {"size": list(self.size), "channels": self.channels, "mean": self.mean, "std": self.std,
                          "layout": "NCHW", "input_range": [0, 1], "dynamic_size": dynamic_size}}

    def pixels(self, images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return ImageProcessor(size, self.channels, self.mean, self.std)(images, layout="NCHW")

    def batches(self, variant: str) -> tuple[dict, list[dict], str]:
        images, _ = digits_images(16)
        static = variant == "static"
        trace = {"pixel_values": self.pixels(images[:1 if static else TRACE_BATCH], self.size)}
        validation = [{"pixel_values": self.pixels(images[2:12] if not static else images[2:3], self.size)}]
        what = "scikit-learn handwritten digits, resized"
        if variant == "dynamic":
            validation.append({"pixel_values": self.pixels(images[12:13], self.alternate_size)})
            what += f" to {self.size[0]}x{self.size[1]} and {self.alternate_size[0]}x{self.alternate_size[1]}"
        elif not static:
            validation.append({"pixel_values": self.pixels(images[12:13], self.size)})
        return trace, validation, what

    def probe_pair(self, trace: dict[str, np.ndarray], dynamic_size: bool) -> tuple[dict, dict]:
        images, _ = digits_images(TRACE_BATCH + 1)
        other = {"pixel_values": self.pixels(images, self.alternate_size if dynamic_size else self.size)}
        return trace, other

    def axes(self, variant: str) -> dict[str, dict[int, str]]:
        if variant == "static":
            return {"pixel_values": {}}
        if variant == "dynamic":
            return {"pixel_values": {0: BATCH, 2: HEIGHT, 3: WIDTH}}
        return {"pixel_values": {0: BATCH}}


def _size_from(value) -> tuple[int, int] | None:
    if isinstance(value, int) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    if isinstance(value, dict):
        if isinstance(value.get("height"), int) and isinstance(value.get("width"), int):
            return int(value["height"]), int(value["width"])
        if isinstance(value.get("shortest_edge"), int):
            return int(value["shortest_edge"]), int(value["shortest_edge"])
    return None


def vision_setup(folder: Path, model, config) -> VisionSetup:
    channels = int(getattr(config, "num_channels", 3) or 3)
    if channels > MAX_IMAGE_CHANNELS:
        raise SourceError(f"the model's images have {channels} channels (config num_channels); edgeport's image "
                          f"processing takes at most {MAX_IMAGE_CHANNELS}")
    mean, std = [0.5] * channels, [0.5] * channels
    size = _size_from(getattr(config, "image_size", None))
    copy_files = {}
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        try:
            pre = json.loads(preprocessor.read_text(encoding="utf-8"))
            if not isinstance(pre, dict):
                raise TypeError("preprocessor_config.json must hold an object")
            mean = [float(v) for v in pre.get("image_mean", mean)]
            std = [float(v) for v in pre.get("image_std", std)]
            size = size or _size_from(pre.get("crop_size")) or _size_from(pre.get("size"))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
            raise SourceError(f"{preprocessor} is malformed: {exc}") from exc
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise SourceError(f"{preprocessor}: image_mean and image_std must have {channels} values, std > 0")
        copy_files["preprocessor_config.json"] = preprocessor
    size = size or (224, 224)
    alternate = tuple(min(512, max(16, int(round(s * 1.5 / 8)) * 8)) for s in size)
    setup = VisionSetup(size, channels, mean, std, alternate, copy_files=copy_files)
    setup.fixed_size_reason = _refuses_other_sizes(model, setup)
    return setup


def _refuses_other_sizes(model, setup: VisionSetup) -> str | None:
    """Why the network cannot take images of another size, or None when it can: run it in
    PyTorch at the alternate size.  Patch-grid transformers (ViT, DeiT, BEiT...) refuse."""
    import torch

    images, _ = digits_images(1)
    pixels = torch.from_numpy(setup.pixels(images, setup.alternate_size))
    try:
        with torch.no_grad():
            model(pixel_values=pixels)
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PyTorch refuses {setup.alternate_size[0]}x{setup.alternate_size[1]} images: {text[:200]}"
    return None
