"""edgeport merge: real trained adapters folded into the base, verified; every refusal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from adapters import train_adapter
from helpers import folder_names
from edgeport.artifact import Artifact
from edgeport.errors import AdapterError, InvalidOptionError, OutputExistsError, UnsafeFileError
from edgeport.export.lora import MergeOptions, merge


def _embed(model_class, folder, inputs):
    import transformers

    model = getattr(transformers, model_class).from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(**inputs)
    return (out.logits if hasattr(out, "logits") else out[0]).numpy()


def _peft_output(base, adapter, inputs, model_class="AutoModel"):
    import transformers
    from peft import PeftModel

    model = PeftModel.from_pretrained(getattr(transformers, model_class).from_pretrained(base), str(adapter)).eval()
    with torch.no_grad():
        out = model(**inputs)
    return (out.logits if hasattr(out, "logits") else out[0]).numpy()


@pytest.fixture(scope="module")
def minilm_inputs(minilm_dir):
    import transformers

    from edgeport.data import stdlib_sentences

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    return dict(tokenizer(stdlib_sentences(12), padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def minilm_lora(tmp_path_factory, minilm_dir):
    return train_adapter(minilm_dir, tmp_path_factory.mktemp("lora") / "a", seed=0)


@pytest.mark.parametrize("kind", ["lora", "adalora"])
def test_trained_adapter_merges_into_minilm(cli, tmp_path, minilm_dir, minilm_inputs, minilm_lora, kind):
    adapter = minilm_lora if kind == "lora" else train_adapter(minilm_dir, tmp_path / "ada", kind="adalora")
    out = tmp_path / "merged"
    result = cli("merge", minilm_dir, "--adapter", adapter, "-o", out)
    assert result.exit_code == 0, result.output
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists() and (out / "modules.json").exists()
    merged = _embed("AutoModel", out, minilm_inputs)           # plain transformers, no peft
    unmerged = _peft_output(minilm_dir, adapter, minilm_inputs)
    base = _embed("AutoModel", minilm_dir, minilm_inputs)
    mask = minilm_inputs["attention_mask"].numpy().astype(bool)
    assert np.abs(merged - unmerged)[mask].max() <= 1e-4
    assert np.abs(merged - base)[mask].max() > 1e-2          # the merge did something
    record = json.loads((out / "edgeport-merge.json").read_text())
    adapter_info = record["parameters"]["adapters"][0]
    assert adapter_info["peft_type"] == kind.upper() and len(adapter_info["sha256"]) == 64
    assert adapter_info["target_modules"] == ["query", "value"]
    assert record["parity"]["unmerged_vs_merged"]["max_abs_err"] <= 1e-4


def test_merged_model_exports_with_merge_in_lineage(tmp_path, minilm_dir, minilm_lora, cli):
    out = tmp_path / "onnx"
    result = cli("export", "onnx", minilm_dir, "--adapter", minilm_lora, "-o", out)
    assert result.exit_code == 0, result.output
    lineage = Artifact.load(out).manifest.lineage
    assert [e["stage"] for e in lineage] == ["merge", "export"]
    assert lineage[0]["parameters"]["adapters"][0]["r"] == 8
    assert lineage[0]["parameters"]["adapters"][0]["lora_alpha"] == 16
    assert folder_names(tmp_path) == {"onnx"}


def test_causal_lm_lora_merges(tmp_path):
    import transformers

    config = transformers.LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    base = tmp_path / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(base)
    adapter = train_adapter(base, tmp_path / "lora", targets=("q_proj", "v_proj"), model_class="LlamaForCausalLM")
    merged = merge(base, tmp_path / "merged", MergeOptions([str(adapter)]))
    ids = torch.randint(3, 200, (2, 9))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    got = _embed("LlamaForCausalLM", merged, inputs)
    np.testing.assert_allclose(got, _peft_output(base, adapter, inputs, "LlamaForCausalLM"), atol=1e-4)
    assert np.abs(got - _embed("LlamaForCausalLM", base, inputs)).max() > 1e-3


def test_two_adapters_combined_with_weights(tmp_path, minilm_dir, minilm_inputs, minilm_lora):
    import transformers
    from peft import PeftModel

    second = train_adapter(minilm_dir, tmp_path / "b", seed=1, targets=("query", "key"))
    out = merge(minilm_dir, tmp_path / "mixed", MergeOptions([str(minilm_lora), str(second)], [0.7, 0.3]))
    # Expected: the base plus 0.7 of the first update plus 0.3 of the second (cat is exact).
    model = PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(minilm_dir), str(minilm_lora), adapter_name="a")
    model.load_adapter(str(second), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], [0.7, 0.3], "ab", combination_type="cat")
    model.set_adapter("ab")
    model.eval()
    with torch.no_grad():
        expected = model(**minilm_inputs)[0].numpy()
    merged = _embed("AutoModel", out, minilm_inputs)
    mask = minilm_inputs["attention_mask"].numpy().astype(bool)
    assert np.abs(merged - expected)[mask].max() <= 1e-4
    only_first = _peft_output(minilm_dir, minilm_lora, minilm_inputs)
    assert np.abs(merged - only_first)[mask].max() > 1e-3
    record = json.loads((out / "edgeport-merge.json").read_text())
    assert record["parameters"]["weights"] == [0.7, 0.3] and record["parameters"]["combination"] == "cat"


def test_fp16_output_dtype(tmp_path, minilm_dir, minilm_lora):
    from safetensors import safe_open

    out = merge(minilm_dir, tmp_path / "half", MergeOptions([str(minilm_lora)], dtype="fp16"))
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor(next(iter(handle.keys()))).dtype == torch.float16
    # The merge is checked in float32; what the folder holds, the fp16 cast, is measured as well.
    parity = json.loads((out / "edgeport-merge.json").read_text())["parity"]
    exact, written = parity["unmerged_vs_merged"], parity["unmerged_vs_written"]
    assert exact["max_abs_err"] < 1e-4 < written["max_abs_err"] < 0.1 and written["min_cosine"] > 0.999


# ------------------------------------------------------------------------ refusals


def _refused(cli, args, code, *phrases, out):
    result = cli(*args)
    assert result.exit_code == code, result.output
    assert "error: " in result.output and "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output, result.output
    assert not out.exists()


def test_adapter_for_another_base_names_module_and_shapes(cli, tmp_path, tiny_models, minilm_dir):
    tiny = tiny_models("bert", "feature-extraction")
    foreign = train_adapter(tiny, tmp_path / "tiny-lora", steps=1)
    out = tmp_path / "out"
    _refused(cli, ["merge", minilm_dir, "--adapter", foreign, "-o", out], AdapterError.exit_code,
             "encoder.layer.0.attention.self.query", "(384, 384)", "another base", out=out)


def test_adapter_with_missing_target_modules(cli, tmp_path, tiny_models):
    import transformers

    config = transformers.LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2)
    llama = tmp_path / "llama"
    transformers.LlamaModel(config).save_pretrained(llama)
    adapter = train_adapter(llama, tmp_path / "llama-lora", targets=("q_proj",), steps=1)
    out = tmp_path / "out"
    _refused(cli, ["merge", tiny_models("bert", "feature-extraction"), "--adapter", adapter, "-o", out],
             AdapterError.exit_code, "q_proj", "does not have", out=out)


def test_missing_and_corrupted_adapter_files(cli, tmp_path, minilm_dir, minilm_lora):
    out = tmp_path / "out"
    _refused(cli, ["merge", minilm_dir, "--adapter", tmp_path / "nowhere", "-o", out], AdapterError.exit_code,
             "does not exist", out=out)
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(cli, ["merge", minilm_dir, "--adapter", empty, "-o", out], AdapterError.exit_code,
             "no adapter_config.json", out=out)
    broken = tmp_path / "broken"
    shutil.copytree(minilm_lora, broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _refused(cli, ["merge", minilm_dir, "--adapter", broken, "-o", out], AdapterError.exit_code,
             "truncated", out=out)
    (broken / "adapter_model.safetensors").unlink()
    _refused(cli, ["merge", minilm_dir, "--adapter", broken, "-o", out], AdapterError.exit_code,
             "has no weights", out=out)


def test_an_adapter_missing_tensors_its_config_asks_for_is_refused(cli, tmp_path, minilm_dir, minilm_lora):
    """peft fills missing tensors with fresh values (random A) and merges a model the adapter
    never described; the check against that same PeftModel would pass it."""
    import json

    from safetensors.torch import load_file, save_file

    tensors = load_file(minilm_lora / "adapter_model.safetensors")
    out = tmp_path / "out"
    for name, kept in (("empty", {}), ("one_missing", dict(list(tensors.items())[1:]))):
        adapter = tmp_path / name
        shutil.copytree(minilm_lora, adapter)
        save_file(kept, adapter / "adapter_model.safetensors")
        _refused(cli, ["merge", minilm_dir, "--adapter", adapter, "-o", out], AdapterError.exit_code,
                 f"lacks {len(tensors) - len(kept)} of the {len(tensors)} tensors", out=out)
    other_method = tmp_path / "ia3_config"
    shutil.copytree(minilm_lora, other_method)
    config = json.loads((other_method / "adapter_config.json").read_text())
    config.update(peft_type="IA3", feedforward_modules=[])
    (other_method / "adapter_config.json").write_text(json.dumps(config))
    _refused(cli, ["merge", minilm_dir, "--adapter", other_method, "-o", out], AdapterError.exit_code,
             "(IA3) asks for", out=out)


def test_one_adapter_with_a_combination_or_given_as_its_file_is_refused(cli, tmp_path, minilm_dir, minilm_lora):
    out = tmp_path / "out"
    _refused(cli, ["merge", minilm_dir, "--adapter", minilm_lora, "--combination", "svd", "-o", out],
             InvalidOptionError.exit_code, "with one there is nothing to combine", out=out)
    _refused(cli, ["merge", minilm_dir, "--adapter", minilm_lora / "adapter_model.safetensors", "-o", out],
             AdapterError.exit_code, "is a file; --adapter takes the adapter's folder", out=out)


def test_pickle_adapter_needs_allow_pickle(cli, tmp_path, minilm_dir, minilm_lora):
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(minilm_lora, pickled)
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    out = tmp_path / "out"
    _refused(cli, ["merge", minilm_dir, "--adapter", pickled, "-o", out], UnsafeFileError.exit_code,
             "pickle", "--allow-pickle", out=out)
    result = cli("merge", minilm_dir, "--adapter", pickled, "-o", out, "--allow-pickle")
    assert result.exit_code == 0, result.output


def test_existing_output_and_bad_weights(cli, tmp_path, minilm_dir, minilm_lora):
    out = tmp_path / "out"
    out.mkdir()
    result = cli("merge", minilm_dir, "--adapter", minilm_lora, "-o", out)
    assert result.exit_code == OutputExistsError.exit_code and "--force" in result.output
    assert folder_names(out) == set()
    other = tmp_path / "other"
    _refused(cli, ["merge", minilm_dir, "--adapter", minilm_lora, "--adapter", minilm_lora, "--weight", "1", "-o",
                   other], InvalidOptionError.exit_code, "one weight per adapter", out=other)
    result = cli("merge", minilm_dir, "--adapter", minilm_lora, "--combination", "ties", "-o", other)
    assert result.exit_code == 2 and not other.exists()
    with pytest.raises(InvalidOptionError, match="ties, dare and magnitude pruning"):
        merge(minilm_dir, other, MergeOptions([str(minilm_lora)] * 2, combination="ties"))


def test_bf16_base_keeps_its_dtype(tmp_path, tiny_models):
    import transformers
    from safetensors import safe_open

    base = tmp_path / "bf16"
    transformers.AutoModel.from_pretrained(tiny_models("bert", "feature-extraction")).to(torch.bfloat16).save_pretrained(base)
    adapter = train_adapter(tiny_models("bert", "feature-extraction"), tmp_path / "lora", steps=2)
    out = merge(base, tmp_path / "merged", MergeOptions([str(adapter)]))
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor(next(iter(handle.keys()))).dtype == torch.bfloat16
    record = json.loads((out / "edgeport-merge.json").read_text())
    assert record["parameters"]["dtype"] == "bf16"
    assert record["parity"]["unmerged_vs_merged"]["max_abs_err"] <= 1e-4     # verified in float32
