"""``edgeport.json``: the manifest every artifact carries, its schema, and the typed views
the runtime reads (tensor specs, processing).

The whole manifest is validated when it is read, against ``MANIFEST_SCHEMA`` (JSON
Schema, documented in docs/manifest.md) plus the cross-field rules JSON Schema cannot say
(every file named is listed under ``files``; image mean/std match the channels).  A
hand-edited manifest therefore fails with one ``ArtifactError`` naming the field, never
later inside ONNX Runtime or numpy.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ArtifactError
from .schema import problems
from .vocabulary import GRAPH_FORMATS, MAX_IMAGE_CHANNELS, PRECISIONS, TARGETS, TASKS

MANIFEST_NAME = "edgeport.json"
GOLDEN_NAME = "golden.npz"
SCHEMA_VERSION = 3
# Version 1 is version 2 without the optional fields it added.  Version 3 names causal LMs
# built by ONNX Runtime GenAI's builder graph format "genai" (versions 1 and 2 called them
# "onnx" with a generation config; older manifests are read with that name upgraded), and
# carries a ``seal``: the digest of every field as edgeport wrote it, so a hand edit
# (processing.pooling changed, say) is caught and named when the manifest is read.
READABLE_VERSIONS = (1, 2, 3)
SEALED_FROM_VERSION = 3
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_TENSOR = {
    "type": "object", "required": ["name", "dtype", "shape"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "dtype": {"enum": list(DTYPES)},
        "shape": {"type": "array", "items": {"anyOf": [{"type": "integer", "minimum": 0},
                                                      {"type": "string", "minLength": 1}]}},
        # Optional limits the runtime checks before ONNX Runtime sees the feeds: the
        # values an index input may take (token ids < vocabulary size) and the largest
        # size of each dynamic axis (positions the model has embeddings for).
        "range": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}},
        "max_shape": {"type": "array", "items": {"type": ["integer", "null"], "minimum": 1}},
    },
}
_OUTPUT_PARITY = {
    "type": "object", "required": ["max_abs_err", "mean_cosine", "min_cosine"],
    "properties": {"name": {"type": "string"}, "max_abs_err": _NUMBER_OR_NULL, "max_rel_err": _NUMBER_OR_NULL, "mean_cosine": _NUMBER_OR_NULL,
                   "min_cosine": _NUMBER_OR_NULL, "p01_cosine": _NUMBER_OR_NULL, "top1_agreement": _NUMBER_OR_NULL,
                   "nonfinite": {"type": "integer", "minimum": 0}, "within_tolerance": {"type": "boolean"}},
    "additionalProperties": _NUMBER_OR_NULL,
}
_PARITY_RECORD = {
    "type": "object", "required": ["reference", "data", "samples", "passed"],
    "properties": {
        "reference": {"type": "string"}, "data": {"type": "string"},
        "samples": {"type": "integer", "minimum": 0}, "passed": {"type": "boolean"},
        "thresholds": {"type": "object", "additionalProperties": {"type": "number"}},
        "outputs": {"type": "object", "additionalProperties": _OUTPUT_PARITY},
        "sentence_embedding": _OUTPUT_PARITY,
        "generation": {"type": "object", "additionalProperties": _NUMBER_OR_NULL},
        "platform": {"type": "object"},
    },
    "additionalProperties": False,
}
_IMAGE = {
    "type": "object", "required": ["size", "channels", "mean", "std"], "additionalProperties": False,
    "properties": {
        "size": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": 1}},
        # multispectral models take more than RGBA's four; a greyscale image is repeated to fill them
        "channels": {"type": "integer", "minimum": 1, "maximum": MAX_IMAGE_CHANNELS},
        "mean": {"type": "array", "items": {"type": "number"}},
        "std": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}},
        "layout": {"enum": ["NCHW", "NHWC"]},
        "input_range": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}},
        "scale": {"type": "number", "exclusiveMinimum": 0},
        "dynamic_size": {"type": "boolean"},
    },
}
_GENERATION = {
    "type": "object", "required": ["config"], "additionalProperties": False,
    "properties": {
        "config": {"type": "string", "minLength": 1},
        "context_length": {"type": "integer", "minimum": 1},
        "eos_token_ids": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "chat_template": {"type": "boolean"},
        "family": {"type": "string"},
        "route": {"type": "string"},
        "adapters": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}},
    },
}
MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "edgeport artifact manifest",
    "type": "object",
    "required": ["schema_version", "task", "graph", "files"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"type": "integer", "minimum": 1},
        "task": {"enum": list(TASKS)},
        "processing": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "tokenizer": {"type": "string", "minLength": 1},
                "max_length": {"type": "integer", "minimum": 1},
                "pad_token": {"type": ["string", "null"]},
                "pad_id": {"type": "integer", "minimum": 0},
                "pooling": {"enum": ["mean", "cls", "max", "last", None]},
                "normalize": {"type": "boolean"},
                "labels": {"type": "array", "items": {"type": "string"}},
                "image": _IMAGE,
                "generation": _GENERATION,
            },
        },
        "graph": {
            "type": "object", "required": ["format", "file", "inputs", "outputs"], "additionalProperties": False,
            "properties": {
                "format": {"enum": list(GRAPH_FORMATS)},
                "file": {"type": "string", "minLength": 1},
                "opset": {"type": "integer", "minimum": 0},
                "inputs": {"type": "array", "items": _TENSOR},
                "outputs": {"type": "array", "items": _TENSOR, "minItems": 1},
                "static_shapes": {"type": "boolean"},
                "external_data": {"type": "boolean"},
                "fixed_size_reason": {"type": "string"},
                "engine": {"type": "object"},
                # executorch: each named dim's [min, max], XNNPACK's share, the planned arena
                "bounds": {"type": "object", "additionalProperties": {
                    "type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2}},
                "delegation": {"type": "object"},
                "memory": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            },
        },
        "precision": {
            "type": "object", "required": ["mode"], "additionalProperties": False,
            "properties": {
                "mode": {"enum": list(PRECISIONS)},
                "target": {"enum": list(TARGETS) + [None]},
                "target_detected": {"type": "boolean"},
                "format": {"type": "string"},
                "per_channel": {"type": "boolean"},
                "reduce_range": {"type": "boolean"},
                "weight_type": {"type": "string"},
                "activation_type": {"type": "string"},
                "smoothing_alpha": _NUMBER_OR_NULL,
                "kept_fp32_nodes": {"type": "array", "items": {"type": "string"}},
                "calibration": {"type": ["object", "null"]},
                "operators": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                "sensitivity": {"type": "array", "items": {"type": "object"}},
                "keep_io_types": {"type": "boolean"},
                "fp16_fallback": {"type": "boolean"},
                "levers": {"type": "array", "items": {"type": "string"}},
                "block_size": {"type": "integer", "minimum": 16},
                "accuracy_level": {"type": "integer", "minimum": 0, "maximum": 4},
                "bits": {"type": "integer", "minimum": 2, "maximum": 8},
                "quantizer": {"type": "string"},
                "search": {"type": "object"},         # int8: the speed-aware search's frontier
                "structure": {                        # int8-dynamic: plain or fused-attention graph, and why
                    "type": "object", "required": ["measured", "chosen", "candidates", "why"],
                    "properties": {
                        "measured": {"type": "boolean"}, "chosen": {"type": "string"}, "why": {"type": "string"},
                        "candidates": {"type": "array", "items": {
                            "type": "object", "required": ["graph", "latency_ms"],
                            "properties": {"graph": {"type": "string"}, "latency_ms": _NUMBER_OR_NULL}}},
                        "fused_speedup": {"type": "number"},
                        "ci95": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}},
                "speed": {"type": "object"},          # int8: the paired speed-up over FP32 measured on the host
                "host": {"type": "object"},           # the CPU and instruction sets the recipe was chosen on
                "activations": {"type": "string"},
                "candidates": {"type": "array", "items": {"type": "object"}},
            },
        },
        "parity": {"type": "object", "additionalProperties": _PARITY_RECORD},
        "files": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "required": ["sha256", "size"], "additionalProperties": False,
                "properties": {"sha256": {"type": "string", "minLength": 64}, "size": {"type": "integer", "minimum": 0}},
            },
        },
        "seal": {
            "type": "object", "required": ["sha256"], "additionalProperties": False,
            "properties": {"sha256": {"type": "object", "additionalProperties": {"type": "string", "minLength": 64}}},
        },
        "lineage": {
            "type": "array",
            "items": {
                "type": "object", "required": ["stage", "parameters", "tools", "time"],
                "properties": {"stage": {"type": "string", "minLength": 1}, "parameters": {"type": "object"},
                               "tools": {"type": "object", "additionalProperties": {"type": "string"}},
                               "sources": {"type": "object"}, "time": {"type": "string", "minLength": 1}},
            },
        },
    },
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ints in ``shape`` are fixed, strings are symbolic.
    ``value_range`` (inclusive) and ``max_shape`` are optional limits the runtime checks."""

    name: str
    dtype: np.dtype
    shape: tuple[Any, ...]
    value_range: tuple[float, float] | None = None
    max_shape: tuple[int | None, ...] | None = None

    @classmethod
    def from_manifest(cls, spec: dict[str, Any]) -> "TensorSpec":
        value_range = tuple(spec["range"]) if "range" in spec else None
        max_shape = tuple(spec["max_shape"]) if "max_shape" in spec else None
        return cls(spec["name"], np.dtype(spec["dtype"]), tuple(spec["shape"]), value_range, max_shape)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}
        if self.value_range is not None:
            data["range"] = list(self.value_range)
        if self.max_shape is not None:
            data["max_shape"] = list(self.max_shape)
        return data

    def describe(self) -> str:
        return f"{self.name}: {self.dtype.name} [{', '.join(str(d) for d in self.shape)}]"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def tool_versions(*packages: str) -> dict[str, str]:
    """Versions of edgeport, Python and the given packages, for lineage entries."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("edgeport", *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class Manifest:
    """The contents of ``edgeport.json``; see docs/manifest.md for every field."""

    task: str
    graph: dict[str, Any]
    processing: dict[str, Any] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=lambda: {"mode": "fp32"})
    parity: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "task": self.task,
            "processing": self.processing,
            "graph": self.graph,
            "precision": self.precision,
            "parity": self.parity,
            "files": self.files,
            "lineage": self.lineage,
        }

    def to_json(self) -> str:
        """The manifest as written, with its seal (computed over the JSON exactly as written)."""
        data = json.loads(json.dumps(json_safe(self.to_dict()), default=_json_default, allow_nan=False))
        # checked before it is written, so a stage never commits an artifact no reader would open
        found = manifest_problems(data)
        if found:
            raise ArtifactError(f"edgeport made an invalid manifest ({'; '.join(found[:3])}); nothing was written")
        data["seal"] = seal_of(data)
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> "Manifest":
        found = manifest_problems(data)
        if found:
            raise ArtifactError(f"{where} is not a valid edgeport manifest: " + "; ".join(found[:6])
                                + (f" (and {len(found) - 6} more)" if len(found) > 6 else ""))
        edited = seal_problems(data)
        if edited:
            raise ArtifactError(f"{where} was edited after edgeport wrote it ({'; '.join(edited[:6])}): a hand-edited "
                                "manifest no longer describes what was measured; re-create the artifact with the "
                                "stage that made it")
        graph = data["graph"]
        if data["schema_version"] < 3 and graph["format"] == "onnx" and "generation" in data.get("processing", {}):
            graph = dict(graph, format="genai")
        return cls(task=data["task"], graph=graph, processing=data.get("processing", {}),
                   precision=data.get("precision", {"mode": "fp32"}), parity=data.get("parity", {}),
                   files=data["files"], lineage=data.get("lineage", []), schema_version=data["schema_version"])

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_manifest(s) for s in self.graph["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_manifest(s) for s in self.graph["outputs"]]

    def export_entry(self) -> dict[str, Any]:
        """The lineage entry of the export stage that made the graph ({} when there is none)."""
        return next((e for e in reversed(self.lineage) if e["stage"] == "export"), {})

    def export_parameters(self) -> dict[str, Any]:
        """The parameters of the export stage that made the graph ({} when there is none)."""
        return self.export_entry().get("parameters", {})

    def add_lineage(self, stage: str, parameters: dict[str, Any], tools: dict[str, str],
                    sources: dict[str, str] | None = None, **extra: Any) -> None:
        entry = {"stage": stage, "parameters": parameters, "tools": tools,
                 "sources": sources or {}, "time": now_iso()}
        entry.update(extra)
        self.lineage.append(entry)


def manifest_problems(data: Any) -> list[str]:
    """Everything wrong with a manifest document: schema, version and cross-field rules."""
    if not isinstance(data, dict):
        return ["the top level must be a JSON object"]
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version not in READABLE_VERSIONS:
        if version > SCHEMA_VERSION:
            return [f"schema_version {version} is newer than this edgeport understands ({SCHEMA_VERSION}); "
                    "upgrade edgeport"]
        return [f"schema_version {version} is not one this edgeport reads ({', '.join(map(str, READABLE_VERSIONS))})"]
    found = problems(data, MANIFEST_SCHEMA)
    if found:
        return found
    files = data["files"]
    graph, processing = data["graph"], data.get("processing", {})
    named = [("graph.file", graph["file"]), ("processing.tokenizer", processing.get("tokenizer")),
             ("processing.generation.config", processing.get("generation", {}).get("config"))]
    for key, name in named:
        if name is not None and name not in files:
            found.append(f"'{key}' names '{name}', which is not listed under 'files'")
    image = processing.get("image")
    if image:
        for key in ("mean", "std"):
            if len(image[key]) != image["channels"]:
                found.append(f"'processing.image.{key}' has {len(image[key])} values for {image['channels']} channels")
    names = [spec["name"] for spec in graph["inputs"]]
    if len(set(names)) != len(names):
        found.append("'graph.inputs' names an input twice")
    return found


def _field_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_of(data: dict[str, Any]) -> dict[str, Any]:
    """The digest of every field: each processing entry on its own (what people edit by hand),
    the other sections whole."""
    fields = {key: _field_digest(data.get(key)) for key in ("schema_version", "task", "graph", "precision", "parity",
                                                             "files", "lineage")}
    processing = data.get("processing") or {}
    if isinstance(processing, dict):
        fields.update({f"processing.{key}": _field_digest(value) for key, value in processing.items()})
    else:
        fields["processing"] = _field_digest(processing)
    return {"sha256": fields}


def seal_problems(data: dict[str, Any]) -> list[str]:
    """What changed since the manifest was sealed (versions before 3 carry no seal)."""
    if data["schema_version"] < SEALED_FROM_VERSION:
        return []
    if "seal" not in data:
        return ["its seal was removed"]
    recorded, now = data["seal"]["sha256"], seal_of(data)["sha256"]
    found = []
    for key in sorted(set(recorded) | set(now)):
        if key not in now:
            found.append(f"'{key}' was removed")
        elif key not in recorded:
            found.append(f"'{key}' was added")
        elif recorded[key] != now[key]:
            found.append(f"'{key}' changed")
    return found


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in chunks (artifacts list one per file; outputs.py checks them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(text: str | bytes) -> str:
    """The digest a bundle, a verify or a later stage records to detect edits to a manifest."""
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def json_safe(value: Any) -> Any:
    """Non-finite floats become null: JSON has no NaN, and the reader refuses it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.floating) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    from pathlib import Path

    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a manifest")
