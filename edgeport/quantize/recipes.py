"""The registry of quantization recipes.  A recipe is one mode (int8-dynamic, int8-static,
fp16, int4...): how it prepares the FP32 graph, builds a candidate (with some nodes kept in
higher precision), which nodes are candidates for keeping, what it checks at the end, and
what it records in the manifest's ``precision``.  The stage (``stage.py``) drives any recipe
the same way; a new mode is a new registered class, nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..artifact import Artifact
from ..data import ExampleSet
from ..errors import InvalidOptionError
from ..parity import ParityBudget
from ..vocabulary import QUANTIZE_MODES
from .options import QuantizeOptions
from .sensitivity import FallbackResult, leave_one_out_ranking
from .targets import Target


@dataclass
class QuantizeJob:
    """Everything a recipe needs for one run of the stage."""

    source: Artifact
    options: QuantizeOptions
    target: Target
    target_detected: bool
    per_channel: bool
    calibration: ExampleSet | None
    evaluation: ExampleSet | None
    work: Path
    say: Callable[[str], None] = lambda message: None
    calibration_progress: Callable[[int, int], None] | None = None
    notes: list[str] = field(default_factory=list)
    levers: list[str] = field(default_factory=list)       # what the recipe used, for the manifest
    details: dict[str, Any] = field(default_factory=dict)


class Recipe:
    mode: ClassVar[str]
    default_min_cosine: ClassVar[float] = 0.95    # the gate when no budget is given: refuse a broken model
    needs_calibration_file: ClassVar[bool] = False
    # Without a budget, hold the worst case on the calibration data to this, keeping at most
    # guard_max_kept nodes in higher precision (None: no guard).
    guard: ClassVar[ParityBudget | None] = None
    guard_max_kept: ClassVar[int] = 6

    def check(self, options: QuantizeOptions, target: Target) -> None:
        """Refuse option combinations this mode cannot honour (before any work)."""

    def fallback_limit(self, candidates: int, max_kept: int | None) -> int | None:
        """How many ranked candidates a budget may keep in higher precision."""
        return max_kept

    def prepare(self, job: QuantizeJob) -> Path:
        """The FP32 graph every candidate starts from."""
        raise NotImplementedError

    def build(self, job: QuantizeJob, prepared: Path, dest: Path, exclude: list[str]) -> None:
        """Write a candidate to ``dest``, with the nodes in ``exclude`` kept in higher precision."""
        raise NotImplementedError

    def candidates(self, job: QuantizeJob, prepared: Path) -> list[str]:
        """Nodes the accuracy-aware fallback may keep in higher precision."""
        raise NotImplementedError

    def rank(self, job: QuantizeJob, prepared: Path, build, evaluate) -> list[tuple[str, float]]:
        """Candidates, most sensitive first, with their sensitivity (leave-one-out by default)."""
        return leave_one_out_ranking(self.candidates(job, prepared), build, evaluate, job.say)

    def finish(self, job: QuantizeJob, result: FallbackResult, build: Callable[[list[str]], Path]) -> FallbackResult:
        """Last checks on the chosen candidate (and a rebuild if the recipe needs one)."""
        return result

    def precision(self, job: QuantizeJob, result: FallbackResult, operators: dict[str, int]) -> dict[str, Any]:
        raise NotImplementedError

    def lineage_parameters(self, job: QuantizeJob) -> dict[str, Any]:
        options = job.options
        return {"mode": self.mode, "target": job.target.name, "per_channel": job.per_channel,
                "optimize": options.optimize, "min_cosine": options.min_cosine,
                "max_abs_error": options.max_abs_error, "min_top1_agreement": options.min_top1_agreement,
                "min_p01_cosine": options.min_p01_cosine}


_RECIPES: dict[str, type[Recipe]] = {}


def register(recipe: type[Recipe]) -> type[Recipe]:
    """Class decorator: add a recipe under its mode, which must be in the shared vocabulary."""
    if recipe.mode not in QUANTIZE_MODES:
        raise ValueError(f"recipe mode '{recipe.mode}' is not one of the known modes: {', '.join(QUANTIZE_MODES)}")
    _RECIPES[recipe.mode] = recipe
    return recipe


def recipe_for(mode: str) -> Recipe:
    from . import dynamic, fp16, static, weight_only  # noqa: F401  (each registers its recipes)

    if mode not in _RECIPES:
        raise InvalidOptionError(f"unknown mode '{mode}'; choose one of {', '.join(sorted(_RECIPES))}")
    return _RECIPES[mode]()


def registered_modes() -> list[str]:
    recipe_for(QUANTIZE_MODES[0])
    return sorted(_RECIPES)
