"""export tensorrt on a machine without a GPU: optimisation profiles from manifests and
--shapes (and every way they can be wrong), the dry-run plan for each precision, and the
errors for a missing TensorRT, a missing GPU and an engine built elsewhere.  The builds
themselves are in test_tensorrt_gpu.py (marked gpu)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from helpers import assert_fails, folder_names
from edgeport.errors import AcceleratorUnavailableError, DeviceError, InvalidOptionError, ModelInputError
from edgeport.engines.profiles import derive_profile, parse_shapes
from edgeport.manifest import MANIFEST_NAME, Manifest
from edgeport.runtime.tensorrt import EngineEnvironment, check_engine_fits, check_in_profile, engine_mismatches


def _manifest(inputs, processing=None) -> Manifest:
    return Manifest(task="custom", processing=processing or {},
                    graph={"format": "onnx", "file": "model.onnx", "inputs": inputs,
                           "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}]})


def test_minilm_profile_comes_from_its_dynamic_axes(minilm_onnx):
    profile = {p.name: p for p in derive_profile(minilm_onnx.manifest).inputs}
    assert set(profile) == {"input_ids", "attention_mask", "token_type_ids"}
    for item in profile.values():
        # batch 1..32 (opt 8); sequence 1..256, the exported max length (opt 128)
        assert (item.min, item.opt, item.max) == ((1, 1), (8, 128), (32, 256))


def test_shapes_size_every_input_that_shares_the_axes(minilm_onnx):
    profile = {p.name: p for p in derive_profile(minilm_onnx.manifest, ["input_ids:1x16,8x128,32x512"]).inputs}
    assert profile["attention_mask"].max == (32, 512) and profile["token_type_ids"].min == (1, 16)
    assert profile["input_ids"].source == "--shapes"
    assert "input_ids" in profile["attention_mask"].source


@pytest.mark.parametrize("shapes, phrases", [
    (["input_ids:1x16,8x128"], ["three shapes"]),
    (["input_ids:1x16;8x128;32x512"], ["three shapes"]),
    (["input_ids"], ["NAME:MIN,OPT,MAX"]),
    (["input_ids:0x16,8x128,32x512"], [">= 1"]),
    (["input_ids:1x16,8x128x3,32x512"], ["same rank"]),
    (["input_ids:8x16,1x128,32x512"], ["min <= opt <= max"]),
    (["input_ids:1x16,8x128,32x4096"], ["4096", "position embeddings"]),
    (["input_ids:1x16x1,8x128x1,32x512x1"], ["rank 3", "rank 2"]),
    (["pixel_values:1x3,1x3,1x3"], ["pixel_values", "input_ids"]),
    (["input_ids:1x16,8x128,32x512", "attention_mask:1x8,8x128,32x512"], ["share an axis"]),
    (["input_ids:1x16,8x128,32x512", "input_ids:1x16,8x128,32x512"], ["twice"]),
])
def test_bad_shapes_are_refused_before_any_build(minilm_onnx, shapes, phrases):
    with pytest.raises(InvalidOptionError) as caught:
        derive_profile(minilm_onnx.manifest, shapes)
    for phrase in phrases:
        assert phrase in str(caught.value)


def test_static_axes_stay_fixed_and_unknown_dynamic_axes_need_shapes():
    static = _manifest([{"name": "images", "dtype": "float32", "shape": [1, 1, 8, 8]}])
    (item,) = derive_profile(static).inputs
    assert item.min == item.opt == item.max == (1, 1, 8, 8) and item.source == "static"
    with pytest.raises(InvalidOptionError, match="fixed at 8"):
        derive_profile(static, ["images:1x1x8x8,1x1x16x16,1x1x32x32"])

    points = _manifest([{"name": "points", "dtype": "float32", "shape": ["batch", "n_points", 3]}])
    with pytest.raises(InvalidOptionError, match="'n_points'.*--shapes points:MIN,OPT,MAX"):
        derive_profile(points)
    (item,) = derive_profile(points, ["points:1x16x3,4x256x3,8x1024x3"]).inputs
    assert item.max == (8, 1024, 3)
    assert parse_shapes(["points:2x64x3"]) == {"points": ((2, 64, 3),) * 3}


def test_channels_last_images_keep_their_exported_size():
    keras_like = _manifest([{"name": "images", "dtype": "float32", "shape": ["batch", "height", "width", 3]}],
                           {"image": {"size": [32, 32], "channels": 3, "mean": [0] * 3, "std": [1] * 3,
                                      "layout": "NHWC"}})
    (item,) = derive_profile(keras_like).inputs
    assert (item.min, item.opt, item.max) == ((1, 32, 32, 3), (8, 32, 32, 3), (32, 32, 32, 3))


def test_dry_run_prints_the_plan_without_a_gpu_and_writes_nothing(cli, minilm_onnx, tmp_path):
    result = cli("export", "tensorrt", minilm_onnx.path, "--dry-run", "--json", "--shapes",
                 "input_ids:1x16,8x128,32x512", "--timing-cache", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["precision"] == "fp32" and plan["blocking"] == [] and plan["quantize_first"] is None
    assert [p["max"] for p in plan["profile"]] == [[32, 512]] * 3
    assert folder_names(tmp_path) == set()

    # With --int8 the plan is made on the graph that is built: quantized first (in a temporary
    # folder), so a calibration file that does not exist fails the dry run as it would the build.
    result = cli("export", "tensorrt", minilm_onnx.path, "--dry-run", "--int8", "--calib", tmp_path / "c.txt")
    assert_fails(result, 10, "c.txt")
    from edgeport.data import stdlib_sentences

    (tmp_path / "c.txt").write_text("\n".join(stdlib_sentences(16, split="calib")))
    result = cli("export", "tensorrt", minilm_onnx.path, "--dry-run", "--int8", "--calib", tmp_path / "c.txt")
    assert result.exit_code == 0, result.output
    assert "edgeport quantize --mode int8-static --target gpu" in result.output
    assert "precision  int8" in result.output and "BLOCKING" not in result.output
    assert folder_names(tmp_path) == {"c.txt"}


def test_dry_run_lists_fp16_layers_kept_in_fp32(cli, overflow_fp32, tmp_path):
    from edgeport.quantize import QuantizeOptions, quantize

    fp16 = quantize(overflow_fp32.path, tmp_path / "fp16", QuantizeOptions(mode="fp16"))
    kept = fp16.manifest.precision["kept_fp32_nodes"]
    assert kept
    result = cli("export", "tensorrt", fp16.path, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["precision"] == "fp16" and plan["higher_precision"] == kept


def test_graphs_tensorrt_cannot_parse_are_refused_with_the_way_out(cli, minilm_int8, tmp_path):
    result = cli("export", "tensorrt", minilm_int8.path, "--dry-run")
    assert_fails(result, 4, "BLOCKING", "DynamicQuantizeLinear", "--int8 --calib")
    result = cli("export", "tensorrt", minilm_int8.path, "-o", tmp_path / "out")
    assert_fails(result, 4, "MatMulInteger", absent=tmp_path / "out")


def test_int8_static_for_cpus_is_refused_for_its_zero_points(cli, digits_setup, tmp_path):
    from edgeport.quantize import QuantizeOptions, quantize

    root, fp32, _, _ = digits_setup
    data = {"calib": str(root / "calib.npz"), "data": str(root / "heldout.npz")}
    x86 = quantize(fp32.path, tmp_path / "x86", QuantizeOptions(mode="int8-static", target="x86-avx2", **data))
    result = cli("export", "tensorrt", x86.path, "--dry-run")
    assert_fails(result, 4, "symmetric INT8", "--target gpu")
    gpu = quantize(fp32.path, tmp_path / "gpu", QuantizeOptions(mode="int8-static", target="gpu", **data))
    result = cli("export", "tensorrt", gpu.path, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["precision"] == "int8"


def test_option_errors(cli, minilm_onnx, tmp_path):
    assert_fails(cli("export", "tensorrt", minilm_onnx.path, "--dry-run", "--fp16", "--int8"), 2, "not both")
    assert_fails(cli("export", "tensorrt", minilm_onnx.path, "--dry-run", "--int8"), 2, "--calib")
    assert_fails(cli("export", "tensorrt", minilm_onnx.path), 2, "-o/--output")
    assert_fails(cli("export", "tensorrt", minilm_onnx.path, "--dry-run", "--workspace-mb", "0"), 2, "--workspace-mb")
    assert_fails(cli("export", "tensorrt", tmp_path / "nothing", "--dry-run"), 7, "nothing")


def test_without_tensorrt_the_build_says_how_to_install_it_and_writes_nothing(cli, minilm_onnx, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)          # as on a machine without the package
    result = cli("export", "tensorrt", minilm_onnx.path, "-o", tmp_path / "engine")
    assert_fails(result, 17, "TensorRT is not installed", "pip install 'edgeport[tensorrt]'",
                 absent=tmp_path / "engine")
    assert folder_names(tmp_path) == set()


def _stand_in_packages(root, device_count: int):
    """tensorrt and cuda-python stand-ins: neither can run on this machine (no GPU, no
    CUDA), and the case under test is what they report, not what they compute."""
    (root / "tensorrt").mkdir(parents=True)
    (root / "tensorrt" / "__init__.py").write_text('__version__ = "10.16.1.11"\n')
    (root / "cuda" / "bindings").mkdir(parents=True)
    (root / "cuda" / "__init__.py").write_text("")
    (root / "cuda" / "bindings" / "__init__.py").write_text("")
    (root / "cuda" / "bindings" / "runtime.py").write_text(
        f"def cudaGetDeviceCount():\n    return ({100 if device_count == 0 else 0}, {device_count})\n")


def test_without_a_gpu_the_build_stops_before_any_work(cli, minilm_onnx, tmp_path, monkeypatch):
    packages = tmp_path / "site"
    _stand_in_packages(packages, device_count=0)
    monkeypatch.syspath_prepend(str(packages))
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    result = cli("export", "tensorrt", minilm_onnx.path, "-o", tmp_path / "engine", "--fp16")
    assert_fails(result, 17, "no NVIDIA GPU is visible", absent=tmp_path / "engine")


def test_via_onnxruntime_needs_its_tensorrt_provider(minilm_onnx, tmp_path):
    import onnxruntime as ort

    from edgeport.engines.build import _require_ort_tensorrt

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the TensorRT provider; the refusal is for installs without it")
    with pytest.raises(AcceleratorUnavailableError, match="onnxruntime-gpu"):
        _require_ort_tensorrt()


def test_engines_built_elsewhere_are_refused_with_the_rebuild_command():
    recorded = {"tensorrt": "10.16.1.11", "gpu": "NVIDIA H200", "compute_capability": "9.0",
                "built_from": "out/minilm-onnx"}
    here = EngineEnvironment("11.4.0.106", "NVIDIA L4", "8.9")
    problems = engine_mismatches(recorded, here)
    assert len(problems) == 2 and "10.16.1.11" in problems[0] and "NVIDIA L4" in problems[1]
    assert engine_mismatches(recorded, EngineEnvironment("10.16.1.11", "NVIDIA H200", "9.0")) == []
    with pytest.raises(DeviceError, match="not portable.*edgeport export tensorrt out/minilm-onnx"):
        check_engine_fits(recorded, here, "out/minilm-trt")


def test_the_engine_record_names_the_users_artifact_and_the_flags_that_rebuild_it(minilm_onnx):
    from edgeport.engines.build import TensorRTOptions, engine_record, plan_build

    here = EngineEnvironment("10.16.1.11", "NVIDIA H200", "9.0")
    plan = plan_build(minilm_onnx.path, TensorRTOptions(fp16=True, dry_run=True))
    record = engine_record(plan, here, minilm_onnx, "tensorrt")
    assert record["built_from"] == str(minilm_onnx.path) and record["built_from_manifest"] == minilm_onnx.manifest_sha256
    assert record["rebuild"] == f"edgeport export tensorrt {minilm_onnx.path} --fp16"
    assert [p["name"] for p in record["profile"]] == [s.name for s in minilm_onnx.manifest.inputs]
    with pytest.raises(DeviceError, match="rebuild it on this machine with: edgeport export tensorrt .* --fp16 -o NEW"):
        check_engine_fits(record, EngineEnvironment("10.16.1.11", "NVIDIA L4", "8.9"), "out/minilm-trt")


def test_engine_artifacts_on_a_machine_without_tensorrt_say_so(cli, minilm_onnx, tmp_path, monkeypatch):
    from edgeport.artifact import finalize_manifest

    engine = tmp_path / "engine"
    shutil.copytree(minilm_onnx.path, engine)
    (engine / "model.onnx").rename(engine / "model.plan")
    manifest = Manifest.from_dict(json.loads((engine / MANIFEST_NAME).read_text()))
    manifest.graph = dict(manifest.graph, format="tensorrt", file="model.plan",
                          engine={"tensorrt": "10.16.1.11", "gpu": "NVIDIA H200", "compute_capability": "9.0"})
    finalize_manifest(engine, manifest)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = cli("run", engine, "--text", "hello")
    assert_fails(result, 17, "TensorRT is not installed")


def test_inputs_outside_the_engine_profile_are_refused():
    profile = {"min": [1, 1], "max": [32, 256]}
    check_in_profile("input_ids", (8, 128), profile)
    with pytest.raises(ModelInputError, match="size 300 on axis 1.*1..256.*--shapes input_ids"):
        check_in_profile("input_ids", (1, 300), profile)
    with pytest.raises(ModelInputError, match="size 64 on axis 0"):
        check_in_profile("input_ids", np.zeros((64, 8)).shape, profile)
