"""Tiny causal language models whose weights are not random: a byte-level BPE tokenizer and
Llama-, Qwen2- and Mistral-config models trained for a few seconds on standard-library
docstrings, and LoRA adapters trained on them."""

from __future__ import annotations

from pathlib import Path

CONFIGS = {
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "mistral": "MistralConfig",
}
CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _texts() -> list[str]:
    from edgeport.data import stdlib_sentences

    return stdlib_sentences(1600, split="calib")


def tokenizer(folder: Path, chat: bool = False):
    """A 512-token byte-level BPE trained on docstrings, saved as a fast tokenizer."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_texts(), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>", pad_token="<|pad|>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def build_lm(folder: Path, family: str = "llama", steps: int = 120, seed: int = 0, hidden: int = 64,
             chat: bool = False) -> Path:
    """Save a tiny ``family`` causal LM trained ``steps`` steps on docstrings into ``folder``."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    fast = tokenizer(folder, chat)
    config = getattr(transformers, CONFIGS[family])(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=0,
        pad_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    _train(model, fast, steps, lr=3e-3)
    model.eval().save_pretrained(folder)
    return folder


def _train(model, fast, steps: int, lr: float, parameters=None) -> None:
    import torch

    ids = [fast(t)["input_ids"][:48] for t in _texts()]
    optimizer = torch.optim.AdamW(parameters or model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = [ids[(step * 16 + i) % len(ids)] for i in range(16)]
        width = max(map(len, batch))
        x = torch.full((16, width), fast.pad_token_id)
        mask = torch.zeros((16, width), dtype=torch.long)
        for row, item in enumerate(batch):
            x[row, :len(item)] = torch.tensor(item)
            mask[row, :len(item)] = 1
        labels = x.clone()
        labels[mask == 0] = -100
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def train_lora(base: Path, out: Path, targets=("q_proj", "v_proj", "o_proj", "down_proj"), steps: int = 30,
               seed: int = 0, r: int = 8) -> Path:
    """A LoRA adapter trained ``steps`` steps (so B is not zero and the merge changes the model)."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    fast = transformers.AutoTokenizer.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                  lora_dropout=0.0, init_lora_weights=False))
    _train(peft_model, fast, steps, lr=1e-2, parameters=[p for p in peft_model.parameters() if p.requires_grad])
    peft_model.eval().save_pretrained(out)
    return out


def transformers_generate(folder: Path, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """Greedy continuations from transformers, one prompt at a time, cut at end of sequence."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    fast = transformers.AutoTokenizer.from_pretrained(folder)
    results = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([fast(prompt)["input_ids"]])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
            results.append(out[:out.index(0)] if 0 in out else out)
    return results
