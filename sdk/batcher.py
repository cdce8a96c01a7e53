"""MicroBatcher: many threads submit single items, one worker thread runs them in shared batches.

A batch closes when it holds `max_batch` items or `max_delay_ms` after its first item arrived, whichever
comes first. The queue is bounded (`max_queue`): submitters block instead of growing memory without end,
and with a `timeout` they get `OverloadedError` instead of waiting longer.

`Admission` is the gate in front of a whole pipeline (decode pool + batcher): at most `limit` items are
admitted and not yet finished, so everything the pipeline holds is bounded by one number.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, InvalidStateError
from typing import Generic, TypeVar

from sdk.errors import ConfigError, OverloadedError, SydesError

T = TypeVar("T")
R = TypeVar("R")
_STOP = object()
log = logging.getLogger("sdk.batcher")


def _check_limit(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise ConfigError(f"timeout must be None (wait) or a number of seconds >= 0, got {timeout!r}")
    return timeout


class Admission:
    """At most `limit` items admitted and not yet released; `acquire` blocks (backpressure) or sheds.

    depth: items admitted now; peak: the most ever admitted at once (what a memory bound is checked on).
    """

    def __init__(self, limit: int, what: str = "queue") -> None:
        self.limit = _check_limit("max_queued", limit)
        self.what = what
        self._cond = threading.Condition()
        self.depth = 0
        self.peak = 0
        self.shed = 0  # acquires that gave up (timeout elapsed / timeout=0 while full)

    def acquire(self, timeout: float | None = None) -> None:
        """Admit one item; wait while full (forever with timeout=None). Raises OverloadedError when the
        timeout elapses (at once with timeout=0)."""
        _check_timeout(timeout)
        with self._cond:
            if not self._cond.wait_for(lambda: self.depth < self.limit, timeout=timeout):
                self.shed += 1
                waited = "" if not timeout else f" after waiting {timeout:g} s"
                raise OverloadedError(
                    f"{self.what} is full: {self.depth} posts queued (max_queued={self.limit}){waited}; "
                    f"retry later, or raise max_queued", queued=self.depth, limit=self.limit)
            self.depth += 1
            self.peak = max(self.peak, self.depth)

    def release(self) -> None:
        with self._cond:
            if self.depth <= 0:
                raise SydesError("Admission.release() without a matching acquire()")
            self.depth -= 1
            self._cond.notify()


class MicroBatcher(Generic[T, R]):
    """`fn(list[T]) -> list[R]` (same length, same order) is called on the worker thread only."""

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 32, max_delay_ms: float = 2.0,
                 max_queue: int = 256, name: str = "sydes-microbatcher",
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
        if max_delay_ms < 0:
            raise ConfigError(f"max_delay_ms must be >= 0, got {max_delay_ms!r}")
        self.fn, self.max_batch, self.max_delay = fn, max_batch, max_delay_ms / 1000.0
        self.max_queue = _check_limit("max_queue", max_queue)
        self.on_batch = on_batch  # called on the worker thread with (batch size, seconds in fn)
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.peak_queued = 0  # the longest the queue has been (<= max_queue)
        self._closed = False
        self._close_lock = threading.Lock()
        self.batches = 0  # statistics: number of fn calls and items run
        self.items = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T, timeout: float | None = None) -> Future[R]:
        """Queue one item; blocks while the queue is full (timeout=None), else raises OverloadedError
        once `timeout` seconds have passed (at once with 0)."""
        _check_timeout(timeout)
        fut: Future[R] = Future()
        with self._close_lock:  # no item may slip in behind the stop marker
            if self._closed:
                raise SydesError("the micro-batcher is closed")
            try:
                self._q.put((item, fut), block=timeout != 0, timeout=timeout or None)
            except queue.Full:
                raise OverloadedError(f"the micro-batcher's queue is full ({self.max_queue} items, max_queue)",
                                      queued=self.max_queue, limit=self.max_queue) from None
            self.peak_queued = max(self.peak_queued, self._q.qsize())
        return fut

    @property
    def queued(self) -> int:
        """Items waiting for a batch now (not counting the batch being run)."""
        return self._q.qsize()

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            deadline = time.monotonic() + self.max_delay
            while len(batch) < self.max_batch:
                timeout = deadline - time.monotonic()
                try:
                    nxt = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple[T, Future[R]]]) -> None:
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        t0 = time.perf_counter()
        try:
            results = self.fn([item for item, _ in live])
            if len(results) != len(live):
                raise SydesError(f"batch function returned {len(results)} results for {len(live)} items")
        except BaseException as e:  # noqa: BLE001 - the error belongs to the callers, not this thread
            for _, fut in live:
                fut.set_exception(e)
            return
        self.batches += 1
        self.items += len(live)
        if self.on_batch is not None:
            try:
                self.on_batch(len(live), time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - a metrics hook must not lose the batch's answers
                log.exception("on_batch hook failed")
        for (_, fut), res in zip(live, results, strict=True):
            fut.set_result(res)

    def close(self, wait: bool = True) -> None:
        """Stop accepting items; items already queued are still run. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._q.put(_STOP)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> MicroBatcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def submit_through(gate: Admission, pool: Executor, batcher: MicroBatcher[T, R],
                   prepare: Callable[[], T | BaseException], failure: Callable[[BaseException], R],
                   timeout: float | None = None) -> Future[R]:
    """Admit one item through `gate` (blocks / sheds as `Admission.acquire`), run `prepare()` in `pool`
    (decoding: only after admission), queue its output in `batcher`; -> Future of the batch's answer.

    `prepare` returns the item or the exception that makes it bad; a bad item is answered with
    `failure(exc)` without reaching the batcher. Cancelling the Future before `prepare` runs skips it.
    """
    gate.acquire(timeout)
    out: Future[R] = Future()

    def settle(value: R | None = None, exc: BaseException | None = None) -> None:
        # Called exactly once per admitted item, on every path: the one place its slot is freed (before
        # the answer is delivered, so a caller that sees its answer also sees the slot free).
        gate.release()
        try:
            if exc is not None:
                out.set_exception(exc)
            elif value is not None:
                out.set_result(value)
        except InvalidStateError:  # the caller cancelled it
            pass

    def run_prepare() -> T | BaseException | None:
        return None if out.cancelled() else prepare()

    def prepared(f: Future) -> None:
        try:
            p = f.result()
        except BaseException as e:  # noqa: BLE001 - cancelled by a shutdown, or a non-Exception error
            settle(exc=e)
            return
        if p is None or out.cancelled():
            settle()
            return
        if isinstance(p, BaseException):
            settle(failure(p))
            return
        try:
            bf = batcher.submit(p)  # blocks while the batcher's queue is full: bounds prepared items
        except BaseException as e:  # noqa: BLE001 - e.g. closed while decoding
            settle(exc=e)
            return
        bf.add_done_callback(lambda b: settle(exc=b.exception()) if b.exception() else settle(b.result()))

    try:
        job = pool.submit(run_prepare)
    except RuntimeError as e:  # the pool shut down between the caller's check and here
        gate.release()
        raise SydesError("the decode pool is shut down (closed)") from e
    job.add_done_callback(prepared)
    return out
