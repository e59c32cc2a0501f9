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


# OpenAI fields this server does not implement, with the values that ask for nothing: any
# other value is refused, so a client never gets an answer made without what it asked for.
_NOT_IMPLEMENTED = {"echo": (False,), "suffix": ("",), "best_of": (1,), "presence_penalty": (0,),
                    "frequency_penalty": (0,), "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",),
                    "functions": ([],), "function_call": ("none",), "response_format": ({"type": "text"},),
                    "logprobs": (False, 0), "top_logprobs": (0,)}


def _options(request: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(request.get("stream", False), bool):
        raise ProtocolError("'stream' must be true or false")
    if request.get("n") not in (None, 1):
        raise ProtocolError("only n=1 is supported")
    for field, defaults in _NOT_IMPLEMENTED.items():
        value = request.get(field)
        if value is not None and not any(value == d and type(value) is type(d) for d in defaults):
            raise ProtocolError(f"'{field}' is not supported by this server (got {json.dumps(value)[:60]})")
    stop = request.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ProtocolError("'stop' must be a string or a list of strings")
    max_tokens, max_completion = request.get("max_tokens"), request.get("max_completion_tokens")
    for key, value in (("max_tokens", max_tokens), ("max_completion_tokens", max_completion)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ProtocolError(f"'{key}' must be a whole number >= 1 (got {value!r})")     # not the sampler's name
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise ProtocolError(f"'max_tokens' ({max_tokens}) and 'max_completion_tokens' ({max_completion}) disagree; "
                            "give one")
    stream_options = request.get("stream_options")
    if stream_options is not None and (not request.get("stream") or not isinstance(stream_options, dict) or
                                       set(stream_options) - {"include_usage"} or
                                       not isinstance(stream_options.get("include_usage", False), bool)):
        raise ProtocolError("'stream_options' goes with \"stream\": true and takes only {\"include_usage\": "
                            "true|false}")
    temperature, top_p = request.get("temperature"), request.get("top_p")
    return {"max_new_tokens": max_tokens if max_tokens is not None else
            max_completion if max_completion is not None else 16,
            "temperature": temperature if temperature else None,
            "top_p": top_p if top_p not in (None, 1, 1.0) else None,
            "top_k": request.get("top_k"),          # not OpenAI's, but vLLM's and others': honoured
            "seed": request.get("seed"), "stop": stop, "adapter": request.get("adapter")}


def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in value)


def _completion_prompts(body: dict[str, Any]) -> list:
    """``prompt`` as OpenAI takes it: a string, a list of strings, token ids, or a list of
    token id lists; one prompt per choice."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if _is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        return prompt
    raise ProtocolError("'prompt' must be a string, a list of strings, a list of token ids, or a list of those")


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


def _chat_messages(body: dict[str, Any]) -> list[dict]:
    """``messages``, with content given as a list of text parts joined into one string."""
    messages = body.get("messages")
    shape = ("'messages' must be a non-empty list of {\"role\": \"...\", \"content\": \"...\"} objects "
             "(content: a string or a list of {\"type\": \"text\", \"text\": \"...\"} parts)")
    if not isinstance(messages, list) or not messages:
        raise ProtocolError(shape)
    plain = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ProtocolError(shape)
        if message["role"] not in CHAT_ROLES:
            raise ProtocolError(f"'messages[{index}].role' is {message['role']!r}; OpenAI's roles are "
                                f"{', '.join(CHAT_ROLES)}")
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                       for part in content):
                raise ProtocolError("only text content parts ({\"type\": \"text\", \"text\": \"...\"}) are "
                                    "supported")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise ProtocolError(shape)
        plain.append({"role": message["role"], "content": content})
    return plain


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

    async def start(prompt, options):
        """The prompt's ids and its token stream (prompt and options checked), made off the event
        loop: tokenizing a 15 MB prompt takes seconds, and every other client would wait."""
        def make():
            ids = model.encode(prompt)
            return ids, model.stream(ids, **options)
        return await asyncio.get_running_loop().run_in_executor(None, make)

    async def generate(request: Request, pieces):
        """One prompt to its end, off the event loop; a client that goes away (or times out)
        cancels it at the next token, so it never holds the model for nobody."""
        work = asyncio.get_running_loop().run_in_executor(None, produce, pieces)
        while not work.done():
            await asyncio.wait([work], timeout=0.25)
            if not work.done() and await request.is_disconnected():
                pieces.cancel()
        await work
        return pieces

    def stream(pieces, chunk, release, usage_chunk) -> StreamingResponse:
        """``release`` is called once when the stream is over, however it ends."""
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        released = []

        def release_once():
            if not released:
                released.append(True)
                release()

        def run():
            try:
                produce(pieces, lambda text: loop.call_soon_threadsafe(queue.put_nowait, text))
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except Exception as exc:   # whatever it is, the client hears of it: a stream never just hangs
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        async def events():
            task = loop.run_in_executor(None, run)
            failed = False
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    if isinstance(item, Exception):
                        message = str(item) if isinstance(item, EdgeportError) else \
                            f"generation failed: {type(item).__name__}: {item}"
                        yield f"data: {json.dumps({'error': {'message': message}})}\n\n"
                        failed = True
                        break
                    yield f"data: {json.dumps(chunk(item, None))}\n\n"
                await task
                if not failed:
                    yield f"data: {json.dumps(chunk('', pieces.finish_reason))}\n\n"
                    if usage_chunk:
                        yield f"data: {json.dumps(usage_chunk(len(pieces.tokens)))}\n\n"
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

    def handler(kind: str):
        async def respond(request: Request) -> Response:
            try:
                body = await _parse(request, server.limits.max_body_bytes)
                if body.get("model", name) != name:
                    return _error(404, f"no model named '{body.get('model')}' (this server has '{name}')")
                options = _options(body)
                prompts = [_chat_messages(body)] if kind == "chat" else _completion_prompts(body)
                if body.get("stream") and len(prompts) > 1:
                    raise ProtocolError("a stream carries one prompt; send a list of prompts without \"stream\"")
                ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
                created = int(time.time())
                obj = "chat.completion" if kind == "chat" else "text_completion"

                def chunk(text, finish):
                    if kind == "chat":
                        return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                                "choices": [{"index": 0, "delta": {"content": text} if text else {},
                                             "finish_reason": finish}]}
                    return {"id": ident, "object": obj, "created": created, "model": name,
                            "choices": [{"index": 0, "text": text, "finish_reason": finish}]}

                if not admitted():
                    return _error(503, f"server busy: {server.limits.max_queue} requests wait already; retry later",
                                  "server_error")
                if body.get("stream"):
                    try:
                        ids, pieces = await start(prompts[0], options)
                        wants_usage = (body.get("stream_options") or {}).get("include_usage")
                        usage_chunk = (lambda made: {"id": ident, "object": chunk("", None)["object"],
                                                     "created": created, "model": name, "choices": [],
                                                     "usage": usage(len(ids), made)}) if wants_usage else None
                        return stream(pieces, chunk, release, usage_chunk)      # it releases when it ends
                    except BaseException:
                        release()
                        raise
                results = []
                try:
                    for prompt in prompts:        # one at a time: each is cancelled when the client leaves
                        ids, pieces = await start(prompt, options)
                        results.append((len(ids), await generate(request, pieces)))
                finally:
                    release()
            except BodyTooLarge:
                return _error(413, f"request body over {server.limits.max_body_bytes} bytes")
            except (ProtocolError, InvalidOptionError, AdapterError) as exc:
                return _error(400, str(exc))
            except EdgeportError as exc:
                return _error(400 if exc.exit_code in (2, 12, 15) else 500, str(exc))
            choices = []
            for index, (_, result) in enumerate(results):
                if kind == "chat":
                    choices.append({"index": index, "message": {"role": "assistant", "content": result.text},
                                    "finish_reason": result.finish_reason})
                else:
                    choices.append({"index": index, "text": result.text, "logprobs": None,
                                    "finish_reason": result.finish_reason})
            return JSONResponse({"id": ident, "object": obj, "created": created, "model": name, "choices": choices,
                                 "usage": usage(sum(n for n, _ in results), sum(len(r.tokens) for _, r in results))})
        return respond

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "edgeport",
                                                         "adapters": model.adapter_names}]})

    return [Route("/v1/completions", endpoint("completions", handler("text")), methods=["POST"]),
            Route("/v1/chat/completions", endpoint("chat", handler("chat")), methods=["POST"]),
            Route("/v1/models", endpoint("models", models), methods=["GET"])]
