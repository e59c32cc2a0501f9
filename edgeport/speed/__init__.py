"""Measuring speed so that a figure can be trusted: variants warmed up until they settle and
timed side by side in interleaved rounds, the machine's state measured around every round
(other processes, steal, load, clock), speed-ups with intervals from the paired rounds, and
what machine it all ran on.  Below the stages: ``bench`` reports with it, ``quantize``
weighs a kept node's cost and checks that an INT8 model is faster with it.  numpy only."""

from .host import default_threads, describe, instruction_sets, machine_info
from .intervals import paired_ratio, spread
from .load import Monitor, summarize
from .rounds import Interrupted, Measurement, Settings, cpu_time_is_latency, interleaved, warm_up

__all__ = ["Interrupted", "Measurement", "Monitor", "Settings", "cpu_time_is_latency", "default_threads", "describe",
           "instruction_sets", "interleaved", "machine_info", "paired_ratio", "spread", "summarize", "warm_up"]
