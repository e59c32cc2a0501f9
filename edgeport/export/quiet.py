"""Keeping the terminal for edgeport's own messages while the field's libraries work:
transformers' logging and progress bars, torch.onnx's logger and warnings are turned down
for the duration of a block and restored after it, never switched off for the process."""

from __future__ import annotations

import contextlib
import logging
import warnings


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
def quiet_torch_onnx():
    """torch.onnx warns about deprecations and TracerWarnings for every trace; dynamo's
    progress lines are turned off with ``verbose=False`` at the call instead."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
