"""What a text model takes: its inputs (from its forward signature and tokenizer), the
tokenizer the artifact carries, sentence-transformers pooling, the limits the runtime
checks, and real sentences to trace and validate with."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import stdlib_sentences
from ..errors import InvalidOptionError, SourceError
from ..runtime.processing import TextProcessor
from ..vocabulary import BATCH, SEQUENCE
from .registry import FamilyNeeds

VALIDATION_SENTENCES = 24
TRACE_BATCH = 2           # >= 2 so no exporter specialises the batch axis to 1


@dataclass
class TextSetup:
    input_names: list[str]
    processing: dict[str, Any]
    limits: dict[str, dict[str, Any]]
    copy_files: dict[str, Path] = field(default_factory=dict)
    processor: TextProcessor | None = None
    vocab_size: int = 100
    notes: list[str] = field(default_factory=list)

    def batches(self, static: bool, sequence_length: int) -> tuple[dict, list[dict], str]:
        """Trace inputs, validation batches (the first becomes golden.npz) and what they are."""
        if self.processor is not None:
            sentences = stdlib_sentences(VALIDATION_SENTENCES + TRACE_BATCH + 1)
            pad_to = self.processing["max_length"] if static else None
            trace = self.processor.encode(sentences[:1 if static else TRACE_BATCH], pad_to=pad_to)
            validation = [self.processor.encode(sentences[TRACE_BATCH:TRACE_BATCH + VALIDATION_SENTENCES],
                                                pad_to=pad_to)]
            if not static:
                validation.append(self.processor.encode(sentences[-1:]))
            return trace, validation, f"{VALIDATION_SENTENCES} standard-library docstring sentences"
        rng = np.random.default_rng(0)

        def random_batch(batch, length):
            ids = rng.integers(3, self.vocab_size, size=(batch, length), dtype=np.int64)
            mask = np.ones((batch, length), dtype=np.int64)
            for row in range(1, batch):  # ragged: later rows padded
                mask[row, max(1, length - row * 2):] = 0
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((batch, length), np.int64)}
            return {n: feeds[n] for n in self.input_names}

        trace = random_batch(1 if static else TRACE_BATCH, sequence_length if static else 7)
        validation = [random_batch(3, sequence_length if static else 11)]
        if not static:
            validation.append(random_batch(1, 5))
        return trace, validation, "random token ids (the model folder has no tokenizer)"

    def probe_pair(self, trace: dict[str, np.ndarray]) -> tuple[dict, dict]:
        """Two inputs that differ in every dynamic axis (batch +1, sequence +3 padding)."""
        wider = {}
        for name, value in trace.items():
            pad_value = self.processing.get("pad_id", 0) if name == "input_ids" else 0
            grown = np.concatenate([value, value[:1]])
            wider[name] = np.pad(grown, [(0, 0), (0, 3)], constant_values=pad_value)
        return trace, wider


def text_input_names(model, config, tokenizer) -> list[str]:
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params:
        wanted = ("token_type_ids" in tokenizer.model_input_names) if tokenizer is not None \
            else getattr(config, "type_vocab_size", 0) > 1
        if wanted:
            names.append("token_type_ids")
    return [n for n in names if n in params]


def load_tokenizer(folder: Path, quiet):
    has_files = any((folder / f).is_file() for f in
                    ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model"))
    if not has_files:
        return None
    import transformers

    try:
        with quiet():
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError, ImportError) as exc:
        raise SourceError(f"the tokenizer files in '{folder}' cannot be loaded: {exc}") from exc
    except Exception as exc:  # tokenizers' Rust errors surface as bare Exceptions
        raise SourceError(f"the tokenizer files in '{folder}' cannot be loaded: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise SourceError(f"the tokenizer in '{folder}' has no fast (tokenizers) version, which the runtime needs")
    return tokenizer


def sentence_transformers_processing(folder: Path) -> dict[str, Any]:
    """Pooling, normalisation and max length from sentence-transformers files, if present."""
    processing: dict[str, Any] = {}
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return processing
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise TypeError("modules.json must be a list of objects")
        for module in modules:
            kind = str(module.get("type", ""))
            path = folder / str(module.get("path", ""))
            if kind.endswith("Pooling") and (path / "config.json").is_file():
                pooling = json.loads((path / "config.json").read_text(encoding="utf-8"))
                if not isinstance(pooling, dict):
                    raise TypeError(f"{path / 'config.json'} must be an object")
                for mode, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"),
                                  ("max", "pooling_mode_max_tokens"), ("last", "pooling_mode_lasttoken")):
                    if pooling.get(key):
                        processing["pooling"] = mode
                        break
            elif kind.endswith("Normalize"):
                processing["normalize"] = True
        bert_config = folder / "sentence_bert_config.json"
        if bert_config.is_file():
            processing["max_length"] = int(json.loads(bert_config.read_text(encoding="utf-8"))["max_seq_length"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SourceError(f"the sentence-transformers files in '{folder}' are malformed: {exc}") from exc
    return processing


def check_room_for_text(length: int, tokenizer_file: Path, asked: int) -> None:
    """A sequence bound the special tokens fill: the tokenizer cannot truncate below them (every
    ONNX route failed on lengths; an ExecuTorch program embedded every text alike)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    specials = len(tokenizer.encode("").ids)          # [CLS] and [SEP]: 2
    if length <= specials:
        raise InvalidOptionError(f"--sequence-length {asked} leaves no room for text: this tokenizer adds "
                                 f"{specials} special tokens to every text; give at least {specials + 1}")


def text_setup(folder: Path, model, config, task: str, needs: FamilyNeeds, static: bool, sequence_length: int,
               work: Path, quiet) -> TextSetup:
    tokenizer = load_tokenizer(folder, quiet)
    names = text_input_names(model, config, tokenizer)
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    usable = positions - needs.position_offset if positions else 0
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    limits: dict[str, dict[str, Any]] = {}
    if vocab:
        limits["input_ids"] = {"range": [0, vocab - 1]}
    if "token_type_ids" in names and getattr(config, "type_vocab_size", 0):
        limits["token_type_ids"] = {"range": [0, int(config.type_vocab_size) - 1]}
    if "attention_mask" in names:
        limits["attention_mask"] = {"range": [0, 1]}
    if usable and not static:
        for name in names:
            limits.setdefault(name, {})["max_shape"] = [None, usable]
    setup = TextSetup(names, {}, limits, vocab_size=max(vocab, 4))
    if tokenizer is None:
        setup.processing = {"pooling": "mean", "normalize": False} if task == "feature-extraction" else {}
        setup.notes.append("no tokenizer in the source folder: the artifact takes token ids, not text")
        return setup
    processing: dict[str, Any] = {"pooling": "mean", "normalize": False} if task == "feature-extraction" else {}
    processing.update(sentence_transformers_processing(folder))
    model_max = getattr(tokenizer, "model_max_length", usable or 512) or 512
    max_length = min(processing.get("max_length", model_max), model_max, usable or model_max)
    if static:
        if sequence_length > max_length:
            setup.notes.append(f"static shapes at {max_length} tokens, not {sequence_length}: the model takes no "
                               "more (its positions or tokenizer)")
        max_length = min(max_length, sequence_length)
    if task != "feature-extraction":
        processing.pop("pooling", None)
        processing.pop("normalize", None)
    pad_token = tokenizer.pad_token or tokenizer.eos_token
    processing.update({"tokenizer": "tokenizer.json", "max_length": int(max_length), "pad_token": pad_token,
                       "pad_id": int(tokenizer.convert_tokens_to_ids(pad_token)) if pad_token else 0})
    setup.processing = processing
    for extra in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / extra).is_file():
            setup.copy_files[extra] = folder / extra
    # Validate with exactly the tokenizer.json the artifact will carry (saved in the export's work folder).
    staged = work / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(staged))
    if static:
        check_room_for_text(max_length, staged, sequence_length)
    setup.copy_files["tokenizer.json"] = staged
    setup.processor = TextProcessor(staged, int(max_length), names, pad_token, processing["pad_id"])
    return setup


def text_axes(names: list[str], static: bool) -> dict[str, dict[int, str]]:
    return {n: ({} if static else {0: BATCH, 1: SEQUENCE}) for n in names}
