"""Causal LMs, adapter to device: LoRA merged, exported with a KV cache through ONNX Runtime
GenAI's builder, generating without torch exactly what transformers generates; runtime
adapters; INT4; and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.errors import AdapterError, InvalidOptionError, ModelInputError, UnsupportedModelError
from edgeport.export.lora import MergeOptions, merge
from edgeport.export.onnx import ExportOptions, export_onnx
from edgeport.runtime import load
from edgeport.runtime.genai import session_overlay
from edgeport.runtime.onnxrt import SessionSettings
from helpers import assert_fails
from llm_models import build_lm, train_lora, transformers_generate

pytest.importorskip("onnxruntime_genai", reason="the llm extra (onnxruntime-genai) is not installed")

PROMPTS = ["The socket", "Return the number of items in", "Create a new", "If the object is a generator then the"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_merged_lora_model_generates_what_transformers_generates(lms, family):
    setup = lms(family)
    artifact = setup["onnx"]
    manifest = artifact.manifest
    assert manifest.task == "text-generation" and [e["stage"] for e in manifest.lineage] == ["merge", "export"]
    assert manifest.lineage[0]["parity"]["unmerged_vs_merged"]["max_abs_err"] <= 1e-4
    assert manifest.parity["export"]["generation"]["exact"] == 1.0
    assert {"genai_config.json", "tokenizer.json", "model.onnx", "golden.npz"} <= set(manifest.files)
    expected = transformers_generate(setup["merged"], PROMPTS, 12)
    model = load(artifact.path)
    one_by_one = [model.generate(p, max_new_tokens=12)[0].tokens for p in PROMPTS]
    batched = [g.tokens for g in model.generate(PROMPTS, max_new_tokens=12)]
    assert one_by_one == expected
    assert batched == expected
    assert len({tuple(e) for e in expected}) > 1          # different prompts, different continuations
    base = transformers_generate(setup["base"], PROMPTS, 12)
    assert base != expected                               # the adapter changed what the model says


def test_llama_quick(lms):
    """The quick loop's share: one family, merged and exported, token for token."""
    setup = lms("llama")
    model = load(setup["onnx"].path)
    assert [g.tokens for g in model.generate(PROMPTS[:2], max_new_tokens=8)] == \
        transformers_generate(setup["merged"], PROMPTS[:2], 8)


def test_genai_runs_on_the_thread_count_and_spinning_it_is_given(lms):
    """The settings become a genai_config overlay (the thread count as GenAI's own option,
    spinning as ONNX Runtime session config entries, which GenAI passes through as strings),
    and GenAI loads and generates the same tokens with it.  That the settings take effect is
    measured, not asserted here (a speed): 2 threads with spinning on decoded 1.6x GenAI's
    default on 2 cores, 2 threads with spinning off 0.9x, which is why bench sets them."""
    path = lms("llama")["onnx"].path
    assert session_overlay(SessionSettings(threads=2, spinning=False)) == {"model": {"decoder": {"session_options": {
        "intra_op_num_threads": 2, "session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}}}}
    assert session_overlay(SessionSettings()) == {}
    with load(path, device="cpu") as model:
        default = model.generate("Return the number of", max_new_tokens=6)[0].tokens
    with load(path, device="cpu", threads=2, spinning=False) as model:
        assert model.generate("Return the number of", max_new_tokens=6)[0].tokens == default


def test_generation_api(lms):
    model = load(lms("llama")["onnx"].path)
    greedy = model.generate(["Return the number of"], max_new_tokens=10)[0]
    assert greedy.finish_reason in ("length", "stop") and greedy.text == model.decode(greedy.tokens)
    streamed = list(model.stream("Return the number of", max_new_tokens=10))
    assert [p.token for p in streamed] == greedy.tokens and "".join(p.text for p in streamed) == greedy.text
    by_ids = model.generate([model.encode("Return the number of")], max_new_tokens=10)[0]
    assert by_ids.tokens == greedy.tokens
    sampled = [model.generate("Return the", max_new_tokens=10, temperature=1.5, top_k=50, seed=s)[0].tokens
               for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]                       # a seed makes sampling reproducible
    # top_k past the vocabulary keeps every token (GenAI refused it mid-stream; the second route took it)
    everything = model.generate("Return the", max_new_tokens=4, temperature=1.0, top_k=10 ** 6, seed=1)[0]
    assert everything.tokens == model.generate("Return the", max_new_tokens=4, temperature=1.0, seed=1)[0].tokens
    cut = model.generate("Return the number of", max_new_tokens=10, stop=[greedy.text[2:5]])[0]
    assert cut.finish_reason == "stop" and greedy.text[2:5] not in cut.text
    logits = model.runner.run({"input_ids": np.array([model.encode("Return the")], np.int64)})["logits"]
    assert logits.shape[:2] == (1, len(model.encode("Return the"))) and np.isfinite(logits).all()
    assert 1 < model.perplexity(["Return the number of items in the container."]) < 600
    # A lone byte of a multi-byte character (what byte-level models emit) decodes to U+FFFD and
    # the text goes on, as transformers decodes it; GenAI's own decode would stop there.
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model.artifact.member("tokenizer.json")))
    ids = [tokenizer.token_to_id("\u00e2")] + tokenizer.encode(" the value").ids
    assert model.decode(ids) == "\ufffd the value"


def test_chat_template_is_applied_when_the_tokenizer_has_one(tmp_path):
    base = build_lm(tmp_path / "chat", steps=20, chat=True)
    model = load(export_onnx(base, tmp_path / "onnx").path)
    assert model.chat_template
    messages = [{"role": "user", "content": "hello"}]
    assert model.format_chat(messages) == "<|user|>hello\n<|assistant|>"
    assert model.generate([messages], max_new_tokens=4)[0].prompt_tokens == model.encode("<|user|>hello\n<|assistant|>")


@pytest.mark.slow
def test_runtime_adapters_give_the_merged_models_tokens(lms, tmp_path):
    setup = lms("llama")
    second = train_lora(setup["base"], tmp_path / "lora2", seed=1, steps=30)
    artifact = export_onnx(setup["base"], tmp_path / "slots",
                           ExportOptions(runtime_adapters={"first": str(setup["lora"]), "second": str(second)}))
    assert set(artifact.manifest.processing["generation"]["adapters"]) == {"first", "second"}
    model = load(artifact.path)
    merged_second = merge(setup["base"], tmp_path / "merged2", MergeOptions([str(second)]))
    for adapter, merged in ((None, setup["base"]), ("first", setup["merged"]), ("second", merged_second)):
        got = [g.tokens for g in model.generate(PROMPTS, max_new_tokens=10, adapter=adapter)]
        assert got == transformers_generate(merged, PROMPTS, 10), adapter
    # One more adapter, converted later for the same base and loaded beside the packaged ones.
    from edgeport.export.adapters import export_runtime_adapter

    third = export_runtime_adapter(artifact.path, str(train_lora(setup["base"], tmp_path / "lora3", seed=2)),
                                   tmp_path / "third.onnx_adapter")
    with_third = load(artifact.path, adapters={"third": str(third)})
    assert with_third.adapter_names == ["first", "second", "third"]
    assert with_third.generate(PROMPTS[0], max_new_tokens=6, adapter="third")[0].tokens != \
        with_third.generate(PROMPTS[0], max_new_tokens=6)[0].tokens


@pytest.mark.slow
def test_int4_of_a_trained_model_is_smaller_and_close(lms, tmp_path):
    """Stated bounds: INT4 at most 45% of the FP32 size (embeddings stay FP32), at least 60% of
    greedy tokens equal, perplexity within 25% (the recipe's default budget)."""
    from edgeport.quantize import QuantizeOptions, quantize

    base = build_lm(tmp_path / "wide", "llama", steps=200, hidden=128)
    fp32 = export_onnx(base, tmp_path / "fp32")
    int4 = quantize(fp32.path, tmp_path / "int4", QuantizeOptions(mode="int4"))
    ratio = int4.size_bytes() / fp32.size_bytes()
    generation = int4.manifest.parity["quantize"]["generation"]
    print(f"int4: size {ratio:.2f} of fp32, token agreement {generation['token_agreement']:.3f}, "
          f"perplexity {generation['perplexity_reference']:.2f} -> {generation['perplexity']:.2f}")
    assert ratio <= 0.45
    assert generation["token_agreement"] >= 0.6
    assert generation["perplexity_increase"] <= 0.25
    import onnx

    weight_matmuls = sum(n.op_type == "MatMul" for n in onnx.load(str(fp32.model_path)).graph.node)
    operators = int4.manifest.precision["operators"]
    assert int4.manifest.precision["bits"] == 4
    assert operators["MatMulNBits"] == weight_matmuls and "MatMul" not in operators      # every weight in 4 bits
    with pytest.raises(Exception, match="perplexity rose|greedy tokens differ"):
        quantize(fp32.path, tmp_path / "strict", QuantizeOptions(mode="int4", max_perplexity_increase=0.0,
                                                                 max_token_disagreement=0.0, block_size=128))
    assert not (tmp_path / "strict").exists()


# ------------------------------------------------------------------------ refusals


def test_bad_generation_inputs(lms):
    model = load(lms("llama")["onnx"].path)
    with pytest.raises(ModelInputError, match="empty"):
        model.generate([""])
    with pytest.raises(ModelInputError, match="past the model's context of 256"):
        model.generate(["Return the"], max_new_tokens=300)
    with pytest.raises(InvalidOptionError, match="temperature"):
        model.generate(["Return the"], temperature=float("nan"))
    with pytest.raises(AdapterError, match="no adapter named 'ghost'"):
        model.generate(["Return the"], adapter="ghost")
    with pytest.raises(ModelInputError, match="token ids must be in"):
        model.generate([[10**6]])


def test_an_encoder_artifact_cannot_generate(cli, onnx_artifacts):
    assert_fails(cli("run", onnx_artifacts["encoder"].path, "--prompt", "hello"), ModelInputError.exit_code,
                 "--prompt is for causal language models")


def test_an_adapter_for_another_base_is_refused(lms, tmp_path):
    setup = lms("llama")
    artifact = export_onnx(setup["base"], tmp_path / "slots", ExportOptions(runtime_adapters={"a": str(setup["lora"])}))
    other = build_lm(tmp_path / "other", "llama", steps=5, hidden=128)
    foreign = train_lora(other, tmp_path / "foreign", steps=2)
    with pytest.raises(AdapterError, match="another base|other modules|expects"):
        from edgeport.export.adapters import export_runtime_adapter

        export_runtime_adapter(artifact.path, str(foreign), tmp_path / "x.onnx_adapter")
    assert not (tmp_path / "x.onnx_adapter").exists()
    other_slots = export_onnx(other, tmp_path / "other-slots", ExportOptions(runtime_adapters={"f": str(foreign)}))
    with pytest.raises(AdapterError, match="another base"):
        load(artifact.path, adapters={"f": str(other_slots.path / "adapters" / "f.onnx_adapter")})
    # DoRA rescales each weight by a learned magnitude the slots cannot carry: its tokens differed, silently.
    import json
    import shutil

    dora = shutil.copytree(setup["lora"], tmp_path / "dora")
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterError, match="is a DoRA adapter"):
        export_runtime_adapter(artifact.path, str(dora), tmp_path / "x.onnx_adapter")
    # Weight-only quantization replaces the MatMuls the slots feed: every adapter failed to load after it.
    from edgeport.errors import UnsupportedModelError
    from edgeport.quantize import QuantizeOptions, quantize

    with pytest.raises(UnsupportedModelError, match="carries runtime LoRA adapters"):
        quantize(artifact.path, tmp_path / "int4", QuantizeOptions(mode="int4"))
    assert not (tmp_path / "int4").exists()


def test_the_builder_route_refuses_families_it_does_not_know(cli, tmp_path):
    """``--route genai`` is a promise about the runtime; without the builder's family it is refused
    before anything is exported (the default route takes the second route instead:
    tests/export/test_causal_routes.py)."""
    import transformers

    folder = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=512, n_embd=32, n_layer=1, n_head=2)).save_pretrained(folder)
    from llm_models import tokenizer

    tokenizer(folder)
    assert_fails(cli("export", "onnx", folder, "--route", "genai", "-o", tmp_path / "out"),
                 UnsupportedModelError.exit_code, "'GPT2LMHeadModel' is not a family", "--route onnx",
                 absent=tmp_path / "out")


def test_a_prompt_holding_the_pad_token_is_generated_as_written(lms):
    """GenAI masks every input token equal to its pad id; pad is often eos, and a prompt may
    hold it (chat templates write it between turns).  The tokens must still be transformers'."""
    import json

    import torch
    import transformers

    setup = lms("llama")
    path = setup["onnx"].path
    pad = json.loads((path / "genai_config.json").read_text())["model"]["pad_token_id"]
    model = load(path)
    prompts = [model.encode(PROMPTS[0]) + [pad], [pad] + model.encode(PROMPTS[1]) + [pad, pad]]
    source = transformers.AutoModelForCausalLM.from_pretrained(setup["merged"]).eval()
    expected = []
    with torch.no_grad():
        for ids in prompts:
            ids = torch.tensor([ids])
            out = source.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                  pad_token_id=0)[0, ids.shape[1]:].tolist()
            expected.append(out[:out.index(0)] if 0 in out else out)
    assert [model.generate([p], max_new_tokens=8)[0].tokens for p in prompts] == expected
    assert [g.tokens for g in model.generate(prompts, max_new_tokens=8)] == expected      # ragged, batched


def test_streamed_text_is_the_unstreamed_text(lms):
    """Text cut inside a multi-byte character (a byte-level tokenizer splits them) comes out
    whole, in streams as in decode()."""
    model = load(lms("llama")["onnx"].path)
    tokens = model.encode("naïve café → done; 日本語 ok")
    assert len(tokens) > len("naïve café → done; 日本語 ok".split())
    stream = model._text_stream([])
    assert "".join(stream.step(t) for t in tokens) == model.decode(tokens) == "naïve café → done; 日本語 ok"
    prompt = PROMPTS[2]
    streamed = "".join(piece.text for piece in model.stream(prompt, max_new_tokens=24))
    assert streamed == model.generate(prompt, max_new_tokens=24)[0].text


def test_a_stream_cut_inside_a_character_ends_as_decode_does(lms, monkeypatch):
    """Generation that stops after half a character's bytes: decode() shows U+FFFD there (as
    transformers does), and the stream must end with the same text."""
    model = load(lms("llama")["onnx"].path)
    tokens = model.encode("naïve café → done; 日本語")
    cut = next(k for k in range(1, len(tokens)) if model.decode(tokens[:k]).endswith("\ufffd"))
    monkeypatch.setattr(type(model), "_token_stream", lambda self, ids, sampling, adapter: iter(tokens[:cut]))
    streamed = "".join(piece.text for piece in model.stream("x", max_new_tokens=len(tokens)))
    assert streamed == model.decode(tokens[:cut]) and streamed.endswith("\ufffd")
