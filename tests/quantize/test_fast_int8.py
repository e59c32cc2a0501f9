"""The fast-and-faithful INT8: the graph rewrites keep FP32's numbers, the speed-aware
search takes the fastest candidate that holds the budget (and records what it measured),
and an INT8 model that is not faster is said to be so and can be refused by ``ship``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeport.data import stdlib_sentences
from edgeport.export.onnx import export_onnx
from edgeport.parity import compare_outputs
from edgeport.pipeline.ship import _gate_failures
from edgeport.quantize import graph
from edgeport.quantize.outliers import feed_forward_blocks, residual_sums, split_outlier_channels
from edgeport.quantize.search import Option, speed_aware_search
from edgeport.quantize.sensitivity import FallbackResult
from edgeport.quantize.speedcheck import judge, verdict
from edgeport.runtime.processing import TextProcessor
from edgeport.speed import Measurement


@pytest.fixture(scope="module")
def minilm_graph(minilm_onnx):
    names = [i["name"] for i in minilm_onnx.manifest.graph["inputs"]]
    processor = TextProcessor(minilm_onnx.member("tokenizer.json"), 128, names)
    batches = [processor.encode(stdlib_sentences(16, split="calib")[i:i + 8]) for i in (0, 8)]
    return graph.load(minilm_onnx.model_path), batches


def _outputs(model, feeds):
    session = graph.session_with_outputs(model, [])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_the_split_and_the_sums_keep_fp32s_numbers(minilm_graph, tmp_path):
    """Both rewrites are exact in FP32: what changes is only what quantization will touch.
    And ONNX Runtime leaves the branch's bias and GELU unfused: BiasGelu would split the
    branch's narrow rows across threads, each wake-up costing more than the work."""
    original, batches = minilm_graph
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(original)
    assert len(feed_forward_blocks(model)) == 6          # MiniLM's six layers, found by shape, not by name
    split = split_outlier_channels(model, batches)
    assert split.record()["channels"] >= 1 and len(split.branch_nodes) == 2 * split.record()["layers"]
    sums = residual_sums(model, split.joins)
    assert sums >= 12
    assert sum(n.op_type == "Sum" and len(n.input) == 3 for n in model.graph.node) == len(split.joins)
    feeds = batches[1]
    before, after = _outputs(original, feeds), _outputs(model, feeds)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=2e-4, rtol=1e-4)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    branch = {n.op_type for n in optimized.graph.node if any(o.startswith("edgeport_split_") for o in n.output)}
    assert "Gelu" in branch and "BiasGelu" not in branch, branch


def _report(cosine_gap: float, threshold: float = 0.99):
    """A real parity report whose min cosine is about 1 - cosine_gap."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((4, 16)).astype(np.float32)
    noise = rng.standard_normal((4, 16)).astype(np.float32)
    candidate = reference + noise * np.sqrt(2 * cosine_gap) * np.linalg.norm(reference, axis=1, keepdims=True) / 4
    return compare_outputs({"out": reference}, {"out": candidate}, task="custom",
                           thresholds={"min_cosine": threshold})


def test_the_search_takes_the_fastest_candidate_that_holds_the_budget(tmp_path):
    """Measured figures stand in for builds here: the split passes at 2% of the speed, keeping
    the top node passes at 10%; the split is taken, and both are in the frontier."""
    figures = {(False, ()): (0.02, 10.0), (True, ()): (0.001, 10.2), (False, ("ffn0",)): (0.002, 11.0),
               (True, ("ffn0",)): (0.0005, 11.2)}
    files = {}

    def build(split, kept):
        path = tmp_path / f"candidate-{len(files)}.onnx"
        path.write_text("x")
        files[path] = (split, tuple(kept))
        return path

    def check(path):
        return _report(figures[files[path]][0])

    def latency(path):
        return figures[files[path]][1]

    first_file = build(False, [])
    first = FallbackResult(first_file, check(first_file), [])
    options = [Option("split", "split"), Option("keep ffn0", "keep", "ffn0", 0.5), Option("keep ffn1", "keep", "ffn1")]
    said = []
    result, frontier = speed_aware_search(options, build, check, first, latency, None, said.append)
    assert result.split and result.kept == [] and result.report.passed
    assert [s["candidate"] for s in frontier["steps"]] == ["base", "outlier split", "keep ffn0"]
    assert [s["chosen"] for s in frontier["steps"]] == [True, True, False]
    assert frontier["stopped"] == "the fastest candidate that passes was found"
    assert frontier["steps"][1]["speed_vs_base"] == pytest.approx(10.0 / 10.2, abs=1e-3)
    assert not any(path.exists() for path, key in files.items() if key == (False, ("ffn0",)))   # the loser's file


def test_without_a_passing_option_the_search_takes_the_best_gain_per_millisecond(tmp_path):
    figures = {(False, ()): (0.05, 10.0), (True, ()): (0.04, 10.1), (False, ("a",)): (0.02, 11.0),
               (True, ("a",)): (0.03, 11.1), (True, ("a", "b")): (0.001, 12.0), (False, ("a", "b")): (0.015, 12.0)}
    files = {}

    def build(split, kept):
        path = tmp_path / f"c{len(files)}"
        path.write_text("x")
        files[path] = (split, tuple(kept))
        return path

    first_file = build(False, [])
    first = FallbackResult(first_file, _report(0.05), [])
    result, frontier = speed_aware_search(
        [Option("split", "split"), Option("keep a", "", "a"), Option("keep b", "", "b")], build,
        lambda p: _report(figures[files[p]][0]), first, lambda p: figures[files[p]][1], None, lambda m: None)
    # step 1: split gains 0.01 cosine for 0.1 ms (0.1/ms), keeping a gains 0.03 for 1 ms (0.03/ms): split;
    # step 2: keep a on top of the split (the split is not retried while nodes remain): 0.04 -> 0.03
    # step 3: keep b: passes
    assert result.report.passed and result.split and result.kept == ["a", "b"]
    assert [s["sensitivity"] for s in result.ranking_records()] == [0.0, 0.0]
    assert len(frontier["steps"]) == 5


def test_an_int8_model_that_is_not_faster_is_said_so_and_ship_can_refuse_it():
    rng = np.random.default_rng(0)
    fp32 = [rng.normal(10e-3, 0.2e-3, 30) for _ in range(5)]
    slower = [rng.normal(11e-3, 0.2e-3, 30) for _ in range(5)]
    faster = [rng.normal(4e-3, 0.1e-3, 30) for _ in range(5)]
    feeds = {"input_ids": np.zeros((1, 128), np.int64)}
    record = {"measured": True, **judge(Measurement({"fp32": fp32, "int8": slower}), feeds)}
    assert not record["faster"] and record["speedup"] < 1 and record["ci95"][1] < 1
    # Slower over its whole interval: said as slower, not as "not measurably faster".
    assert "is slower than FP32" in verdict(record) and "min_speedup" in verdict(record)
    level = [rng.normal(10e-3, 0.5e-3, 30) for _ in range(5)]
    tied = {"measured": True, **judge(Measurement({"fp32": fp32, "int8": level}), feeds)}
    assert tied["ci95"][0] <= 1 <= tied["ci95"][1] and "not measurably faster than FP32" in verdict(tied)
    good = {"measured": True, **judge(Measurement({"fp32": fp32, "int8": faster}), feeds)}
    assert good["faster"] and verdict(good) is None and 2.3 < good["speedup"] < 2.7
    assert _gate_failures({"min_speedup": 1.0}, {}, record) == [
        f"min_speedup 1 not met ({record['ci95'][0]:.6g}: the lower end of the 95% interval of "
        f"{record['speedup']:.3g}x over FP32)"]
    assert _gate_failures({"min_speedup": 2.0}, {}, good) == []
    assert "cannot be checked" in _gate_failures({"min_speedup": 1.0}, {}, {"measured": False, "reason": "x"})[0]


def test_min_speedup_is_for_int8_variants_only(tmp_path, cli):
    from helpers import assert_fails

    recipe = tmp_path / "ship.yaml"
    recipe.write_text("source: {model: bundled:all-MiniLM-L6-v2}\n"
                      "variants:\n  - {name: half, precision: fp16, gates: {min_speedup: 1.2}}\n")
    assert_fails(cli("ship", recipe, "--dry-run"), 2, "min_speedup", "fp16")


def test_a_tiny_bert_gets_the_recipe_end_to_end(tmp_path, tiny_models):
    """The recipe's pieces on another architecture: smoothing, sums, the speed record; the
    search only runs when the guard needs it."""
    from edgeport.quantize import QuantizeOptions, quantize

    fp32 = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "fp32")
    int8 = quantize(fp32.path, tmp_path / "int8", QuantizeOptions(mode="int8-dynamic"))
    precision = int8.manifest.precision
    assert "SkipLayerNormalization" not in precision["operators"] and precision["operators"]["Sum"] >= 2
    assert precision["speed"]["measured"] and set(precision["speed"]) >= {"speedup", "ci95", "faster", "cpu"}
    assert Path(int8.model_path).stat().st_size < Path(fp32.model_path).stat().st_size
