"""OpenVINO backend: Intel CPUs, iGPUs / dGPUs and NPUs; runs OpenVINO IR bundles and ONNX bundles.

`sydes export --target openvino` writes an IR bundle (model.xml + model.bin, FP32 / FP16 / INT8 via NNCF).
OpenVINO also reads an ONNX bundle's FP32 / FP16 model.onnx directly; the onnxruntime INT8 graphs of
`--target cpu` use onnxruntime's own fused ops, which OpenVINO cannot load (a clear error says so).

Compiled models are cached (OpenVINO's CACHE_DIR: the bundle's engines/openvino/ when writable, else the
user cache), so a second process skips compilation. One infer request per stream, handed out through a
queue, makes `run` thread-safe. With the throughput hint and several streams, one batch is split over the
streams and its parts run in parallel (`split_batches`): on 2 cores, 2 streams of 1 thread each ran a
batch of 16 posts of the edge INT8 bundle 1.08x faster than one request on 2 threads, because attention,
transposes and normalisations parallelise worse within one request than GEMMs do. Whether that pays
depends on the model (it did for the edge preset from batch 2 up, not for the reference preset), so
`hint="auto"` compiles both and decides per batch size by measurement (`AutoChoice`). openvino is imported
lazily, so `import sdk` stays light.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sdk.backends.base import Backend, Device
from sdk.errors import BackendUnavailableError, ConfigError, MissingExtraError

log = logging.getLogger("sdk.backends.openvino")

# sdk Device kind -> OpenVINO device name
OV_DEVICES = {"auto": "CPU", "cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
HINTS = ("latency", "throughput", "auto")
AUTO_TRIALS = 3  # timed calls of each path per batch size before "auto" settles on the faster


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
      `sydes analyze` want on a small CPU), "throughput" (several streams, batches in parallel) or "auto"
      (CPU: both compiled; batch 1 on the latency model, larger batches on whichever of the two measured
      faster for that batch size, see `AutoChoice`);
    - `streams`: explicit NUM_STREAMS (overrides the hint's choice; with "auto", of the throughput model);
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

    def _config(self, hint: str, streams: bool = True) -> dict[str, Any]:
        cfg: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper()}
        prec = self.options.get("inference_precision", "f32" if self.precision == "fp32" else None)
        if prec is not None:
            if prec not in ("f32", "bf16", "f16"):
                raise ConfigError(f"openvino inference_precision {prec!r} is not valid; valid: f32, bf16, f16")
            cfg["INFERENCE_PRECISION_HINT"] = prec
        if OV_DEVICES[self.device.kind] == "CPU":
            if self.threads:
                cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
            if self.options.get("streams") and streams:
                cfg["NUM_STREAMS"] = int(self.options["streams"])
        return cfg

    def _hint(self) -> str:
        hint = str(self.options.get("hint", "latency")).lower()
        if hint not in HINTS:
            raise ConfigError(f"openvino hint {hint!r} is not valid; valid: {', '.join(HINTS)}")
        if hint == "auto" and OV_DEVICES[self.device.kind] != "CPU":
            raise ConfigError("openvino hint 'auto' chooses between CPU streams: it needs device='cpu'")
        if hint == "auto" and self.options.get("split_batches") is not None:
            raise ConfigError("hint='auto' decides the batch split itself: do not pass split_batches")
        return hint

    def _load(self) -> None:
        ov = _ov()
        core = ov.Core()
        from sdk.cache import engine_cache_dir

        hint = self._hint()
        cache = engine_cache_dir(self.bundle, "openvino") if self.options.get("cache", True) else None
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        device = ov_device(self.device)
        # "auto": the latency model for batch 1, and the throughput model (split) as the other candidate
        self._paths = ({"latency": self._compile(core, device, "latency", streams=False),
                        "throughput": self._compile(core, device, "throughput")} if hint == "auto"
                       else {hint: self._compile(core, device, hint)})
        main = self._paths[hint if hint != "auto" else "latency"]
        self._auto = AutoChoice() if hint == "auto" else None
        if hint == "auto" and self._paths["throughput"].split < 2:  # one stream: nothing to choose between
            log.info("openvino hint auto: the throughput model has one stream here; running the latency model only")
            self._paths.pop("throughput").close()
            self._auto = None
        self.compiled = main.compiled
        self.input_names, self.output_names = main.input_names, main.output_names
        self.providers = [f"OpenVINO {ov.__version__.split('-')[0]} {device}"]
        self.resolved_device = str(self.device) if self.device.kind != "auto" else "cpu"
        other = self._paths.get("throughput", main)  # with "auto": the candidate batches >= 2 may take
        self.settings = {"device": device, "cache_dir": str(cache) if cache else None, "requests": other.requests,
                         "streams": other.streams, "split_batches": other.split,
                         **({"latency_model": {"requests": main.requests, "streams": main.streams}}
                            if self._auto is not None else {}),
                         "threads": int(main.compiled.get_property("INFERENCE_NUM_THREADS")) if device == "CPU" else None,
                         "inference_precision": str(main.compiled.get_property("INFERENCE_PRECISION_HINT")),
                         "performance_hint": hint.upper()}
        if self.precision == "int8" and device == "CPU":
            from sdk.cpu import int8_runtime_check

            self.settings["int8"] = int8_runtime_check(self.bundle.manifest.provenance, "openvino")
            if "warning" in self.settings["int8"]:
                log.warning("%s: %s", self.bundle.path.name, self.settings["int8"]["warning"])
        log.debug("openvino compiled model(s): %s", self.settings)

    def _compile(self, core: Any, device: str, hint: str, streams: bool = True) -> _Compiled:
        path = self.bundle.graph_path("model")
        cfg = self._config(hint, streams)
        try:
            compiled = core.compile_model(str(path), device, cfg)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with the plugin's message
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            why = (" (the INT8 graphs of --target cpu use onnxruntime-only ops: export with --target openvino)"
                   if path.suffix == ".onnx" and self.precision == "int8" else "")
            raise BackendUnavailableError(f"OpenVINO could not compile {path.name} for {device}: {msg}{why}") from e
        split = self.options.get("split_batches", hint == "throughput")
        return _Compiled(compiled, split=bool(split), explicit=bool(self.options.get("split_batches")))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(feeds.values())))
        if self._auto is None:
            return next(iter(self._paths.values())).run(feeds, batch)
        name = self._auto.pick(batch)
        return self._paths[name].run(feeds, batch, lambda seconds: self._settle(batch, name, seconds))

    def _settle(self, batch: int, name: str, seconds: float) -> None:
        """One timed call of `name` for the auto choice; the settings show a choice once it settles."""
        if self._auto is not None and self._auto.record(batch, name, seconds):
            self.settings["auto_choice"] = self._auto.chosen()

    def _close(self) -> None:
        for p in getattr(self, "_paths", {}).values():
            p.close()
        self.compiled = None


class _Compiled:
    """One compiled model and its infer requests (one per stream, handed out through a queue: thread-safe);
    `split` > 1: each batch is cut into that many parts, run in parallel on their own requests."""

    def __init__(self, compiled: Any, split: bool, explicit: bool) -> None:
        self.compiled = compiled
        self.requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._queue: queue.Queue[Any] = queue.Queue()
        for _ in range(self.requests):
            self._queue.put(compiled.create_infer_request())
        self.input_names = [p.get_any_name() for p in compiled.inputs]
        self.output_names = [p.get_any_name() for p in compiled.outputs]
        self.streams = int(compiled.get_property("NUM_STREAMS"))
        batch_first = all(p.get_partial_shape().rank.is_static and p.get_partial_shape().rank.get_length() >= 1
                          and p.get_partial_shape()[0].is_dynamic for p in [*compiled.inputs, *compiled.outputs])
        if explicit and (self.streams < 2 or self.requests < 2):
            raise ConfigError(f"split_batches needs >= 2 streams, the compiled model has {self.streams}: pass "
                              "hint='throughput' or streams=N")
        if split and not batch_first:
            raise ConfigError("split_batches needs a graph whose every input and output has a dynamic batch axis first")
        self.split = min(self.streams, self.requests) if split and self.streams > 1 and self.requests > 1 else 1
        self._split_lock = threading.Lock()  # one caller at a time takes several requests: no deadlock

    def run(self, feeds: dict[str, np.ndarray], batch: int, timer: Callable[[float], None] | None = None
            ) -> dict[str, np.ndarray]:
        """Outputs of one batch; `timer` gets the seconds of the inference itself (not the wait for a request)."""
        if self.split > 1 and batch > 1:
            return self._run_split(feeds, batch, min(self.split, batch), timer)
        req = self._queue.get()
        try:
            t0 = time.perf_counter()
            req.infer({n: np.ascontiguousarray(feeds[n]) for n in self.input_names})
            # the request's output tensors are reused by its next call: copy them out
            out = {n: np.array(req.get_tensor(n).data, copy=True) for n in self.output_names}
            if timer is not None:
                timer(time.perf_counter() - t0)
            return out
        finally:
            self._queue.put(req)

    def _run_split(self, feeds: dict[str, np.ndarray], batch: int, k: int,
                   timer: Callable[[float], None] | None = None) -> dict[str, np.ndarray]:
        """The batch cut into `k` contiguous parts, one infer request (stream) each, run in parallel and
        concatenated in order."""
        with self._split_lock:
            reqs = [self._queue.get() for _ in range(k)]
        t0 = time.perf_counter()
        try:
            bounds = np.linspace(0, batch, k + 1).astype(int)
            for r, lo, hi in zip(reqs, bounds[:-1], bounds[1:], strict=True):
                r.start_async({n: np.ascontiguousarray(feeds[n][lo:hi]) for n in self.input_names})
            for r in reqs:
                r.wait()
            out = {n: np.concatenate([np.array(r.get_tensor(n).data, copy=True) for r in reqs]) for n in self.output_names}
            if timer is not None:
                timer(time.perf_counter() - t0)
            return out
        finally:
            for r in reqs:
                self._queue.put(r)

    def close(self) -> None:
        self._queue = queue.Queue()
        self.compiled = None


class AutoChoice:
    """hint="auto": per batch size, the faster of the latency model and the split throughput model, by
    measurement. Batch 1 always takes the latency model (a split needs 2 posts). A larger batch size first
    alternates the two for AUTO_TRIALS timed calls each, then keeps the one with the lower best time (the
    minimum: the least disturbed by other work on a shared machine). Thread-safe; state is one entry per
    batch size seen (at most the Analyzer's max_batch_size)."""

    def __init__(self, trials: int = AUTO_TRIALS) -> None:
        self.trials = trials
        self._times: dict[int, dict[str, list[float]]] = {}
        self._chosen: dict[int, str] = {}
        self._lock = threading.Lock()

    def pick(self, batch: int) -> str:
        if batch < 2:
            return "latency"
        with self._lock:
            if batch in self._chosen:
                return self._chosen[batch]
            t = self._times.setdefault(batch, {"latency": [], "throughput": []})
            return "latency" if len(t["latency"]) <= len(t["throughput"]) else "throughput"

    def record(self, batch: int, name: str, seconds: float) -> bool:
        """One timed call; True when it settles `batch`'s choice."""
        if batch < 2:
            return False
        with self._lock:
            if batch in self._chosen:
                return False
            t = self._times[batch]
            t[name].append(seconds)
            if min(len(v) for v in t.values()) >= self.trials:
                self._chosen[batch] = min(t, key=lambda k: min(t[k]))
                return True
            return False

    def chosen(self) -> dict[int, str]:
        with self._lock:
            return dict(self._chosen)
