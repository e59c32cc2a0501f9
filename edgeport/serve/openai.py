"""OpenAI-compatible endpoints for causal-LM artifacts: ``/v1/completions`` and
``/v1/chat/completions`` (streamed as server-sent events when asked), ``/v1/models``.
Generation runs in a worker thread; a stream hands each token to the event loop as it is
made."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

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

    async def run_blocking(function, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(None, lambda: function(*args, **kwargs))

    def stream(prompt, options, chunk) -> StreamingResponse:
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        pieces = model.stream(prompt, **options)      # checked here: errors are answered before the stream starts

        def produce():
            try:
                for piece in pieces:
                    loop.call_soon_threadsafe(queue.put_nowait, piece.text)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except EdgeportError as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        async def events():
            task = loop.run_in_executor(None, produce)
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, Exception):
                    yield f"data: {json.dumps({'error': {'message': str(item)}})}\n\n"
                    break
                yield f"data: {json.dumps(chunk(item, None))}\n\n"
            await task
            yield f"data: {json.dumps(chunk('', 'stop'))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

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
                    return stream(prompt, options, chunk)
                [result] = await run_blocking(model.generate, [prompt], **options)
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
                                 "usage": usage(len(result.prompt_tokens), len(result.tokens))})
        return respond

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "edgeport",
                                                         "adapters": model.adapter_names}]})

    return [Route("/v1/completions", endpoint("completions", handler("text")), methods=["POST"]),
            Route("/v1/chat/completions", endpoint("chat", handler("chat")), methods=["POST"]),
            Route("/v1/models", endpoint("models", models), methods=["GET"])]
