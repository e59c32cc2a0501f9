"""Causal-LM families built tiny from their transformers configs (random weights, a tokenizer
saved beside them, as real checkpoints ship): the table tests/export/test_causal_routes.py
exports through edgeport's own route.

Each entry is the config's keyword arguments; ``COMMON`` is merged in unless the family names
its sizes itself (``own_sizes``: GPT-2-style configs spell them n_embd, n_layer, ...).  The
weights are drawn with initializer_range 0.1 instead of the default 0.02, which makes every
random model repeat one token and would let a broken cache pass.
"""

from __future__ import annotations

import shutil
from pathlib import Path

VOCAB = 512        # the tests' byte-level BPE (llm_models.tokenizer)
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=256)
GPT2_SIZES = dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256)

FAMILIES: dict[str, dict] = {
    # Llama-like, with grouped-query attention, sliding windows or their own norms
    "llama": dict(num_key_value_heads=2),
    "mistral": dict(num_key_value_heads=2, sliding_window=8),
    "qwen2": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=16),
    "gemma": dict(num_key_value_heads=1, head_dim=16),
    "gemma2": dict(num_key_value_heads=2, head_dim=16, sliding_window=8),
    "gemma3_text": dict(num_key_value_heads=2, head_dim=16, sliding_window=8),
    "granite": dict(num_key_value_heads=2),
    "smollm3": dict(num_key_value_heads=2),
    "stablelm": dict(num_key_value_heads=2),
    "phi": dict(),
    "phi3": dict(num_key_value_heads=2),
    "olmo": dict(),
    "olmo2": dict(num_key_value_heads=2),
    "starcoder2": dict(num_key_value_heads=2, sliding_window=8),
    "cohere": dict(num_key_value_heads=2),
    "glm": dict(num_key_value_heads=2, head_dim=16),
    "helium": dict(num_key_value_heads=2, head_dim=16),
    "nemotron": dict(num_key_value_heads=2),
    "persimmon": dict(),
    "biogpt": dict(),
    # GPT-2 lineage and other pre-Llama layouts
    "gpt2": dict(own_sizes=True, **GPT2_SIZES),
    "gpt_bigcode": dict(own_sizes=True, multi_query=True, **GPT2_SIZES),
    "gptj": dict(own_sizes=True, rotary_dim=8, **GPT2_SIZES),
    "codegen": dict(own_sizes=True, rotary_dim=8, n_ctx=256, **GPT2_SIZES),
    "gpt_neox": dict(),
    "gpt_neo": dict(own_sizes=True, vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4,
                    max_position_embeddings=256, attention_types=[[["global", "local"], 1]], window_size=8),
    "opt": dict(own_sizes=True, vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=256),
    "bloom": dict(own_sizes=True, vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4),
    "falcon": dict(own_sizes=True, vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   new_decoder_architecture=True, num_kv_heads=2),
    "mpt": dict(own_sizes=True, vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=256,
                expansion_ratio=2),
    "xglm": dict(own_sizes=True, vocab_size=VOCAB, d_model=64, num_layers=2, attention_heads=4, ffn_dim=128,
                 max_position_embeddings=256),
    # mixture of experts (exported with every expert computed densely)
    "mixtral": dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64),
    "qwen3_moe": dict(num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32),
    "olmoe": dict(num_key_value_heads=4, num_experts=4, num_experts_per_tok=2),
}
# Families edgeport refuses, with the reason it gives (the README lists them).
REFUSED = {
    "mamba": dict(own_sizes=True, vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, state_size=8, expand=2,
                  conv_kernel=4),
}


def config(family: str, table: dict = FAMILIES):
    import transformers

    spec = dict(table[family])
    sizes = {} if spec.pop("own_sizes", False) else dict(COMMON)
    built = transformers.AutoConfig.for_model(family, **{**sizes, **spec})
    for name in ("initializer_range", "init_std"):
        if hasattr(built, name):
            setattr(built, name, 0.1)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):   # ids the 512-token vocabulary has
        if getattr(built, name, None) is not None:
            setattr(built, name, 0 if name != "pad_token_id" else 1)
    return built


def build(folder: Path, family: str, tokenizer_folder: Path, table: dict = FAMILIES, seed: int = 0) -> Path:
    """Save a random tiny ``family`` causal LM into ``folder``, with the tokenizer files of
    ``tokenizer_folder`` beside it."""
    import torch
    import transformers

    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config(family, table)).eval()
    model.save_pretrained(folder)
    for item in tokenizer_folder.iterdir():
        shutil.copyfile(item, folder / item.name)
    return folder


def wordpiece_tokenizer(folder: Path):
    """A BERT WordPiece tokenizer over docstring words (the way many Chinese GPT-2 checkpoints
    ship: GPT2LMHeadModel with a BertTokenizer), saved as a fast tokenizer."""
    import collections

    import transformers

    from edgeport.data import stdlib_sentences

    counts = collections.Counter(word for text in stdlib_sentences(400, split="calib")
                                 for word in text.lower().replace(".", " ").replace(",", " ").split())
    suffixes = ["##s", "##ed", "##ing", "##er", "##ly", "##al"]
    words = [w for w, _ in counts.most_common(VOCAB - 5 - len(suffixes)) if w.isalpha()] + suffixes
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n", encoding="utf-8")
    fast = transformers.BertTokenizerFast(vocab=str(vocab))
    fast.save_pretrained(folder)
    return fast
