"""`sydes serve` through its real HTTP interface: uvicorn on 127.0.0.1 (a free port) in a thread."""

from __future__ import annotations

import base64
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import build_fake_bundle, jpeg_bytes

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from sdk.analyzer import Analyzer  # noqa: E402
from sdk.errors import ConfigError  # noqa: E402
from sdk.serve import ServeConfig  # noqa: E402
from sdk.serve.app import create_app, default_analyzer_factory, serve_in_thread  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("b") / "fake.sydes", max_length=12)


def _jpeg(seed: int) -> bytes:
    return jpeg_bytes(seed)


def _wait_ready(client, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("service never became ready: " + client.get("/readyz").text)


def _occupy(client, body: dict, gated: Gated) -> tuple[threading.Thread, list]:
    """Send one request from a thread and wait until its batch is blocked in the gated backend."""
    first: list = []
    t = threading.Thread(target=lambda: first.append(client.post("/v1/analyze", json=body)))
    t.start()
    assert gated.entered.wait(10)
    return t, first


class Gated:
    """An Analyzer factory whose backend blocks until `open` is set (a backend stand-in that blocks)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, cfg: ServeConfig, on_batch) -> Analyzer:
        az = default_analyzer_factory(cfg, on_batch)
        run = az.backend.run

        def blocking(feeds):
            self.entered.set()
            self.open.wait(30)
            return run(feeds)

        az.backend.run = blocking
        return az


def _cfg(bundle: Path, **kw) -> ServeConfig:
    return ServeConfig(bundle=str(bundle), device="cpu", threads=1, max_batch=4, **kw)


@pytest.fixture(scope="module")
def service(bundle: Path):
    app = create_app(_cfg(bundle, max_body_mb=0.05))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        _wait_ready(client)
        yield client


def _parse_metrics(text: str) -> dict[str, float]:
    """Every sample line -> value, checked with prometheus-client's parser where it is installed."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        pass
    else:
        list(text_string_to_metric_families(text))
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_happy_path_json_and_multipart_equal_analyzer(service, bundle: Path) -> None:
    img = _jpeg(0)
    with Analyzer(bundle, device="cpu", threads=1, warmup=False) as az:
        ref = az.analyze(img, "a happy dog").to_dict()
    r = service.post("/v1/analyze", json={"image": base64.b64encode(img).decode(), "text": "a happy dog"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["ok"] and list(got["tasks"]) == ["sentiment", "emotion", "desire"]
    for t in ref["tasks"]:
        assert got["tasks"][t]["label"] == ref["tasks"][t]["label"]
        assert np.allclose(list(got["tasks"][t]["probs"].values()), list(ref["tasks"][t]["probs"].values()),
                           atol=2e-4)
    m = service.post("/v1/analyze", files={"image": ("x.jpg", img, "image/jpeg")}, data={"text": "a happy dog"})
    assert m.status_code == 200, m.text
    assert m.json()["tasks"]["sentiment"] == got["tasks"]["sentiment"]
    assert m.headers["server-timing"].startswith("app;dur=")
    assert service.get("/healthz").json()["status"] == "alive"
    info = service.get("/v1/info").json()
    assert info["backend"] == "onnxruntime" and info["max_queued"] == 16


def test_bad_requests_are_named(service) -> None:
    post = service.post
    r = post("/v1/analyze", json={"image": "not base64!!", "text": "x"})
    assert r.status_code == 422 and "'image' is not valid base64" in r.json()["error"]
    r = post("/v1/analyze", json={"image": base64.b64encode(b"GIF89a junk").decode(), "text": "x"})
    assert r.status_code == 422 and r.json()["error_type"] == "ImageDecodeError"
    assert "not an image" in r.json()["error"] or "cannot be decoded" in r.json()["error"]
    r = post("/v1/analyze", json={"image": "/etc/passwd", "text": "x"})  # a path is only (bad) base64
    assert r.status_code == 422 and r.json()["error_type"] == "InvalidRequest"
    r = post("/v1/analyze", json={"text": "x"})
    assert r.status_code == 422 and "'image' must be the base64 of an image file, got missing" in r.json()["error"]
    r = post("/v1/analyze", json={"image": base64.b64encode(_jpeg(1)).decode()})
    assert r.status_code == 422 and "has no 'text'" in r.json()["error"]
    r = post("/v1/analyze", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = post("/v1/analyze", content=b"abc", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json or multipart/form-data" in r.json()["error"]
    r = post("/v1/analyze", data={"image": "/etc/passwd", "text": "x"}, files={"other": ("a", b"1")})
    assert r.status_code == 422 and "must be a file upload, not a text field" in r.json()["error"]
    r = post("/v1/analyze", files={"image": ("x.jpg", _jpeg(1), "image/jpeg")}, data={"text": "  "})
    assert r.status_code == 422 and r.json()["error_type"] == "TextError"


def test_body_limit_is_413(service) -> None:
    big = base64.b64encode(np.random.default_rng(0).bytes(60_000)).decode()  # > max_body_mb 0.05
    r = service.post("/v1/analyze", json={"image": big, "text": "x"})
    assert r.status_code == 413 and "over the limit of 52,428 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(8):
            yield b"x" * 10_000

    r = service.post("/v1/analyze", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_metrics_parse_and_count(service) -> None:
    body = {"image": base64.b64encode(_jpeg(2)).decode(), "text": "party"}
    for _ in range(3):
        assert service.post("/v1/analyze", json=body).status_code == 200
    r = service.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = _parse_metrics(r.text)
    assert m['sydes_requests_total{endpoint="/v1/analyze",status="200"}'] >= 3
    assert m["sydes_batch_size_count"] >= 3 and m['sydes_batch_size_bucket{le="+Inf"}'] == m["sydes_batch_size_count"]
    assert m["sydes_request_latency_seconds_count"] >= 3
    assert m["sydes_queue_depth"] == 0 and m["sydes_queue_capacity"] == 16
    assert "sydes_shed_total" in m and "sydes_deadline_exceeded_total" in m


def test_full_queue_is_503_at_once_and_deadline_is_504(bundle: Path) -> None:
    gated = Gated()
    app = create_app(_cfg(bundle, max_queue=1, deadline_ms=20_000, retry_after_s=3), gated)
    body = {"image": base64.b64encode(_jpeg(3)).decode(), "text": "cat"}
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        _wait_ready(client)
        t, first = _occupy(client, body, gated)  # the one slot is taken, its batch blocked in the backend
        r = client.post("/v1/analyze", json=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "3" and r.json()["error_type"] == "Unavailable"
        assert "overloaded, retry later" in r.json()["error"] and "max_queued=1" in r.json()["error"]
        gated.open.set()
        t.join(30)
        assert first[0].status_code == 200
        m = _parse_metrics(client.get("/metrics").text)
        assert m["sydes_shed_total"] == 1 and m['sydes_requests_total{endpoint="/v1/analyze",status="503"}'] == 1

    gated = Gated()
    app = create_app(_cfg(bundle, deadline_ms=300), gated)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        _wait_ready(client)
        r = client.post("/v1/analyze", json=body)
        assert r.status_code == 504 and "deadline of 300 ms" in r.json()["error"]
        gated.open.set()
        assert _parse_metrics(client.get("/metrics").text)["sydes_deadline_exceeded_total"] == 1


def test_expected_wait_past_the_deadline_is_shed(bundle: Path) -> None:
    gated = Gated()
    app = create_app(_cfg(bundle, max_queue=8, deadline_ms=5000), gated)
    body = {"image": base64.b64encode(_jpeg(4)).decode(), "text": "cat"}
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        _wait_ready(client)
        t, first = _occupy(client, body, gated)
        est = app.state.sydes.wait
        for i in range(20):  # as if answers had come every 10 s while busy
            est.done(busy=True, now=10.0 * i)
        r = client.post("/v1/analyze", json=body)  # the queue has room (1 of 8), but 1 x 10 s > 5 s
        assert r.status_code == 503 and "expected wait (10000 ms for 1 posts queued)" in r.json()["error"]
        gated.open.set()
        t.join(30)
        assert first[0].status_code == 200


def test_wait_estimator() -> None:
    from sdk.serve.metrics import WaitEstimator

    w = WaitEstimator(window=8)
    assert w.expected_wait(10) is None
    t = 0.0
    for _ in range(10):  # batches of 4 posts every 0.2 s: 0.05 s per post
        for k in range(4):
            w.done(busy=True, now=t + 1e-6 * k)
        t += 0.2
    assert w.expected_wait(10, min_samples=8) == pytest.approx(10 * 0.05, rel=0.6)
    w.done(busy=False, now=t + 100)  # idle: the long gap after it is not counted
    w.done(busy=True, now=t + 200)
    assert w.expected_wait(1, min_samples=8) < 1


def test_readyz_while_loading_and_failed_load(bundle: Path) -> None:
    release = threading.Event()

    def slow(cfg, on_batch):
        release.wait(30)
        raise ConfigError("no such backend for this test")

    with serve_in_thread(create_app(_cfg(bundle), slow)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading" and c.get("/healthz").status_code == 200
        assert c.post("/v1/analyze", json={"image": "", "text": ""}).status_code == 503
        release.set()
        for _ in range(200):
            if c.get("/readyz").json()["status"] != "loading":
                break
            time.sleep(0.01)
        assert c.get("/readyz").json()["status"] == "failed: ConfigError: no such backend for this test"


def test_config_errors(bundle: Path) -> None:
    with pytest.raises(ConfigError, match="max_queue must be a positive integer"):
        ServeConfig(bundle=str(bundle), max_queue=0)
    with pytest.raises(ConfigError, match="deadline_ms must be > 0"):
        ServeConfig(bundle=str(bundle), deadline_ms=0)
    with pytest.raises(ConfigError, match="port must be 0..65535"):
        ServeConfig(bundle=str(bundle), port=70000)
    assert ServeConfig(bundle="b", max_batch=8).queue_limit() == 32
    assert ServeConfig(bundle="b", max_queue=10).connection_limit() == 36


def test_missing_extra_is_named(monkeypatch) -> None:
    import importlib

    from sdk.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the [serve] extra were not installed
    monkeypatch.delitem(sys.modules, "sdk.serve.app")
    with pytest.raises(MissingExtraError, match=r"'fastapi' is not installed .*sydes-edge\[serve\]"):
        importlib.import_module("sdk.serve.app")
