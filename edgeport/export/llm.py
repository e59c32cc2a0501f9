"""Causal language models: ``export onnx --task text-generation`` with a KV cache, verified
against transformers' ``generate`` on real prompts before anything is written.

Two routes (``--route``):

- ``genai``: ONNX Runtime GenAI's model builder (lm_builder.py), for the families it knows;
  fp32, fp16 or int4; runtime LoRA adapters.
- ``onnx``: edgeport's own torch.onnx export of the decoder with past/present key/values
  (lm_decoder.py), for any family transformers loads, run by edgeport's loop
  (runtime/decoder.py); fp32 (quantize afterwards for INT4 / INT8 weight-only).

``auto`` takes the builder where it knows the family, and falls through to the second route
when the builder fails or its model does not match transformers; within the second route,
the dynamo graph (faster) before the TorchScript one.  Every route tried is recorded in the
lineage with why it was passed over.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..artifact import Artifact, finalize_manifest
from ..data import generation_prompts, stdlib_sentences
from ..errors import (EdgeportError, ExportError, InvalidOptionError, ModelInputError, ParityError, SourceError,
                      UnsupportedModelError, refuse_unused, require)
from ..golden import save_golden
from ..manifest import GOLDEN_NAME, Manifest, tool_versions
from ..outputs import ARTIFACT, check_output, staged_output
from ..parity.generation import measure_generation
from ..vocabulary import DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_RTOL
from .lm_builder import PRECISIONS, build_with_genai, builder_family
from .lm_reference import PERPLEXITY_TEXTS, PROMPTS, Reference
from .source import load_hf_config, read_config, recorded_source, weight_files
from ..workdirs import work_folder

ROUTES = ("auto", "genai", "onnx")
DECODER_EXPORTERS = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}
# The export gate refuses a broken model; the figures themselves go into the manifest.
GATES = {"fp32": {"max_token_disagreement": 0.02, "min_cosine": 0.9999},
         "fp16": {"max_token_disagreement": 0.1, "min_cosine": 0.999},
         "int4": {"max_token_disagreement": 0.3, "min_cosine": 0.95}}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


@dataclass
class Candidate:
    """One route's result, in a work folder: the files of the artifact, its graph format and
    generation record."""

    route: str                      # "genai-builder", "onnx-dynamo", "onnx-torchscript"
    folder: Path
    graph_format: str
    generation: dict
    pad_id: int
    notes: list[str] = field(default_factory=list)


def plan_routes(config: dict, options, runtime_adapters) -> tuple[list[tuple[str, str | None]], list[dict]]:
    """The (route, exporter) pairs to try in order, and the routes passed over with why."""
    family = builder_family(config)
    skipped = []
    wanted = options.route
    if runtime_adapters and wanted == "onnx":
        raise InvalidOptionError("--runtime-adapter needs ONNX Runtime GenAI's LoRA slots (--route genai); on the "
                                 "second route, merge the adapter with --adapter instead")
    if wanted in ("auto", "genai") and family is None:
        reason = (f"'{(config.get('architectures') or ['?'])[0]}' is not a family ONNX Runtime GenAI's model builder "
                  "knows")
        if runtime_adapters:
            raise UnsupportedModelError(f"{reason}, and --runtime-adapter needs its LoRA slots; merge the adapter "
                                        "with --adapter instead (the second route exports the merged model)")
        if wanted == "genai":
            raise UnsupportedModelError(f"{reason}, and --route genai needs it; leave out --route (or use --route "
                                        "onnx) for the second route")
        skipped.append({"route": "genai-builder", "ok": False, "reason": reason})
    routes: list[tuple[str, str | None]] = []
    if wanted == "auto" and family is not None and importlib.util.find_spec("onnxruntime_genai") is None \
            and not runtime_adapters:
        skipped.append({"route": "genai-builder", "ok": False,
                        "reason": "onnxruntime-genai is not installed (pip install \"edgeport[llm]\")"})
    elif wanted in ("auto", "genai") and family is not None:
        routes.append(("genai", None))
    if wanted in ("auto", "onnx") and not runtime_adapters:
        if options.precision != "fp32":
            if not routes:
                raise InvalidOptionError(f"--precision {options.precision} is built by ONNX Runtime GenAI's builder; "
                                         "on the second route export fp32, then 'edgeport quantize --mode int4' (or "
                                         "int8-weight-only)")
        else:
            exporter = options.exporter if options.exporter in DECODER_EXPORTERS else "auto"
            routes.extend(("onnx", e) for e in DECODER_EXPORTERS[exporter])
    return routes, skipped


def export_causal_lm(folder: Path, out, options, progress=None, runtime_adapters: dict[str, str] | None = None
                     ) -> Artifact:
    say = progress or (lambda message: None)
    _check_options(options)
    config = read_config(folder)
    if not (folder / "tokenizer.json").is_file():
        raise SourceError(f"'{folder}' has no tokenizer.json: causal LMs need a fast tokenizer (save it with "
                          "tokenizer.save_pretrained(folder))")
    weights = weight_files(folder, options.allow_pickle)
    require("torch", "export")
    load_hf_config(folder)                   # a config transformers refuses fails here, with its reason
    routes, attempts = plan_routes(config, options, runtime_adapters)
    check_output(out, options.force, (folder, *(runtime_adapters or {}).values()), ARTIFACT)
    say(f"causal LM ({config.get('model_type')}); reference: transformers greedy generate on {PROMPTS} real prompts...")
    reference = Reference(folder, generation_prompts(PROMPTS), stdlib_sentences(PERPLEXITY_TEXTS))
    if reference.unapplied:
        say(f"note: {unapplied_note(reference.unapplied)}")
    built_but_differed = []                  # per route tried: built, and its tokens differed
    with work_folder("edgeport-llm-") as work_dir:
        for route, exporter in routes:
            label = "genai-builder" if route == "genai" else f"onnx-{exporter}"
            try:
                candidate = _build(route, exporter, folder, Path(work_dir), options, reference, runtime_adapters, say)
                manifest, parity = _verify(candidate, reference, options, config)
            except (ExportError, ParityError, UnsupportedModelError) as exc:
                attempts.append({"route": label, "ok": False, "reason": str(exc)[:500],
                                 **({"unsupported": True} if isinstance(exc, UnsupportedModelError) else {})})
                built_but_differed.append(isinstance(exc, ParityError))
                say(f"  {label} passed over: {str(exc).splitlines()[0][:300]}")
                continue
            attempts.append({"route": label, "ok": True})
            return _write(out, folder, candidate, manifest, parity, reference, options, config, weights, attempts,
                          runtime_adapters)
    reasons = "; ".join(f"{a['route']}: {a['reason']}" for a in attempts)
    unsupported = all(a.get("unsupported") for a in attempts if a["route"] != "genai-builder") and attempts
    if built_but_differed and all(built_but_differed):
        # As the encoder route does: every graph was built and none matched the source (exit 9).
        raise ParityError(f"no route's tokens matched the source model ({reasons}); nothing was written")
    raise (UnsupportedModelError if unsupported else ExportError)(
        f"no route exported this causal LM ({reasons}); nothing was written")


def unapplied_note(settings: list[str]) -> str:
    return (f"the source's generation_config.json sets {', '.join(settings)}; edgeport's runtime does not apply "
            "them (it decodes greedily, or samples with --temperature/--top-k/--top-p), so parity was checked on "
            "plain greedy tokens")


def _check_options(options) -> None:
    if options.precision not in PRECISIONS:
        raise InvalidOptionError(f"--precision must be one of {', '.join(PRECISIONS)} for causal LMs")
    # Options of the encoder route that a causal-LM export has no use for: refused, not ignored.
    refuse_unused((
        ("--opset", options.opset != DEFAULT_OPSET), ("--atol", options.atol != DEFAULT_ATOL),
        ("--rtol", options.rtol != DEFAULT_RTOL), ("--no-validate", not options.validate),
        ("--external-data/--no-external-data", options.external_data is not None),
        ("--input", options.inputs), ("--output-name", options.output_names)),
        "to causal LMs: each route picks its own opset and file layout, and the export is always checked token "
        "for token against transformers' greedy generate")
    if options.runtime_adapters and options.precision != "fp32":
        raise InvalidOptionError(f"--runtime-adapter needs --precision fp32: the adapter's LoRA slots sit beside "
                                 f"float32 MatMuls, which an {options.precision} build does not keep")
    if options.route not in ROUTES:
        raise InvalidOptionError(f"--route must be one of {', '.join(ROUTES)} (got {options.route!r})")
    if options.static_shapes or options.exporter not in ("auto", *DECODER_EXPORTERS):
        raise InvalidOptionError("causal LMs export with dynamic shapes (a growing cache): --static-shapes and "
                                 "--exporter static do not apply; --exporter dynamo|torchscript picks the second "
                                 "route's exporter")
    if options.exporter != "auto" and options.route == "genai":
        raise InvalidOptionError("--exporter picks the second route's exporter; --route genai uses the builder")


def _build(route: str, exporter: str | None, folder: Path, work: Path, options, reference: Reference,
           runtime_adapters, say) -> Candidate:
    if route == "genai":
        require("onnxruntime_genai", "llm")
        built, generation, pad_id = build_with_genai(folder, work, options.precision, runtime_adapters, say)
        for name in ("config.json", "tokenizer.json"):
            if not (built / name).is_file() or name == "config.json":
                shutil.copyfile(folder / name, built / name)
        return Candidate("genai-builder", built, "genai", generation, pad_id, [f"builder: -p {options.precision} -e cpu"])
    from .lm_decoder import export_decoder

    say(f"exporting the decoder with its KV cache ({exporter})...")
    built = work / f"onnx-{exporter}"
    built.mkdir()
    try:
        contract = export_decoder(folder, built / "model.onnx", exporter, reference.context_length)
    except EdgeportError:
        raise
    except Exception as exc:  # any exporter failure (torch.onnx raises whatever its passes raise) means: next route
        raise ExportError(f"{exporter} export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") \
            from exc
    for name in ("config.json", *TOKENIZER_FILES):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, built / name)
    contract.update(add_special_tokens=reference.add_special_tokens, chat_template=reference.chat_template,
                    special_tokens=reference.special_tokens)
    (built / "decoder.json").write_text(json.dumps(contract, indent=2) + "\n", encoding="utf-8")
    generation = {"config": "decoder.json", "context_length": reference.context_length}
    return Candidate(f"onnx-{exporter}", built, "onnx-decoder", generation, reference.pad_id,
                     [f"{exporter} export in {contract['export_seconds']} s"])


def _manifest(candidate: Candidate, reference: Reference, options, config: dict) -> Manifest:
    from .onnx import graph_io

    inputs, outputs, opset = graph_io(candidate.folder / "model.onnx",
                                      {"input_ids": {"range": [0, reference.vocab_size - 1]}})
    generation = dict(candidate.generation, eos_token_ids=sorted(reference.eos),
                      chat_template=reference.chat_template is not None, family=str(config.get("model_type")),
                      route=candidate.route)
    processing = {"tokenizer": "tokenizer.json", "max_length": int(generation["context_length"]),
                  "pad_id": candidate.pad_id, "generation": generation}
    precision = {"mode": options.precision, "kept_fp32_nodes": [], "calibration": None}
    if options.precision == "int4":
        precision.update(format="MatMulNBits", bits=4, block_size=32, accuracy_level=4)
    graph = {"format": candidate.graph_format, "file": "model.onnx", "opset": opset, "inputs": inputs,
             "outputs": outputs, "static_shapes": False,
             "external_data": (candidate.folder / "model.onnx.data").exists()}
    return Manifest(task="text-generation", graph=graph, processing=processing, precision=precision)


def _verify(candidate: Candidate, reference: Reference, options, config: dict):
    """The candidate as a whole artifact, generating against transformers' answers."""
    from ..runtime.formats import make_generator
    from ..runtime.onnxrt import SessionSettings

    save_golden(candidate.folder / GOLDEN_NAME, *reference.golden())
    manifest = _manifest(candidate, reference, options, config)
    finalize_manifest(candidate.folder, manifest)
    try:
        model = make_generator(Artifact.load(candidate.folder, check_files=False), SessionSettings(device="cpu"))
    except (ModelInputError, RuntimeError) as exc:
        raise ExportError(f"the {candidate.route} model does not load: {str(exc).splitlines()[0]}") from exc
    data = (f"{len(reference.prompt_ids)} docstring prompts x {reference.new_tokens} greedy tokens; perplexity on "
            f"{len(reference.text_ids)} sentences")
    with model:
        try:
            parity = measure_generation(model, reference.prompt_ids, reference.tokens, reference.logits,
                                        reference.text_ids, reference.perplexity,
                                        reference="PyTorch (transformers generate)", data=data,
                                        new_tokens=reference.new_tokens, thresholds=GATES[options.precision])
        except ModelInputError as exc:
            raise ExportError(f"the {candidate.route} model does not run: {exc}") from exc
    parity.raise_for_failure(f"the {candidate.route} model ({options.precision})")
    return manifest, parity


def _write(out, folder: Path, candidate: Candidate, manifest: Manifest, parity, reference: Reference, options,
           config: dict, weights: list[Path], attempts: list[dict], runtime_adapters) -> Artifact:
    from ..artifact import sha256_file
    from .lora import read_merge_records

    with staged_output(out, options.force, (folder, *(runtime_adapters or {}).values()), ARTIFACT) as staging:
        for item in candidate.folder.iterdir():
            if item.name != "edgeport.json":
                (shutil.copytree if item.is_dir() else shutil.copyfile)(item, staging / item.name)
        manifest.lineage.extend(read_merge_records(folder))
        manifest.add_lineage("export", parameters={
            "source": recorded_source(folder), "task": "text-generation", "precision": options.precision,
            "route": candidate.route,
            "model_type": config["model_type"], "family": builder_family(config) or config["model_type"],
            "runtime_adapters": {k: str(v) for k, v in (runtime_adapters or {}).items()}},
            tools=tool_versions("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-genai", "onnxscript"),
            sources={p.name: sha256_file(p) for p in weights}, routes=attempts,
            notes=candidate.notes + ([unapplied_note(reference.unapplied)] if reference.unapplied else []))
        manifest.parity["export"] = parity.to_dict()
        finalize_manifest(staging, manifest)
    return Artifact.load(out, check_files=False)
