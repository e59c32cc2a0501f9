"""The ``edgeport`` command line: parsing and printing only, each command a thin call into
the library.  One error bridge, in the group: an ``EdgeportError`` becomes ``error: ...``
and its class's exit code (``--debug`` shows the traceback); a command line click cannot
parse is one ``error:`` line too, exit 2; Ctrl-C exits 130, and SIGTERM (``timeout``, CI,
Kubernetes) unwinds the same way, so temporary folders are removed.  Anything else is a
bug and surfaces as one.  Heavy modules are imported inside the commands, so
``--help`` stays instant.
"""

from __future__ import annotations

import errno
import signal

import click

from ..errors import INTERRUPTED_EXIT_CODE, EdgeportError


_MACHINE_LIMITS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                   errno.ENOSPC: "no space left on the device (free some and run again)",
                   errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system"}


def _interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does: every stage cleans up after it (staged
    outputs, temporary folders).  ``serve`` installs its own handler (a graceful stop)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:             # not the main thread (an embedding program): leave its handler
        pass


def _one_line(message: str) -> str:
    """An error is one line, whatever it quotes: a path or a text holding a line break is shown
    with the break escaped (a file named 'no\\nexist' split the message in two)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class EdgeportGroup(click.Group):
    def invoke(self, ctx: click.Context):
        _interrupt_on_sigterm()
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            where = exc.ctx.command_path if exc.ctx else ctx.command_path
            message = exc.format_message()
            if isinstance(exc, click.MissingParameter):
                # click lists a missing choice's values a line each ("Choose from:\n\tfp16,\n\tint4"),
                # which the escape below printed as literal "\n\t": a list on one line reads right.
                message = " ".join(message.split())
            if isinstance(exc, click.NoSuchOption) and exc.option_name == "--debug":     # put where users put it
                command = where.split(" ", 1)[1] if " " in where else ""
                message = f"'--debug' goes before the command: edgeport --debug {command} ..."
            click.echo(_one_line(f"error: {message} (see '{where} -h')"), err=True)
            ctx.exit(exc.exit_code)
        except EdgeportError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(_one_line(f"error: {exc}"), err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            # The machine's limits, not a bug (no permission, a full disk): one line naming the file.
            if exc.errno not in _MACHINE_LIMITS or ctx.find_root().params.get("debug"):
                raise
            where = f"'{exc.filename}': " if exc.filename else ""
            click.echo(_one_line(f"error: {where}{_MACHINE_LIMITS[exc.errno]}"), err=True)
            ctx.exit(EdgeportError.exit_code)
        except KeyboardInterrupt:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo("error: interrupted; nothing was written", err=True)
            ctx.exit(INTERRUPTED_EXIT_CODE)


@click.group(cls=EdgeportGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="edgeport")
def main(debug: bool) -> None:
    """edgeport: take a trained model to a deployable artifact that is proven fast and faithful."""
    if not debug:
        _quiet_import_noise()


def _quiet_import_noise() -> None:
    """Where torchao is installed (ExecuTorch brings it), transformers and ExecuTorch import it,
    and it logs the GPU kernels a CPU wheel lacks, and torch a deprecation, in every process:
    lines about the environment, not the command (``--debug`` keeps them)."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


from . import artifacts, bench, export, package, quantize, serve, ship  # noqa: E402,F401  (each adds its commands to main)
