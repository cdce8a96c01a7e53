"""The FastAPI app of `sydes serve`: micro-batched through `Analyzer.submit`, bounded, shedding load.

    POST /v1/analyze   JSON {"image": base64, "text"} or multipart (file `image`, field `text`)
                       200 the Result | 413 body too large | 400 / 415 / 422 bad request (message says
                       why; 422 also for an image that cannot be decoded) | 503 + Retry-After when the
                       queue is full (at once, nothing queued) | 504 past the deadline | 500 model error
    GET  /healthz      200 while the process serves HTTP (liveness)
    GET  /readyz       200 once the model is loaded, 503 while loading / after a failed load / draining
    GET  /metrics      Prometheus text format (sdk.serve.metrics)
    GET  /v1/info      backend, device, tasks, limits

The Analyzer loads in a thread, so /healthz answers while a big model loads; submits never block the
event loop (`timeout=0`: a full queue is a 503, not a wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sdk.errors import MissingExtraError, OverloadedError, SydesError

try:  # this module is the service: it needs the [serve] extra (sdk and sdk.serve do not)
    import fastapi
    from fastapi import Request
    from fastapi.responses import JSONResponse, PlainTextResponse
except ModuleNotFoundError as e:  # pragma: no cover - exercised where the extra is absent
    raise MissingExtraError(e.name or "fastapi", "serve", "needed by `sydes serve`") from e
from sdk.serve.config import ServeConfig
from sdk.serve.inputs import RequestError, parse_json, parse_multipart, read_body
from sdk.serve.metrics import CONTENT_TYPE, ServiceMetrics, WaitEstimator

log = logging.getLogger("sdk.serve")
AnalyzerFactory = Callable[[ServeConfig, Callable[[int, float], None]], Any]
ANALYZE = "/v1/analyze"
# error_type of the service's own refusals (a post the model rejects carries the SDK's, e.g. ImageDecodeError)
ERROR_TYPES = {400: "BadRequest", 413: "PayloadTooLarge", 415: "UnsupportedMediaType", 422: "InvalidRequest",
               500: "ModelError", 503: "Unavailable", 504: "DeadlineExceeded"}


def default_analyzer_factory(cfg: ServeConfig, on_batch: Callable[[int, float], None]) -> Any:
    """The service's Analyzer: the config's limits, batch sizes reported to the metrics."""
    from sdk.analyzer import Analyzer

    return Analyzer(cfg.bundle, device=cfg.device, backend=cfg.backend, threads=cfg.threads,
                    max_batch_size=cfg.max_batch, max_delay_ms=cfg.max_delay_ms, max_queued=cfg.queue_limit(),
                    on_batch=on_batch)


class ServiceState:
    """The Analyzer's life in the service: loading (thread) -> ready -> draining; or failed."""

    def __init__(self, cfg: ServeConfig, factory: AnalyzerFactory) -> None:
        self.cfg, self.factory = cfg, factory
        self.analyzer: Any = None
        self.status = "loading"  # loading | ready | failed: ... | draining
        self.metrics = ServiceMetrics(lambda: self.analyzer.queue_depth if self.analyzer else 0,
                                      lambda: self.analyzer.max_queued if self.analyzer else cfg.queue_limit())
        self.wait = WaitEstimator()  # deadline-aware admission (see _analyze)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._load, name="sydes-serve-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            az = self.factory(self.cfg, self.metrics.observe_batch)
        except Exception as e:  # noqa: BLE001 - reported by /readyz and the log, the process stays up
            log.error("sydes serve: the model failed to load: %s", e)
            self.status = f"failed: {type(e).__name__}: {e}"
            return
        self.analyzer = az
        self.status = "ready"
        log.info("sydes serve: ready (%r)", az)

    def close(self) -> None:
        self.status = "draining"
        if self._thread is not None:
            self._thread.join()
        if self.analyzer is not None:
            self.analyzer.close()  # answers what was admitted, then releases the backend


def create_app(cfg: ServeConfig, analyzer_factory: AnalyzerFactory | None = None) -> Any:
    """The FastAPI app for `cfg`; `analyzer_factory(cfg, on_batch)` builds the Analyzer (tests pass one)."""
    state = ServiceState(cfg, analyzer_factory or default_analyzer_factory)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any):
        state.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.close)

    app = fastapi.FastAPI(title="SyDES Edge", lifespan=lifespan)
    app.state.sydes = state
    retry = {"Retry-After": str(cfg.retry_after_s)}

    def answer(endpoint: str, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        state.metrics.requests.inc(endpoint, str(status))
        if "error" in payload and "error_type" not in payload:
            payload = {"ok": False, **payload, "error_type": ERROR_TYPES.get(status, "Error")}
        return JSONResponse(payload, status_code=status, headers=headers)

    @app.get("/healthz")
    async def healthz() -> Any:
        return answer("/healthz", 200, {"status": "alive", "model": state.status})

    @app.get("/readyz")
    async def readyz() -> Any:
        ok = state.status == "ready"
        return answer("/readyz", 200 if ok else 503, {"ready": ok, "status": state.status},
                      None if ok else retry)

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(state.metrics.expose(), media_type=CONTENT_TYPE)

    @app.get("/v1/info")
    async def info() -> Any:
        if state.analyzer is None:
            return answer("/v1/info", 503, {"error": f"model not ready ({state.status})"}, retry)
        return answer("/v1/info", 200, {**state.analyzer.info.to_dict(), "deadline_ms": cfg.deadline_ms,
                                        "max_body_bytes": cfg.max_body_bytes})

    @app.post(ANALYZE)
    async def analyze(request: Request) -> Any:
        t0 = time.perf_counter()
        status, payload, headers = await _analyze(state, request, t0)
        took = time.perf_counter() - t0
        state.metrics.latency.observe(took)
        # Server-Timing: the service's own share of the latency (a client's view adds network and queues)
        return answer(ANALYZE, status, payload, {**(headers or {}), "Server-Timing": f"app;dur={took * 1000:.1f}"})

    return app


def _refusal(state: ServiceState, az: Any, t0: float) -> str | None:
    """Why a new post must be shed now, or None: the queue is full, or (shed_on_expected_wait) the wait
    expected from the recent pace of answers is past what is left of its deadline (it would only time out)."""
    depth = az.queue_depth
    if depth >= az.max_queued:
        return f"the queue is full ({depth} posts queued, max_queued={az.max_queued})"
    if not state.cfg.shed_on_expected_wait:
        return None
    remaining = state.cfg.deadline_ms / 1000.0 - (time.perf_counter() - t0)
    expected = state.wait.expected_wait(depth)
    if expected is not None and expected > remaining:
        return (f"the expected wait ({expected * 1000:.0f} ms for {depth} posts queued) is past the deadline "
                f"({state.cfg.deadline_ms:g} ms)")
    return None


async def _analyze(state: ServiceState, request: Any, t0: float) -> tuple[int, dict[str, Any], dict | None]:
    """One POST /v1/analyze -> (status, JSON payload, extra headers)."""
    cfg = state.cfg
    retry = {"Retry-After": str(cfg.retry_after_s)}
    az = state.analyzer
    if az is None or state.status != "ready":
        return 503, {"error": f"model not ready ({state.status})"}, retry
    refusal = _refusal(state, az, t0)  # before the body is read: shedding costs next to nothing
    if refusal is not None:
        state.metrics.shed.inc()
        return 503, {"error": f"overloaded, retry later: {refusal}"}, retry
    try:
        body = await read_body(request, cfg.max_body_bytes)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        images = getattr(az, "uses_images", True)  # a text-only bundle needs only the text
        if ctype == "application/json":
            image, text = parse_json(body, images)
        elif ctype == "multipart/form-data":
            image, text = await parse_multipart(request, body, cfg.max_body_bytes, images)
        else:
            raise RequestError(415, f"Content-Type must be application/json or multipart/form-data, "
                                    f"got {ctype or 'none'!r}")
    except RequestError as e:
        return e.status, {"error": str(e)}, None
    try:
        fut = az.submit(image, text, timeout=0)  # never wait on the event loop: full means shed
    except OverloadedError as e:
        state.metrics.shed.inc()
        return 503, {"error": f"overloaded, retry later: {e}"}, retry
    except SydesError as e:  # closed while draining
        return 503, {"error": str(e)}, retry
    remaining = cfg.deadline_ms / 1000.0 - (time.perf_counter() - t0)
    try:
        # On timeout wait_for cancels the wrapped Future: a post not yet decoded is then skipped.
        result = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=max(remaining, 0.0))
    except asyncio.TimeoutError:
        state.metrics.deadline.inc()
        return 504, {"error": f"no answer within the deadline of {cfg.deadline_ms:g} ms (deadline_ms)"}, None
    except Exception as e:  # noqa: BLE001 - a model / backend failure: the service stays up
        log.exception("sydes serve: batch failed")
        return 500, {"error": f"{type(e).__name__}: {e}"}, None
    state.wait.done(busy=az.queue_depth > 0, now=time.perf_counter())
    return (200 if result.ok else 422), result.to_dict(), None


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, **uvicorn_options: Any) -> Iterator[str]:
    """Run `app` with uvicorn in a thread (tests, benchmarks); yields its base URL, stops it on exit."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", **uvicorn_options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="sydes-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise SydesError(f"uvicorn did not start on {host}:{port}")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(30)
