"""Real peft adapters trained for a few steps in the test (so their B matrices are not zero)."""

from __future__ import annotations

from pathlib import Path


def train_adapter(base: Path, out: Path, kind: str = "lora", targets=("query", "value"), steps: int = 5,
                  seed: int = 0, model_class: str = "AutoModel", r: int = 8) -> Path:
    import torch
    import transformers
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = getattr(transformers, model_class).from_pretrained(base)
    if kind == "lora":
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0)
    else:
        # A long schedule, of which the test runs the warm-up: every rank stays allocated.
        config = AdaLoraConfig(init_r=r, target_r=r // 2, target_modules=list(targets), total_step=100,
                               tinit=50, tfinal=10, lora_alpha=2 * r)
    peft_model = get_peft_model(model, config)
    peft_model.train()
    if (base / "tokenizer.json").is_file():
        from edgeport.data import stdlib_sentences

        tokenizer = transformers.AutoTokenizer.from_pretrained(base)
        inputs = dict(tokenizer(stdlib_sentences(8, split="calib"), padding=True, return_tensors="pt"))
    else:
        ids = torch.randint(3, model.config.vocab_size, (4, 10))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        optimizer.zero_grad()
        output = peft_model(**inputs)[0]
        loss = ((output - 0.5) ** 2).mean()
        loss.backward()
        optimizer.step()
        if kind == "adalora":
            peft_model.base_model.update_and_allocate(step)
    peft_model.eval()
    peft_model.save_pretrained(out)
    return out
