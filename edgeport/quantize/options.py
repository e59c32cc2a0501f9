"""``QuantizeOptions``: what the user asked for.  ``None`` means "the recipe's default",
resolved once by the recipe (the CLI passes None for anything not given)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidOptionError, refuse_unused
from ..parity import ParityBudget
from ..vocabulary import ATTENTION_GRAPHS, CALIBRATION_METHODS, QUANTIZE_MODES, TARGETS


# What each mode takes besides -o, --mode, --force and --json: any other option the user gives
# (its default value included) is refused, not ignored.
_BUDGETS = ("--min-cosine", "--min-p01-cosine", "--max-abs-error", "--min-top1-agreement")
_LM_BUDGETS = ("--max-token-disagreement", "--max-perplexity-increase")
_INT8 = ("--target", "--per-channel", "--per-tensor", "--calib", "--data", "--smooth-alpha", "--no-smooth",
         "--max-kept-nodes", *_BUDGETS)
MODE_OPTIONS = {
    "int8-dynamic": (*_INT8, "--attention", "--optimize", "--no-optimize", "--no-worst-case-guard"),
    "int8-static": (*_INT8, "--calibration-method"),
    "fp16": ("--calib", "--data", "--no-fp16-fallback", "--max-kept-nodes", *_BUDGETS),
    "int4": ("--block-size", "--accuracy-level", *_LM_BUDGETS),
    "int8-weight-only": ("--block-size", "--accuracy-level", *_LM_BUDGETS),
}
_ALWAYS = ("--output", "--mode", "--force", "--json")


@dataclass
class QuantizeOptions:
    mode: str
    target: str | None = None              # None: detect the host
    per_channel: bool | None = None        # None: the target's default
    calib: str | None = None               # calibration data (required for int8-static)
    calibration_method: str = "minmax"
    data: str | None = None                # evaluation data (default: bundled real data)
    min_cosine: float | None = None
    max_abs_error: float | None = None
    min_top1_agreement: float | None = None
    min_p01_cosine: float | None = None
    smooth: bool = True                    # INT8: activation smoothing (SmoothQuant)
    smooth_alpha: float | None = None      # None: the recipe's measured default
    optimize: bool = False                 # ONNX Runtime transformer fusions first (int8-dynamic; measured slower)
    attention: str = "auto"                # int8-dynamic: auto | fused | plain (structure.py)
    fp16_fallback: bool = True
    keep_io_types: bool = True
    block_size: int = 32                   # int4 / int8-weight-only: weights per scale
    accuracy_level: int = 4                # int4: MatMulNBits compute precision (4 = int8 activations)
    worst_case_guard: bool = True          # INT8 without a budget: hold the recipe's worst case on calibration data
    max_kept_nodes: int | None = None      # with a budget or the guard: keep at most this many nodes in FP32
    max_token_disagreement: float | None = None   # causal LMs: budget on greedy tokens that differ
    max_perplexity_increase: float | None = None  # causal LMs: budget on relative perplexity increase
    force: bool = False
    given: frozenset = frozenset()         # the options the user wrote (CLI): those the mode ignores are refused

    def _check_calibration_is_used(self) -> None:
        """--calib where nothing would read it: it was checked, recorded, and ignored."""
        if self.mode == "fp16" and not self.fp16_fallback:
            raise InvalidOptionError("--calib finds the nodes fp16 keeps in FP32 (values past its range), which "
                                     "--no-fp16-fallback turns off; drop one of them")
        if self.mode == "int8-dynamic" and not self.worst_case_guard and not self.smooth and not self.budget().given:
            raise InvalidOptionError("--calib feeds int8-dynamic's worst-case guard and activation smoothing, which "
                                     "--no-worst-case-guard and --no-smooth turn off; drop --calib or one of them")

    def budget(self) -> ParityBudget:
        """The parity budget the user gave (thresholds checked: finite, in range)."""
        return ParityBudget(self.min_cosine, self.max_abs_error, self.min_top1_agreement, self.min_p01_cosine)

    def check(self) -> None:
        self.budget()
        if self.mode not in QUANTIZE_MODES:
            raise InvalidOptionError(f"unknown mode '{self.mode}'; choose one of {', '.join(QUANTIZE_MODES)}")
        if self.target is not None and self.target not in TARGETS:
            raise InvalidOptionError(f"unknown target '{self.target}'; choose one of {', '.join(TARGETS)}")
        if self.attention not in ATTENTION_GRAPHS:
            raise InvalidOptionError(f"--attention must be one of {', '.join(ATTENTION_GRAPHS)} "
                                     f"(got '{self.attention}')")
        refuse_unused([(name, True) for name in sorted(self.given - set(MODE_OPTIONS[self.mode]) - set(_ALWAYS))],
                      f"to --mode {self.mode}, which takes {', '.join(MODE_OPTIONS[self.mode])}")
        if "--no-smooth" in self.given and "--smooth-alpha" in self.given:
            raise InvalidOptionError("--smooth-alpha sets the smoothing --no-smooth turns off; give one of them")
        guarded = self.mode == "int8-dynamic" and self.worst_case_guard
        if "--max-kept-nodes" in self.given and not self.budget().given and not guarded:
            raise InvalidOptionError("--max-kept-nodes limits the nodes a budget (--min-cosine...) or int8-dynamic's "
                                     "worst-case guard keeps in FP32; with neither it would change nothing")
        if self.attention != "auto" and self.mode != "int8-dynamic":
            raise InvalidOptionError(f"--attention {self.attention} chooses the graph of --mode int8-dynamic; "
                                     f"--mode {self.mode} does not take it")
        if self.attention != "auto" and self.optimize:
            raise InvalidOptionError(f"--optimize fuses everything ONNX Runtime can, attention included; "
                                     f"it does not go with --attention {self.attention}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise InvalidOptionError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)} "
                                     f"(got '{self.calibration_method}')")
        if self.smooth_alpha is not None and not (isinstance(self.smooth_alpha, (int, float)) and
                                                  math.isfinite(self.smooth_alpha) and 0 < self.smooth_alpha < 1):
            raise InvalidOptionError("--smooth-alpha must be between 0 and 1, both excluded (--no-smooth turns it off)")
        if self.calib is not None:
            self._check_calibration_is_used()
        if self.block_size not in (16, 32, 64, 128, 256):      # what ONNX Runtime's MatMulNBits kernels take
            raise InvalidOptionError(f"--block-size must be 16, 32, 64, 128 or 256 (got {self.block_size!r})")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise InvalidOptionError("--accuracy-level must be 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8)")
        if self.max_kept_nodes is not None and (not isinstance(self.max_kept_nodes, int) or self.max_kept_nodes < 0):
            raise InvalidOptionError("--max-kept-nodes must be a whole number >= 0")
        for name, value in (("--max-token-disagreement", self.max_token_disagreement),
                            ("--max-perplexity-increase", self.max_perplexity_increase)):
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0):
                raise InvalidOptionError(f"{name} must be a finite number >= 0")
        if self.max_token_disagreement is not None and self.max_token_disagreement > 1:
            raise InvalidOptionError("--max-token-disagreement is a share of tokens, between 0 and 1 "
                                     f"(got {self.max_token_disagreement!r})")
