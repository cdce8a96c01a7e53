"""onnxruntime backend: TensorRT / CUDA execution providers on a GPU, the CPU provider elsewhere.

The session is tuned for inference (all graph optimisations, sequential execution, intra-op threads =
physical cores) and, on CUDA, runs through IO binding so outputs land straight in host memory.
onnxruntime is imported lazily (inside the methods), so `import sdk` stays light.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from sdk.backends.base import Backend, Device
from sdk.errors import BackendUnavailableError, MissingExtraError

log = logging.getLogger("sdk.backends.onnxruntime")

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def _ort():
    try:
        import onnxruntime
    except ModuleNotFoundError as e:
        raise MissingExtraError("onnxruntime", "cpu", "install the 'gpu' extra instead on a CUDA machine") from e
    return onnxruntime


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share a core's FPUs, so they are not counted)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        allowed = set(range(os.cpu_count() or 1))
    try:
        cores: set[tuple[str, str]] = set()
        phys = core = None
        cpu = -1
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and cpu in allowed and core is not None:
                    cores.add((phys or "0", core))
                    phys = core = None
        if core is not None and cpu in allowed:
            cores.add((phys or "0", core))
        if cores:
            return len(cores)
    except (OSError, ValueError):
        pass
    return max(1, len(allowed))


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    @classmethod
    def probe(cls, device: Device) -> str | None:
        try:
            avail = available_providers()
        except MissingExtraError as e:
            return str(e)
        if device.kind == "cuda" and CUDA not in avail and TRT not in avail:
            return ("this onnxruntime has no CUDA or TensorRT execution provider (available: "
                    f"{', '.join(avail)}); install onnxruntime-gpu (pip install \"sydes-edge[gpu]\")")
        return None

    # --- provider choice ------------------------------------------------------------------------------
    def _provider_list(self, avail: list[str]) -> list[Any]:
        if self.requested_providers:
            names = [p[0] if isinstance(p, (tuple, list)) else p for p in self.requested_providers]
            missing = [n for n in names if n not in avail]
            if missing:
                raise BackendUnavailableError(f"onnxruntime execution provider(s) {', '.join(missing)} not "
                                              f"available here (available: {', '.join(avail)})")
            if self.device.kind == "cpu" and any(n != CPU for n in names):
                raise BackendUnavailableError(f"device 'cpu' conflicts with providers {names}")
            return list(self.requested_providers)
        gpu_ok = CUDA in avail or TRT in avail
        if self.device.kind == "cpu" or (self.device.kind == "auto" and not gpu_ok):
            return [CPU]
        out: list[Any] = []
        idx = self.device.index
        if TRT in avail and self._use_ort_tensorrt():
            out.append((TRT, self._trt_options(idx)))
        if CUDA in avail:
            out.append((CUDA, {"device_id": idx, "cudnn_conv_algo_search": "EXHAUSTIVE"}))
        out.append(CPU)
        return out

    # --- onnxruntime's TensorRT execution provider -----------------------------------------------------
    def _ort_trt_cache(self) -> Path:
        """Where the TensorRT provider keeps its engines and timing cache: the bundle's engines/ort-trt when
        it can be written, else the user cache (sdk.cache.engine_cache_dir)."""
        from sdk.cache import engine_cache_dir

        cache = engine_cache_dir(self.bundle, "ort-trt")
        if cache is not None:
            return cache
        raise BackendUnavailableError("no writable folder for onnxruntime's TensorRT engine cache (the bundle's "
                                      "engines/ and the user cache are read-only); set SYDES_CACHE_DIR")

    def _use_ort_tensorrt(self) -> bool:
        """The TensorRT provider builds its engines when the session starts (minutes), so it is used only
        when asked for (ort_tensorrt=True) or when its cache already holds an engine: never silently."""
        choice = self.options.get("ort_tensorrt", "auto")
        if choice is False:
            return False
        if choice is True:
            log.warning("onnxruntime's TensorRT provider builds its engines on the first session start of this "
                        "bundle on this GPU (minutes); later starts reuse %s", self._ort_trt_cache())
            return True
        if any(self._ort_trt_cache().glob("*.engine")):
            return True
        log.info("onnxruntime's TensorRT provider skipped: no cached engine in %s (pass ort_tensorrt=True to "
                 "build one, minutes, once per GPU); using CUDA", self._ort_trt_cache())
        return False

    def ort_trt_profile(self):  # -> sdk.backends.trt_build.OptimizationProfile
        """The provider's explicit shape profile. Its max batch is rounded up to a power of two >= 32 so that
        callers with different batch sizes (16, 32) share one cached engine: onnxruntime rebuilds whenever
        the profile differs from the one saved beside the cached engine."""
        from sdk.backends.trt_build import OptimizationProfile

        tok = self.bundle.manifest.tokenizer
        return OptimizationProfile.for_bundle(max(32, 1 << (self.max_batch_size - 1).bit_length()),
                                              tok.max_length, tok.trim_padding)

    def _trt_options(self, idx: int) -> dict[str, Any]:
        prof = self.ort_trt_profile()
        shapes = {t.name: prof.shapes(t.shape) for t in self.bundle.manifest.graph.inputs}
        spec = [",".join(f"{n}:{'x'.join(map(str, s[k]))}" for n, s in shapes.items()) for k in range(3)]
        cache = str(self._ort_trt_cache())
        opts: dict[str, Any] = {
            "device_id": idx,
            # onnxruntime's provider builds weakly typed networks: these let it keep the graph's FP16 / Q/DQ.
            "trt_fp16_enable": self.precision in ("fp16", "int8"), "trt_int8_enable": self.precision == "int8",
            "trt_profile_min_shapes": spec[0], "trt_profile_opt_shapes": spec[1], "trt_profile_max_shapes": spec[2],
            "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
        }
        if self.options.get("workspace_bytes"):
            opts["trt_max_workspace_size"] = int(self.options["workspace_bytes"])
        return opts

    # --- lifecycle ------------------------------------------------------------------------------------
    def _load(self) -> None:
        ort = _ort()
        avail = list(ort.get_available_providers())
        providers = self._provider_list(avail)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = int(self.threads or physical_cores())
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # The text axis changes with nearly every batch (padding is trimmed to the longest caption) and
        # onnxruntime plans one memory pattern per input shape, kept for the session's life: measured on
        # the edge INT8 bundle, batch 16 over 6 text lengths, peak RSS 1,439 MB with patterns, 900 without.
        so.enable_mem_pattern = False
        if not self.options.get("spin", True):
            # Lets decode threads have the cores between model calls (streaming on small CPUs).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = str(self.bundle.graph_path("model"))
        try:
            self.session = ort.InferenceSession(path, sess_options=so, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise BackendUnavailableError(f"onnxruntime could not load {path} with {providers}: {e}") from e
        self.providers = list(self.session.get_providers())
        # onnxruntime silently drops a provider whose libraries fail to load (e.g. no cuDNN): refuse that.
        wanted = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
        if self.device.kind == "cuda" and not ({CUDA, TRT} & set(self.providers)):
            self.close_session()
            raise BackendUnavailableError(
                f"onnxruntime could not start {' / '.join(w for w in wanted if w != CPU)} on device "
                f"'{self.device}' (it started {self.providers}); check the CUDA / cuDNN libraries")
        if self.requested_providers and wanted[0] not in self.providers:
            self.close_session()
            raise BackendUnavailableError(f"onnxruntime could not start {wanted[0]} (started {self.providers})")
        on_gpu = bool({CUDA, TRT} & set(self.providers))
        self.resolved_device = f"cuda:{self.device.index}" if on_gpu else "cpu"
        self.io_binding = bool(self.options.get("io_binding", on_gpu))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.settings = {"threads": so.intra_op_num_threads}
        if self.precision == "int8" and not on_gpu:
            from sdk.cpu import int8_runtime_check

            self.settings["int8"] = int8_runtime_check(self.bundle.manifest.provenance, "onnxruntime")
            if "warning" in self.settings["int8"]:
                log.warning("%s: %s", self.bundle.path.name, self.settings["int8"]["warning"])
        log.debug("onnxruntime session: providers=%s threads=%d io_binding=%s",
                  self.providers, so.intra_op_num_threads, self.io_binding)

    def close_session(self) -> None:
        self.session = None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self.session
        if not self.io_binding:
            outs = sess.run(self.output_names, feeds)
            return dict(zip(self.output_names, outs, strict=True))
        # IO binding: inputs are copied once to the device, outputs come back into host memory without
        # onnxruntime's intermediate output allocations. One binding per call keeps this thread-safe.
        binding = sess.io_binding()
        for name in self.input_names:
            binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        sess.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))

    def _close(self) -> None:
        self.close_session()
