"""Which models export takes, and what a family needs beyond the generic path.

The registry holds exceptions, not permissions.  Any model that transformers' Auto classes
load for the asked task is tried: its inputs come from its forward signature and its
tokenizer or image processor, its output axes from running it at two sizes.  A family
appears below only when it needs something more (after optimum's per-architecture export
configs, but as the exception).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedModelError
from ..vocabulary import EXPORT_TASKS

# The transformers Auto class that builds the model for each task.
AUTO_CLASSES = {
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
    "text-generation": "AutoModelForCausalLM",
}
# The output each task exports (the model's output attribute of that name).
TASK_OUTPUT = {
    "feature-extraction": "last_hidden_state",
    "text-classification": "logits",
    "token-classification": "logits",
    "image-classification": "logits",
}
MODALITY_TASKS = {
    "text": ("feature-extraction", "text-classification", "token-classification"),
    "vision": ("feature-extraction", "image-classification"),
}


@dataclass(frozen=True)
class FamilyNeeds:
    """What a model family needs beyond the generic export path."""

    # Position ids start after the padding index (RoBERTa's embeddings), so the usable
    # length is max_position_embeddings minus this.
    position_offset: int = 0
    # Extra keyword arguments for forward.
    forward_kwargs: dict[str, Any] = field(default_factory=dict)


GENERIC = FamilyNeeds()
_EXCEPTIONS: dict[str, FamilyNeeds] = {}


def register(*model_types: str, needs: FamilyNeeds) -> None:
    for model_type in model_types:
        _EXCEPTIONS[model_type] = needs


register("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text", "xlm-roberta-xl",
         "luke", "ibert", "roberta-prelayernorm", needs=FamilyNeeds(position_offset=2))


def needs_of(model_type: str) -> FamilyNeeds:
    return _EXCEPTIONS.get(model_type, GENERIC)


def registered() -> list[str]:
    return sorted(_EXCEPTIONS)


def check_task(task: str | None) -> None:
    if task is not None and task not in EXPORT_TASKS:
        raise UnsupportedModelError(f"task '{task}' cannot be exported; choose one of {', '.join(EXPORT_TASKS)}")


_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def detect_task(config: Any) -> str:
    """The task implied by ``config.architectures``; feature-extraction for a bare model."""
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if not isinstance(name, str):
            continue
        if name.endswith("ForSequenceClassification"):
            return "text-classification"
        if name.endswith("ForTokenClassification"):
            return "token-classification"
        if name.endswith("ForImageClassification"):
            return "image-classification"
        if name.endswith(_CAUSAL_SUFFIXES):
            return "text-generation"
        if name.endswith(("ForMaskedLM", "ForConditionalGeneration", "ForPreTraining")):
            raise UnsupportedModelError(
                f"'{name}' is a masked-LM / sequence-to-sequence head, which export does not support. "
                f"Pass --task feature-extraction (the head is then dropped), or another of: {', '.join(EXPORT_TASKS)}")
    return "feature-extraction"


def modality_of(model, task: str) -> str:
    """text or vision, from what the model's forward takes first (``main_input_name``)."""
    main_input = getattr(model, "main_input_name", "input_ids")
    modality = {"input_ids": "text", "pixel_values": "vision"}.get(main_input)
    if modality is None:
        raise UnsupportedModelError(f"{type(model).__name__} takes '{main_input}' (audio or another modality), which "
                                    "export does not support; export it as module:callable with --input specs")
    if task not in MODALITY_TASKS[modality]:
        raise UnsupportedModelError(f"task '{task}' does not apply to a {modality} model like "
                                    f"{type(model).__name__}; choose one of: {', '.join(MODALITY_TASKS[modality])}")
    return modality
