"""What every causal-LM runtime offers, whatever runs the graph: prompts as text, token ids or
chat messages; greedy or sampled generation of a batch of ragged prompts, or of one prompt
streamed token by token; stop strings; next-token logits and perplexity.  ONNX Runtime
GenAI (genai.py) and edgeport's own KV-cache loop (decoder.py) implement a few hooks; the
checks, the prompt handling and the results are here, once.

    [result] = model.generate(["Once upon a time"], max_new_tokens=32)
    model.generate([1, 2, 3])                 # one prompt, given as token ids
    for piece in model.stream("Once upon a time"):
        print(piece.text, end="")
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import AdapterError, InvalidOptionError, ModelInputError
from ..manifest import TensorSpec
from ..vocabulary import DEFAULT_MAX_NEW_TOKENS
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
    """One streamed token and the text it adds.  Text that may be the start of a stop string is
    held back until it is known not to be, so the last piece of a stream may carry held text
    and no token (``token`` None)."""

    token: int | None
    text: str


class TokenStream:
    """The pieces of one prompt's generation, as they are made.  Once it is exhausted (or
    cancelled) it holds the new ``tokens``, their ``text`` (cut before a stop string, exactly
    as a non-streamed generation's) and the ``finish_reason``; ``cancel()`` stops it before
    the next token from any thread (a client that went away)."""

    def __init__(self):
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason = "length"
        self._cancelled = threading.Event()
        self._pieces: Iterator[Piece] = iter(())

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> Piece:
        return next(self._pieces)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def close(self) -> None:
        """Stop generating and let go of the model (the generator's lock) now."""
        close = getattr(self._pieces, "close", None)
        if close:
            close()


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in ``text``, or None."""
    found = [text.find(stop) for stop in stops if stop and stop in text]
    return min(found) if found else None


def stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """The longest end of ``text`` that a stop string starts with (and is not whole)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(text), len(stop) - 1), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


@dataclass(frozen=True)
class Sampling:
    """How to pick the next token: greedy unless a temperature, top-k or top-p is given."""

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
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < 2 ** 63):
            raise InvalidOptionError(f"seed must be a whole number from 0 to 2**63 - 1 (got {self.seed!r})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidOptionError("stop strings must be non-empty strings")

    @property
    def sampled(self) -> bool:
        return self.temperature is not None or self.top_k is not None or self.top_p is not None


def _is_token_ids(value) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "iu"
    return isinstance(value, (list, tuple)) and bool(value) and \
        all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in value)


def _is_chat(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(m, dict) for m in value)


class TokenizerTextStream:
    """``step(token)``: the text a new token adds, from the tokenizers library's own incremental
    decoder (whole UTF-8 characters only, '##' pieces joined), started after the prompt."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int]):
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._stream = DecodeStream(ids=list(prompt_ids), skip_special_tokens=True)

    def step(self, token: int) -> str:
        return self._stream.step(self._tokenizer, token) or ""


class GenerativeModel:
    """A causal-LM artifact loaded for generation; subclasses say how to tokenize, decode, run
    a batch, stream one prompt and compute logits."""

    task = "text-generation"

    def __init__(self, artifact, provider: str, context_length: int, eos: set[int], chat_template: bool):
        self.artifact = artifact
        self.provider = provider
        self.context_length = context_length
        self.eos = eos
        self.chat_template = chat_template
        self.adapter_names: list[str] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what a runtime provides

    def _encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, tokens: Sequence[int]) -> str:
        raise NotImplementedError

    def _apply_chat_template(self, messages: Sequence[dict]) -> str:
        raise NotImplementedError

    def _generate(self, prompts: list[list[int]], sampling: Sampling, adapter: str | None) -> list[list[int]]:
        """The new tokens of every prompt (a ragged batch), up to max_new_tokens each."""
        raise NotImplementedError

    def _token_stream(self, ids: list[int], sampling: Sampling, adapter: str | None) -> Iterator[int]:
        raise NotImplementedError

    def _text_stream(self, ids: list[int]):
        """An object whose ``step(token)`` gives the text a new token adds (or '')."""
        raise NotImplementedError

    def logits(self, ids: Sequence[int], adapter: str | None = None) -> np.ndarray:
        """Next-token logits at every position of ``ids`` ([len(ids), vocab]), one forward pass."""
        raise NotImplementedError

    def vocab_size(self) -> int:
        spec = next((s for s in self.artifact.manifest.outputs if s.name == "logits"), None)
        size = spec.shape[-1] if spec is not None else None
        return int(size) if isinstance(size, int) else 2 ** 31 - 1

    # ------------------------------------------------------------------ prompts

    def encode(self, prompt) -> list[int]:
        """A prompt as token ids: text, a list of ids, or chat messages (a list of
        {"role", "content"} dicts, formatted with the tokenizer's chat template)."""
        if isinstance(prompt, str):
            if not prompt:
                raise ModelInputError("the prompt is empty; give at least one character")
            from .processing import check_texts

            check_texts([prompt])
            return [int(t) for t in self._encode_text(prompt)]
        if _is_chat(prompt):
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

    def prompts(self, prompts) -> list[list[int]]:
        """One prompt (text, token ids, chat messages) or a list of them, as token id lists:
        ``[1, 2, 3]`` is one prompt of three tokens, ``[[1, 2], [3]]`` two prompts."""
        if isinstance(prompts, str) or _is_token_ids(prompts) or _is_chat(prompts):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ModelInputError("give at least one prompt")
        return [self.encode(p) for p in prompts]

    def format_chat(self, messages: Sequence[dict]) -> str:
        for message in messages:
            if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise ModelInputError("chat messages need a string 'role' and 'content'")
        if not self.chat_template:
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return self._apply_chat_template(messages)

    def check_room(self, prompt: list[int], sampling: Sampling) -> None:
        if len(prompt) + sampling.max_new_tokens > self.context_length:
            raise ModelInputError(f"the prompt ({len(prompt)} tokens) plus max_new_tokens ({sampling.max_new_tokens}) "
                                  f"is past the model's context of {self.context_length} tokens")

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapter_names:
            raise AdapterError(f"no adapter named '{adapter}' is loaded (loaded: "
                               f"{', '.join(self.adapter_names) or 'none'})")

    # ------------------------------------------------------------------ generation

    def generate(self, prompts, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: Sequence[str] = (), adapter: str | None = None) -> list[Generation]:
        """Continue each prompt (text, token ids, or chat messages); one Generation per prompt.
        A batch of prompts runs as one batch (ragged prompts padded, and masked)."""
        sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop))
        encoded = self.prompts(prompts)
        for prompt in encoded:
            self.check_room(prompt, sampling)
        self._check_adapter(adapter)
        if sampling.stop and len(encoded) == 1:     # one prompt stops at its stop string, not at max_new_tokens
            stream = self._stream_of(encoded[0], sampling, adapter)
            for _ in stream:
                pass
            return [Generation(encoded[0], stream.tokens, stream.text, stream.finish_reason)]
        with self._lock:
            new_tokens = self._generate(encoded, sampling, adapter)
        return [self._finish(prompt, tokens, sampling) for prompt, tokens in zip(encoded, new_tokens)]

    def _finish(self, prompt: list[int], tokens: list[int], sampling: Sampling) -> Generation:
        reason = "length"
        for index, token in enumerate(tokens):
            if token in self.eos:
                tokens, reason = tokens[:index], "stop"
                break
        text = self.decode(tokens)
        cut = first_stop(text, sampling.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        return Generation(prompt, tokens, text, reason)

    def stream(self, prompt, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop: Sequence[str] = (), adapter: str | None = None) -> TokenStream:
        """Yield each new token as it is generated (one prompt): a ``TokenStream``.  The prompt
        and options are checked here, before the first token is asked for."""
        sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop))
        ids = self.encode(prompt)
        self.check_room(ids, sampling)
        self._check_adapter(adapter)
        return self._stream_of(ids, sampling, adapter)

    def stream_ids(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]:
        """Greedy new token ids one at a time (what ``bench`` times)."""
        return (piece.token for piece in self.stream(list(prompt_ids), max_new_tokens) if piece.token is not None)

    def _stream_of(self, ids: list[int], sampling: Sampling, adapter: str | None) -> TokenStream:
        stream = TokenStream()
        stream._pieces = self._pieces(ids, sampling, adapter, stream)
        return stream

    def _pieces(self, ids: list[int], sampling: Sampling, adapter: str | None, stream: TokenStream
                ) -> Iterator[Piece]:
        with self._lock:
            decoder = self._text_stream(ids)
            held = ""                   # decoded, not yet shown: it may be the start of a stop string
            for token in self._token_stream(ids, sampling, adapter):
                if stream.cancelled:
                    stream.finish_reason = "cancelled"
                    return
                if token in self.eos:
                    stream.finish_reason = "stop"
                    break
                stream.tokens.append(token)
                held += decoder.step(token) or ""
                cut = first_stop(stream.text + held, sampling.stop)
                if cut is not None:     # a stop string never starts in shown text: it was held back
                    shown, held = (stream.text + held)[len(stream.text):cut], ""
                    stream.text += shown
                    stream.finish_reason = "stop"
                    yield Piece(token, shown)
                    return
                keep = min(len(held), stop_prefix_length(stream.text + held, sampling.stop))
                shown, held = held[:len(held) - keep], held[len(held) - keep:]
                stream.text += shown
                yield Piece(token, shown)
            # The incremental decoder holds back a character whose bytes are not all there yet;
            # at the end decode() shows it (as U+FFFD, as transformers does): so does the stream.
            whole = self.decode(stream.tokens)
            if whole.startswith(stream.text + held):
                held = whole[len(stream.text):]
            if held:
                stream.text += held
                yield Piece(None, held)

    # ------------------------------------------------------------------ scoring

    def perplexity(self, texts: Sequence[str]) -> float:
        """Perplexity over real texts (each cut to the context): exp of the token-weighted mean
        negative log-likelihood."""
        total, count = 0.0, 0
        for text in texts:
            ids = self.encode(text)[:self.context_length]
            if len(ids) < 2:
                continue
            value = mean_nll(self.logits(ids), ids)
            total += value * (len(ids) - 1)
            count += len(ids) - 1
        if not count:
            raise ModelInputError("perplexity needs texts of at least two tokens")
        return float(math.exp(total / count))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.artifact.path)!r}, adapters={self.adapter_names})"


def mean_nll(logits: np.ndarray, ids: Sequence[int]) -> float:
    """Mean negative log-likelihood of ids[1:] given the logits at ids[:-1]."""
    logits = np.asarray(logits, dtype=np.float64)[:-1]
    targets = np.asarray(ids[1:], dtype=np.int64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(targets)), targets].mean())


class CausalLMRunner(Runner):
    """The runner shape for a causal LM: feeds of token ids in, next-token logits at every
    position out (one forward pass per row; the KV cache is the generator's business)."""

    def __init__(self, model: GenerativeModel):
        vocab = model.vocab_size()
        spec = TensorSpec("input_ids", np.dtype("int64"), ("batch", "sequence"), (0, vocab - 1),
                          (None, model.context_length))
        super().__init__([spec], ["logits"], model.provider)
        self.model = model

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.model.logits(row.tolist()) for row in feeds["input_ids"]]
        return {"logits": np.stack(rows)}
