"""Held-out text domains: real, deterministic, and never the calibration sentences."""

from __future__ import annotations

import pytest

from edgeport.data import stdlib_sentences
from edgeport.data.domains import DOMAINS, domain_sentences
from edgeport.errors import CalibrationDataError


@pytest.mark.parametrize("domain,count", [("docstrings", 300), ("legal", 300), ("science", 140)])
def test_domains_give_real_sentences_deterministically(domain, count):
    texts = domain_sentences(domain, count)
    assert len(texts) == count == len(set(texts))
    assert texts == domain_sentences(domain, count)
    assert all(40 <= len(t) <= 400 or domain == "docstrings" for t in texts)
    assert not set(texts) & set(stdlib_sentences(200, split="calib"))


def test_domains_are_unlike_each_other():
    words = {d: {w.lower() for t in domain_sentences(d, 140) for w in t.split()} for d in DOMAINS}
    assert "license" in words["legal"] and "dataset" in words["science"] and "return" in words["docstrings"]


def test_unknown_domain_and_too_many_sentences():
    with pytest.raises(CalibrationDataError, match="unknown text domain"):
        domain_sentences("poetry", 10)
    with pytest.raises(CalibrationDataError, match="available"):
        domain_sentences("science", 10_000)


def test_examples_are_batched_and_padded_within_an_engine_profile():
    """A TensorRT profile (min batch 3, min length 12, max batch 4, max length 20) bounds every
    batch; short batches repeat their last row, short sequences are padded with mask 0."""
    import numpy as np

    from edgeport.data import ExampleSet, fit_to_range

    rows = [np.arange(1, 1 + n)[None] for n in (5, 9, 30, 7, 3)]
    examples = ExampleSet("five texts", "0" * 64, tuple({"input_ids": r, "attention_mask": np.ones_like(r)}
                                                        for r in rows))
    fitted = fit_to_range(examples, {"input_ids": ((3, 12), (4, 20)), "attention_mask": ((3, 12), (4, 20))})
    shapes = [b["input_ids"].shape for b in fitted.batches]
    assert shapes == [(4, 20), (3, 20)]
    last = fitted.batches[1]
    assert (last["input_ids"][1:] == last["input_ids"][0]).all() and last["attention_mask"][0, 3:].sum() == 0
    assert fit_to_range(examples, {}) is examples
