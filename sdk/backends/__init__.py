"""Backend registry and selection: the fastest backend that really runs, never a silent fallback.

Order of preference for `backend="auto"`: native TensorRT -> onnxruntime (TensorRT / CUDA execution
providers, then CPU) -> OpenVINO, among the backends that can load the bundle's graph format on the device:
an ONNX bundle runs on onnxruntime on a CPU (its INT8 graphs use onnxruntime's own fused ops, and its FP32
graph measured within a few percent on both runtimes; README "CPU inference"), an OpenVINO bundle
(`sydes export --target openvino`) runs on OpenVINO. Each backend lives in its own module, imported only
when considered.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from sdk.backends.base import Backend, Device
from sdk.errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from sdk.bundle import Bundle

log = logging.getLogger("sdk.backends")

# name -> "module:Class", in order of preference.
BACKENDS: dict[str, str] = {
    "tensorrt": "sdk.backends.tensorrt:TensorRTBackend",
    "onnxruntime": "sdk.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "sdk.backends.openvino:OpenVINOBackend",
}

__all__ = ["BACKENDS", "Backend", "Device", "backend_class", "create_backend"]


def backend_class(name: str) -> type[Backend]:
    """The class registered under `name`; ConfigError lists the valid names."""
    if name not in BACKENDS:
        raise ConfigError(f"backend {name!r} is not known; valid: 'auto', {', '.join(repr(b) for b in BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def mismatch(cls: type[Backend], bundle: Bundle, dev: Device) -> str | None:
    """Why `cls` cannot take this bundle on this device (graph format, device kind), or None. No imports."""
    fmt = bundle.graph_format
    if fmt not in cls.graph_formats:
        return (f"it loads {'/'.join(cls.graph_formats)} graphs and this bundle holds a {fmt} graph "
                f"(exported with --target {bundle.manifest.provenance.get('target', '?')})")
    if dev.kind not in cls.devices:
        return f"it runs on {', '.join(repr(d) for d in cls.devices)}, not on {str(dev)!r}"
    return None


def create_backend(bundle: Bundle, device: str | Device = "auto", backend: str = "auto",
                   **kwargs: Any) -> Backend:
    """Pick, build and load a backend. Explicit choices that cannot run raise BackendUnavailableError."""
    dev = Device.parse(device)
    if not isinstance(backend, str):
        raise ConfigError(f"backend must be a string, got {type(backend).__name__}")
    if backend != "auto":
        cls = backend_class(backend)
        reason = mismatch(cls, bundle, dev) or cls.probe(dev)
        if reason:
            raise BackendUnavailableError(f"backend {backend!r} cannot run on device '{dev}': {reason}")
        inst = cls(bundle, dev, **kwargs)
        inst.load()
        return inst
    # auto: explicit providers only make sense for onnxruntime.
    names = ["onnxruntime"] if kwargs.get("providers") else list(BACKENDS)
    reasons = []
    for name in names:
        cls = backend_class(name)
        reason = mismatch(cls, bundle, dev) or cls.probe(dev)
        if reason:
            log.debug("backend %s skipped: %s", name, reason)
            reasons.append(f"{name}: {reason}")
            continue
        opts = kwargs
        if name == "tensorrt" and "build" not in kwargs:
            # auto never starts a minutes-long engine build: it uses an engine that exists, or moves on
            # with a log line saying how to build one (EngineNotBuiltError's message).
            opts = {**kwargs, "build": False}
        inst = cls(bundle, dev, **opts)
        try:
            inst.load()
        except BackendUnavailableError as e:
            # backend="auto" lets another backend that honours the same device take over, loudly.
            log.warning("backend %s could not start (%s); trying the next one", name, e)
            reasons.append(f"{name}: {e}")
            continue
        return inst
    raise BackendUnavailableError(f"no backend can run on device '{dev}': " + "; ".join(reasons))
