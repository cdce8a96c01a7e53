"""Bounded memory under a submit burst: admission (max_queued), backpressure, OverloadedError, shedding."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import build_fake_bundle, jpeg_bytes

from sdk.analyzer import Analyzer, default_max_queued
from sdk.batcher import Admission, MicroBatcher
from sdk.errors import ConfigError, OverloadedError, SydesError
from sdk.results import Result

ATOL = 2e-4  # batch composition moves the fake graph's float reductions by ~1e-5 (see test_analyzer)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("b") / "fake.sydes", max_length=12)


def _jpeg(seed: int) -> bytes:
    return jpeg_bytes(seed)


def _probs(r: Result) -> np.ndarray:
    assert r.ok, r.error
    return np.concatenate([list(t.probs.values()) for t in r.tasks.values()])


class _Gate:
    """Wraps a backend's run so a test decides when batches may finish (a backend that blocks)."""

    def __init__(self, az: Analyzer) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self._run = az.backend.run
        az.backend.run = self  # type: ignore[method-assign]

    def __call__(self, feeds):
        self.entered.set()
        self.open.wait(30)
        return self._run(feeds)


def test_default_and_invalid_max_queued(bundle: Path) -> None:
    assert default_max_queued(32) == 128 and default_max_queued(1) == 16
    with Analyzer(bundle, device="cpu", threads=1, max_batch_size=8, warmup=False) as az:
        assert az.max_queued == 32 and az.info.max_queued == 32 and az.queue_depth == 0
    with pytest.raises(ConfigError, match="max_queued must be a positive integer, got 0"):
        Analyzer(bundle, device="cpu", max_queued=0, warmup=False)


def test_full_queue_sheds_with_timeout_and_blocks_without(bundle: Path) -> None:
    with Analyzer(bundle, device="cpu", threads=1, max_batch_size=1, max_queued=2, warmup=False) as az:
        gate = _Gate(az)
        futs = [az.submit(_jpeg(0), "cat"), az.submit(_jpeg(1), "dog")]
        assert gate.entered.wait(10) and az.queue_depth == 2
        with pytest.raises(OverloadedError, match=r"submit queue is full: 2 posts queued \(max_queued=2\)") as ei:
            az.submit(_jpeg(2), "cat", timeout=0)
        assert ei.value.queued == 2 and ei.value.limit == 2
        with pytest.raises(OverloadedError, match="after waiting 0.05 s"):
            az.submit(_jpeg(2), "cat", timeout=0.05)
        with pytest.raises(ConfigError, match="timeout must be None"):
            az.submit(_jpeg(2), "cat", timeout=-1)
        # Without a timeout the third submit waits (backpressure) until a slot frees.
        got: list = []
        t = threading.Thread(target=lambda: got.append(az.submit(_jpeg(3), "sad day")))
        t.start()
        t.join(0.2)
        assert t.is_alive() and not got  # still blocked: the queue is full
        gate.open.set()
        t.join(10)
        assert not t.is_alive()
        rs = [f.result(timeout=10) for f in futs + got]
        assert all(r.ok for r in rs)
        assert az.queue_depth == 0 and az._admission.shed == 2


def test_burst_is_bounded_and_equal_to_sequential(bundle: Path, monkeypatch) -> None:
    """16 threads x 12 submits through max_queued=8: every answer equal to sequential, and the structures
    that hold posts (admitted, decoded-not-yet-run, the batcher's queue) never exceed their bounds."""
    images = [_jpeg(i) for i in range(12)]
    texts = ["cat", "a sad day", "party at the beach"]
    with Analyzer(bundle, device="cpu", threads=1, max_batch_size=4, max_queued=8, decode_workers=2,
                  warmup=False) as az:
        ref = [az.analyze(images[i], texts[i % 3]) for i in range(12)]
        live = {"now": 0, "peak": 0}
        lock = threading.Lock()
        prep, run = az._prepare_safe, az._run_prepared

        def counting_prepare(item):
            p = prep(item)
            with lock:  # a decoded post now holds its canvases until its batch has run
                live["now"] += 1
                live["peak"] = max(live["peak"], live["now"])
            return p

        def counting_run(items):
            try:
                return run(items)
            finally:
                with lock:
                    live["now"] -= len(items)

        monkeypatch.setattr(az, "_prepare_safe", counting_prepare)
        monkeypatch.setattr(az, "_run_prepared", counting_run)
        barrier = threading.Barrier(16)

        def worker(k: int) -> list[tuple[int, Result]]:
            barrier.wait()
            futs = [(i, az.submit(images[i], texts[i % 3])) for i in ((k + j) % 12 for j in range(12))]
            return [(i, f.result(timeout=60)) for i, f in futs]

        with ThreadPoolExecutor(16) as ex:
            outs = [x for rs in ex.map(worker, range(16)) for x in rs]
        assert len(outs) == 192
        for i, r in outs:
            assert np.allclose(_probs(r), _probs(ref[i]), atol=ATOL)
        batcher = az._batcher
        assert az._admission.peak <= 8 and az.queue_depth == 0
        assert batcher.max_queue == 8 and batcher.peak_queued <= batcher.max_queue
        # decoded canvases alive at once: the batcher's queue + a running batch + one per decode worker
        assert live["peak"] <= batcher.max_queue + 4 + 2
        assert az._pool is not None and az._pool._work_queue.qsize() == 0


def test_cancelled_before_decode_is_skipped(bundle: Path, monkeypatch) -> None:
    with Analyzer(bundle, device="cpu", threads=1, max_batch_size=1, max_queued=5, decode_workers=1,
                  warmup=False) as az:
        gate = _Gate(az)
        first = az.submit(_jpeg(0), "cat")
        assert gate.entered.wait(10)
        decoded = []
        prep = az._prepare_safe
        monkeypatch.setattr(az, "_prepare_safe", lambda item: decoded.append(1) or prep(item))
        # `first` runs (blocked); two decoded posts fill the batcher's queue (2 = two batches of 1); the
        # one decode worker then blocks handing over the third, so the fourth stays queued, encoded...
        rest = [az.submit(_jpeg(i), "cat") for i in range(1, 5)]
        assert rest[-1].cancel()  # ...and cancelling it skips its decode
        gate.open.set()
        assert first.result(10).ok and all(f.result(10).ok for f in rest[:-1])
        az._pool.submit(lambda: None).result(10)  # the skipped job has run by now
        assert len(decoded) == 3 and az.queue_depth == 0


def test_admission_and_batcher_errors() -> None:
    gate = Admission(1, what="test queue")
    gate.acquire()
    with pytest.raises(OverloadedError, match="test queue is full: 1 posts queued"):
        gate.acquire(timeout=0)
    gate.release()
    with pytest.raises(SydesError, match="release\\(\\) without a matching acquire"):
        gate.release()
    release = threading.Event()
    with MicroBatcher(lambda items: release.wait(10) and items, max_batch=1, max_queue=1) as mb:
        a = mb.submit(1)
        while mb.queued:  # the worker took `a` and now blocks in fn
            pass
        b = mb.submit(2)
        with pytest.raises(OverloadedError, match=r"micro-batcher's queue is full \(1 items"):
            mb.submit(3, timeout=0)
        release.set()
        assert a.result(10) == 1 and b.result(10) == 2
    with pytest.raises(ConfigError, match="max_queue must be a positive integer"):
        MicroBatcher(lambda x: x, max_queue=0)
