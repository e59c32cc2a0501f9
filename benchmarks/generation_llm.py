"""Causal-LM generation speed, side by side: edgeport's two export routes against transformers
eager and against llama.cpp on the same weights, with time to first token (TTFT), decode
tokens per second and paired 95% intervals.

What is measured, in two `edgeport bench` runs (run_bench in Python, so that llama.cpp can
join as extra variants; interleaved rounds, every variant on the same thread count):

* A tiny Llama, exported by both routes: ONNX Runtime GenAI's model builder (``genai``) and
  edgeport's own torch.onnx decoder with KV cache (``onnx``); each in FP32, INT4 and INT8
  weight-only (``edgeport quantize``, MatMulNBits), plus GenAI FP16 as the 16-bit candidate;
  against transformers eager FP32 and llama.cpp F16, Q8_0 and Q4_0 GGUFs of the same folder
  (benchmarks/llamacpp.py; skipped, with the reason, when llama-cpp-python is missing).
* A GPT-2 of similar size, same tokenizer and training: the second route (FP32, INT4)
  against transformers eager (the GenAI builder does not know GPT-2).

The pairings printed at the end: second route FP32 vs GenAI FP32 decode (target: within
1.3x, a ratio >= 0.77), and each precision tier against its llama.cpp counterpart (INT4 vs
Q4_0, INT8 weight-only vs Q8_0, 16-bit vs F16). Their intervals come from the paired rounds
(the bench's own per-request timings, regrouped by round), not from two independent medians.

No real causal LM ships in a package here, so the models are the largest tiny ones that train
on this machine in about a minute each (standard-library docstrings, byte-level BPE):
hidden 256, 4 layers, 8 heads, vocabulary 2048.

    python benchmarks/generation_llm.py [--rounds 5] [--new-tokens 128] [--threads 2]
        [--train-seconds 60] [--skip-llamacpp] [--spinning] [--json out.json]

Smoke run (minutes, most of it the exports):
    python benchmarks/generation_llm.py --rounds 1 --new-tokens 16 --train-seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import llm_models  # the tests' tiny-LM helpers: the docstring training text

HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, POSITIONS = 256, 4, 8, 4, 2048, 512
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "f16c",
             "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")
FP16_NOTE = ("ONNX Runtime's CPU provider has few fp16 kernels on x86 (it inserts Casts to run most "
             "fp16 nodes in fp32), so an fp16 graph on an x86 CPU is a size tier more than a speed tier")
TARGET_RATIO = 1 / 1.3          # second route decode / GenAI decode: "within 1.3x"


# ------------------------------------------------------------------------------- models

def train_tokenizer(folder: Path):
    """A byte-level BPE of VOCAB ids trained on docstrings; the Llama and GPT-2 share it, so
    their prompts are the same ids."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(llm_models._texts(), trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>", pad_token="<|pad|>")
    fast.save_pretrained(folder)
    return fast


def model_config(family: str, vocab: int):
    """Llama (GQA, 4 KV heads) or GPT-2 of about the same size: hidden 256, 4 layers, 8 heads."""
    import transformers

    special = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    if family == "llama":
        return transformers.LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=4 * HIDDEN,
                                        num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                        num_key_value_heads=KV_HEADS, max_position_embeddings=POSITIONS,
                                        tie_word_embeddings=False, **special)
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                       n_positions=POSITIONS, **special)
    raise ValueError(family)


def build_model(folder: Path, seconds: float, family: str = "llama") -> dict:
    """A ``family`` model of the sizes above, trained for ``seconds`` on docstrings (batches of
    16 sentences of up to 64 tokens, cycling), saved with its tokenizer as a HF folder.
    Trained rather than random so greedy decoding is realistic and parity is meaningful."""
    import torch
    import transformers

    folder.mkdir(parents=True)
    fast = train_tokenizer(folder)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(model_config(family, len(fast)))
    ids = [fast(t)["input_ids"][:64] for t in llm_models._texts()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    start, steps, loss = time.perf_counter(), 0, float("nan")
    while time.perf_counter() - start < seconds or steps == 0:
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
    return {"family": family, "parameters": sum(p.numel() for p in model.parameters()), "train_steps": steps,
            "train_s": round(time.perf_counter() - start, 1), "final_loss": round(float(loss.detach()), 3)}


# ---------------------------------------------------------------------------- artifacts

def edgeport(*args) -> tuple[bool, str]:
    """Run an edgeport CLI command; (succeeded, the last lines of its output). Failures are
    reported and the variant dropped, so one broken route does not hide the others."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "edgeport", *map(str, args)], capture_output=True, text=True,
                         check=False)
    noise = ("torchao", "_pytree.py", "\x1b[m")     # library warnings every edgeport process prints
    lines = [line for line in (run.stdout + run.stderr).strip().splitlines() if not any(n in line for n in noise)]
    tail = "\n".join(line[:400] for line in lines[-5:])
    print(f"  edgeport {' '.join(str(a) if '/' not in str(a) else Path(a).name for a in args)}: "
          f"{'ok' if run.returncode == 0 else f'FAILED (exit {run.returncode})'} in {time.perf_counter() - start:.0f} s")
    if run.returncode != 0:
        print("    " + tail.replace("\n", "\n    "))
    return run.returncode == 0, tail


def export_variants(work: Path, plan: list[tuple[str, list]]) -> tuple[list[Path], dict]:
    """Build each (name, command) of ``plan`` into work/name; commands may name earlier
    artifacts by name. Returns the artifacts that exist, and the reasons of those that don't."""
    built, skipped = [], {}
    for name, command in plan:
        out = work / name
        sources = [a[1:] for a in command if isinstance(a, str) and a.startswith("@")]
        missing = [s for s in sources if not (work / s).exists()]
        if missing:
            skipped[name] = f"its source {missing[0]} was not built"
            continue
        resolved = [work / a[1:] if isinstance(a, str) and a.startswith("@") else a for a in command]
        ok, tail = edgeport(*resolved, "-o", out)
        if ok:
            built.append(out)
        else:
            skipped[name] = tail.splitlines()[-1] if tail else "failed"
    return built, skipped


def llama_plan(hf: Path) -> list[tuple[str, list]]:
    """Both routes' FP32, their INT4 and INT8 weight-only, and the 16-bit candidates: GenAI's
    builder in FP16, and the second route's FP32 converted by ``quantize --mode fp16`` (that
    route exports FP32 only). "@name" is an earlier artifact."""
    export = ["export", "onnx", hf, "--task", "text-generation"]
    plan = [("genai-fp32", [*export, "--route", "genai", "--precision", "fp32"]),
            ("onnx-fp32", [*export, "--route", "onnx"])]
    for route in ("genai", "onnx"):
        plan += [(f"{route}-int4", ["quantize", f"@{route}-fp32", "--mode", "int4"]),
                 (f"{route}-int8wo", ["quantize", f"@{route}-fp32", "--mode", "int8-weight-only"])]
    plan += [("genai-fp16", [*export, "--route", "genai", "--precision", "fp16"]),
             ("onnx-fp16", ["quantize", "@onnx-fp32", "--mode", "fp16"])]
    return plan


def gpt2_plan(hf: Path) -> list[tuple[str, list]]:
    """GPT-2 on the second route: FP32 and INT4."""
    return [("gpt2-onnx-fp32", ["export", "onnx", hf, "--task", "text-generation", "--route", "onnx"]),
            ("gpt2-onnx-int4", ["quantize", "@gpt2-onnx-fp32", "--mode", "int4"])]


def graph_dtypes(artifact: Path) -> dict:
    """Initializer element types of an artifact's ONNX graphs, by count (what "fp16" holds)."""
    import onnx

    counts: dict[str, int] = {}
    for path in artifact.glob("*.onnx"):
        graph = onnx.load(str(path), load_external_data=False).graph
        for tensor in graph.initializer:
            name = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
            counts[name] = counts.get(name, 0) + 1
    return counts


# ---------------------------------------------------------------------------- llama.cpp

def llamacpp_variants(hf: Path, work: Path, threads: int, prompt: list[int], new_tokens: int
                      ) -> tuple[list, dict]:
    """llama.cpp streamers on GGUFs (F16, Q8_0, Q4_0) of ``hf`` as extra bench variants, and
    notes: why llama.cpp was skipped, or per tier how many leading greedy tokens of one prompt
    equal transformers FP32's (the check that they run the same weights)."""
    try:
        import llamacpp

        from edgeport.bench.runner import Variant

        try:
            llamacpp.converter_dir()
        except RuntimeError:
            print("  fetching llama.cpp's converter (pip download of the llama-cpp-python sdist, once)...")
            llamacpp.fetch_converter()
        reference = llamacpp.hf_greedy_tokens(hf, prompt, new_tokens)
        variants, notes = [], {"agreement_with_transformers": {}}
        for tier in llamacpp.LLAMA_CPP_TIERS:
            gguf = llamacpp.to_gguf(hf, work / "gguf", tier)
            start = time.perf_counter()
            streamer = llamacpp.LlamaCppStreamer(gguf, threads)
            info = {**streamer.info, "path": str(gguf), "precision": tier, "provider": "llama.cpp (CPU)",
                    "session_create_ms": round((time.perf_counter() - start) * 1000, 1),
                    "extra_buffers": streamer.extra_buffers}
            variants.append(Variant(info["name"], streamer, info))
            tokens = list(streamer.stream_ids(prompt, new_tokens))
            notes["agreement_with_transformers"][info["name"]] = f"{llamacpp.agreement(tokens, reference)}/{new_tokens}"
        notes["extra_buffers"] = (
            "on" if variants[0].info["extra_buffers"] else
            "off: this llama.cpp build has the AMX backend, whose Q8_0/Q4_0 matmul crashes in 0.3.36 "
            "(see benchmarks/llamacpp.py); quantized tiers run the plain SIMD kernels, no CPU_REPACK")
        print(f"  llama.cpp {llamacpp._version()}: {', '.join(v.name for v in variants)}")
        return variants, notes
    except Exception as error:  # noqa: BLE001  optional baseline: no package, converter or GGUF tier
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(f"  llama.cpp skipped: {reason}")
        return [], {"skipped": reason}


# -------------------------------------------------------------------------------- bench

@contextmanager
def recorded_timings():
    """The bench's per-request timings of every variant. A generation report keeps only
    summaries per variant, and its "speedup" compares request latencies (not decode rates) by
    independent medians against the first variant only; paired intervals between any two
    variants need the raw timings, so the bench's timing loop is wrapped while it runs."""
    from edgeport.bench import generation_runner

    original, captured = generation_runner.interleaved_generation, {}

    def recording(*args, **kwargs):
        captured.update(original(*args, **kwargs))
        return captured

    generation_runner.interleaved_generation = recording
    try:
        yield captured
    finally:
        generation_runner.interleaved_generation = original


def one_cpu_per_core(count: int) -> list[int] | None:
    """``count`` CPUs on distinct physical cores (no two hyperthreads of one core), or None
    when this process may not use more than ``count`` CPUs anyway."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= count:
        return None
    chosen, cores = [], set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            core = ((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip())
        except OSError:
            core = ("?", str(cpu))
        if core not in cores:
            cores.add(core)
            chosen.append(cpu)
    return chosen[:count]


def bench(artifacts: list[Path], extra: list, threads: int, rounds: int, new_tokens: int,
          spinning: bool = False) -> tuple[dict, dict]:
    """One interleaved generation bench of ``artifacts`` (the first is the parity reference),
    the transformers eager baseline and ``extra`` variants; (report dict, timings by variant)."""
    from edgeport.bench.runner import BenchOptions, run_bench
    from edgeport.pipeline.baseline import torch_baseline
    from edgeport.speed import Settings

    options = BenchOptions(scenarios=["generation"], settings=Settings(rounds=rounds), threads=threads,
                           max_new_tokens=new_tokens, measure_memory=False, spinning=spinning)
    variants = [torch_baseline(str(artifacts[0]), "cpu", threads), *extra]
    with recorded_timings() as timings:
        report = run_bench([str(a) for a in artifacts], options, variants, progress=lambda m: print(f"  {m}"))
    return report.to_dict(), {name: list(values) for name, values in timings.items()}


# -------------------------------------------------------------------------------- pairs

def by_round(timings: list, rounds: int, measure) -> list[np.ndarray]:
    """A variant's per-request ``measure`` (seconds) grouped by round: the bench runs every
    prompt of a variant in a round back to back, so the list is rounds x prompts in order."""
    per_round = len(timings) // rounds
    return [np.array([v for v in map(measure, timings[r * per_round:(r + 1) * per_round]) if v is not None])
            for r in range(rounds)]


def decode_seconds_per_token(timing):
    return sum(timing.gaps) / len(timing.gaps) if timing.gaps else None


def ttft_seconds(timing):
    return timing.ttft


def paired(timings: dict, rounds: int, candidate: str, baseline: str, measure) -> dict | None:
    """How many times faster ``candidate`` is than ``baseline`` on ``measure`` (time per
    request), with the bench's paired-rounds bootstrap interval; None if either is absent."""
    from edgeport.speed import paired_ratio

    if candidate not in timings or baseline not in timings:
        return None
    a, b = by_round(timings[candidate], rounds, measure), by_round(timings[baseline], rounds, measure)
    if any(len(x) == 0 for x in (*a, *b)):
        return None
    value, low, high = paired_ratio(b, a)
    return {"value": value, "ci95": [low, high], "method": "paired rounds (median per round, bootstrap)"}


def ratio_text(pair: dict | None, fallback: float | None = None) -> str:
    if pair:
        return f"{pair['value']:.2f}x ({pair['ci95'][0]:.2f}-{pair['ci95'][1]:.2f})"
    if fallback:
        return f"{fallback:.2f}x (no paired interval)"
    return "-"


def pairings(rows: dict, timings: dict, rounds: int) -> list[dict]:
    """The comparisons the issue asks for: second route vs GenAI in FP32, and each precision
    tier against its llama.cpp counterpart (both routes, so neither is picked after the fact)."""
    wanted = [("onnx-fp32", "genai-fp32", "FP32, second route vs GenAI (target: within 1.3x, >= 0.77)")]
    for route in ("genai", "onnx"):
        wanted += [(f"{route}-int4", "llama.cpp q4_0", "INT4 vs Q4_0"),
                   (f"{route}-int8wo", "llama.cpp q8_0", "INT8 weight-only vs Q8_0")]
    wanted += [("genai-fp16", "llama.cpp f16", "16-bit vs F16"), ("onnx-fp16", "llama.cpp f16", "16-bit vs F16"),
               ("genai-fp32", "llama.cpp f16", "16-bit fallback, FP32 vs F16"),
               ("onnx-fp32", "llama.cpp f16", "16-bit fallback, FP32 vs F16")]
    out = []
    for candidate, baseline, label in wanted:
        if candidate not in rows or baseline not in rows:
            out.append({"label": label, "candidate": candidate, "baseline": baseline, "missing": True})
            continue
        medians = rows[candidate]["decode_tokens_per_s"] / rows[baseline]["decode_tokens_per_s"]
        out.append({"label": label, "candidate": candidate, "baseline": baseline, "ratio_of_rates": medians,
                    "decode": paired(timings, rounds, candidate, baseline, decode_seconds_per_token),
                    "ttft": paired(timings, rounds, candidate, baseline, ttft_seconds)})
    return out


# ------------------------------------------------------------------------------- output

def cpu_description() -> dict:
    """The CPU's model name and the flags that decide INT8 / 16-bit kernels, from /proc/cpuinfo."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags], "cpus": len(os.sched_getaffinity(0))}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def print_table(title: str, report: dict, timings: dict, rounds: int) -> dict:
    """Per variant: decode tokens/s, TTFT p50 and both against transformers (paired
    intervals), new tokens per request, size and greedy agreement with the first artifact."""
    rows = {row["variant"]: row for row in report["results"]}
    infos = {v["name"]: v for v in report["variants"]}
    torch_name = next(name for name, info in infos.items() if info["kind"] == "torch")
    print(f"\n{title}")
    print(f"{'variant':<26} {'size MB':>8} {'TTFT p50 ms':>12} {'decode tok/s':>13} {'decode vs torch (95% CI)':>26} "
          f"{'TTFT vs torch (95% CI)':>24} {'new tok':>8}  agreement")
    vs_torch = {}
    for name, row in rows.items():
        decode = paired(timings, rounds, name, torch_name, decode_seconds_per_token)
        ttft = paired(timings, rounds, name, torch_name, ttft_seconds)
        vs_torch[name] = {"decode": decode, "ttft": ttft}
        size = infos[name].get("size_bytes")
        generation = report["parity"].get(name, {}).get("generation", {})
        agreement = f"{generation['token_agreement']:.0%}" if "token_agreement" in generation else "-"
        same = name == torch_name
        print(f"{name[:26]:<26} {size / 1e6 if size else float('nan'):>8.1f} {row['ttft_ms']['p50_ms']:>12.2f} "
              f"{row['decode_tokens_per_s'] or float('nan'):>13.1f} {'1' if same else ratio_text(decode):>26} "
              f"{'1' if same else ratio_text(ttft):>24} {row['mean_new_tokens']:>8.1f}  {agreement}")
    for warning in report.get("warnings", []):
        print(f"WARNING: {warning}")
    return vs_torch


def short(reason: str, width: int = 160) -> str:
    return reason if len(reason) <= width else reason[:width - 3] + "..."


def print_pairings(pairs: list[dict], skipped: dict) -> None:
    """One line per pairing: the paired decode and TTFT ratios with intervals, and the plain
    ratio of the two decode tokens/s figures (all requests pooled) beside them."""
    print("\npairings: candidate / baseline, >1 = candidate faster; paired-round medians (95% CI); "
          "'rates' = ratio of the decode tokens/s above")
    for pair in pairs:
        head = f"  {pair['label']}: {pair['candidate']} / {pair['baseline']}:"
        if pair.get("missing"):
            why = skipped.get(pair["candidate"]) or skipped.get(pair["baseline"]) or skipped.get("llama.cpp") or "absent"
            print(f"{head} not measured ({short(why)})")
            continue
        verdict = ""
        if pair["candidate"] == "onnx-fp32" and pair["baseline"] == "genai-fp32":
            decode = pair["decode"] or {"value": pair["ratio_of_rates"], "ci95": [pair["ratio_of_rates"]] * 2}
            verdict = ("  -> NOT within 1.3x" if decode["value"] < TARGET_RATIO else
                       "  -> within 1.3x" if decode["ci95"][0] >= TARGET_RATIO else
                       "  -> within 1.3x at the point; the interval reaches below 0.77")
        print(f"{head} decode {ratio_text(pair['decode'], pair['ratio_of_rates'])}, rates "
              f"{pair['ratio_of_rates']:.2f}x; TTFT {ratio_text(pair['ttft'])}{verdict}")


def sixteen_bit_statement(result: dict) -> str:
    """The 16-bit tier in one sentence: what was measured, or why there is none."""
    built = result.get("fp16_initializers", {})
    reasons = {name: result["skipped"][name] for name in ("genai-fp16", "onnx-fp16") if name in result["skipped"]}
    if built:
        return (f"16-bit: measured {', '.join(built)} (initializer types {built}); {FP16_NOTE}")
    why = "; ".join(f"{name}: {short(reason, 240)}" for name, reason in reasons.items())
    return (f"16-bit: no 16-bit-class CPU option from edgeport here ({why}); {FP16_NOTE}; the FP32 artifacts "
            "are paired with llama.cpp F16 instead")


# --------------------------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per bench (default 5)")
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy new tokens per request (default 128)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every variant (default 2)")
    parser.add_argument("--train-seconds", type=float, default=60, help="training time of each model (default 60)")
    parser.add_argument("--skip-llamacpp", action="store_true", help="leave llama.cpp out")
    parser.add_argument("--spinning", action="store_true",
                        help="ONNX Runtime's threads spin between ops (its default outside the bench; llama.cpp's "
                             "threads always poll); without it, spinning is off in edgeport's loop and GenAI's")
    parser.add_argument("--json", type=Path, help="write models, artifacts, reports, pairings and machine here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cpu, load_start = cpu_description(), load_average()
    print(f"CPU: {cpu['model']} ({', '.join(cpu['flags']) or 'no listed flags'}), {cpu['cpus']} CPUs available; "
          f"load average {load_start}")
    result: dict = {"cpu": cpu, "load_average_start": load_start, "settings": vars(args) | {"json": str(args.json)}}
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        print("training models...")
        result["models"] = {family: build_model(work / family, args.train_seconds, family)
                            for family in ("llama", "gpt2")}
        print("exporting the Llama...")
        llama, skipped = export_variants(work, llama_plan(work / "llama"))
        result["fp16_initializers"] = {name: graph_dtypes(work / name) for name in ("genai-fp16", "onnx-fp16")
                                       if (work / name).exists()}
        print("llama.cpp GGUFs...")
        if args.skip_llamacpp:
            extra, llamacpp_notes = [], {"skipped": "--skip-llamacpp"}
            print("  skipped: --skip-llamacpp")
        else:
            prompt = _first_prompt(work / "llama")
            extra, llamacpp_notes = llamacpp_variants(work / "llama", work, args.threads, prompt, args.new_tokens)
        if "skipped" in llamacpp_notes:
            skipped["llama.cpp"] = llamacpp_notes["skipped"]
        print("exporting GPT-2...")
        gpt2, gpt2_skipped = export_variants(work, gpt2_plan(work / "gpt2"))
        skipped.update(gpt2_skipped)

        pinned = one_cpu_per_core(args.threads)
        if pinned:      # on a bigger machine every engine on the same cores, one CPU per physical core
            os.sched_setaffinity(0, pinned)
            print(f"pinned to CPUs {pinned} (one per physical core)")
        result.update(skipped=skipped, llamacpp=llamacpp_notes, pinned_cpus=pinned, reports={})
        for family, artifacts, extra_variants in (("llama", llama, extra), ("gpt2", gpt2, [])):
            if artifacts:      # each family's table right after its bench: a later failure keeps it
                print(f"{family} bench: {args.rounds} rounds x {args.new_tokens} tokens...")
                report, timings = bench(artifacts, extra_variants, args.threads, args.rounds, args.new_tokens,
                                        args.spinning)
                show_family(result, family, report, timings, args)
    result["load_average_end"] = load_average()
    print_notes(result)
    if args.json:
        from edgeport.manifest import json_safe

        args.json.write_text(json.dumps(json_safe(result), indent=1) + "\n")
        print(f"wrote {args.json}")


def show_family(result: dict, family: str, report: dict, timings: dict, args) -> None:
    """Print one bench's table (and, for the Llama, the pairings) and keep them in ``result``."""
    model = result["models"][family]
    title = (f"{family}: {model['parameters'] / 1e6:.1f} M parameters, {model['train_steps']} training steps, "
             f"loss {model['final_loss']}; {report['data']}; greedy, batch 1, {args.threads} threads, "
             f"{args.rounds} rounds")
    vs_torch = print_table(title, report, timings, args.rounds)
    result["reports"][family] = {"report": report, "vs_transformers": vs_torch}
    if family == "llama":
        result["pairings"] = pairings({r["variant"]: r for r in report["results"]}, timings, args.rounds)
        print_pairings(result["pairings"], result["skipped"])


def _first_prompt(hf: Path) -> list[int]:
    """The bench's first prompt as ids (for the llama.cpp same-weights check)."""
    import transformers

    from edgeport.data import generation_prompts

    return transformers.AutoTokenizer.from_pretrained(hf)(generation_prompts(1)[0])["input_ids"]


def print_notes(result: dict) -> None:
    """What a reader needs to trust the figures: skipped variants, the 16-bit story, llama.cpp
    settings, and the machine's load before and after."""
    print()
    for name, reason in result.get("skipped", {}).items():
        if name not in ("genai-fp16", "onnx-fp16"):      # the 16-bit statement gives those
            print(f"skipped {name}: {short(reason, 400)}")
    print(sixteen_bit_statement(result))
    notes = result.get("llamacpp", {})
    if "agreement_with_transformers" in notes:
        print(f"llama.cpp: leading greedy tokens equal to transformers FP32 on the first prompt: "
              f"{notes['agreement_with_transformers']}; f16 KV cache (its default); extra weight buffers "
              f"{notes['extra_buffers']}")
    print(f"load average: start {result['load_average_start']}, end {result['load_average_end']}")


if __name__ == "__main__":
    main()
