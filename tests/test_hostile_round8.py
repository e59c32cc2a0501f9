"""The eighth hostile pass: what a deployment engineer types wrong into merge, export, bench,
inspect and run, and what a new user following the README meets."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from adapters import train_adapter
from edgeport.errors import AdapterError, InvalidOptionError, ModelInputError, ParityError, SourceError
from helpers import assert_fails


@pytest.mark.parametrize("option, value", [("--max-new-tokens", "0"), ("--top-k", "0"), ("--top-p", "1.5"),
                                           ("--temperature", "0"), ("--top-p", "nan"), ("--temperature", "inf")])
def test_run_names_a_bad_generation_option_as_the_user_wrote_it(cli, onnx_artifacts, option, value):
    """It named the Python argument (top_k, max_new_tokens) of the sampler that refused it."""
    result = cli("run", onnx_artifacts["encoder"].path, "--prompt", "Return the", option, value)
    assert_fails(result, InvalidOptionError.exit_code, f"Invalid value for '{option}'")


# ------------------------------------------------------------------------ writes: nothing a reader would refuse

def test_a_stage_never_commits_a_manifest_its_readers_refuse(cli, onnx_artifacts, tmp_path, monkeypatch):
    """A valid five-band model got a manifest the schema refused, after its folder was in place
    (with --force, over a good artifact)."""
    from edgeport.artifact import Artifact
    from edgeport.errors import ArtifactError
    from edgeport.manifest import Manifest

    out = tmp_path / "int8"
    assert cli("quantize", onnx_artifacts["classifier"].path, "-o", out, "--mode", "int8-dynamic").exit_code == 0
    before = (out / "edgeport.json").read_text()
    written = Manifest.to_dict
    monkeypatch.setattr(Manifest, "to_dict", lambda self: {**written(self), "task": 7})
    result = cli("quantize", onnx_artifacts["classifier"].path, "-o", out, "--mode", "int8-dynamic", "--force")
    assert_fails(result, ArtifactError.exit_code, "edgeport made an invalid manifest", "nothing was written")
    monkeypatch.undo()
    assert (out / "edgeport.json").read_text() == before
    Artifact.load(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]          # no staging folder left


def test_greyscale_files_fill_a_model_of_any_channel_count():
    from edgeport.runtime.processing import ImageProcessor

    grey = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    as_read = np.repeat(grey[:, None], 3, axis=1)                           # image files are read as RGB
    for channels in (1, 5):
        pixels = ImageProcessor((8, 8), channels, [0.0] * channels, [1.0] * channels)(as_read, layout="NCHW")
        assert pixels.shape == (2, channels, 8, 8)
        np.testing.assert_allclose(pixels, np.repeat(grey[:, None], channels, axis=1), atol=1e-6)
    with pytest.raises(ModelInputError, match="3 channels"):                 # colour stays colour
        ImageProcessor((8, 8), 5, [0.0] * 5, [1.0] * 5)(np.random.default_rng(1).random((1, 3, 8, 8)), "NCHW")


# ------------------------------------------------------------------------ merge and export sources

@pytest.fixture()
def tiny_bert(tiny_models, tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(tiny_models("bert", "feature-extraction"), folder)
    return folder


def _damaged_pickles(folder: Path, name: str, whole: bytes):
    """Pickle weights as a crash, a bad download and a stranger leave them."""
    yield "empty", b"", "is empty"
    yield "truncated", whole[:len(whole) // 2], "cannot be read as PyTorch weights"
    yield "foreign", b"not a checkpoint at all", "is not PyTorch weights"


def test_damaged_pickle_weights_are_named_not_a_traceback(cli, tiny_bert, tmp_path):
    import torch
    from safetensors.torch import load_file

    buffer = io.BytesIO()
    torch.save(load_file(tiny_bert / "model.safetensors"), buffer)
    (tiny_bert / "model.safetensors").unlink()
    for kind, content, phrase in _damaged_pickles(tiny_bert, "pytorch_model.bin", buffer.getvalue()):
        (tiny_bert / "pytorch_model.bin").write_bytes(content)
        result = cli("export", "onnx", tiny_bert, "-o", tmp_path / "out", "--allow-pickle")
        assert_fails(result, SourceError.exit_code, "pytorch_model.bin", phrase, absent=tmp_path / "out")
    (tiny_bert / "pytorch_model.bin").write_bytes(buffer.getvalue())
    result = cli("export", "onnx", tiny_bert, "-o", tmp_path / "out", "--allow-pickle")
    assert result.exit_code == 0, result.output                              # the whole file still exports


def test_damaged_pickle_adapters_are_named_not_aborted(cli, tiny_models, tmp_path):
    base = tiny_models("bert", "feature-extraction")
    adapter = train_adapter(base, tmp_path / "lora")
    from safetensors.torch import load_file
    import torch

    buffer = io.BytesIO()
    torch.save(load_file(adapter / "adapter_model.safetensors"), buffer)
    (adapter / "adapter_model.safetensors").unlink()
    for kind, content, phrase in _damaged_pickles(adapter, "adapter_model.bin", buffer.getvalue()):
        (adapter / "adapter_model.bin").write_bytes(content)
        result = cli("merge", base, "--adapter", adapter, "-o", tmp_path / "merged", "--allow-pickle")
        assert_fails(result, AdapterError.exit_code, "adapter_model.bin", phrase, absent=tmp_path / "merged")


def test_a_merge_that_overflows_fp16_is_refused_not_written(cli, tiny_models, tmp_path, monkeypatch):
    """It wrote 1082 infinite weights and exited 0, the record saying 'max abs inf'."""
    from safetensors.torch import load_file, save_file

    base = tiny_models("bert", "feature-extraction")
    adapter = train_adapter(base, tmp_path / "lora")
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v * 1e10 if "lora_B" in k else v for k, v in weights.items()}, adapter / "adapter_model.safetensors")
    result = cli("merge", base, "--adapter", adapter, "-o", tmp_path / "fp16", "--dtype", "fp16")
    assert_fails(result, ParityError.exit_code, "as fp16", "NaN or infinite", "write it as fp32 or bf16",
                 absent=tmp_path / "fp16")
    monkeypatch.chdir(tmp_path)
    assert cli("merge", base, "--adapter", "lora", "-o", "fp32").exit_code == 0    # finite in fp32
    # the record outlives the working folder: it names the adapter wherever it was run from
    record = json.loads((tmp_path / "fp32" / "edgeport-merge.json").read_text())
    assert record["parameters"]["adapters"][0]["path"] == str(adapter.resolve())


def test_export_shape_options_mean_what_they_say(cli, tiny_bert, tmp_path):
    import onnx

    assert_fails(cli("export", "onnx", "factories.cnn:cifar_cnn", "-o", tmp_path / "o", "--input",
                     "images:99999999999x99999999999:float32"), InvalidOptionError.exit_code, "values per sample")
    assert_fails(cli("export", "onnx", "factories.cnn:two_heads", "-o", tmp_path / "o", "--input", "x:1x8:float32",
                     "--output-name", "a", "--output-name", "a"), InvalidOptionError.exit_code,
                 "--output-name names must differ")
    assert_fails(cli("export", "onnx", tiny_bert, "-o", tmp_path / "o", "--static-shapes", "--exporter", "dynamo"),
                 InvalidOptionError.exit_code, "--exporter dynamo is never tried")
    assert_fails(cli("export", "onnx", tiny_bert, "-o", tmp_path / "o", "--static-shapes", "--sequence-length", "2"),
                 InvalidOptionError.exit_code, "adds 2 special tokens", "at least 3", absent=tmp_path / "o")
    # --exporter static is the static route: it takes --sequence-length, and the lineage says static
    result = cli("export", "onnx", tiny_bert, "-o", tmp_path / "s", "--exporter", "static", "--sequence-length", "16")
    assert result.exit_code == 0, result.output
    graph = onnx.load(tmp_path / "s" / "model.onnx")
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 16]
    from edgeport.artifact import Artifact

    assert Artifact.load(tmp_path / "s").manifest.export_parameters()["static_shapes"] is True


# ------------------------------------------------------------------------ what commands print

def test_static_calibration_keeps_stdout_for_the_json(cli, onnx_artifacts, tmp_path):
    """ONNX Runtime's calibrators print() progress, which came before the JSON on stdout."""
    from edgeport.data import stdlib_sentences

    (tmp_path / "calib.txt").write_text("\n".join(stdlib_sentences(40, split="calib")) + "\n")
    result = cli("quantize", onnx_artifacts["encoder"].path, "-o", tmp_path / "q", "--mode", "int8-static",
                 "--calibration-method", "percentile", "--calib", tmp_path / "calib.txt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["precision"]["mode"] == "int8-static"


def test_ship_summary_names_the_emulated_machine_and_takes_the_bench_s_paired_speed_ups():
    from edgeport.pipeline.ship import ShipResult, VariantResult, _speedup
    from edgeport.pipeline.summary import format_summary

    platforms = {"linux/arm64": {"passed": True, "cpu": "cortex-a72", "guest": {"machine": "aarch64",
                                                                                "onnxruntime": "1.23.2"}}}
    variant = VariantResult("int8", "int8-dynamic", passed=True, platforms=platforms)
    line = format_summary(ShipResult("r.yaml", "out", [variant])).splitlines()[3]
    assert line.strip() == "verified on linux/arm64: passed (cortex-a72, aarch64, onnxruntime 1.23.2)"

    # a busy machine: PyTorch's wall-clock p50 was 60x its on-CPU time; the bench's speed-ups are on-CPU
    row = {"latency": {"p50_ms": 1.5}, "speedup": {"value": 2.0, "vs": "fp32"}}
    torch = {"latency": {"p50_ms": 426.0}, "speedup": {"value": 0.5, "vs": "fp32"}}
    assert _speedup(row, torch) == pytest.approx(4.0)
    assert _speedup({"latency": {"p50_ms": 2.0}}, {"latency": {"p50_ms": 8.0}}) == pytest.approx(4.0)


def test_compare_prints_an_unchanged_parity_as_no_change():
    from edgeport.bench.compare import _parity_change

    assert _parity_change(3e-7) == "+0.00000"
    assert _parity_change(-3e-7) == "+0.00000"
    assert _parity_change(0.002) == "-0.00200"


def test_verify_on_a_platform_prints_thresholds_as_verify_does():
    from edgeport.platforms import PlatformReport

    report = PlatformReport("linux/arm64", "cortex-a72", "m.tar.gz",
                            golden={"thresholds": {"min_cosine": 0.95, "max_abs_error": 0.01}})
    assert "thresholds min_cosine >= 0.95, max_abs_error <= 0.01" in report.summary()


# ------------------------------------------------------------------------ bench, compare, serve --engine ray

def test_a_bench_report_never_replaces_its_own_data_or_labels(cli, onnx_artifacts, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("one sentence\nanother sentence\n")
    result = cli("bench", "run", onnx_artifacts["encoder"].path, "--data", texts, "--json", texts, "--force")
    assert_fails(result, InvalidOptionError.exit_code, "is the input", "texts.txt")
    assert texts.read_text() == "one sentence\nanother sentence\n"


def test_a_utf8_bom_is_not_part_of_the_first_example_or_label(tmp_path):
    from edgeport.data.readers import _read_jsonl, _read_text

    (tmp_path / "a.jsonl").write_bytes('\ufeff{"text": "first"}\n{"text": "second"}\n'.encode())
    (tmp_path / "a.txt").write_bytes("\ufefffirst\nsecond\n".encode())
    assert _read_jsonl(tmp_path / "a.jsonl", ModelInputError) == ("text", ["first", "second"])
    assert _read_text(tmp_path / "a.txt", ModelInputError) == ["first", "second"]


def test_bench_names_a_variant_given_as_dot_by_its_folder(cli, onnx_artifacts, tmp_path, monkeypatch):
    monkeypatch.chdir(onnx_artifacts["classifier"].path)
    result = cli("bench", "run", ".", "--rounds", "1", "--no-memory", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert [v["name"] for v in report["variants"]] == [onnx_artifacts["classifier"].path.name]


def test_a_search_that_finds_no_rate_fails_the_run(cli, onnx_artifacts, tmp_path):
    from edgeport.errors import RegressionError

    result = cli("bench", "run", onnx_artifacts["classifier"].path, "--scenario", "server", "--find-max-qps",
                 "--p99-bound-ms", "0.0001", "--queries", "2", "--rounds", "1", "--no-memory",
                 "--json", tmp_path / "r.json")
    assert_fails(result, RegressionError.exit_code, "no request rate held the p99 latency bound of 0.0001 ms")
    assert json.loads((tmp_path / "r.json").read_text())["results"]                  # the report is kept


def test_compare_notes_reports_of_different_data(tmp_path):
    from edgeport.bench.compare import footing_notes

    notes = footing_notes({"data": "128 standard-library docstring sentences"}, {"data": "short.txt (text)"})
    assert any("different data" in note for note in notes)
    assert not footing_notes({"data": "same"}, {"data": "same"})


def test_ray_refuses_port_zero_before_starting_a_cluster(cli, onnx_artifacts):
    pytest.importorskip("ray")
    result = cli("serve", onnx_artifacts["classifier"].path, "--engine", "ray", "--port", "0")
    assert_fails(result, InvalidOptionError.exit_code, "--port 0", "give the port")


def test_sweep_takes_the_lengths_a_short_tokenizer_makes_when_none_were_given(cli, onnx_artifacts, tmp_path):
    """The default lengths (up to 256) were refused as if the user had written them."""
    artifact = onnx_artifacts["encoder"]
    longest = artifact.manifest.processing["max_length"]
    assert longest < 256
    result = cli("bench", "run", artifact.path, "--scenario", "sweep", "--batch-sizes", "1", "--rounds", "1",
                 "--no-memory", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    lengths = sorted({row["params"]["sequence"] for row in rows if row["scenario"] == "sweep"})
    assert lengths[-1] == longest and all(n <= longest for n in lengths)
    written = cli("bench", "run", artifact.path, "--scenario", "sweep", "--sequence-lengths", "256")
    assert_fails(written, InvalidOptionError.exit_code, "give --sequence-lengths within")


def test_feeds_outside_the_models_range_are_named_with_their_file_before_measuring(cli, onnx_artifacts, tmp_path):
    from edgeport.errors import CalibrationDataError

    artifact = onnx_artifacts["encoder"]
    spec = next(s for s in artifact.manifest.graph["inputs"] if s["name"] == "input_ids")
    ids = np.full((2, 5), 3, dtype=np.int64)
    ids[1, 2] = spec["range"][1] + 1                        # one id past the vocabulary
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    feeds.update({s["name"]: np.zeros_like(ids) for s in artifact.manifest.graph["inputs"] if s["name"] not in feeds})
    np.savez(tmp_path / "feeds.npz", **feeds)
    for command in (("bench", "run", artifact.path, "--rounds", "1", "--no-memory"),
                    ("verify", artifact.path, "--reference", artifact.path)):
        result = cli(*command, "--data", tmp_path / "feeds.npz")
        assert_fails(result, CalibrationDataError.exit_code, "feeds.npz", "'input_ids' holds", "outside the model's")


def test_a_folder_given_for_a_report_file_is_refused_for_what_it_is_with_or_without_force(cli, onnx_artifacts,
                                                                                         tmp_path):
    (tmp_path / "reports").mkdir()
    for force in ((), ("--force",)):
        result = cli("bench", "run", onnx_artifacts["classifier"].path, "--json", tmp_path / "reports", *force)
        assert_fails(result, InvalidOptionError.exit_code, "is a folder; --json must name a file")


def test_a_server_run_that_would_never_end_is_refused(cli, onnx_artifacts):
    result = cli("bench", "run", onnx_artifacts["classifier"].path, "--scenario", "server", "--rate", "1e-9",
                 "--queries", "1")
    assert_fails(result, InvalidOptionError.exit_code, "--rate 1e-09 requests/s would take", "at most 3600 s")


# ------------------------------------------------------------------------ quantize and verify; the re-check

def test_an_artifact_verified_against_itself_meets_min_cosine_one(cli, onnx_artifacts):
    """The float64 cosine of two equal rows read 0.9999999999999998 < 1."""
    artifact = onnx_artifacts["encoder"].path
    result = cli("verify", artifact, "--reference", artifact, "--min-cosine", "1")
    assert result.exit_code == 0, result.output


def test_verify_data_that_does_not_fit_is_bad_data_naming_its_file(cli, onnx_artifacts, tmp_path):
    from edgeport.errors import CalibrationDataError

    artifact = onnx_artifacts["encoder"]
    longest = artifact.manifest.inputs[0].max_shape[1]
    ids = np.full((1, longest + 1), 3, dtype=np.int64)
    feeds = {s["name"]: (ids if s["name"] == "input_ids" else np.ones_like(ids) if s["name"] == "attention_mask"
                         else np.zeros_like(ids)) for s in artifact.manifest.graph["inputs"]}
    np.savez(tmp_path / "long.npz", **feeds)
    result = cli("verify", artifact.path, "--reference", artifact.path, "--data", tmp_path / "long.npz")
    assert_fails(result, CalibrationDataError.exit_code, "long.npz' does not fit the reference model")


def test_an_error_quoting_a_line_break_stays_one_line(cli, tmp_path):
    result = cli("verify", tmp_path / "no\nexist", "--reference", tmp_path)
    assert result.output.count("\n") == 1 and "no\\nexist" in result.output, result.output


def test_sharded_pickle_weights_are_checked_shard_by_shard(cli, tiny_bert, tmp_path):
    (tiny_bert / "model.safetensors").unlink()
    (tiny_bert / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "shard-1.bin"}}))
    (tiny_bert / "shard-1.bin").write_bytes(b"")
    result = cli("export", "onnx", tiny_bert, "-o", tmp_path / "out", "--allow-pickle")
    assert_fails(result, SourceError.exit_code, "shard-1.bin' is empty", absent=tmp_path / "out")
    (tiny_bert / "shard-1.bin").unlink()
    result = cli("export", "onnx", tiny_bert, "-o", tmp_path / "out", "--allow-pickle")
    assert_fails(result, SourceError.exit_code, "names the shard 'shard-1.bin', which is missing")


def test_a_token_file_saved_with_a_bom_gives_the_token_inside(tmp_path):
    from edgeport.serve import ServeOptions

    (tmp_path / "token").write_bytes("\ufeffsecret123\n".encode())
    assert ServeOptions(auth_token_file=str(tmp_path / "token")).token() == "secret123"
    (tmp_path / "token").write_bytes("\ufeff".encode())
    with pytest.raises(InvalidOptionError, match="is empty"):
        ServeOptions(auth_token_file=str(tmp_path / "token")).token()


@pytest.mark.slow
def test_an_executorch_sequence_bound_the_special_tokens_fill_is_refused(cli, tiny_bert, tmp_path):
    pytest.importorskip("executorch")
    result = cli("export", "executorch", tiny_bert, "-o", tmp_path / "pte", "--sequence-length", "2")
    assert_fails(result, InvalidOptionError.exit_code, "adds 2 special tokens", absent=tmp_path / "pte")


def test_calibration_data_nothing_would_read_is_refused(cli, onnx_artifacts, tmp_path):
    """It was read, checked and recorded in the manifest, and never used."""
    (tmp_path / "calib.txt").write_text("one sentence\nanother sentence\n")
    encoder = onnx_artifacts["encoder"].path
    for mode, off in (("int8-dynamic", ("--no-worst-case-guard", "--no-smooth")), ("fp16", ("--no-fp16-fallback",))):
        result = cli("quantize", encoder, "-o", tmp_path / mode, "--mode", mode, *off,
                     "--calib", tmp_path / "calib.txt")
        assert_fails(result, InvalidOptionError.exit_code, "--calib", off[0], absent=tmp_path / mode)


def test_a_folder_of_images_of_several_sizes_is_resized_image_by_image(tmp_path):
    from PIL import Image

    from edgeport.data.readers import _read_image_folder
    from edgeport.runtime.processing import ImageProcessor

    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (30, 40)), ("b.png", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / "photos" / name)
    images = _read_image_folder(tmp_path / "photos", ModelInputError)
    processor = ImageProcessor((32, 32), 3, [0.5] * 3, [0.5] * 3)
    pixels = processor(images, layout="NCHW")
    assert pixels.shape == (2, 3, 32, 32)
    for row, image in enumerate(images):                          # as if each had been given alone
        np.testing.assert_allclose(pixels[row], processor(image[None], layout="NCHW")[0], atol=1e-6)
