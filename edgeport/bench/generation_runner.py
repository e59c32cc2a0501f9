"""The bench run for causal LMs: every artifact (and the transformers baseline, when handed
in) generates for the same real prompts, interleaved by round; parity of each artifact is
measured against the first as token agreement and perplexity."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..artifact import Artifact
from ..data import generation_prompts, stdlib_sentences
from ..errors import InvalidOptionError
from ..manifest import now_iso
from ..parity.generation import fit_to_context, measure_generation
from ..runtime import load
from ..runtime.formats import format_of
from ..speed import Interrupted, machine_info
from .generation import interleaved_generation, summarize
from .memory import measure_memory
from .report import BenchReport
from .scenarios import spinning_policy

PROMPTS = 4


def prompts_within(model, prompts: list[str]) -> list[list[int]]:
    """The prompts' ids, cut to the model's context as every generation check cuts them."""
    return fit_to_context([model.encode(p) for p in prompts], model.context_length, 1)[0]


def run_generation_bench(artifacts: list[Artifact], options, extra, progress: Callable[[str], None], meter
                         ) -> BenchReport:
    from .runner import folder_name, unique_name

    # single-stream is the default scenario, which means generation here; written out, it is refused
    single = "single-stream" if "--scenario" not in options.given else None
    unsupported = [s for s in options.scenarios if s not in ("generation", single)]
    if unsupported:
        raise InvalidOptionError(f"scenario {', '.join(unsupported)} does not apply to causal LMs; they are measured "
                                 "with the generation scenario (time to first token, tokens per second)")
    models, variants = {}, []
    threads, threads_from = options.thread_count()
    for artifact in artifacts:
        start = time.perf_counter()
        model = load(artifact.path, device="cpu", threads=threads, spinning=options.spinning, check_files=False)
        name = unique_name(folder_name(artifact.path), models)
        info = {"name": name, "path": str(artifact.path), "kind": format_of(artifact).kind,
                "manifest_sha256": artifact.manifest_sha256,
                "precision": artifact.manifest.precision.get("mode", "fp32"), "size_bytes": artifact.size_bytes(),
                "provider": model.provider, "session_create_ms": round((time.perf_counter() - start) * 1000, 1)}
        room = model.context_length - max(map(len, prompts_within(model, generation_prompts(PROMPTS))))
        if options.max_new_tokens > room:                # before any measuring: the requests must fit
            raise InvalidOptionError(f"{name}: its context of {model.context_length} tokens leaves room for {room} new "
                                     f"tokens after the bench's prompts; give --max-new-tokens {room} or fewer")
        if options.measure_memory:
            progress(f"memory and cold start of {name} (fresh process)...")
            info.update(measure_memory(str(artifact.path), None))
        models[name] = model
        variants.append(info)
    streamers = dict(models)
    for variant in extra:
        variant.name = variant.info["name"] = unique_name(variant.name, streamers)
        streamers[variant.name] = variant.runner
        variants.append(variant.info)
    reference = next(iter(models.values()))
    prompts = prompts_within(reference, generation_prompts(PROMPTS))
    report = BenchReport(created=now_iso(), machine=machine_info(), variants=variants, results=[], parity={},
                         reference=str(artifacts[0].path),
                         data=f"{len(prompts)} docstring prompts, up to {options.max_new_tokens} new tokens each",
                         thresholds={})
    try:
        meter.start(options.settings.rounds * len(streamers))
        progress(f"generation: {len(prompts)} prompts x {options.max_new_tokens} tokens, "
                 f"{options.settings.rounds} interleaved rounds...")
        timings = interleaved_generation(streamers, prompts, options.max_new_tokens, options.settings.rounds,
                                         tick=lambda name: meter.step(name, "generation"),
                                         machine=report.machine_rounds)
        report.results.extend(summarize(name, values, options.max_new_tokens, len(prompts))
                              for name, values in timings.items())
        progress("measuring parity (greedy tokens, perplexity)...")
        _parity(report, models, prompts, options.max_new_tokens)
    except Interrupted:
        report.interrupted = True
    finally:
        meter.finish()
        for model in models.values():
            model.close()
        for variant in extra:
            variant.runner.close()
    report.settings = {"threads": threads, "threads_from": threads_from,
                       "spinning": spinning_policy(options.spinning) + " (edgeport's decoder loop and ONNX Runtime "
                                                                      "GenAI's generator alike)"}
    report.finish(options.reports, options.strict)
    return report


def _parity(report: BenchReport, models: dict, prompts: list[list[int]], new_tokens: int) -> None:
    texts = stdlib_sentences(24)
    reference = next(iter(models.values()))
    tokens = [g.tokens for g in reference.generate(prompts, max_new_tokens=new_tokens)]
    logits = np.stack([reference.logits(ids)[-1] for ids in prompts])
    perplexity = reference.perplexity(texts)
    for name, model in models.items():
        report.parity[name] = measure_generation(
            model, prompts, tokens, logits, texts, perplexity, reference=f"'{report.reference}'",
            data=report.data, new_tokens=new_tokens, thresholds={}).to_dict()
