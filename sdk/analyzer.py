"""`Analyzer`: the SDK's one entry point. Reads a bundle, picks a backend, analyses posts.

    with Analyzer("sydes-edge.sydes") as az:
        az.analyze("cat.jpg", "what a day").tasks["sentiment"].label

Calls: `analyze` (one post), `analyze_batch` (a list), `stream` (an iterable, decoding in background
threads while the model runs, results in input order, bounded memory) and `submit` (a Future; many threads
share model batches through a MicroBatcher). Every call is thread-safe. A bad item gets a Result with
`error` / `error_type`; the other items are still answered.

A text-only bundle (`sydes export` of a `--preset text-only` checkpoint) reads no image: pass `image=None`
(`az.analyze(None, "what a day")`); an image given to it is not decoded, and `info.uses_images` says so.

Memory under load is bounded by `max_queued`: at most that many submitted posts are in flight (queued for
decoding, decoded, or in a batch). A queued post holds what the caller passed (its encoded bytes or path):
it is decoded only once admitted and only as the batcher has room (its queue holds two batches), so the
decoded canvases (~0.75 MB a post) in memory are bounded by about 3 batches + the decode workers.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sdk.batcher import Admission, MicroBatcher, submit_through
from sdk.bundle import Bundle, load_bundle
from sdk.errors import ConfigError, InputTypeError, SydesError
from sdk.results import Result, TaskResult

log = logging.getLogger("sdk.analyzer")

# A preprocessed item: (global view u8 [224,224,3], canvas u8 [448,448,3], text) (views None for a text-only
# bundle); or the error it raised.
Prepared = tuple[np.ndarray | None, np.ndarray | None, str]


@dataclass(frozen=True)
class AnalyzerInfo:
    backend: str
    providers: list[str]
    precision: str
    device: str
    bundle: str
    bundle_path: str
    tasks: dict[str, list[str]]
    max_batch_size: int
    trim_padding: bool
    fast_decode: bool
    decoding: str = "independent"  # "independent" | "joint" | "joint+prior" (sdk.labels)
    max_queued: int = 0  # submit(): posts in flight at most (backpressure / OverloadedError beyond)
    settings: dict[str, Any] = field(default_factory=dict)  # the backend's tuned settings (threads, streams, ...)
    uses_images: bool = True  # False: a text-only bundle (image arguments are not read)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split_item(item: Any, images: bool = True) -> tuple[Any, Any]:
    """(image, text) from a pair or a {"image", "text"} mapping; without `images` (a text-only bundle) also
    from a plain string or a mapping without "image"."""
    if not images and isinstance(item, str):
        return None, item
    if isinstance(item, dict):
        if "image" not in item and images:
            raise InputTypeError(f"item dict has no 'image' key (keys: {sorted(map(str, item))})")
        return item.get("image"), item.get("text")
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise InputTypeError(f"each item must be an (image, text) pair or a {{'image', 'text'}} dict, "
                         f"got {type(item).__name__}")


class Analyzer:
    """Run a SyDES bundle. See the module docstring; `info` says which backend runs it."""

    def __init__(self, bundle: str | os.PathLike[str] | Bundle, device: str = "auto", backend: str = "auto",
                 providers: list[Any] | None = None, threads: int | None = None, max_batch_size: int = 32,
                 warmup: bool = True, fast_decode: bool = True, *, verify: bool = True,
                 require_text: bool = True, max_delay_ms: float = 2.0, decode_workers: int | None = None,
                 joint: bool | str = "auto", max_queued: int | None = None,
                 on_batch: Callable[[int, float], None] | None = None, **backend_options: Any) -> None:
        from sdk.backends import create_backend
        from sdk.preprocess import preprocess
        from sdk.tokenizer import Tokenizer

        if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify=verify)
        m = self.bundle.manifest
        self.preprocess_config = self.bundle.preprocess_config()  # None: a text-only bundle
        self.uses_images = self.preprocess_config is not None
        self.tokenizer = Tokenizer.from_file(self.bundle.tokenizer_path, max_length=m.tokenizer.max_length,
                                             kind=m.tokenizer.kind)
        self._preprocess = preprocess
        self.tasks = {t: list(v) for t, v in m.tasks.items()}
        self.label_structure, self.joint_prior = _joint_decoding(m.raw, self.tasks, joint)
        self.max_batch_size = max_batch_size
        self.fast_decode = fast_decode
        self.require_text = require_text
        # fast_decode: JPEGs decode at a reduced DCT scale that still leaves >= 2x the global view's size.
        self._reduce_for = self.preprocess_config.global_size if fast_decode and self.uses_images else None
        self.trim = m.tokenizer.trim_padding
        self.backend = create_backend(self.bundle, device, backend, providers=providers, threads=threads,
                                      max_batch_size=max_batch_size, **backend_options)
        # GPUs: round trimmed lengths up to 8 so engines / kernels see few distinct shapes.
        self._trim_multiple = 1 if self.backend.resolved_device == "cpu" else 8
        self._decode_workers = decode_workers or max(2, min(8, os.cpu_count() or 2))
        self._max_delay_ms = max_delay_ms
        # Four batches: one running, one forming, one queued decoded, one decoding; more only adds latency.
        self._admission = Admission(default_max_queued(max_batch_size) if max_queued is None else max_queued,
                                    what="the Analyzer's submit queue")
        self._on_batch = on_batch
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._batcher: MicroBatcher | None = None
        self._closed = False
        log.info("sydes: bundle %r on %s via %s (%s; providers: %s)", self.bundle.name,
                 self.backend.resolved_device, self.backend.name, self.backend.precision,
                 ", ".join(self.backend.providers))
        if warmup:
            try:
                self._warmup()
            except BaseException:
                self.backend.close()  # do not leak a loaded session from a half-built Analyzer
                raise

    # --- info / lifecycle -----------------------------------------------------------------------------
    @property
    def info(self) -> AnalyzerInfo:
        return AnalyzerInfo(
            backend=self.backend.name, providers=list(self.backend.providers), precision=self.backend.precision,
            device=self.backend.resolved_device, bundle=self.bundle.name, bundle_path=str(self.bundle.path),
            tasks={t: list(v) for t, v in self.tasks.items()}, max_batch_size=self.max_batch_size,
            trim_padding=self.trim, fast_decode=self.fast_decode, max_queued=self.max_queued,
            settings=dict(getattr(self.backend, "settings", {}) or {}),
            decoding="independent" if self.label_structure is None else ("joint+prior" if self.joint_prior else "joint"),
            uses_images=self.uses_images,
        )

    def __repr__(self) -> str:
        i = self.info
        return f"Analyzer(bundle={i.bundle!r}, backend={i.backend!r}, device={i.device!r}, precision={i.precision!r})"

    def close(self) -> None:
        """Finish queued submits, stop the worker threads and release the backend. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            batcher, pool = self._batcher, self._pool
        if pool is not None:
            pool.shutdown(wait=True)  # decode jobs hand their items to the batcher: drain them first
        if batcher is not None:
            batcher.close(wait=True)
        self.backend.close()

    def __enter__(self) -> Analyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SydesError("this Analyzer is closed")

    def _shared_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise SydesError("this Analyzer is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._decode_workers, thread_name_prefix="sydes-decode")
            return self._pool

    # --- the pieces of the hot path -------------------------------------------------------------------
    def _prepare(self, image: Any, text: Any) -> Prepared:
        """Validate + decode + make views of one item; raises an InputError for a bad one."""
        text = self.tokenizer.check_text(text, require_text=self.require_text)
        if not self.uses_images:  # a text-only bundle: the image (if any) is not read
            return None, None, text
        if image is None:
            raise InputTypeError("image is None")
        g, c = self._preprocess(image, self.preprocess_config, reduce_for=self._reduce_for)
        return g, c, text

    def _prepare_safe(self, item: Any) -> Prepared | BaseException:
        if isinstance(item, Exception):  # a caller that already knows an item is bad keeps its place
            return item
        try:
            image, text = _split_item(item, self.uses_images)
            return self._prepare(image, text)
        except Exception as e:  # noqa: BLE001 - one bad item must not take its batch down
            return e

    def _pixels(self, items: list[Prepared]) -> tuple[np.ndarray, np.ndarray]:
        """The batch's views, global u8 [B,224,224,3] and canvas u8 [B,448,448,3]: one item's as a view with a
        batch axis, more in per-thread arrays grown on demand up to max_batch_size (no per-call allocation)."""
        if len(items) == 1:
            return items[0][0][None], items[0][1][None]  # type: ignore[index]
        k, cfg = len(items), self.preprocess_config
        bufs = getattr(self._local, "bufs", None)
        if bufs is None or bufs[0].shape[0] < k:
            n = max(k, min(self.max_batch_size, 2 * (bufs[0].shape[0] if bufs is not None else 0)))
            bufs = (np.empty((n, cfg.global_size, cfg.global_size, 3), np.uint8),
                    np.empty((n, cfg.canvas_size, cfg.canvas_size, 3), np.uint8))
            self._local.bufs = bufs
        g, c = bufs[0][:k], bufs[1][:k]
        for j, it in enumerate(items):
            g[j], c[j] = it[0], it[1]
        return g, c

    def _run_prepared(self, prepared: list[Prepared | BaseException]) -> list[Result]:
        """Model pass over prepared items (errors pass through as failed Results), in order."""
        results: list[Result | None] = [None] * len(prepared)
        good = []
        for i, p in enumerate(prepared):
            if isinstance(p, BaseException):
                results[i] = Result.failure(p)
            else:
                good.append(i)
        for start in range(0, len(good), self.max_batch_size):
            idx = good[start:start + self.max_batch_size]
            items = [prepared[i] for i in idx]
            ids, mask = self.tokenizer.encode_batch([it[2] for it in items], require_text=False)
            if self.trim:
                ids, mask = self.tokenizer.trim(ids, mask, multiple_of=self._trim_multiple)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if self.uses_images:
                feeds["global_pixels"], feeds["canvas_pixels"] = self._pixels(items)
            outs = self.backend.run(feeds)
            probs = {t: np.asarray(outs[f"probs_{t}"], dtype=np.float32) for t in self.tasks}
            if self.label_structure is not None:  # the most probable valid combination (sdk.labels)
                top_idx = self.label_structure.decode(probs, use_prior=self.joint_prior)
            else:
                top_idx = {t: p.argmax(axis=1) for t, p in probs.items()}
            per_task = [(t, labels, top_idx[t].tolist(), probs[t].tolist()) for t, labels in self.tasks.items()]
            for j, i in enumerate(idx):
                tasks = {}
                for task, labels, top, rows in per_task:
                    row = rows[j]
                    tasks[task] = TaskResult(label=labels[top[j]], score=row[top[j]], probs=dict(zip(labels, row, strict=True)))
                results[i] = Result(tasks=tasks)
        return results  # type: ignore[return-value]

    def _warmup(self) -> None:
        cfg = self.preprocess_config
        item: Prepared = (None, None, "warm up") if cfg is None else (
            np.zeros((cfg.global_size, cfg.global_size, 3), np.uint8),
            np.zeros((cfg.canvas_size, cfg.canvas_size, 3), np.uint8), "warm up")
        self._run_prepared([item])

    def _pipeline(self, items: Iterable[Any], batch_size: int, pool: ThreadPoolExecutor | None,
                  ahead: int) -> Iterator[Result]:
        """Decode up to `ahead` items in `pool` while the model runs the current batch; yield in order."""
        it = iter(items)
        if pool is None:  # inline: decode, then run, batch by batch
            while True:
                chunk = [self._prepare_safe(x) for x in itertools.islice(it, batch_size)]
                if not chunk:
                    return
                self._check_open()
                yield from self._run_prepared(chunk)
        pending: deque = deque()
        exhausted = False

        def fill() -> None:
            nonlocal exhausted
            while not exhausted and len(pending) < ahead:
                try:
                    x = next(it)
                except StopIteration:
                    exhausted = True
                    return
                pending.append(pool.submit(self._prepare_safe, x))

        try:
            fill()
            while pending:
                chunk = []
                while pending and len(chunk) < batch_size:
                    chunk.append(pending.popleft().result())
                    fill()  # keep the decoders busy while this batch runs
                self._check_open()
                yield from self._run_prepared(chunk)
        finally:
            for f in pending:  # the consumer stopped early: drop what is queued
                f.cancel()

    # --- public calls ---------------------------------------------------------------------------------
    def analyze(self, image: Any, text: Any) -> Result:
        """One post -> Result. image: path, bytes, binary file, PIL image or numpy array; text: str."""
        self._check_open()
        return self._run_prepared([self._prepare_safe((image, text))])[0]

    def analyze_batch(self, pairs: Iterable[Any]) -> list[Result]:
        """A list of (image, text) pairs (or {"image", "text"} dicts) -> Results in the same order."""
        self._check_open()
        if isinstance(pairs, (str, bytes, dict)) or not isinstance(pairs, Iterable):
            raise InputTypeError(f"analyze_batch takes a list of (image, text) pairs, got {type(pairs).__name__}")
        pairs = list(pairs)
        if len(pairs) <= 1:
            return self._run_prepared([self._prepare_safe(p) for p in pairs])
        ahead = self.max_batch_size + self._decode_workers
        return list(self._pipeline(pairs, self.max_batch_size, self._shared_pool(), ahead))

    def stream(self, items: Iterable[Any], batch_size: int = 16, workers: int = 2,
               prefetch: int | None = None) -> Iterator[Result]:
        """Analyse an iterable lazily: `workers` threads decode ahead (at most `prefetch` items, default
        2 batches) while the model runs; Results come in input order. workers=0 decodes inline.
        An item that is an Exception instance comes back as that item's failed Result (keeps row order)."""
        self._check_open()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {workers!r}")
        ahead = max(batch_size, prefetch if prefetch is not None else 2 * batch_size + workers)
        return self._stream(items, batch_size, workers, ahead)

    def _stream(self, items: Iterable[Any], batch_size: int, workers: int, ahead: int) -> Iterator[Result]:
        if workers == 0:
            yield from self._pipeline(items, batch_size, None, ahead)
            return
        pool = ThreadPoolExecutor(workers, thread_name_prefix="sydes-stream")
        try:
            yield from self._pipeline(items, batch_size, pool, ahead)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def max_queued(self) -> int:
        """The most submitted posts in flight at once (`Analyzer(max_queued=...)`)."""
        return self._admission.limit

    @property
    def queue_depth(self) -> int:
        """Submitted posts in flight now (admitted, not yet answered)."""
        return self._admission.depth

    def _submit_stage(self) -> tuple[ThreadPoolExecutor, MicroBatcher]:
        pool = self._shared_pool()
        with self._lock:
            if self._batcher is None:
                # Two batches of decoded posts at most: decode workers wait on it, the rest stay encoded.
                self._batcher = MicroBatcher(self._run_prepared, max_batch=self.max_batch_size,
                                             max_delay_ms=self._max_delay_ms,
                                             max_queue=min(self.max_queued, 2 * self.max_batch_size),
                                             on_batch=self._on_batch)
            return pool, self._batcher

    def submit(self, image: Any, text: Any, *, timeout: float | None = None) -> Future[Result]:
        """Queue one post; -> Future[Result]. At most `max_queued` posts are in flight: when full, this
        blocks (timeout=None: backpressure) or raises OverloadedError once `timeout` seconds pass (at
        once with timeout=0). Decoding runs in a worker pool after admission, then a MicroBatcher joins
        concurrent submits into shared model batches (up to max_batch_size, waiting <= max_delay_ms).
        Cancelling the Future before its post is decoded skips the work."""
        self._check_open()
        pool, batcher = self._submit_stage()
        return submit_through(self._admission, pool, batcher, lambda: self._prepare_safe((image, text)),
                              Result.failure, timeout)


def default_max_queued(max_batch_size: int) -> int:
    """Four batches' worth (at least 16): enough to keep the decoders and the model busy, no more."""
    return max(16, 4 * max_batch_size)


def _joint_decoding(manifest: dict[str, Any], tasks: dict[str, list[str]], joint: bool | str) -> tuple[Any, bool]:
    """(LabelStructure or None, use_prior) for `joint`: "auto" = the bundle's choice when it carries a table
    (its `label_structure.decoding`: "joint" or "joint+prior"), True = joint without the prior, "prior" =
    joint with the prior, False = each task on its own."""
    from sdk.labels import structure_or_none

    if joint not in ("auto", True, False, "prior"):
        raise ConfigError(f"joint must be 'auto', True, False or 'prior', got {joint!r}")
    raw = manifest.get("label_structure")
    structure = structure_or_none(raw, tasks)
    if joint is False:
        return None, False
    if structure is None:
        if joint != "auto":
            raise ConfigError("joint decoding was asked for, but the bundle carries no label structure "
                              "(export it from a checkpoint trained by `sydes train recipe`)")
        return None, False
    if joint == "auto":
        return structure, raw.get("decoding") == "joint+prior"
    return structure, joint == "prior"
