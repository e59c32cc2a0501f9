"""The ONNX Runtime GenAI route for causal LMs: its model builder turns the families it knows
into a KV-cache graph (fp32, fp16 or int4) and ``genai_config.json``, run by ONNX Runtime
GenAI.  Measured here (onnxruntime-genai 0.18): a tiny Llama built in ~5 s, token-exact.
With runtime adapters the graph gets LoRA slots (adapters.py) and every adapter becomes an
``.onnx_adapter`` file of the artifact, switched at run time."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..errors import ExportError
from ..processes import python_module

# architectures[0] -> the family, as ONNX Runtime GenAI 0.18's builder dispatches them (text-only decoders).
BUILDER_FAMILIES = {
    "LlamaForCausalLM": "Llama", "MistralForCausalLM": "Mistral", "Qwen2ForCausalLM": "Qwen2",
    "Qwen3ForCausalLM": "Qwen3", "PhiForCausalLM": "Phi", "Phi3ForCausalLM": "Phi-3", "GemmaForCausalLM": "Gemma",
    "Gemma2ForCausalLM": "Gemma 2", "Gemma3ForCausalLM": "Gemma 3", "GraniteForCausalLM": "Granite",
    "OlmoForCausalLM": "OLMo", "NemotronForCausalLM": "Nemotron", "SmolLM3ForCausalLM": "SmolLM3",
    "InternLM2ForCausalLM": "InternLM2", "Ernie4_5ForCausalLM": "ERNIE 4.5",
}
PRECISIONS = ("fp32", "fp16", "int4")


def builder_family(config: dict) -> str | None:
    """The builder's name for the model's family, or None when the builder does not know it."""
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    return BUILDER_FAMILIES.get(architecture)


def run_builder(source: Path, out: Path, precision: str, cache: Path, extra: dict[str, str] | None = None) -> None:
    """ONNX Runtime GenAI's model builder, in its own process (it prints progress bars and
    loads the model its own way); its last lines become the error when it fails."""
    command = python_module("onnxruntime_genai.models.builder", "-m", source.name, "-i", source, "-o", out,
                            "-p", precision, "-e", "cpu", "-c", cache)
    if extra:
        command += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = [line for line in (proc.stderr + proc.stdout).strip().splitlines() if line.strip()][-3:]
        raise ExportError(f"ONNX Runtime GenAI's model builder failed: {' | '.join(tail)}")


def build_with_genai(source: Path, work: Path, precision: str, runtime_adapters: dict[str, str] | None, say):
    """The builder's folder in ``work`` and the artifact's generation record (without eos and
    chat facts, which the caller adds)."""
    built = work / "genai"
    extra = {}
    if runtime_adapters:
        from .adapters import check_adapter_fits_base

        for path in runtime_adapters.values():
            check_adapter_fits_base(source, Path(path))
        extra["adapter_path"] = str(next(iter(runtime_adapters.values())))
    say(f"building the KV-cache graph ({precision}) with ONNX Runtime GenAI's model builder...")
    run_builder(source, built, precision, work / "genai-cache", extra)
    adapter_files = {}
    if runtime_adapters:
        from .adapters import add_lora_slots, adapter_file

        slots = add_lora_slots(built / "model.onnx")
        for name, path in runtime_adapters.items():
            say(f"converting adapter '{name}' to an ONNX Runtime adapter file...")
            adapter_files[name] = adapter_file(source, Path(path), precision, slots, built / "adapters", name, work)
    genai = json.loads((built / "genai_config.json").read_text(encoding="utf-8"))["model"]
    generation = {"config": "genai_config.json", "context_length": int(genai["context_length"]),
                  "adapters": adapter_files}
    return built, generation, int(genai.get("pad_token_id") or 0)
