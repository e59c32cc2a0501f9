"""LoRA adapters switched at run time on one base model (ONNX Runtime GenAI's multi-LoRA).

The model builder, given a peft adapter, writes the LoRA branches into the graph as
``...lora_A.MatMul.weight`` / ``...lora_B.MatMul.weight`` initializers (the scaling folded
into B).  ``add_lora_slots`` turns each into a graph input whose default is a zero-rank
tensor: with no adapter active the branch adds nothing (the base model, measured token for
token), and an adapter file sets every input for the generations that use it.
``adapter_file`` builds the same graph for one adapter and keeps only its LoRA weights,
written in ONNX Runtime's adapter format (.onnx_adapter).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import AdapterError

RANK = "lora_rank"


def _is_lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def _load(model_file: Path):
    import onnx

    return onnx.load(str(model_file))


def add_lora_slots(model_file: Path) -> dict[str, list]:
    """Replace the baked LoRA weights of ``model_file`` by inputs with zero-rank defaults;
    return each slot's shape (the rank symbolic)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = _load(model_file)
    slots = {}
    for init in model.graph.initializer:
        if not _is_lora(init.name):
            continue
        rows, cols = init.dims
        shape = [rows, RANK] if ".lora_A." in init.name else [RANK, cols]
        empty = np.zeros((rows, 0) if ".lora_A." in init.name else (0, cols), np.float32)
        init.CopyFrom(numpy_helper.from_array(empty, init.name))
        model.graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, shape))
        slots[init.name] = shape
    if not slots:
        raise AdapterError("the model builder wrote no LoRA branches for the first adapter; is it a LoRA adapter "
                           "for this model's linear layers?")
    data = model_file.with_name(model_file.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(model, str(model_file), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return slots


def lora_weights(model_file: Path) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in _load(model_file).graph.initializer
            if _is_lora(init.name)}


def check_adapter_fits_base(base: Path, adapter: Path) -> None:
    """Name the module and both shapes when a LoRA adapter was trained for another base,
    from the safetensors headers alone (before the builder, which fails less legibly)."""
    from .lora import read_adapter
    from .source import safetensors_shapes, weight_files

    info = read_adapter(adapter, allow_pickle=False)
    # ONNX Runtime GenAI's slots add B @ A to a weight and nothing else: DoRA's learned magnitude
    # and other peft methods came out as a silently different model.
    if info.peft_type != "LORA" or info.config.get("use_dora"):
        kind = "a DoRA adapter" if info.config.get("use_dora") else f"a {info.peft_type} adapter"
        raise AdapterError(f"'{adapter}' is {kind}; runtime adapters are plain LoRA (the slots add B @ A to a weight "
                           "and nothing else): merge it into the base instead (edgeport merge, or export --adapter)")
    base_shapes = safetensors_shapes(weight_files(base, allow_pickle=False))
    for key, shape in safetensors_shapes([info.weights_file]).items():
        for marker, axis in ((".lora_A.", 1), (".lora_B.", 0)):
            if marker not in key:
                continue
            module = key.split(marker)[0].removeprefix("base_model.model.")
            weight = base_shapes.get(module + ".weight")
            if weight is None:
                raise AdapterError(f"adapter '{adapter}' targets '{module}', which the base model '{base}' does not "
                                   "have: it was trained for another base")
            expected = weight[1] if axis == 1 else weight[0]
            if shape[axis] != expected:
                raise AdapterError(f"adapter '{adapter}' does not fit '{module}': its {marker.strip('.')} is {shape}, "
                                   f"the base weight is {weight}; it was trained for another base model")


def check_fits(weights: dict[str, np.ndarray], slots: dict[str, list], adapter: Path) -> None:
    if set(weights) != set(slots):
        missing, extra = sorted(set(slots) - set(weights)), sorted(set(weights) - set(slots))
        raise AdapterError(f"adapter '{adapter}' targets other modules than the base's LoRA slots (missing "
                           f"{missing[:2]}, extra {extra[:2]}): runtime adapters on one base must target the same "
                           "modules; merge this one instead")
    for name, value in weights.items():
        expected = slots[name]
        if any(isinstance(e, int) and e != g for e, g in zip(expected, value.shape)):
            raise AdapterError(f"adapter '{adapter}': '{name}' is {list(value.shape)}, the base expects {expected}")


def write_adapter(weights: dict[str, np.ndarray], path: Path) -> None:
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value, np.float32))
                        for name, value in weights.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt.export_adapter(str(path))


def adapter_file(base: Path, adapter: Path, precision: str, slots: dict[str, list], out_dir: Path, name: str,
                 work: Path) -> str:
    """Write ``out_dir/<name>.onnx_adapter`` for the peft ``adapter``; return its name inside
    the artifact (``adapters/<name>.onnx_adapter``)."""
    from .lm_builder import run_builder

    if not name.replace("-", "").replace("_", "").isalnum():
        raise AdapterError(f"adapter name '{name}' must be letters, digits, '-' and '_'")
    check_adapter_fits_base(base, adapter)
    built = work / f"adapter-{name}"
    run_builder(base, built, precision, work / "cache", {"adapter_path": str(adapter)})
    weights = lora_weights(built / "model.onnx")
    check_fits(weights, slots, adapter)
    write_adapter(weights, out_dir / f"{name}.onnx_adapter")
    return f"{out_dir.name}/{name}.onnx_adapter"


def export_runtime_adapter(artifact_path, adapter: str, out, force: bool = False, progress=None) -> Path:
    """``edgeport export adapter``: an .onnx_adapter for a causal-LM artifact exported with LoRA
    slots, from a peft adapter trained on the same base (the artifact's source folder)."""
    from ..workdirs import work_folder

    from ..artifact import Artifact
    from ..errors import InvalidOptionError
    from ..outputs import ADAPTER_FILE, staged_output

    artifact = Artifact.load(artifact_path)
    slots = {spec.name: list(spec.shape) for spec in artifact.manifest.inputs if _is_lora(spec.name)}
    if artifact.task != "text-generation" or not slots:
        raise InvalidOptionError(f"'{artifact_path}' has no LoRA slots: export the causal LM with --runtime-adapter first")
    parameters = artifact.manifest.export_parameters()
    base = Path(parameters.get("source", ""))
    if not (base / "config.json").is_file():
        raise InvalidOptionError(f"the base model '{base}' that '{artifact_path}' was exported from is not there; "
                                 "an adapter file is built from the same base")
    with staged_output(out, force, (artifact_path, adapter), ADAPTER_FILE) as staging:
        with work_folder("edgeport-adapter-") as work_dir:
            work = Path(work_dir)
            if progress:
                progress(f"building adapter '{Path(adapter).name}' against {base}...")
            from .lm_builder import run_builder

            check_adapter_fits_base(base, Path(adapter))
            run_builder(base, work / "built", parameters.get("precision", "fp32"), work / "cache",
                        {"adapter_path": str(adapter)})
            weights = lora_weights(work / "built" / "model.onnx")
            check_fits(weights, slots, Path(adapter))
            write_adapter(weights, work / "adapter.onnx_adapter")
            (work / "adapter.onnx_adapter").replace(staging)
    return Path(out)
