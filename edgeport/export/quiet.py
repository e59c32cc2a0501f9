"""Keeping the terminal for edgeport's own messages while the field's libraries work:
transformers' logging and progress bars, torch.onnx's logger and warnings are turned down
for the duration of a block and restored after it, never switched off for the process."""

from __future__ import annotations

import contextlib
import io
import warnings

from ..runtime.logs import errors_only

TORCH_LOGGERS = ("torch.onnx", "torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export",
                 "torch.utils._pytree", "torchao", "executorch")


@contextlib.contextmanager
def quiet_transformers():
    import transformers

    log = transformers.utils.logging
    level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


@contextlib.contextmanager
def quiet_torch_loggers():
    """torch's, torchao's and ExecuTorch's loggers held to errors for the block (torchao logs
    the GPU kernels a CPU wheel lacks on import; torch.export's shape solver, whole graphs)."""
    with errors_only(TORCH_LOGGERS):
        yield


@contextlib.contextmanager
def quiet_torch_onnx():
    """torch.onnx warns about deprecations and TracerWarnings for every trace, and
    torch.export's shape solver logs the whole traced graph when it gives up on a
    data-dependent shape (the route's one-line reason is reported instead); dynamo's
    progress lines are turned off with ``verbose=False`` at the call."""
    # torch.export also prints the traced graph to stderr when it fails; the exception
    # that follows carries the reason, so the printout is dropped.
    with quiet_torch_loggers(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
