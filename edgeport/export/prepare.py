"""Turn a source into an ``ExportJob``: the torch module to trace, its named inputs and
outputs with their dynamic axes, the inputs to trace with, the real inputs to validate
with, and the pre-processing the artifact will carry.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import sha256_file
from ..errors import SourceError, UnsupportedModelError
from .source import InputSpec, load_callable, read_config, weight_files
from .tasks import BATCH, SEQUENCE, architecture_for, detect_task, task_spec

TRACE_BATCH = 2        # >= 2 so no exporter specialises the batch axis to 1
VALIDATION_SENTENCES = 24


@dataclass
class ExportJob:
    module: Any                                  # torch.nn.Module taking positional inputs
    task: str
    input_names: list[str]
    output_names: list[str]
    input_axes: dict[str, dict[int, str]]
    output_axes: dict[str, dict[int, str]]
    trace_inputs: dict[str, np.ndarray]
    validation_batches: list[dict[str, np.ndarray]]   # the first becomes golden.npz
    validation_data: str                               # what the batches are, in words
    processing: dict[str, Any] = field(default_factory=dict)
    copy_files: dict[str, Path] = field(default_factory=dict)   # name in artifact -> source file
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model_type: str = "custom"


def named_outputs_module(model, input_names, output_attrs, forward_kwargs):
    """Wrap a Hugging Face model: positional inputs in (the exporters' calling convention),
    the chosen outputs out as a tuple."""
    import torch

    class OutputsOf(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            # transformers 5.x: pass by keyword, positional order is not guaranteed.
            out = self.model(**dict(zip(input_names, args)), **forward_kwargs)
            return tuple(out[name] for name in output_attrs)

    return OutputsOf().eval()


# ----------------------------------------------------------------- Hugging Face folders


def prepare_hf(folder: Path, task: str | None, allow_pickle: bool, static_shapes: bool,
               sequence_length: int) -> ExportJob:
    config_dict = read_config(folder)
    arch = architecture_for(config_dict.get("model_type"))
    weights = weight_files(folder, allow_pickle)

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except Exception as exc:
        raise SourceError(f"transformers cannot read {folder / 'config.json'}: {exc}") from exc
    task = task or detect_task(config, arch)
    spec = task_spec(arch, task)
    if task == "text-classification" and getattr(config, "pad_token_id", None) is None:
        # Decoder classifiers pool the last non-pad token and refuse batches without a pad id.
        config.pad_token_id = getattr(config, "eos_token_id", None) or 0
    auto_class = getattr(transformers, spec.auto_class)
    try:
        model, info = _load_for_export(auto_class, folder, config, weights[0].suffix == ".safetensors")
    except Exception as exc:
        raise SourceError(f"cannot load the model in '{folder}': {type(exc).__name__}: {exc}") from exc
    model.eval()
    notes = []
    missing = [k for k in info.get("missing_keys", []) if not _is_head(k)]
    if missing:
        raise SourceError(
            f"the weights in '{folder}' lack {len(missing)} tensors the {type(model).__name__} needs "
            f"(first: {missing[0]}); the checkpoint is incomplete or for another architecture"
        )
    if info.get("missing_keys"):
        notes.append(f"task head initialised randomly (not in checkpoint): {sorted(info['missing_keys'])[:4]}")

    job = ExportJob(module=None, task=task, input_names=[], output_names=[o.name for o in spec.outputs],
                    input_axes={}, output_axes={o.name: dict(o.axes) for o in spec.outputs},
                    trace_inputs={}, validation_batches=[], validation_data="", notes=notes,
                    model_type=arch.model_type)
    job.sources = {str(p.name): sha256_file(p) for p in weights}
    job.copy_files["config.json"] = folder / "config.json"
    if spec.modality == "text":
        _prepare_text(job, folder, model, config, static_shapes, sequence_length)
    else:
        _prepare_vision(job, folder, model, config, static_shapes)
    if task in ("text-classification", "token-classification", "image-classification"):
        job.processing["labels"] = [config.id2label[i] for i in sorted(config.id2label)]
    if static_shapes:
        job.input_axes = {n: {} for n in job.input_names}
        job.output_axes = {n: {} for n in job.output_names}
    job.module = named_outputs_module(model, job.input_names, job.output_names, arch.forward_kwargs)
    return job


def _load_for_export(auto_class, folder: Path, config, safetensors: bool):
    """Load with eager attention where the model has it: the SDPA path exports with a NaN
    guard (IsNaN + Where over every attention matrix) that cost 14% of MiniLM's INT8
    latency here; eager attention exports 516 nodes instead of 669, with the same outputs."""
    import torch

    kwargs = dict(config=config, dtype=torch.float32, output_loading_info=True, use_safetensors=safetensors)
    try:
        return auto_class.from_pretrained(folder, attn_implementation="eager", **kwargs)
    except (ValueError, TypeError, ImportError):
        return auto_class.from_pretrained(folder, **kwargs)


def _is_head(key: str) -> bool:
    return key.split(".")[0] in ("classifier", "score", "pooler", "pre_classifier", "qa_outputs") or \
        key.startswith(("bert.pooler", "pooler."))


def _text_input_names(model, config, tokenizer) -> list[str]:
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params:
        wanted = ("token_type_ids" in tokenizer.model_input_names) if tokenizer is not None \
            else getattr(config, "type_vocab_size", 0) > 1
        if wanted:
            names.append("token_type_ids")
    return [n for n in names if n in params]


def _load_tokenizer(folder: Path):
    has_files = any((folder / f).is_file() for f in
                    ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model"))
    if not has_files:
        return None
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise SourceError(f"the tokenizer files in '{folder}' cannot be loaded: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise SourceError(f"the tokenizer in '{folder}' has no fast (tokenizers) version, which the runtime needs")
    return tokenizer


def _sentence_transformers_processing(folder: Path) -> dict[str, Any]:
    """Pooling, normalisation and max length from sentence-transformers files, if present."""
    processing: dict[str, Any] = {}
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return processing
    try:
        modules = json.loads(modules_file.read_text())
        for module in modules:
            kind = module.get("type", "")
            path = folder / module.get("path", "")
            if kind.endswith("Pooling") and (path / "config.json").is_file():
                pooling = json.loads((path / "config.json").read_text())
                for mode, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"),
                                  ("max", "pooling_mode_max_tokens"), ("last", "pooling_mode_lasttoken")):
                    if pooling.get(key):
                        processing["pooling"] = mode
                        break
            elif kind.endswith("Normalize"):
                processing["normalize"] = True
        bert_config = folder / "sentence_bert_config.json"
        if bert_config.is_file():
            processing["max_length"] = int(json.loads(bert_config.read_text())["max_seq_length"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SourceError(f"the sentence-transformers files in '{folder}' are malformed: {exc}") from exc
    return processing


def _prepare_text(job: ExportJob, folder: Path, model, config, static_shapes: bool, sequence_length: int):
    from ..data import stdlib_sentences
    from ..runtime.processing import TextProcessor

    tokenizer = _load_tokenizer(folder)
    job.input_names = _text_input_names(model, config, tokenizer)
    for name in job.input_names:
        job.input_axes[name] = {0: BATCH, 1: SEQUENCE}
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    if tokenizer is not None:
        processing = {"pooling": "mean", "normalize": False} if job.task == "feature-extraction" else {}
        processing.update(_sentence_transformers_processing(folder))
        model_max = getattr(tokenizer, "model_max_length", limit) or limit
        max_length = min(processing.get("max_length", model_max), model_max, limit)
        if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            max_length = min(max_length, limit - 2)  # position ids start after the padding index
        if static_shapes:
            max_length = min(max_length, sequence_length)
        if job.task != "feature-extraction":
            processing.pop("pooling", None)
            processing.pop("normalize", None)
        pad_token = tokenizer.pad_token or tokenizer.eos_token
        processing.update({"tokenizer": "tokenizer.json", "max_length": int(max_length),
                           "pad_token": pad_token,
                           "pad_id": int(tokenizer.convert_tokens_to_ids(pad_token)) if pad_token else 0})
        job.processing = processing
        for extra in ("tokenizer_config.json", "special_tokens_map.json"):
            if (folder / extra).is_file():
                job.copy_files[extra] = folder / extra
        # Validate with exactly the tokenizer.json the artifact will carry.
        import tempfile
        staged = Path(tempfile.mkdtemp(prefix="edgeport-tok-")) / "tokenizer.json"
        tokenizer.backend_tokenizer.save(str(staged))
        job.copy_files["tokenizer.json"] = staged
        text = TextProcessor(staged, int(max_length), job.input_names, pad_token, processing["pad_id"])
        sentences = stdlib_sentences(VALIDATION_SENTENCES + TRACE_BATCH + 1)
        pad_to = max_length if static_shapes else None
        job.trace_inputs = text.encode(sentences[:1 if static_shapes else TRACE_BATCH], pad_to=pad_to)
        job.validation_batches = [text.encode(sentences[TRACE_BATCH:TRACE_BATCH + VALIDATION_SENTENCES], pad_to=pad_to)]
        if not static_shapes:
            job.validation_batches.append(text.encode(sentences[-1:]))
        job.validation_data = f"{VALIDATION_SENTENCES} standard-library docstring sentences"
    else:
        vocab = int(getattr(config, "vocab_size", 100))
        rng = np.random.default_rng(0)
        seq = sequence_length if static_shapes else 7

        def random_batch(batch, length):
            ids = rng.integers(3, vocab, size=(batch, length), dtype=np.int64)
            mask = np.ones((batch, length), dtype=np.int64)
            for row in range(1, batch):  # ragged: later rows padded
                mask[row, max(1, length - row * 2):] = 0
            feeds = {"input_ids": ids, "attention_mask": mask,
                     "token_type_ids": np.zeros((batch, length), dtype=np.int64)}
            return {n: feeds[n] for n in job.input_names}

        job.trace_inputs = random_batch(1 if static_shapes else TRACE_BATCH, seq)
        job.validation_batches = [random_batch(3, sequence_length if static_shapes else 11)]
        if not static_shapes:
            job.validation_batches.append(random_batch(1, 5))
        job.validation_data = "random token ids (the model folder has no tokenizer)"
        job.processing = {"pooling": "mean", "normalize": False} if job.task == "feature-extraction" else {}
        job.notes.append("no tokenizer in the source folder: the artifact takes token ids, not text")
    if static_shapes:
        job.notes.append(f"static shapes: sequence length {sequence_length}")


def _prepare_vision(job: ExportJob, folder: Path, model, config, static_shapes: bool):
    from ..data import digits_images
    from ..runtime.processing import ImageProcessor

    job.input_names = ["pixel_values"]
    job.input_axes = {"pixel_values": {0: BATCH}}
    size = getattr(config, "image_size", 224)
    size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    channels = int(getattr(config, "num_channels", 3))
    mean, std = [0.5] * channels, [0.5] * channels
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        try:
            pre = json.loads(preprocessor.read_text())
            mean = list(pre.get("image_mean", mean))
            std = list(pre.get("image_std", std))
        except json.JSONDecodeError as exc:
            raise SourceError(f"{preprocessor} is not valid JSON: {exc}") from exc
        job.copy_files["preprocessor_config.json"] = preprocessor
    job.processing = {"image": {"size": list(size), "channels": channels, "mean": mean, "std": std,
                                "layout": "NCHW", "input_range": [0, 1]}}
    process = ImageProcessor(size, channels, mean, std)
    images, _ = digits_images(16)
    job.trace_inputs = {"pixel_values": process(images[:1 if static_shapes else TRACE_BATCH])}
    job.validation_batches = [{"pixel_values": process(images[2:12] if not static_shapes else images[2:3])}]
    if not static_shapes:
        job.validation_batches.append({"pixel_values": process(images[12:13])})
    job.validation_data = "scikit-learn handwritten digits, resized"


# ----------------------------------------------------------------- module:callable


def prepare_callable(source: str, specs: list[InputSpec], output_names: list[str] | None,
                     static_shapes: bool) -> ExportJob:
    if not specs:
        from ..errors import InvalidOptionError
        raise InvalidOptionError(f"'{source}' is a module:callable source: give its inputs with "
                                 "--input name:shape:dtype (e.g. --input images:1x3x32x32:float32)")
    import torch

    module = load_callable(source)
    rng = np.random.default_rng(0)

    def batch_of(size):
        feeds = {}
        for spec in specs:
            shape = spec.shape if static_shapes else (size,) + spec.shape[1:]
            if spec.dtype.startswith(("float", "bfloat")):
                feeds[spec.name] = rng.standard_normal(shape).astype(np.float32 if spec.dtype == "bfloat16" else spec.dtype)
            elif spec.dtype == "bool":
                feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
            else:
                feeds[spec.name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
        return feeds

    trace = batch_of(TRACE_BATCH)
    with torch.no_grad():
        sample = module(*[torch.from_numpy(v) for v in trace.values()])
    count = len(sample) if isinstance(sample, (tuple, list)) else 1
    if isinstance(sample, dict):
        raise UnsupportedModelError(f"{source}() returns a dict; return a tensor or a tuple of tensors")
    names = list(output_names or [f"output_{i}" if count > 1 else "output" for i in range(count)])
    if len(names) != count:
        from ..errors import InvalidOptionError
        raise InvalidOptionError(f"--output-name given {len(names)} times but the model returns {count} outputs")

    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = module

        def forward(self, *args):
            out = self.model(*args)
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    axes = {} if static_shapes else {0: BATCH}
    return ExportJob(
        module=Positional().eval(), task="custom", input_names=[s.name for s in specs], output_names=names,
        input_axes={s.name: dict(axes) for s in specs}, output_axes={n: dict(axes) for n in names},
        trace_inputs=trace,
        validation_batches=[batch_of(3)] + ([] if static_shapes else [batch_of(1)]),
        validation_data="seeded random inputs built from the --input specs",
        sources={"factory": source},
    )
