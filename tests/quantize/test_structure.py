"""int8-dynamic quantizes the plain export or ONNX Runtime's fused attention, whichever runs
faster on this host; for another machine's target it cannot time, it takes fused attention;
a fused graph that fails is left out, never fatal."""

from __future__ import annotations

import pytest

from edgeport.artifact import Artifact
from edgeport.errors import InvalidOptionError, QuantizationError
from edgeport.export.onnx import export_onnx
from edgeport.quantize import QuantizeOptions, quantize
from edgeport.quantize.encoder import EncoderJob
from edgeport.quantize.structure import FUSED_ATTENTION, PLAIN, Structure, choose_structure
from edgeport.quantize.targets import TARGETS, detect_host, runs_here
from edgeport.speed.floor import weight_ops_per_row


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, tiny_models):
    return export_onnx(tiny_models("bert", "feature-extraction"), tmp_path_factory.mktemp("structure") / "fp32")


def test_on_this_host_the_faster_graph_is_taken(tmp_path, tiny_bert):
    int8 = quantize(tiny_bert.path, tmp_path / "int8", QuantizeOptions(mode="int8-dynamic"))
    precision = int8.manifest.precision
    structure = precision["structure"]
    timed = {c["graph"]: c["latency_ms"] for c in structure["candidates"]}
    assert structure["measured"] and set(timed) == {PLAIN, FUSED_ATTENTION} and all(ms > 0 for ms in timed.values())
    assert structure["chosen"] == min(timed, key=timed.get)
    fused = structure["chosen"] == FUSED_ATTENTION
    assert ("QAttention" in precision["operators"]) == fused == (FUSED_ATTENTION in precision["levers"])
    # The preparation of the graph not taken leaves nothing behind: one set of levers.
    assert precision["levers"].count("residual sums (no SkipLayerNormalization)") == 1
    assert int8.manifest.parity["quantize"]["passed"]


def test_another_machines_target_takes_fused_attention_untimed(tmp_path, tiny_bert):
    other = next(name for name, target in TARGETS.items() if target.dynamic_format and not runs_here(target))
    int8 = quantize(tiny_bert.path, tmp_path / "int8", QuantizeOptions(mode="int8-dynamic", target=other))
    precision = int8.manifest.precision
    structure = precision["structure"]
    assert structure == {"measured": False, "chosen": FUSED_ATTENTION, "candidates": [PLAIN, FUSED_ATTENTION],
                         "why": structure["why"]}
    assert other in structure["why"] and detect_host() in structure["why"]
    assert precision["operators"]["QAttention"] >= 1 and precision["target"] == other
    assert int8.manifest.parity["quantize"]["passed"]


def _stand_in(tmp_path, name: str, fails_with: str | None = None) -> Structure:
    """A candidate whose preparation records a lever and writes a file, or fails."""
    def prepare(scratch):
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


def _job(tmp_path) -> EncoderJob:
    return EncoderJob(source=None, options=None, target=TARGETS[detect_host()], target_detected=True, work=tmp_path)


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


def test_a_plain_graph_that_fails_is_an_error(tmp_path):
    with pytest.raises(QuantizationError, match="broken"):
        choose_structure(_job(tmp_path), [_stand_in(tmp_path, PLAIN, "broken"), _stand_in(tmp_path, FUSED_ATTENTION)],
                         _quantized)


@pytest.mark.parametrize("asked,fused", [("plain", False), ("fused", True)])
def test_the_graph_can_be_asked_for(cli, tmp_path, tiny_bert, asked, fused):
    out = tmp_path / asked
    result = cli("quantize", tiny_bert.path, "-o", out, "--mode", "int8-dynamic", "--attention", asked)
    assert result.exit_code == 0, result.output
    manifest = Artifact.load(out).manifest
    chosen = FUSED_ATTENTION if fused else PLAIN
    assert manifest.precision["structure"] == {"measured": False, "chosen": chosen, "candidates": [chosen],
                                               "why": f"asked for (--attention {asked})"}
    assert ("QAttention" in manifest.precision["operators"]) == fused
    assert manifest.lineage[-1]["parameters"]["attention"] == asked


def test_the_speed_of_light_counts_the_fused_projection(tmp_path, tiny_bert):
    """QAttention holds the QKV weights: the matrix work per token is the FP32 graph's."""
    int8 = quantize(tiny_bert.path, tmp_path / "int8", QuantizeOptions(mode="int8-dynamic", attention="fused"))
    assert weight_ops_per_row(int8.model_path) == pytest.approx(weight_ops_per_row(tiny_bert.model_path), rel=0.05)


@pytest.mark.parametrize("args,phrase", [
    (["--mode", "int8-static", "--attention", "fused"], "--mode int8-static does not take it"),
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
    assert result.exit_code == QuantizationError.exit_code, result.output
    assert "fused no attention" in result.output and "--attention auto or plain" in result.output
    assert result.output.count("error: ") == 1 and not out.exists()
