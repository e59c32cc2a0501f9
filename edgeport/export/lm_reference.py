"""What a causal-LM export is checked against: transformers' own answers on real prompts and
text (greedy tokens, next-token logits, perplexity), and the facts about the model every
route records (context length, end-of-sequence ids, how prompts are tokenized)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import SourceError, UnsupportedModelError
from ..parity.generation import fit_to_context
from .prepare import check_token_ids
from .quiet import quiet_transformers

NEW_TOKENS = 16
PROMPTS = 8
PERPLEXITY_TEXTS = 24
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx", "max_sequence_length")


def adds_special_tokens(tokenizer) -> bool:
    """Whether prompts are encoded with the tokenizer's special tokens: yes when it only puts
    something in front (a BOS), no when it closes the text too (BERT's [SEP]: a causal LM
    would then continue after an end marker)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return not plain or not special or special[-1] == plain[-1]


def context_length(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in CONTEXT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


# generation_config settings that change which token greedy decoding picks: edgeport's
# runtimes (and ONNX Runtime GenAI's, as edgeport drives it) decode without them.
UNAPPLIED_DEFAULTS = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                      "min_length": 0, "min_new_tokens": None, "bad_words_ids": None, "suppress_tokens": None,
                      "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
                      "sequence_bias": None, "exponential_decay_length_penalty": None}


def unapplied_settings(generation_config) -> list[str]:
    """The source's generation_config settings the exported model's runtime does not apply."""
    found = []
    for key, default in UNAPPLIED_DEFAULTS.items():
        value = getattr(generation_config, key, default)
        if value not in (default, None) and not (isinstance(value, (list, dict)) and not value):
            found.append(f"{key}={value!r}"[:80])
    return found


def _load_tokenizer(transformers, folder: Path):
    try:
        return transformers.AutoTokenizer.from_pretrained(folder)
    except Exception as exc:   # a damaged tokenizer.json raises JSON, key or tokenizers errors
        raise SourceError(f"transformers cannot load the tokenizer in '{folder}': {type(exc).__name__}: "
                          f"{(str(exc).strip().splitlines() or [''])[0][:300]}") from exc


def _load_model(transformers, torch, folder: Path):
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise UnsupportedModelError(f"'{folder}' is not a causal LM: transformers has no AutoModelForCausalLM "
                                        "for its config (an encoder-decoder such as T5 is not exported with --task "
                                        "text-generation)") from exc
        raise SourceError(f"transformers cannot load '{folder}': {str(exc).splitlines()[0][:300]}") from exc


class Reference:
    """transformers' answers on the real prompts and texts: greedy tokens, next-token logits,
    perplexity; and the model's context length, end-of-sequence ids and tokenizer facts."""

    def __init__(self, folder: Path, prompts: list[str], texts: list[str]):
        import torch
        import transformers

        with quiet_transformers():
            self.tokenizer = _load_tokenizer(transformers, folder)
            try:
                self.model = transformers.AutoModelForCausalLM.from_pretrained(
                    folder, dtype=torch.float32, attn_implementation="eager").eval()
            except (ValueError, TypeError, ImportError):
                self.model = _load_model(transformers, torch, folder)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.unapplied = unapplied_settings(self.model.generation_config)
        # Plain greedy decoding is what every route's runtime does and what parity compares:
        # generate() would apply the source's repetition penalty (and the like) to the reference
        # alone, and fail every route on the difference.
        self.model.generation_config = transformers.GenerationConfig(
            eos_token_id=eos, bos_token_id=self.model.generation_config.bos_token_id,
            pad_token_id=self.model.generation_config.pad_token_id)
        self.context_length = context_length(self.model.config)
        self.add_special_tokens = adds_special_tokens(self.tokenizer)
        self.vocab_size = int(self.model.config.get_text_config().vocab_size)
        # A short context lowers the check's length rather than refusing the model.
        self.prompt_ids, self.new_tokens = fit_to_context([self.encode(p) for p in prompts], self.context_length,
                                                          NEW_TOKENS)
        self.text_ids = [ids[:self.context_length] for ids in (self.encode(t) for t in texts) if len(ids) >= 2]
        # Before torch fails on an index (a traceback): the encoder route's check, on these ids.
        check_token_ids(self.model.config.get_text_config(),
                        [{"input_ids": np.array(ids)} for ids in self.prompt_ids + self.text_ids])
        self.tokens, logits = [], []
        with torch.no_grad(), quiet_transformers():
            for ids in self.prompt_ids:
                tensor = torch.tensor([ids])
                out = self.model.generate(tensor, attention_mask=torch.ones_like(tensor),
                                          max_new_tokens=self.new_tokens, do_sample=False,
                                          pad_token_id=next(iter(self.eos), 0))
                self.tokens.append(self.trim(out[0, len(ids):].tolist()))
                logits.append(self.model(tensor).logits[0, -1].float().numpy())
        self.logits = np.stack(logits)
        self.perplexity = self._perplexity()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]

    @property
    def pad_id(self) -> int:
        """The tokenizer's pad id, or the first end-of-sequence id where it has none or where its
        pad token lies outside the model's vocabulary (a tokenizer class that adds its own)."""
        pad = self.tokenizer.pad_token_id
        if pad is not None and 0 <= int(pad) < self.vocab_size:
            return int(pad)
        return next(iter(sorted(self.eos)), 0)

    @property
    def special_tokens(self) -> dict[str, str]:
        """bos_token, eos_token... as text: what chat templates are rendered with."""
        return {k: v for k, v in self.tokenizer.special_tokens_map.items() if isinstance(v, str)}

    @property
    def chat_template(self) -> str | None:
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None

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
        input_ids = np.full((len(self.prompt_ids), width), self.pad_id, np.int64)
        mask = np.zeros_like(input_ids)
        tokens = np.full((len(self.tokens), self.new_tokens), -1, np.int64)
        for row, (ids, new) in enumerate(zip(self.prompt_ids, self.tokens)):
            input_ids[row, :len(ids)], mask[row, :len(ids)] = ids, 1
            tokens[row, :len(new)] = new
        return ({"input_ids": input_ids, "attention_mask": mask},
                {"greedy_tokens": tokens, "next_token_logits": self.logits})

    def close(self) -> None:
        self.model = None
