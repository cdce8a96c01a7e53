"""A tiny Prometheus text exposition (format 0.0.4): counters, gauges and histograms, thread-safe.

Own code rather than prometheus-client: no process-global registry (one app per test, several apps in
one process), no extra dependency, and the service needs four metric kinds' worth of it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Counter:
    """A monotonically increasing count, per tuple of label values."""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *label_values: str, by: float = 1.0) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0.0) + by

    def value(self, *label_values: str) -> float:
        with self._lock:
            return self._values.get(label_values, 0.0)

    def expose(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if not items and not self.label_names:
            items = [((), 0.0)]
        out += [f"{self.name}{_labels(list(zip(self.label_names, k, strict=True)))} {_num(v)}" for k, v in items]
        return out


class Gauge:
    """A value read when scraped (from `read`, e.g. the Analyzer's queue depth)."""

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def expose(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_num(self.read())}"]


class Histogram:
    """Cumulative buckets (upper bounds `buckets`, +Inf added), a sum and a count."""

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help
        self.bounds = tuple(sorted(float(b) for b in buckets)) + (math.inf,)
        self._counts = [0] * len(self.bounds)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, x: float) -> None:
        with self._lock:
            self._sum += x
            for i, b in enumerate(self.bounds):
                if x <= b:
                    self._counts[i] += 1
                    break

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def expose(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cum = 0
        for b, c in zip(self.bounds, counts, strict=True):
            cum += c
            out.append(f'{self.name}_bucket{{le="{_num(b)}"}} {cum}')
        out += [f"{self.name}_sum {_num(total)}", f"{self.name}_count {cum}"]
        return out


class ServiceMetrics:
    """What `/metrics` shows: requests by status, latency, batch sizes, queue depth, shed and late counts."""

    def __init__(self, queue_depth: Callable[[], float], queue_capacity: Callable[[], float]) -> None:
        self.requests = Counter("sydes_requests_total", "HTTP requests answered, by endpoint and status code",
                                ("endpoint", "status"))
        self.latency = Histogram("sydes_request_latency_seconds", "POST /v1/analyze latency, arrival to answer",
                                 (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.batch_size = Histogram("sydes_batch_size", "posts per model batch", (1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_seconds = Histogram("sydes_batch_seconds", "model time per batch (tokenise + backend)",
                                       (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0))
        self.shed = Counter("sydes_shed_total", "requests refused with 503 because the queue was full")
        self.deadline = Counter("sydes_deadline_exceeded_total", "requests answered 504 past their deadline")
        self.gauges = [Gauge("sydes_queue_depth", "posts admitted and not yet answered", queue_depth),
                       Gauge("sydes_queue_capacity", "max_queued: the most posts in flight", queue_capacity)]

    def observe_batch(self, size: int, seconds: float) -> None:
        """The Analyzer's `on_batch` hook (called on its batcher thread)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def expose(self) -> str:
        lines: list[str] = []
        for m in (self.requests, self.latency, self.batch_size, self.batch_seconds, self.shed, self.deadline,
                  *self.gauges):
            lines += m.expose()
        return "\n".join(lines) + "\n"


class WaitEstimator:
    """The expected queueing wait from the recent pace of answers while the service was busy.

    `done(busy)` on every answer; `busy` = other posts were still in flight, so the gap since the previous
    busy answer measures capacity, not the arrival rate (idle gaps are never counted). The mean gap is
    an exponential average over about `window` answers; a batch of B answers counts as B - 1 tiny gaps
    and one batch-long gap, so the mean is the time per post. expected_wait(depth) = depth x mean gap.
    """

    def __init__(self, window: int = 64) -> None:
        self.alpha = 2.0 / (window + 1)
        self.mean_gap: float | None = None  # seconds per post when busy
        self._last: float | None = None
        self._samples = 0
        self._lock = threading.Lock()

    def done(self, busy: bool, now: float) -> None:
        with self._lock:
            if busy and self._last is not None:
                gap = now - self._last
                self.mean_gap = gap if self.mean_gap is None else self.mean_gap + self.alpha * (gap - self.mean_gap)
                self._samples += 1
            self._last = now if busy else None

    def expected_wait(self, depth: int, min_samples: int = 16) -> float | None:
        """Seconds a post admitted now would wait, or None before enough busy answers were seen."""
        with self._lock:
            if self.mean_gap is None or self._samples < min_samples:
                return None
            return depth * self.mean_gap
