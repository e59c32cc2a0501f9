"""``edgeport serve``: an artifact or bundle behind a small HTTP server (uvicorn): Open
Inference Protocol v2 with dynamic batching, a raw-text endpoint, OpenAI-compatible
completions for causal LMs, Prometheus metrics, bearer tokens and TLS.  Bound to 127.0.0.1
unless told otherwise."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from .. import vocabulary as v
from ..errors import InvalidOptionError, ServerError, StoppedByUser, require
from ..runtime.onnxrt import SessionSettings

TOKEN_VARIABLE = "EDGEPORT_AUTH_TOKEN"
# A request waits at most this long for others to batch with: past it, a lone request on a
# quiet server would wait for company that never comes.
MAX_DELAY_MS = 10_000.0
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(name: str, option: str = "--name") -> str:
    """A model name goes into every URL (/v2/models/NAME/...): letters, digits, '-', '_', '.'."""
    if not isinstance(name, str) or not MODEL_NAME.match(name) or name in (".", ".."):
        raise InvalidOptionError(f"{option} '{name}' must be letters, digits, '-', '_' and '.', starting with a letter "
                                 "or digit (it is part of every URL)")
    return name


def default_model_name(path) -> str:
    """The artifact folder's (or bundle's) name, with anything a URL path cannot carry as '_'."""
    name = Path(path).name.removesuffix(".tar.gz").removesuffix(".tgz")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("._-") or "model"
    return name[:128]


@dataclass(frozen=True)
class ServeOptions:
    host: str = v.DEFAULT_HOST
    port: int = v.DEFAULT_PORT
    name: str | None = None              # default: the artifact folder's name
    max_batch: int | None = None         # None: DEFAULT_MAX_BATCH, or 1 where rows depend on their batch
    max_delay_ms: float = v.DEFAULT_MAX_DELAY_MS
    max_queue: int = v.DEFAULT_MAX_QUEUE
    max_body_bytes: int = v.DEFAULT_MAX_BODY_BYTES
    max_request_rows: int = v.DEFAULT_MAX_REQUEST_ROWS
    auth_token: str | None = None        # default: $EDGEPORT_AUTH_TOKEN
    auth_token_file: str | None = None   # a file holding the token (not visible in the process list)
    certfile: str | None = None
    keyfile: str | None = None
    threads: int | None = None
    graceful_seconds: float = 30.0
    trusted_key: str | None = None       # a bundle must be signed by this public key

    def check(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InvalidOptionError(f"--port must be between 0 and 65535 (got {self.port!r})")
        for option, value in (("--max-batch", v.DEFAULT_MAX_BATCH if self.max_batch is None else self.max_batch),
                              ("--max-queue", self.max_queue), ("--max-body-bytes", self.max_body_bytes),
                              ("--max-request-rows", self.max_request_rows)):
            if not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"{option} must be a whole number >= 1 (got {value!r})")
        if not isinstance(self.max_delay_ms, (int, float)) or not 0 <= self.max_delay_ms <= MAX_DELAY_MS:
            raise InvalidOptionError(f"--max-delay-ms must be between 0 and {MAX_DELAY_MS:g} (got "
                                     f"{self.max_delay_ms!r}): it is how long a request waits for others to batch with")
        if self.name is not None:
            check_model_name(self.name)
        if self.threads is not None:
            SessionSettings(device="cpu", threads=self.threads)     # bounded before anything starts
        if bool(self.certfile) != bool(self.keyfile):
            raise InvalidOptionError("TLS needs both --certfile and --keyfile")
        for option, path in (("--certfile", self.certfile), ("--keyfile", self.keyfile)):
            if path and not Path(path).is_file():
                raise ServerError(f"{option} '{path}' {'is not a file' if Path(path).exists() else 'does not exist'}")
        self.token()

    def token(self) -> str | None:
        """The bearer token: --auth-token, --auth-token-file or $EDGEPORT_AUTH_TOKEN (one of
        them); an empty one is refused wherever it comes from, never read as "no auth"."""
        if self.auth_token is not None and self.auth_token_file is not None:
            raise InvalidOptionError("give --auth-token or --auth-token-file, not both")
        if self.auth_token_file is not None:
            try:
                token = Path(self.auth_token_file).read_text(encoding="utf-8-sig").strip()   # Notepad's BOM
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidOptionError(f"--auth-token-file '{self.auth_token_file}' cannot be read: "
                                         f"{getattr(exc, 'strerror', None) or exc}") from exc
            if not token:
                raise InvalidOptionError(f"--auth-token-file '{self.auth_token_file}' is empty")
            return token
        if self.auth_token is not None:
            if not self.auth_token.strip():
                raise InvalidOptionError("--auth-token must not be empty")
            return self.auth_token.strip()      # HTTP trims a header's ends: a token's spaces could never match
        if TOKEN_VARIABLE in os.environ:
            if not os.environ[TOKEN_VARIABLE].strip():
                raise InvalidOptionError(f"${TOKEN_VARIABLE} is set but empty; set a token, or unset it to serve "
                                         "without authentication")
            return os.environ[TOKEN_VARIABLE].strip()
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    listening_socket(host, port).close()


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, listening from now on: a port someone takes while the model loads
    cannot fail the start later (uvicorn then exited 3 with its own log line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)                 # uvicorn's backlog; a bound socket alone does not hold the port
    except OSError as exc:
        listener.close()
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port or --host") from exc
    return listener


def startup_warnings(options: ServeOptions, token: str | None) -> list[str]:
    warnings = []
    if options.auth_token is not None:
        warnings.append("warning: a token given with --auth-token is visible to every local user (in the process list);"
                        f" prefer --auth-token-file or ${TOKEN_VARIABLE}")
    if not is_loopback(options.host) and token is None:
        warnings.append(f"warning: serving on {options.host}, reachable from other machines, without --auth-token: "
                        f"anyone who can reach port {options.port} can use the model")
    return warnings


def make_app(path, options: ServeOptions = ServeOptions(), batcher=None):
    """The ASGI app for ``path`` (artifact folder or bundle), for embedding in another server.
    The model runs its own golden check first: a server never takes traffic with a model
    that does not reproduce the outputs it was verified with."""
    from ..runtime import load
    from .app import Limits, build_app

    options.check()
    token = options.token()
    model = load(path, device="cpu", threads=options.threads, trusted_key=options.trusted_key)
    if model.task == "text-generation" and (options.max_batch is not None or
                                            options.max_delay_ms != v.DEFAULT_MAX_DELAY_MS):
        model.close()
        raise InvalidOptionError("--max-batch and --max-delay-ms batch the requests of encoders; a causal LM "
                                 "generates one request at a time (--max-queue bounds those waiting)")
    check_golden(model, path)
    name = options.name or default_model_name(path)
    limits = Limits(options.max_batch or v.DEFAULT_MAX_BATCH, options.max_delay_ms, options.max_queue,
                    options.max_body_bytes, options.max_request_rows,
                    join_dependent_rows=joins_dependent_rows(options, model))
    return build_app(model, name, limits, token, batcher), name, token


def joins_dependent_rows(options: ServeOptions, model) -> bool:
    """Whether the user asked (--max-batch above 1) to batch a model whose rows depend on their
    batch: faster, and each row's result then depends on the rows run beside it."""
    return bool(getattr(model, "rows_alone", False) and options.max_batch and options.max_batch > 1)


def check_golden(model, path) -> None:
    from ..errors import ArtifactError
    from ..parity import golden_check

    report = golden_check(model.runner, model.artifact)
    if report is not None and not report.passed:
        model.close()
        raise ArtifactError(f"'{path}' fails its own golden check here ({'; '.join(report.failures)}): it does not "
                            "compute what it was verified to compute, so it is not served")


class _TerminatedWhileStarting(KeyboardInterrupt):
    """SIGTERM while the model loads: a KeyboardInterrupt, so that what loads cleans up as for
    Ctrl-C, told apart so that the stop exits 0 (systemd and Kubernetes stop a starting server
    as they stop a serving one)."""


def _stop_starting(signum, frame):
    raise _TerminatedWhileStarting


def serve(path, options: ServeOptions = ServeOptions(), warn=print) -> None:
    """Serve until interrupted; SIGTERM / Ctrl-C finish the accepted requests first."""
    require("uvicorn", "serve")
    require("starlette", "serve")
    import uvicorn

    options.check()
    listener = listening_socket(options.host, options.port)
    previous = signal.signal(signal.SIGTERM, _stop_starting)
    try:
        app, name, token = make_app(path, options)
    except _TerminatedWhileStarting:        # a service manager's stop: exits 0, as SIGTERM does once serving
        listener.close()
        warn("stopped by SIGTERM while starting; nothing was served")
        return
    except BaseException:
        listener.close()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    rows_alone = getattr(app.server.model, "rows_alone", False)
    for message in startup_warnings(options, token) + serving_notes(rows_alone, options):
        warn(message)
    scheme = "https" if options.certfile else "http"
    host = f"[{options.host}]" if ":" in options.host else options.host

    def started(port: int) -> None:        # once listening: the port --port 0 was given, TLS loaded
        warn(f"serving '{name}' on {scheme}://{host}:{port} (Open Inference Protocol v2)")

    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                            ssl_certfile=options.certfile, ssl_keyfile=options.keyfile,
                            timeout_graceful_shutdown=options.graceful_seconds, lifespan="on")
    server = _signal_noting_server(config, started)
    # Once its graceful shutdown is done, uvicorn raises the signal it caught again, under the
    # handler it found: SIGTERM's default would kill the process (143), so it finds a no-op.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[listener])
    except (OSError, ValueError) as exc:    # a certificate that does not load
        raise ServerError(f"the server could not start: {exc}") from exc
    except SystemExit as exc:               # uvicorn's own exit when its startup fails (logged above)
        raise ServerError(f"the server could not start (uvicorn exited {exc.code})") from None
    except KeyboardInterrupt:               # uvicorn re-raises Ctrl-C once the accepted requests are answered
        if signal.SIGINT not in server.signals:
            server.signals.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
        listener.close()
        logging.getLogger("uvicorn.error").disabled = False
    if len(server.signals) > 1:             # uvicorn's forced exit: what was in flight was cut off
        raise StoppedByUser("stopped at once by a second signal; requests in flight were cut off")
    if signal.SIGINT in server.signals:     # exit 130 as for every command stopped with Ctrl-C (SIGTERM: 0)
        raise StoppedByUser("stopped by Ctrl-C, after answering the requests it had accepted")


def serving_notes(rows_alone: bool, options: ServeOptions) -> list[str]:
    """How a model whose rows depend on their batch (dynamic INT8) is served, and why."""
    if not rows_alone:
        return []
    if options.max_batch and options.max_batch > 1:
        return [f"note: --max-batch {options.max_batch} joins the rows of a model that quantizes its activations per "
                "call (dynamic INT8): faster, but each row's result then depends on the rows run beside it"]
    return ["note: this model quantizes its activations per call (dynamic INT8), so every request row runs alone: its "
            "result depends on its input only, never on the requests beside it (--max-batch N joins rows: faster, "
            "batch-dependent)"]


def _signal_noting_server(config, on_started=lambda port: None):
    """uvicorn's server, noting which signals stopped it (the exit code depends on it), and
    calling ``on_started`` with the port it listens on once it does."""
    import uvicorn

    class SignalNotingServer(uvicorn.Server):
        def __init__(self, config):
            super().__init__(config)
            self.signals: list[int] = []

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and self.servers and self.servers[0].sockets:
                on_started(self.servers[0].sockets[0].getsockname()[1])

        def handle_exit(self, sig, frame) -> None:
            self.signals.append(sig)
            if len(self.signals) > 1:       # forced: what it cuts off is said in one line, not a traceback a request
                logging.getLogger("uvicorn.error").disabled = True
            super().handle_exit(sig, frame)

    return SignalNotingServer(config)
