"""The ASGI app of ``edgeport serve``: Open Inference Protocol v2 for every model, a raw-text
endpoint for text models, OpenAI-compatible completions for causal LMs, Prometheus metrics,
bearer-token access control, body limits.  Errors are JSON with the right status, and the
server keeps serving."""

from __future__ import annotations

import contextlib
import hmac
import time
from dataclasses import dataclass

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


from .. import vocabulary as v
from ..errors import EdgeportError, ModelInputError
from ..runtime.formats import format_of
from ..runtime.runner import in_calls_of
from .batching import DynamicBatcher, QueueFull
from .metrics import Metrics
from .protocol import HEADER_LENGTH, ProtocolError, datatype_of, encode_infer, parse_infer, parse_json


@dataclass(frozen=True)
class Limits:
    max_batch: int = v.DEFAULT_MAX_BATCH
    max_delay_ms: float = v.DEFAULT_MAX_DELAY_MS
    max_queue: int = v.DEFAULT_MAX_QUEUE
    max_body_bytes: int = v.DEFAULT_MAX_BODY_BYTES
    max_request_rows: int = v.DEFAULT_MAX_REQUEST_ROWS
    join_dependent_rows: bool = False    # batch a model whose rows depend on their batch anyway (asked for)


class BodyTooLarge(Exception):
    pass


class TooManyRows(Exception):
    pass


def check_rows(rows: int, limits: Limits, what: str = "rows") -> None:
    """A request's rows are bounded apart from its bytes: 300 KB of short texts made 60000 rows,
    7 GB of activations and a 483 MB answer, and held every other client behind it."""
    if rows > limits.max_request_rows:
        raise TooManyRows(f"the request holds {rows} {what}; this server takes at most {limits.max_request_rows} in "
                          "one request (--max-request-rows): split it")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class AuthMiddleware:
    """Every endpoint but the health checks needs ``Authorization: Bearer <token>``; the
    comparison takes the same time whatever the guess, and the token is never logged."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.token is None or scope["path"].startswith("/v2/health"):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            response = JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                    headers={"www-authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


COUNTED = "edgeport.counted"


class CountEveryResponse:
    """Counts what the endpoints do not: refused tokens (401), unknown routes and methods
    (404, 405), and a failure no endpoint answered for (500), so the metrics hold every
    request.  ``.server`` is the ModelServer behind it."""

    def __init__(self, app, server: "ModelServer"):
        self.app, self.server, self.metrics = app, server, server.metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def noting_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            if not scope.get(COUNTED) and not scope["path"].startswith(("/v2/health", "/metrics")):
                label = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(status[0], "unhandled")
                self.metrics.request(label, status[0], time.perf_counter() - start)


class ModelServer:
    """One loaded model and its endpoints."""

    def __init__(self, model, name: str, limits: Limits, batcher=None):
        self.model = model
        self.name = name
        self.limits = limits
        self.generative = model.task == "text-generation"
        self.generations = 0            # causal LMs: requests generating or waiting for the model
        self.metrics = Metrics(name)
        self.ready = False
        make_batcher = batcher or DynamicBatcher
        # Rows that depend on their batch (dynamic INT8) run alone, nothing to wait for, unless the
        # user asked to join them (then the runner runs them joined, as one call).
        alone = getattr(model, "rows_alone", False) and not limits.join_dependent_rows
        self.batcher = None if self.generative else make_batcher(
            in_calls_of(model.runner.run_in_rows if limits.join_dependent_rows else model.run, limits.max_batch),
            1 if alone else limits.max_batch, 0 if alone else limits.max_delay_ms / 1000, limits.max_queue,
            self.metrics.batch)
        # Joined requests may hold more rows than the engine takes in one call (an ExecuTorch
        # program's bounds, a TensorRT profile): Model.run runs them in chunks it takes.
        if self.batcher:
            self.metrics.queue_depth = lambda: self.batcher.depth

    async def startup(self) -> None:
        if self.batcher:
            await self.batcher.start()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        if self.batcher:
            await self.batcher.stop()

    # ------------------------------------------------------------------ metadata

    def metadata(self) -> dict:
        inputs = [{"name": s.name, "datatype": datatype_of(s.dtype), "shape": [d if isinstance(d, int) else -1
                                                                                for d in s.shape]}
                  for s in self.model.artifact.manifest.inputs]
        outputs = [{"name": s.name, "datatype": datatype_of(s.dtype), "shape": [d if isinstance(d, int) else -1
                                                                                  for d in s.shape]}
                   for s in self.model.artifact.manifest.outputs]
        return {"name": self.name, "versions": ["1"], "platform": platform_of(self.model.artifact), "inputs": inputs,
                "outputs": outputs, "parameters": {"task": self.model.task,
                                                    "manifest_sha256": self.model.artifact.manifest_sha256}}

    # ------------------------------------------------------------------ handlers

    async def infer(self, request: Request) -> Response:
        if self.generative:
            return error(400, "this is a causal LM: use /v1/completions or /v1/chat/completions")
        body = await read_body(request, self.limits.max_body_bytes)
        parsed = await run_in_threadpool(parse_infer, body, request.headers.get(HEADER_LENGTH))  # off the event loop
        check_rows(max((len(value) if getattr(value, "ndim", 0) else 1 for value in parsed.inputs.values()),
                       default=0), self.limits)
        feeds = await run_in_threadpool(self.model.runner.check_in_rows, parsed.inputs)
        try:
            outputs = await self.batcher.submit(feeds)
        except QueueFull as exc:
            return error(503, f"server busy: {exc}; retry later")
        wanted = parsed.outputs or list(outputs)
        unknown = [n for n in wanted if n not in outputs]
        if unknown:
            return error(400, f"unknown output {', '.join(unknown)}; the model has {', '.join(outputs)}")
        payload, headers = encode_infer(self.name, {n: outputs[n] for n in wanted}, parsed.binary_outputs,
                                        parsed.request_id)
        return Response(payload, headers=headers)

    async def text(self, request: Request) -> Response:
        if self.generative:
            return error(400, "this is a causal LM: use /v1/completions or /v1/chat/completions")
        if not self.model.takes_text():
            return error(400, f"this model does not take raw text; use /v2/models/{self.name}/infer")
        request_json = await run_in_threadpool(parse_json, await read_body(request, self.limits.max_body_bytes))
        texts = request_json.get("texts") if isinstance(request_json, dict) else None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ProtocolError("give {\"texts\": [\"...\", ...]} with at least one string")
        check_rows(len(texts), self.limits, "texts")
        processor = self.model.text_processor
        # Off the event loop: a 15 MB body takes seconds to tokenize, and every other client waits.
        encodings = await run_in_threadpool(processor.tokenize, texts)
        # Texts of one length go in together, unpadded (the batcher joins requests of one shape);
        # a graph of fixed length gets its padding.
        pad_to = max(self.model.static_length or 0, self.model.min_length or 0) or None
        groups: dict[int, list[int]] = {}
        for index, encoding in enumerate(encodings):
            groups.setdefault(len(encoding.ids), []).append(index)
        results: list = [None] * len(texts)
        for number, indices in enumerate(groups.values()):
            chunk = [encodings[i] for i in indices]
            feeds = processor.feeds(chunk, pad_to=pad_to)
            try:      # admitted once: a later group never meets a full queue halfway through the request
                outputs = await self.batcher.submit(self.model.runner.check_in_rows(feeds), admitted=number > 0)
            except QueueFull as exc:
                return error(503, f"server busy: {exc}; retry later")
            for index, item in zip(indices, self.model.postprocess_text(outputs, feeds, chunk)):
                results[index] = item
        return JSONResponse({"model_name": self.name, "predictions": _jsonable(results)})


def platform_of(artifact) -> str:
    """The metadata's ``platform``: Triton's name for the format where Triton has one
    (onnxruntime_onnx, tensorrt_plan), else the format's own (executorch)."""
    graph_format = format_of(artifact)
    return graph_format.triton.platform if graph_format.triton else graph_format.name


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_app(model, name: str, limits: Limits = Limits(), token: str | None = None, batcher=None):
    """The ASGI application serving ``model`` (a loaded Model or GenerativeModel) as ``name``.
    ``batcher``: what forms dynamic batches, made as ``batcher(run, max_batch, max_delay_s,
    max_queue, on_batch)`` (default: edgeport's own ``DynamicBatcher``)."""
    server = ModelServer(model, name, limits, batcher)

    def endpoint(label: str, handler, model_route: bool = True):
        async def wrapped(request: Request) -> Response:
            start = time.perf_counter()
            if model_route and request.path_params.get("name") != name:
                response = error(404, f"no model named '{request.path_params.get('name')}' (this server has '{name}')")
            else:
                try:
                    response = await handler(request)
                except BodyTooLarge:
                    response = error(413, f"request body over {limits.max_body_bytes} bytes")
                except TooManyRows as exc:
                    response = error(413, str(exc))
                except ClientDisconnect:        # gone before its body arrived: counted, nobody to answer
                    response = error(499, "the client closed the connection before sending the whole body")
                except ProtocolError as exc:
                    response = error(400, str(exc))
                except EdgeportError as exc:
                    response = error(400 if isinstance(exc, ModelInputError) or exc.exit_code in (2, 12) else 500,
                                     str(exc))
            server.metrics.request(label, response.status_code, time.perf_counter() - start)
            request.scope[COUNTED] = True
            return response
        return wrapped

    async def live(request):
        return JSONResponse({"live": True})

    async def ready(request):
        return JSONResponse({"ready": server.ready}, status_code=200 if server.ready else 503)

    async def model_ready(request):
        return JSONResponse({"name": name, "ready": server.ready}, status_code=200 if server.ready else 503)

    async def server_metadata(request):
        from importlib import metadata

        return JSONResponse({"name": "edgeport", "version": metadata.version("edgeport"),
                             "extensions": ["binary_tensor_data", "model_repository_health"]})

    async def model_metadata(request):
        return JSONResponse(server.metadata())

    async def metrics(request):
        return PlainTextResponse(server.metrics.exposition(), media_type="text/plain; version=0.0.4")

    routes = [
        Route("/v2", endpoint("metadata", server_metadata, False), methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{name}", endpoint("model_metadata", model_metadata), methods=["GET"]),
        Route("/v2/models/{name}/versions/1", endpoint("model_metadata", model_metadata), methods=["GET"]),
        Route("/v2/models/{name}/ready", endpoint("model_ready", model_ready), methods=["GET"]),
        Route("/v2/models/{name}/versions/1/ready", endpoint("model_ready", model_ready), methods=["GET"]),
        Route("/v2/models/{name}/infer", endpoint("infer", server.infer), methods=["POST"]),
        Route("/v2/models/{name}/versions/1/infer", endpoint("infer", server.infer), methods=["POST"]),
        Route("/v2/models/{name}/text", endpoint("text", server.text), methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if server.generative:
        from .openai import openai_routes

        routes += openai_routes(server, lambda label, handler: endpoint(label, handler, False))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await server.startup()
        yield
        await server.shutdown()

    async def http_error(request, exc: HTTPException):     # unknown routes and methods: JSON like every error
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"},
                            status_code=exc.status_code, headers=exc.headers)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    return CountEveryResponse(AuthMiddleware(app, token), server)
