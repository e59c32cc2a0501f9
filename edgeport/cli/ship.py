"""``edgeport ship``."""

from __future__ import annotations

import click

from . import main
from .common import emit_json, say


@main.command("ship")
@click.argument("recipe", required=False, type=click.Path())
@click.option("-o", "--output", "output", type=click.Path(), help="Output folder (default: the recipe's, or "
                                                                   "./ship-out/<name>).")
@click.option("--dry-run", is_flag=True, help="Validate the recipe and list the steps, cached or to run.")
@click.option("--force", is_flag=True, help="Run every step again, cached or not.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ship_command(recipe, output, dry_run, force, as_json):
    """Run RECIPE (YAML) from trained model to verified, benchmarked, packaged artifacts.
    Without RECIPE: the built-in demo on the bundled all-MiniLM-L6-v2."""
    from ..pipeline import load_recipe, ship
    from ..pipeline.summary import format_summary

    loaded = load_recipe(recipe, output)
    result = ship(loaded, force=force, dry_run=dry_run, progress=say)       # on stderr: stdout stays the JSON
    if dry_run and as_json:
        emit_json({"plan": [{"step": step, "cached": cached} for step, cached in result.plan]})
        return
    if dry_run:
        for step, cached in result.plan:
            click.echo(f"{'cached' if cached else 'will run':<9} {step}")
        return
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(format_summary(result))
    result.raise_for_failure()
