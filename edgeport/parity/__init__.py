"""Parity: how faithful a candidate is to its reference, measured on real data.  Below
every stage (export, merge, quantize, bench and verify all gate on it), above the runtime."""

from .compare import OutputParity, ParityReport, compare_output, compare_outputs, merge_reports
from .measure import (ParityBudget, check_same_model, golden_check, measure, recorded_thresholds, reference_outputs,
                      thresholds_text, verify)

__all__ = ["OutputParity", "ParityBudget", "ParityReport", "check_same_model", "compare_output", "compare_outputs",
           "measure", "merge_reports", "golden_check", "recorded_thresholds", "reference_outputs",
           "thresholds_text", "verify"]
