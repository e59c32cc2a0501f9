"""Causal LMs exported by edgeport itself (``export onnx --route onnx``): an ONNX decoder whose
past key/values are graph inputs and present key/values graph outputs, run by this loop with
ONNX Runtime, tokenizers and numpy only.  Any tokenizer transformers saves as tokenizer.json
(BPE, byte-level, WordPiece, Unigram) works, through ``tokenizers``.

The graph (``decoder.json`` names its parts): ``input_ids`` [batch, new], ``attention_mask``
[batch, past + new], ``position_ids`` [batch, new] when the model takes them, and per layer
``past_key_values.{i}.key|value`` [batch, heads, past, head_dim]; out come ``logits``
[batch, new, vocab] and ``present.{i}.key|value`` [batch, heads, past + new, head_dim].  One
graph serves the prompt (a zero-length past) and every step after it.

The cache never goes through Python between steps: each step's present OrtValues are bound
(ONNX Runtime I/O binding) as the next step's past, and only the last position's logits are
read.  Ragged prompts are padded on the left, masked, and positioned as transformers does
(``cumsum(mask) - 1``, pads at 0); sampling (temperature, top-k, top-p, seed) is numpy's.
"""

from __future__ import annotations

import json
from typing import Iterator, Sequence

import numpy as np

from ..artifact import Artifact
from ..errors import ArtifactError, ModelInputError
from .generation import CausalLMRunner, GenerativeModel, Sampling, TokenizerTextStream
from .onnxrt import SessionSettings, create_session, ort_errors
from .processing import load_tokenizer

PAST, PRESENT = "past_key_values.", "present."


def render_chat_template(template_text: str, messages: Sequence[dict], special_tokens: dict[str, str]) -> str:
    """The template rendered as transformers' ``apply_chat_template`` renders it: the same
    jinja settings (trim_blocks, lstrip_blocks, loop controls), the tokenizer's special tokens
    (bos_token, eos_token...) and ``raise_exception``, whose message becomes the error."""
    from datetime import datetime

    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ModelInputError(f"the model's chat template refuses these messages: {message}")

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    environment.globals.update(raise_exception=raise_exception,
                               strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return environment.from_string(template_text).render(messages=list(messages), add_generation_prompt=True,
                                                             **special_tokens)
    except TemplateError as exc:
        raise ModelInputError(f"the model's chat template fails on these messages: {exc}") from exc


class DecoderModel(GenerativeModel):
    """A KV-cache decoder graph with its tokenizer, loaded for generation."""

    def __init__(self, artifact: Artifact, settings: SessionSettings = SessionSettings(), adapters=None):
        generation = artifact.manifest.processing.get("generation")
        if not generation:
            raise ModelInputError(f"'{artifact.path}' has no generation config (KV cache): it cannot generate")
        if adapters:
            raise ModelInputError("runtime LoRA adapters need ONNX Runtime GenAI's adapter slots; this causal LM was "
                                  "exported by edgeport's own route: merge the adapter at export (--adapter)")
        try:
            contract = json.loads(artifact.member(generation["config"]).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"'{artifact.path}': cannot read {generation['config']}: {exc}") from exc
        super().__init__(artifact, "", int(generation.get("context_length", 2048)),
                         {int(i) for i in generation.get("eos_token_ids", [])}, bool(contract.get("chat_template")))
        self.contract = contract
        self.session = create_session(artifact.model_path, settings)
        self.provider = self.session.get_providers()[0]
        self._contract(artifact)
        self.pad_id = int(artifact.manifest.processing.get("pad_id", 0))
        self.add_special_tokens = bool(contract.get("add_special_tokens", True))
        self.template = contract.get("chat_template")
        self.tokenizer = load_tokenizer(artifact.member(artifact.manifest.processing["tokenizer"]))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.runner = CausalLMRunner(self)

    def _contract(self, artifact: Artifact) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in ("input_ids", "attention_mask") if n not in inputs]
        self.past = sorted((n for n in inputs if n.startswith(PAST)),
                           key=lambda n: (int(n.split(".")[1]), n.endswith(".value")))
        if missing or not self.past:
            raise ArtifactError(f"'{artifact.path}' is not a KV-cache decoder graph (inputs: {', '.join(inputs)})")
        self.present = [PRESENT + n[len(PAST):] for n in self.past]
        self.use_positions = "position_ids" in inputs
        # [heads, head_dim] of every cache tensor, as export recorded them (the graph leaves them symbolic
        # for some families), and its dtype as the graph declares it.
        shapes = self.contract.get("cache", {})
        self.kv = {}
        for name in self.past:
            declared = inputs[name].shape
            heads, width = shapes.get(name, (declared[1], declared[3]))
            if not isinstance(heads, int) or not isinstance(width, int):
                raise ArtifactError(f"'{artifact.path}': the cache tensor '{name}' has no recorded shape")
            self.kv[name] = (heads, width, np.float16 if "float16" in inputs[name].type else np.float32)

    # ------------------------------------------------------------------ tokens and text

    def _encode_text(self, text: str) -> list[int]:
        # encode_batch lets go of the GIL while it works (encode does not): a server's other
        # requests, its health checks included, go on while a long prompt is tokenized.
        return self.tokenizer.encode_batch([text], add_special_tokens=self.add_special_tokens)[0].ids

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True)

    def _text_stream(self, ids: list[int]):
        return TokenizerTextStream(self.tokenizer, ids)

    def _apply_chat_template(self, messages: Sequence[dict]) -> str:
        try:
            import jinja2  # noqa: F401
        except ImportError:
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return render_chat_template(self.template, messages, self.contract.get("special_tokens") or {})

    # ------------------------------------------------------------------ the graph

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """The cache before the prompt: zero positions long."""
        return {name: np.zeros((batch, heads, 0, width), dtype) for name, (heads, width, dtype) in self.kv.items()}

    def _prompt_feeds(self, prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Left-padded ids, their mask, and transformers' positions (pads at 0)."""
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), width), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = prompt
            mask[row, width - len(prompt):] = 1
        positions = np.where(mask == 0, 0, np.cumsum(mask, axis=1) - 1).astype(np.int64)
        return ids, mask, positions

    def _steps(self, prompts: list[list[int]], choose) -> Iterator[np.ndarray]:
        """Run the prompts, then one token per step: yields each step's chosen tokens
        ([batch]); ``choose(last_logits) -> tokens``.  The cache stays in bound OrtValues."""
        import onnxruntime as ort

        ids, mask, positions = self._prompt_feeds(prompts)
        binding = self.session.io_binding()
        for name, value in self._empty_past(len(prompts)).items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
        while True:
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_cpu_input("attention_mask", mask)
            if self.use_positions:
                binding.bind_cpu_input("position_ids", positions)
            binding.bind_output("logits", "cpu")
            for name in self.present:
                binding.bind_output(name, "cpu")       # ONNX Runtime allocates: the cache grows every step
            try:
                self.session.run_with_iobinding(binding)
            except ort_errors() as exc:
                raise ModelInputError(f"ONNX Runtime failed while generating: {str(exc).splitlines()[0]}") from exc
            values = binding.get_outputs()
            tokens = choose(values[0].numpy()[:, -1])
            for name, value in zip(self.past, values[1:]):
                binding.bind_ortvalue_input(name, value)          # this step's present is the next step's past
            binding.clear_binding_outputs()
            yield tokens
            ids = tokens.astype(np.int64)[:, None]
            mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
            positions = positions[:, -1:] + 1

    def _generate(self, prompts: list[list[int]], sampling: Sampling, adapter: str | None) -> list[list[int]]:
        choose, out = chooser(sampling), [[] for _ in prompts]
        finished = np.zeros(len(prompts), dtype=bool)
        for step, tokens in enumerate(self._steps(prompts, choose)):
            for row, token in enumerate(tokens):
                if not finished[row]:
                    out[row].append(int(token))
            finished |= np.isin(tokens, list(self.eos))
            if finished.all() or step + 1 >= sampling.max_new_tokens:
                return out
        return out

    def _token_stream(self, ids: list[int], sampling: Sampling, adapter: str | None) -> Iterator[int]:
        for step, tokens in enumerate(self._steps([ids], chooser(sampling))):
            yield int(tokens[0])
            if step + 1 >= sampling.max_new_tokens:
                return

    def logits(self, ids: Sequence[int], adapter: str | None = None) -> np.ndarray:
        ids = self.encode(list(ids))
        feeds = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
                 **self._empty_past(1)}
        if self.use_positions:
            feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        with self._lock:
            try:
                return np.asarray(self.session.run(["logits"], feeds)[0][0], dtype=np.float32)
            except ort_errors() as exc:
                raise ModelInputError(f"ONNX Runtime refused the tokens: {str(exc).splitlines()[0]}") from exc

    def close(self) -> None:
        super().close()
        self.session = None


def chooser(sampling: Sampling):
    """The next-token rule: argmax, or a draw after temperature, top-k and top-p (nucleus)."""
    if not sampling.sampled:
        return lambda logits: logits.argmax(axis=-1)
    rng = np.random.default_rng(sampling.seed)

    def sample(logits: np.ndarray) -> np.ndarray:
        logits = logits.astype(np.float64) / float(sampling.temperature or 1.0)
        chosen = np.empty(len(logits), dtype=np.int64)
        for row, values in enumerate(logits):
            order = np.argsort(-values)
            if sampling.top_k:
                order = order[:sampling.top_k]
            probs = np.exp(values[order] - values[order].max())
            probs /= probs.sum()
            if sampling.top_p is not None and sampling.top_p < 1:
                keep = np.searchsorted(np.cumsum(probs), sampling.top_p) + 1
                order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
            chosen[row] = order[rng.choice(len(order), p=probs)]
        return chosen

    return sample
