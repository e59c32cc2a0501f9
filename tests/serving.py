"""Start ``edgeport serve`` as a real process on a free 127.0.0.1 port, for the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(url: str, body: bytes | dict | None = None, headers: dict | None = None, method: str | None = None,
            timeout: float = 30, context=None):
    """(status, parsed JSON or text, headers) of one HTTP request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as response:
            status, payload, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, payload, got = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, json.loads(payload), got
    except (json.JSONDecodeError, UnicodeDecodeError):
        return status, payload.decode(errors="replace"), got


@contextmanager
def running(artifact, *args: str, env: dict | None = None, scheme: str = "http", context=None,
            ready_within: float = 60, poll: float = 0.2, stop_signal=signal.SIGTERM, stop_within: float = 30,
            port: int | None = None):
    """``edgeport serve ARTIFACT ARGS`` on a free port, yielded once /v2/health/ready answers
    200 (within ``ready_within`` seconds), then stopped with ``stop_signal`` (killed if it has
    not exited within ``stop_within``).  ``port``: this one rather than a free one."""
    port = port or free_port()
    process = subprocess.Popen([sys.executable, "-m", "edgeport.cli", "serve", str(artifact), "--port", str(port),
                                *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    base = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_within
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {process.stderr.read()}")
            try:
                if request(f"{base}/v2/health/ready", timeout=2, context=context)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(poll)
        else:
            raise RuntimeError("server did not become ready")
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(stop_signal)
            try:
                process.wait(timeout=stop_within)
            except subprocess.TimeoutExpired:
                process.kill()
