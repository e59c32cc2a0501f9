"""Causal language models on ONNX Runtime GenAI: generation with a KV cache, greedy or
sampled, batched or streamed, with LoRA adapters switched at run time on one base model.
No torch: onnxruntime-genai (the ``llm`` extra), numpy and the artifact's tokenizer.  The
prompt handling, checks and results are generation.py's; this module drives GenAI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..artifact import Artifact
from ..errors import AdapterError, ArtifactError, DeviceError, ModelInputError, require
from .generation import CausalLMRunner, Generation, GenerativeModel, Piece, Sampling, TokenizerTextStream
from .onnxrt import SessionSettings
from .processing import load_tokenizer

__all__ = ["GenAIModel", "Generation", "Piece", "Sampling", "check_adapter_file"]


PAD = -1   # the padding id GenAI is told to mask: no prompt can hold it


def session_overlay(settings: SessionSettings) -> dict:
    """The thread count and spinning of ``settings`` as a genai_config overlay.  Without it the
    generator picks its own (measured here: about one thread's speed on 2 cores, spinning on),
    so a bench's "equal footing" would not hold.  GenAI passes string-valued session options
    through as ONNX Runtime session config entries."""
    options: dict = {}
    if settings.threads:
        options["intra_op_num_threads"] = settings.threads
    if settings.inter_op_threads:
        options["inter_op_num_threads"] = settings.inter_op_threads
    if not settings.spinning:
        options["session.intra_op.allow_spinning"] = options["session.inter_op.allow_spinning"] = "0"
    return {"model": {"decoder": {"session_options": options}}} if options else {}


class GenAIModel(GenerativeModel):
    """A causal-LM artifact built by ONNX Runtime GenAI's model builder, loaded for generation."""

    def __init__(self, artifact: Artifact, settings: SessionSettings = SessionSettings(),
                 adapters: dict[str, str] | None = None):
        og = require("onnxruntime_genai", "llm")
        if settings.device in ("cuda", "tensorrt") and not og.is_cuda_available():
            raise DeviceError(f"device '{settings.device}' needs the CUDA build of onnxruntime-genai "
                              "(onnxruntime-genai-cuda); this installation runs on the CPU")
        generation = artifact.manifest.processing.get("generation")
        if not generation:
            raise ModelInputError(f"'{artifact.path}' has no generation config (KV cache): it cannot generate")
        super().__init__(artifact, "onnxruntime-genai (CPU)", int(generation.get("context_length", 2048)),
                         {int(i) for i in generation.get("eos_token_ids", [])}, bool(generation.get("chat_template")))
        artifact.member(generation["config"])          # the config is a checksummed member
        config = og.Config(str(artifact.path))
        if settings.device in ("auto", "cpu"):
            config.clear_providers()
        # GenAI masks every input token equal to pad_token_id as padding, so a prompt holding
        # that token (pad is eos in many models; chat templates write eos between turns) was
        # generated as if the token were absent.  No real token is -1; batches pad with it
        # (ONNX Gather takes -1 as the last row; those positions are masked).
        overlay = session_overlay(settings)
        overlay.setdefault("model", {})["pad_token_id"] = PAD
        # ONNX Runtime's own error lines would repeat, in red on stderr, what edgeport raises.
        options = overlay["model"].setdefault("decoder", {}).setdefault("session_options", {})
        options["log_severity_level"] = 4
        config.overlay(json.dumps(overlay))
        self._og = og
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self._adapters = og.Adapters(self.model)
        self.lora_inputs = {spec.name: spec for spec in artifact.manifest.inputs if _is_lora_input(spec.name)}
        for name, file in generation.get("adapters", {}).items():
            self.load_adapter(name, artifact.member(file))
        for name, file in (adapters or {}).items():
            self.load_adapter(name, Path(file))
        self.runner = CausalLMRunner(self)

    # ------------------------------------------------------------------ adapters

    def load_adapter(self, name: str, file: Path) -> None:
        """Load a LoRA adapter file (.onnx_adapter) made for this base model."""
        if not isinstance(name, str) or not name:
            raise AdapterError("an adapter needs a name")
        if name in self.adapter_names:
            raise AdapterError(f"an adapter named '{name}' is already loaded")
        if not self.lora_inputs:
            raise AdapterError(f"'{self.artifact.path}' was exported without LoRA slots, so it cannot take runtime "
                               "adapters; export it with --runtime-adapter (or merge the adapter instead)")
        check_adapter_file(Path(file), self.lora_inputs)
        self._adapters.load(str(file), name)
        self.adapter_names.append(name)

    # ------------------------------------------------------------------ the hooks generation.py calls

    def _encode_text(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, tokens: Sequence[int]) -> str:
        # ONNX Runtime GenAI's decode stops at the first byte sequence that is not valid UTF-8
        # (an untrained or byte-level model makes them): the rest of the text would be lost.
        # The tokenizers library decodes the same tokenizer.json as transformers does.
        if self._text_decoder is not None:
            return self._text_decoder.decode([int(t) for t in tokens], skip_special_tokens=True)
        return self.tokenizer.decode(np.asarray(list(tokens), dtype=np.int32))

    @property
    def _text_decoder(self):
        if not hasattr(self, "_tokenizers_decoder"):
            self._tokenizers_decoder = None
            name = self.artifact.manifest.processing.get("tokenizer")
            if name:
                try:
                    self._tokenizers_decoder = load_tokenizer(self.artifact.member(name))
                except ArtifactError:  # GenAI's own decoder stays
                    self._tokenizers_decoder = None
        return self._tokenizers_decoder

    def _apply_chat_template(self, messages: Sequence[dict]) -> str:
        import json

        return self.tokenizer.apply_chat_template(json.dumps(list(messages)), add_generation_prompt=True)

    def _search_options(self, sampling: Sampling, max_length: int, batch_size: int) -> dict[str, Any]:
        # genai_config.json carries the source's repetition penalty and n-gram ban; edgeport's
        # runtimes decode without them on both routes (the export's note says so).
        options: dict[str, Any] = {"max_length": max_length, "batch_size": batch_size, "do_sample": sampling.sampled,
                                   "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0}
        if sampling.sampled:
            # top_k past the vocabulary means every token, as on the other route (GenAI refused it mid-stream)
            options.update(temperature=float(sampling.temperature or 1.0),
                           top_k=min(int(sampling.top_k or 0), self.vocab_size()),
                           top_p=float(sampling.top_p or 1.0))
            if sampling.seed is not None:
                options["random_seed"] = int(sampling.seed)
        return options

    def _start(self, prompts: list[list[int]], sampling: Sampling, adapter: str | None, new_tokens: int | None = None):
        try:
            params = self._og.GeneratorParams(self.model)
            width = max(len(p) for p in prompts)
            room = sampling.max_new_tokens if new_tokens is None else new_tokens
            params.set_search_options(**self._search_options(sampling, width + room, len(prompts)))
            generator = self._og.Generator(self.model, params)
            if adapter is not None:
                generator.set_active_adapter(self._adapters, adapter)
            batch = np.full((len(prompts), width), PAD, dtype=np.int32)
            for row, prompt in enumerate(prompts):
                batch[row, :len(prompt)] = prompt
            generator.append_tokens(batch if len(prompts) > 1 else batch[0])
        except RuntimeError as exc:   # onnxruntime-genai reports every refusal as a RuntimeError
            raise ModelInputError(f"ONNX Runtime GenAI refused to run the model: {str(exc).splitlines()[0]}") from exc
        return generator, width

    def _generate(self, prompts: list[list[int]], sampling: Sampling, adapter: str | None) -> list[list[int]]:
        generator, width = self._start(prompts, sampling, adapter)
        try:
            while not generator.is_done():
                generator.generate_next_token()
        except RuntimeError as exc:
            raise ModelInputError(f"ONNX Runtime GenAI failed while generating: {str(exc).splitlines()[0]}") from exc
        return [[int(t) for t in list(generator.get_sequence(row))[width:]] for row in range(len(prompts))]

    def _token_stream(self, ids: list[int], sampling: Sampling, adapter: str | None) -> Iterator[int]:
        generator, _ = self._start([ids], sampling, adapter)
        while not generator.is_done():
            try:
                generator.generate_next_token()
            except RuntimeError as exc:
                raise ModelInputError(f"ONNX Runtime GenAI failed while generating: {str(exc).splitlines()[0]}") \
                    from exc
            yield int(generator.get_next_tokens()[0])

    def _text_stream(self, ids: list[int]):
        # The same decoder as decode(), so a stream ends with the text an unstreamed call gives
        # (GenAI's own stream decoder dropped text after bytes that are not yet whole characters).
        if self._text_decoder is not None:
            return TokenizerTextStream(self._text_decoder, ids)
        stream = self.tokenizer.create_stream()

        class Step:
            def step(self, token: int) -> str:
                return stream.decode(token)

        return Step()

    def logits(self, ids: Sequence[int], adapter: str | None = None) -> np.ndarray:
        ids = self.encode(list(ids))
        with self._lock:
            # Logits of the tokens given, none generated: a text as long as the context fits (len + 1 did not).
            generator, _ = self._start([ids], Sampling(max_new_tokens=1), adapter, new_tokens=0)
            return np.asarray(generator.get_output("logits"), dtype=np.float32)[0, :len(ids)]

    def close(self) -> None:
        super().close()
        self.model = None


def _is_lora_input(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or name.endswith((".lora_A", ".lora_B"))


def check_adapter_file(file: Path, lora_inputs: dict) -> None:
    """An adapter file must set exactly this base's LoRA inputs, with matching shapes
    (the rank may differ; every other dimension must agree)."""
    import onnxruntime as ort

    if not file.is_file():
        raise AdapterError(f"adapter file '{file}' does not exist")
    try:
        adapter = ort.AdapterFormat.read_adapter(str(file))
        parameters = adapter.get_parameters()
    except Exception as exc:  # the flatbuffer reader raises bare RuntimeErrors / Fail for any bad file
        raise AdapterError(f"'{file}' is not an ONNX Runtime adapter file (.onnx_adapter): {exc}") from exc
    names = set(parameters)
    if names != set(lora_inputs):
        missing, extra = sorted(set(lora_inputs) - names), sorted(names - set(lora_inputs))
        raise AdapterError(f"adapter '{file}' does not fit this base model: it sets {len(names)} LoRA weights, the "
                           f"base takes {len(lora_inputs)} (missing {missing[:2]}, unknown {extra[:2]}); it was made "
                           "for another base or other target modules")
    for name, value in parameters.items():
        shape = list(value.shape())
        expected = lora_inputs[name].shape
        if len(shape) != len(expected) or any(isinstance(w, int) and w != g for w, g in zip(expected, shape)):
            raise AdapterError(f"adapter '{file}': '{name}' has shape {shape}, the base expects {list(expected)}; "
                               "it was made for another base model")
