"""edgeport ship: the demo recipe end to end, the cache, failing gates, regressions, and
recipe validation."""

from __future__ import annotations

import json

import pytest

from edgeport.errors import ParityError, RecipeError, RegressionError
from edgeport.pipeline import load_recipe
from helpers import assert_fails


@pytest.mark.slow
def test_demo_recipe_end_to_end_then_from_the_cache(cli, tmp_path):
    out = tmp_path / "demo"
    result = cli("ship", "-o", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "ship-summary.json").read_text())
    variants = {v["name"]: v for v in summary["variants"]}
    assert set(variants) == {"fp32", "int8", "int8-static", "fp16"}
    report = json.loads((out / "bench.json").read_text())
    gates = {"fp32": 0.9999, "int8": 0.98, "int8-static": 0.98, "fp16": 0.999}
    for name, variant in variants.items():
        assert variant["passed"], variant
        parity = report["parity"][out.joinpath(name).name if name != "fp32" else "export"]
        assert parity["sentence_embedding"]["min_cosine"] >= gates[name] - 1e-3      # the bench's own check agrees
        assert variant["bundle"] and (out / "bundles" / f"{name}.tar.gz").is_file()
        assert variant["speedup_vs_pytorch"] > 0 and variant["size_vs_pytorch"] > 0
    assert variants["int8"]["size_vs_pytorch"] < 0.35 and variants["fp16"]["size_vs_pytorch"] < 0.6
    assert {r["variant"] for r in report["results"]} >= {"export", "int8", "int8-static", "fp16", "torch (eager FP32, cpu)"}
    assert (out / "triton" / "int8_static" / "config.pbtxt").is_file() and (out / "bench.html").is_file()
    assert "vs PyTorch" in result.output and "passed" in result.output

    before = {p: p.stat().st_mtime for p in out.rglob("*") if p.is_file() and ".ship-cache" not in str(p)
              and p.name != "ship-summary.json"}
    again = cli("ship", "-o", out)
    assert again.exit_code == 0, again.output
    assert again.output.count("[cached]") == 10 and "[run]" not in again.output
    assert {p: p.stat().st_mtime for p in before} == before                # nothing was rewritten
    plan = cli("ship", "-o", out, "--dry-run")
    assert plan.exit_code == 0 and "will run" not in plan.output and plan.output.count("cached") == 10


def _recipe(tmp_path, model, **extra) -> str:
    import yaml

    data = {"name": "tiny", "output": str(tmp_path / "out"), "source": {"model": str(model)},
            "variants": [{"name": "fp32", "precision": "fp32"},
                         {"name": "int8", "precision": "int8-dynamic", "gates": {"min_cosine": 0.9999999}}],
            "bench": {"scenarios": ["single-stream"], "rounds": 1, "min_duration": 0.01},
            "package": {"formats": ["bundle"]}}
    data.update(extra)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_failing_gate_stops_that_variant_and_keeps_the_others(cli, tmp_path, tiny_models):
    recipe = _recipe(tmp_path, tiny_models("bert", "feature-extraction"))
    result = cli("ship", recipe)
    assert result.exit_code == ParityError.exit_code, result.output
    assert "int8: gate failed: min_cosine 0.9999999 not met" in result.output      # the threshold as written
    summary = json.loads((tmp_path / "out" / "ship-summary.json").read_text())
    variants = {v["name"]: v for v in summary["variants"]}
    assert variants["fp32"]["passed"] and (tmp_path / "out" / "bundles" / "fp32.tar.gz").is_file()
    assert not variants["int8"]["passed"] and not (tmp_path / "out" / "bundles" / "int8.tar.gz").exists()
    assert {v["name"] for v in json.loads((tmp_path / "out" / "bench.json").read_text())["variants"]} == {"export"}


def test_adapters_are_merged_and_a_regression_fails_the_run(cli, tmp_path, tiny_models):
    from adapters import train_adapter

    base = tiny_models("bert", "feature-extraction")
    adapter = train_adapter(base, tmp_path / "lora", steps=2)
    first = _recipe(tmp_path, base, variants=[{"name": "fp32", "precision": "fp32"}],
                    source={"model": str(base), "adapters": [str(adapter)]})
    plan = cli("ship", first, "--dry-run")               # before the merge ran: its folder is not there yet
    assert plan.exit_code == 0 and "will run  merge" in plan.output and "will run  export" in plan.output, plan.output
    assert cli("ship", first).exit_code == 0
    from edgeport.artifact import Artifact

    assert [e["stage"] for e in Artifact.load(tmp_path / "out" / "export").manifest.lineage] == ["merge", "export"]
    previous = json.loads((tmp_path / "out" / "bench.json").read_text())
    for row in previous["results"]:                           # a previous run 100x faster than anything possible
        row["latency"] = {k: (v / 100 if isinstance(v, float) else [x / 100 for x in v] if isinstance(v, list) else v)
                          for k, v in row["latency"].items()}
    from edgeport.outputs import SEAL_KEY, seal, seal_placeholder   # sealed anew: as a faster machine's bench wrote it

    (tmp_path / "previous.json").write_text(seal(json.dumps({**previous, SEAL_KEY: seal_placeholder()}, indent=2)
                                                 + "\n"))
    second = _recipe(tmp_path, base, variants=[{"name": "fp32", "precision": "fp32"}],
                     source={"model": str(base), "adapters": [str(adapter)]},
                     gates={"previous_report": str(tmp_path / "previous.json"), "max_regression": "5%"},
                     bench={"scenarios": ["single-stream"], "rounds": 1, "min_duration": 0.02})
    result = cli("ship", second)
    assert result.exit_code == RegressionError.exit_code, result.output
    table_row = next(line for line in result.output.splitlines() if line.startswith("fp32 "))
    assert " regressed " in table_row and " passed " not in table_row, result.output      # not "passed" above FAILED
    assert "[cached] merge" in result.output and "[cached] export" in result.output and "[run] bench" in result.output


@pytest.mark.parametrize("recipe,phrase", [
    ({"source": {"model": "x"}}, "'variants' is missing"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "int9"}]}, "'variants[0].precision'"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "fp32", "gatez": {}}]},
     "'variants[0].gatez' is not a known field"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "int8-static"}]},
     "'variants[0].calibration' is needed"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "fp32"}, {"name": "a", "precision": "fp16"}]},
     "names 'a' twice"),
    ({"source": {"model": "x", "adapters": ["a"], "weights": [1, 2]}, "variants": [{"name": "a", "precision": "fp32"}]},
     "one weight per adapter"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "fp32", "gates": {"min_cosine": 2}}]},
     "'variants[0].gates.min_cosine' must be <= 1"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "fp32"}], "bench": {"rounds": 0}},
     "'bench.rounds' must be >= 1"),
    ({"source": {"model": "x"}, "variants": [{"name": "bundles", "precision": "fp16"}]},
     "'variants[0].name' 'bundles' is a folder ship writes itself"),
    ({"source": {"model": "x", "adapters": ["no-such-lora"]}, "variants": [{"name": "a", "precision": "fp32"}]},
     "'source.adapters[0]' 'no-such-lora' does not exist"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "int8-static", "calibration": "gone.txt"}]},
     "'variants[0].calibration' 'gone.txt' does not exist"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "int8-static", "calibration": "bundled:x"}]},
     "'bundled:x' is not bundled data"),
    ({"source": {"model": "x"},
      "variants": [{"name": "a-b", "precision": "fp32"}, {"name": "a_b", "precision": "fp16"}]},
     "would be one Triton model"),
    ({"source": {"model": "x"}, "variants": [{"name": "\ufb01p", "precision": "fp32"}]},
     "must be letters, digits, '-' and '_'"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "fp32", "target": "x86-avx2"}]},
     "'variants[0].target' does not apply to precision fp32"),
    ({"source": {"model": "x"},
      "variants": [{"name": "a", "precision": "int8-dynamic", "calibration_method": "entropy"}]},
     "'variants[0].calibration_method' does not apply to precision int8-dynamic"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "int4", "accuracy_aware": True}]},
     "'variants[0].accuracy_aware' does not apply to precision int4"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "fp32"}], "bench": {"batch_sizes": [4]}},
     "'bench.batch_sizes' sets the offline and sweep scenarios"),
    ({"source": {"model": "bundled:all-MiniLM-L6-v2"}, "variants": [{"name": "a", "precision": "fp32"}],
      "gates": {"max_regression": "5%"}},
     "'gates.max_regression' compares with 'gates.previous_report'"),
    ({"source": {"model": "x"}, "variants": [{"name": "a", "precision": "fp32"}], "package": {"formats": ["kserve"]}},
     "kserve is not made by ship"),
    ({"source": {"model": "x"}, "output": "out", "variants": [{"name": "a", "precision": "fp32"}],
      "gates": {"previous_report": "out/bench.json"}}, "lies in the output"),
])
def test_recipe_errors_point_at_the_key(tmp_path, cli, recipe, phrase):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(str(path))
    assert_fails(cli("ship", path), RecipeError.exit_code, phrase)


def test_unreadable_recipes(tmp_path, cli):
    (tmp_path / "bad.yaml").write_text("variants: [unclosed")
    result = cli("ship", tmp_path / "bad.yaml")
    assert_fails(result, 2, "not valid YAML", "(line 1, column")
    assert len(result.output.strip().splitlines()) == 1, result.output          # one line, no caret excerpt
    assert_fails(cli("ship", tmp_path / "missing.yaml"), 2, "does not exist")
    assert_fails(cli("ship", tmp_path), 2, "is a folder")
    (tmp_path / "twice.yaml").write_text("source: {model: x}\nvariants: [{name: a, precision: fp32,\n"
                                         "  gates: {min_cosine: 0.99, min_cosine: 0.1}}]\n")
    assert_fails(cli("ship", tmp_path / "twice.yaml"), 2, "the key 'min_cosine' is given twice (line 3")
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000)
    assert_fails(cli("ship", tmp_path / "deep.yaml", "--dry-run"), 2, "nests deeper")


def test_a_failed_run_leaves_no_empty_output_and_a_plan_writes_nothing(cli, tmp_path, tiny_models):
    model = tiny_models("bert", "feature-extraction")
    recipe = _recipe(tmp_path, model, variants=[{"name": "int8-static", "precision": "int8-static",
                                                 "calibration": "bundled:stdlib-docstrings"}])
    plan = cli("ship", recipe, "--dry-run")
    assert plan.exit_code == 0 and not (tmp_path / "out").exists(), plan.output
    # The source vanishes after the recipe was read: the export fails, and the folder it made goes.
    recipe = _recipe(tmp_path, tmp_path / "gone", source={"model": str(model), "task": "text-generation"},
                     variants=[{"name": "fp32", "precision": "fp32"}])
    result = cli("ship", recipe, "-o", tmp_path / "new" / "out")
    assert result.exit_code != 0 and "error: " in result.output
    assert not (tmp_path / "new").exists()


def test_the_cache_makes_a_damaged_output_again(cli, tmp_path, tiny_models):
    recipe = _recipe(tmp_path, tiny_models("bert", "feature-extraction"),
                     variants=[{"name": "fp32", "precision": "fp32"}])
    assert cli("ship", recipe).exit_code == 0
    bundle = tmp_path / "out" / "bundles" / "fp32.tar.gz"
    whole = bundle.read_bytes()
    bundle.write_bytes(whole[: len(whole) // 2])                           # truncated
    again = cli("ship", recipe)
    assert again.exit_code == 0 and "[run] bundle fp32" in again.output, again.output
    assert "[cached] export" in again.output
    assert bundle.read_bytes() != whole[: len(whole) // 2]


def test_a_bench_the_model_cannot_take_fails_before_any_variant_is_made(cli, tmp_path, tiny_models):
    """A sweep of sequence lengths asked for an image model is refused once the export says
    what the model takes, not after every variant was quantized and gated."""
    from edgeport.errors import InvalidOptionError

    recipe = _recipe(tmp_path, tiny_models("vit", "image-classification"),
                     bench={"scenarios": ["single-stream", "sweep"], "rounds": 1, "min_duration": 0.01})
    result = cli("ship", recipe)
    assert_fails(result, InvalidOptionError.exit_code, "--scenario sweep does not apply to a model that takes no text")
    assert "[run] export" in result.output and "int8" not in result.output
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"export", ".ship-cache"}    # kept for the next run


def test_json_names_no_pytorch_it_did_not_time_and_a_variant_failing_now_loses_its_bundle(cli, tmp_path, tiny_models):
    """--json crashed; a variant named torch... was taken for the PyTorch baseline; a bundle from
    a run that passed stayed beside the report of one that failed."""
    model = tiny_models("bert", "feature-extraction")
    variants = [{"name": "fp32", "precision": "fp32"},
                {"name": "torchq", "precision": "int8-dynamic", "gates": {"min_cosine": 0.5}}]
    result = cli("ship", _recipe(tmp_path, model, variants=variants), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert all(v["speedup_vs_pytorch"] is None for v in summary["variants"]), summary   # no baseline was run
    assert (tmp_path / "out" / "bundles" / "torchq.tar.gz").is_file()
    variants[1]["gates"]["min_cosine"] = 0.9999999
    result = cli("ship", _recipe(tmp_path, model, variants=variants))
    assert result.exit_code == ParityError.exit_code, result.output
    assert "[removed] bundles/torchq.tar.gz" in result.output
    assert not (tmp_path / "out" / "bundles" / "torchq.tar.gz").exists()
    assert (tmp_path / "out" / "bundles" / "fp32.tar.gz").is_file()


def test_ctrl_c_in_the_bench_step_stops_the_run_and_caches_nothing(tmp_path, tiny_models):
    """It exited 0 with a partial report the cache then served as complete."""
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = _recipe(tmp_path, tiny_models("bert", "feature-extraction"),
                     variants=[{"name": "fp32", "precision": "fp32"}],
                     bench={"scenarios": ["single-stream", "offline"], "rounds": 50, "min_duration": 1})
    # PYTHONFAULTHANDLER: where it once hung past its Ctrl-C (one CI run, not reproduced), SIGABRT
    # makes it print every thread's stack, which the failure then shows.
    process = subprocess.Popen([sys.executable, "-m", "edgeport.cli", "ship", recipe], stderr=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})
    try:
        deadline, seen = time.time() + 120, ""
        while time.time() < deadline and "[run] bench" not in seen:
            seen += process.stderr.readline()
        time.sleep(3)                                   # well into the measurement
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=60) == 130
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            pytest.fail("still running 60 s after Ctrl-C; its stacks:\n" + process.communicate(timeout=30)[1][-6000:])
    finally:
        process.kill()
    out = tmp_path / "out"
    assert not (out / "bench.json").exists() and not (out / "bench.html").exists()
    assert not (out / ".ship-cache" / "bench.json").exists() and (out / ".ship-cache" / "export.json").is_file()


@pytest.mark.slow
def test_a_causal_lm_recipe_asking_for_triton_or_a_platform_fails_after_the_export(cli, tmp_path):
    """They were skipped silently (Triton), or failed at the very end with a false message."""
    from edgeport.errors import UnsupportedModelError
    from llm_models import build_lm

    lm = build_lm(tmp_path / "lm", steps=5)
    recipe = _recipe(tmp_path, lm, variants=[{"name": "fp32", "precision": "fp32"}], bench={"rounds": 1},
                     package={"formats": ["bundle", "triton"]}, verify={"platforms": ["linux/arm64"]})
    result = cli("ship", recipe)
    assert_fails(result, UnsupportedModelError.exit_code, "package.formats triton, verify.platforms linux/arm64: "
                 "not for a causal LM")
    assert "[run] export" in result.output and "[run] bench" not in result.output
