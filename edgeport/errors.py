"""Every failure a user can cause, as one exception tree with one exit code per class.

The CLI prints ``error: <message>`` and exits with the class's ``exit_code``; the
message itself must say what was wrong and how to fix it.  A backend's stack trace is
kept as ``__cause__`` (shown with ``--debug``), never as the message.
"""

from __future__ import annotations


class EdgeportError(Exception):
    """Base of every error edgeport raises on purpose."""

    exit_code = 1


class InvalidOptionError(EdgeportError):
    """A command-line option or argument has a bad value (mirrors click's usage code)."""

    exit_code = 2


class SourceError(EdgeportError):
    """The model source is missing, incomplete or unreadable."""

    exit_code = 3


class UnsupportedModelError(EdgeportError):
    """The model's architecture or task is not one edgeport knows how to handle."""

    exit_code = 4


class OutputExistsError(EdgeportError):
    """The output path exists and ``--force`` was not given."""

    exit_code = 5


class UnsafeFileError(EdgeportError):
    """A file would need pickle (arbitrary code) to load, or a bundle member is unsafe."""

    exit_code = 6


class ArtifactError(EdgeportError):
    """An artifact folder is invalid: missing manifest, bad schema, tampered or truncated file."""

    exit_code = 7


class ExportError(EdgeportError):
    """Every export route failed."""

    exit_code = 8


class ParityError(EdgeportError):
    """A model's outputs differ from its reference beyond the allowed tolerance."""

    exit_code = 9


class CalibrationDataError(EdgeportError):
    """Calibration or evaluation data is empty, unreadable or does not fit the model."""

    exit_code = 10


class QuantizationError(EdgeportError):
    """Quantization could not produce a valid model."""

    exit_code = 11


class ModelInputError(EdgeportError):
    """Inputs given to a model do not match what its manifest says it takes."""

    exit_code = 12


class MissingDependencyError(EdgeportError):
    """An optional dependency (an install extra) is needed for this command."""

    exit_code = 13


class DeviceError(EdgeportError):
    """The requested device or execution provider is not available."""

    exit_code = 14


class AdapterError(EdgeportError):
    """A LoRA/peft adapter is missing, corrupted or does not fit its base model."""

    exit_code = 15


class RegressionError(EdgeportError):
    """A benchmark comparison found latency or parity worse than allowed."""

    exit_code = 16


class NoisyMeasurementError(EdgeportError):
    """``bench --strict``: the machine was too busy while measuring for the figures to mean anything."""

    exit_code = 16


class AcceleratorUnavailableError(EdgeportError):
    """The command needs a GPU, TensorRT or their Python packages, and this machine lacks them."""

    exit_code = 17


class ServerError(EdgeportError):
    """The HTTP server could not start (address in use, unreadable certificate...)."""

    exit_code = 18


class StoppedByUser(EdgeportError):
    """Ctrl-C: the command stopped; what it reports was measured before the stop."""

    exit_code = 130


class RecipeError(InvalidOptionError):
    """A ``ship`` recipe is malformed; the message names the offending key."""


# Exit code of a run stopped with Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT_CODE = StoppedByUser.exit_code


def refuse_unused(options, why: str) -> None:
    """Refuse, in one line, the options a command would otherwise ignore: ``options`` pairs
    each option's name with its value (or whether it was given); ``why`` ends the sentence
    "--a, --b do not apply ..."."""
    given = [name for name, value in options if value]
    if given:
        raise InvalidOptionError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply {why}")


def require(module: str, extra: str):
    """Import an optional dependency or explain which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"this command needs '{module}', which is not installed; "
            f"install it with: pip install 'edgeport[{extra}]'"
        ) from exc
