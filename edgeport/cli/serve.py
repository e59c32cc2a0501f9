"""``edgeport serve``."""

from __future__ import annotations

import click

from . import main
from .common import say


@main.command("serve")
@click.argument("artifact", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--name", help="Model name in the URLs (default: the artifact's folder or bundle name).")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Rows per dynamic batch (1: no batching).")
@click.option("--max-delay-ms", type=float, default=2.0, show_default=True, help="Longest wait to fill a batch.")
@click.option("--max-queue", type=int, default=256, show_default=True, help="Requests waiting; past it: 503.")
@click.option("--max-body-bytes", type=int, default=16 << 20, show_default=True, help="Larger bodies: 413.")
@click.option("--auth-token", help="Require 'Authorization: Bearer TOKEN' (or set EDGEPORT_AUTH_TOKEN).")
@click.option("--certfile", type=click.Path(), help="TLS certificate (PEM).")
@click.option("--keyfile", type=click.Path(), help="TLS private key (PEM).")
@click.option("--threads", type=int, help="Intra-op threads of the model's session.")
def serve_command(artifact, host, port, name, max_batch, max_delay_ms, max_queue, max_body_bytes, auth_token,
                  certfile, keyfile, threads):
    """Serve ARTIFACT (or a bundle) over HTTP: Open Inference Protocol v2, raw text, OpenAI completions for LLMs."""
    from ..serve import ServeOptions, serve

    serve(artifact, ServeOptions(host, port, name, max_batch, max_delay_ms, max_queue, max_body_bytes, auth_token,
                                 certfile, keyfile, threads), warn=say)
