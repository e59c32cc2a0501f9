"""``edgeport inspect``, ``edgeport verify`` and ``edgeport run``: reading, checking and
running artifacts (and bundles)."""

from __future__ import annotations

import click

from .. import vocabulary as v
from ..errors import InvalidOptionError, refuse_unused
from . import main
from .common import TRUSTED_KEY_HELP, FiniteFloatRange, emit_json, say, show_artifact


@main.command("inspect")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-checksums", is_flag=True,
              help="Skip checking an artifact folder's files against their sha256 (a bundle is always checked).")
@click.option("--expect-manifest-sha256", metavar="HEX",
              help="Fail unless edgeport.json has this digest (as a bundle or an earlier inspect recorded it).")
@click.option("--trusted-key", type=click.Path(), help=TRUSTED_KEY_HELP)
def inspect_command(artifact, as_json, no_checksums, expect_manifest_sha256, trusted_key):
    """Describe an artifact or bundle and check its files against their checksums."""
    show_artifact(artifact, as_json, check_files=not no_checksums, written=False,
                  expected_manifest_sha256=expect_manifest_sha256, trusted_key=trusted_key)


@main.command("verify")
@click.argument("candidate", type=click.Path())
@click.option("--reference", type=click.Path(), help="The artifact to compare against.")
@click.option("--data", type=click.Path(), help="Evaluation data (default: bundled real data for the task).")
@click.option("--limit", type=int, help="Use at most this many examples.")
@click.option("--min-cosine", type=float)
@click.option("--max-abs-error", type=float)
@click.option("--min-top1-agreement", type=float)
@click.option("--platform", type=click.Choice(v.PLATFORMS),
              help="Run CANDIDATE's (a bundle's) golden check on this platform, emulated.")
@click.option("--cpu", help="With --platform: the emulated CPU (e.g. cortex-a72).")
@click.option("--trusted-key", type=click.Path(), help=TRUSTED_KEY_HELP)
@click.option("--json", "as_json", is_flag=True)
def verify_command(candidate, reference, data, limit, min_cosine, max_abs_error, min_top1_agreement, platform, cpu,
                   trusted_key, as_json):
    """Parity gate: compare CANDIDATE with --reference on real data (or, with --platform, run a
    bundle's golden check on another platform); exit non-zero below the thresholds."""
    from ..parity import ParityBudget

    budget = ParityBudget(min_cosine, max_abs_error, min_top1_agreement)
    # Each mode takes its own options; one given to the other would be silently ignored.
    if platform:
        refuse_unused((("--reference", reference), ("--data", data), ("--limit", limit)),
                      "with --platform, which runs the bundle's own golden inputs; drop them, or verify against a "
                      "reference without --platform")
    elif cpu:
        raise InvalidOptionError("--cpu picks the emulated CPU of --platform; give --platform linux/arm64 too")
    if platform:
        from ..platforms import verify_on_platform

        report = verify_on_platform(candidate, platform, cpu=cpu, budget=budget, progress=say, trusted_key=trusted_key)
        emit_json(report.to_dict()) if as_json else click.echo(report.summary())
        report.raise_for_failure()
        return
    if reference is None:
        raise InvalidOptionError("give --reference ARTIFACT (or --platform to check a bundle on another platform)")
    from ..parity import thresholds_text, verify

    report = verify(candidate, reference, data, budget, limit, trusted_key)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(f"{candidate} against {reference} on {report.data} ({report.samples} samples)")
        click.echo(report.summary())
        source = "given" if budget.given else "the gate the candidate passed when it was made"
        click.echo(f"thresholds ({source}): {thresholds_text(report.thresholds)}")
        click.echo("PASSED" if report.passed else "FAILED")
    report.raise_for_failure(f"'{candidate}'")


@main.command("run")
@click.argument("artifact", type=click.Path())
@click.option("--text", "texts", multiple=True, help="A text to run (repeatable).")
@click.option("--input", "input_file", type=click.Path(),
              help=".npz of feeds (one array per input), .txt of texts (one a line), or an image folder.")
@click.option("--prompt", "prompts", multiple=True, help="Causal LMs: a prompt to continue (repeatable).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="Causal LMs: tokens to generate (default 32).")
@click.option("--temperature", type=FiniteFloatRange(min=0, min_open=True),
              help="Causal LMs: sample at this temperature (default: greedy).")
@click.option("--top-k", type=click.IntRange(min=1))
@click.option("--top-p", type=FiniteFloatRange(min=0, max=1, min_open=True))
@click.option("--seed", type=int)
@click.option("--adapter", help="Causal LMs: the runtime adapter to generate with.")
@click.option("--device", type=click.Choice(v.DEVICES), default="auto", show_default=True)
@click.option("--threads", type=int, help="Intra-op threads (default: ONNX Runtime's choice).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Micro-batch size.")
@click.option("--trusted-key", type=click.Path(), help=TRUSTED_KEY_HELP)
@click.pass_context
def run_command(ctx, artifact, texts, input_file, prompts, max_new_tokens, temperature, top_k, top_p, seed, adapter,
                device, threads, batch_size, trusted_key):
    """Run ARTIFACT (or a bundle) on texts, feeds, images or prompts; print JSON (prompts stream text)."""
    generation = {"--max-new-tokens": max_new_tokens, "--temperature": temperature, "--top-k": top_k,
                  "--top-p": top_p, "--seed": seed, "--adapter": adapter}
    if prompts:
        if texts or input_file:
            raise InvalidOptionError("give --prompt, or --text / --input, not both")
        if ctx.get_parameter_source("batch_size") != click.core.ParameterSource.DEFAULT:
            raise InvalidOptionError("--batch-size sets the micro-batches of --text and --input; prompts are "
                                     "generated one at a time")
        if seed is not None and temperature is None and top_k is None and top_p is None:
            raise InvalidOptionError("--seed seeds sampling (--temperature, --top-k or --top-p); greedy decoding "
                                     "draws nothing")
        from ..running import stream_generation

        for piece in stream_generation(artifact, list(prompts), max_new_tokens, temperature, top_k, top_p, seed,
                                       adapter, device, threads, trusted_key):
            click.echo(piece, nl=False)
        click.echo()
        return
    if bool(texts) == bool(input_file):
        raise InvalidOptionError("give either --text (one or more), --input FILE or --prompt")
    if any(not text.strip() for text in texts):      # as a text file's blank lines, which are skipped
        raise InvalidOptionError("--text is empty; give the text to run")
    given = [option for option, value in generation.items() if value is not None]
    if given:
        raise InvalidOptionError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to causal LMs' "
                                 "--prompt only")
    if batch_size < 1:
        raise InvalidOptionError(f"--batch-size must be a whole number >= 1 (got {batch_size})")
    from ..running import run_artifact

    given_batch = ctx.get_parameter_source("batch_size") != click.core.ParameterSource.DEFAULT
    emit_json(run_artifact(artifact, list(texts), input_file, device, threads, batch_size, trusted_key,
                           note=say if given_batch else None))
