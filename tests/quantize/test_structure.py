"""int8-dynamic quantizes the plain export or ONNX Runtime's fused attention: fused only when
it is measurably faster on this host; for another machine's target, which cannot be timed
here, fused with the plain graph as the fallback; a fused graph that fails is left out,
never fatal; and the fused graph reads any attention mask as the export does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx import numpy_helper

from edgeport.artifact import Artifact
from edgeport.errors import InvalidOptionError, QuantizationError
from edgeport.export.onnx import export_onnx
from edgeport.quantize import QuantizeOptions, graph, quantize
from edgeport.quantize.encoder import EncoderJob
from edgeport.quantize.int8 import transformer_fusions
from edgeport.quantize.smooth import smooth_activations
from edgeport.quantize.structure import FUSED_ATTENTION, PLAIN, Structure, choose_structure, fused_or_plain
from edgeport.quantize.targets import TARGETS, detect_host, runs_here
from edgeport.runtime.onnxrt import OnnxRuntimeRunner
from edgeport.runtime.processing import TextProcessor
from edgeport.speed.floor import weight_ops_per_row


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, tiny_models):
    return export_onnx(tiny_models("bert", "feature-extraction"), tmp_path_factory.mktemp("structure") / "fp32")


def _another_target():
    """A preset whose settings differ from this host's: nothing quantized for it can be timed here."""
    return next(target for target in TARGETS.values() if target.dynamic_format and not runs_here(target))


def _fused_ops(operators: dict) -> int:
    """Attention blocks, quantized (QAttention) or kept in FP32 by the guard (Attention)."""
    return operators.get("QAttention", 0) + operators.get("Attention", 0)


def test_on_this_host_the_faster_graph_is_taken(tmp_path, tiny_bert):
    int8 = quantize(tiny_bert.path, tmp_path / "int8", QuantizeOptions(mode="int8-dynamic"))
    precision = int8.manifest.precision
    structure = precision["structure"]
    timed = {c["graph"]: c["latency_ms"] for c in structure["candidates"]}
    assert structure["measured"] and set(timed) == {PLAIN, FUSED_ATTENTION} and all(ms > 0 for ms in timed.values())
    low, high = structure["ci95"]
    assert low <= structure["fused_speedup"] <= high and structure["threads"] >= 1 and "[1, " in structure["feeds"]
    fused = structure["chosen"] == FUSED_ATTENTION
    assert fused == (structure["fused_speedup"] > 1.0)
    settled = "faster over its whole" if low > 1.0 else "slower over its whole" if high < 1.0 else "faster median"
    assert settled in structure["why"]
    assert (_fused_ops(precision["operators"]) > 0) == fused
    assert (FUSED_ATTENTION in precision["levers"]) == ("QAttention" in precision["operators"])
    # The preparation of the graph not taken leaves nothing behind: one set of levers.
    assert precision["levers"].count("residual sums (no SkipLayerNormalization)") == 1
    assert int8.manifest.lineage[-1]["parameters"]["graph"] == structure["chosen"]
    assert int8.manifest.parity["quantize"]["passed"]


@pytest.mark.parametrize("speedup, ci95, fused, because", [
    (1.30, [1.10, 1.50], True, "faster over its whole 95% interval"),
    (0.80, [0.70, 0.90], False, "slower over its whole 95% interval"),
    # A noisy host's interval straddles 1: the faster median, either way (AVX2 EPYC: 1.09x, 0.88-1.40).
    (1.09, [0.88, 1.40], True, f"does not settle it, so the one with the faster median of per-round ratios: "
                               f"{FUSED_ATTENTION}"),
    (0.95, [0.80, 1.10], False, f"does not settle it, so the one with the faster median of per-round ratios: {PLAIN}"),
    (1.00, [0.90, 1.10], False, f"ran 1.0000x (0.90-1.10) the plain graph here: the interval does not settle it, so "
                                f"the one with the faster median of per-round ratios: {PLAIN}"),
    (1.004, [0.90, 1.10], True, f"ran 1.0040x (0.90-1.10) the plain graph here: the interval does not settle it, so "
                                f"the one with the faster median of per-round ratios: {FUSED_ATTENTION}"),
])
def test_the_graph_with_the_faster_median_is_taken_when_the_interval_does_not_settle_it(speedup, ci95, fused, because):
    take_fused, why = fused_or_plain(speedup, ci95)
    assert take_fused == fused and because in why and f"x ({ci95[0]:.2f}-{ci95[1]:.2f})" in why


def test_another_machines_target_takes_fused_attention_untimed(tmp_path, tiny_bert):
    other = _another_target()
    int8 = quantize(tiny_bert.path, tmp_path / "int8", QuantizeOptions(mode="int8-dynamic", target=other.name))
    precision = int8.manifest.precision
    structure = precision["structure"]
    assert structure == {"measured": False, "chosen": FUSED_ATTENTION, "why": structure["why"],
                         "candidates": [{"graph": FUSED_ATTENTION, "latency_ms": None}]}
    assert other.name in structure["why"] and detect_host() in structure["why"]
    assert _fused_ops(precision["operators"]) == 2 and precision["target"] == other.name


def _rolled(feeds: dict, shifts: list[int]) -> dict:
    """Each row's padding moved to its start."""
    return {name: np.stack([np.roll(row, shift) for row, shift in zip(value, shifts)]) for name, value in feeds.items()}


def test_the_fused_graph_reads_any_mask_as_the_export_does(tmp_path, tiny_bert):
    """ONNX Runtime's optimizer by default turns the mask into one length per row, which
    reads left padding and masks with holes wrongly; edgeport keeps the mask as given."""
    job = EncoderJob(source=tiny_bert, options=QuantizeOptions(mode="int8-dynamic"), target=TARGETS[detect_host()],
                     target_detected=True, work=tmp_path)
    fused, reason = transformer_fusions(job, attention_only=True)
    assert fused is not None and "attention block(s) fused" in reason
    graph.save(fused, tmp_path / "fused.onnx")
    names = [i["name"] for i in tiny_bert.manifest.graph["inputs"]]
    right = TextProcessor(tiny_bert.member("tokenizer.json"), 32, names).encode(
        ["short", "a somewhat longer sentence than the first one", "middle length text"])
    width = right["attention_mask"].shape[1]
    left = _rolled(right, [int(width - n) for n in right["attention_mask"].sum(axis=1)])
    holed = {**right, "attention_mask": right["attention_mask"].copy()}
    holed["attention_mask"][1, 2] = 0
    with OnnxRuntimeRunner(tiny_bert.model_path) as export, OnnxRuntimeRunner(tmp_path / "fused.onnx") as optimized:
        for feeds in (right, left, holed):
            expected, got = export.run(feeds), optimized.run(feeds)
            kept = feeds["attention_mask"].astype(bool)
            np.testing.assert_allclose(got["last_hidden_state"][kept], expected["last_hidden_state"][kept],
                                       atol=1e-4, rtol=1e-3)


def _smoothing(model) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer
            if init.name.endswith("__edgeport_smooth_inv")}


def test_both_graphs_smooth_with_one_measurement(tmp_path, tiny_bert):
    """The fused graph's normalisation outputs are the plain graph's: their statistics are
    reused, nothing is run again, and the scales are those a fresh measurement gives."""
    job = EncoderJob(source=tiny_bert, options=QuantizeOptions(mode="int8-dynamic"), target=TARGETS[detect_host()],
                     target_detected=True, work=tmp_path)
    fused, _ = transformer_fusions(job, attention_only=True)
    names = [i["name"] for i in tiny_bert.manifest.graph["inputs"]]
    batches = [TextProcessor(tiny_bert.member("tokenizer.json"), 32, names).encode(
        ["a first calibration sentence", "and a second, somewhat longer, one"])]
    peaks: dict = {}
    plain = graph.load(tiny_bert.model_path)
    assert smooth_activations(plain, batches, 0.7, peaks)["measured"] == len(peaks) > 0
    measured = dict(peaks)
    fresh = copy.deepcopy(fused)
    assert smooth_activations(fused, batches, 0.7, peaks)["measured"] == 0 and peaks.keys() == measured.keys()
    assert smooth_activations(fresh, batches, 0.7)["measured"] == len(measured)
    reused, again = _smoothing(fused), _smoothing(fresh)
    assert reused.keys() == again.keys() == _smoothing(plain).keys()
    for name, inverse in reused.items():
        np.testing.assert_allclose(inverse, again[name], rtol=1e-5)


def test_the_speed_of_light_counts_the_fused_projection(tmp_path, tiny_bert):
    """QAttention holds the QKV weights: the matrix work per token is the FP32 graph's."""
    int8 = quantize(tiny_bert.path, tmp_path / "int8", QuantizeOptions(mode="int8-dynamic", attention="fused"))
    assert weight_ops_per_row(int8.model_path) == pytest.approx(weight_ops_per_row(tiny_bert.model_path), rel=0.05)


# ---------------------------------------------------------------- failures, with stand-ins
# The preparation and the quantizer are replaced by functions that write a file or raise,
# to make a failure happen where no real model fails.

def _stand_in(tmp_path, name: str, fails_with: str | None = None, prepared: list | None = None) -> Structure:
    """A candidate whose preparation records a lever and writes a file, or fails."""
    def prepare(scratch):
        if prepared is not None:
            prepared.append(name)
        scratch.levers.append(f"{name} lever")
        if fails_with:
            raise QuantizationError(fails_with)
        path = tmp_path / f"{name}.prepared"
        path.write_text(name)
        return path
    return Structure(name, prepare)


def _quantized(prepared):
    dest = prepared.with_suffix(".quantized")
    dest.write_text(prepared.read_text())
    return dest


def _job(tmp_path, target=None) -> EncoderJob:
    return EncoderJob(source=None, options=None, target=target or TARGETS[detect_host()], target_detected=True,
                      work=tmp_path)


def test_a_fused_graph_that_fails_is_left_out(tmp_path):
    """The plain graph is taken, its build kept as the first candidate, the failed one's
    levers dropped, and the manifest says why."""
    job = _job(tmp_path)
    chosen = choose_structure(job, [_stand_in(tmp_path, PLAIN),
                                    _stand_in(tmp_path, FUSED_ATTENTION, "QAttention: no kernel for this graph")],
                              _quantized)
    assert chosen.read_text() == PLAIN and job.levers == [f"{PLAIN} lever"]
    assert job.first_candidate is not None and job.first_candidate.read_text() == PLAIN
    record = job.details["structure"]
    assert record["chosen"] == PLAIN and not record["measured"]
    assert "QuantizationError: QAttention: no kernel for this graph" in record["why"]


def test_for_another_target_the_plain_graph_is_only_the_fallback(tmp_path):
    prepared: list[str] = []
    job = _job(tmp_path, _another_target())
    fine = choose_structure(job, [_stand_in(tmp_path, PLAIN, prepared=prepared),
                                  _stand_in(tmp_path, FUSED_ATTENTION, prepared=prepared)], _quantized,
                            try_run=lambda quantized: None)
    assert fine.read_text() == FUSED_ATTENTION and prepared == [FUSED_ATTENTION]      # plain never built
    prepared.clear()
    job = _job(tmp_path, _another_target())
    fallback = choose_structure(job, [_stand_in(tmp_path, PLAIN, prepared=prepared),
                                      _stand_in(tmp_path, FUSED_ATTENTION, "no kernel", prepared)], _quantized,
                                try_run=lambda quantized: None)
    assert fallback.read_text() == PLAIN and prepared == [FUSED_ATTENTION, PLAIN]
    assert "no kernel" in job.details["structure"]["why"]


def test_a_plain_graph_that_fails_is_an_error(tmp_path):
    with pytest.raises(QuantizationError, match="broken"):
        choose_structure(_job(tmp_path), [_stand_in(tmp_path, PLAIN, "broken"), _stand_in(tmp_path, FUSED_ATTENTION)],
                         _quantized)


# ---------------------------------------------------------------- --attention

@pytest.mark.parametrize("asked,fused", [("plain", False), ("fused", True)])
def test_the_graph_can_be_asked_for(cli, tmp_path, tiny_bert, asked, fused):
    out = tmp_path / asked
    result = cli("quantize", tiny_bert.path, "-o", out, "--mode", "int8-dynamic", "--attention", asked)
    assert result.exit_code == 0, result.output
    manifest = Artifact.load(out).manifest
    chosen = FUSED_ATTENTION if fused else PLAIN
    assert manifest.precision["structure"] == {"measured": False, "chosen": chosen,
                                               "why": f"asked for (--attention {asked})",
                                               "candidates": [{"graph": chosen, "latency_ms": None}]}
    assert (_fused_ops(manifest.precision["operators"]) > 0) == fused
    assert manifest.lineage[-1]["parameters"]["attention"] == asked
    assert manifest.lineage[-1]["parameters"]["graph"] == chosen


@pytest.mark.parametrize("args,phrase", [
    (["--mode", "int8-static", "--attention", "fused"], "--attention does not apply to --mode int8-static"),
    (["--mode", "int8-dynamic", "--attention", "plain", "--optimize"], "does not go with --attention plain"),
], ids=["another-mode", "with-optimize"])
def test_attention_options_that_do_not_go_together(cli, tmp_path, tiny_bert, args, phrase):
    out = tmp_path / "out"
    result = cli("quantize", tiny_bert.path, "-o", out, *args)
    assert result.exit_code == InvalidOptionError.exit_code and phrase in result.output, result.output
    assert result.output.count("error: ") == 1 and not out.exists()


def test_fused_attention_asked_of_a_model_without_it(cli, tmp_path, onnx_artifacts):
    """A graph built with onnx.helper has no transformer family to fuse: a clear refusal."""
    out = tmp_path / "out"
    result = cli("quantize", onnx_artifacts["encoder"].path, "-o", out, "--mode", "int8-dynamic", "--attention", "fused")
    assert result.exit_code == InvalidOptionError.exit_code, result.output         # a bad option, not a failure
    assert "is not one ONNX Runtime fuses" in result.output and "--attention auto or plain" in result.output
    assert result.output.count("error: ") == 1 and not out.exists()


@pytest.mark.parametrize("model", ["tiny_bert", "no_family"])
def test_optimize_records_what_the_optimizer_did(cli, tmp_path, tiny_bert, onnx_artifacts, model):
    """--optimize on a graph ONNX Runtime cannot fuse is a plain export, and the lineage says so
    (it claimed every fusion)."""
    source = tiny_bert if model == "tiny_bert" else onnx_artifacts["encoder"]
    out = tmp_path / "out"
    result = cli("quantize", source.path, "-o", out, "--mode", "int8-dynamic", "--optimize")
    assert result.exit_code == 0, result.output
    manifest = Artifact.load(out).manifest
    graph_used = manifest.lineage[-1]["parameters"]["graph"]
    if model == "tiny_bert":
        assert graph_used.startswith("ONNX Runtime transformer fusions (--optimize), fused: {")
        assert "Attention" in graph_used
    else:
        assert graph_used.startswith(f"{PLAIN} (--optimize fused nothing: model_type")
        assert any("--optimize fused nothing" in note for note in manifest.lineage[-1]["notes"])


def test_weight_matmuls_left_in_float_are_named():
    """A tied LM head reads the embedding through a Transpose, which MatMulNBits does not take:
    the weight-only recipes record it as kept in float (it was recorded as nothing kept)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeport.quantize.weight_only import _float_weight_matmuls

    embedding = numpy_helper.from_array(np.zeros((10, 4), np.float32), "embedding")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["embedding"], ["embedding_t"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "embedding_t"], ["logits"], name="lm_head"),
         helper.make_node("MatMul", ["x", "y"], ["scores"], name="attention")],
        "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4]) for n in ("x",)]
        + [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 10]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 2])], [embedding])
    assert _float_weight_matmuls(helper.make_model(graph)) == ["lm_head"]
    assert onnx.checker.check_model(helper.make_model(graph)) is None
