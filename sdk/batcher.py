"""MicroBatcher: many threads submit single items, one worker thread runs them in shared batches.

A batch closes when it holds `max_batch` items or `max_delay_ms` after its first item arrived, whichever
comes first. The queue is bounded (`max_queue`): submitters block instead of growing memory without end.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from sdk.errors import ConfigError, SydesError

T = TypeVar("T")
R = TypeVar("R")
_STOP = object()


class MicroBatcher(Generic[T, R]):
    """`fn(list[T]) -> list[R]` (same length, same order) is called on the worker thread only."""

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 32, max_delay_ms: float = 2.0,
                 max_queue: int = 4096, name: str = "sydes-microbatcher") -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
        if max_delay_ms < 0:
            raise ConfigError(f"max_delay_ms must be >= 0, got {max_delay_ms!r}")
        self.fn, self.max_batch, self.max_delay = fn, max_batch, max_delay_ms / 1000.0
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._close_lock = threading.Lock()
        self.batches = 0  # statistics: number of fn calls and items run
        self.items = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future[R]:
        fut: Future[R] = Future()
        with self._close_lock:  # no item may slip in behind the stop marker
            if self._closed:
                raise SydesError("the micro-batcher is closed")
            self._q.put((item, fut))
        return fut

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
