"""The PyTorch source model as a runner: the baseline ``bench --baseline torch`` measures
every artifact against.  It lives in export (which may import torch) and is handed to the
bench by the CLI; the bench never imports export."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..errors import AcceleratorUnavailableError, InvalidOptionError, require
from ..runtime.runner import Runner
from .prepare import HfSource
from ..workdirs import work_folder


def _no_folder(source: str | None, reference: Artifact) -> str:
    """Why the baseline cannot be built from the reference's lineage ``source``."""
    needs = "--baseline torch rebuilds the Hugging Face folder the reference was exported from"
    merged = [entry for entry in reference.manifest.lineage if entry.get("stage") == "merge"]
    if merged and not (source and Path(source).exists()):
        base = merged[-1].get("parameters", {}).get("base")
        return (f"{needs}; this one was exported with --adapter, from adapters merged into '{base}' in a temporary "
                "folder that is gone: merge them with 'edgeport merge BASE --adapter A -o MERGED', export MERGED, "
                "and bench that export with --baseline torch")
    if source and ":" in source and not Path(source).exists():
        return (f"{needs}; this one was exported from the Python callable '{source}', which the baseline does not "
                "rebuild: bench the artifacts without --baseline, or time the module yourself")
    if source and Path(source).is_file():
        return (f"{needs}; this one was exported from the file '{source}' (a Keras model?), which the baseline "
                "does not rebuild: bench the artifacts without --baseline")
    return f"{needs}; its lineage names '{source}', which is not there"


class TorchRunner(Runner):
    """The Hugging Face model an artifact was exported from, eager, in FP32."""

    def __init__(self, reference: Artifact, device: str = "cpu", threads: int | None = None):
        require("torch", "export")
        import torch

        if threads:
            torch.set_num_threads(threads)
        export = reference.manifest.export_parameters()
        source = export.get("source")
        if not source or not Path(source).is_dir():
            raise InvalidOptionError(_no_folder(source, reference))
        if device == "cuda" and not torch.cuda.is_available():
            raise AcceleratorUnavailableError("--baseline-device cuda: PyTorch sees no CUDA device on this machine")
        self._work = work_folder("edgeport-baseline-")
        model = HfSource(Path(source), export.get("task"), False, 128, Path(self._work.name))
        variant = model.variants(False)[0]
        job = model.job(variant)
        recorded = reference.manifest.export_entry().get("sources") or {}
        changed = sorted(name for name, digest in recorded.items() if job.sources.get(name) != digest)
        if changed:
            self._work.cleanup()
            raise InvalidOptionError(f"'{source}' no longer holds the weights '{reference.path}' was exported from "
                                     f"({', '.join(changed)} changed or went): the baseline would time another model; "
                                     "export it again, or bench without --baseline")
        self.module = job.module.to(device)
        self.torch_device = torch.device(device)
        self.input_names = job.input_names
        super().__init__(reference.manifest.inputs, job.output_names, f"torch-{device}")
        self.source = source

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            out = self.module(*[torch.from_numpy(feeds[n]).to(self.torch_device) for n in self.input_names])
        return {name: value.detach().float().cpu().numpy() for name, value in zip(self.output_names, out)}

    def close(self) -> None:
        super().close()
        self.module = None
        self._work.cleanup()


class TorchGenerator:
    """The transformers causal LM an artifact was exported (or merged) from, eager FP32, greedy
    with its KV cache: the baseline of ``bench`` for generation."""

    def __init__(self, reference: Artifact, device: str = "cpu", threads: int | None = None):
        require("torch", "export")
        import torch
        import transformers

        from .quiet import quiet_transformers

        if threads:
            torch.set_num_threads(threads)

        source = reference.manifest.export_parameters().get("source")
        if not source or not (Path(source) / "config.json").is_file():
            raise InvalidOptionError(_no_folder(source, reference))
        if device == "cuda" and not torch.cuda.is_available():
            raise AcceleratorUnavailableError("--baseline-device cuda: PyTorch sees no CUDA device on this machine")
        with quiet_transformers():
            self.model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).to(device).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.torch_device = torch.device(device)
        self.device = f"torch-{device}"
        self.source = source

    def stream_ids(self, prompt_ids, max_new_tokens: int):
        import torch

        with torch.no_grad():
            ids = torch.tensor([list(prompt_ids)], device=self.torch_device)
            out = self.model(ids, use_cache=True)
            for step in range(max_new_tokens):
                token = int(out.logits[0, -1].argmax())
                if token in self.eos:
                    return
                yield token
                if step + 1 < max_new_tokens:
                    out = self.model(torch.tensor([[token]], device=self.torch_device),
                                     past_key_values=out.past_key_values, use_cache=True)

    def close(self) -> None:
        self.model = None
