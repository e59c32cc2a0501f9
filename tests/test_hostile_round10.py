"""The tenth pass: what a new user met on an AVX2 host, mended."""

from __future__ import annotations

import pytest

from edgeport.errors import CalibrationDataError, ParityError, RegressionError
from helpers import assert_fails


def test_a_missing_choice_option_lists_its_choices_on_one_readable_line(cli, tmp_path):
    """click lists a missing choice's values a line each; the one-line escape printed them as
    'Choose from:\\n\\tint8-dynamic,\\n\\tint8-static...'."""
    result = cli("quantize", tmp_path / "fp32", "-o", tmp_path / "int8")
    assert_fails(result, 2, "Missing option '--mode'. Choose from: int8-dynamic, int8-static, fp16",
                 absent=tmp_path / "int8")
    assert "\\n" not in result.output and "\\t" not in result.output and result.output.count("\n") == 1


def test_a_gemm_kept_in_fp32_by_the_search_is_left_unquantized(cli, digits_setup, tmp_path):
    """quantize_dynamic rewrites a Gemm as '<name>_MatMul' before it reads its exclusions: the
    search 'kept' the digits CNN's Gemm head in FP32 while it stayed INT8, and a budget every
    kept node should meet failed at the unquantized score."""
    from types import SimpleNamespace

    import onnx

    from edgeport.artifact import Artifact
    from edgeport.quantize.dynamic import DynamicInt8

    _, fp32, _, _ = digits_setup
    gemms = [n.name for n in onnx.load(str(fp32.path / "model.onnx")).graph.node if n.op_type == "Gemm"]
    job = SimpleNamespace(per_channel=True, target=SimpleNamespace(reduce_range=False))   # what build reads
    DynamicInt8().build(job, fp32.path / "model.onnx", tmp_path / "kept.onnx", gemms)
    nodes = onnx.load(str(tmp_path / "kept.onnx")).graph.node
    integer = [n.name for n in nodes if n.op_type in ("MatMulInteger", "ConvInteger")]
    assert gemms and integer and not any(name.startswith(gemm) for name in integer for gemm in gemms), integer
    assert [n.op_type for n in nodes if n.name.startswith(gemms[0])] == ["MatMul", "Add"]
    # Through the command: no residual Add feeds a LayerNormalization in a CNN, so that lever is not claimed.
    result = cli("quantize", fp32.path, "-o", tmp_path / "int8", "--mode", "int8-dynamic")
    assert result.exit_code == 0, result.output
    levers = Artifact.load(tmp_path / "int8").manifest.precision["levers"]
    assert not any("residual sums" in lever for lever in levers), levers


def test_a_budget_failure_on_a_model_with_two_reported_outputs_is_one_line(cli, onnx_artifacts, tmp_path):
    result = cli("quantize", onnx_artifacts["encoder"].path, "-o", tmp_path / "int8", "--mode", "int8-dynamic",
                 "--min-cosine", "0.99999999", "--max-kept-nodes", "0")
    assert_fails(result, ParityError.exit_code, "Figures:", absent=tmp_path / "int8")
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "last_hidden_state" in errors[0] and "sentence_embedding" in errors[0]
    assert "\\n" not in result.output


def test_calibration_data_the_fp32_model_overflows_on_is_refused_as_data(cli, digits_setup, tmp_path):
    """1e38 everywhere: ONNX Runtime's calibrator failed with 'AssertionError: scale issue' (exit 11)
    after numpy warnings; the dynamic route compared against an infinite reference (exit 9)."""
    import numpy as np

    _, fp32, _, _ = digits_setup
    np.savez(tmp_path / "huge.npz", images=np.full((4, 1, 8, 8), 1e38, np.float32))
    for mode, option in (("int8-static", "--calib"), ("int8-dynamic", "--data")):
        result = cli("quantize", fp32.path, "-o", tmp_path / mode, "--mode", mode, option, tmp_path / "huge.npz")
        assert_fails(result, CalibrationDataError.exit_code, "huge.npz", "NaN or infinite", absent=tmp_path / mode)
        assert "Warning" not in result.output and "AssertionError" not in result.output


def test_ship_exits_as_its_first_failed_step_would():
    """A variant whose calibration file was not UTF-8 made ship exit 9 ('parity below threshold')."""
    from edgeport.pipeline.ship import ShipResult

    result = ShipResult("r.yaml", "out", [])
    result.add_failures(["int8-static: 'latin.txt' is not UTF-8 text"], CalibrationDataError)
    result.add_failures(["int8: gate failed: min_cosine 0.99 not met"], ParityError)
    with pytest.raises(CalibrationDataError, match="2 step"):
        result.raise_for_failure()
    gate_only = ShipResult("r.yaml", "out", [])
    gate_only.add_failures(["int8: gate failed"], ParityError)
    with pytest.raises(ParityError):
        gate_only.raise_for_failure()
    from edgeport.pipeline.ship import VariantResult, _public

    record = _public(VariantResult("s", "int8-static", failure="x", failure_kind=CalibrationDataError))
    assert "failure_kind" not in record and record["failure"] == "x"     # ship-summary.json is as before
    regression = ShipResult("r.yaml", "out", [])
    regression.add_failures(["regression against last/bench.json: p50 +30%"], RegressionError)
    with pytest.raises(RegressionError):
        regression.raise_for_failure()


def test_task_is_refused_for_a_callable_source(cli, tmp_path):
    result = cli("export", "onnx", "factories.digits:trained_digits_cnn", "-o", tmp_path / "out",
                 "--input", "images:1x1x8x8:float32", "--task", "image-classification")
    assert_fails(result, 2, "--task is for model folders", "task 'custom'", absent=tmp_path / "out")


def test_debug_after_the_command_says_where_it_goes(cli, tmp_path):
    result = cli("bench", "run", "--debug", tmp_path)
    assert_fails(result, 2, "'--debug' goes before the command: edgeport --debug bench run ...")


def test_an_empty_text_to_run_is_refused(cli, onnx_artifacts):
    result = cli("run", onnx_artifacts["encoder"].path, "--text", "  ")
    assert_fails(result, 2, "--text is empty")


def test_a_single_npy_array_is_named_as_such(cli, onnx_artifacts, tmp_path):
    import numpy as np

    np.save(tmp_path / "ids.npy", np.ones((2, 4), np.int64))
    result = cli("run", onnx_artifacts["encoder"].path, "--input", tmp_path / "ids.npy")
    assert_fails(result, 12, "single .npy array", "numpy.savez")


def test_recipe_problems_say_what_they_are(cli, tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert_fails(cli("ship", tmp_path / "empty.yaml", "--dry-run"), 2, "the recipe is empty")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.yaml").write_text(
        "name: r\nsource: {model: 'bundled:all-MiniLM-L6-v2'}\nvariants:\n"
        "  - {name: s, precision: int8-static, calibration: data/calib.txt}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "calib.txt").write_text("a sentence\n")     # beside the working directory, not the recipe
    result = cli("ship", tmp_path / "recipes" / "r.yaml", "--dry-run")
    assert_fails(result, 2, "'data/calib.txt' does not exist", "relative paths are read from the recipe's folder")


def test_a_calibration_file_that_cannot_be_read_fails_the_dry_run(cli, tmp_path):
    """--dry-run only checked that the file existed; the run then failed at that variant."""
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "r.yaml").write_text(
        "name: r\nsource: {model: 'bundled:all-MiniLM-L6-v2'}\nvariants:\n"
        "  - {name: s, precision: int8-static, calibration: latin.txt}\n")
    result = cli("ship", tmp_path / "r.yaml", "--dry-run")
    assert_fails(result, CalibrationDataError.exit_code, "'variants[0].calibration'", "is not UTF-8 text")


def test_a_budget_only_fp32_meets_is_refused_not_shipped_as_int8(cli, tmp_path):
    """Once kept Gemms really stayed FP32, the search could keep all of them and write an FP32
    model labelled int8-dynamic (exit 0); as int8-static, it keeps at most all but one."""
    from edgeport.artifact import Artifact

    fp32 = tmp_path / "fp32"
    assert cli("export", "onnx", "factories.cnn:gemm_mlp", "-o", fp32, "--input", "x:1x16:float32").exit_code == 0
    result = cli("quantize", fp32, "-o", tmp_path / "int8", "--mode", "int8-dynamic", "--min-cosine", "0.99999999")
    assert_fails(result, ParityError.exit_code, "cannot be met even with 2 of 3 candidate nodes kept",
                 absent=tmp_path / "int8")
    loose = cli("quantize", fp32, "-o", tmp_path / "loose", "--mode", "int8-dynamic", "--min-cosine", "0.5")
    assert loose.exit_code == 0, loose.output
    levers = Artifact.load(tmp_path / "loose").manifest.precision["levers"]
    assert not any("outlier split" in lever or "residual sums" in lever for lever in levers), levers
