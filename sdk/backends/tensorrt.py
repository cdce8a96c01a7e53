"""Native TensorRT backend (TensorRT 10.x / 11.x Python API, strongly typed engines only).

Engines are plain TensorRT files (no header). Which engine serves a request is the reuse rule of
sdk.backends.trt_engines: any recorded engine for this GPU / TensorRT / precision / graph whose profile
covers the requested batch and text range. Without one, `build=True` (the default for an explicit
`backend="tensorrt"`) builds it, says so and logs progress (minutes, first use on a GPU only), and
records it in the manifest (or the user cache for a read-only bundle); `build=False` (what
`backend="auto"` passes) raises EngineNotBuiltError naming how to build one. Building itself is
sdk.backends.trt_build (no precision flags: the graph's types decide). Host <-> device traffic uses
pinned host buffers and async copies on one CUDA stream per thread, with one execution context per thread.

tensorrt and cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`) are imported lazily;
when either is missing the backend raises BackendUnavailableError naming what to install.
No torch, no pycuda, no polygraphy.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sdk.backends.base import Backend, Device
from sdk.backends.trt_build import (
    INSTALL_TRT,
    PRECISIONS,
    SUPPORTED_MAJORS,
    OptimizationProfile,
    build_engine,
    build_lock,
    engine_cache_key,
    import_trt,
)
from sdk.backends.trt_engines import (
    EngineTarget,
    add_record,
    engine_file,
    find_engine,
    make_record,
    store_location,
)
from sdk.errors import BackendUnavailableError, ConfigError, SydesError

if TYPE_CHECKING:  # pragma: no cover
    from sdk.bundle import Bundle

log = logging.getLogger("sdk.backends.tensorrt")

INSTALL_CUDA = "install cuda-python (`pip install cuda-python`) for CUDA memory and streams"
_import_trt = import_trt  # the name older callers use

__all__ = ["INSTALL_TRT", "PRECISIONS", "SUPPORTED_MAJORS", "EngineNotBuiltError", "OptimizationProfile",
           "TensorRTBackend", "build_engine", "ensure_engine", "engine_cache_key", "gpu_identity", "import_trt"]


class EngineNotBuiltError(BackendUnavailableError):
    """No engine covers the request and building was not allowed (backend="auto" never builds)."""


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


_NP_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
              "BOOL": np.bool_, "UINT8": np.uint8}


def np_dtype(trt: Any, dt: Any) -> np.dtype:
    """numpy dtype of a TensorRT DataType (trt.nptype where the module has it, else by the enum's name)."""
    name = str(getattr(dt, "name", dt)).rsplit(".", 1)[-1].upper()
    if name in _NP_DTYPES:
        return np.dtype(_NP_DTYPES[name])
    if hasattr(trt, "nptype"):
        return np.dtype(trt.nptype(dt))
    raise ConfigError(f"TensorRT tensor type {dt} has no numpy equivalent")


def how_to_build(bundle_path: Path, target: EngineTarget, want: OptimizationProfile) -> str:
    return (f"no TensorRT engine in {bundle_path} (or the user cache) for {target.gpu} (TensorRT {target.tensorrt}, "
            f"{target.precision}) covers batch {want.min_batch}..{want.max_batch}, text length "
            f"{want.min_seq}..{want.max_seq}; build one once (minutes, progress is shown) with "
            f"Analyzer(bundle, backend='tensorrt', max_batch_size={want.max_batch}) or `sydes analyze BUNDLE "
            f"--backend tensorrt --batch-size {want.max_batch} ...`, or at export time with `sydes export ... "
            f"--format tensorrt --max-batch {want.max_batch}`; `sydes info BUNDLE --trtexec` prints the trtexec "
            "command that does the same")


def ensure_engine(bundle: Bundle, target: EngineTarget, want: OptimizationProfile, *, build: bool,
                  engine_path: str | os.PathLike[str] | None = None, workspace_bytes: int | None = None,
                  verbose: bool = False) -> tuple[Path, OptimizationProfile]:
    """(engine file, its profile) for `target` covering `want`: an explicit `engine_path`, a recorded engine
    whose profile covers `want` (trt_engines.find_engine), or, only with `build`, a new one (it says so,
    logs progress and records it). Without `build` and without an engine: EngineNotBuiltError."""
    if engine_path:
        path = Path(engine_path)
        if not path.is_file():
            if not build:
                raise EngineNotBuiltError(f"TensorRT engine {path} does not exist and building is disabled")
            _build(bundle, target, want, path, None, workspace_bytes, verbose)
        return path, want
    found = find_engine(bundle, target, want)
    if found is not None:
        log.info("reusing TensorRT engine %s from the %s: its profile (batch %d..%d, text %d..%d) covers "
                 "the request (batch %d..%d, text %d..%d)", found.path.name, found.where,
                 found.profile.min_batch, found.profile.max_batch, found.profile.min_seq,
                 found.profile.max_seq, want.min_batch, want.max_batch, want.min_seq, want.max_seq)
        return found.path, found.profile
    if not build:
        raise EngineNotBuiltError(how_to_build(bundle.path, target, want))
    base, in_bundle = store_location(bundle)
    path = engine_file(bundle, base, in_bundle, target.key(want))
    _build(bundle, target, want, path, (base, in_bundle), workspace_bytes, verbose)
    return path, want


def _build(bundle: Bundle, target: EngineTarget, want: OptimizationProfile, path: Path,
           store: tuple[Path, bool] | None, workspace_bytes: int | None, verbose: bool) -> None:
    log.warning("building a TensorRT engine for %s (TensorRT %s, %s, batch %d..%d, text %d..%d) into %s: "
                "first use on this GPU only, this takes minutes (progress is logged)", target.gpu,
                target.tensorrt, target.precision, want.min_batch, want.max_batch, want.min_seq,
                want.max_seq, path.parent)
    safe_gpu = "".join(c if c.isalnum() else "_" for c in target.gpu)
    timing = path.parent / f"timing-{safe_gpu}-trt{target.tensorrt}.cache"
    try:
        with build_lock(path) as mine:
            if mine and not path.is_file():
                build_engine(bundle.graph_path("model"), path, target.precision, want, timing,
                             workspace_bytes=workspace_bytes, verbose=verbose)
                if store is not None:
                    base, in_bundle = store
                    add_record(base, in_bundle, make_record(base, path, target.key(want), target, want,
                                                            workspace_bytes))
    except PermissionError as e:
        raise BackendUnavailableError(f"cannot write the TensorRT engine in {path.parent}: {e}; pass "
                                      "engine_path= to a writable place") from e
    if not path.is_file():
        raise BackendUnavailableError(f"TensorRT engine {path} was not built (another process held the "
                                      "build lock and did not finish it); try again")


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
        trt = import_trt()
        self.trt = trt
        self.cudart = _import_cudart()
        idx = self.device.index
        _ck(self.cudart.cudaSetDevice(idx))
        gpu, cc = gpu_identity(idx)
        m = self.bundle.manifest
        want: OptimizationProfile = self.options.get("profile") or OptimizationProfile.for_bundle(
            self.max_batch_size, m.tokenizer.max_length, m.tokenizer.trim_padding)
        target = EngineTarget(gpu, cc, str(trt.__version__), self.precision, m.graph.sha256)
        self.engine_path, self.profile = ensure_engine(
            self.bundle, target, want, build=bool(self.options.get("build", True)),
            engine_path=self.options.get("engine_path"), workspace_bytes=self.options.get("workspace_bytes"),
            verbose=bool(self.options.get("verbose", False)))
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT could not deserialise {self.engine_path} (built by another "
                                          "TensorRT version or GPU?); delete it to rebuild")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
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
