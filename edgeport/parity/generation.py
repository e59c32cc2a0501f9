"""Parity of a causal language model: do its greedy tokens equal the reference's, how close
are its next-token logits, and how much worse is its perplexity on real text.  numpy only;
the caller runs both models."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import ParityError
from .compare import OutputParity, compare_output


def free_running(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> tuple[float, int | None]:
    """(share of prompts whose greedy continuations are identical, first position where any
    prompt's continuation diverges, or None)."""
    exact, first = 0, None
    for ref, got in zip(reference, candidate):
        ref, got = list(ref), list(got)
        exact += ref == got
        if ref != got:
            position = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
            first = position if first is None else min(first, position)
    return exact / max(len(reference), 1), first


def teacher_forced(reference: Sequence[Sequence[int]], predictions: Sequence[Sequence[int]]) -> float:
    """Share of the reference's greedy tokens the candidate predicts itself when fed the
    reference's own prefix: a per-token measure, so one early difference does not count
    against every later position the way free-running comparison does."""
    equal = sum(int(a == b) for ref, pred in zip(reference, predictions) for a, b in zip(ref, pred))
    total = sum(len(ref) for ref in reference)
    return equal / total if total else 1.0


@dataclass
class GenerationParity:
    reference: str
    data: str
    prompts: int
    new_tokens: int
    exact: float                      # share of prompts with identical free-running greedy continuations
    token_agreement: float            # share of the reference's tokens predicted along its own path
    first_divergence: int | None
    logits: OutputParity | None = None
    perplexity_reference: float | None = None
    perplexity: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return self.prompts

    @property
    def perplexity_increase(self) -> float | None:
        if self.perplexity is None or not self.perplexity_reference:
            return None
        return self.perplexity / self.perplexity_reference - 1.0

    @property
    def failures(self) -> list[str]:
        problems = []
        if self.logits is not None and self.logits.nonfinite:
            problems.append(f"logits: {self.logits.nonfinite} values are NaN or infinite")
        if self.perplexity is not None and not math.isfinite(self.perplexity):
            problems.append("perplexity is not finite")
        limit = self.thresholds.get("min_cosine")
        if limit is not None and self.logits is not None and not self.logits.min_cosine >= limit:
            problems.append(f"next-token logits: min cosine {self.logits.min_cosine:.5f} < {limit:g}")
        if "min_exact" in self.thresholds and not self.exact >= self.thresholds["min_exact"]:
            problems.append(f"{self.exact:.0%} of prompts give the reference's greedy tokens, "
                            f"below {self.thresholds['min_exact']:.0%}")
        limit = self.thresholds.get("max_token_disagreement")
        if limit is not None and not 1 - self.token_agreement <= limit:
            problems.append(f"{1 - self.token_agreement:.1%} of greedy tokens differ from the reference "
                            f"(budget {limit:.1%})")
        limit = self.thresholds.get("max_perplexity_increase")
        increase = self.perplexity_increase
        if limit is not None and increase is not None and not increase <= limit:
            problems.append(f"perplexity rose {increase:.1%} ({self.perplexity_reference:.3f} -> {self.perplexity:.3f}),"
                            f" budget {limit:.1%}")
        return problems

    @property
    def passed(self) -> bool:
        return not self.failures

    def raise_for_failure(self, what: str = "candidate") -> "GenerationParity":
        if self.failures:
            raise ParityError(f"{what} does not match {self.reference} on {self.data}: " + "; ".join(self.failures))
        return self

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "reference": self.reference, "data": self.data, "samples": self.prompts, "thresholds": self.thresholds,
            "passed": self.passed, "outputs": {},
            "generation": {"new_tokens": self.new_tokens, "exact": self.exact, "token_agreement": self.token_agreement,
                           "first_divergence": self.first_divergence, "perplexity_reference": self.perplexity_reference,
                           "perplexity": self.perplexity, "perplexity_increase": self.perplexity_increase},
        }
        if self.logits is not None:
            result["outputs"]["next_token_logits"] = self.logits.to_dict()
        return result

    def summary(self) -> str:
        text = (f"greedy tokens: {self.exact:.0%} of {self.prompts} prompts identical over {self.new_tokens} tokens, "
                f"{self.token_agreement:.1%} of the reference's tokens predicted")
        if self.logits is not None:
            text += f"; next-token logits max abs {self.logits.max_abs_err:.3g}, cosine min {self.logits.min_cosine:.6f}"
        if self.perplexity is not None:
            text += f"; perplexity {self.perplexity:.3f} (reference {self.perplexity_reference:.3f})"
        return text


def compare_generation(reference_tokens, candidate_tokens, forced_predictions, reference_logits: np.ndarray | None,
                       candidate_logits: np.ndarray | None, *, reference: str, data: str, new_tokens: int,
                       perplexity_reference: float | None = None, perplexity_candidate: float | None = None,
                       thresholds: dict[str, float] | None = None) -> GenerationParity:
    """``candidate_tokens``: the candidate's own greedy continuations; ``forced_predictions``:
    its next-token choices along the reference's continuations (teacher forcing)."""
    exact, first = free_running(reference_tokens, candidate_tokens)
    agreement = teacher_forced(reference_tokens, forced_predictions)
    logits = None
    if reference_logits is not None and candidate_logits is not None:
        logits = compare_output("next_token_logits", reference_logits, candidate_logits, classifier=True)
    return GenerationParity(reference, data, len(reference_tokens), new_tokens, exact, agreement, first, logits,
                            perplexity_reference, perplexity_candidate, dict(thresholds or {}))


# What a causal LM is checked on against another artifact (quantize, verify): real prompts,
# greedy tokens after each, and real sentences for perplexity.
CHECK_PROMPTS = 8
CHECK_TEXTS = 24
CHECK_NEW_TOKENS = 16


def fit_to_context(prompt_ids: Sequence[Sequence[int]], context_length: int, new_tokens: int
                   ) -> tuple[list[list[int]], int]:
    """A short context lowers a generation check's length rather than refusing the model:
    prompts cut to half the context, and as many new tokens as still fit (at most
    ``new_tokens``).  The export's check, verify, quantize and bench all cut them so."""
    keep = max(1, context_length // 2)
    cut = [list(ids)[:keep] for ids in prompt_ids]
    return cut, max(1, min(new_tokens, context_length - max(map(len, cut))))


def reference_answers(model, prompts: Sequence[str], texts: Sequence[str], new_tokens: int = CHECK_NEW_TOKENS):
    """A loaded generative model's answers, to measure another against: the prompts' token ids,
    its greedy continuations, its next-token logits after each prompt, its perplexity, and the
    number of new tokens asked for (both fitted to the model's context: ``fit_to_context``)."""
    prompt_ids, new_tokens = fit_to_context([model.encode(p) for p in prompts], model.context_length, new_tokens)
    tokens = [g.tokens for g in model.generate(prompt_ids, max_new_tokens=new_tokens)]
    logits = np.stack([model.logits(ids)[-1] for ids in prompt_ids])
    return prompt_ids, tokens, logits, model.perplexity(list(texts)), new_tokens


def measure_generation(model, prompt_ids: list[list[int]], reference_tokens: list[list[int]],
                       reference_logits: np.ndarray, texts: list[str], perplexity_reference: float | None, *,
                       reference: str, data: str, new_tokens: int, thresholds: dict[str, float]) -> GenerationParity:
    """A loaded generative model (runtime.generation.GenerativeModel) against reference answers:
    its free-running greedy tokens (one prompt at a time, and as one ragged batch, which must
    agree), its predictions along the reference's tokens, next-token logits, perplexity."""
    single = [model.generate([ids], max_new_tokens=new_tokens)[0].tokens for ids in prompt_ids]
    batched = [g.tokens for g in model.generate([list(ids) for ids in prompt_ids], max_new_tokens=new_tokens)]
    if batched != single:
        raise ParityError("batched generation differs from one prompt at a time; the graph's attention mask "
                          "handling is broken")
    forced, logits = [], []
    for ids, continuation in zip(prompt_ids, reference_tokens):
        all_logits = model.logits(list(ids) + list(continuation))
        start = len(ids) - 1
        forced.append([int(t) for t in all_logits[start:start + len(continuation)].argmax(axis=-1)])
        logits.append(all_logits[start])
    perplexity = model.perplexity(texts) if texts else None
    return compare_generation(reference_tokens, single, forced, reference_logits, np.stack(logits),
                              reference=reference, data=data, new_tokens=new_tokens,
                              perplexity_reference=perplexity_reference, perplexity_candidate=perplexity,
                              thresholds=thresholds)
