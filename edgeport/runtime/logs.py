"""Loggers of the libraries edgeport drives, held to errors for a block and restored after it
(never switched off for the process): the runtime's ExecuTorch import and the exporters use
the same mechanism."""

from __future__ import annotations

import contextlib
import logging


class _OnlyErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def errors_only(names):
    """The loggers ``names`` (and their children) pass only errors inside the block.  A level
    and a filter too: torch.export resets some levels while it runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels, only_errors = [logger.level for logger in loggers], _OnlyErrors()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
        logger.addFilter(only_errors)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeFilter(only_errors)
            logger.setLevel(level)
