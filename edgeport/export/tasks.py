"""Which architectures and tasks export knows: one declarative entry per architecture
family naming its modality, its inputs and the tasks it supports (after optimum's
exporter configs), and one entry per task naming the model class and its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedModelError

EXPORT_TASKS = ("feature-extraction", "text-classification", "token-classification", "image-classification")

BATCH, SEQUENCE = "batch", "sequence"


@dataclass(frozen=True)
class OutputSpec:
    name: str
    axes: dict[int, str]


@dataclass(frozen=True)
class TaskSpec:
    task: str
    modality: str            # "text" or "vision"
    auto_class: str          # transformers Auto class that builds the model
    outputs: tuple[OutputSpec, ...]


TASK_SPECS: dict[tuple[str, str], TaskSpec] = {
    (spec.modality, spec.task): spec
    for spec in (
        TaskSpec("feature-extraction", "text", "AutoModel",
                 (OutputSpec("last_hidden_state", {0: BATCH, 1: SEQUENCE}),)),
        TaskSpec("text-classification", "text", "AutoModelForSequenceClassification",
                 (OutputSpec("logits", {0: BATCH}),)),
        TaskSpec("token-classification", "text", "AutoModelForTokenClassification",
                 (OutputSpec("logits", {0: BATCH, 1: SEQUENCE}),)),
        TaskSpec("feature-extraction", "vision", "AutoModel",
                 (OutputSpec("last_hidden_state", {0: BATCH}),)),
        TaskSpec("image-classification", "vision", "AutoModelForImageClassification",
                 (OutputSpec("logits", {0: BATCH}),)),
    )
}


@dataclass(frozen=True)
class ArchitectureSpec:
    model_type: str
    modality: str
    tasks: tuple[str, ...]
    # Extra keyword arguments for forward (e.g. no KV cache for decoders).
    forward_kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ArchitectureSpec] = {}

_TEXT_TASKS = ("feature-extraction", "text-classification", "token-classification")
_VISION_TASKS = ("feature-extraction", "image-classification")


def register(*model_types: str, modality: str, tasks: tuple[str, ...], **forward_kwargs: Any):
    for task in tasks:
        if (modality, task) not in TASK_SPECS:
            raise ValueError(f"unknown {modality} task '{task}'; known: {sorted(t for m, t in TASK_SPECS if m == modality)}")
    for model_type in model_types:
        _REGISTRY[model_type] = ArchitectureSpec(model_type, modality, tasks, dict(forward_kwargs))


register("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra", "albert",
         "mpnet", "deberta", "deberta-v2", modality="text", tasks=_TEXT_TASKS)
register("gpt2", modality="text", tasks=_TEXT_TASKS, use_cache=False)
register("vit", "deit", "resnet", "convnext", "swin", "mobilenet_v2", "dinov2", "beit",
         modality="vision", tasks=_VISION_TASKS)


def supported_summary() -> str:
    text = sorted(k for k, v in _REGISTRY.items() if v.modality == "text")
    vision = sorted(k for k, v in _REGISTRY.items() if v.modality == "vision")
    return (f"text ({', '.join(_TEXT_TASKS)}): {', '.join(text)}; "
            f"vision ({', '.join(_VISION_TASKS)}): {', '.join(vision)}")


def architecture_for(model_type: str | None) -> ArchitectureSpec:
    if model_type not in _REGISTRY:
        raise UnsupportedModelError(
            f"model type '{model_type}' is not supported for export. Supported: {supported_summary()}. "
            "For any other torch.nn.Module, export it as 'module:callable' with --input specs."
        )
    return _REGISTRY[model_type]


_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForMaskedLM")


def detect_task(config: Any, arch: ArchitectureSpec) -> str:
    """The task implied by ``config.architectures``; feature-extraction for a bare model."""
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name.endswith("ForSequenceClassification"):
            return "text-classification"
        if name.endswith("ForTokenClassification"):
            return "token-classification"
        if name.endswith("ForImageClassification"):
            return "image-classification"
        if name.endswith(_CAUSAL_SUFFIXES):
            raise UnsupportedModelError(
                f"'{name}' is a generation/masked-LM head, which export does not support yet. "
                f"Pass --task with one of: {', '.join(arch.tasks)} (the head is then dropped)."
            )
    return "feature-extraction"


def task_spec(arch: ArchitectureSpec, task: str) -> TaskSpec:
    if task not in arch.tasks:
        raise UnsupportedModelError(
            f"task '{task}' is not supported for {arch.model_type}; choose one of: {', '.join(arch.tasks)}"
        )
    return TASK_SPECS[(arch.modality, task)]
