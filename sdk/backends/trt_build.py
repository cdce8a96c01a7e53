"""TensorRT engine building: one strongly typed path for TensorRT 10.x and 11.x.

TensorRT 11 removed weak typing (BuilderFlag.FP16 / INT8 / BF16, INT8 calibrators, precision
constraints): every network is strongly typed and precision lives in the ONNX graph. TensorRT 10.x
(what JetPack 6 / 7 ship) builds strongly typed networks too, with the creation flag STRONGLY_TYPED.
So the bundle's own graph decides the precision: an FP16 bundle's graph is already float16 where it
should be (export/formats/fp16.py keeps LayerNorm / Softmax / reductions / the pixel path in float32),
an INT8 bundle's graph carries Q/DQ nodes with calibrated scales (export/formats/int8.py). The builder
sets no precision flag at all; the only flag touched is TF32, cleared for FP32 bundles so that their
engines keep FP32 parity (<= 1e-4 on probabilities) instead of TF32's 10-bit mantissa.

tensorrt is imported lazily (`import_trt`), and an unsupported major version is a clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdk.atomic import atomic_write_bytes
from sdk.errors import BackendUnavailableError, ConfigError, SydesError

log = logging.getLogger("sdk.backends.tensorrt")

PRECISIONS = ("fp32", "fp16", "int8")
SUPPORTED_MAJORS = (10, 11)
INSTALL_TRT = ("install TensorRT 10 or 11 (`pip install tensorrt` gives 11.x on x86-64 Linux / Windows; "
               "JetPack 6 / 7 ship 10.x: use that one on Jetson)")


# --- version detection --------------------------------------------------------------------------------
def trt_major(version: str) -> int:
    """Major version of a TensorRT version string ("10.3.0.26" -> 10); ConfigError when unparsable."""
    head = str(version).strip().split(".")[0]
    if not head.isdigit():
        raise ConfigError(f"cannot read a TensorRT version from {version!r}")
    return int(head)


def import_trt() -> Any:
    """The `tensorrt` module, checked: BackendUnavailableError when absent or of an unsupported major."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError(f"the 'tensorrt' package is not installed: {INSTALL_TRT}") from e
    version = str(getattr(trt, "__version__", "unknown"))
    try:
        major = trt_major(version)
    except ConfigError:
        major = -1
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailableError(
            f"TensorRT {version} is not supported: this SDK builds strongly typed engines with TensorRT "
            f"{' or '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}; {INSTALL_TRT}")
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if flags is None or not hasattr(flags, "STRONGLY_TYPED"):
        raise BackendUnavailableError(f"TensorRT {version} has no NetworkDefinitionCreationFlag.STRONGLY_TYPED; "
                                      f"{INSTALL_TRT}")
    return trt


# --- profile and cache key ----------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimizationProfile:
    """The shape range an engine accepts: batch and token-sequence length (min <= opt <= max)."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    min_seq: int = 1
    opt_seq: int = 77
    max_seq: int = 77

    def __post_init__(self) -> None:
        for f in ("min_batch", "opt_batch", "max_batch", "min_seq", "opt_seq", "max_seq"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"optimisation profile {f} must be a positive integer, got {v!r}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"optimisation profile needs min_batch <= opt_batch <= max_batch, got "
                              f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")
        if not self.min_seq <= self.opt_seq <= self.max_seq:
            raise ConfigError(f"optimisation profile needs min_seq <= opt_seq <= max_seq, got "
                              f"{self.min_seq}, {self.opt_seq}, {self.max_seq}")

    @classmethod
    def for_bundle(cls, max_batch: int, max_length: int, trim: bool) -> OptimizationProfile:
        """The profile a bundle needs for batches up to `max_batch` (text trimmed to >= 2 tokens if `trim`)."""
        return cls(min_batch=1, opt_batch=max(1, min(8, max_batch)), max_batch=max_batch,
                   min_seq=2 if trim else max_length, opt_seq=max_length, max_seq=max_length)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptimizationProfile:
        return cls(**{k: d[k] for k in ("min_batch", "opt_batch", "max_batch", "min_seq", "opt_seq", "max_seq")})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def covers(self, other: OptimizationProfile) -> bool:
        """True when every shape `other` accepts is accepted by this profile."""
        return (self.min_batch <= other.min_batch and self.max_batch >= other.max_batch
                and self.min_seq <= other.min_seq and self.max_seq >= other.max_seq)

    def shapes(self, shape: tuple[int | str, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) concrete shapes of one input: dim 0 dynamic = batch, later dynamic = sequence."""
        lo, mid, hi = [], [], []
        for i, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                lo.append(d), mid.append(d), hi.append(d)
            elif i == 0:
                lo.append(self.min_batch), mid.append(self.opt_batch), hi.append(self.max_batch)
            else:
                lo.append(self.min_seq), mid.append(self.opt_seq), hi.append(self.max_seq)
        return tuple(lo), tuple(mid), tuple(hi)

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        b = shape[0]
        if not self.min_batch <= b <= self.max_batch:
            raise ConfigError(f"input {name} has batch {b}; this engine's profile takes "
                              f"{self.min_batch}..{self.max_batch}")


def engine_cache_key(gpu_name: str, compute_capability: str | tuple[int, int], trt_version: str,
                     precision: str, profile: OptimizationProfile, graph_sha256: str) -> str:
    """sha256 hex over everything an engine depends on; equal inputs give equal keys on every machine."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not valid; valid: {', '.join(PRECISIONS)}")
    payload = {
        "gpu": str(gpu_name).strip(), "cc": cc_string(compute_capability), "trt": str(trt_version),
        "precision": precision, "profile": profile.to_dict(), "graph": graph_sha256.lower(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cc_string(compute_capability: str | tuple[int, int] | list[int]) -> str:
    if isinstance(compute_capability, (tuple, list)):
        return ".".join(str(int(x)) for x in compute_capability)
    return str(compute_capability)


# --- building -----------------------------------------------------------------------------------------
class _Progress:
    """Says that a build is running: TensorRT's IProgressMonitor phases where the module has it (10.x and
    11.x do), and a heartbeat log line every `every_s` seconds either way (a build takes minutes)."""

    def __init__(self, trt: Any, what: str, every_s: float = 20.0) -> None:
        self.what, self.every_s = what, every_s
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="trt-build-heartbeat", daemon=True)
        self.monitor = self._make_monitor(trt)

    def _make_monitor(self, trt: Any) -> Any:
        base = getattr(trt, "IProgressMonitor", None)
        if base is None:
            return None
        t0 = self.t0

        class Monitor(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                if parent_phase is None:  # top-level phases only: nested ones are per-layer noise
                    log.info("TensorRT build: %s (%d steps) at %.0f s", phase_name, num_steps,
                             time.perf_counter() - t0)

            def step_complete(self, phase_name: str, step: int) -> bool:
                return True  # never cancel

            def phase_finish(self, phase_name: str) -> None:
                pass

        return Monitor()

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            log.warning("still building the TensorRT engine %s: %.0f s so far", self.what,
                        time.perf_counter() - self.t0)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], precision: str,
                 profile: OptimizationProfile, timing_cache_path: str | os.PathLike[str] | None = None,
                 *, workspace_bytes: int | None = None, verbose: bool = False) -> Path:
    """Build a strongly typed TensorRT engine from an ONNX graph and write it atomically to `engine_path`.

    precision ("fp32" | "fp16" | "int8") names what the graph holds; it sets no builder flag (the graph's
    types decide), it only clears TF32 for FP32. One optimisation profile covers `profile` for every
    dynamic input (dim 0 batch, later dynamic dims the token sequence). The timing cache, when given, is
    read first and written back, so later builds on the same GPU are much faster.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not valid; valid: {', '.join(PRECISIONS)}")
    trt = import_trt()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # STRONGLY_TYPED only: EXPLICIT_BATCH is the only mode since 10.0 (deprecated there, gone in 11).
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # parse_from_file also finds external weight files
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SydesError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    tf32 = getattr(getattr(trt, "BuilderFlag", None), "TF32", None)
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        lo, mid, hi = profile.shapes(tuple(int(d) if int(d) >= 0 else "dyn" for d in t.shape))
        opt.set_shape(t.name, lo, mid, hi)
    config.add_optimization_profile(opt)
    cache_path = Path(timing_cache_path) if timing_cache_path else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)
    engine_path = Path(engine_path)
    with _Progress(trt, engine_path.name) as progress:
        if progress.monitor is not None:
            config.progress_monitor = progress.monitor
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SydesError(f"TensorRT failed to build an engine from {onnx_path} (precision {precision}); "
                         "run with verbose=True for the builder log")
    atomic_write_bytes(engine_path, bytes(memoryview(serialized)))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    log.info("built TensorRT engine %s in %.0f s", engine_path.name, time.perf_counter() - progress.t0)
    return engine_path


@contextlib.contextmanager
def build_lock(path: Path, timeout_s: float = 3600.0):
    """An O_EXCL lock file so two processes do not build the same engine at once.

    Yields True when this process holds the lock, False when another one finished `path` meanwhile
    (or the wait timed out)."""
    lock = path.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            break
        except FileExistsError:
            if path.exists() or time.monotonic() > deadline:
                yield False
                return
            time.sleep(1.0)
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
