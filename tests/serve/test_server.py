"""edgeport serve as a real process on 127.0.0.1, queried with tritonclient.http (a real client
of the Open Inference Protocol) and urllib: results, errors, load with dynamic batching,
the bounded queue, tokens, TLS, graceful shutdown."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading

import numpy as np
import pytest

from edgeport.runtime import load
from serving import free_port, request, running

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (dev extra) is the protocol client")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn, starlette) is not installed")


def _inputs(feeds: dict[str, np.ndarray], binary: bool = True):
    inputs = []
    for name, value in feeds.items():
        item = httpclient.InferInput(name, list(value.shape), "INT64" if value.dtype == np.int64 else "FP32")
        item.set_data_from_numpy(value, binary_data=binary)
        inputs.append(item)
    return inputs


@pytest.fixture(scope="module")
def encoder_server(onnx_artifacts):
    with running(onnx_artifacts["encoder"].path, "--name", "enc", "--max-batch", "16", "--max-delay-ms", "5") as server:
        yield server


def test_infer_with_tritonclient_equals_the_runtime(encoder_server, onnx_artifacts):
    base, _ = encoder_server
    client = httpclient.InferenceServerClient(base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("enc")
    metadata = client.get_model_metadata("enc")
    assert [i["name"] for i in metadata["inputs"]] == ["input_ids", "attention_mask"]
    model = load(onnx_artifacts["encoder"].path)
    feeds = model.text_processor.encode(["Return the number of items.", "hello there"])
    expected = model.run(feeds)["last_hidden_state"]
    for binary in (True, False):
        result = client.infer("enc", _inputs(feeds, binary),
                              outputs=[httpclient.InferRequestedOutput("last_hidden_state", binary_data=binary)])
        np.testing.assert_allclose(result.as_numpy("last_hidden_state"), expected, atol=1e-6)


def test_raw_text_endpoint_equals_predict(encoder_server, onnx_artifacts):
    base, _ = encoder_server
    texts = ["Return the number of items.", "a", "Create a new socket object."]
    status, body, _ = request(f"{base}/v2/models/enc/text", {"texts": texts})
    assert status == 200
    np.testing.assert_allclose(np.array(body["predictions"]), load(onnx_artifacts["encoder"].path).predict(texts),
                               atol=1e-5)


@pytest.mark.parametrize("body,status,phrase", [
    (b"{not json", 400, "not valid JSON"),
    ({"inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}, 400, "wrong inputs"),
    ({"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2]},
                 {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]}]}, 400,
     "2 values for shape [1, 3]"),
    ({"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                 {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]}]}, 400,
     "disagree on 'sequence'"),
    ({"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "STRING", "data": ["x"]}]}, 400, "datatype"),
    ({"inputs": []}, 400, "non-empty 'inputs'"),
])
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(onnx_artifacts, body, status, phrase):
    with running(onnx_artifacts["encoder"].path, "--name", "enc", "--max-body-bytes", str(1 << 20)) as (base, _):
        got, payload, headers = request(f"{base}/v2/models/enc/infer", body, {"content-type": "application/json"})
        assert got == status and phrase in payload["error"], payload
        assert request(f"{base}/v2/models/nope/infer", {"inputs": []})[0] == 404
        assert request(f"{base}/v2/health/ready")[0] == 200


def test_oversized_bodies_get_413_before_they_are_read(encoder_server):
    """Refused on the declared length (the client need not send 2 MB first), and on the bytes
    actually sent when the length is not declared (chunked)."""
    import http.client

    base, _ = encoder_server
    host, port = base.removeprefix("http://").split(":")
    limit = 16 << 20
    for chunked in (False, True):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.putrequest("POST", "/v2/models/enc/infer")
        if chunked:
            connection.putheader("transfer-encoding", "chunked")
            connection.endheaders()
            block = b"x" * (1 << 20)
            try:
                for _ in range(limit // len(block) + 2):
                    connection.send(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                connection.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass                         # the server answered and closed before the end: that is the point
        else:
            connection.putheader("content-length", str(limit + 1))
            connection.endheaders()
            connection.send(b"{")
        response = connection.getresponse()
        assert response.status == 413 and b"over" in response.read()
        connection.close()
    assert request(f"{base}/v2/health/ready")[0] == 200


def test_bounded_load_completes_and_batches_form(encoder_server, onnx_artifacts):
    base, _ = encoder_server
    client = httpclient.InferenceServerClient(base.removeprefix("http://"), concurrency=16)
    model = load(onnx_artifacts["encoder"].path)
    feeds = model.text_processor.encode(["Return the number of items in the list."])
    expected = model.run(feeds)["last_hidden_state"]
    before = _batches(base)
    pending = [client.async_infer("enc", _inputs(feeds)) for _ in range(2000)]
    results = [p.get_result(timeout=120) for p in pending]
    assert len(results) == 2000
    for result in results[::97]:
        np.testing.assert_allclose(result.as_numpy("last_hidden_state"), expected, atol=1e-5)
    batches, requests = (a - b for a, b in zip(_batches(base), before))
    assert requests == 2000 and batches < 1000, (batches, requests)      # on average, batches of 2 or more
    metrics = request(f"{base}/metrics")[1]
    assert 'edgeport_requests_total{model="enc",endpoint="infer",status="200"}' in metrics


def _batches(base) -> tuple[int, int]:
    text = request(f"{base}/metrics")[1]
    count = int(re.search(r'edgeport_batch_requests_count\{model="enc"\} (\d+)', text).group(1))
    total = float(re.search(r'edgeport_batch_requests_sum\{model="enc"\} ([\d.]+)', text).group(1))
    return count, int(total)


def _long_texts_body(artifact, rows: int) -> dict:
    """An infer request of ``rows`` long texts: slow enough for requests to queue behind it."""
    feeds = load(artifact).text_processor.encode([" ".join(["documentation"] * 60)] * rows)
    return {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.reshape(-1).tolist()}
                       for k, v in feeds.items()]}


def _start_requests(url: str, body: dict, statuses: list, count: int) -> list[threading.Thread]:
    """``count`` concurrent requests, each appending its status to ``statuses``; started, not joined."""
    threads = [threading.Thread(target=lambda: statuses.append(request(url, body)[0])) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_a_full_queue_answers_503_and_recovers(onnx_artifacts):
    with running(onnx_artifacts["encoder"].path, "--name", "enc", "--max-queue", "1", "--max-batch", "1") as (base, _):
        body = _long_texts_body(onnx_artifacts["encoder"].path, rows=8)
        statuses = []
        for thread in _start_requests(f"{base}/v2/models/enc/infer", body, statuses, 24):
            thread.join()
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
        assert request(f"{base}/v2/models/enc/infer", body)[0] == 200


def test_bearer_token(onnx_artifacts):
    with running(onnx_artifacts["encoder"].path, "--name", "enc", env={"EDGEPORT_AUTH_TOKEN": "s3cret"}) as (base, process):
        assert request(f"{base}/v2/health/live")[0] == 200                       # health checks stay open
        assert request(f"{base}/v2/models/enc")[0] == 401
        assert request(f"{base}/v2/models/enc", headers={"authorization": "Bearer wrong"})[0] == 401
        status, body, headers = request(f"{base}/metrics", headers={"authorization": "Basic s3cret"})
        assert status == 401 and headers.get("www-authenticate") == "Bearer"
        assert request(f"{base}/v2/models/enc", headers={"authorization": "Bearer s3cret"})[0] == 200
    assert "s3cret" not in process.stdout.read() + process.stderr.read()


def test_tls(onnx_artifacts, tmp_path):
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    context = ssl.create_default_context(cafile=str(cert))
    with running(onnx_artifacts["encoder"].path, "--name", "enc", "--certfile", str(cert), "--keyfile", str(key),
                 scheme="https", context=context) as (base, _):
        assert base.startswith("https://")
        assert request(f"{base}/v2/models/enc", context=context)[0] == 200


def test_graceful_shutdown_finishes_accepted_requests(onnx_artifacts):
    with running(onnx_artifacts["encoder"].path, "--name", "enc", "--max-batch", "1") as (base, process):
        body = _long_texts_body(onnx_artifacts["encoder"].path, rows=16)
        statuses = []
        threads = _start_requests(f"{base}/v2/models/enc/infer", body, statuses, 6)
        import time

        time.sleep(0.3)                      # the requests are accepted
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join()
        assert process.wait(timeout=30) == 0         # SIGTERM is a clean stop (Kubernetes stops pods with it)
    assert statuses == [200] * 6, statuses


def test_startup_refusals_and_warnings(cli, onnx_artifacts):
    import socket

    from edgeport.serve import ServeOptions, startup_warnings

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", onnx_artifacts["encoder"].path, "--port", str(port))
        assert result.exit_code == 18 and "cannot listen" in result.output
    assert startup_warnings(ServeOptions(host="0.0.0.0"), None)[0].startswith("warning: serving on 0.0.0.0")
    assert startup_warnings(ServeOptions(host="0.0.0.0"), "token") == []
    assert startup_warnings(ServeOptions(host="127.0.0.1"), None) == []
    result = cli("serve", onnx_artifacts["encoder"].path, "--port", str(free_port()), "--certfile", "/nonexistent")
    assert result.exit_code == 2 and "both --certfile and --keyfile" in result.output


# ------------------------------------------------------------------------ causal LMs: OpenAI endpoints


@pytest.mark.slow
def test_openai_completions_and_chat_with_streaming(lms):
    pytest.importorskip("onnxruntime_genai")
    artifact = lms("llama")["onnx"]
    model = load(artifact.path)
    expected = model.generate("Return the number of", max_new_tokens=8)[0]
    with running(artifact.path, "--name", "tiny") as (base, _):
        status, body, _ = request(f"{base}/v1/completions", {"model": "tiny", "prompt": "Return the number of",
                                                              "max_tokens": 8})
        assert status == 200 and body["choices"][0]["text"] == expected.text
        assert body["usage"]["completion_tokens"] == len(expected.tokens)
        status, raw, headers = request(f"{base}/v1/completions", {"prompt": "Return the number of", "max_tokens": 8,
                                                                  "stream": True})
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in raw.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == expected.text
        status, body, _ = request(f"{base}/v1/chat/completions",
                                  {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
        assert status == 200 and body["object"] == "chat.completion" and "content" in body["choices"][0]["message"]
        status, body, _ = request(f"{base}/v1/completions", {"prompt": "x", "max_tokens": 10_000})
        assert status == 400 and "context" in body["error"]["message"]
        assert request(f"{base}/v1/models")[1]["data"][0]["id"] == "tiny"


@pytest.mark.slow
def test_openai_streams_end_as_responses_do_and_the_queue_is_bounded(lms):
    """A streamed answer ends with the same text and finish_reason as the plain one (stop
    strings held back, never leaked); past --max-queue waiting requests a 503 comes at once."""
    import asyncio

    import httpx

    from edgeport.serve.app import Limits, build_app

    pytest.importorskip("onnxruntime_genai")
    model = load(lms("llama")["onnx"].path)
    plain = model.generate("Return the number of", max_new_tokens=12)[0]
    stop = plain.text[3:6]
    assert len(plain.tokens) == 12 and stop.strip()
    app = build_app(model, "tiny", Limits(max_queue=1))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as client:
            answers = {}
            for streamed in (False, True):
                for stops in ([], [stop]):
                    body = {"prompt": "Return the number of", "max_tokens": 12, "stop": stops, "stream": streamed}
                    response = await client.post("/v1/completions", json=body)
                    assert response.status_code == 200, response.text
                    if streamed:
                        events = [json.loads(line[6:]) for line in response.text.splitlines()
                                  if line.startswith("data: {")]
                        choice = {"text": "".join(e["choices"][0]["text"] for e in events),
                                  "finish_reason": events[-1]["choices"][0]["finish_reason"]}
                    else:
                        choice = response.json()["choices"][0]
                    answers[streamed, bool(stops)] = (choice["text"], choice["finish_reason"])
            unsupported = await client.post("/v1/completions", json={"prompt": "Return", "logprobs": 2})
            assert unsupported.status_code == 400 and "logprobs" in unsupported.text     # not silently ignored
            model._lock.acquire()          # the model is busy: requests wait for it
            try:
                short = {"prompt": "Return", "max_tokens": 2}
                waiting = [asyncio.create_task(client.post("/v1/completions", json=short)) for _ in range(2)]
                await asyncio.sleep(0.5)
                refused = await client.post("/v1/completions", json=short)
            finally:
                model._lock.release()
            return answers, refused, [(await task).status_code for task in waiting]

    answers, refused, waited = asyncio.run(scenario())
    assert answers[False, False] == answers[True, False] == (plain.text, "length")
    assert answers[False, True] == answers[True, True] == (plain.text[:plain.text.index(stop)], "stop")
    assert refused.status_code == 503 and "busy" in refused.json()["error"]["message"]
    assert waited == [200, 200]
    model.close()


def test_port_zero_names_the_port_it_listens_on(onnx_artifacts):
    """The "serving" line comes once the server listens: with --port 0 it names the port the
    system chose (a TLS file that does not load never gets this far)."""
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "edgeport.cli", "serve", str(onnx_artifacts["encoder"].path),
                                "--name", "enc", "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        deadline, line = time.time() + 60, ""
        while time.time() < deadline and "serving" not in line:
            line = process.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+) ", line).group(1))
        assert port != 0 and request(f"http://127.0.0.1:{port}/v2/health/ready")[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_ctrl_c_says_truly_what_became_of_the_requests(onnx_artifacts):
    """One Ctrl-C answers what was accepted, then exits 130; a second one stops at once and
    says that requests in flight were cut off."""
    import time

    body = _long_texts_body(onnx_artifacts["encoder"].path, rows=16)
    for presses, phrase in ((1, "after answering the requests it had accepted"), (2, "were cut off")):
        with running(onnx_artifacts["encoder"].path, "--name", "enc", "--max-batch", "1",
                     stop_signal=signal.SIGINT) as (base, process):
            statuses = []
            threads = _start_requests(f"{base}/v2/models/enc/infer", body, statuses, 6)
            time.sleep(0.3)                  # the requests are accepted
            for _ in range(presses):
                process.send_signal(signal.SIGINT)
                time.sleep(0.05)
            assert process.wait(timeout=30) == 130
            for thread in threads:
                thread.join()
            stderr = process.stderr.read()
            assert phrase in stderr and "Traceback" not in stderr, stderr      # one line, not a traceback
        if presses == 1:
            assert statuses == [200] * 6, statuses


# ------------------------------------------------------------------------ bounds a request cannot pass


def test_a_request_holds_at_most_max_request_rows_and_runs_in_calls_of_max_batch(onnx_artifacts):
    """300 KB of short texts made 60000 rows, one call of 7 GB; the rows are bounded (413) and
    a request runs in calls of --max-batch rows, with the same results."""
    artifact = onnx_artifacts["encoder"].path
    texts = [f"Return item {i} of the list." for i in range(9)]
    expected = load(artifact).predict(texts[:8])
    with running(artifact, "--name", "enc", "--max-request-rows", "8", "--max-batch", "3") as (base, _):
        status, body, _ = request(f"{base}/v2/models/enc/text", {"texts": texts})
        assert status == 413 and "9 texts" in body["error"] and "--max-request-rows" in body["error"], body
        status, body, _ = request(f"{base}/v2/models/enc/text", {"texts": texts[:8]})
        assert status == 200, body
        np.testing.assert_allclose(np.array(body["predictions"]), expected, atol=1e-5)
        ids = np.ones((9, 4), np.int64)
        status, body, _ = request(f"{base}/v2/models/enc/infer", {"inputs": [
            {"name": name, "shape": [9, 4], "datatype": "INT64", "data": ids.ravel().tolist()}
            for name in ("input_ids", "attention_mask")]})
        assert status == 413 and "9 rows" in body["error"], body


def test_calls_of_max_batch_rows_join_to_the_whole():
    from edgeport.runtime.runner import in_calls_of

    calls = []

    def run(feeds):
        calls.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}

    x = np.arange(7, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(in_calls_of(run, 3)({"x": x})["y"], x * 2)
    assert calls == [3, 3, 1]


def test_unknown_routes_and_methods_and_cut_bodies_are_answered_in_json(encoder_server):
    import socket as sockets

    base, _ = encoder_server
    for url, method, status in ((f"{base}/nonexistent", "GET", 404), (f"{base}/v2/models/enc/versions/2", "GET", 404),
                                (f"{base}/v2/models/enc/text", "GET", 405)):
        got, body, headers = request(url, method=method)
        assert got == status and isinstance(body, dict) and "error" in body, (url, body)
        assert headers["content-type"] == "application/json"
    # A client that declares 100 bytes, sends 10 and leaves: counted as 499, not an unhandled 500.
    host, port = base.removeprefix("http://").split(":")
    with sockets.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(b"POST /v2/models/enc/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{\"texts\": [")
    import time

    deadline = time.time() + 10
    while time.time() < deadline and 'status="499"' not in request(f"{base}/metrics")[1]:
        time.sleep(0.1)
    metrics = request(f"{base}/metrics")[1]
    assert 'endpoint="text",status="499"' in metrics and 'endpoint="unhandled"' not in metrics, metrics
    assert request(f"{base}/v2/health/ready")[0] == 200


def test_a_token_is_what_http_can_carry_and_the_port_is_held_while_the_model_loads(cli, onnx_artifacts, tmp_path,
                                                                                    monkeypatch):
    import socket as sockets

    from edgeport.serve import ServeOptions, listening_socket

    assert ServeOptions(auth_token=" s3cret ").token() == "s3cret"     # HTTP trims a header's ends
    monkeypatch.setenv("EDGEPORT_AUTH_TOKEN", "s3cret\n")
    assert ServeOptions().token() == "s3cret"
    listener = listening_socket("127.0.0.1", 0)
    try:
        with sockets.socket() as other:
            other.setsockopt(sockets.SOL_SOCKET, sockets.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", listener.getsockname()[1]))
    finally:
        listener.close()
    result = cli("serve", onnx_artifacts["encoder"].path, "--port", str(free_port()), "--certfile", tmp_path,
                 "--keyfile", tmp_path)
    assert result.exit_code == 18 and f"--certfile '{tmp_path}' is not a file" in result.output, result.output
