"""ship's output folder against what happens to it between and during runs (the twelfth pass):
a user's file in a variant folder, a variant dropped from the recipe, a deleted report, a
source rewritten while it is exported, a second ship on the same folder, an edited report
to gate against."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from helpers import assert_fails

from edgeport.errors import OutputExistsError, RecipeError, SourceError


def _recipe(tmp_path, model, out, **extra) -> str:
    data = {"name": "tiny", "output": str(out), "source": {"model": str(model)},
            "variants": [{"name": "fp32", "precision": "fp32"}, {"name": "int8", "precision": "int8-dynamic"}],
            "bench": {"scenarios": ["single-stream"], "rounds": 1, "min_duration": 0.01},
            "package": {"formats": ["bundle"]}}
    data.update(extra)
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, tiny_models):
    """One finished ship of a tiny BERT (fp32 and int8, bundles); tests work on copies."""
    from click.testing import CliRunner

    from edgeport.cli import main

    root = tmp_path_factory.mktemp("shipped")
    model = tiny_models("bert", "feature-extraction")
    result = CliRunner().invoke(main, ["ship", _recipe(root, model, root / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return model, root / "out"


def _copy(shipped, tmp_path):
    model, out = shipped
    shutil.copytree(out, tmp_path / "out", symlinks=True)
    return model, tmp_path / "out"


def test_a_users_file_in_a_variant_folder_keeps_that_variants_bundle(cli, shipped, tmp_path):
    """ship was refused to replace int8/ (a note of the user's in it), then deleted int8's valid
    bundle as if int8 had failed its gate; the refusal told the user to choose another -o of
    quantize's, which ship has not."""
    model, out = _copy(shipped, tmp_path)
    bundle = (out / "bundles" / "int8.tar.gz").read_bytes()
    (out / "int8" / "NOTES.txt").write_text("deployed 2026-12-01\n")
    result = cli("ship", _recipe(tmp_path, model, out))
    assert_fails(result, OutputExistsError.exit_code, "NOTES.txt", "Move them out or give ship another output "
                 "folder (-o)")
    assert "choose another -o" not in result.output and "[removed]" not in result.output
    assert (out / "bundles" / "int8.tar.gz").read_bytes() == bundle
    assert (out / "int8" / "NOTES.txt").is_file() and (out / "bundles" / "fp32.tar.gz").is_file()


def test_a_variant_dropped_from_the_recipe_loses_its_bundle_and_a_deleted_report_is_made_again(cli, shipped,
                                                                                                tmp_path):
    """A variant no longer in the recipe kept its bundle, which ``bundles/*.tar.gz`` picks up;
    a deleted bench.html was reported as written and served from the cache."""
    model, out = _copy(shipped, tmp_path)
    (out / "bench.html").unlink()
    only_fp32 = _recipe(tmp_path, model, out, variants=[{"name": "fp32", "precision": "fp32"}])
    result = cli("ship", only_fp32)
    assert result.exit_code == 0, result.output
    assert "[removed] bundles/int8.tar.gz: int8 is no longer in the recipe" in result.output
    assert not (out / "bundles" / "int8.tar.gz").exists() and (out / "bundles" / "fp32.tar.gz").is_file()
    assert "[run] bench" in result.output and (out / "bench.html").is_file()
    mine = out / "bundles" / "int8.tar.gz"
    mine.write_bytes(b"a file of the user's, named as ship names bundles")
    again = cli("ship", only_fp32)
    assert again.exit_code == 0 and mine.is_file() and "[removed]" not in again.output     # not ship's: kept


def test_a_source_rewritten_while_it_is_exported_fails_the_run_and_caches_nothing(cli, tiny_models, tmp_path):
    """The export's cache key is the source's digest before the weights are read: a source
    swapped during the export (and later swapped back) had a later run serve the other
    weights' export, bundles included, every step [cached]."""
    from edgeport.pipeline import load_recipe
    from edgeport.pipeline.ship import ship

    source = tmp_path / "source"
    shutil.copytree(tiny_models("bert", "feature-extraction"), source)
    weights = source / "model.safetensors"
    original = weights.read_bytes()
    other = tmp_path / "other.safetensors"
    other.write_bytes(original[:-16] + bytes(16))       # the last weights' bytes changed, the header the same

    def progress(message: str) -> None:                 # said just before the export reads the weights
        if message == "[run] export":
            shutil.copy(other, weights)

    recipe = load_recipe(_recipe(tmp_path, source, tmp_path / "out"))
    with pytest.raises(SourceError, match="changed while ship exported it"):
        ship(recipe, progress=progress)
    assert not (tmp_path / "out" / ".ship-cache" / "export.json").exists()
    weights.write_bytes(original)                       # back as it was: the next run exports again
    result = cli("ship", _recipe(tmp_path, source, tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "[run] export" in result.output


def test_a_second_ship_on_the_same_folder_is_refused_while_the_first_runs(cli, shipped, tmp_path):
    """Two ships writing one folder both exited 0, one's table listing bundles of the other's
    model.  (The first holds the folder as ship does; the second is a real run.)"""
    from edgeport.pipeline.ship import _only_run

    model, out = _copy(shipped, tmp_path)
    recipe = _recipe(tmp_path, model, out)
    with _only_run(out, dry_run=False):
        assert_fails(cli("ship", recipe), OutputExistsError.exit_code, f"another ship is writing '{out}' now")
    assert cli("ship", recipe).exit_code == 0                # the folder is free again


def test_an_edited_previous_report_is_refused_as_bench_compare_refuses_it(cli, shipped, tmp_path):
    """gates.previous_report took a report whose figures were edited (every min_cosine set to
    0.5) and gated on them without a word."""
    model, out = _copy(shipped, tmp_path)
    report = json.loads((out / "bench.json").read_text())
    for entry in report["parity"].values():
        for output in entry.values():
            if isinstance(output, dict) and "min_cosine" in output:
                output["min_cosine"] = 0.5
    edited = tmp_path / "previous.json"
    edited.write_text(json.dumps(report))
    assert_fails(cli("ship", _recipe(tmp_path, model, out, gates={"previous_report": str(edited)})),
                 RecipeError.exit_code, "'gates.previous_report'", "changed since bench wrote it")
    shutil.copy(out / "bench.json", tmp_path / "as-written.json")
    result = cli("ship", _recipe(tmp_path, model, out, gates={"previous_report": str(tmp_path / "as-written.json")}))
    assert result.exit_code == 0, result.output
