"""The registry of quantization recipes.  A recipe is one mode (int8-dynamic, int8-static,
fp16, int4, int8-weight-only): which graph formats it takes, what it refuses up front, and
``run``: the quantized graph with its precision record and its parity against the input
artifact.  The stage (``stage.py``) checks the input, hands every recipe the same job and
writes whatever it returns the same way; a new mode is a new registered class, nothing
else changes.

This module imports no recipe: each recipe module registers itself, and the package's
``__init__`` imports them all, so there is no import cycle between the registry and its
entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..artifact import Artifact
from ..errors import InvalidOptionError
from ..vocabulary import QUANTIZE_MODES
from .options import QuantizeOptions
from .targets import Target


@dataclass
class QuantizeJob:
    """Everything a recipe needs for one run of the stage."""

    source: Artifact
    options: QuantizeOptions
    target: Target
    target_detected: bool
    work: Path
    say: Callable[[str], None] = lambda message: None
    calibration_progress: Callable[[int, int], None] | None = None
    notes: list[str] = field(default_factory=list)
    levers: list[str] = field(default_factory=list)       # what the recipe used, for the manifest
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a recipe made: the quantized graph file (any external data beside it), the
    manifest's ``precision`` record, parity entries (``quantize``: against the input
    artifact; others, such as ``quantize-vs-source``, against the golden outputs), and the
    parameters its lineage entry records."""

    model_file: Path
    precision: dict[str, Any]
    parity: dict[str, dict]
    parameters: dict[str, Any]           # the lineage entry's parameters: what was asked and resolved


class Recipe:
    mode: ClassVar[str]
    formats: ClassVar[tuple[str, ...]] = ("onnx",)        # the graph formats it quantizes
    purpose: ClassVar[str] = "encoder, classifier and vision ONNX artifacts"
    tools: ClassVar[tuple[str, ...]] = ("onnx", "onnxruntime")

    def check(self, options: QuantizeOptions, target: Target) -> None:
        """Refuse option combinations this mode cannot honour (before any work)."""

    def run(self, job: QuantizeJob) -> Outcome:
        raise NotImplementedError

    def lineage_parameters(self, job: QuantizeJob) -> dict[str, Any]:
        return {"mode": self.mode, "target": job.target.name}


_RECIPES: dict[str, type[Recipe]] = {}


def register(recipe: type[Recipe]) -> type[Recipe]:
    """Class decorator: add a recipe under its mode, which must be in the shared vocabulary."""
    if recipe.mode not in QUANTIZE_MODES:
        raise ValueError(f"recipe mode '{recipe.mode}' is not one of the known modes: {', '.join(QUANTIZE_MODES)}")
    _RECIPES[recipe.mode] = recipe
    return recipe


def recipe_for(mode: str) -> Recipe:
    if mode not in _RECIPES:
        raise InvalidOptionError(f"unknown mode '{mode}'; choose one of {', '.join(sorted(_RECIPES))}")
    return _RECIPES[mode]()


def registered_modes() -> list[str]:
    return sorted(_RECIPES)


def modes_for(graph_format: str) -> list[str]:
    """The modes that quantize artifacts of ``graph_format``."""
    return sorted(mode for mode, recipe in _RECIPES.items() if graph_format in recipe.formats)
