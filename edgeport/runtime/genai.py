"""Causal language models on ONNX Runtime GenAI: generation with a KV cache, greedy or
sampled, batched or streamed, with LoRA adapters switched at run time on one base model.
No torch: onnxruntime-genai (the ``llm`` extra), numpy and the artifact's tokenizer.

    model = load("out/lm-int4")
    [result] = model.generate(["Once upon a time"], max_new_tokens=32)
    for piece in model.stream("Once upon a time"):
        print(piece.text, end="")
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..artifact import Artifact
from ..errors import AdapterError, DeviceError, InvalidOptionError, ModelInputError, require
from ..vocabulary import DEFAULT_MAX_NEW_TOKENS
from .onnxrt import SessionSettings
from .runner import Runner


@dataclass
class Generation:
    prompt_tokens: list[int]
    tokens: list[int]                 # the new tokens only
    text: str                         # the new tokens, decoded
    finish_reason: str                # "stop" (end of sequence or a stop string) or "length"

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": len(self.prompt_tokens), "tokens": self.tokens, "text": self.text,
                "finish_reason": self.finish_reason}


@dataclass
class Piece:
    """One streamed token."""

    token: int
    text: str


@dataclass(frozen=True)
class Sampling:
    """How to pick the next token: greedy unless a temperature is given."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise InvalidOptionError(f"max_new_tokens must be a whole number >= 1 (got {self.max_new_tokens!r})")
        if self.temperature is not None and not (isinstance(self.temperature, (int, float)) and
                                                 math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidOptionError(f"temperature must be a finite number > 0 (got {self.temperature!r})")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise InvalidOptionError(f"top_k must be a whole number >= 1 (got {self.top_k!r})")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise InvalidOptionError(f"top_p must be in (0, 1] (got {self.top_p!r})")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise InvalidOptionError(f"seed must be a whole number (got {self.seed!r})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidOptionError("stop strings must be non-empty strings")

    @property
    def sampled(self) -> bool:
        return self.temperature is not None or self.top_k is not None or self.top_p is not None

    def search_options(self, max_length: int, batch_size: int) -> dict[str, Any]:
        options: dict[str, Any] = {"max_length": max_length, "batch_size": batch_size, "do_sample": self.sampled}
        if self.sampled:
            options.update(temperature=float(self.temperature or 1.0), top_k=int(self.top_k or 0),
                           top_p=float(self.top_p or 1.0))
            if self.seed is not None:
                options["random_seed"] = int(self.seed)
        return options


class GenerativeModel:
    """A causal-LM artifact loaded for generation."""

    def __init__(self, artifact: Artifact, settings: SessionSettings = SessionSettings(),
                 adapters: dict[str, str] | None = None):
        og = require("onnxruntime_genai", "llm")
        if settings.device in ("cuda", "tensorrt") and not og.is_cuda_available():
            raise DeviceError(f"device '{settings.device}' needs the CUDA build of onnxruntime-genai "
                              "(onnxruntime-genai-cuda); this installation runs on the CPU")
        generation = artifact.manifest.processing.get("generation")
        if not generation:
            raise ModelInputError(f"'{artifact.path}' has no generation config (KV cache): it cannot generate")
        self.artifact = artifact
        self.task = artifact.task
        self.provider = "onnxruntime-genai (CPU)"
        self.context_length = int(generation.get("context_length", 2048))
        artifact.member(generation["config"])          # the config is a checksummed member
        config = og.Config(str(artifact.path))
        if settings.device in ("auto", "cpu"):
            config.clear_providers()
        self._og = og
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.eos = set(int(i) for i in generation.get("eos_token_ids", []))
        self.chat_template = bool(generation.get("chat_template"))
        self._adapters = og.Adapters(self.model)
        self.adapter_names: list[str] = []
        self.lora_inputs = {spec.name: spec for spec in artifact.manifest.inputs if _is_lora_input(spec.name)}
        for name, file in generation.get("adapters", {}).items():
            self.load_adapter(name, artifact.member(file))
        for name, file in (adapters or {}).items():
            self.load_adapter(name, Path(file))
        self._lock = threading.Lock()
        self.runner = GenAIRunner(self)

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

    # ------------------------------------------------------------------ text

    def encode(self, prompt) -> list[int]:
        """A prompt as token ids: text, a list of ids, or chat messages (a list of
        {"role", "content"} dicts, formatted with the tokenizer's chat template)."""
        if isinstance(prompt, str):
            if not prompt:
                raise ModelInputError("the prompt is empty; give at least one character")
            from .processing import check_texts

            check_texts([prompt])
            return [int(t) for t in self.tokenizer.encode(prompt)]
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
            return self.encode(self.format_chat(prompt))
        if isinstance(prompt, (list, tuple, np.ndarray)):
            ids = [int(t) for t in np.asarray(prompt).reshape(-1)] if len(prompt) else []
            if not ids:
                raise ModelInputError("the prompt has no tokens")
            vocab = self.vocab_size()
            if min(ids) < 0 or max(ids) >= vocab:
                raise ModelInputError(f"prompt token ids must be in [0, {vocab - 1}]")
            return ids
        raise ModelInputError(f"a prompt is text, token ids or chat messages, not {type(prompt).__name__}")

    def format_chat(self, messages: Sequence[dict]) -> str:
        import json

        for message in messages:
            if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise ModelInputError("chat messages need a string 'role' and 'content'")
        if not self.chat_template:
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return self.tokenizer.apply_chat_template(json.dumps(list(messages)), add_generation_prompt=True)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(np.asarray(list(tokens), dtype=np.int32))

    def vocab_size(self) -> int:
        spec = next((s for s in self.artifact.manifest.outputs if s.name == "logits"), None)
        size = spec.shape[-1] if spec is not None else None
        return int(size) if isinstance(size, int) else 2 ** 31 - 1

    # ------------------------------------------------------------------ generation

    def _check_room(self, prompt: list[int], sampling: Sampling) -> None:
        if len(prompt) + sampling.max_new_tokens > self.context_length:
            raise ModelInputError(f"the prompt ({len(prompt)} tokens) plus max_new_tokens ({sampling.max_new_tokens}) "
                                  f"is past the model's context of {self.context_length} tokens")

    def _generator(self, prompts: list[list[int]], sampling: Sampling, adapter: str | None):
        try:
            return self._start(prompts, sampling, adapter)
        except RuntimeError as exc:   # onnxruntime-genai reports every refusal as a RuntimeError
            raise ModelInputError(f"ONNX Runtime GenAI refused to run the model: {str(exc).splitlines()[0]}") from exc

    def _start(self, prompts: list[list[int]], sampling: Sampling, adapter: str | None):
        params = self._og.GeneratorParams(self.model)
        width = max(len(p) for p in prompts)
        params.set_search_options(**sampling.search_options(width + sampling.max_new_tokens, len(prompts)))
        generator = self._og.Generator(self.model, params)
        if adapter is not None:
            if adapter not in self.adapter_names:
                raise AdapterError(f"no adapter named '{adapter}' is loaded (loaded: {', '.join(self.adapter_names) or 'none'})")
            generator.set_active_adapter(self._adapters, adapter)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = np.full((len(prompts), width), pad, dtype=np.int32)
        for row, prompt in enumerate(prompts):
            batch[row, :len(prompt)] = prompt
        generator.append_tokens(batch if len(prompts) > 1 else batch[0])
        return generator, width

    def generate(self, prompts, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop: Sequence[str] = (),
                 adapter: str | None = None) -> list[Generation]:
        """Continue each prompt (text, token ids, or chat messages); one Generation per prompt.
        A batch of prompts runs as one batch (ragged prompts padded, and masked)."""
        sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop))
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ModelInputError("give at least one prompt")
        encoded = [self.encode(p) for p in prompts]
        for prompt in encoded:
            self._check_room(prompt, sampling)
        with self._lock:
            generator, width = self._generator(encoded, sampling, adapter)
            try:
                while not generator.is_done():
                    generator.generate_next_token()
            except RuntimeError as exc:
                raise ModelInputError(f"ONNX Runtime GenAI failed while generating: {str(exc).splitlines()[0]}") from exc
            sequences = [list(generator.get_sequence(row)) for row in range(len(encoded))]
        return [self._finish(prompt, [int(t) for t in sequence[width:]], sampling)
                for prompt, sequence in zip(encoded, sequences)]

    def _finish(self, prompt: list[int], tokens: list[int], sampling: Sampling) -> Generation:
        reason = "length"
        for index, token in enumerate(tokens):
            if token in self.eos:
                tokens, reason = tokens[:index], "stop"
                break
        text = self.decode(tokens)
        for stop in sampling.stop:
            if stop in text:
                text, reason = text[:text.index(stop)], "stop"
        return Generation(prompt, tokens, text, reason)

    def stream(self, prompt, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop: Sequence[str] = (),
               adapter: str | None = None) -> Iterator[Piece]:
        """Yield each new token as it is generated (one prompt).  The prompt and options are
        checked here, before the first token is asked for."""
        sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop))
        ids = self.encode(prompt)
        self._check_room(ids, sampling)
        if adapter is not None and adapter not in self.adapter_names:
            raise AdapterError(f"no adapter named '{adapter}' is loaded (loaded: {', '.join(self.adapter_names) or 'none'})")
        return self._pieces(ids, sampling, adapter)

    def stream_ids(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]:
        """Greedy new token ids one at a time (what ``bench`` times)."""
        return (piece.token for piece in self.stream(list(prompt_ids), max_new_tokens))

    def _pieces(self, ids: list[int], sampling: Sampling, adapter: str | None) -> Iterator[Piece]:
        with self._lock:
            generator, _ = self._generator([ids], sampling, adapter)
            decoder = self.tokenizer.create_stream()
            text = ""
            while not generator.is_done():
                try:
                    generator.generate_next_token()
                except RuntimeError as exc:
                    raise ModelInputError(f"ONNX Runtime GenAI failed while generating: {str(exc).splitlines()[0]}") \
                        from exc
                token = int(generator.get_next_tokens()[0])
                if token in self.eos:
                    return
                piece = decoder.decode(token)
                text += piece
                if any(s in text for s in sampling.stop):
                    return
                yield Piece(token, piece)

    # ------------------------------------------------------------------ logits

    def logits(self, ids: Sequence[int], adapter: str | None = None) -> np.ndarray:
        """Next-token logits at every position of ``ids`` ([len(ids), vocab]), one forward pass."""
        ids = self.encode(list(ids))
        with self._lock:
            generator, _ = self._generator([ids], Sampling(max_new_tokens=1), adapter)
            return np.asarray(generator.get_output("logits"), dtype=np.float32)[0, :len(ids)]

    def perplexity(self, texts: Sequence[str]) -> float:
        """Perplexity over real texts: exp of the token-weighted mean negative log-likelihood."""
        total, count = 0.0, 0
        for text in texts:
            ids = self.encode(text)
            if len(ids) < 2:
                continue
            value = _nll(self.logits(ids), ids)
            total += value * (len(ids) - 1)
            count += len(ids) - 1
        if not count:
            raise ModelInputError("perplexity needs texts of at least two tokens")
        return float(math.exp(total / count))

    def close(self) -> None:
        self.runner.close()
        self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GenerativeModel({str(self.artifact.path)!r}, adapters={self.adapter_names})"


def _nll(logits: np.ndarray, ids: Sequence[int]) -> float:
    """Mean negative log-likelihood of ids[1:] given the logits at ids[:-1]."""
    logits = np.asarray(logits, dtype=np.float64)[:-1]
    targets = np.asarray(ids[1:], dtype=np.int64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(targets)), targets].mean())


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


class GenAIRunner(Runner):
    """The runner shape for a causal LM: feeds of token ids in, next-token logits at every
    position out (one prefill pass per row, KV cache handled by ONNX Runtime GenAI)."""

    def __init__(self, model: GenerativeModel):
        from ..manifest import TensorSpec

        vocab = model.vocab_size()
        spec = TensorSpec("input_ids", np.dtype("int64"), ("batch", "sequence"), (0, vocab - 1),
                          (None, model.context_length))
        super().__init__([spec], ["logits"], model.provider)
        self.model = model

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.model.logits(row.tolist()) for row in feeds["input_ids"]]
        return {"logits": np.stack(rows)}
