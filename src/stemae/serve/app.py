"""The inference server: the Open Inference Protocol (KServe v2) over HTTP
on FastAPI, Prometheus metrics, structured logs and request ids.

Endpoints: ``GET /v2`` (server metadata), ``/v2/health/live``,
``/v2/health/ready``, ``GET /v2/models/NAME[/versions/V]`` (model metadata),
``.../ready``, ``POST .../infer`` and ``GET /metrics``. The server is ready
once every model of the repository is loaded and answered a warm-up call.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import Headers

from stemae import __version__
from stemae.serve.batching import Batcher
from stemae.serve.models import Model, load_repository
from stemae.serve.protocol import HEADER_LENGTH, ProtocolError, decode_request, encode_response

log = logging.getLogger("stemae.serve")

#: Paths answered without the bearer token (probes and scrapers).
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics")


@dataclass
class Settings:
    """What a server is started with.

    repository : the model repository folder (``REPO/NAME/VERSION/`` bundles)
    max_batch : items per step call (and per request)
    max_delay : seconds a request waits for others to join its batch
    max_body : request body limit, bytes
    token : the bearer token every request but probes and metrics must carry, or None
    device : where the models run (``cpu``, ``cuda``)
    """

    repository: str
    max_batch: int = 256
    max_delay: float = 0.005
    max_body: int = 256 * 2**20
    token: str | None = None
    device: str = "cpu"


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("stemae_http_requests", "HTTP requests by route and status code",
                                ["method", "route", "code"], registry=r)
        self.inferences = Counter("stemae_inference_requests", "Inference requests by model and outcome",
                                  ["model", "version", "outcome"], registry=r)
        self.latency = Histogram("stemae_inference_latency_seconds", "Inference request latency, seconds",
                                 ["model", "version"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.in_flight = Gauge("stemae_inference_in_flight", "Inference requests being read, queued or mapped",
                               ["model", "version"], registry=r)
        self.batch = Histogram("stemae_batch_items", "Items per step call after dynamic batching",
                               ["model", "version"], registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.step = Histogram("stemae_step_seconds", "Time of one step call on a batch, seconds",
                              ["model", "version"], registry=r,
                              buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.queue = Histogram("stemae_queue_seconds", "Time a request waited for its batch to start, seconds",
                               ["model", "version"], registry=r,
                               buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5))


def _error(status: int, message: str) -> JSONResponse:
    """The protocol's error body."""
    return JSONResponse({"error": message}, status)


class Guard:
    """ASGI middleware in front of every route: a request id (the client's
    ``X-Request-ID`` or a new one, echoed in the response), the bearer
    token, the body limit from ``Content-Length``, the request counter and
    one structured log line per request. Plain ASGI, so request bodies
    stream through it untouched."""

    def __init__(self, app, settings: Settings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = Headers(scope=scope)
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        token, length = self.settings.token, headers.get("content-length")
        if token is not None and scope["path"] not in OPEN_PATHS and not hmac.compare_digest(
                headers.get("authorization", "").encode(), f"Bearer {token}".encode()):
            response = _error(401, "a valid 'Authorization: Bearer TOKEN' header is needed")
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send_with_id)
        elif length is not None and (not length.isdigit() or int(length) > self.settings.max_body):
            await _error(413, f"the body is over the limit of {self.settings.max_body} bytes")(
                scope, receive, send_with_id)
        else:
            await self.app(scope, receive, send_with_id)
        route = scope.get("route")
        self.metrics.requests.labels(scope["method"], route.path if route is not None else "unmatched",
                                     str(status[0])).inc()
        log.info(json.dumps({"event": "request", "request_id": request_id, "method": scope["method"],
                             "path": scope["path"], "status": status[0],
                             "ms": round(1e3 * (time.perf_counter() - started), 3)}))


def create_app(settings: Settings) -> FastAPI:
    """The server's FastAPI application (run it with uvicorn)."""
    metrics = Metrics()
    state: dict = {"models": {}, "batchers": {}, "ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One thread loads, warms up and runs every model (see stemae.serve.batching).
        executor = ThreadPoolExecutor(1, thread_name_prefix="stemae-step")
        loop = asyncio.get_running_loop()
        models = await loop.run_in_executor(executor, load_repository, settings.repository, settings.device)
        for name, versions in models.items():
            for version, model in versions.items():
                await loop.run_in_executor(executor, model, np.zeros((1, *model.inputs[0].shape[1:]), np.float32))
                labels = (name, version)
                batcher = Batcher(model, settings.max_batch, settings.max_delay, executor,
                                  lambda n, step, waits, labels=labels: _observe(labels, n, step, waits))
                batcher.start()
                state["batchers"][labels] = batcher
                log.info(json.dumps({"event": "model_ready", "model": name, "version": version,
                                     "kind": model.kind}))
        state["models"], state["ready"] = models, True
        yield
        state["ready"] = False
        for batcher in state["batchers"].values():
            await batcher.close()
        executor.shutdown(wait=True)
        log.info(json.dumps({"event": "stopped"}))

    def _observe(labels, n, step, waits):
        metrics.batch.labels(*labels).observe(n)
        metrics.step.labels(*labels).observe(step)
        for w in waits:
            metrics.queue.labels(*labels).observe(w)

    app = FastAPI(title="stemae inference server", version=__version__, lifespan=lifespan)

    app.add_middleware(Guard, settings=settings, metrics=metrics)

    def _model(name: str, version: str | None) -> Model:
        versions = state["models"].get(name)
        if versions is None:
            raise ProtocolError(f"no model {name!r}; the repository holds {sorted(state['models'])}", 404)
        if version is None:
            return versions[max(versions, key=lambda v: (v.isdigit(), int(v) if v.isdigit() else 0, v))]
        if version not in versions:
            raise ProtocolError(f"model {name!r} has no version {version!r}; it has {sorted(versions)}", 404)
        return versions[version]

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, e: ProtocolError):
        return _error(e.status, str(e))

    @app.get("/v2")
    async def server_metadata():
        return {"name": "stemae", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready():
        return Response(status_code=200 if state["ready"] else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        model = _model(name, version)
        return model.metadata(sorted(state["models"][name]))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        _model(name, version)
        return Response(status_code=200 if state["ready"] else 503)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        model = _model(name, version)
        labels = (model.name, model.version)
        started = time.perf_counter()
        with metrics.in_flight.labels(*labels).track_inprogress():
            return await _infer(model, labels, request, started)

    async def _infer(model: Model, labels: tuple[str, str], request: Request, started: float) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body:
                raise ProtocolError(f"the body is over the limit of {settings.max_body} bytes", 413)
        header = request.headers.get(HEADER_LENGTH)
        if header is not None and not header.isdigit():
            raise ProtocolError(f"{HEADER_LENGTH} is not a byte count: {header!r}")
        try:
            req, x = decode_request(bytes(body), None if header is None else int(header), model, settings.max_batch)
            results = await state["batchers"][labels](x)
            payload, head = encode_response(req, model, results)
        except ProtocolError:
            metrics.inferences.labels(*labels, "rejected").inc()
            raise
        except Exception as e:
            metrics.inferences.labels(*labels, "failed").inc()
            log.exception(json.dumps({"event": "infer_failed", "request_id": request.state.request_id,
                                      "model": model.name}))
            return _error(500, f"inference failed: {type(e).__name__}: {e}")
        metrics.inferences.labels(*labels, "ok").inc()
        metrics.latency.labels(*labels).observe(time.perf_counter() - started)
        if head is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(head)})

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, graceful: float = 30.0):
    """Run the server until SIGINT or SIGTERM; requests in flight are
    finished (for up to ``graceful`` seconds) before it stops."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=graceful, access_log=False)
