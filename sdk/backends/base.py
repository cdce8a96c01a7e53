"""The backend interface: an explicit lifecycle `load()` -> `run(feeds)` ... -> `close()`.

A backend runs the bundle's graph: feeds are numpy arrays named as the manifest's graph inputs
(uint8 global_pixels [B,224,224,3], canvas_pixels [B,448,448,3], int64 input_ids / attention_mask [B,L]),
outputs are float32 `probs_<task>` [B,C]. `run` must be safe to call from several threads at once.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sdk.errors import ConfigError, SydesError

if TYPE_CHECKING:  # pragma: no cover
    from sdk.bundle import Bundle

_DEVICE = re.compile(r"^(auto|cpu|cuda|gpu|npu)(?::(\d+))?$")
INDEXED = ("cuda", "gpu")  # kinds that take ":N"


@dataclass(frozen=True)
class Device:
    """A parsed device string: kind "auto" | "cpu" | "cuda" | "gpu" | "npu", index for "cuda:N" / "gpu:N".

    "cuda" is an NVIDIA GPU (onnxruntime, TensorRT); "gpu" and "npu" are OpenVINO's devices (Intel iGPU /
    dGPU, the NPU of current laptops)."""

    kind: str
    index: int = 0

    @classmethod
    def parse(cls, spec: str | Device) -> Device:
        if isinstance(spec, Device):
            return spec
        if not isinstance(spec, str):
            raise ConfigError(f"device must be a string like 'auto', 'cpu', 'cuda' or 'cuda:1', got {spec!r}")
        m = _DEVICE.match(spec.strip().lower())
        if not m or (m.group(2) is not None and m.group(1) not in INDEXED):
            raise ConfigError(f"device {spec!r} is not valid; valid: 'auto', 'cpu', 'cuda', 'cuda:N', "
                              "'gpu', 'gpu:N', 'npu' (gpu / npu: OpenVINO)")
        return cls(m.group(1), int(m.group(2) or 0))

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}" if self.kind in INDEXED else self.kind


class Backend(ABC):
    """Base class: subclasses implement `probe`, `_load`, `_run`, `_close` and fill `providers`."""

    name: ClassVar[str] = "base"
    devices: ClassVar[tuple[str, ...]] = ("auto", "cpu", "cuda")  # Device kinds it can run on
    graph_formats: ClassVar[tuple[str, ...]] = ("onnx",)  # bundle graph formats it can load

    def __init__(self, bundle: Bundle, device: Device, *, providers: list[Any] | None = None,
                 threads: int | None = None, max_batch_size: int = 32, **options: Any) -> None:
        self.bundle = bundle
        self.device = device
        self.requested_providers = providers
        self.threads = threads
        self.max_batch_size = max_batch_size
        self.options = options
        self.providers: list[str] = []  # what really runs, filled by load()
        self.resolved_device: str = str(device)
        self.state = "new"
        self._lock = threading.Lock()

    @classmethod
    @abstractmethod
    def probe(cls, device: Device) -> str | None:
        """Cheaply check (no model load) whether this backend can run on `device`.

        Returns None when it can, else a sentence saying why not (and what to install).
        """

    @property
    def precision(self) -> str:
        return self.bundle.precision

    def load(self) -> None:
        with self._lock:
            if self.state == "loaded":
                return
            if self.state == "closed":
                raise SydesError(f"{self.name} backend was closed; create a new one")
            self._load()
            self.state = "loaded"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.state != "loaded":
            raise SydesError(f"{self.name} backend is {self.state}: call load() before run()")
        return self._run(feeds)

    def close(self) -> None:
        with self._lock:
            if self.state == "loaded":
                self._close()
            self.state = "closed"

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Backend:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
