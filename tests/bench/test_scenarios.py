"""bench.scenarios: interleaving, interruption, settings that cannot run."""

from __future__ import annotations

import pytest

from edgeport.bench.scenarios import Interrupted, Settings, interleaved_latency
from edgeport.errors import InvalidOptionError


def test_interrupt_keeps_what_was_measured():
    calls = {"n": 0}

    def run(feeds):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        interleaved_latency({"a": run}, [{}], Settings(rounds=5, warmup=1, min_duration=0, min_count=4, pause=0))
    assert len(info.value.samples["a"]) >= 4


def test_variants_alternate_and_every_block_is_counted():
    order = []
    settings = Settings(rounds=4, warmup=0, min_duration=0, min_count=3, pause=0)
    samples = interleaved_latency({"a": lambda f: None, "b": lambda f: None}, [{}], settings,
                                  tick=order.append)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]        # order reversed every round
    assert len(samples["a"]) == len(samples["b"]) == 12


@pytest.mark.parametrize("field,value", [("rounds", 0), ("min_count", 0), ("min_duration", -1.0),
                                         ("min_duration", float("nan")), ("rounds", "3")])
def test_settings_that_cannot_run_are_refused(field, value):
    with pytest.raises(InvalidOptionError, match=field.replace("_", "-")):
        Settings(**{field: value})
