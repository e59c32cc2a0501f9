"""``edgeport merge``: fold peft adapters (LoRA, AdaLoRA and any other tuner peft can merge)
into the base weights, verified against the unmerged PeftModel on the same inputs.

The result is a plain Hugging Face folder that loads without peft; its provenance is in
``edgeport-merge.json``, which ``export`` carries into the artifact's lineage (a merged folder
merged again: every merge's entry, oldest first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import sha256_file
from ..errors import AdapterError, InvalidOptionError, ParityError, SourceError, UnsafeFileError, require
from ..manifest import now_iso, tool_versions
from ..outputs import MERGED_MODEL, check_output, staged_output
from ..parity import compare_output
from ..vocabulary import COMBINATIONS, DEFAULT_ATOL, DEFAULT_RTOL
from .quiet import quiet_transformers
from .source import check_pickle, check_safetensors, read_config, weight_files

MERGE_RECORD = "edgeport-merge.json"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# Files beside the weights that a model folder needs at inference (tokenizer, pooling...).
CARRIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
           "merges.txt", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json", "preprocessor_config.json",
           "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
           "2_Normalize")


@dataclass
class MergeOptions:
    adapters: list[str]
    weights: list[float] = field(default_factory=list)
    combination: str = "cat"
    dtype: str | None = None          # fp32 | fp16 | bf16; default: the base's
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    allow_pickle: bool = False
    force: bool = False


@dataclass
class AdapterInfo:
    path: Path
    config: dict
    weights_file: Path

    @property
    def peft_type(self) -> str:
        return self.config["peft_type"].upper()

    def summary(self) -> dict:
        keys = ("peft_type", "r", "lora_alpha", "target_modules", "init_r", "target_r", "lora_dropout", "use_dora")
        info = {k: self.config[k] for k in keys if k in self.config}
        if isinstance(info.get("target_modules"), list):
            info["target_modules"] = sorted(info["target_modules"])
        return {"path": str(self.path.resolve()), "sha256": sha256_file(self.weights_file), **info}


def read_adapter(path: str | os.PathLike, allow_pickle: bool) -> AdapterInfo:
    folder = Path(path)
    if folder.is_file():
        raise AdapterError(f"'{folder}' is a file; --adapter takes the adapter's folder (the one holding "
                           "adapter_config.json)")
    if not folder.is_dir():
        raise AdapterError(f"adapter folder '{folder}' does not exist")
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(f"'{folder}' has no adapter_config.json: it is not a peft adapter "
                           "(save one with peft_model.save_pretrained(folder))")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{config_file} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or "peft_type" not in config:
        raise AdapterError(f"{config_file} has no 'peft_type'; it is not a peft adapter config")
    if not isinstance(config["peft_type"], str) or not config["peft_type"]:
        raise AdapterError(f"{config_file}: 'peft_type' must be a peft method name such as \"LORA\" "
                           f"(got {config['peft_type']!r})")
    _check_known_peft_type(config["peft_type"], config_file)
    safe, pickled = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if safe.is_file():
        try:
            check_safetensors(safe)
        except SourceError as exc:
            raise AdapterError(str(exc)) from exc
        return AdapterInfo(folder, config, safe)
    if pickled.is_file():
        if not allow_pickle:
            raise UnsafeFileError(f"adapter '{folder}' only has pickle weights (adapter_model.bin); loading pickle "
                                  "can run arbitrary code. Re-save it as safetensors, or pass --allow-pickle")
        check_pickle(pickled, AdapterError)
        return AdapterInfo(folder, config, pickled)
    raise AdapterError(f"adapter '{folder}' has no weights (adapter_model.safetensors)")


def _check_known_peft_type(peft_type: str, config_file: Path) -> None:
    try:
        from peft import PeftType
    except ImportError:
        return   # checked again when peft is required
    known = sorted(t.value for t in PeftType)
    if peft_type.upper() not in known:
        raise AdapterError(f"{config_file}: peft_type '{peft_type}' is not a method this peft knows "
                           f"({', '.join(known[:12])}, ...); the adapter was made by another tool or a newer peft")


def _check_options(options: MergeOptions) -> None:
    import math

    for name, value in (("--atol", options.atol), ("--rtol", options.rtol)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InvalidOptionError(f"{name} must be a finite number >= 0 (got {value!r})")
    if any(not isinstance(w, (int, float)) or not math.isfinite(w) for w in options.weights):
        raise InvalidOptionError("--weight values must be finite numbers")
    if not options.adapters:
        raise InvalidOptionError("give at least one --adapter")
    if options.weights and len(options.weights) != len(options.adapters):
        raise InvalidOptionError(f"{len(options.adapters)} --adapter but {len(options.weights)} --weight; "
                                 "give one weight per adapter, or none")
    if len(options.adapters) == 1 and options.weights and options.weights[0] != 1.0:
        raise InvalidOptionError("--weight only applies when combining several adapters")
    if len(options.adapters) == 1 and options.combination != "cat":
        raise InvalidOptionError(f"--combination {options.combination} combines several adapters; with one there is "
                                 "nothing to combine")
    if options.combination not in COMBINATIONS:
        raise InvalidOptionError(f"combination '{options.combination}' is not supported; use one of "
                                 f"{', '.join(COMBINATIONS)} (ties, dare and magnitude pruning drop parts of the "
                                 "updates at random or by magnitude, so the merge could not be verified)")
    if options.dtype is not None and options.dtype not in DTYPES:
        raise InvalidOptionError(f"--dtype must be one of {', '.join(DTYPES)}")


def _check_fits_base(model, adapter: AdapterInfo) -> None:
    """Name the module and both shapes when an adapter was trained for another base."""
    if adapter.weights_file.suffix != ".safetensors":
        return
    from safetensors import safe_open

    with safe_open(str(adapter.weights_file), "np") as handle:
        shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
    for key, shape in shapes.items():
        for marker, axis in ((".lora_A.", "in"), (".lora_B.", "out")):
            if marker not in key:
                continue
            module_path = key.split(marker)[0]
            for prefix in ("base_model.model.", "base_model."):
                if module_path.startswith(prefix):
                    module_path = module_path[len(prefix):]
                    break
            try:
                module = model.get_submodule(module_path)
            except AttributeError:
                raise AdapterError(
                    f"adapter '{adapter.path}' targets module '{module_path}', which the base model does not "
                    "have: the adapter was trained for another architecture") from None
            features = getattr(module, f"{axis}_features", None)
            got = shape[1] if axis == "in" else shape[0]
            if features is not None and got != features:
                weight_shape = tuple(getattr(module, "weight").shape)
                raise AdapterError(
                    f"adapter '{adapter.path}' does not fit module '{module_path}': the adapter's {key.split('.')[-2]} "
                    f"is {tuple(shape)} ({axis}_features {got}) but the base layer's weight is {weight_shape} "
                    f"({axis}_features {features}); the adapter was trained for another base model")


def _validation_inputs(base: Path, config) -> dict:
    """Real sentences through the base's tokenizer when it has one, else seeded token ids."""
    import torch

    from ..data import digits_images, stdlib_sentences
    from ..runtime.processing import resize_images

    if getattr(config, "num_channels", None) and getattr(config, "image_size", None):
        size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
        images, _ = digits_images(8)
        return {"pixel_values": torch.from_numpy(resize_images(images, tuple(size), config.num_channels))}
    if (base / "tokenizer.json").is_file() or (base / "vocab.txt").is_file():
        import transformers

        with quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(base)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        encoded = dict(tokenizer(stdlib_sentences(16), padding=True, truncation=True, max_length=128,
                                 return_tensors="pt"))
        from .prepare import check_token_ids

        check_token_ids(config, [{"input_ids": encoded["input_ids"].numpy()}])
        return encoded
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, max(4, int(getattr(config, "vocab_size", 100))), (4, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1:, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _first_output(model, inputs) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(**inputs)
    tensor = out[0] if not hasattr(out, "logits") else out.logits
    return tensor.detach().float().numpy()


def _load_base(base: Path, config):
    import torch
    import transformers

    architecture = (getattr(config, "architectures", None) or ["AutoModel"])[0]
    model_class = getattr(transformers, architecture, None) or transformers.AutoModel
    try:
        # Merge in float32 whatever the base's dtype: adding a low-rank update in fp16 loses bits.
        with quiet_transformers():
            return model_class.from_pretrained(base, dtype=torch.float32).eval()
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, ImportError, AttributeError) as exc:
        raise SourceError(f"cannot load the base model '{base}': {type(exc).__name__}: {exc}") from exc


def merge(base: str | os.PathLike, out: str | os.PathLike, options: MergeOptions, progress=None) -> Path:
    """Merge ``options.adapters`` into ``base`` and write a Hugging Face folder at ``out``."""
    say = progress or (lambda message: None)
    _check_options(options)
    base = Path(base)
    check_output(out, options.force, (base, *options.adapters), MERGED_MODEL)
    config_dict = read_config(base)
    base_weights = weight_files(base, options.allow_pickle)
    earlier = read_merge_records(base)          # a merged folder merged again keeps its history
    adapters = [read_adapter(a, options.allow_pickle) for a in options.adapters]
    for adapter in adapters:
        if adapter.peft_type in _PROMPT_LEARNING:
            raise AdapterError(f"adapter '{adapter.path}' is {adapter.peft_type}, a prompt-learning method: it adds "
                               "virtual tokens rather than weight updates, so there is nothing to merge")
    if len(adapters) > 1 and any(a.peft_type != "LORA" for a in adapters):
        raise AdapterError("only LoRA adapters can be combined with weights (peft's add_weighted_adapter); "
                           f"got {', '.join(a.peft_type for a in adapters)}")

    require("peft", "export")
    import transformers

    try:
        with quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(base)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"transformers cannot read {base / 'config.json'}: {exc}") from exc
    model = _load_base(base, config)
    for adapter in adapters:
        _check_fits_base(model, adapter)
    inputs = _validation_inputs(base, config)
    base_output = _first_output(model, inputs)

    say(f"loading {len(adapters)} adapter(s) ({', '.join(a.peft_type for a in adapters)})...")
    peft_model = _apply_adapters(model, adapters, options, base)
    peft_model.eval()
    unmerged = _first_output(peft_model, inputs)
    say("merging...")
    try:
        merged = peft_model.merge_and_unload()
    except (ValueError, NotImplementedError, RuntimeError, AttributeError, TypeError) as exc:
        raise AdapterError(f"peft cannot merge {adapters[0].peft_type} adapters: {exc}") from exc
    merged.eval()
    merged_output = _first_output(merged, inputs)

    mask = inputs.get("attention_mask")
    mask = mask.numpy() if mask is not None else None
    parity = compare_output("merged vs unmerged", unmerged, merged_output, mask, options.atol, options.rtol)
    change = compare_output("merged vs base", base_output, merged_output, mask)
    if parity.nonfinite:
        raise ParityError(f"the merged model's outputs hold {parity.nonfinite} NaN or infinite values (the unmerged "
                          f"PeftModel's: {int((~np.isfinite(unmerged)).sum())}): the adapters' weights, or --weight, "
                          "overflow float32; nothing was written")
    if not parity.within_tolerance:
        raise ParityError(f"the merged model differs from the unmerged PeftModel beyond atol {options.atol} + rtol "
                          f"{options.rtol}: max abs {parity.max_abs_err:.3g}, min cosine {parity.min_cosine:.6f}; "
                          "nothing was written")

    dtype = options.dtype or {"float16": "fp16", "bfloat16": "bf16"}.get(
        str(config_dict.get("dtype") or config_dict.get("torch_dtype")), "fp32")
    import torch

    merged = merged.to(getattr(torch, DTYPES[dtype]))
    # The merge is checked in float32 (exact up to rounding); the folder holds the cast model, so
    # what the cast itself changed is measured and recorded too (not gated: fp16 moves by 1e-3).
    written = None
    if dtype != "fp32":
        cast_inputs = {k: v.to(merged.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        written = compare_output(f"written ({dtype}) vs unmerged", unmerged, _first_output(merged, cast_inputs), mask)
        if written.nonfinite:
            raise ParityError(f"as {dtype} the merged model's outputs hold {written.nonfinite} NaN or infinite values "
                              f"(its weights or activations pass {dtype}'s range); write it as fp32"
                              f"{' or bf16' if dtype == 'fp16' else ''}; nothing was written")
    record = {
        "stage": "merge",
        "parameters": {"base": str(base.resolve()), "adapters": [a.summary() for a in adapters],
                       "weights": options.weights or None, "combination": options.combination if len(adapters) > 1 else None,
                       "dtype": dtype, "atol": options.atol, "rtol": options.rtol},
        "tools": tool_versions("torch", "transformers", "peft"),
        "sources": {p.name: sha256_file(p) for p in base_weights},
        "time": now_iso(),
        "parity": {"unmerged_vs_merged": parity.to_dict(), "base_vs_merged": change.to_dict(),
                   **({"unmerged_vs_written": written.to_dict()} if written else {}),
                   "data": "16 standard-library docstring sentences" if "input_ids" in inputs and
                   (base / "tokenizer.json").is_file() else "seeded inputs"},
    }
    with staged_output(out, options.force, (base, *options.adapters), MERGED_MODEL) as folder:
        _save(merged, folder, out)
        for name in CARRIED:
            source = base / name
            if source.is_file():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, folder / name)
            elif source.is_dir():
                shutil.copytree(source, folder / name)
        records = earlier + [record] if earlier else record          # one merge: its entry alone
        (folder / MERGE_RECORD).write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    say(f"merged: max abs {parity.max_abs_err:.3g} against the PeftModel (float32); changed the base by max abs "
        f"{change.max_abs_err:.3g} (cosine {change.mean_cosine:.6f})"
        + (f"; written as {dtype}: max abs {written.max_abs_err:.3g}, min cosine {written.min_cosine:.6f} against "
           "the PeftModel" if written else ""))
    return Path(out)


def _save(merged, folder: Path, out) -> None:
    """save_pretrained into the staging ``folder``, with safetensors' writer errors (a full
    disk, a quota) raised as the OSError they are, naming ``out``, so the command line says
    which limit was hit in one line."""
    from safetensors import SafetensorError

    try:
        with quiet_transformers():
            merged.save_pretrained(folder)
    except SafetensorError as exc:
        code = re.search(r"(?:code: |os error )(\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(out)) from exc


def _check_complete(peft_model, adapter: AdapterInfo, name: str) -> None:
    """Refuse an adapter whose file lacks tensors its config asks for, or holds tensors it does
    not name: peft fills the missing ones with fresh values (random A, zero B) and only warns,
    drops the others without a word, and the merge check, run against that same PeftModel,
    would pass a model the adapter never described.  An empty file, a missing layer, or a
    config of another method (IA3, AdaLoRA) over LoRA weights all end here."""
    from peft.utils import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(peft_model, adapter_name=name))
    if adapter.weights_file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(adapter.weights_file), "np") as handle:
            present = set(handle.keys())
    else:
        import torch

        present = set(torch.load(adapter.weights_file, map_location="cpu", weights_only=True))
    missing = sorted(expected - present)
    if missing:
        raise AdapterError(f"adapter '{adapter.path}' lacks {len(missing)} of the {len(expected)} tensors its "
                           f"adapter_config.json ({adapter.peft_type}) asks for, e.g. {', '.join(missing[:2])}: peft "
                           "would fill them with fresh values; re-save the adapter with peft (save_pretrained)")
    extra = sorted(present - expected)
    if extra:       # peft drops them without a word: the merge would not be the adapter that was trained
        raise AdapterError(f"adapter '{adapter.path}' holds {len(extra)} tensors its adapter_config.json "
                           f"({adapter.peft_type}) does not name, e.g. {', '.join(extra[:2])}: peft would drop them; "
                           "the config must name them (target_modules, modules_to_save, bias, use_dora...), or "
                           "re-save the adapter with peft (save_pretrained)")


def _apply_adapters(model, adapters: list[AdapterInfo], options: MergeOptions, base: Path):
    """The base wrapped in a PeftModel with every adapter loaded (and combined when several)."""
    from peft import PeftModel

    try:
        with quiet_transformers():
            peft_model = PeftModel.from_pretrained(model, str(adapters[0].path), adapter_name="adapter0")
            for index, adapter in enumerate(adapters[1:], 1):
                peft_model.load_adapter(str(adapter.path), adapter_name=f"adapter{index}")
            for index, adapter in enumerate(adapters):
                _check_complete(peft_model, adapter, f"adapter{index}")
            if len(adapters) > 1:
                names = [f"adapter{i}" for i in range(len(adapters))]
                weights = options.weights or [1.0] * len(adapters)
                peft_model.add_weighted_adapter(names, weights, "combined", combination_type=options.combination)
                peft_model.set_adapter("combined")
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # torch's state-dict errors put the details on the lines after a bare header; a KeyError is just the key.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        said = f"no tensor {lines[0]} where the adapter expects one" if isinstance(exc, KeyError) else \
            " ".join(lines[:2])[:400]
        raise AdapterError(f"peft cannot apply the adapter(s) to '{base}': {said}") from exc
    return peft_model


_PROMPT_LEARNING = {"PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "ADAPTION_PROMPT", "CPT",
                    "CARTRIDGE"}


def read_merge_records(folder: Path) -> list[dict]:
    """The merges' lineage entries a merged folder carries, oldest first (a merged folder merged
    again carries every one); refused when one is malformed, since they go into the exported
    artifact's manifest."""
    from ..manifest import MANIFEST_SCHEMA
    from ..schema import problems

    record = Path(folder) / MERGE_RECORD
    if not record.is_file():
        return []
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{record} is not valid JSON ({exc}); merge again or delete it") from exc
    entries = data if isinstance(data, list) else [data]        # one merge: its entry alone
    if not entries:
        raise SourceError(f"{record} is malformed: it holds no merge entry; merge again or delete it")
    for entry in entries:
        found = problems(entry, MANIFEST_SCHEMA["properties"]["lineage"]["items"], MERGE_RECORD)
        if not found and entry["stage"] != "merge":
            found = [f"an entry of stage '{entry['stage']}', not 'merge'"]
        if found:
            raise SourceError(f"{record} is malformed: {'; '.join(found[:3])}; merge again or delete it")
    return entries
