"""Native TensorRT backend (TensorRT 10 Python API) and the engine builder that export/ calls.

Engines are plain TensorRT files (no header) cached in `bundle/engines/<key>.engine`, the key hashing
everything an engine depends on (`engine_cache_key`). The first use on a device builds the engine
(minutes) and writes it atomically; later runs deserialise it. Host <-> device traffic uses pinned host
buffers and async copies on one CUDA stream per thread, with one execution context per thread.

tensorrt and cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`) are imported lazily;
when either is missing the backend raises BackendUnavailableError naming what to install.
No torch, no pycuda, no polygraphy.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdk.atomic import atomic_write_bytes
from sdk.backends.base import Backend, Device
from sdk.errors import BackendUnavailableError, ConfigError, SydesError

log = logging.getLogger("sdk.backends.tensorrt")

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_TRT = "install TensorRT 10 (`pip install tensorrt`, or use the one JetPack ships)"
INSTALL_CUDA = "install cuda-python (`pip install cuda-python`) for CUDA memory and streams"


# --- cache key and profile -----------------------------------------------------------------------------
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
        return cls(min_batch=1, opt_batch=max(1, min(8, max_batch)), max_batch=max_batch,
                   min_seq=2 if trim else max_length, opt_seq=max_length, max_seq=max_length)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

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
    if isinstance(compute_capability, (tuple, list)):
        compute_capability = ".".join(str(int(x)) for x in compute_capability)
    payload = {
        "gpu": str(gpu_name).strip(), "cc": str(compute_capability), "trt": str(trt_version),
        "precision": precision, "profile": profile.to_dict(), "graph": graph_sha256.lower(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --- lazy imports -------------------------------------------------------------------------------------
def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError(f"the 'tensorrt' package is not installed: {INSTALL_TRT}") from e
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} is too old: this SDK needs TensorRT >= 10")
    return trt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise BackendUnavailableError(f"the 'cuda-python' package is not installed: {INSTALL_CUDA}") from e
    return cudart


def _ck(result: Any) -> Any:
    """cuda-python returns (err, *values): raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise SydesError(f"CUDA error {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_identity(index: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "M.m") of CUDA device `index`."""
    cudart = _import_cudart()
    props = _ck(cudart.cudaGetDeviceProperties(index))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 ").strip(), f"{props.major}.{props.minor}"


# --- building -----------------------------------------------------------------------------------------
def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], precision: str,
                 profile: OptimizationProfile, timing_cache_path: str | os.PathLike[str] | None = None,
                 *, workspace_bytes: int | None = None, verbose: bool = False) -> Path:
    """Build a TensorRT engine from an ONNX graph and write it atomically to `engine_path`.

    precision: "fp32" | "fp16" | "int8" (int8 = explicit quantisation from the graph's Q/DQ nodes, with
    FP16 allowed for the layers left in float). The timing cache (if given) is read first and written back,
    so later builds on the same GPU are much faster.
    """
    trt = _import_trt()
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not valid; valid: {', '.join(PRECISIONS)}")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # parse_from_file also finds external weight files
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SydesError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes (no calibrator)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        lo, mid, hi = profile.shapes(tuple(int(d) if d >= 0 else "dyn" for d in t.shape))
        opt.set_shape(t.name, lo, mid, hi)
    config.add_optimization_profile(opt)
    cache_path = Path(timing_cache_path) if timing_cache_path else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SydesError(f"TensorRT failed to build an engine from {onnx_path} (precision {precision}); "
                         "run with verbose=True for the builder log")
    engine_path = Path(engine_path)
    atomic_write_bytes(engine_path, bytes(memoryview(serialized)))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    log.info("built TensorRT engine %s in %.0f s", engine_path.name, time.perf_counter() - t0)
    return engine_path


@contextlib.contextmanager
def _build_lock(path: Path, timeout_s: float = 3600.0):
    """An O_EXCL lock file so two processes do not build the same engine at once."""
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


# --- runtime ------------------------------------------------------------------------------------------
class _PinnedBuffer:
    """Pinned host memory + device memory of `nbytes`, with a numpy view over the host side."""

    def __init__(self, cudart: Any, nbytes: int) -> None:
        self.cudart, self.nbytes = cudart, max(1, nbytes)
        self.host_ptr = int(_ck(cudart.cudaMallocHost(self.nbytes)))
        self.dev_ptr = int(_ck(cudart.cudaMalloc(self.nbytes)))
        self.host = np.frombuffer((ctypes.c_uint8 * self.nbytes).from_address(self.host_ptr), dtype=np.uint8)

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.host[:n].view(dtype).reshape(shape)

    def free(self) -> None:
        with contextlib.suppress(Exception):
            self.cudart.cudaFree(self.dev_ptr)
            self.cudart.cudaFreeHost(self.host_ptr)


class _ThreadContext:
    """One execution context, CUDA stream and set of I/O buffers, used by one thread only."""

    def __init__(self, backend: TensorRTBackend) -> None:
        cudart = backend.cudart
        _ck(cudart.cudaSetDevice(backend.device.index))
        self.context = backend.engine.create_execution_context()
        if self.context is None:
            raise SydesError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = _ck(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        self.buffers = {name: _PinnedBuffer(cudart, nbytes) for name, nbytes in backend.max_bytes.items()}

    def free(self, cudart: Any) -> None:
        for b in self.buffers.values():
            b.free()
        with contextlib.suppress(Exception):
            cudart.cudaStreamDestroy(self.stream)
        self.context = None


class TensorRTBackend(Backend):
    name = "tensorrt"

    @classmethod
    def probe(cls, device: Device) -> str | None:
        if device.kind == "cpu":
            return "TensorRT runs on NVIDIA GPUs only (device is 'cpu')"
        try:
            _import_trt()
            cudart = _import_cudart()
        except BackendUnavailableError as e:
            return str(e)
        try:
            count = _ck(cudart.cudaGetDeviceCount())
        except Exception as e:  # noqa: BLE001 - no driver raises from the bindings
            return f"no usable CUDA driver: {e}"
        if count < 1:
            return "no CUDA GPU found"
        if device.kind == "cuda" and device.index >= count:
            return f"device cuda:{device.index} does not exist ({count} GPU(s) found)"
        return None

    def _load(self) -> None:
        trt = _import_trt()
        self.trt = trt
        self.cudart = _import_cudart()
        idx = self.device.index
        _ck(self.cudart.cudaSetDevice(idx))
        gpu, cc = gpu_identity(idx)
        m = self.bundle.manifest
        self.profile: OptimizationProfile = self.options.get("profile") or OptimizationProfile.for_bundle(
            self.max_batch_size, m.tokenizer.max_length, m.tokenizer.trim_padding)
        key = engine_cache_key(gpu, cc, trt.__version__, self.precision, self.profile, m.graph.sha256)
        self.engine_path = Path(self.options.get("engine_path") or self.bundle.engines_dir / f"{key}.engine")
        if not self.engine_path.is_file():
            if not self.options.get("build", True):
                raise BackendUnavailableError(f"no TensorRT engine {self.engine_path.name} for this GPU "
                                              "and building is disabled")
            log.warning("building the TensorRT engine for %s (%s, %s): first use only, this takes minutes",
                        gpu, self.precision, key[:12])
            with _build_lock(self.engine_path) as mine:
                if mine and not self.engine_path.is_file():
                    try:
                        build_engine(self.bundle.graph_path("model"), self.engine_path, self.precision,
                                     self.profile, self.bundle.engines_dir / f"timing-{gpu.replace(' ', '_')}.cache")
                    except PermissionError as e:
                        raise BackendUnavailableError(f"cannot write the engine cache in {self.engine_path.parent}: "
                                                      f"{e}; pass engine_path= to a writable place") from e
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT could not deserialise {self.engine_path} (built by another "
                                          "TensorRT version or GPU?); delete it to rebuild")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        # Largest shape of every tensor under the profile -> buffer sizes.
        self.max_bytes: dict[str, int] = {}
        for n in names:
            if n in self.inputs:
                shape = tuple(self.engine.get_tensor_profile_shape(n, 0)[2])
            else:
                shape = tuple(self.profile.max_batch if d < 0 else int(d) for d in self.engine.get_tensor_shape(n))
            self.max_bytes[n] = int(np.prod(shape)) * self.dtypes[n].itemsize
        self._local = threading.local()
        self._contexts: list[_ThreadContext] = []
        self._ctx_lock = threading.Lock()
        self.providers = ["TensorRT " + trt.__version__]
        self.resolved_device = f"cuda:{idx}"
        log.info("TensorRT engine %s loaded on %s (%s)", self.engine_path.name, gpu, self.precision)

    def _context(self) -> _ThreadContext:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = _ThreadContext(self)
            self._local.ctx = ctx
            with self._ctx_lock:
                self._contexts.append(ctx)
        return ctx

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self.cudart
        _ck(cudart.cudaSetDevice(self.device.index))  # the current device is per thread
        ctx = self._context()
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.inputs:
            arr = feeds[name]
            self.profile.check(name, arr.shape)
            if arr.dtype != self.dtypes[name]:
                arr = arr.astype(self.dtypes[name])
            buf = ctx.buffers[name]
            if arr.nbytes > buf.nbytes:
                raise ConfigError(f"input {name} of shape {arr.shape} exceeds the engine's profile")
            np.copyto(buf.view(arr.dtype, arr.shape), arr)
            _ck(cudart.cudaMemcpyAsync(buf.dev_ptr, buf.host_ptr, arr.nbytes, h2d, ctx.stream))
            if not ctx.context.set_input_shape(name, tuple(arr.shape)):
                raise ConfigError(f"TensorRT rejected shape {arr.shape} for input {name}")
            ctx.context.set_tensor_address(name, buf.dev_ptr)
        shapes = {}
        for name in self.outputs:
            shapes[name] = tuple(ctx.context.get_tensor_shape(name))
            ctx.context.set_tensor_address(name, ctx.buffers[name].dev_ptr)
        if not ctx.context.execute_async_v3(ctx.stream):
            raise SydesError("TensorRT execute_async_v3 failed")
        out = {}
        for name in self.outputs:
            buf = ctx.buffers[name]
            view = buf.view(self.dtypes[name], shapes[name])
            _ck(cudart.cudaMemcpyAsync(buf.host_ptr, buf.dev_ptr, view.nbytes, d2h, ctx.stream))
            out[name] = view
        _ck(cudart.cudaStreamSynchronize(ctx.stream))
        # The pinned buffers are reused by the next call of this thread: hand out copies.
        return {n: np.array(v, dtype=np.float32, copy=True) for n, v in out.items()}

    def _close(self) -> None:
        with self._ctx_lock:
            for ctx in self._contexts:
                ctx.free(self.cudart)
            self._contexts.clear()
        self.engine = None
        self.runtime = None
