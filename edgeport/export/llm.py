"""Causal language models: ``export onnx --task text-generation`` through ONNX Runtime GenAI's
model builder (a KV-cache graph, fp32 / fp16 / int4), verified against transformers'
``generate`` on real prompts before anything is written.

Measured here (onnxruntime-genai 0.18, transformers 5.24): the builder turned a tiny Llama
into a KV-cache model in ~5 s, and its greedy tokens equalled transformers' token for
token.  Families the builder does not cover (GPT-2, for one) are refused with the list of
those it does: a torch.onnx export with past key/values would need a generation loop of
our own in the runtime, which GenAI already is.

With ``runtime_adapters`` the base graph gets LoRA slots (adapters.py) and every adapter
becomes an ``.onnx_adapter`` file inside the artifact, switched at run time.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..artifact import Artifact, finalize_manifest
from ..data import generation_prompts, stdlib_sentences
from ..errors import ExportError, InvalidOptionError, ModelInputError, SourceError, UnsupportedModelError, require
from ..golden import save_golden
from ..manifest import GOLDEN_NAME, Manifest, tool_versions
from ..outputs import ARTIFACT, staged_output
from ..parity.generation import measure_generation
from .quiet import quiet_transformers
from .source import load_hf_config, read_config, weight_files

# architectures[0] -> the family, as ONNX Runtime GenAI 0.18's builder dispatches them (text-only decoders).
BUILDER_FAMILIES = {
    "LlamaForCausalLM": "Llama", "MistralForCausalLM": "Mistral", "Qwen2ForCausalLM": "Qwen2",
    "Qwen3ForCausalLM": "Qwen3", "PhiForCausalLM": "Phi", "Phi3ForCausalLM": "Phi-3", "GemmaForCausalLM": "Gemma",
    "Gemma2ForCausalLM": "Gemma 2", "Gemma3ForCausalLM": "Gemma 3", "GraniteForCausalLM": "Granite",
    "OlmoForCausalLM": "OLMo", "NemotronForCausalLM": "Nemotron", "SmolLM3ForCausalLM": "SmolLM3",
    "InternLM2ForCausalLM": "InternLM2", "Ernie4_5ForCausalLM": "ERNIE 4.5",
}
PRECISIONS = ("fp32", "fp16", "int4")
NEW_TOKENS = 16
PROMPTS = 8
PERPLEXITY_TEXTS = 24
# The export gate refuses a broken model; the figures themselves go into the manifest.
GATES = {"fp32": {"max_token_disagreement": 0.02, "min_cosine": 0.9999},
         "fp16": {"max_token_disagreement": 0.1, "min_cosine": 0.999},
         "int4": {"max_token_disagreement": 0.3, "min_cosine": 0.95}}


def check_family(folder: Path, config: dict) -> str:
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    if architecture not in BUILDER_FAMILIES:
        families = ", ".join(sorted(set(BUILDER_FAMILIES.values())))
        raise UnsupportedModelError(
            f"'{architecture}' is not a family ONNX Runtime GenAI's model builder supports, so it cannot be exported "
            f"with a KV cache. Supported: {families}. (GPT-2 and other families are not covered; export an encoder "
            "task with --task feature-extraction, or use a supported family)")
    if not (folder / "tokenizer.json").is_file():
        raise SourceError(f"'{folder}' has no tokenizer.json: causal LMs need a fast tokenizer (save it with "
                          "tokenizer.save_pretrained(folder))")
    return architecture


def run_builder(source: Path, out: Path, precision: str, cache: Path, extra: dict[str, str] | None = None) -> None:
    """ONNX Runtime GenAI's model builder, in its own process (it prints progress bars and
    loads the model its own way); its last lines become the error when it fails."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", source.name, "-i", str(source),
               "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache)]
    if extra:
        command += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = [line for line in (proc.stderr + proc.stdout).strip().splitlines() if line.strip()][-3:]
        raise ExportError(f"ONNX Runtime GenAI's model builder failed on '{source}': {' | '.join(tail)}; "
                          "nothing was written")


class Reference:
    """transformers' answers on the real prompts and texts: greedy tokens, next-token logits,
    perplexity."""

    def __init__(self, folder: Path, prompts: list[str], texts: list[str]):
        import torch
        import transformers

        with quiet_transformers():
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            try:
                self.model = transformers.AutoModelForCausalLM.from_pretrained(
                    folder, dtype=torch.float32, attn_implementation="eager").eval()
            except (ValueError, TypeError, ImportError):
                self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.prompt_ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        self.tokens, logits = [], []
        with torch.no_grad(), quiet_transformers():
            for ids in self.prompt_ids:
                tensor = torch.tensor([ids])
                out = self.model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=NEW_TOKENS,
                                          do_sample=False, pad_token_id=next(iter(self.eos), 0))
                self.tokens.append(self.trim(out[0, len(ids):].tolist()))
                logits.append(self.model(tensor).logits[0, -1].float().numpy())
        self.logits = np.stack(logits)
        self.text_ids = [ids for ids in (self.tokenizer(t)["input_ids"] for t in texts) if len(ids) >= 2]
        self.perplexity = self._perplexity()

    def trim(self, tokens: list[int]) -> list[int]:
        for index, token in enumerate(tokens):
            if token in self.eos:
                return tokens[:index]
        return tokens

    def _perplexity(self) -> float:
        import torch

        total, count = 0.0, 0
        with torch.no_grad():
            for ids in self.text_ids:
                tensor = torch.tensor([ids])
                loss = float(self.model(tensor, labels=tensor).loss)
                total += loss * (len(ids) - 1)
                count += len(ids) - 1
        return math.exp(total / count)

    def golden(self) -> tuple[dict, dict]:
        width = max(len(ids) for ids in self.prompt_ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = np.full((len(self.prompt_ids), width), pad, np.int64)
        mask = np.zeros_like(input_ids)
        tokens = np.full((len(self.tokens), NEW_TOKENS), -1, np.int64)
        for row, (ids, new) in enumerate(zip(self.prompt_ids, self.tokens)):
            input_ids[row, :len(ids)], mask[row, :len(ids)] = ids, 1
            tokens[row, :len(new)] = new
        return ({"input_ids": input_ids, "attention_mask": mask},
                {"greedy_tokens": tokens, "next_token_logits": self.logits})


def export_causal_lm(folder: Path, out, options, progress=None, runtime_adapters: dict[str, str] | None = None
                     ) -> Artifact:
    from ..runtime.genai import GenerativeModel
    from ..runtime.onnxrt import SessionSettings

    say = progress or (lambda message: None)
    if options.precision not in PRECISIONS:
        raise InvalidOptionError(f"--precision must be one of {', '.join(PRECISIONS)} for causal LMs")
    if options.static_shapes or options.exporter not in ("auto",):
        raise InvalidOptionError("causal LMs export through ONNX Runtime GenAI's builder: --static-shapes and "
                                 "--exporter do not apply")
    config = read_config(folder)
    architecture = check_family(folder, config)
    weights = weight_files(folder, options.allow_pickle)
    require("onnxruntime_genai", "llm")
    require("torch", "export")
    load_hf_config(folder)                   # a config transformers refuses fails here, with its reason
    prompts = generation_prompts(PROMPTS)
    texts = stdlib_sentences(PERPLEXITY_TEXTS)
    say(f"causal LM ({BUILDER_FAMILIES[architecture]}); reference: transformers greedy generate on {len(prompts)} "
        "real prompts...")
    reference = Reference(folder, prompts, texts)
    data = f"{len(prompts)} docstring prompts x {NEW_TOKENS} greedy tokens; perplexity on {len(reference.text_ids)} sentences"
    with tempfile.TemporaryDirectory(prefix="edgeport-llm-") as work_dir:
        work = Path(work_dir)
        built = work / "model"
        say(f"building the KV-cache graph ({options.precision}) with ONNX Runtime GenAI's model builder...")
        extra = {}
        if runtime_adapters:
            from .adapters import check_adapter_fits_base

            for path in runtime_adapters.values():
                check_adapter_fits_base(folder, Path(path))
            extra["adapter_path"] = str(next(iter(runtime_adapters.values())))
        run_builder(folder, built, options.precision, work / "cache", extra)
        adapter_files = {}
        if runtime_adapters:
            from .adapters import add_lora_slots, adapter_file

            slots = add_lora_slots(built / "model.onnx")
            for name, path in runtime_adapters.items():
                say(f"converting adapter '{name}' to an ONNX Runtime adapter file...")
                adapter_files[name] = adapter_file(folder, Path(path), options.precision, slots, built / "adapters",
                                                   name, work)
        with staged_output(out, options.force, (folder, *(runtime_adapters or {}).values()), ARTIFACT) as staging:
            for item in built.iterdir():
                (shutil.copytree if item.is_dir() else shutil.copyfile)(item, staging / item.name)
            shutil.copyfile(folder / "config.json", staging / "config.json")
            save_golden(staging / GOLDEN_NAME, *reference.golden())
            manifest = _manifest(staging, reference, options, architecture, adapter_files)
            from .lora import read_merge_record

            record = read_merge_record(folder)
            if record:
                manifest.lineage.append(record)
            manifest.add_lineage("export", parameters={
                "source": str(folder), "task": "text-generation", "precision": options.precision, "route": "genai-builder",
                "model_type": config["model_type"], "family": BUILDER_FAMILIES[architecture],
                "runtime_adapters": {k: str(v) for k, v in (runtime_adapters or {}).items()}},
                tools=tool_versions("torch", "transformers", "onnxruntime", "onnxruntime-genai"),
                sources={p.name: _sha(p) for p in weights}, notes=[f"builder: -p {options.precision} -e cpu"])
            finalize_manifest(staging, manifest)
            say("checking generation against transformers...")
            try:
                model = GenerativeModel(Artifact.load(staging, check_files=False), SessionSettings(device="cpu"))
            except (ModelInputError, RuntimeError) as exc:
                raise ExportError(f"the built model does not load in ONNX Runtime GenAI: {exc}") from exc
            with model:
                try:
                    parity = measure_generation(model, reference.prompt_ids, reference.tokens, reference.logits, texts,
                                                reference.perplexity, reference="PyTorch (transformers generate)",
                                                data=data, new_tokens=NEW_TOKENS, thresholds=GATES[options.precision])
                except ModelInputError as exc:
                    raise ExportError(f"the built model does not run in ONNX Runtime GenAI: {exc}") from exc
            parity.raise_for_failure(f"the exported {options.precision} model")
            say(parity.summary())
            manifest.parity["export"] = parity.to_dict()
            finalize_manifest(staging, manifest)
    return Artifact.load(out, check_files=False)


def _sha(path: Path) -> str:
    from ..artifact import sha256_file

    return sha256_file(path)


def _manifest(folder: Path, reference: Reference, options, architecture: str, adapters: dict[str, str]) -> Manifest:
    import json

    from .onnx import graph_io

    genai = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]
    eos = genai.get("eos_token_id", [])
    inputs, outputs, opset = graph_io(folder / "model.onnx", {"input_ids": {"range": [0, int(genai["vocab_size"]) - 1]}})
    chat = bool(getattr(reference.tokenizer, "chat_template", None))
    processing = {"tokenizer": "tokenizer.json", "max_length": int(genai["context_length"]),
                  "pad_id": int(genai.get("pad_token_id") or 0),
                  "generation": {"config": "genai_config.json", "context_length": int(genai["context_length"]),
                                 "eos_token_ids": [int(e) for e in (eos if isinstance(eos, list) else [eos])],
                                 "chat_template": chat, "family": BUILDER_FAMILIES[architecture],
                                 "adapters": adapters}}
    precision = {"mode": options.precision, "kept_fp32_nodes": [], "calibration": None}
    if options.precision == "int4":
        precision.update(format="MatMulNBits", bits=4, block_size=32, accuracy_level=4)
    graph = {"format": "genai", "file": "model.onnx", "opset": opset, "inputs": inputs, "outputs": outputs,
             "static_shapes": False, "external_data": (folder / "model.onnx.data").exists()}
    return Manifest(task="text-generation", graph=graph, processing=processing, precision=precision)
