"""Weight-only quantization of causal LMs: ``int4`` (block-wise, MatMulNBits) and
``int8-weight-only``, through onnxruntime.quantization's MatMulNBitsQuantizer.

Parity is what a user of a language model sees: greedy tokens against the FP32 artifact on
real prompts, and perplexity on real text, both recorded; a budget on either refuses the
model (defaults below measured on tiny models trained here, loose enough for a real one).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import Artifact, finalize_manifest
from ..data import generation_prompts, stdlib_sentences
from ..errors import QuantizationError
from ..manifest import Manifest, tool_versions
from ..outputs import ARTIFACT, staged_output
from .recipes import Recipe, register

NEW_TOKENS = 16


class WeightOnly(Recipe):
    """A causal-LM recipe: the stage hands it to ``quantize_causal_lm``."""

    bits: int
    budget: dict[str, float]


@register
class Int4(WeightOnly):
    mode = "int4"
    bits = 4
    budget = {"max_token_disagreement": 0.2, "max_perplexity_increase": 0.25}


@register
class Int8WeightOnly(WeightOnly):
    mode = "int8-weight-only"
    bits = 8
    budget = {"max_token_disagreement": 0.05, "max_perplexity_increase": 0.05}


def _quantize_graph(source: Path, dest: Path, bits: int, block_size: int, accuracy_level: int) -> dict[str, int]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source))
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level or None)
    try:
        quantizer.process()
    except (ValueError, RuntimeError, KeyError, NotImplementedError) as exc:
        raise QuantizationError(f"MatMulNBits quantization failed: {type(exc).__name__}: {exc}") from exc
    quantized = quantizer.model.model
    onnx.save_model(quantized, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=dest.name + ".data", size_threshold=1024)
    counts: dict[str, int] = {}
    for node in quantized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantize_causal_lm(source: Artifact, out, options, recipe: WeightOnly, target, detected, say) -> Artifact:
    """Quantize the MatMul weights of a causal-LM artifact; gate on greedy tokens and perplexity."""
    from ..parity.generation import measure_generation
    from ..runtime.genai import GenerativeModel
    from ..runtime.onnxrt import SessionSettings

    bits = recipe.bits
    budget = dict(recipe.budget)
    if options.max_token_disagreement is not None:
        budget["max_token_disagreement"] = options.max_token_disagreement
    if options.max_perplexity_increase is not None:
        budget["max_perplexity_increase"] = options.max_perplexity_increase
    prompts, texts = generation_prompts(8), stdlib_sentences(24)
    say(f"reference: {source.path} (FP32) on {len(prompts)} prompts and {len(texts)} sentences...")
    with GenerativeModel(source, SessionSettings(device="cpu")) as reference:
        prompt_ids = [reference.encode(p) for p in prompts]
        ref = [g.tokens for g in reference.generate(prompt_ids, max_new_tokens=NEW_TOKENS)]
        ref_logits = np.stack([reference.logits(ids)[-1] for ids in prompt_ids])
        ref_ppl = reference.perplexity(texts)
    with tempfile.TemporaryDirectory(prefix="edgeport-wq-") as work_dir:
        work = Path(work_dir)
        say(f"quantizing MatMul weights to {bits} bits (block {options.block_size}, accuracy level "
            f"{options.accuracy_level})...")
        graph_file = source.manifest.graph["file"]
        operators = _quantize_graph(source.model_path, work / graph_file, bits, options.block_size,
                                    options.accuracy_level)
        with staged_output(out, options.force, (source.path,), ARTIFACT) as staging:
            for name in source.manifest.files:
                if name.startswith(graph_file):
                    continue
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.member(name), staging / name)
            for item in work.iterdir():
                shutil.copyfile(item, staging / item.name)
            manifest = Manifest(task=source.task, processing=source.manifest.processing,
                                graph=dict(source.manifest.graph, external_data=True),
                                precision=_precision(recipe.mode, bits, options, target, detected, operators),
                                parity=dict(source.manifest.parity), lineage=list(source.manifest.lineage))
            manifest.add_lineage("quantize", parameters={"mode": recipe.mode, "bits": bits,
                                                         "block_size": options.block_size,
                                                         "accuracy_level": options.accuracy_level, **budget},
                                 tools=tool_versions("onnx", "onnxruntime", "onnxruntime-genai"),
                                 sources={"input_artifact": str(source.path), "input_manifest": source.manifest_sha256})
            finalize_manifest(staging, manifest)
            say("checking generation against the FP32 artifact...")
            with GenerativeModel(Artifact.load(staging, check_files=False), SessionSettings(device="cpu")) as model:
                parity = measure_generation(model, prompt_ids, ref, ref_logits, texts, ref_ppl,
                                            reference=f"input artifact '{source.path}'",
                                            data=f"{len(prompts)} docstring prompts x {NEW_TOKENS} greedy tokens; "
                                                 f"perplexity on {len(texts)} sentences",
                                            new_tokens=NEW_TOKENS, thresholds=budget)
            say(parity.summary())
            parity.raise_for_failure(f"the {recipe.mode} model")
            manifest.parity["quantize"] = parity.to_dict()
            finalize_manifest(staging, manifest)
    return Artifact.load(out, check_files=False)


def _precision(mode: str, bits: int, options, target, detected, operators) -> dict[str, Any]:
    return {"mode": mode, "target": target.name, "target_detected": detected, "format": "MatMulNBits", "bits": bits,
            "block_size": options.block_size, "accuracy_level": options.accuracy_level, "kept_fp32_nodes": [],
            "calibration": None, "operators": operators,
            "levers": [f"block-wise symmetric {bits}-bit weights (MatMulNBits)"]}
