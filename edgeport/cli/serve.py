"""``edgeport serve``."""

from __future__ import annotations

import click

from .. import vocabulary as v
from . import main
from .common import TRUSTED_KEY_HELP, say


@main.command("serve")
@click.argument("artifact", type=click.Path())
@click.option("--host", default=v.DEFAULT_HOST, show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=int, default=v.DEFAULT_PORT, show_default=True)
@click.option("--name", help="Model name in the URLs (default: the artifact's folder or bundle name).")
@click.option("--max-batch", type=int,
              help=f"Rows per dynamic batch (1: no batching; default {v.DEFAULT_MAX_BATCH}, or 1 for a dynamically "
                   "quantized INT8 model, whose rows would depend on the rows beside them).")
@click.option("--max-delay-ms", type=float, default=v.DEFAULT_MAX_DELAY_MS, show_default=True,
              help="Longest wait to fill a batch.")
@click.option("--max-queue", type=int, default=v.DEFAULT_MAX_QUEUE, show_default=True,
              help="Requests waiting; past it: 503.")
@click.option("--max-body-bytes", type=int, default=v.DEFAULT_MAX_BODY_BYTES, show_default=True,
              help="Larger bodies: 413.")
@click.option("--max-request-rows", type=int, default=v.DEFAULT_MAX_REQUEST_ROWS, show_default=True,
              help="Rows (texts) in one request; more: 413.  A request runs in calls of --max-batch rows.")
@click.option("--auth-token", help="Require 'Authorization: Bearer TOKEN' (visible in the process list: prefer "
                                   "--auth-token-file or EDGEPORT_AUTH_TOKEN).")
@click.option("--auth-token-file", type=click.Path(), help="A file holding the bearer token.")
@click.option("--certfile", type=click.Path(), help="TLS certificate (PEM).")
@click.option("--keyfile", type=click.Path(), help="TLS private key (PEM).")
@click.option("--threads", type=int, help="Intra-op threads of the model's session.")
@click.option("--trusted-key", type=click.Path(), help=TRUSTED_KEY_HELP)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one process; ray: a Ray Serve deployment (a local cluster, or --address).")
@click.option("--replicas", type=int, help="ray: replicas (default 1).")
@click.option("--min-replicas", type=int, help="ray: autoscaling on ongoing requests, from this many...")
@click.option("--max-replicas", type=int, help="ray: ...to this many replicas.")
@click.option("--address", help="ray: join this cluster (HOST:PORT or ray://HOST:PORT) instead of starting one.")
@click.option("--cpus-per-replica", type=float, help="ray: CPUs each replica reserves (default 1).")
def serve_command(artifact, host, port, name, max_batch, max_delay_ms, max_queue, max_body_bytes, max_request_rows,
                  auth_token, auth_token_file, certfile, keyfile, threads, trusted_key, engine, replicas, min_replicas,
                  max_replicas, address, cpus_per_replica):
    """Serve ARTIFACT (or a bundle) over HTTP: Open Inference Protocol v2, raw text, OpenAI completions for
    LLMs; in one process, or as a Ray Serve deployment (--engine ray)."""
    from ..errors import InvalidOptionError
    from ..serve import ServeOptions, serve

    options = ServeOptions(host=host, port=port, name=name, max_batch=max_batch, max_delay_ms=max_delay_ms,
                           max_queue=max_queue, max_body_bytes=max_body_bytes, max_request_rows=max_request_rows,
                           auth_token=auth_token, auth_token_file=auth_token_file, certfile=certfile, keyfile=keyfile,
                           threads=threads, trusted_key=trusted_key)
    cluster = {"--replicas": replicas, "--min-replicas": min_replicas, "--max-replicas": max_replicas,
               "--address": address, "--cpus-per-replica": cpus_per_replica}
    if engine == "local":
        given = [option for option, value in cluster.items() if value is not None]
        if given:
            raise InvalidOptionError(f"{', '.join(given)} apply to --engine ray")
        serve(artifact, options, warn=say)
        return
    if certfile:
        raise InvalidOptionError("--engine ray serves plain HTTP behind Ray's proxy; terminate TLS in front of it")
    from ..serve.cluster import ClusterOptions, serve_on_ray

    serve_on_ray(artifact, options, ClusterOptions(replicas, min_replicas, max_replicas, address, cpus_per_replica),
                 warn=say)
