"""OpenVINO backend: Intel CPUs, iGPUs / dGPUs and NPUs; runs OpenVINO IR bundles and ONNX bundles.

`sydes export --target openvino` writes an IR bundle (model.xml + model.bin, FP32 / FP16 / INT8 via NNCF).
OpenVINO also reads an ONNX bundle's FP32 / FP16 model.onnx directly; the onnxruntime INT8 graphs of
`--target cpu` use onnxruntime's own fused ops, which OpenVINO cannot load (a clear error says so).

Compiled models are cached (OpenVINO's CACHE_DIR: the bundle's engines/openvino/ when writable, else the
user cache), so a second process skips compilation. One infer request per stream, handed out through a
queue, makes `run` thread-safe. With the throughput hint and several streams, one batch is split over the
streams and its parts run in parallel (`split_batches`): on 2 cores, 2 streams of 1 thread each ran a
batch of 16 posts of the edge INT8 bundle 1.08x faster than one request on 2 threads, because attention,
transposes and normalisations parallelise worse within one request than GEMMs do. openvino is imported
lazily, so `import sdk` stays light.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import numpy as np

from sdk.backends.base import Backend, Device
from sdk.errors import BackendUnavailableError, ConfigError, MissingExtraError

log = logging.getLogger("sdk.backends.openvino")

# sdk Device kind -> OpenVINO device name
OV_DEVICES = {"auto": "CPU", "cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
HINTS = ("latency", "throughput")


def _ov():
    try:
        import openvino
    except ModuleNotFoundError as e:
        raise MissingExtraError("openvino", "openvino") from e
    return openvino


def ov_device(device: Device) -> str:
    name = OV_DEVICES[device.kind]
    return f"GPU.{device.index}" if device.kind == "gpu" and device.index else name


def available_devices() -> list[str]:
    return list(_ov().Core().available_devices)


class OpenVINOBackend(Backend):
    """Options (keyword arguments of Analyzer / create_backend):

    - `hint`: "latency" (default: one stream, every thread on each batch; what micro-batched serving and
      `sydes analyze` want on a small CPU) or "throughput" (several streams, batches in parallel);
    - `streams`: explicit NUM_STREAMS (overrides the hint's choice);
    - `split_batches`: split each batch over the streams and run the parts in parallel (default: on with
      the throughput hint and >= 2 streams; every output must be batch-first);
    - `inference_precision`: "f32" | "bf16" | "f16"; default "f32" for FP32 bundles (so a CPU with AMX or
      an iGPU does not quietly run them at reduced precision), the device's default otherwise;
    - `cache`: False disables the compiled-model cache.
    """

    name = "openvino"
    devices = ("auto", "cpu", "gpu", "npu")
    graph_formats = ("onnx", "openvino")

    @classmethod
    def probe(cls, device: Device) -> str | None:
        try:
            avail = available_devices()
        except MissingExtraError as e:
            return str(e)
        want = ov_device(device)
        if want.split(".")[0] not in {d.split(".")[0] for d in avail}:
            return f"OpenVINO sees no {want} device here (available: {', '.join(avail) or 'none'})"
        return None

    def _config(self) -> dict[str, Any]:
        hint = str(self.options.get("hint", "latency")).lower()
        if hint not in HINTS:
            raise ConfigError(f"openvino hint {hint!r} is not valid; valid: {', '.join(HINTS)}")
        cfg: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper()}
        prec = self.options.get("inference_precision", "f32" if self.precision == "fp32" else None)
        if prec is not None:
            if prec not in ("f32", "bf16", "f16"):
                raise ConfigError(f"openvino inference_precision {prec!r} is not valid; valid: f32, bf16, f16")
            cfg["INFERENCE_PRECISION_HINT"] = prec
        if OV_DEVICES[self.device.kind] == "CPU":
            if self.threads:
                cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
            if self.options.get("streams"):
                cfg["NUM_STREAMS"] = int(self.options["streams"])
        return cfg

    def _load(self) -> None:
        ov = _ov()
        core = ov.Core()
        from sdk.cache import engine_cache_dir

        cache = engine_cache_dir(self.bundle, "openvino") if self.options.get("cache", True) else None
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        device = ov_device(self.device)
        path = self.bundle.graph_path("model")
        cfg = self._config()
        try:
            self.compiled = core.compile_model(str(path), device, cfg)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with the plugin's message
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            why = (" (the INT8 graphs of --target cpu use onnxruntime-only ops: export with --target openvino)"
                   if path.suffix == ".onnx" and self.precision == "int8" else "")
            raise BackendUnavailableError(f"OpenVINO could not compile {path.name} for {device}: {msg}{why}") from e
        n = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests: queue.Queue[Any] = queue.Queue()
        for _ in range(max(1, n)):
            self._requests.put(self.compiled.create_infer_request())
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]
        streams = int(self.compiled.get_property("NUM_STREAMS"))
        batch_first = all(p.get_partial_shape().rank.is_static and p.get_partial_shape().rank.get_length() >= 1
                          and p.get_partial_shape()[0].is_dynamic for p in [*self.compiled.inputs, *self.compiled.outputs])
        split = self.options.get("split_batches", cfg["PERFORMANCE_HINT"] == "THROUGHPUT")
        if self.options.get("split_batches") and (streams < 2 or n < 2):
            raise ConfigError(f"split_batches needs >= 2 streams, the compiled model has {streams}: pass "
                              "hint='throughput' or streams=N")
        if split and not batch_first:
            raise ConfigError("split_batches needs a graph whose every input and output has a dynamic batch axis first")
        self._split = min(streams, n) if split and streams > 1 and n > 1 else 1
        self._split_lock = threading.Lock()  # one caller at a time takes several requests: no deadlock
        self.providers = [f"OpenVINO {ov.__version__.split('-')[0]} {device}"]
        self.resolved_device = str(self.device) if self.device.kind != "auto" else "cpu"
        self.settings = {"device": device, "cache_dir": str(cache) if cache else None, "requests": n,
                         "streams": streams, "split_batches": self._split,
                         "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
                         if device == "CPU" else None,
                         "inference_precision": str(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
                         **{k.lower(): v for k, v in cfg.items() if k == "PERFORMANCE_HINT"}}
        log.debug("openvino compiled model: %s", self.settings)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(feeds.values())))
        if self._split > 1 and batch > 1:
            return self._run_split(feeds, batch, min(self._split, batch))
        req = self._requests.get()
        try:
            req.infer({n: np.ascontiguousarray(feeds[n]) for n in self.input_names})
            # the request's output tensors are reused by its next call: copy them out
            return {n: np.array(req.get_tensor(n).data, copy=True) for n in self.output_names}
        finally:
            self._requests.put(req)

    def _run_split(self, feeds: dict[str, np.ndarray], batch: int, k: int) -> dict[str, np.ndarray]:
        """The batch cut into `k` contiguous parts, one infer request (stream) each, run in parallel and
        concatenated in order."""
        with self._split_lock:
            reqs = [self._requests.get() for _ in range(k)]
        try:
            bounds = np.linspace(0, batch, k + 1).astype(int)
            for r, lo, hi in zip(reqs, bounds[:-1], bounds[1:], strict=True):
                r.start_async({n: np.ascontiguousarray(feeds[n][lo:hi]) for n in self.input_names})
            for r in reqs:
                r.wait()
            return {n: np.concatenate([np.array(r.get_tensor(n).data, copy=True) for r in reqs]) for n in self.output_names}
        finally:
            for r in reqs:
                self._requests.put(r)

    def _close(self) -> None:
        self._requests = queue.Queue()
        self.compiled = None
