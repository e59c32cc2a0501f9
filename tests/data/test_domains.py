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
