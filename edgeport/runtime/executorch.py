"""ExecuTorch programs (``model.pte``) run through ExecuTorch's Python runtime
(``executorch.runtime``), with its XNNPACK kernels for the delegated parts.

What it needs: the ``executorch`` package and torch.  The Python runtime takes and returns
torch tensors, and importing it imports torch; on a phone or a board the same ``.pte`` runs
under ExecuTorch's C++ runtime (no Python, no torch), which is what the program is for.
edgeport's Python runner is for checking and benchmarking it on a workstation or an ARM64
Linux box.

A damaged program can take the process down (a segfault inside the flatbuffer loader, not
an exception), so the file is checked before ExecuTorch sees it: its magic bytes, and its
SHA-256 against the manifest (``Artifact`` checks that); the loader then runs ExecuTorch's
own internal-consistency verification.  Shapes outside the bounds the program was exported
for are refused before ``execute`` (ExecuTorch answers them with "error 0x12").
"""

from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ModelInputError, require
from .logs import errors_only
from .runner import Runner

# A .pte starts with a 4-byte flatbuffer offset, then the file identifier "ET" + version.
PTE_MAGIC = b"ET12"


def check_program_file(path: Path) -> None:
    """Refuse what is not an ExecuTorch program before the loader reads it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise ArtifactError(f"cannot read '{path}': {exc}") from exc
    if len(head) < 8 or head[4:8] != PTE_MAGIC:
        raise ArtifactError(f"'{path}' is not an ExecuTorch program (no '{PTE_MAGIC.decode()}' header: damaged, "
                            "truncated, or another kind of file)")


@contextlib.contextmanager
def _quiet_import():
    """Importing ExecuTorch's runtime imports torchao, which logs, in every process, the GPU
    kernels a CPU wheel lacks and a torch deprecation; those lines are dropped."""
    with errors_only(("torchao", "torch.utils._pytree")), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def _native_log_held():
    """ExecuTorch's C++ side logs to file descriptor 2 while it sets up XNNPACK (five lines
    about CPU identification files a VM does not have, and the thread-pool size); they are
    held, and shown only if the block fails."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def set_threads(threads: int | None) -> None:
    """ExecuTorch's CPU thread pool is process-wide; size it once, before loading."""
    if not threads:
        return
    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    except ImportError:       # an ExecuTorch without the hook keeps its own choice
        return
    with _native_log_held():
        _unsafe_reset_threadpool(int(threads))


class ExecuTorchRunner(Runner):
    """One ``forward`` method of a ``.pte`` program."""

    def __init__(self, program_file: Path, manifest, threads: int | None = None):
        require("executorch", "executorch")
        require("torch", "executorch")
        check_program_file(program_file)
        super().__init__(manifest.inputs, [s["name"] for s in manifest.graph["outputs"]], "executorch-xnnpack")
        bounds = manifest.graph.get("bounds") or {}
        self.shape_range = {spec.name: (tuple(_bound(d, bounds, 0) for d in spec.shape),
                                        tuple(_bound(d, bounds, 1) for d in spec.shape))
                            for spec in self.inputs.values()}
        self._lock = threading.Lock()
        set_threads(threads)
        with _quiet_import():
            from executorch.runtime import Runtime, Verification

        try:
            with _native_log_held():
                program = Runtime.get().load_program(Path(program_file),
                                                     verification=Verification.InternalConsistency)
                self._method = program.load_method("forward")
        except (RuntimeError, ValueError) as exc:
            raise ArtifactError(f"ExecuTorch cannot load '{program_file}': {str(exc).splitlines()[0]}") from exc
        self._program = program

    def check(self, feeds):
        feeds = super().check(feeds)
        for name, array in feeds.items():
            low, high = self.shape_range[name]
            outside = [(axis, size, lo, hi) for axis, (size, lo, hi) in enumerate(zip(array.shape, low, high))
                       if not lo <= size <= hi]
            if outside:
                axis, size, lo, hi = outside[0]
                raise ModelInputError(f"input '{name}' has {size} along axis {axis}; this ExecuTorch program was "
                                      f"exported for {lo}..{hi} there (export again with larger bounds)")
        return feeds

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.inputs]
        with self._lock:
            try:
                outputs = self._method.execute(tensors)
            except RuntimeError as exc:
                raise ModelInputError(f"ExecuTorch failed to run the program: {str(exc).splitlines()[0]}") from exc
        return {name: value.numpy() if hasattr(value, "numpy") else np.asarray(value)
                for name, value in zip(self.output_names, outputs)}

    def close(self) -> None:
        super().close()
        self._method = self._program = None


def _bound(dim, bounds: dict, which: int) -> int:
    """A dim's lowest (``which`` 0) or highest (1) size: fixed ints are themselves, named
    dims come from the manifest's ``bounds``."""
    if isinstance(dim, int):
        return dim
    if dim not in bounds:
        raise ArtifactError(f"the manifest declares no bounds for the dimension '{dim}'")
    return int(bounds[dim][which])
