"""Fake `tensorrt` (10.x and 11.x shaped) and `cuda-python` modules that record every call made.

The 11.x fake has no weak-typing API at all (no BuilderFlag.FP16 / INT8 / BF16, no calibrators, no
precision-constraint flags, no EXPLICIT_BATCH): touching any of it raises AttributeError, as the real
TensorRT 11 does. Install with `install(monkeypatch, "11.4.0")`; `Calls` holds what the code did.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

NAMES_IN = {"global_pixels": ((-1, 224, 224, 3), "UINT8"), "canvas_pixels": ((-1, 448, 448, 3), "UINT8"),
            "input_ids": ((-1, -1), "INT64"), "attention_mask": ((-1, -1), "INT64")}


@dataclass
class Calls:
    network_flags: list[int] = field(default_factory=list)
    set_flags: list[Any] = field(default_factory=list)
    cleared_flags: list[Any] = field(default_factory=list)
    config_attrs: dict[str, Any] = field(default_factory=dict)
    pool_limits: list[tuple[Any, int]] = field(default_factory=list)
    shapes: dict[str, tuple] = field(default_factory=dict)
    parsed: list[str] = field(default_factory=list)
    timing_in: list[bytes] = field(default_factory=list)
    builds: int = 0
    deserialised: list[bytes] = field(default_factory=list)
    parse_ok: bool = True
    build_ok: bool = True


def make_trt(version: str, calls: Calls, outputs: dict[str, int] | None = None) -> types.ModuleType:
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING, VERBOSE, ERROR, INFO = 2, 4, 1, 3

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class DataType:
        def __init__(self, name: str) -> None:
            self.name = name

    if major == 10:
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
        trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", BF16="BF16", TF32="TF32",
                                                OBEY_PRECISION_CONSTRAINTS="OBEY", PREFER_PRECISION_CONSTRAINTS="PREFER")
        trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {})
    else:  # 11.x: strongly typed only
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        trt.BuilderFlag = types.SimpleNamespace(TF32="TF32", DEBUG="DEBUG")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    class IProgressMonitor:
        def __init__(self) -> None:
            self.base_init = True

    trt.IProgressMonitor = IProgressMonitor

    class Tensor:
        def __init__(self, name: str, shape: tuple) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self) -> None:
            self.inputs = [Tensor(n, s) for n, (s, _) in NAMES_IN.items()]
            self.num_inputs = len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class TimingCache:
        def serialize(self) -> bytes:
            return b"TIMING"

    class Config:
        def __init__(self) -> None:
            object.__setattr__(self, "_cache", None)

        def __setattr__(self, name: str, value: Any) -> None:  # int8_calibrator, progress_monitor, ...
            calls.config_attrs[name] = value
            object.__setattr__(self, name, value)

        def set_flag(self, flag: Any) -> None:
            calls.set_flags.append(flag)

        def clear_flag(self, flag: Any) -> None:
            calls.cleared_flags.append(flag)

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls.pool_limits.append((pool, size))

        def add_optimization_profile(self, p: Any) -> int:
            return 0

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls.timing_in.append(data)
            return TimingCache()

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            return True

        def get_timing_cache(self) -> TimingCache:
            return TimingCache()

    class Profile:
        def set_shape(self, name: str, lo: tuple, mid: tuple, hi: tuple) -> None:
            calls.shapes[name] = (tuple(lo), tuple(mid), tuple(hi))

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int = 0) -> Network:
            calls.network_flags.append(flags)
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, net: Network, cfg: Config) -> bytes | None:
            calls.builds += 1
            return b"ENGINE-" + version.encode() if calls.build_ok else None

    class OnnxParser:
        num_errors = 1

        def __init__(self, net: Network, logger: Logger) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            calls.parsed.append(path)
            return calls.parse_ok

        def get_error(self, i: int) -> str:
            return "unsupported op Foo"

    outs = outputs or {"probs_sentiment": 3}

    class Engine:
        def __init__(self) -> None:
            self.names = [*NAMES_IN, *outs]
            self.num_io_tensors = len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, n: str) -> str:
            return "INPUT" if n in NAMES_IN else "OUTPUT"

        def get_tensor_dtype(self, n: str) -> DataType:
            return DataType(NAMES_IN[n][1] if n in NAMES_IN else "FLOAT")

        def get_tensor_profile_shape(self, n: str, profile: int) -> tuple:
            return calls.shapes.get(n) or ((1, 2), (8, 16), (32, 16))

        def get_tensor_shape(self, n: str) -> tuple:
            return (-1, outs[n])

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            calls.deserialised.append(data)
            return Engine()

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


def make_cudart(gpu: str = "NVIDIA Fake GPU", cc: tuple[int, int] = (8, 7)) -> types.SimpleNamespace:
    props = types.SimpleNamespace(name=gpu.encode(), major=cc[0], minor=cc[1])
    return types.SimpleNamespace(cudaSetDevice=lambda i: (0,), cudaGetDeviceCount=lambda: (0, 1),
                                 cudaGetDeviceProperties=lambda i: (0, props))


def install(monkeypatch: Any, version: str = "10.3.0", gpu: str = "NVIDIA Fake GPU") -> Calls:
    """Put a fake tensorrt into sys.modules and a fake cudart into the backend; returns the call log."""
    import sdk.backends.tensorrt as T

    calls = Calls()
    monkeypatch.setitem(sys.modules, "tensorrt", make_trt(version, calls))
    cudart = make_cudart(gpu)
    monkeypatch.setattr(T, "_import_cudart", lambda: cudart)
    return calls
