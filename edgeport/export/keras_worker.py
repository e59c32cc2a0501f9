"""The Keras side of ``export onnx model.keras``, run in a process of its own: Keras chooses its
backend from ``KERAS_BACKEND`` once, at import, for the whole process, so the export sets it
(to torch: no TensorFlow needed) in a child rather than in the caller.

    python -m edgeport.export.keras_worker MODEL.keras WORK_DIR [executorch SETTINGS_JSON]

writes WORK_DIR/model.onnx (Keras' own ONNX export) or, for ExecuTorch, WORK_DIR/model.pte
(the backend's torch module captured and lowered by export/executorch.py),
WORK_DIR/samples.npz (the inputs it ran and Keras' predictions for them) and
WORK_DIR/info.json; on failure, a one-line reason on stderr and exit code 3.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _fail(message: str) -> None:
    print(message.replace("\n", " ")[:600], file=sys.stderr)
    sys.exit(3)


def _samples(shape, dtype, np):
    """Real inputs where the model takes images (scikit-learn's digits, resized), else seeded noise."""
    rng = np.random.default_rng(0)
    dims = [int(d) for d in shape[1:]]
    if len(dims) == 3 and dtype.startswith("float"):
        from sklearn.datasets import load_digits

        images = (load_digits().images / 16.0).astype(dtype)
        height, width, channels = dims
        rows = (np.arange(height) * 8 // height).clip(0, 7)
        cols = (np.arange(width) * 8 // width).clip(0, 7)
        resized = images[:, rows][:, :, cols][..., None].repeat(channels, axis=-1)
        return {"validation": resized[1400:1424], "extra": resized[1424:1427], "trace": resized[:2],
                "calibration": resized[100:164]}
    make = (lambda n: rng.standard_normal((n, *dims)).astype(dtype)) if dtype.startswith("float") else \
        (lambda n: rng.integers(0, 10, (n, *dims)).astype(dtype))
    return {"validation": make(8), "extra": make(3), "trace": make(2)}


def _unregistered_objects(source: str, keras) -> list[str]:
    """The custom classes a .keras file's config names that this process has no code for."""
    import zipfile

    try:
        with zipfile.ZipFile(source) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            name = node.get("registered_name")
            if isinstance(name, str) and ">" in name and keras.saving.get_registered_object(name) is None:
                found.add(name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(found)


def main(source: str, work: str, target: str = "onnx", settings: str = "{}") -> None:
    os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
        import numpy as np
    except ImportError as exc:
        _fail(f"missing: {exc}; install with: pip install 'edgeport[keras]'")
    work_dir = Path(work)
    readable = source
    suffix = Path(source).suffix
    if suffix.lower() != suffix:           # Keras knows a file by its lower-case suffix only
        readable = str(work_dir / f"source{suffix.lower()}")
        os.symlink(Path(source).absolute(), readable)
    try:
        model = keras.saving.load_model(readable, compile=False)
    except (TypeError, ValueError, KeyError, AttributeError, ImportError) as exc:
        missing = _unregistered_objects(source, keras)
        if missing:
            _fail(f"Keras cannot load '{source}': it uses custom objects whose code is not here: "
                  f"{', '.join(missing)}. Export from a script that imports that code (decorated with "
                  "keras.saving.register_keras_serializable), or save the model without custom layers")
        reason = str(exc)
        if "Lambda" in reason and "safe_mode" in reason:
            _fail(f"'{source}' holds a Lambda layer, whose Python code Keras runs on load: edgeport loads models in "
                  "Keras' safe mode and refuses it; rewrite the Lambda as a custom layer "
                  "(keras.saving.register_keras_serializable) and export from a script that imports it")
        _fail(f"Keras cannot load '{source}': {type(exc).__name__}: {reason[:300]}")
    except (OSError, EOFError) as exc:
        _fail(f"'{source}' is damaged or not a Keras 3 file: {exc}")
    except Exception as exc:  # zipfile.BadZipFile and h5py errors of a corrupted archive
        _fail(f"'{source}' is damaged or not a Keras 3 file: {type(exc).__name__}: {exc}")
    if not hasattr(model, "inputs"):        # a Sequential saved before any call or keras.Input
        _fail(f"'{source}' was saved before it was built, so its input shape is unknown; start it with "
              "keras.Input(shape=...) (or call model.build(shape)) and save it again")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        _fail(f"'{source}' has {len(model.inputs)} inputs and {len(model.outputs)} outputs; export takes Keras "
              "models with one of each (export others as module:callable from their torch backend)")
    spec = model.inputs[0]
    dtype = str(spec.dtype)
    if any(d is None for d in tuple(spec.shape)[1:]):
        _fail(f"'{source}' takes inputs of shape {tuple(spec.shape)}: only the batch may be left open; rebuild the "
              "model with a fixed input size (keras.Input(shape=(32, 32, 3)), say) and save it again")
    samples = _samples(tuple(spec.shape), dtype, np)
    predictions = {name: np.asarray(model.predict(value, verbose=0)) for name, value in samples.items()}
    lowered = {}
    if target == "executorch":
        lowered = _executorch(model, samples, json.loads(settings), work_dir)
    else:
        try:
            model.export(str(work_dir / "model.onnx"), format="onnx", verbose=False)
        except Exception as exc:  # Keras wraps torch.onnx; any failure there means this model cannot be exported
            _fail(f"Keras could not export '{source}' to ONNX: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    np.savez(work_dir / "samples.npz", **{f"input:{k}": v for k, v in samples.items()},
             **{f"output:{k}": v for k, v in predictions.items()})
    last = model.layers[-1]
    (work_dir / "info.json").write_text(json.dumps({
        "input_shape": [d for d in spec.shape], "input_dtype": dtype, "output_shape": list(model.outputs[0].shape),
        "keras": keras.__version__, "backend": keras.backend.backend(), "name": model.name,
        "last_layer": type(last).__name__, "activation": getattr(getattr(last, "activation", None), "__name__", None),
        "layers": [type(layer).__name__ for layer in model.layers], **lowered}))


def _executorch(model, samples: dict, settings: dict, work_dir: Path) -> dict:
    """The Keras model's torch module captured with a bounded batch and lowered to XNNPACK
    (fp32, or int8 calibrated on the sample images): what export/executorch.py does for
    torch sources, here because only this process has the torch backend."""
    import numpy as np
    import torch

    from ..errors import EdgeportError
    from .executorch import ExecuTorchOptions, lowered_for_job
    from .prepare import ExportJob

    class KerasModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return (self.model(inputs[0]),)

    job = ExportJob(module=KerasModule().eval(), task="custom", variant="dynamic", input_names=["inputs"],
                    output_names=["outputs"], input_axes={"inputs": {0: "batch"}}, output_axes={},
                    trace_inputs={"inputs": samples["trace"]}, validation_batches=[{"inputs": samples["validation"]}],
                    validation_data="")
    calibration = [{"inputs": samples["calibration"]}] if "calibration" in samples else []
    checks = [{"inputs": samples["validation"][:8]}]
    references = [{"outputs": np.asarray(model.predict(checks[0]["inputs"], verbose=0))}]
    try:
        lowered = lowered_for_job(job, ExecuTorchOptions(**settings), calibration, checks, references)
    except EdgeportError as exc:
        _fail(f"{type(exc).__name__}: {exc}")
    (work_dir / "model.pte").write_bytes(lowered.buffer)
    return {"executorch": {"scheme": lowered.scheme, "delegation": lowered.delegation,
                           "planned_bytes": lowered.planned_bytes, "candidates": lowered.candidates}}


if __name__ == "__main__":
    main(*sys.argv[1:5])
