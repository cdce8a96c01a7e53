"""The service's settings (one typed dataclass; the CLI flags map onto its fields one to one)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sdk.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    """bundle: the NAME.sydes/ folder. max_queue: posts in flight at most (Analyzer max_queued); beyond it
    a request is answered 503 at once. deadline_ms: arrival to answer; past it, 504. max_body_mb: larger
    request bodies get 413 before they are read. max_connections: uvicorn's concurrency limit (its own 503
    beyond it), which bounds the request bodies held in memory to max_connections x max_body_mb.
    shed_on_expected_wait: also 503 when the recent pace of answers says a new post would wait past the
    deadline (it would only time out: refusing it at once is cheaper for both sides)."""

    bundle: str
    host: str = "127.0.0.1"
    port: int = 8080
    device: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    max_batch: int = 16
    max_delay_ms: float = 2.0
    max_queue: int | None = None  # None: the Analyzer's default, 4 batches
    deadline_ms: float = 2000.0
    max_body_mb: float = 16.0
    max_connections: int | None = None  # None: 2 x max_queue + 16
    retry_after_s: int = 1
    shed_on_expected_wait: bool = True  # 503 at once when the queue's expected wait is past the deadline

    def __post_init__(self) -> None:
        if not isinstance(self.bundle, (str, os.PathLike)) or not os.fspath(self.bundle):
            raise ConfigError(f"bundle must be a path to a NAME.sydes/ folder, got {self.bundle!r}")
        for name in ("max_batch", "max_queue", "max_connections", "threads", "retry_after_s"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535 (0: any free port), got {self.port!r}")
        for name in ("deadline_ms", "max_body_mb"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_delay_ms < 0:
            raise ConfigError(f"max_delay_ms must be >= 0, got {self.max_delay_ms!r}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def queue_limit(self) -> int:
        from sdk.analyzer import default_max_queued

        return self.max_queue if self.max_queue is not None else default_max_queued(self.max_batch)

    def connection_limit(self) -> int:
        return self.max_connections if self.max_connections is not None else 2 * self.queue_limit() + 16
