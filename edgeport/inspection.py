"""``edgeport inspect``: what an artifact is, in one dictionary (and one screenful)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import ArtifactError, InvalidOptionError


def inspect_artifact(path, check_files: bool = True, expected_manifest_sha256: str | None = None,
                     trusted_key: str | None = None) -> dict[str, Any]:
    """What an artifact (or bundle) is, in one dictionary; files checked against their sha256
    unless ``check_files`` is False, the manifest against a recorded digest when given, a
    bundle's signature against ``trusted_key`` when given."""
    from .runtime.formats import format_of
    from .runtime.model import open_artifact

    if expected_manifest_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expected_manifest_sha256.strip()):
        raise InvalidOptionError(f"--expect-manifest-sha256 takes a sha256 digest, 64 hexadecimal digits (got "
                                 f"'{expected_manifest_sha256}')")
    artifact = open_artifact(path, check_files, trusted_key)
    if expected_manifest_sha256 is not None and artifact.manifest_sha256 != expected_manifest_sha256.strip().lower():
        raise ArtifactError(f"the manifest of '{path}' has sha256 {artifact.manifest_sha256}, the record says "
                            f"{expected_manifest_sha256}: it was edited, or is another artifact")
    manifest = artifact.manifest
    graph_format = format_of(artifact)
    details = graph_format.details(artifact)
    # A bundle is always checked as it opens (its artifact is the one inside, not the path given).
    from_bundle = Path(artifact.path).resolve() != Path(path).resolve()
    return {
        "path": str(artifact.path),
        "checksums": "verified" if check_files or from_bundle else "not checked",
        "manifest_sha256": artifact.manifest_sha256,
        "schema_version": manifest.schema_version,
        "task": manifest.task,
        "processing": manifest.processing,
        "graph": manifest.graph,
        "format": graph_format.description,
        "operators": details.get("operators", {}),
        "details": {k: v for k, v in details.items() if k != "operators"},
        "precision": manifest.precision,
        "size_bytes": artifact.size_bytes(),
        "model_bytes": sum(manifest.files[name]["size"] for name in graph_format.graph_files(artifact)),
        "parity": manifest.parity,
        "lineage": manifest.lineage,
        "files": manifest.files,
    }


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def format_inspection(info: dict[str, Any]) -> str:
    mb = info["size_bytes"] / 1e6
    lines = [
        f"artifact   {info['path']}  ({mb:.1f} MB, checksums {info['checksums']})",
        f"manifest   sha256 {info['manifest_sha256']}",
        f"task       {info['task']}",
        f"graph      {info['graph']['format']}"
        + (f", opset {info['graph']['opset']}" if info["graph"].get("opset") is not None else "")
        + (", static shapes" if info["graph"].get("static_shapes") else ""),
    ]
    for kind in ("inputs", "outputs"):
        for spec in info["graph"][kind]:
            lines.append(f"  {kind[:-1]:<7}  {spec['name']:<20} {spec['dtype']:<8} {_shape(spec['shape'])}")
    precision = info["precision"]
    lines.append(f"precision  {precision.get('mode')}"
                 + (f", {len(precision.get('kept_fp32_nodes') or [])} nodes kept in fp32"
                    if precision.get("kept_fp32_nodes") else ""))
    if info["processing"]:
        shown = {k: v for k, v in info["processing"].items() if k != "labels"}
        if "labels" in info["processing"]:
            shown["labels"] = f"{len(info['processing']['labels'])} labels"
        lines.append("processing " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    ops = info["operators"]
    if ops:
        lines.append(f"operators  {sum(ops.values())} nodes: " + ", ".join(f"{k} {v}" for k, v in list(ops.items())[:12])
                     + (" ..." if len(ops) > 12 else ""))
    for key, value in info.get("details", {}).items():
        shown = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        lines.append(f"{key:<10} {shown}")
    for stage, parity in info["parity"].items():
        lines.append(f"parity     {stage}: against {parity.get('reference')} on {parity.get('data')} "
                     f"({parity.get('samples')} samples), {'passed' if parity.get('passed') else 'FAILED'}")
        figures = dict(parity.get("outputs", {}))
        if "sentence_embedding" in parity:
            figures["sentence_embedding"] = parity["sentence_embedding"]
        for name, fig in figures.items():
            text = (f"             {name}: max abs {_number(fig.get('max_abs_err'), '.3g')}, cosine mean "
                    f"{_number(fig.get('mean_cosine'), '.6f')} min {_number(fig.get('min_cosine'), '.6f')}")
            if fig.get("top1_agreement") is not None:
                text += f", top-1 {fig['top1_agreement']:.4f}"
            lines.append(text)
        if parity.get("generation"):
            lines.append("             " + ", ".join(f"{k} {_number(v, '.4g')}" for k, v in parity["generation"].items()))
    for entry in info["lineage"]:
        params = entry.get("parameters", {})
        detail = ", ".join(f"{k}={v}" for k, v in params.items() if v not in (None, [], {}))
        lines.append(f"lineage    {entry['time']}  {entry['stage']}: {detail}")
        lines.extend(f"             note: {note}" for note in entry.get("notes") or [])
    return "\n".join(lines)
