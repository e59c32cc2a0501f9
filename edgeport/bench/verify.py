"""``edgeport verify``: a candidate artifact against a reference on the same real data.

Also the parity gate every stage after export ends with (quantize calls
``measure_parity`` on its candidate graph before writing anything).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact
from ..data import ExampleSet, examples_for
from ..errors import InvalidOptionError, ParityError
from ..runtime.backends import cpu_session
from .parity import ParityReport, compare_outputs, merge_reports


@dataclass
class ParityBudget:
    """Thresholds a candidate must meet; None means not checked."""

    min_cosine: float | None = None
    max_abs_error: float | None = None
    min_top1_agreement: float | None = None

    def __post_init__(self):
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise InvalidOptionError("--min-cosine must be between -1 and 1")
        if self.min_top1_agreement is not None and not 0 <= self.min_top1_agreement <= 1:
            raise InvalidOptionError("--min-top1-agreement must be between 0 and 1")
        if self.max_abs_error is not None and self.max_abs_error < 0:
            raise InvalidOptionError("--max-abs-error must be >= 0")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.min_cosine, self.max_abs_error, self.min_top1_agreement))

    def thresholds(self) -> dict[str, float]:
        names = {"min_cosine": self.min_cosine, "max_abs_err": self.max_abs_error,
                 "min_top1_agreement": self.min_top1_agreement}
        return {k: v for k, v in names.items() if v is not None}


def measure_parity(candidate_file: Path, reference, examples: ExampleSet, task: str,
                   budget: ParityBudget | None = None, reference_name: str = "reference",
                   reference_outputs: list | None = None) -> ParityReport:
    """Run both graphs on every example batch and compare.

    ``reference`` is a model file or a session; ``reference_outputs`` (one dict per batch)
    skips running it again when the caller already has them.
    """
    candidate = cpu_session(candidate_file)
    output_names = [o.name for o in candidate.get_outputs()]
    if reference_outputs is None:
        reference_outputs = reference_run(reference, examples)
    reports = []
    thresholds = (budget or ParityBudget()).thresholds()
    for feeds, expected in zip(examples.batches, reference_outputs):
        got = dict(zip(output_names, candidate.run(output_names, feeds)))
        reports.append(compare_outputs(expected, got, task=task, token_mask=feeds.get("attention_mask"),
                                       data=examples.description, reference_name=reference_name,
                                       thresholds=thresholds))
    return merge_reports(reports)


def reference_run(reference, examples: ExampleSet) -> list[dict]:
    session = reference if hasattr(reference, "run") else cpu_session(reference)
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, feeds))) for feeds in examples.batches]


def verify(candidate, reference, data: str | None = None, budget: ParityBudget | None = None,
           limit: int | None = None) -> ParityReport:
    """Compare two artifacts on ``data`` (default: the task's bundled real data)."""
    candidate = candidate if isinstance(candidate, Artifact) else Artifact.load(candidate)
    reference = reference if isinstance(reference, Artifact) else Artifact.load(reference)
    ref_inputs = [(s["name"], s["dtype"]) for s in reference.manifest.graph["inputs"]]
    cand_inputs = [(s["name"], s["dtype"]) for s in candidate.manifest.graph["inputs"]]
    if ref_inputs != cand_inputs:
        raise ParityError(f"the candidate takes {cand_inputs} but the reference takes {ref_inputs}: "
                          "they are not the same model")
    if candidate.task != reference.task:
        raise ParityError(f"the candidate is a {candidate.task} model, the reference a {reference.task} model")
    examples = examples_for(reference, data, role="eval", limit=limit)
    return measure_parity(candidate.model_path, reference.model_path, examples, reference.task, budget,
                          reference_name=f"reference artifact '{reference.path}'")
