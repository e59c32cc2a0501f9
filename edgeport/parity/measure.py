"""Measuring a candidate against a reference on the same real data — the gate every stage
after export ends with — and ``edgeport verify``, which is that measurement for two
artifacts.  Both sides are runners; a reference already run is passed as its outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..artifact import Artifact
from ..data import ExampleSet, examples_for, shared_text_length
from ..errors import CalibrationDataError, InvalidOptionError, ModelInputError, ParityError
from ..runtime.formats import make_runner
from ..runtime.onnxrt import QUIET_CPU, run_all
from ..runtime.runner import Runner
from .compare import ParityReport, compare_outputs, merge_reports


@dataclass(frozen=True)
class ParityBudget:
    """Thresholds a candidate must meet; None means not checked.  Non-finite thresholds are
    refused: ``x < nan`` is always false, so a NaN threshold would switch a gate off."""

    min_cosine: float | None = None
    max_abs_error: float | None = None
    min_top1_agreement: float | None = None
    min_p01_cosine: float | None = None

    def __post_init__(self):
        for option, value in (("--min-cosine", self.min_cosine), ("--max-abs-error", self.max_abs_error),
                              ("--min-top1-agreement", self.min_top1_agreement),
                              ("--min-p01-cosine", self.min_p01_cosine)):
            if value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise InvalidOptionError(f"{option} must be a finite number (got {value!r})")
        for option, value in (("--min-cosine", self.min_cosine), ("--min-p01-cosine", self.min_p01_cosine)):
            if value is not None and not -1 <= value <= 1:
                raise InvalidOptionError(f"{option} must be between -1 and 1")
        if self.min_top1_agreement is not None and not 0 <= self.min_top1_agreement <= 1:
            raise InvalidOptionError("--min-top1-agreement must be between 0 and 1")
        if self.max_abs_error is not None and self.max_abs_error < 0:
            raise InvalidOptionError("--max-abs-error must be >= 0")

    @property
    def given(self) -> bool:
        return bool(self.thresholds())

    def check_task(self, task: str) -> "ParityBudget":
        """Refuse a threshold the task never measures: it would pass whatever the model does."""
        from ..vocabulary import CLASSIFICATION_TASKS

        if self.min_top1_agreement is not None and task not in CLASSIFICATION_TASKS:
            raise InvalidOptionError(f"--min-top1-agreement compares the classes a classifier predicts; a {task} "
                                     "model predicts none (use --min-cosine or --max-abs-error)")
        return self

    def thresholds(self) -> dict[str, float]:
        names = {"min_cosine": self.min_cosine, "max_abs_err": self.max_abs_error,
                 "min_top1_agreement": self.min_top1_agreement, "min_p01_cosine": self.min_p01_cosine}
        return {k: v for k, v in names.items() if v is not None}


def reference_outputs(reference: Runner, examples: ExampleSet) -> list[dict[str, np.ndarray]]:
    """The reference's outputs for every batch: computed once, compared against many candidates."""
    return run_all(reference, examples.batches)


def measure(candidate: Runner, expected: Sequence[dict[str, np.ndarray]], examples: ExampleSet, task: str,
            budget: ParityBudget | None = None, reference_name: str = "reference",
            thresholds: dict[str, float] | None = None) -> ParityReport:
    """Run the candidate on every example batch and compare with the reference's outputs
    (against ``thresholds`` when given, else ``budget``'s)."""
    reports = []
    thresholds = thresholds if thresholds is not None else (budget or ParityBudget()).thresholds()
    for feeds, reference in zip(examples.batches, expected):
        got = candidate.run_in_rows(feeds)
        reports.append(compare_outputs(reference, got, task=task, token_mask=feeds.get("attention_mask"),
                                       data=examples.description, reference_name=reference_name,
                                       thresholds=thresholds))
    return merge_reports(reports)


def check_same_model(candidate: Artifact, reference: Artifact, what: str = "the candidate") -> None:
    """Refuse, from the manifests alone, two artifacts that cannot be compared: other inputs,
    another task, or an output of another rank or width (384 against 32 wide)."""
    def inputs(artifact):
        return [(spec["name"], spec["dtype"]) for spec in artifact.manifest.graph.get("inputs", [])]

    def outputs(artifact):
        return {spec["name"]: spec.get("shape") or [] for spec in artifact.manifest.graph.get("outputs", [])}

    def listed(pairs):
        return ", ".join(f"{name} ({dtype})" for name, dtype in pairs) or "no inputs"

    if inputs(candidate) != inputs(reference):
        raise ParityError(f"{what} takes {listed(inputs(candidate))} but the reference takes "
                          f"{listed(inputs(reference))}: they are not the same model")
    if candidate.task != reference.task:
        raise ParityError(f"{what} is a {candidate.task} model, the reference a {reference.task} model")
    theirs, ours = outputs(candidate), outputs(reference)
    for name, shape in ours.items():
        other = theirs.get(name)
        if other is None:
            continue            # outputs compared are those both have (the comparison says which)
        # Rank and feature width (hidden size, classes) only: batch and length may be fixed apart
        # (a static graph runs in rows of its own size).
        widths = (shape[-1], other[-1]) if shape and other else (None, None)
        if len(shape) != len(other) or (all(isinstance(w, int) for w in widths) and widths[0] != widths[1]):
            raise ParityError(f"the output '{name}' of {what} is {other} but the reference's is {shape}: they are "
                              "not the same model")


def recorded_thresholds(artifact: Artifact) -> dict[str, float]:
    """The thresholds the artifact passed last: its quantization gate, or the export's."""
    parity = artifact.manifest.parity
    for stage in ("quantize", "export"):
        if parity.get(stage, {}).get("thresholds"):
            return dict(parity[stage]["thresholds"])
    return {"min_cosine": 0.99}


def golden_check(runner: Runner, artifact: Artifact) -> ParityReport | None:
    """The artifact's own golden inputs through ``runner``, against its golden outputs and the
    thresholds it passed when it was made: what a device (or a replica) runs before it takes
    traffic.  None when the artifact has no golden tensors of its graph (causal LMs keep
    greedy tokens instead)."""
    golden = artifact.golden()
    if golden is None or artifact.task == "text-generation":
        return None
    inputs, expected = golden
    got = runner.run_in_rows(inputs)
    return compare_outputs(expected, got, task=artifact.task, token_mask=inputs.get("attention_mask"),
                           data="golden inputs", reference_name="golden.npz",
                           thresholds=recorded_thresholds(artifact))


def verify(candidate: str | Artifact, reference: str | Artifact, data: str | None = None,
           budget: ParityBudget | None = None, limit: int | None = None, trusted_key: str | None = None
           ) -> ParityReport:
    """Compare two artifacts (or bundles) on ``data`` (default: the task's bundled real data)
    against ``budget``, or, where it sets no threshold, the gate the candidate passed when it
    was made (so that a pass always checked something).  ``trusted_key``: every bundle among
    them must be signed by it."""
    from pathlib import Path

    from ..runtime.model import open_artifact

    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InvalidOptionError(f"--limit must be a whole number >= 1 (got {limit!r})")
    given = [p for p in (candidate, reference) if not isinstance(p, Artifact)]
    if trusted_key is not None and not any(Path(p).is_file() for p in given):
        raise InvalidOptionError("--trusted-key checks the signature of bundles; neither the candidate nor the "
                                 "reference is one")

    def opened(path):
        if isinstance(path, Artifact):
            return path
        return open_artifact(path, trusted_key=trusted_key if Path(path).is_file() else None)

    candidate, reference = opened(candidate), opened(reference)
    if "text-generation" in (candidate.task, reference.task):
        if candidate.task != reference.task:
            raise ParityError(f"the candidate is a {candidate.task} model, the reference a {reference.task} model")
        return verify_generation(candidate, reference, data, budget, limit)
    check_same_model(candidate, reference)
    if budget is not None:
        budget.check_task(reference.task)
    examples = examples_for(reference, data, role="eval", limit=limit, longest=shared_text_length(candidate, reference))
    with make_runner(reference, QUIET_CPU) as reference_runner:
        try:
            expected = reference_outputs(reference_runner, examples)
        except ModelInputError as exc:
            if data is None:
                raise
            # the user's file, as quantize --data says it (10), naming the file
            raise CalibrationDataError(f"'{data}' does not fit the reference model: {exc}") from exc
    thresholds = budget.thresholds() if budget is not None and budget.given else recorded_thresholds(candidate)
    with make_runner(candidate, QUIET_CPU) as candidate_runner:
        return measure(candidate_runner, expected, examples, reference.task,
                       reference_name=f"reference artifact '{reference.path}'", thresholds=thresholds)


def verify_generation(candidate: Artifact, reference: Artifact, data: str | None, budget: ParityBudget | None,
                      limit: int | None):
    """Two causal LMs (two routes, a quantized one and its source...) on real prompts: the
    candidate's greedy tokens and next-token logits against the reference's, perplexity on
    real text.  Thresholds: those the candidate passed when it was made, unless given."""
    from ..data import generation_prompts, stdlib_sentences
    from ..runtime.formats import make_generator
    from .generation import CHECK_PROMPTS, CHECK_TEXTS, measure_generation, reference_answers

    budget = budget or ParityBudget()
    if budget.max_abs_error is not None or budget.min_top1_agreement is not None:
        raise InvalidOptionError("causal LMs are compared by greedy tokens, logits and perplexity: of the thresholds "
                                 "only --min-cosine (next-token logits) applies")
    if data is None:
        prompts, texts, described = generation_prompts(CHECK_PROMPTS), stdlib_sentences(CHECK_TEXTS), \
            "docstring prompts"
    else:
        prompts = _text_lines(data)
        texts, described = prompts, f"prompts from '{data}'"
    prompts = prompts[:limit or CHECK_PROMPTS]
    known = ("min_cosine", "min_exact", "max_token_disagreement", "max_perplexity_increase")
    thresholds = {k: v for k, v in {**recorded_thresholds(candidate), **budget.thresholds()}.items() if k in known}
    with make_generator(reference, QUIET_CPU) as model:
        prompt_ids, tokens, logits, perplexity, new_tokens = reference_answers(model, prompts, texts)
    measured_on = (f"{len(prompts)} {described} x {new_tokens} greedy tokens; perplexity on "
                   f"{len(texts)} texts")
    with make_generator(candidate, QUIET_CPU) as model:
        return measure_generation(model, prompt_ids, tokens, logits, texts, perplexity,
                                  reference=f"reference artifact '{reference.path}'", data=measured_on,
                                  new_tokens=new_tokens, thresholds=thresholds)


def _text_lines(data: str) -> list[str]:
    from pathlib import Path

    path = Path(data)
    if path.suffix != ".txt":
        raise InvalidOptionError(f"--data for causal LMs is a .txt file of prompts, one a line (got '{data}')")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidOptionError(f"cannot read --data '{data}': {exc}") from exc
    if not lines:
        raise InvalidOptionError(f"--data '{data}' holds no prompts")
    return lines


def thresholds_text(thresholds: dict[str, float]) -> str:
    """``min_cosine >= 0.98, max_abs_error <= 0.01``: how verify prints the limits it checked."""
    # Limits from above: errors, tolerances, and every max_* (token disagreement, perplexity increase).
    def sign(name: str) -> str:
        return "<=" if name.startswith("max_") or name in ("atol", "rtol") else ">="
    return ", ".join(f"{name} {sign(name)} {value:.10g}" for name, value in thresholds.items()) or "none"
