"""Requests a client may send and what the app answers, through the ASGI app itself (httpx's
transport: no socket, no process): every OpenAI prompt form, the fields it refuses rather
than ignores, strict tensor data, counted refusals, and rows that never depend on their
neighbours."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from edgeport.errors import InvalidOptionError
from edgeport.runtime import load
from helpers import assert_fails

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette", reason="the serve extra (uvicorn, starlette) is not installed")


def _ask(app, calls):
    """Run ``calls(client)`` against ``app`` and return what it returns (httpx's transport
    runs no lifespan: the server's batcher is started and stopped here)."""
    async def scenario():
        await app.server.startup()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as client:
                return await calls(client)
        finally:
            await app.server.shutdown()
    return asyncio.run(scenario())


def _events(text: str) -> list:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


@pytest.fixture(scope="module")
def lm(lms):
    pytest.importorskip("onnxruntime_genai")
    model = load(lms("llama")["onnx"].path)
    yield model
    model.close()


@pytest.mark.slow
def test_openai_takes_every_prompt_form(lm):
    from edgeport.serve.app import build_app

    first, second = "Return the number of", "Create a new"
    expected = [lm.generate(p, max_new_tokens=6)[0].text for p in (first, second)]
    greedy16 = lm.generate(first, max_new_tokens=16)[0].text
    app = build_app(lm, "tiny")

    async def calls(client):
        post = lambda body, path="/v1/completions": client.post(path, json=body)
        listed = await post({"prompt": [first, second], "max_tokens": 6})
        ids = await post({"prompt": lm.encode(first), "max_tokens": 6})
        nulls = await post({"prompt": first, "n": None, "max_tokens": None})
        top_k = await post({"prompt": first, "max_tokens": 6, "top_k": 1, "temperature": 1.0, "seed": 4})
        parts = await post({"messages": [{"role": "user", "content": [{"type": "text", "text": "hel"},
                                                                     {"type": "text", "text": "lo"}]}],
                            "max_tokens": 5}, "/v1/chat/completions")
        plain = await post({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 5},
                           "/v1/chat/completions")
        usage = await post({"prompt": first, "max_tokens": 6, "stream": True,
                            "stream_options": {"include_usage": True}})
        return listed, ids, nulls, top_k, parts, plain, usage

    listed, ids, nulls, top_k, parts, plain, usage = _ask(app, calls)
    assert [c["text"] for c in listed.json()["choices"]] == expected
    assert [c["index"] for c in listed.json()["choices"]] == [0, 1]
    assert listed.json()["usage"]["prompt_tokens"] == len(lm.encode(first)) + len(lm.encode(second))
    assert ids.json()["choices"][0]["text"] == expected[0]
    assert nulls.status_code == 200 and nulls.json()["choices"][0]["text"] == greedy16     # OpenAI's default: 16
    assert top_k.json()["choices"][0]["text"] == expected[0]          # top_k 1 samples the greedy token
    assert parts.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]
    events = _events(usage.text)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == \
        sum(1 for e in events[:-2] if e["choices"][0]["text"]) > 0


@pytest.mark.slow
def test_openai_refuses_what_it_would_otherwise_ignore_and_streams_never_hang(lm, monkeypatch):
    from edgeport.serve.app import build_app

    app = build_app(lm, "tiny")
    refused = [({"prompt": "x", "echo": True}, "'echo'"), ({"prompt": "x", "presence_penalty": 0.5}, "presence"),
               ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"), ({"prompt": "x", "best_of": 3}, "best_of"),
               ({"prompt": "x", "max_tokens": 7, "max_completion_tokens": 2}, "disagree"),
               ({"prompt": "x", "seed": -3, "stream": True}, "seed"), ({"prompt": "x", "seed": -1}, "seed"),
               ({"prompt": ["a", "b"], "stream": True}, "one prompt"),
               ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
               ({"prompt": [1.5]}, "'prompt'"), ({"prompt": "x", "stream": "yes"}, "'stream'")]

    async def calls(client):
        answers = [await client.post("/v1/completions", json=body) for body, _ in refused]
        defaults = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "echo": False,
                                                               "presence_penalty": 0, "logit_bias": {}})
        return answers, defaults

    answers, defaults = _ask(app, calls)
    for (body, phrase), answer in zip(refused, answers):
        assert answer.status_code == 400 and phrase in answer.json()["error"]["message"], (body, answer.text)
    assert defaults.status_code == 200                          # the values that ask for nothing are fine

    def breaks(self, ids, sampling, adapter):       # a failure that is not edgeport's own, after one token
        yield 5
        raise ValueError("expected non-negative integer")

    monkeypatch.setattr(type(lm), "_token_stream", breaks)
    streamed = _ask(app, lambda client: client.post("/v1/completions", json={"prompt": "x", "stream": True}))
    assert streamed.status_code == 200
    assert "generation failed: ValueError" in streamed.text and streamed.text.rstrip().endswith("data: [DONE]")


def test_tensor_data_and_parameters_are_checked_strictly(onnx_artifacts):
    from edgeport.serve.app import build_app

    model = load(onnx_artifacts["encoder"].path)
    app = build_app(model, "enc")

    def body(data, datatype="INT64", **extra):
        return {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": datatype, "data": data},
                           {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]}], **extra}

    cases = [(body([101.7, 102]), "fractional values, not INT64"), (body(["101", "102"]), "string values"),
             (body([101, True]), "boolean values"),
             (body([True, False]), "boolean values"), (body([5, 6], parameters="x"), "'parameters' must be an object"),
             (body([5, 6], outputs=[{"name": "last_hidden_state", "parameters": "yes"}]), "output 'last_hidden_state'")]

    async def calls(client):
        return [await client.post("/v2/models/enc/infer", json=b) for b, _ in cases] + \
            [await client.post("/v2/models/enc/infer", json=body([5, 6]))]

    *answers, good = _ask(app, calls)
    for (_, phrase), answer in zip(cases, answers):
        assert answer.status_code == 400 and phrase in answer.json()["error"], answer.text
    assert good.status_code == 200
    model.close()


def test_every_response_is_counted(onnx_artifacts):
    from edgeport.serve.app import build_app

    model = load(onnx_artifacts["encoder"].path)
    app = build_app(model, "enc", token="s3cret")
    auth = {"authorization": "Bearer s3cret"}

    async def calls(client):
        await client.get("/v2/models/enc")                                   # 401
        await client.get("/v2/no/such/route", headers=auth)                  # 404
        await client.get("/v2/models/enc/infer", headers=auth)               # 405
        await client.get("/v2/models/enc", headers=auth)                     # 200
        return (await client.get("/metrics", headers=auth)).text

    metrics = _ask(app, calls)
    for endpoint, status in (("unauthorized", 401), ("not_found", 404), ("method_not_allowed", 405),
                             ("model_metadata", 200)):
        assert f'edgeport_requests_total{{model="enc",endpoint="{endpoint}",status="{status}"}} 1' in metrics, metrics
    model.close()


def test_dynamic_int8_rows_depend_on_their_input_alone(minilm_int8):
    """Dynamic quantization takes one activation scale per call from the whole batch: served
    and predicted rows run alone, so a text's embedding never depends on its neighbours."""
    from edgeport.serve import ServeOptions, joins_dependent_rows, serving_notes
    from edgeport.serve.app import Limits, build_app

    model = load(minilm_int8.path)
    assert model.rows_alone
    texts = ["Return the number of items in a container.", "short", "An exceptionally long sentence about how the "
             "garbage collector finds reference cycles between container objects and frees them."]
    alone = np.stack([model.predict([t])[0] for t in texts])
    np.testing.assert_array_equal(model.predict(texts, batch_size=8), alone)
    app = build_app(model, "int8")

    async def calls(client):
        together = await client.post("/v2/models/int8/text", json={"texts": texts})
        each = await asyncio.gather(*(client.post("/v2/models/int8/text", json={"texts": [t, t, texts[0]]})
                                      for t in texts))
        return together, each

    together, each = _ask(app, calls)
    np.testing.assert_array_equal(np.array(together.json()["predictions"], dtype=np.float32), alone)
    for text_index, answer in enumerate(each):
        got = np.array(answer.json()["predictions"], dtype=np.float32)
        np.testing.assert_array_equal(got[0], alone[text_index])
        np.testing.assert_array_equal(got[2], alone[0])
    assert app.server.batcher.max_batch == 1
    # --max-batch given: the user asked for joined rows (faster, batch-dependent), and is told so
    options = ServeOptions(max_batch=8)
    assert joins_dependent_rows(options, model) and not joins_dependent_rows(ServeOptions(), model)
    assert "depends on the rows run beside it" in serving_notes(True, options)[0]
    joined = build_app(model, "int8", Limits(max_batch=8, join_dependent_rows=True))
    assert joined.server.batcher.max_batch == 8 and joined.server.batcher.run.runs == model.runner.run_in_rows
    model.close()


@pytest.mark.slow
def test_batching_options_are_refused_for_a_causal_lm(lms, cli):
    assert_fails(cli("serve", lms("llama")["onnx"].path, "--max-batch", "4", "--port", "0"),
                 InvalidOptionError.exit_code, "--max-batch and --max-delay-ms batch the requests of encoders")
