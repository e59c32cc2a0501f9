"""Weight-only quantization of causal LMs: ``int4`` (block-wise, MatMulNBits) and
``int8-weight-only``, through onnxruntime.quantization's MatMulNBitsQuantizer.

Parity is what a user of a language model sees: greedy tokens against the FP32 artifact on
real prompts, and perplexity on real text, both recorded; a budget on either refuses the
model (defaults below measured on tiny models trained here, loose enough for a real one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..data import generation_prompts, stdlib_sentences
from ..errors import InvalidOptionError, QuantizationError, UnsupportedModelError, refuse_unused
from ..runtime.onnxrt import SessionSettings
from .recipes import Outcome, QuantizeJob, Recipe, register
from .writing import candidate_folder

# The options that belong to INT8/FP16 recipes of encoders; given to a weight-only mode they would be ignored.
ENCODER_OPTIONS = ("calib", "min_cosine", "max_abs_error", "min_top1_agreement", "min_p01_cosine")


class WeightOnly(Recipe):
    """MatMul weights to ``bits`` bits, block-wise; activations stay in float."""

    formats = ("genai", "onnx-decoder")
    purpose = "causal language models (task text-generation)"
    tools = ("onnx", "onnxruntime", "onnxruntime-genai")
    bits: ClassVar[int]
    budget: ClassVar[dict[str, float]]

    def check(self, options, target) -> None:
        given = [f"--{name.replace('_', '-')}" for name in ENCODER_OPTIONS if getattr(options, name) is not None]
        if given:
            raise InvalidOptionError(f"{', '.join(given)} do not apply to --mode {self.mode}, which is gated on greedy "
                                     "tokens and perplexity: use --max-token-disagreement / --max-perplexity-increase")
        # The INT8 encoder recipes' levers: a weight-only build has none of them, so none is ignored silently.
        refuse_unused((
            ("--data", options.data is not None), ("--per-tensor/--per-channel", options.per_channel is not None),
            ("--smooth-alpha", options.smooth_alpha is not None), ("--no-smooth", not options.smooth),
            ("--calibration-method", options.calibration_method != "minmax"), ("--optimize", options.optimize),
            ("--no-worst-case-guard", not options.worst_case_guard), ("--max-kept-nodes", options.max_kept_nodes),
            ("--no-fp16-fallback", not options.fp16_fallback), ("--target", options.target is not None)),
            f"to --mode {self.mode}: it quantizes MatMul weights block-wise (--block-size, --accuracy-level) the same "
            "way on every CPU, and checks generation on bundled prompts")

    def gate(self, options) -> dict[str, float]:
        budget = dict(self.budget)
        if options.max_token_disagreement is not None:
            budget["max_token_disagreement"] = options.max_token_disagreement
        if options.max_perplexity_increase is not None:
            budget["max_perplexity_increase"] = options.max_perplexity_increase
        return budget

    def run(self, job: QuantizeJob) -> Outcome:
        from ..parity.generation import CHECK_PROMPTS, CHECK_TEXTS, measure_generation, reference_answers
        from ..runtime.formats import make_generator

        options, source = job.options, job.source
        adapters = sorted(name for name in source.manifest.files if name.startswith("adapters/"))
        if adapters:         # their LoRA slots feed float32 MatMuls, which MatMulNBits replaces (inputs dropped)
            raise UnsupportedModelError(
                f"'{source.path}' carries runtime LoRA adapters ({', '.join(adapters)}): --mode {self.mode} replaces "
                "the float32 MatMuls their slots feed, so every adapter would fail to load; merge the adapter before "
                "export (edgeport merge, or export --adapter), or quantize an export made without --runtime-adapter")
        budget = self.gate(options)
        prompts, texts = generation_prompts(CHECK_PROMPTS), stdlib_sentences(CHECK_TEXTS)
        job.say(f"reference: {source.path} (FP32) on {len(prompts)} prompts and {len(texts)} sentences...")
        with make_generator(source, SessionSettings(device="cpu")) as reference:
            prompt_ids, tokens, logits, perplexity, new_tokens = reference_answers(reference, prompts, texts)
        job.say(f"quantizing MatMul weights to {self.bits} bits (block {options.block_size}, accuracy level "
                f"{options.accuracy_level})...")
        model_file = job.work / "quantized" / source.manifest.graph["file"]
        operators, left_in_float = self._quantize_graph(source.model_path, model_file, options)
        outcome = Outcome(model_file, self._precision(job, operators, left_in_float), {},
                          {**self.lineage_parameters(job), **budget})
        job.say("checking generation against the FP32 artifact...")
        candidate = candidate_folder(job.work / "candidate", source, outcome)
        with make_generator(candidate, SessionSettings(device="cpu")) as model:
            parity = measure_generation(model, prompt_ids, tokens, logits, texts, perplexity,
                                        reference=f"input artifact '{source.path}'",
                                        data=f"{len(prompts)} docstring prompts x {new_tokens} greedy tokens; "
                                             f"perplexity on {len(texts)} sentences",
                                        new_tokens=new_tokens, thresholds=budget)
        job.say(parity.summary())
        parity.raise_for_failure(f"the {self.mode} model")
        outcome.parity["quantize"] = parity.to_dict()
        return outcome

    def _quantize_graph(self, source: Path, dest: Path, options) -> tuple[dict[str, int], list[str]]:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        from .graph import gemms_as_matmuls

        model = onnx.load(str(source))
        gemms_as_matmuls(model)
        quantizer = MatMulNBitsQuantizer(model, bits=self.bits, block_size=options.block_size, is_symmetric=True,
                                         accuracy_level=options.accuracy_level or None)
        try:
            quantizer.process()
        except (ValueError, RuntimeError, KeyError, NotImplementedError) as exc:
            raise QuantizationError(f"MatMulNBits quantization failed: {type(exc).__name__}: {exc}") from exc
        quantized = quantizer.model.model
        dest.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(quantized, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dest.name + ".data", size_threshold=1024)
        counts: dict[str, int] = {}
        for node in quantized.graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if not counts.get("MatMulNBits"):
            raise QuantizationError(f"no MatMul weight in '{source.name}' could be quantized to {self.bits} bits "
                                    f"(block size {options.block_size} needs weights at least that wide); the "
                                    "graph would be written unchanged")
        return counts, _float_weight_matmuls(quantized)

    def _precision(self, job: QuantizeJob, operators: dict[str, int], left_in_float: list[str]) -> dict[str, Any]:
        options = job.options
        return {"mode": self.mode, "target": job.target.name, "target_detected": job.target_detected,
                "format": "MatMulNBits", "bits": self.bits, "block_size": options.block_size,
                "accuracy_level": options.accuracy_level, "kept_fp32_nodes": left_in_float, "calibration": None,
                "operators": operators, "levers": [f"block-wise symmetric {self.bits}-bit weights (MatMulNBits)"]}

    def lineage_parameters(self, job: QuantizeJob) -> dict[str, Any]:
        return {**super().lineage_parameters(job), "bits": self.bits, "block_size": job.options.block_size,
                "accuracy_level": job.options.accuracy_level}


def _float_weight_matmuls(model) -> list[str]:
    """MatMuls still multiplying by a weight in float: those MatMulNBits did not take, such as a
    tied LM head, which reads the embedding through a Transpose (recorded, not hidden)."""
    from .graph import initializer_names

    constants = initializer_names(model)
    producers = {output: node for node in model.graph.node for output in node.output}

    def weight(name: str) -> bool:
        node = producers.get(name)
        return name in constants or (node is not None and node.op_type in ("Transpose", "Cast", "Identity")
                                     and bool(node.input) and weight(node.input[0]))

    return sorted(node.name or node.output[0] for node in model.graph.node
                  if node.op_type == "MatMul" and len(node.input) > 1 and weight(node.input[1]))


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
