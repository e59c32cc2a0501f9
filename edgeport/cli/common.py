"""What several commands print: JSON, an artifact's description, progress."""

from __future__ import annotations

import json
import sys

import click


TRUSTED_KEY_HELP = "Refuse a bundle unless it is signed by this public key (PEM; see package --sign)."


class FiniteFloatRange(click.FloatRange):
    """A float range that refuses nan and infinity: every comparison with nan is false, so
    click's range let ``--top-p nan`` through to the sampler."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number != number or number in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def given(**values):
    """Only the options the user gave: None means "the library's default"."""
    return {k: value for k, value in values.items() if value is not None}


def options_given(ctx: click.Context) -> frozenset[str]:
    """The options the user wrote on the command line (or in the environment), by their long
    name as written (``--per-tensor`` for the off side of ``--per-channel/--per-tensor``): what
    a command checks before it ignores one, and names when it refuses one."""
    unset = (click.core.ParameterSource.DEFAULT, None)
    return frozenset(_written_name(ctx, p) for p in ctx.command.params
                     if isinstance(p, click.Option) and ctx.get_parameter_source(p.name) not in unset)


def _written_name(ctx: click.Context, option: click.Option) -> str:
    if option.secondary_opts and ctx.params.get(option.name) is False:
        return max(option.secondary_opts, key=len)
    return max(option.opts, key=len)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def say(message: str) -> None:
    """A progress message, on stderr so stdout stays the command's result."""
    click.echo(message, err=True)


def show_artifact(path, as_json: bool, check_files: bool = False, written: bool = True,
                  expected_manifest_sha256: str | None = None, trusted_key: str | None = None) -> None:
    """What export, quantize and inspect print: the inspection, as text or JSON."""
    from ..inspection import format_inspection, inspect_artifact

    info = inspect_artifact(path, check_files, expected_manifest_sha256, trusted_key)
    if as_json:
        emit_json(info)
        return
    click.echo(format_inspection(info))
    if written:
        click.echo(f"wrote {path}")


class TerminalMeter:
    """The one progress mechanism: click's progress bar on stderr, with the current step
    and the time left, shown only when stderr is a terminal."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.current = ""

    @staticmethod
    def create(label: str) -> "TerminalMeter | None":
        return TerminalMeter(label) if sys.stderr.isatty() else None

    def start(self, total: int) -> None:
        if total > 0:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_eta=True,
                                         item_show_func=lambda _: self.current)
            self.bar.__enter__()

    def step(self, variant: str, stage: str) -> None:
        if self.bar is not None:
            self.current = f"{variant} · {stage}"
            self.bar.update(1)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def callback(self):
        """(done, total) callback, for loops that know their total only when they start."""
        def update(done: int, total: int) -> None:
            if self.bar is None:
                self.start(total)
            self.step(f"batch {done}/{total}", "calibration")
            if done >= total:
                self.finish()
        return update
