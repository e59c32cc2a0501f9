"""The second causal-LM route (edgeport's own KV-cache export and generation loop): every
family in tests/causal_families.py exports and generates what transformers generates, the
route is chosen and recorded, and what cannot work is refused with the reason."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest
from causal_families import FAMILIES, REFUSED, build, wordpiece_tokenizer
from helpers import assert_fails

from edgeport.errors import InvalidOptionError, ModelInputError, SourceError, UnsupportedModelError
from edgeport.export.onnx import ExportOptions, export_onnx
from edgeport.export.packing import pack_sibling_matmuls
from edgeport.runtime import load

PROMPT_LENGTHS = (5, 17)
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from llm_models import tokenizer

    folder = tmp_path_factory.mktemp("bpe")
    tokenizer(folder)
    return folder


def transformers_greedy(folder, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers' own greedy ``generate`` from token ids, each cut at its first
    end-of-sequence."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    answers = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=1)[0, len(prompt):].tolist()
        answers.append(next((out[:i] for i, t in enumerate(out) if t in eos), out))
    return answers


def prompts(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(7)
    return [rng.integers(2, vocab, size=length).tolist() for length in PROMPT_LENGTHS]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_generates_what_transformers_generates(family, bpe, tmp_path):
    source = build(tmp_path / family, family, bpe)
    artifact = export_onnx(source, tmp_path / "out", ExportOptions(route="onnx", exporter="torchscript"))
    generation = artifact.manifest.processing["generation"]
    assert generation["route"] == "onnx-torchscript" and generation["family"] == family
    assert artifact.manifest.parity["export"]["passed"]
    assert pack_sibling_matmuls(onnx.load(str(artifact.model_path))) == 0, "sibling projections left unpacked"
    expected = transformers_greedy(source, prompts(512), NEW_TOKENS)
    with load(artifact.path, device="cpu") as model:
        for prompt, tokens in zip(prompts(512), expected):
            assert model.generate(prompt, max_new_tokens=NEW_TOKENS)[0].tokens == tokens, \
                f"{family}, prompt of {len(prompt)} tokens"


def test_auto_takes_the_second_route_for_a_family_the_builder_does_not_know(bpe, tmp_path, cli):
    """GPT-2 through the default route: the dynamo graph; the builder's refusal is recorded;
    ragged batches, streaming, sampling and stop strings work on the new loop."""
    source = build(tmp_path / "gpt2", "gpt2", bpe)
    result = cli("export", "onnx", source, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    artifact_path = tmp_path / "out"
    manifest = json.loads((artifact_path / "edgeport.json").read_text())
    assert manifest["graph"]["format"] == "onnx-decoder"
    assert manifest["processing"]["generation"]["route"] == "onnx-dynamo"
    routes = manifest["lineage"][-1]["routes"]
    assert routes[0]["route"] == "genai-builder" and not routes[0]["ok"] and "not a family" in routes[0]["reason"]
    assert routes[-1] == {"route": "onnx-dynamo", "ok": True}
    with load(artifact_path, device="cpu") as model:
        ragged = prompts(512)
        batch = model.generate(ragged, max_new_tokens=NEW_TOKENS)
        assert [g.tokens for g in batch] == transformers_greedy(source, ragged, NEW_TOKENS)
        text = model.generate("Return the", max_new_tokens=8)[0]
        assert "".join(piece.text for piece in model.stream("Return the", max_new_tokens=8)) == text.text
        drawn = [model.generate("Return the", max_new_tokens=8, temperature=0.9, top_k=20, top_p=0.9, seed=s)[0].tokens
                 for s in (1, 1, 2)]
        assert drawn[0] == drawn[1]
        if len(text.text) > 3:
            stop = text.text[2:4]
            stopped = model.generate("Return the", max_new_tokens=8, stop=[stop])[0]
            assert stop not in stopped.text and text.text.startswith(stopped.text)
    run = cli("run", artifact_path, "--prompt", "Return the", "--max-new-tokens", "4")
    assert run.exit_code == 0, run.output


def test_the_default_graph_shares_key_value_heads_and_packs_projections(bpe, tmp_path):
    """A grouped-query Llama (4 heads, 2 key/value heads) through the default exporter: the
    attention takes the key/value heads as they are (no repeat_kv Expand per layer), the
    q/k/v and the gate/up projections are one MatMul each, and a ragged batch still gets
    transformers' greedy tokens."""
    source = build(tmp_path / "llama", "llama", bpe)
    artifact = export_onnx(source, tmp_path / "out", ExportOptions(route="onnx"))
    assert artifact.manifest.processing["generation"]["route"] == "onnx-dynamo"
    kinds = collections.Counter(node.op_type for node in onnx.load(str(artifact.model_path)).graph.node)
    layers = 2
    assert kinds["MatMul"] == 4 * layers + 1, kinds        # q|k|v, o, gate|up, down per layer; the LM head
    assert kinds["Expand"] < 2 * layers, kinds               # repeat_kv would add two per layer
    with load(artifact.path, device="cpu") as model:
        assert [g.tokens for g in model.generate(prompts(512), max_new_tokens=NEW_TOKENS)] == \
            transformers_greedy(source, prompts(512), NEW_TOKENS)


def test_a_gpt2_with_a_bert_wordpiece_tokenizer_answers_a_text_prompt(tmp_path):
    """GPT2LMHeadModel + BertTokenizer, as many Chinese GPT-2 checkpoints ship: ONNX Runtime
    GenAI cannot read the tokenizer; the second route encodes and decodes through
    ``tokenizers``.  BERT's special tokens close the text with [SEP], after which a causal LM
    would be continuing past an end marker, so prompts are encoded without them."""
    import torch
    import transformers

    words = tmp_path / "wordpiece"
    fast = wordpiece_tokenizer(words)
    source = build(tmp_path / "gpt2", "gpt2", words)
    artifact = export_onnx(source, tmp_path / "out", ExportOptions(exporter="torchscript"))
    assert artifact.manifest.processing["generation"]["route"] == "onnx-torchscript"
    text = "return the value of the attribute"
    with load(artifact.path, device="cpu") as model:
        answer = model.generate(text, max_new_tokens=NEW_TOKENS)[0]
    ids = fast(text, add_special_tokens=False)["input_ids"]
    assert model.encode(text) == ids and fast.unk_token_id not in ids
    reference = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    with torch.no_grad():
        prompt = torch.tensor([ids])
        expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                      do_sample=False, pad_token_id=0)[0, prompt.shape[1]:].tolist()
    assert answer.tokens == expected[:len(answer.tokens)] and answer.tokens
    assert answer.text == fast.decode(answer.tokens, skip_special_tokens=True) and "##" not in answer.text


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_families_without_a_key_value_cache_are_refused_with_the_reason(family, bpe, tmp_path, cli):
    source = build(tmp_path / family, family, bpe, REFUSED)
    assert_fails(cli("export", "onnx", source, "-o", tmp_path / "out"), UnsupportedModelError.exit_code,
                 "not per-layer keys and values", "Mamba", absent=tmp_path / "out")


def test_an_encoder_given_task_text_generation_is_told_it_is_not_a_causal_lm(cli, tmp_path, tiny_models):
    source = tiny_models("bert", "feature-extraction")
    assert_fails(cli("export", "onnx", source, "--task", "text-generation", "-o", tmp_path / "out"),
                 UnsupportedModelError.exit_code, "keeps no key/value cache: it is not a causal LM",
                 absent=tmp_path / "out")


def test_a_builder_failure_falls_through_to_the_second_route(bpe, tmp_path, monkeypatch):
    """The builder fails (here: it raises on its own model) and the export goes on with the
    second route, recording why the first was passed over."""
    import edgeport.export.llm as llm
    from edgeport.errors import ExportError

    def broken_builder(*args, **kwargs):
        raise ExportError("the model builder failed: GroupQueryAttention cannot run this graph")

    monkeypatch.setattr(llm, "build_with_genai", broken_builder)
    source = build(tmp_path / "llama", "llama", bpe)
    artifact = export_onnx(source, tmp_path / "out", ExportOptions(exporter="torchscript"))
    routes = artifact.manifest.lineage[-1]["routes"]
    assert routes == [{"route": "genai-builder", "ok": False,
                       "reason": "the model builder failed: GroupQueryAttention cannot run this graph"},
                      {"route": "onnx-torchscript", "ok": True}]


def test_when_every_route_builds_but_none_matches_it_is_a_parity_failure(bpe, tmp_path, monkeypatch, cli):
    """Exit 9 (ParityError), as the encoder route exits when no graph matches PyTorch; a route
    that could not be built at all is an export failure (exit 8)."""
    import edgeport.export.llm as llm
    from edgeport.errors import ExportError, ParityError

    def differs(candidate, *args):
        raise ParityError(f"the {candidate.route} model's greedy tokens differ from transformers' on 2 of 4 prompts")

    monkeypatch.setattr(llm, "_verify", differs)
    source = build(tmp_path / "llama", "llama", bpe)
    assert_fails(cli("export", "onnx", source, "-o", tmp_path / "out", "--exporter", "torchscript"),
                 ParityError.exit_code, "no route's tokens matched", "greedy tokens differ", absent=tmp_path / "out")

    def breaks(*args, **kwargs):
        raise ExportError("the model builder failed")

    monkeypatch.setattr(llm, "build_with_genai", breaks)
    assert_fails(cli("export", "onnx", source, "-o", tmp_path / "out", "--exporter", "torchscript"),
                 ExportError.exit_code, "no route exported", absent=tmp_path / "out")


def test_the_second_route_refuses_what_it_cannot_do(bpe, tmp_path, cli):
    source = build(tmp_path / "gpt2", "gpt2", bpe)
    out = tmp_path / "out"
    assert_fails(cli("export", "onnx", source, "--route", "onnx", "--precision", "int4", "-o", out),
                 InvalidOptionError.exit_code, "export fp32, then 'edgeport quantize --mode int4'", absent=out)
    assert_fails(cli("export", "onnx", source, "--route", "onnx", "--runtime-adapter", f"a={source}", "-o", out),
                 InvalidOptionError.exit_code, "--runtime-adapter needs ONNX Runtime GenAI", absent=out)


def test_a_repetition_penalty_in_generation_config_is_noted_not_a_failure(bpe, tmp_path):
    """Instruct checkpoints often ship repetition_penalty / no_repeat_ngram_size: transformers'
    generate() applies them, edgeport's runtime does not; parity compares plain greedy tokens
    and the export says what it did not apply."""
    import torch
    import transformers

    source = build(tmp_path / "gpt2", "gpt2", bpe)
    settings = transformers.GenerationConfig.from_pretrained(source)
    settings.repetition_penalty, settings.no_repeat_ngram_size = 1.5, 2
    settings.save_pretrained(source)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    ids = torch.tensor([prompts(512)[1]])
    with torch.no_grad():
        penalized = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=1)
        plain = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=1,
                               repetition_penalty=1.0, no_repeat_ngram_size=0)
    assert penalized.tolist() != plain.tolist()           # the settings matter for this model
    artifact = export_onnx(source, tmp_path / "out", ExportOptions(route="onnx", exporter="torchscript"))
    assert artifact.manifest.parity["export"]["passed"]
    assert any("repetition_penalty=1.5, no_repeat_ngram_size=2" in note
               for note in artifact.manifest.lineage[-1]["notes"])
    with load(artifact.path, device="cpu") as exported:
        assert exported.generate(prompts(512)[1], max_new_tokens=NEW_TOKENS)[0].tokens == \
            plain[0, ids.shape[1]:].tolist()


CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('roles must be user or assistant') }}{% endif %}\n"
        "<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_chat_templates_render_as_transformers_renders_them(bpe, tmp_path):
    """Special tokens, transformers' whitespace settings, and raise_exception as an error
    line (it was a NameError: a 500 from the server)."""
    import transformers

    source = build(tmp_path / "gpt2", "gpt2", bpe)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(source)
    messages = [{"role": "user", "content": "Return the value"}, {"role": "assistant", "content": "It is."},
                {"role": "user", "content": "And now?"}]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    artifact = export_onnx(source, tmp_path / "out", ExportOptions(route="onnx", exporter="torchscript"))
    with load(artifact.path, device="cpu") as model:
        assert model.format_chat(messages) == expected
        with pytest.raises(ModelInputError, match="roles must be user or assistant"):
            model.format_chat([{"role": "system", "content": "Be brief."}] + messages)


def test_a_cancelled_or_closed_stream_lets_go_of_the_model_at_once(bpe, tmp_path):
    """What a server does for a client that went away: cancel() ends the stream at the next
    token; close() ends it where it stands; either way the model is free for the next."""
    import threading

    source = build(tmp_path / "gpt2", "gpt2", bpe)
    artifact = export_onnx(source, tmp_path / "out", ExportOptions(route="onnx", exporter="torchscript"))
    with load(artifact.path, device="cpu") as model:
        stream = model.stream(prompts(512)[0], max_new_tokens=40)
        next(stream)
        stream.cancel()
        assert list(stream) == [] and len(stream.tokens) == 1 and stream.finish_reason == "cancelled"
        stream = model.stream(prompts(512)[0], max_new_tokens=40)
        next(stream)
        stream.close()
        done = []
        worker = threading.Thread(target=lambda: done.append(model.generate(prompts(512)[0], max_new_tokens=4)))
        worker.start()
        worker.join(timeout=60)
        assert done and len(done[0][0].tokens) <= 4


def test_short_contexts_lower_the_check_and_long_prompts_are_refused(bpe, tmp_path):
    """A 24-position model: the export check cuts its prompts to fit (it does not refuse);
    a prompt longer than the context is refused when generating."""
    import causal_families

    table = {"gpt2": dict(causal_families.FAMILIES["gpt2"], n_positions=24)}
    source = build(tmp_path / "gpt2", "gpt2", bpe, table)
    artifact = export_onnx(source, tmp_path / "out", ExportOptions(exporter="torchscript"))
    assert artifact.manifest.processing["generation"]["context_length"] == 24
    assert artifact.manifest.parity["export"]["generation"]["new_tokens"] <= 12
    with load(artifact.path, device="cpu") as model:
        with pytest.raises(ModelInputError, match="24"):
            model.generate(list(range(2, 40)), max_new_tokens=4)


def test_a_seq2seq_model_and_a_damaged_tokenizer_get_one_error_line(bpe, tmp_path, cli):
    import shutil

    import transformers

    t5 = tmp_path / "t5"
    config = transformers.T5Config(vocab_size=512, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                                   decoder_start_token_id=0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(t5)
    for item in bpe.iterdir():
        shutil.copy(item, t5)
    assert_fails(cli("export", "onnx", t5, "--task", "text-generation", "-o", tmp_path / "a"),
                 UnsupportedModelError.exit_code, "is not a causal LM", absent=tmp_path / "a")
    source = build(tmp_path / "gpt2", "gpt2", bpe)
    (source / "tokenizer.json").write_text('{"version": "1.0", "truncated')
    assert_fails(cli("export", "onnx", source, "-o", tmp_path / "b"), SourceError.exit_code,
                 "cannot load the tokenizer", absent=tmp_path / "b")


def test_a_pad_token_outside_the_vocabulary_falls_back_to_end_of_sequence(bpe, tmp_path):
    """Without tokenizer_config.json transformers picks GPT-NeoX's tokenizer class, which adds a
    <|padding|> token one past the model's 512 ids: padding with it would index past the
    embeddings."""
    import transformers

    source = build(tmp_path / "neox", "gpt_neox", bpe)
    (source / "tokenizer_config.json").unlink()
    assert transformers.AutoTokenizer.from_pretrained(source).pad_token_id >= 512
    artifact = export_onnx(source, tmp_path / "out", ExportOptions(route="onnx", exporter="torchscript"))
    assert artifact.manifest.processing["pad_id"] < 512 and artifact.manifest.parity["export"]["passed"]


def test_a_config_with_a_wrong_field_type_is_a_source_error(bpe, tmp_path, cli):
    source = build(tmp_path / "gpt2", "gpt2", bpe)
    config = json.loads((source / "config.json").read_text())
    config["n_layer"] = "two"
    (source / "config.json").write_text(json.dumps(config))
    assert_fails(cli("export", "onnx", source, "-o", tmp_path / "out"), SourceError.exit_code, "config.json",
                 absent=tmp_path / "out")


def test_int4_and_int8_weight_only_on_the_second_route(bpe, tmp_path, cli):
    """GPT-2's Conv1D layers come out of the exporter as Gemm; they are quantized too."""
    source = build(tmp_path / "gpt2", "gpt2", bpe)
    artifact = export_onnx(source, tmp_path / "fp32", ExportOptions(exporter="torchscript"))
    for mode in ("int4", "int8-weight-only"):
        result = cli("quantize", artifact.path, "--mode", mode, "-o", tmp_path / mode)
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp_path / mode / "edgeport.json").read_text())
        assert manifest["graph"]["format"] == "onnx-decoder"
        assert manifest["precision"]["operators"].get("MatMulNBits", 0) >= 8
        assert "Gemm" not in manifest["precision"]["operators"]
        # Every weight MatMul was quantized; the MatMuls left are attention's, on activations
        assert manifest["precision"]["kept_fp32_nodes"] == [] and manifest["precision"]["operators"]["MatMul"] == 4
        assert manifest["parity"]["quantize"]["passed"]
        with load(tmp_path / mode, device="cpu") as model:
            assert model.generate("Return the", max_new_tokens=4)[0].tokens
    # verify compares causal LMs by generation: the quantized one against its source passes
    # on the thresholds it was made with, and on prompts of the user's own.
    checked = cli("verify", tmp_path / "int8-weight-only", "--reference", artifact.path, "--json")
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.output)
    assert report["passed"] and report["samples"] == 8 and "max_token_disagreement" in report["thresholds"]
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("Return the value of\nRaise an error if\n")
    checked = cli("verify", artifact.path, "--reference", artifact.path, "--data", prompts_file)
    assert checked.exit_code == 0 and "2 prompts from" in checked.output, checked.output
    assert_fails(cli("verify", artifact.path, "--reference", artifact.path, "--max-abs-error", "0.1"), 2,
                 "only --min-cosine")
    assert_fails(cli("quantize", artifact.path, "--mode", "int4", "--max-token-disagreement", "2", "-o",
                     tmp_path / "x"), 2, "a share of tokens, between 0 and 1", absent=tmp_path / "x")


def test_a_short_context_model_is_checked_within_its_context(bpe, tmp_path, cli):
    """A context of 24 tokens: quantize, verify and bench fit their checks into it, as the
    export does (prompts cut to half the context, new tokens as many as still fit)."""
    from causal_families import GPT2_SIZES

    source = build(tmp_path / "short", "gpt2", bpe, table={"gpt2": dict(own_sizes=True, **{**GPT2_SIZES,
                                                                                          "n_positions": 24})})
    artifact = export_onnx(source, tmp_path / "fp32", ExportOptions(exporter="torchscript"))
    assert artifact.manifest.processing["generation"]["context_length"] == 24
    result = cli("quantize", artifact.path, "--mode", "int8-weight-only", "-o", tmp_path / "q8")
    assert result.exit_code == 0, result.output
    checked = cli("verify", tmp_path / "q8", "--reference", artifact.path)
    assert checked.exit_code == 0, checked.output
    assert "max_token_disagreement <= " in checked.output and "max_perplexity_increase <= " in checked.output
    # bench cuts its prompts to half the context, and refuses requests past it before measuring
    assert_fails(cli("bench", "run", artifact.path, "--scenario", "generation", "--max-new-tokens", "300"),
                 InvalidOptionError.exit_code, "context of 24 tokens leaves room for 12 new tokens")
    benched = cli("bench", "run", artifact.path, "--scenario", "generation", "--max-new-tokens", "8", "--rounds", "1",
                  "--no-memory")
    assert benched.exit_code == 0, benched.output
    _tokenizing_lets_other_threads_run(artifact.path)


def _tokenizing_lets_other_threads_run(path) -> None:
    """A server tokenizes a long prompt in a worker thread; that helps its other requests (health
    checks too) only if the tokenizer lets go of the GIL meanwhile.  Measured as the longest gap
    of a 10 ms ticker thread against the whole tokenization: held, they would be equal."""
    import threading
    import time

    model = load(path)
    text = "Return the number of items in the container. " * 40_000          # about 1.8 MB
    gaps, done = [], threading.Event()

    def tick():
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    start = time.perf_counter()
    ids = model.encode(text)
    took = time.perf_counter() - start
    done.set()
    ticker.join()
    assert len(ids) > 100_000 and took > 0.3
    assert max(gaps) < 0.5 * took, (max(gaps), took)


def test_options_a_causal_lm_has_no_use_for_are_refused(bpe, tmp_path, cli, onnx_artifacts):
    source = build(tmp_path / "llama", "llama", bpe)
    gpt2 = build(tmp_path / "gpt2", "gpt2", bpe)
    out = tmp_path / "out"
    assert_fails(cli("export", "onnx", source, "-o", out, "--opset", "14", "--no-validate"),
                 InvalidOptionError.exit_code, "--opset, --no-validate do not apply to causal LMs", absent=out)
    assert_fails(cli("export", "onnx", source, "-o", out, "--runtime-adapter", f"a={tmp_path}", "--precision", "int4"),
                 InvalidOptionError.exit_code, "--runtime-adapter needs --precision fp32", absent=out)
    assert_fails(cli("export", "onnx", gpt2, "-o", out, "--runtime-adapter", f"a={tmp_path}"),
                 UnsupportedModelError.exit_code, "merge the adapter with --adapter", absent=out)
    assert_fails(cli("export", "executorch", source, "-o", out), UnsupportedModelError.exit_code,
                 "export with their KV cache through 'edgeport export onnx'", absent=out)
    # run: generation options on an encoder, and encoder options with prompts (checked before loading)
    assert_fails(cli("run", onnx_artifacts["encoder"].path, "--text", "a", "--max-new-tokens", "5", "--seed", "3"),
                 InvalidOptionError.exit_code, "--max-new-tokens, --seed apply to causal LMs' --prompt only")
    assert_fails(cli("run", tmp_path, "--prompt", "hi", "--batch-size", "4"), InvalidOptionError.exit_code,
                 "--batch-size")
    assert_fails(cli("run", tmp_path, "--prompt", "hi", "--seed", "4"), InvalidOptionError.exit_code,
                 "--seed seeds sampling")
