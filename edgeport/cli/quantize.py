"""``edgeport quantize``."""

from __future__ import annotations

import click

from .. import vocabulary as v
from . import main
from .common import TerminalMeter, given, options_given, say, show_artifact


@main.command("quantize")
@click.argument("artifact", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path())
@click.option("--mode", required=True, type=click.Choice(v.QUANTIZE_MODES))
@click.option("--target", type=click.Choice(v.TARGETS), help="Preset for format, reduce_range and per-channel "
                                                             "(default: this host).")
@click.option("--per-channel/--per-tensor", default=None, help="Weight scales per output channel (default: the target's).")
@click.option("--calib", type=click.Path(), help="Calibration data: .txt (one example a line), .jsonl, .npz, or an image folder.")
@click.option("--calibration-method", type=click.Choice(v.CALIBRATION_METHODS), help="int8-static (default minmax).")
@click.option("--data", type=click.Path(), help="Evaluation data for the parity check (default: bundled real data).")
@click.option("--min-cosine", type=float, help="Budget: keep sensitive nodes in FP32 until min cosine >= this.")
@click.option("--min-p01-cosine", type=float, help="Budget: ... until the 1st-percentile cosine >= this.")
@click.option("--max-abs-error", type=float, help="Budget: ... until max abs error <= this.")
@click.option("--min-top1-agreement", type=float, help="Budget for classifiers: ... until top-1 agreement >= this.")
@click.option("--smooth-alpha", type=float, help="INT8 activation smoothing strength, 0 < a < 1 "
                                                 f"(default {v.DEFAULT_SMOOTH_ALPHA}).")
@click.option("--no-smooth", is_flag=True, help="INT8 without activation smoothing.")
@click.option("--attention", type=click.Choice(v.ATTENTION_GRAPHS), default="auto", show_default=True,
              help="int8-dynamic on BERT-like encoders: quantize the plain export or ONNX Runtime's fused attention "
                   "(QAttention); auto times both here and takes the faster (over the 95% interval, else by median; "
                   "another target: fused, untimed).")
@click.option("--optimize/--no-optimize", default=False,
              help="int8-dynamic: every ONNX Runtime transformer fusion first, SkipLayerNormalization included "
                   "(off by default: measured slower than the residual sums).")
@click.option("--no-worst-case-guard", is_flag=True,
              help="int8-dynamic: keep no node in FP32 to hold the worst case on the calibration data (smaller, "
                   "faster).")
@click.option("--max-kept-nodes", type=int, help="With a budget or the guard: keep at most this many nodes in FP32.")
@click.option("--no-fp16-fallback", is_flag=True, help="fp16: do not keep overflowing nodes in FP32.")
@click.option("--block-size", type=int, help="int4 / int8-weight-only: weights per scale (default 32).")
@click.option("--accuracy-level", type=int, help="int4 / int8-weight-only: MatMulNBits compute precision, 4 = int8 "
                                                 "(default 4).")
@click.option("--max-token-disagreement", type=float, help="Causal LMs: budget on greedy tokens that differ (0-1).")
@click.option("--max-perplexity-increase", type=float, help="Causal LMs: budget on the relative perplexity increase.")
@click.option("--force", is_flag=True, help="Replace an existing output artifact.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def quantize_command(ctx, artifact, out, mode, target, per_channel, calib, calibration_method, data, min_cosine,
                     min_p01_cosine, max_abs_error, min_top1_agreement, smooth_alpha, no_smooth, attention,
                     optimize, no_worst_case_guard, max_kept_nodes, no_fp16_fallback, block_size, accuracy_level,
                     max_token_disagreement, max_perplexity_increase,
                     force, as_json):
    """Quantize ARTIFACT (INT8, FP16, or INT4/INT8 weight-only for causal LMs), with a parity
    check against it on real data."""
    from ..quantize import QuantizeOptions, quantize

    options = QuantizeOptions(mode=mode, target=target, per_channel=per_channel, calib=calib, data=data,
                              min_cosine=min_cosine, min_p01_cosine=min_p01_cosine, max_abs_error=max_abs_error,
                              min_top1_agreement=min_top1_agreement, smooth=not no_smooth, smooth_alpha=smooth_alpha,
                              attention=attention, optimize=optimize, fp16_fallback=not no_fp16_fallback, force=force,
                              worst_case_guard=not no_worst_case_guard, max_kept_nodes=max_kept_nodes,
                              max_token_disagreement=max_token_disagreement,
                              max_perplexity_increase=max_perplexity_increase, given=options_given(ctx),
                              **given(calibration_method=calibration_method, block_size=block_size,
                                      accuracy_level=accuracy_level))
    meter = None if as_json else TerminalMeter.create("calibrating")
    result = quantize(artifact, out, options, progress=None if as_json else say,
                      calibration_progress=meter.callback() if meter else None)
    show_artifact(result.path, as_json)
