"""Causal LM generation: time to first token and tokens per second of the exported FP32 and
INT4 models (ONNX Runtime GenAI) against transformers eager, on the same prompts, side by
side in interleaved rounds (`edgeport bench run --scenario generation --baseline torch`).

No real causal LM ships in a package here, so the model is the largest tiny Llama that
trains on this machine in about a minute (standard-library docstrings, byte-level BPE):
hidden 256, 4 layers, 8 heads (4 KV heads), vocabulary 2048.

    python benchmarks/generation_llm.py [--rounds 3] [--new-tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import llm_models  # noqa: E402  (the tests' tiny-LM helpers: the docstring training text)

HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, POSITIONS = 256, 4, 8, 4, 2048, 512


def build_model(folder: Path, seconds: float) -> dict:
    """A Llama of the sizes above, trained for ``seconds`` on docstrings."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(llm_models._texts(), trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>", pad_token="<|pad|>")
    fast.save_pretrained(folder)
    config = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=HIDDEN, intermediate_size=4 * HIDDEN,
                                      num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                      num_key_value_heads=KV_HEADS, max_position_embeddings=POSITIONS,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    ids = [fast(t)["input_ids"][:64] for t in llm_models._texts()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:              # batches of 16 sentences, cycling
        batch = [ids[(steps * 16 + i) % len(ids)] for i in range(16)]
        width = max(map(len, batch))
        x = torch.full((16, width), fast.pad_token_id)
        mask = torch.zeros((16, width), dtype=torch.long)
        for row, item in enumerate(batch):
            x[row, :len(item)], mask[row, :len(item)] = torch.tensor(item), 1
        loss = model(input_ids=x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    model.eval().save_pretrained(folder)
    return {"parameters": sum(p.numel() for p in model.parameters()), "train_steps": steps,
            "train_s": round(time.perf_counter() - start, 1), "final_loss": round(float(loss), 3)}


def edgeport(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edgeport", *map(str, args)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--train-seconds", type=float, default=60)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        model = build_model(work / "llama", args.train_seconds)
        edgeport("export", "onnx", work / "llama", "-o", work / "fp32", "--task", "text-generation")
        edgeport("quantize", work / "fp32", "-o", work / "int4", "--mode", "int4")
        edgeport("bench", "run", work / "fp32", work / "int4", "--scenario", "generation", "--baseline", "torch",
                 "--rounds", args.rounds, "--max-new-tokens", args.new_tokens, "--json", work / "report.json")
        report = json.loads((work / "report.json").read_text())
    from edgeport.speed import machine_info

    cpu = machine_info()["cpu"]
    rows = {row["variant"]: row for row in report["results"]}
    baseline = next(name for name in rows if name.startswith("torch"))
    sizes = {v["name"]: v.get("size_bytes") for v in report["variants"]}
    print(f"\nTiny Llama ({model['parameters'] / 1e6:.1f} M parameters, trained {model['train_steps']} steps in "
          f"{model['train_s']} s, final loss {model['final_loss']}); "
          f"{rows[baseline]['params']['prompts']} prompts x {args.new_tokens} new tokens, greedy, batch 1; {cpu}")
    print("variant | TTFT p50 ms | decode tokens/s | tokens/s vs transformers | TTFT vs transformers | size MB | "
          "token agreement with FP32")
    for name, row in rows.items():
        parity = report["parity"].get(name, {}).get("generation", {})
        size = sizes.get(name)
        print(f"{name} | {row['ttft_ms']['p50_ms']:.2f} | {row['decode_tokens_per_s']:.1f} | "
              f"{row['decode_tokens_per_s'] / rows[baseline]['decode_tokens_per_s']:.2f}x | "
              f"{rows[baseline]['ttft_ms']['p50_ms'] / row['ttft_ms']['p50_ms']:.2f}x | "
              f"{size / 1e6 if size else float('nan'):.1f} | {parity.get('token_agreement', '-')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "model": model, "report": report}, indent=1))


if __name__ == "__main__":
    main()
