"""Precisions as a small registry: one module each, all with `NAME`, `DESCRIPTION` and
`convert(ctx: ConvertContext) -> dict` (the figures that go into the manifest)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from sdk.errors import ConfigError

_MODULES = {"fp32": "export.formats.fp32", "fp16": "export.formats.fp16", "int8": "export.formats.int8"}
PRECISIONS = tuple(_MODULES)
# cpu: onnxruntime CPU, static INT8 (QDQ, contrib fusions); cpu-dynamic: onnxruntime CPU, dynamic INT8;
# tensorrt: portable QDQ (standard ops only); openvino: an OpenVINO IR (export.openvino; INT8 by NNCF).
TARGETS = ("cpu", "tensorrt", "cpu-dynamic", "openvino")
# The ONNX opset each target exports at unless --opset says otherwise. At opset 23 the exporter writes every
# scaled_dot_product_attention as one standard `Attention` op, which onnxruntime's CPU kernel runs ~2.7x
# faster than the opset-18 decomposition (MatMul, Softmax, IsNaN/Where, Transpose), measured on one exported
# sdpa at ViT-B size [20, 12, 197, 64], 2 threads: 47.6 vs 127.9 ms. TensorRT keeps 18: its ONNX parser's
# opset-23 Attention support depends on the TensorRT release, and the decomposed form fuses there anyway.
# OpenVINO's ONNX frontend reads the opset-23 Attention op (as its own ScaledDotProductAttention).
TARGET_OPSET = {"cpu": 23, "cpu-dynamic": 23, "tensorrt": 18, "openvino": 23}


@dataclass
class ConvertContext:
    """What a precision module needs. `src` is the optimised FP32 graph, `dst` where to write."""

    src: Path
    dst: Path
    work_dir: Path
    target: str = "cpu"
    # INT8 only: a SydesCalibrationReader over the calibration posts, the method and the cache
    calib_reader: Any = None
    calib_method: str = "percentile"
    calib_cache: Any = None
    options: dict[str, Any] = field(default_factory=dict)


def get_precision(name: str) -> ModuleType:
    """The module implementing precision `name`; ConfigError lists the valid ones."""
    key = str(name).lower()
    if key not in _MODULES:
        raise ConfigError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    return importlib.import_module(_MODULES[key])


def check_target(name: str) -> str:
    key = str(name).lower()
    if key not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}")
    return key
