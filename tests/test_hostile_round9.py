"""The ninth pass: what the eighth noticed and left alone, mended."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.errors import CalibrationDataError, SourceError
from helpers import assert_fails


def test_an_image_model_wider_than_the_image_processing_is_refused_up_front(cli, tmp_path):
    """1100 bands exported, then failed the manifest schema it wrote ("edgeport made an invalid
    manifest", read as edgeport's own fault)."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=8, patch_size=4, num_channels=1100, hidden_size=8, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=8, num_labels=2)
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    result = cli("export", "onnx", tmp_path / "vit", "-o", tmp_path / "out")
    assert_fails(result, SourceError.exit_code, "1100 channels", "at most 1024", absent=tmp_path / "out")


def test_arrays_of_different_lengths_are_named(cli, onnx_artifacts, tmp_path):
    ids = np.full((2, 4), 3, np.int64)
    np.savez(tmp_path / "feeds.npz", input_ids=ids, attention_mask=np.ones_like(ids), extra=np.zeros(5))
    result = cli("verify", onnx_artifacts["encoder"].path, "--reference", onnx_artifacts["encoder"].path,
                 "--data", tmp_path / "feeds.npz")
    assert_fails(result, CalibrationDataError.exit_code, "'input_ids' 2", "'extra' 5")


def test_a_model_folder_with_only_model_pt_says_what_transformers_reads(cli, tiny_models, tmp_path):
    """--allow-pickle passed it, then transformers said the folder had no model.safetensors."""
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "bert"
    shutil.copytree(tiny_models("bert", "feature-extraction"), folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "model.pt")
    (folder / "model.safetensors").unlink()
    for extra in ((), ("--allow-pickle",)):
        result = cli("export", "onnx", folder, "-o", tmp_path / "out", *extra)
        assert_fails(result, SourceError.exit_code, "model.pt, which transformers does not read",
                     "name it pytorch_model.bin", absent=tmp_path / "out")
    (folder / "model.pt").rename(folder / "pytorch_model.bin")        # as the message says: it exports
    assert cli("export", "onnx", folder, "-o", tmp_path / "out", "--allow-pickle").exit_code == 0


def test_a_callable_returning_a_single_number_is_named(cli, tmp_path, monkeypatch):
    """It failed every export route with numpy's "zero-dimensional arrays cannot be concatenated"."""
    from edgeport.errors import UnsupportedModelError

    (tmp_path / "summing_r9.py").write_text(
        "import torch\n\n\nclass Summing(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.linear = torch.nn.Linear(4, 2)\n\n    def forward(self, x):\n"
        "        return self.linear(x).sum()\n\n\ndef make():\n    return Summing()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = cli("export", "onnx", "summing_r9:make", "--input", "x:2x4:float32", "-o", tmp_path / "out")
    assert_fails(result, UnsupportedModelError.exit_code, "a single number (a 0-d tensor) as output 0",
                 "keep the batch axis", absent=tmp_path / "out")
    # Summed over the batch and kept 1-d: exported, and run joined each batch's sums as rows.
    (tmp_path / "batch_sums_r9.py").write_text(
        "import torch\n\n\nclass BatchSums(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.linear = torch.nn.Linear(4, 2)\n\n    def forward(self, x):\n"
        "        return self.linear(x).sum(0)\n\n\ndef make():\n    return BatchSums()\n")
    for static in ((), ("--static-shapes",)):
        result = cli("export", "onnx", "batch_sums_r9:make", "--input", "x:4x4:float32", "-o", tmp_path / "out",
                     *static)
        assert_fails(result, UnsupportedModelError.exit_code, "returns output 'output' [2] for",
                     "one row per input row on axis 0", absent=tmp_path / "out")


def test_run_names_max_new_tokens_past_any_prompts_room_as_an_option(cli, lms):
    """It exited 12 (bad input) where bench says 2: no prompt fits 300 new tokens in 256."""
    from edgeport.errors import InvalidOptionError, ModelInputError

    artifact = lms("llama")["onnx"].path
    result = cli("run", artifact, "--prompt", "Return the", "--max-new-tokens", "300")
    assert_fails(result, InvalidOptionError.exit_code, "--max-new-tokens 300 is past the model's context of 256",
                 "at most 255")
    long_prompt = " ".join(["Return the value"] * 100)          # the prompt's own length is the input's fault
    result = cli("run", artifact, "--prompt", long_prompt, "--max-new-tokens", "200")
    assert_fails(result, ModelInputError.exit_code, "past the model's context of 256")


def test_a_merged_folder_merged_again_keeps_every_merge_in_the_lineage(cli, tiny_models, tmp_path):
    """The second merge's record replaced the first: the artifact named only the merged base."""
    import json

    from adapters import train_adapter
    from edgeport.artifact import Artifact

    base = tiny_models("bert", "feature-extraction")
    adapter = train_adapter(base, tmp_path / "lora", steps=2)
    assert cli("merge", base, "--adapter", adapter, "-o", tmp_path / "once").exit_code == 0
    assert cli("merge", tmp_path / "once", "--adapter", adapter, "-o", tmp_path / "twice").exit_code == 0
    records = json.loads((tmp_path / "twice" / "edgeport-merge.json").read_text())
    assert [r["parameters"]["base"] for r in records] == [str(base.resolve()), str((tmp_path / "once").resolve())]
    assert cli("export", "onnx", tmp_path / "twice", "-o", tmp_path / "onnx").exit_code == 0
    lineage = Artifact.load(tmp_path / "onnx").manifest.lineage
    assert [e["stage"] for e in lineage] == ["merge", "merge", "export"]
    assert lineage[0]["parameters"]["base"] == str(base.resolve())
    record = tmp_path / "twice" / "edgeport-merge.json"          # only merges come into the lineage this way
    for edited, phrase in (([records[0], {**records[1], "stage": "export"}], "of stage 'export', not 'merge'"),
                           ([], "holds no merge entry")):
        record.write_text(json.dumps(edited))
        result = cli("export", "onnx", tmp_path / "twice", "-o", tmp_path / "again")
        assert_fails(result, SourceError.exit_code, "edgeport-merge.json is malformed", phrase,
                     absent=tmp_path / "again")


def test_run_casts_integer_feeds_to_the_models_width(cli, onnx_artifacts, tmp_path):
    ids = np.full((2, 4), 3, np.int32)                   # int32 ids for an int64 model: verify read them, run refused
    np.savez(tmp_path / "feeds.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    result = cli("run", onnx_artifacts["encoder"].path, "--input", tmp_path / "feeds.npz")
    assert result.exit_code == 0, result.output


def test_a_bfloat16_input_says_the_graph_takes_float32(cli, tmp_path, monkeypatch):
    from edgeport.artifact import Artifact

    (tmp_path / "linear_r9.py").write_text("import torch\n\n\ndef make():\n    torch.manual_seed(0)\n"
                                           "    return torch.nn.Linear(4, 2).to(torch.bfloat16)\n")
    monkeypatch.syspath_prepend(str(tmp_path))          # a bfloat16 module was fed float32 and failed
    result = cli("export", "onnx", "linear_r9:make", "--input", "x:2x4:bfloat16", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    artifact = Artifact.load(tmp_path / "out")
    assert artifact.manifest.inputs[0].dtype.name == "float32"
    assert "the module ran in float32" in " ".join(artifact.manifest.lineage[-1]["notes"])


def test_adapter_tensors_its_config_does_not_name_are_refused(cli, tiny_models, tmp_path):
    """peft dropped them without a word and the merge passed its own check."""
    import json

    from adapters import train_adapter
    from edgeport.errors import AdapterError

    base = tiny_models("bert", "feature-extraction")
    adapter = train_adapter(base, tmp_path / "lora", steps=2)
    config = json.loads((adapter / "adapter_config.json").read_text())
    named = sorted(config["target_modules"])
    config["target_modules"] = named[:1]                  # the weights still hold the other module's tensors
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = cli("merge", base, "--adapter", adapter, "-o", tmp_path / "out")
    assert_fails(result, AdapterError.exit_code, "tensors its adapter_config.json", "does not name",
                 f".{named[1]}.", absent=tmp_path / "out")


def test_feeds_are_cast_only_where_the_values_survive():
    """int64 ids past int32 wrapped around into valid-looking ids when cast for an int32 model;
    70000 cast to float16 was named as 'NaN or infinite values' the file did not hold."""
    from edgeport.data import in_model_dtype

    def cast(value, dtype):
        return in_model_dtype("x", value, np.dtype(dtype), "f.npz", CalibrationDataError)

    assert cast(np.array([1, 2], np.int64), np.int32).dtype == np.int32
    assert cast(np.array([1.5, np.nan], np.float64), np.float16).dtype == np.float16     # NaN: the runtime names it
    for value, dtype, phrase in ((np.array([2 ** 33]), np.int32, "int64, the model takes int32 and its values do not"),
                                 (np.array([7e4], np.float32), np.float16, "float32, the model takes float16 and its"),
                                 (np.array([1.5], np.float32), np.int64, "float32, the model takes int64")):
        with pytest.raises(CalibrationDataError, match=phrase):
            cast(value, dtype)
