"""How closely a candidate's outputs match a reference's, on the same inputs.

numpy only, so the runtime, quantize and verify can all use it without torch.  Token-level
outputs are compared over real tokens only (padding positions are free to differ).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ParityError
from ..runtime.processing import mean_pool
from ..vocabulary import CLASSIFICATION_TASKS


@dataclass
class OutputParity:
    name: str
    max_abs_err: float
    max_rel_err: float
    mean_cosine: float
    min_cosine: float
    top1_agreement: float | None = None
    nonfinite: int = 0
    within_tolerance: bool | None = None
    cosines: np.ndarray | None = field(default=None, repr=False)    # per sample, for percentiles

    @property
    def p01_cosine(self) -> float:
        """The 1st percentile of the per-sample cosines: the worst case short of the single worst."""
        return float(np.percentile(self.cosines, 1)) if self.cosines is not None and self.cosines.size else self.min_cosine

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "max_abs_err": self.max_abs_err, "max_rel_err": self.max_rel_err,
                "mean_cosine": self.mean_cosine, "min_cosine": self.min_cosine, "p01_cosine": self.p01_cosine,
                "top1_agreement": self.top1_agreement, "nonfinite": self.nonfinite,
                "within_tolerance": self.within_tolerance}
        return {k: v for k, v in data.items() if v is not None}


@dataclass
class ParityReport:
    """Per-output figures plus what they were measured on."""

    outputs: list[OutputParity]
    data: str
    samples: int
    reference: str
    thresholds: dict[str, float] = field(default_factory=dict)
    embedding: OutputParity | None = None  # pooled sentence embedding, for feature extraction

    @property
    def failures(self) -> list[str]:
        problems = []
        atol, rtol = self.thresholds.get("atol"), self.thresholds.get("rtol", 0.0)
        min_cos = self.thresholds.get("min_cosine")
        min_p01 = self.thresholds.get("min_p01_cosine")
        min_top1 = self.thresholds.get("min_top1_agreement")
        max_abs = self.thresholds.get("max_abs_err")
        for out in self.all_outputs():
            if out.nonfinite:
                problems.append(f"{out.name}: {out.nonfinite} values are NaN or infinite")
            if atol is not None and out.within_tolerance is False:
                problems.append(f"{out.name}: max abs error {out.max_abs_err:.3g} exceeds "
                                f"atol {atol:g} + rtol {rtol:g} x |reference|")
            if max_abs is not None and not out.max_abs_err <= max_abs:
                problems.append(f"{out.name}: max abs error {out.max_abs_err:.3g} > {max_abs:g}")
            if min_cos is not None and not out.min_cosine >= min_cos and self._cosine_applies(out):
                problems.append(f"{out.name}: min cosine {out.min_cosine:.10g} < {min_cos}")
            if min_p01 is not None and not out.p01_cosine >= min_p01 and self._cosine_applies(out):
                problems.append(f"{out.name}: 1st-percentile cosine {out.p01_cosine:.10g} < {min_p01}")
            if min_top1 is not None and out.top1_agreement is not None and not out.top1_agreement >= min_top1:
                problems.append(f"{out.name}: top-1 agreement {out.top1_agreement:.6g} < {min_top1}")
        return problems

    def _cosine_applies(self, out: OutputParity) -> bool:
        # With a pooled embedding, the cosine budget is about the embedding users consume.
        return self.embedding is None or out is self.embedding

    @property
    def passed(self) -> bool:
        return not self.failures

    def all_outputs(self) -> list[OutputParity]:
        return self.outputs + ([self.embedding] if self.embedding else [])

    def headline(self) -> OutputParity:
        """The figures users care about: the pooled embedding, else the first output."""
        return self.embedding or self.outputs[0]

    def raise_for_failure(self, what: str = "candidate") -> "ParityReport":
        if self.failures:
            raise ParityError(f"{what} does not match {self.reference} on {self.data} "
                              f"({self.samples} samples): " + "; ".join(self.failures))
        return self

    def to_dict(self) -> dict[str, Any]:
        result = {
            "reference": self.reference,
            "data": self.data,
            "samples": self.samples,
            "thresholds": self.thresholds,
            "passed": self.passed,
            "outputs": {o.name: o.to_dict() for o in self.outputs},
        }
        if self.embedding:
            result["sentence_embedding"] = self.embedding.to_dict()
        return result

    def summary(self, separator: str = "\n") -> str:
        """One line per output, joined by ``separator`` (an error message passes '; ')."""
        lines = []
        for out in self.all_outputs():
            text = (f"{out.name}: max abs {out.max_abs_err:.3g}, max rel {out.max_rel_err:.3g}, "
                    f"cosine mean {out.mean_cosine:.6f} p1 {out.p01_cosine:.6f} min {out.min_cosine:.6f}")
            if out.top1_agreement is not None:
                text += f", top-1 agreement {out.top1_agreement:.4f}"
            lines.append(text)
        return separator.join(lines)


def _rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(np.abs(a - b).sum(1) == 0, 1.0, 0.0))
    # identical rows are exactly 1 (the float64 sum read 0.9999999999999998, failing --min-cosine 1)
    cos = np.where((a == b).all(axis=1), 1.0, np.clip(cos, -1.0, 1.0))
    return np.where(np.isfinite(cos), cos, -1.0)     # a NaN output is as far as it gets


def compare_output(name: str, reference: np.ndarray, candidate: np.ndarray,
                   token_mask: np.ndarray | None = None, atol: float | None = None,
                   rtol: float = 0.0, classifier: bool = False) -> OutputParity:
    """Compare one output.  ``token_mask`` [batch, seq] restricts token-level outputs to real tokens."""
    reference = np.asarray(reference)
    candidate = np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ParityError(f"output '{name}' has shape {candidate.shape}, reference has {reference.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    nonfinite = int((~np.isfinite(cand)).sum())
    if token_mask is not None and ref.ndim >= 2 and ref.shape[:2] == token_mask.shape:
        keep = token_mask.astype(bool)
        cos = np.array([_rowwise_cosine(ref[i][keep[i]].reshape(1, -1), cand[i][keep[i]].reshape(1, -1))[0]
                        for i in range(len(ref))])
        ref_sel, cand_sel = ref[keep], cand[keep]
    else:
        cos = _rowwise_cosine(ref, cand) if ref.ndim else np.array([1.0])
        ref_sel, cand_sel = ref, cand
    diff = np.abs(ref_sel - cand_sel)
    diff = np.where(np.isfinite(diff), diff, np.inf)
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(ref_sel), 1e-6)
    max_rel = float(rel.max()) if rel.size else 0.0
    within = None
    if atol is not None:
        within = bool(np.all(diff <= atol + rtol * np.abs(ref_sel)))
    top1 = None
    if classifier and ref.ndim >= 2:
        ref_top, cand_top = ref.argmax(-1), cand.argmax(-1)
        if token_mask is not None and ref_top.shape == token_mask.shape:
            agree = (ref_top == cand_top)[token_mask.astype(bool)]
        else:
            agree = ref_top == cand_top
        top1 = float(agree.mean()) if agree.size else 1.0
    return OutputParity(name, max_abs, max_rel, float(np.mean(cos)), float(np.min(cos)), top1, nonfinite, within,
                        cos)


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], *,
                    task: str, token_mask: np.ndarray | None = None, data: str = "golden inputs",
                    reference_name: str = "reference", thresholds: dict[str, float] | None = None
                    ) -> ParityReport:
    """Compare every output the reference has; add the pooled embedding for text features."""
    thresholds = dict(thresholds or {})
    atol, rtol = thresholds.get("atol"), thresholds.get("rtol", 0.0)
    classifier = task in CLASSIFICATION_TASKS
    outputs = []
    for name, ref in reference.items():
        if name not in candidate:
            raise ParityError(f"candidate has no output '{name}' (it has {', '.join(candidate)})")
        mask = token_mask if task in ("feature-extraction", "token-classification") else None
        # A custom model's [batch, classes] output is most likely logits: report top-1 too.
        scores = classifier or (task == "custom" and np.ndim(ref) == 2 and np.shape(ref)[1] > 1)
        outputs.append(compare_output(name, ref, candidate[name], mask, atol, rtol, scores))
    embedding = None
    hidden = reference.get("last_hidden_state")
    if task == "feature-extraction" and token_mask is not None and hidden is not None and hidden.ndim == 3:
        embedding = compare_output(
            "sentence_embedding (mean-pooled)",
            mean_pool(hidden.astype(np.float64), token_mask),
            mean_pool(candidate["last_hidden_state"].astype(np.float64), token_mask),
        )
    samples = len(next(iter(reference.values())))
    return ParityReport(outputs, data, samples, reference_name, thresholds, embedding)


def _merge_output(parts: list[OutputParity], weights: list[int]) -> OutputParity:
    total = sum(weights)
    top1 = [p.top1_agreement for p in parts]
    within = [p.within_tolerance for p in parts]
    cosines = [p.cosines for p in parts]
    return OutputParity(
        name=parts[0].name,
        max_abs_err=max(p.max_abs_err for p in parts),
        max_rel_err=max(p.max_rel_err for p in parts),
        mean_cosine=sum(p.mean_cosine * w for p, w in zip(parts, weights)) / total,
        min_cosine=min(p.min_cosine for p in parts),
        top1_agreement=None if None in top1 else sum(t * w for t, w in zip(top1, weights)) / total,
        nonfinite=sum(p.nonfinite for p in parts),
        within_tolerance=None if None in within else all(within),
        cosines=None if any(c is None for c in cosines) else np.concatenate(cosines),
    )


def merge_reports(reports: list[ParityReport]) -> ParityReport:
    """One report over several batches (batches of text differ in length, so they are
    compared one at a time): worst case for maxima and minima, sample-weighted means."""
    first = reports[0]
    weights = [r.samples for r in reports]
    outputs = [_merge_output([r.outputs[i] for r in reports], weights) for i in range(len(first.outputs))]
    embedding = _merge_output([r.embedding for r in reports], weights) if first.embedding else None
    return ParityReport(outputs, first.data, sum(weights), first.reference, first.thresholds, embedding)
