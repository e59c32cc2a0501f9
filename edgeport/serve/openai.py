"""OpenAI-compatible endpoints for causal-LM artifacts: ``/v1/completions`` and
``/v1/chat/completions`` (streamed as server-sent events when asked), ``/v1/models``.
Generation runs in a worker thread; a stream hands each token to the event loop as it is
made.  A client that goes away cancels its generation at the next token; requests waiting
for the model are bounded by --max-queue (503 past it), as the batcher's queue is."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import AdapterError, EdgeportError, InvalidOptionError
from .app import BodyTooLarge, read_body
from .protocol import ProtocolError, parse_json


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def _options(request: dict[str, Any]) -> dict[str, Any]:
    if request.get("n", 1) != 1:
        raise ProtocolError("only n=1 is supported")
    if request.get("logprobs") not in (None, False, 0) or request.get("top_logprobs") not in (None, 0):
        raise ProtocolError("logprobs are not supported by this server")
    stop = request.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ProtocolError("'stop' must be a string or a list of strings")
    max_tokens = request.get("max_tokens", request.get("max_completion_tokens", 16))
    temperature = request.get("temperature")
    return {"max_new_tokens": max_tokens, "temperature": temperature if temperature else None,
            "top_p": request.get("top_p") if request.get("top_p") not in (None, 1, 1.0) else None,
            "seed": request.get("seed"), "stop": stop, "adapter": request.get("adapter")}


async def _parse(request: Request, limit: int) -> dict[str, Any]:
    parsed = parse_json(await read_body(request, limit))
    if not isinstance(parsed, dict):
        raise ProtocolError("the request must be a JSON object")
    return parsed


def openai_routes(server, endpoint) -> list[Route]:
    model, name = server.model, server.name

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def produce(pieces, on_piece=None) -> None:
        """Run a TokenStream to its end in a worker thread (cancelled: at the next token), and
        let go of the model whatever happens."""
        try:
            for piece in pieces:
                if on_piece and piece.text:
                    on_piece(piece.text)
        finally:
            pieces.close()

    async def generate(request: Request, prompt, options):
        """One prompt to its end, off the event loop; a client that goes away (or times out)
        cancels it at the next token, so it never holds the model for nobody."""
        pieces = model.stream(prompt, **options)     # checked here: errors are answered at once
        work = asyncio.get_running_loop().run_in_executor(None, produce, pieces)
        while not work.done():
            await asyncio.wait([work], timeout=0.25)
            if not work.done() and await request.is_disconnected():
                pieces.cancel()
        await work
        return pieces

    def stream(prompt, options, chunk, release) -> StreamingResponse:
        """``release`` is called once when the stream is over, however it ends."""
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        pieces = model.stream(prompt, **options)      # checked here: errors are answered before the stream starts
        released = []

        def release_once():
            if not released:
                released.append(True)
                release()

        def run():
            try:
                produce(pieces, lambda text: loop.call_soon_threadsafe(queue.put_nowait, text))
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except EdgeportError as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        async def events():
            task = loop.run_in_executor(None, run)
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    if isinstance(item, Exception):
                        yield f"data: {json.dumps({'error': {'message': str(item)}})}\n\n"
                        break
                    yield f"data: {json.dumps(chunk(item, None))}\n\n"
                await task
                yield f"data: {json.dumps(chunk('', pieces.finish_reason))}\n\n"
                yield "data: [DONE]\n\n"
            finally:                  # the client went away mid-stream: stop generating for it
                pieces.cancel()
                release_once()

        # The background task also runs when the client left before the first event.
        return StreamingResponse(events(), media_type="text/event-stream", background=BackgroundTask(release_once))

    def admitted() -> bool:
        """Requests waiting for the model, bounded by --max-queue as the batcher's queue is."""
        if server.generations > server.limits.max_queue:       # one runs, max_queue wait
            return False
        server.generations += 1
        return True

    def release() -> None:
        server.generations -= 1

    def prompt_tokens(prompt) -> int:
        return len(model.encode(prompt))

    def handler(kind: str):
        async def respond(request: Request) -> Response:
            try:
                body = await _parse(request, server.limits.max_body_bytes)
                if body.get("model", name) != name:
                    return _error(404, f"no model named '{body.get('model')}' (this server has '{name}')")
                options = _options(body)
                if kind == "chat":
                    messages = body.get("messages")
                    if not isinstance(messages, list) or not messages or not all(
                            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                            for m in messages):
                        raise ProtocolError("'messages' must be a non-empty list of {\"role\": \"...\", "
                                            "\"content\": \"...\"} objects")
                    prompt = messages
                else:
                    prompt = body.get("prompt")
                    if not isinstance(prompt, str):
                        raise ProtocolError("'prompt' must be a string")
                ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
                created = int(time.time())
                if body.get("stream"):
                    def chunk(text, finish):
                        if kind == "chat":
                            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                                    "choices": [{"index": 0, "delta": {"content": text} if text else {},
                                                 "finish_reason": finish}]}
                        return {"id": ident, "object": "text_completion", "created": created, "model": name,
                                "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
                if not admitted():
                    return _error(503, f"server busy: {server.limits.max_queue} requests wait already; retry later",
                                  "server_error")
                if body.get("stream"):
                    try:
                        return stream(prompt, options, chunk, release)
                    except BaseException:
                        release()
                        raise
                try:
                    result = await generate(request, prompt, options)
                finally:
                    release()
            except BodyTooLarge:
                return _error(413, f"request body over {server.limits.max_body_bytes} bytes")
            except (ProtocolError, InvalidOptionError, AdapterError) as exc:
                return _error(400, str(exc))
            except EdgeportError as exc:
                return _error(400 if exc.exit_code in (2, 12, 15) else 500, str(exc))
            if kind == "chat":
                choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                          "finish_reason": result.finish_reason}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
                obj = "text_completion"
            return JSONResponse({"id": ident, "object": obj, "created": created, "model": name, "choices": [choice],
                                 "usage": usage(prompt_tokens(prompt), len(result.tokens))})
        return respond

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "edgeport",
                                                         "adapters": model.adapter_names}]})

    return [Route("/v1/completions", endpoint("completions", handler("text")), methods=["POST"]),
            Route("/v1/chat/completions", endpoint("chat", handler("chat")), methods=["POST"]),
            Route("/v1/models", endpoint("models", models), methods=["GET"])]
