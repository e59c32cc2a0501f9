"""Turn a source into ``ExportJob``s: the torch module to trace, its named inputs and
outputs with their dynamic axes, the inputs to trace with, the real inputs to validate
with, and the pre-processing the artifact will carry.

A source gives one job per shape variant: ``dynamic`` (batch and sequence, or batch and
image size), ``fixed-size`` (vision: batch only) and ``static`` (every dimension fixed).
Output axes are not declared per architecture: the module runs at two input sizes and
the output axes that changed are the dynamic ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import sha256_file
from ..errors import InvalidOptionError, SourceError, UnsupportedModelError
from ..vocabulary import BATCH
from .quiet import quiet_transformers
from .registry import AUTO_CLASSES, TASK_OUTPUT, check_task, detect_task, modality_of, needs_of
from .source import InputSpec, load_callable, load_hf_config, read_config, weight_files
from .text_inputs import text_axes, text_setup
from .vision_inputs import vision_setup

TRACE_BATCH = 2


@dataclass
class ExportJob:
    module: Any                                  # torch.nn.Module taking positional inputs
    task: str
    variant: str                                 # dynamic | fixed-size | static
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
    input_limits: dict[str, dict[str, Any]] = field(default_factory=dict)   # range / max_shape per input
    fixed_size_reason: str | None = None


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
            return tuple(output_of(out, name) for name in output_attrs)

    return OutputsOf().eval()


def output_of(out, name: str):
    """``out[name]``; a classifier that returns its class scores as a 2-D ``last_hidden_state``
    instead of ``logits`` (PP-LCNet in transformers 5) gives those as its logits."""
    if name == "logits" and "logits" not in out and getattr(out.get("last_hidden_state"), "ndim", 0) == 2:
        return out["last_hidden_state"]
    return out[name]


def run_module(module, input_names: list[str], feeds: dict[str, np.ndarray]) -> list:
    import torch

    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names])
    return list(out) if isinstance(out, (tuple, list)) else [out]


def output_axes(module, input_names: list[str], output_names: list[str], input_axes: dict[str, dict[int, str]],
                probe: tuple[dict, dict]) -> dict[str, dict[int, str]]:
    """Output axes that change when the inputs' dynamic axes change, named like the input
    axis of the same size (batch, sequence, height...) or ``<output>_<axis>``."""
    first, second = (run_module(module, input_names, p) for p in probe)
    sizes = {}
    for name, axes in input_axes.items():
        for axis, label in axes.items():
            sizes[label] = (probe[0][name].shape[axis], probe[1][name].shape[axis])
    result = {}
    for name, a, b in zip(output_names, first, second):
        axes = {}
        for axis, (x, y) in enumerate(zip(a.shape, b.shape)):
            if x != y:
                axes[axis] = next((label for label, pair in sizes.items() if pair == (x, y)), f"{name}_{axis}")
        result[name] = axes
    return result


# ----------------------------------------------------------------- Hugging Face folders


class HfSource:
    """A Hugging Face model folder, loaded once; its jobs share the model and the inputs."""

    def __init__(self, folder: Path, task: str | None, allow_pickle: bool, sequence_length: int, work: Path):
        check_task(task)
        self.folder = folder
        self.sequence_length = sequence_length
        self.work = work
        config_dict = read_config(folder)
        self.model_type = config_dict["model_type"]
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if self.model_type not in CONFIG_MAPPING_NAMES:
            raise UnsupportedModelError(_unknown_type_message(self.model_type))
        self.weights = weight_files(folder, allow_pickle)
        import transformers

        config = load_hf_config(folder)
        with quiet_transformers():
            self.task = task or detect_task(config)
            if self.task == "text-generation":
                # export onnx sends causal LMs to their own route first; ExecuTorch meets them here.
                raise UnsupportedModelError("causal LMs (task text-generation) export with their KV cache through "
                                            "'edgeport export onnx'; for ExecuTorch, use its own LLM runner and "
                                            "KV-cache export (executorch.examples.models.llama, optimum-executorch)")
            self.model = self._load(transformers, config)
        self.config = config
        self.modality = modality_of(self.model, self.task)
        self.needs = needs_of(self.model_type)
        self.notes: list[str] = []
        self._check_missing_keys()
        self._text = self._vision = None
        self._jobs: dict[str, ExportJob] = {}

    def _load(self, transformers, config):
        if self.task == "text-classification" and getattr(config, "pad_token_id", None) is None:
            # Decoder classifiers pool the last non-pad token and refuse batches without a pad id.
            config.pad_token_id = getattr(config, "eos_token_id", None) or 0
        auto_class = getattr(transformers, AUTO_CLASSES[self.task])
        available = available_tasks(self.model_type)
        if self.task not in available:
            raise UnsupportedModelError(
                f"transformers has no {AUTO_CLASSES[self.task]} for model type '{self.model_type}', so task "
                f"'{self.task}' does not apply; tasks it has for {self.model_type}: "
                f"{', '.join(available) or 'none'}")
        safetensors = self.weights[0].suffix == ".safetensors"
        try:
            model, self.loading_info = _load_for_export(auto_class, self.folder, config, safetensors)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, ImportError, AttributeError) as exc:
            raise SourceError(f"cannot load the model in '{self.folder}': {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        return model.eval()

    def _check_missing_keys(self) -> None:
        missing = [k for k in self.loading_info.get("missing_keys", []) if not _is_head(k)]
        if missing:
            raise SourceError(f"the weights in '{self.folder}' lack {len(missing)} tensors the "
                              f"{type(self.model).__name__} needs (first: {sorted(missing)[0]}); the checkpoint is "
                              "incomplete or for another architecture")
        heads = sorted(self.loading_info.get("missing_keys", []))
        if heads and self.task != "feature-extraction":
            # Its outputs would come through layers initialised at random (a classifier, or the
            # pooler a BERT sequence classifier reads), which parity then "verifies" against the
            # same random layers in PyTorch: a model the checkpoint never held.
            raise SourceError(f"the weights in '{self.folder}' hold no {self.task} head ({', '.join(heads[:3])} "
                              f"missing): it would be initialised at random; export the task the checkpoint was "
                              f"trained for (a base model: --task feature-extraction), or fine-tune it first")
        if heads:
            self.notes.append(f"pooler initialised randomly (not in checkpoint): {heads[:4]}")
        # Tensors the checkpoint holds that this model does not use, beyond the heads a base
        # model leaves out (pre-training heads, pooler): a config with fewer layers than the
        # weights, say.  Said, not refused: checkpoints often carry extra heads.
        unused = [k for k in self.loading_info.get("unexpected_keys", [])
                  if not _is_head(k) and not k.startswith(("cls.", "lm_head", "mlm", "nsp", "generator_"))]
        if unused:
            self.notes.append(f"the checkpoint holds {len(unused)} tensors this {type(self.model).__name__} does not "
                              f"use (first: {sorted(unused)[0]}): check config.json against the weights")

    def variants(self, static_shapes: bool) -> list[str]:
        """The shape variants worth trying, most general first."""
        if static_shapes:
            return ["static"]
        if self.modality == "vision":
            return ["fixed-size"] if self.vision.fixed_size_reason else ["dynamic", "fixed-size"]
        return ["dynamic"]

    @property
    def vision(self):
        if self._vision is None:
            self._vision = vision_setup(self.folder, self.model, self.config)
        return self._vision

    def text(self, static: bool):
        key = "static" if static else "dynamic"
        if self._text is None or self._text[0] != key:
            with quiet_transformers():
                self._text = (key, text_setup(self.folder, self.model, self.config, self.task, self.needs, static,
                                              self.sequence_length, self.work, quiet_transformers))
        return self._text[1]

    def job(self, variant: str) -> ExportJob:
        if variant not in self._jobs:
            self._jobs[variant] = self._make_job(variant)
        return self._jobs[variant]

    def _make_job(self, variant: str) -> ExportJob:
        static = variant == "static"
        output_name = TASK_OUTPUT[self.task]
        forward_kwargs = dict(self.needs.forward_kwargs)
        import inspect

        if "use_cache" in inspect.signature(self.model.forward).parameters:
            forward_kwargs.setdefault("use_cache", False)     # decoders: no KV cache in an encoder-style graph
        job = ExportJob(module=None, task=self.task, variant=variant, input_names=[], output_names=[output_name],
                        input_axes={}, output_axes={}, trace_inputs={}, validation_batches=[], validation_data="",
                        notes=list(self.notes), model_type=self.model_type)
        job.sources = {p.name: sha256_file(p) for p in self.weights}
        job.copy_files["config.json"] = self.folder / "config.json"
        if self.modality == "text":
            setup = self.text(static)
            job.input_names = list(setup.input_names)
            job.input_axes = text_axes(job.input_names, static)
            job.processing = dict(setup.processing)
            job.copy_files.update(setup.copy_files)
            job.input_limits = setup.limits
            job.notes.extend(setup.notes)
            job.trace_inputs, job.validation_batches, job.validation_data = setup.batches(static, self.sequence_length)
            check_token_ids(self.config, [job.trace_inputs, *job.validation_batches])
            probe = setup.probe_pair(job.trace_inputs)
        else:
            setup = self.vision
            job.input_names = ["pixel_values"]
            job.input_axes = setup.axes(variant)
            job.processing = setup.processing(variant == "dynamic")
            job.copy_files.update(setup.copy_files)
            job.trace_inputs, job.validation_batches, job.validation_data = setup.batches(variant)
            probe = setup.probe_pair(job.trace_inputs, variant == "dynamic")
            job.fixed_size_reason = setup.fixed_size_reason if variant != "dynamic" else None
        if self.task in ("text-classification", "token-classification", "image-classification"):
            names = self.config.id2label or {i: f"LABEL_{i}" for i in range(int(self.config.num_labels or 0))}
            job.processing["labels"] = [str(names[i]) for i in sorted(names)]
        if static:
            job.notes.append(f"static shapes: every dimension fixed ({_shapes(job.trace_inputs)})")
        job.module = named_outputs_module(self.model, job.input_names, job.output_names, forward_kwargs)
        job.output_axes = ({n: {} for n in job.output_names} if static else
                           output_axes(job.module, job.input_names, job.output_names, job.input_axes, probe))
        return job


def check_token_ids(config, batches: list[dict[str, np.ndarray]]) -> None:
    """The tokenizer beside the weights must not give ids past the model's embedding table (a
    tokenizer from another checkpoint): refused here, before torch fails on an index."""
    vocab = getattr(config, "vocab_size", None)
    ids = [b["input_ids"] for b in batches if "input_ids" in b and b["input_ids"].size]
    if not isinstance(vocab, int) or isinstance(vocab, bool) or not ids:
        return
    largest = max(int(i.max()) for i in ids)
    if largest >= vocab:
        raise SourceError(f"the tokenizer beside the model gives token id {largest}, but the model's vocab_size is "
                          f"{vocab}: the tokenizer belongs to another checkpoint (its vocabulary is larger than the "
                          "model's embedding table); save the model's own tokenizer beside it")


def available_tasks(model_type: str) -> list[str]:
    """Tasks transformers has an Auto class mapping for this model type."""
    from transformers.models.auto import modeling_auto

    names = {
        "feature-extraction": modeling_auto.MODEL_MAPPING_NAMES,
        "text-classification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "token-classification": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
        "image-classification": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        "text-generation": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    }
    return [task for task, mapping in names.items() if model_type in mapping]


def _unknown_type_message(model_type: str) -> str:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    import transformers

    examples = ", ".join(t for t in ("bert", "roberta", "modernbert", "vit", "resnet", "convnext", "llama", "qwen2")
                         if t in CONFIG_MAPPING_NAMES)
    return (f"model type '{model_type}' is not one transformers {transformers.__version__} knows (it knows "
            f"{len(CONFIG_MAPPING_NAMES)} types, e.g. {examples}). Upgrade transformers if the model is newer, or "
            "export any torch.nn.Module as 'module:callable' with --input specs")


def _load_for_export(auto_class, folder: Path, config, safetensors: bool):
    """Load with eager attention where the model has it: the SDPA path exports with a NaN
    guard (IsNaN + Where over every attention matrix) that cost 14% of MiniLM's INT8
    latency here; eager attention exports 516 nodes instead of 669, with the same outputs.
    Mixture-of-experts layers are computed densely (experts.py); other models ignore it."""
    import torch

    from .experts import DENSE_EXPERTS, register_dense_experts

    kwargs = dict(config=config, dtype=torch.float32, output_loading_info=True, use_safetensors=safetensors)
    if register_dense_experts():
        kwargs["experts_implementation"] = DENSE_EXPERTS
    try:
        return auto_class.from_pretrained(folder, attn_implementation="eager", **kwargs)
    except (ValueError, TypeError, ImportError):
        return auto_class.from_pretrained(folder, **kwargs)


def _is_head(key: str) -> bool:
    return key.split(".")[0] in ("classifier", "score", "pooler", "pre_classifier", "qa_outputs", "head") or \
        key.startswith(("bert.pooler", "pooler."))


def _shapes(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())


# ----------------------------------------------------------------- module:callable


class CallableSource:
    """A ``module:callable`` factory returning a torch.nn.Module, with ``--input`` specs."""

    def __init__(self, source: str, specs: list[InputSpec], output_names: list[str] | None, task: str | None = None):
        if task:
            raise InvalidOptionError(f"--task is for model folders; '{source}' is a module:callable source, exported "
                                     "as task 'custom' with its outputs as the callable returns them")
        if not specs:
            raise InvalidOptionError(f"'{source}' is a module:callable source: give its inputs with "
                                     "--input name:shape:dtype (e.g. --input images:1x3x32x32:float32)")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise InvalidOptionError(f"--input names must differ (got {', '.join(names)})")
        self.source = source
        self.specs = specs
        self.model_type = "custom"
        self.task = "custom"
        self.module = load_callable(source)
        self.bfloat16 = [s.name for s in specs if s.dtype == "bfloat16"]
        if self.bfloat16:       # numpy has no bfloat16: the graph takes float32, so the module runs in it
            self.module = self.module.float()           # bfloat16 weights widen to float32 exactly
        self.requested_outputs = list(output_names or [])
        if len(set(self.requested_outputs)) != len(self.requested_outputs):
            raise InvalidOptionError(f"--output-name names must differ (got {', '.join(self.requested_outputs)})")
        self._jobs: dict[str, ExportJob] = {}

    def variants(self, static_shapes: bool) -> list[str]:
        return ["static"] if static_shapes else ["dynamic"]

    def _batch(self, rng, size: int, static: bool) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in self.specs:
            shape = spec.shape if static else (size,) + spec.shape[1:]
            if spec.dtype.startswith(("float", "bfloat")):
                feeds[spec.name] = rng.standard_normal(shape).astype(np.float32 if spec.dtype == "bfloat16" else spec.dtype)
            elif spec.dtype == "bool":
                feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
            else:
                feeds[spec.name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
        return feeds

    def job(self, variant: str) -> ExportJob:
        if variant not in self._jobs:
            self._jobs[variant] = self._make_job(variant)
        return self._jobs[variant]

    def _make_job(self, variant: str) -> ExportJob:
        import torch

        static = variant == "static"
        rng = np.random.default_rng(0)
        trace = self._batch(rng, TRACE_BATCH, static)
        outputs = self._sample_outputs(trace)
        names = self.requested_outputs or [f"output_{i}" if len(outputs) > 1 else "output" for i in range(len(outputs))]
        if len(names) != len(outputs):
            raise InvalidOptionError(f"--output-name given {len(names)} times but the model returns {len(outputs)} outputs")
        factory = self.module

        class Positional(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = factory

            def forward(self, *args):
                out = self.model(*args)
                return tuple(out) if isinstance(out, (tuple, list)) else (out,)

        module = Positional().eval()
        input_axes = {s.name: ({} if static else {0: BATCH}) for s in self.specs}
        validation = [self._batch(rng, 3, static)] + ([] if static else [self._batch(rng, 1, static)])
        job = ExportJob(module=module, task="custom", variant=variant, input_names=[s.name for s in self.specs],
                        output_names=names, input_axes=input_axes, output_axes={}, trace_inputs=trace,
                        validation_batches=validation, validation_data="seeded random inputs built from the --input specs",
                        sources={"factory": self.source})
        if self.bfloat16:
            job.notes.append(f"--input {', '.join(self.bfloat16)} bfloat16: the graph takes float32 and the module ran "
                             "in float32 (numpy, and so the runtime, has no bfloat16; bfloat16 weights widen exactly)")
        job.output_axes = ({n: {} for n in names} if static else
                           output_axes(module, job.input_names, names, input_axes,
                                       (trace, self._batch(rng, TRACE_BATCH + 1, static))))
        rows = len(next(iter(trace.values())))
        unbatched = [f"'{n}' {list(o.shape)}" for n, o in zip(names, outputs)
                     if o.shape[0] != rows or (not static and job.output_axes[n].get(0) != BATCH)]
        if unbatched:       # the runtime runs rows in batches and joins the outputs along axis 0
            raise UnsupportedModelError(f"{self.source}() returns output {', '.join(unbatched)} for {rows} input rows: "
                                        "every output needs one row per input row on axis 0 (keep the batch axis)")
        return job

    def _sample_outputs(self, trace: dict[str, np.ndarray]) -> list:
        """One forward pass on inputs of the declared shapes; its failures are the user's
        model or --input specs, said as such."""
        import torch

        try:
            with torch.no_grad():
                sample = self.module(*[torch.from_numpy(v) for v in trace.values()])
        except Exception as exc:  # the user's forward: anything it raises means the specs do not fit it
            given = ", ".join(f"{s.name} {list(s.shape)}" for s in self.specs)
            ran = _shapes(trace)
            at = "" if ran == given else f", run at batch {len(next(iter(trace.values())))} ({ran})"
            raise SourceError(f"{self.source}() fails on inputs of the --input shapes ({given}{at}): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                              ". Check the names, shapes and dtypes given with --input") from exc
        if isinstance(sample, dict):
            raise UnsupportedModelError(f"{self.source}() returns a dict; return a tensor or a tuple of tensors")
        outputs = list(sample) if isinstance(sample, (tuple, list)) else [sample]
        bad = [type(o).__name__ for o in outputs if not isinstance(o, torch.Tensor)]
        if bad or not outputs:
            raise UnsupportedModelError(f"{self.source}() returns {', '.join(bad) or 'nothing'}; the model must return "
                                        "a tensor or a tuple of tensors")
        scalars = [str(i) for i, o in enumerate(outputs) if o.dim() == 0]
        if scalars:     # the checks compare outputs batch by batch, along axis 0
            raise UnsupportedModelError(f"{self.source}() returns a single number (a 0-d tensor) as output "
                                        f"{', '.join(scalars)}; return one value per input row (keep the batch axis)")
        return outputs
