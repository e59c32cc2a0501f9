"""edgeport serve --engine ray, for real: a local Ray cluster started by the server, two
replicas of the MiniLM INT8 bundle, tritonclient on 127.0.0.1, a replica killed under a
bounded load, and every refusal (bad options, an unreachable cluster, a bundle that fails
its golden check on the replicas) leaving no Ray process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from edgeport.errors import InvalidOptionError, ServerError
from helpers import assert_fails
from serving import free_port, request, running

pytestmark = pytest.mark.slow
pytest.importorskip("ray", reason="the ray extra: pip install 'edgeport[ray]'")
TOKEN = "ray-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if any(name in line for name in ("raylet", "gcs_server", "DashboardAgent", "RuntimeEnvAgent"))]


def ray_server(bundle, *args: str, timeout: float = 240, stop_signal=signal.SIGINT, port: int | None = None):
    """``edgeport serve BUNDLE --engine ray`` until ready; stopped with Ctrl-C, as a user would
    (or with SIGTERM, as Kubernetes and systemd do)."""
    return running(bundle, "--engine", "ray", "--name", "minilm", *args, env={"EDGEPORT_AUTH_TOKEN": TOKEN},
                   ready_within=timeout, poll=0.5, stop_signal=stop_signal, stop_within=60, port=port)


def _ray_temp_dirs() -> set[str]:
    import tempfile
    from pathlib import Path

    return {p.name for p in Path(tempfile.gettempdir()).glob("edgeport-ray-*")}


@pytest.fixture(scope="module")
def minilm_bundle(minilm_int8, tmp_path_factory):
    from edgeport.package.bundle import package_bundle

    return package_bundle(minilm_int8.path, tmp_path_factory.mktemp("ray") / "minilm-int8.tar.gz")


@pytest.fixture(scope="module")
def two_replicas(minilm_bundle):
    """Stopped with SIGTERM: Ray's driver installs a fatal-signal handler of its own for it
    (a stack dump and abort, its agents left running) unless edgeport takes it back."""
    temp_dirs = _ray_temp_dirs()
    with ray_server(minilm_bundle, "--replicas", "2", stop_signal=signal.SIGTERM) as (base, process):
        yield base, process
    assert process.returncode == 0, process.stderr.read()[-2000:]
    assert _ray_processes() == []                       # the local cluster went with the server
    assert _ray_temp_dirs() <= temp_dirs                # and its temporary folder


def _infer_body(feeds: dict) -> dict:
    return {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.reshape(-1).tolist()}
                       for k, v in feeds.items()]}


def _post(url: str, body: dict, attempts: int = 8) -> tuple[int, str, int]:
    """A client that retries what a killed replica leaves unanswered (5xx, a dropped
    connection): inference is idempotent.  (final status, replica, retries)."""
    data = json.dumps(body).encode()
    for attempt in range(attempts):
        req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **AUTH})
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, response.headers["x-edgeport-replica"], attempt
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return exc.code, "", attempt
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1 * 2 ** attempt)
    return 0, "", attempts


def test_tritonclient_gets_the_numbers_predict_gives(two_replicas, minilm_bundle, sentences):
    import tritonclient.http as http

    from edgeport.runtime import load

    base, _ = two_replicas
    with load(minilm_bundle) as model:
        feeds = model.text_processor.encode(sentences[:3])
        expected = model.run(feeds)["last_hidden_state"]
    client = http.InferenceServerClient(base.removeprefix("http://"))
    inputs = []
    for name, value in feeds.items():
        tensor = http.InferInput(name, list(value.shape), "INT64")
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    result = client.infer("minilm", inputs, headers=dict(AUTH))       # tritonclient writes into its headers dict
    assert np.allclose(result.as_numpy("last_hidden_state"), expected, atol=1e-5)
    assert client.is_server_ready(headers=dict(AUTH)) and client.is_model_ready("minilm", headers=dict(AUTH))


def test_both_replicas_serve_and_requests_need_the_token(two_replicas, minilm_bundle, sentences):
    from edgeport.runtime import load

    base, _ = two_replicas
    with load(minilm_bundle) as model:
        body = _infer_body(model.text_processor.encode(sentences[:1]))
    url = f"{base}/v2/models/minilm/infer"
    assert request(url, body)[0] == 401
    replicas, statuses = set(), []
    threads = [threading.Thread(target=lambda: [(statuses.append(r[0]), replicas.add(r[1]))
                                                for r in (_post(url, body) for _ in range(6))]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert statuses == [200] * 48 and len(replicas) == 2, replicas
    status, text, _ = request(f"{base}/v2/models/minilm/text", {"texts": ["A sentence to embed."]}, AUTH)
    assert status == 200 and len(text["predictions"][0]) == 384
    status, metrics, _ = request(f"{base}/metrics", headers=AUTH)
    assert status == 200 and "edgeport_requests_total" in metrics


@pytest.mark.parametrize("body, phrase", [
    (b"{not json", "not valid JSON"),
    (b"[" * 100_000, "nested too deeply"),
    ({"inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}, "wrong inputs"),
])
def test_malformed_requests_get_4xx_as_on_one_process(two_replicas, body, phrase):
    base, _ = two_replicas
    status, payload, _ = request(f"{base}/v2/models/minilm/infer", body, {"content-type": "application/json", **AUTH})
    assert status == 400 and phrase in payload["error"], payload
    assert request(f"{base}/v2/models/other/infer", {"inputs": []}, AUTH)[0] == 404


def test_a_killed_replica_loses_no_accepted_request_and_comes_back(two_replicas, minilm_bundle, sentences):
    from edgeport.runtime import load

    base, _ = two_replicas
    with load(minilm_bundle) as model:
        body = _infer_body(model.text_processor.encode(sentences[:1]))
    url = f"{base}/v2/models/minilm/infer"
    _, victim, _ = _post(url, body)
    results: list[tuple[int, str, int]] = []

    def client():
        for _ in range(20):
            results.append(_post(url, body))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    os.kill(int(victim), signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=300)
    assert len(results) == 120 and all(status == 200 for status, _, _ in results), results
    deadline, seen = time.time() + 120, set()
    while time.time() < deadline and len(seen - {victim}) < 2:      # Ray starts a new replica in its place
        seen.add(_post(url, body)[1])
    assert len(seen - {victim}) == 2, seen


@pytest.mark.parametrize("args, code, phrase", [
    (("--replicas", "0"), InvalidOptionError.exit_code, "--replicas must be a whole number >= 1"),
    (("--replicas", "3", "--cpus-per-replica", "1"), InvalidOptionError.exit_code, "do not fit"),
    (("--replicas", "2", "--min-replicas", "1", "--max-replicas", "2"), InvalidOptionError.exit_code, "not both"),
    (("--min-replicas", "3", "--max-replicas", "2"), InvalidOptionError.exit_code, "--min-replicas <="),
    (("--address", "127.0.0.1:1"), ServerError.exit_code, "cannot reach the Ray cluster"),
], ids=["no-replicas", "more-than-the-cluster", "fixed-and-autoscaled", "min-above-max", "unreachable-address"])
def test_refusals_start_nothing(cli, onnx_artifacts, args, code, phrase):
    before, start = _ray_processes(), time.perf_counter()
    assert_fails(cli("serve", onnx_artifacts["classifier"].path, "--engine", "ray", "--port", str(free_port()), *args),
                 code, phrase)
    assert time.perf_counter() - start < 30 and _ray_processes() == before


def test_a_bundle_failing_its_golden_check_is_refused_by_the_replicas(onnx_artifacts, tmp_path):
    """Checksums hold (re-made by edgeport's own writer), but the golden outputs are not what
    the model computes: each replica refuses it before taking traffic, and nothing is left."""
    import shutil

    from edgeport.artifact import Artifact, finalize_manifest
    from edgeport.golden import load_golden, save_golden
    from edgeport.package.bundle import package_bundle

    folder = tmp_path / "wrong-golden"
    shutil.copytree(onnx_artifacts["classifier"].path, folder)
    inputs, outputs = load_golden(folder / "golden.npz")
    save_golden(folder / "golden.npz", inputs, {k: v + 1.0 for k, v in outputs.items()})
    finalize_manifest(folder, Artifact.load(folder, check_files=False).manifest)
    bundle = package_bundle(folder, tmp_path / "wrong.tar.gz")
    before, port = _ray_processes(), free_port()
    result = subprocess.run([sys.executable, "-m", "edgeport.cli", "serve", str(bundle), "--engine", "ray",
                             "--port", str(port)], capture_output=True, text=True, timeout=300)
    assert result.returncode == ServerError.exit_code, result.stderr
    assert "golden check" in result.stderr and "Traceback" not in result.stderr
    assert _ray_processes() == before


def test_sigterm_to_the_whole_process_group_stops_cleanly(onnx_artifacts):
    """timeout, systemd and ``kill -- -PGID`` signal the whole group, the local cluster's own
    processes too: the server must not wait on them (Ray's calls then hang 60 s and abort),
    and still exits 0, leaving nothing behind."""
    temp_dirs, ours = _ray_temp_dirs(), set()

    def left() -> list[str]:                  # its cluster's processes name its folder in their arguments
        return [line for line in _ray_processes() if any(name in line for name in ours)]

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "edgeport.cli", "serve", str(onnx_artifacts["encoder"].path),
                                "--engine", "ray", "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            try:
                if request(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        assert process.poll() is None, process.stderr.read()[-2000:]
        ours = _ray_temp_dirs() - temp_dirs               # its cluster's folder (other tests' clusters may run)
        assert len(ours) == 1 and left(), _ray_processes()
        time.sleep(2)                                     # serving for a while, as a real server is
        started = time.time()
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=50) == 0, process.stderr.read()[-2000:]
        assert time.time() - started < 40
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    deadline = time.time() + 20               # the cluster's agents follow their raylet out
    while left() and time.time() < deadline:
        time.sleep(0.5)
    assert left() == []
    assert _ray_temp_dirs() <= temp_dirs


@contextmanager
def _head_node(log: Path):
    """A Ray cluster of our own (``ray start --head --block``), torn down by its process group:
    ``ray stop`` would stop every Ray process on the machine, another test's cluster too."""
    gcs = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
                                    "--port", str(gcs), "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                                    "--include-dashboard=false"], stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.time() + 180
        while "Ray runtime started" not in log.read_text() and process.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert "Ray runtime started" in log.read_text(), log.read_text()[-2000:]
        yield f"127.0.0.1:{gcs}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def test_a_cluster_whose_serve_listens_elsewhere_is_named_and_its_own_address_serves_again(minilm_bundle, tmp_path):
    """--address: Serve keeps the proxy address of its first run on a cluster and Ray only logs
    that a new one is ignored; edgeport printed a URL nothing served, and refused the cluster's own
    port as taken (its proxy, on this host, holds it)."""
    with _head_node(tmp_path / "head.log") as address:
        with ray_server(minilm_bundle, "--address", address) as (base, _):
            first = int(base.rsplit(":", 1)[1])
        elsewhere = subprocess.run([sys.executable, "-m", "edgeport.cli", "serve", str(minilm_bundle), "--engine",
                                    "ray", "--port", str(free_port()), "--address", address],
                                   capture_output=True, text=True, timeout=240,
                                   env={**os.environ, "EDGEPORT_AUTH_TOKEN": TOKEN})
        assert elsewhere.returncode == ServerError.exit_code, elsewhere.stderr[-2000:]
        assert f"its HTTP proxy on 127.0.0.1:{first}" in elsewhere.stderr
        assert [line for line in elsewhere.stderr.splitlines() if line.startswith("error:")], elsewhere.stderr
        with ray_server(minilm_bundle, "--address", address, port=first) as (base, _):
            assert request(f"{base}/v2/health/ready", timeout=10)[0] == 200
