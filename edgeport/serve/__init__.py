"""``edgeport serve``: an artifact or bundle behind a small HTTP server (uvicorn): Open
Inference Protocol v2 with dynamic batching, a raw-text endpoint, OpenAI-compatible
completions for causal LMs, Prometheus metrics, bearer tokens and TLS.  Bound to 127.0.0.1
unless told otherwise."""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidOptionError, ServerError, require

TOKEN_VARIABLE = "EDGEPORT_AUTH_TOKEN"


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    name: str | None = None              # default: the artifact folder's name
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256
    max_body_bytes: int = 16 << 20
    auth_token: str | None = None        # default: $EDGEPORT_AUTH_TOKEN
    certfile: str | None = None
    keyfile: str | None = None
    threads: int | None = None
    graceful_seconds: float = 30.0

    def check(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InvalidOptionError(f"--port must be between 0 and 65535 (got {self.port!r})")
        for option, value in (("--max-batch", self.max_batch), ("--max-queue", self.max_queue),
                              ("--max-body-bytes", self.max_body_bytes)):
            if not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"{option} must be a whole number >= 1 (got {value!r})")
        if not math.isfinite(self.max_delay_ms) or self.max_delay_ms < 0:
            raise InvalidOptionError("--max-delay-ms must be a finite number >= 0")
        if bool(self.certfile) != bool(self.keyfile):
            raise InvalidOptionError("TLS needs both --certfile and --keyfile")
        for option, path in (("--certfile", self.certfile), ("--keyfile", self.keyfile)):
            if path and not Path(path).is_file():
                raise ServerError(f"{option} '{path}' does not exist")
        if self.auth_token is not None and not self.auth_token.strip():
            raise InvalidOptionError("--auth-token must not be empty")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port or --host") \
                from exc


def startup_warnings(options: ServeOptions, token: str | None) -> list[str]:
    if is_loopback(options.host) or token is not None:
        return []
    return [f"warning: serving on {options.host}, reachable from other machines, without --auth-token: anyone who "
            f"can reach port {options.port} can use the model"]


def make_app(path, options: ServeOptions = ServeOptions()):
    """The ASGI app for ``path`` (artifact folder or bundle), for embedding in another server."""
    from ..runtime import load
    from .app import Limits, build_app

    options.check()
    model = load(path, device="cpu", threads=options.threads)
    name = options.name or model.artifact.path.name
    if Path(path).is_file():
        name = options.name or Path(path).name.removesuffix(".tar.gz").removesuffix(".tgz")
    token = options.auth_token if options.auth_token is not None else os.environ.get(TOKEN_VARIABLE) or None
    limits = Limits(options.max_batch, options.max_delay_ms, options.max_queue, options.max_body_bytes)
    return build_app(model, name, limits, token), name, token


def serve(path, options: ServeOptions = ServeOptions(), warn=print) -> None:
    """Serve until interrupted; SIGTERM / Ctrl-C finish the accepted requests first."""
    require("uvicorn", "serve")
    require("starlette", "serve")
    import uvicorn

    options.check()
    _check_port_free(options.host, options.port)
    app, name, token = make_app(path, options)
    for message in startup_warnings(options, token):
        warn(message)
    scheme = "https" if options.certfile else "http"
    warn(f"serving '{name}' on {scheme}://{options.host}:{options.port} (Open Inference Protocol v2)")
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                            ssl_certfile=options.certfile, ssl_keyfile=options.keyfile,
                            timeout_graceful_shutdown=options.graceful_seconds, lifespan="on")
    try:
        uvicorn.Server(config).run()
    except (OSError, ValueError) as exc:    # a certificate that does not load, an address taken meanwhile
        raise ServerError(f"the server could not start: {exc}") from exc
