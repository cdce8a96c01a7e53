"""`sydes export`'s options: the typed ExportOptions, their up-front check, and what each converter receives."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from export.formats import TARGET_OPSET, check_target, get_precision
from sdk.cpu import INT8_WEIGHT_BITS
from sdk.errors import BackendUnavailableError, ConfigError

FORMATS = ("onnx", "tensorrt")
FP32_TOLERANCE = 1e-4
# INT8 weight bits when --int8-weight-bits is not given. The onnxruntime CPU targets get 7: their bundles
# run on whatever x86 CPU a user has, and without VNNI 8-bit weights are clipped (sdk.cpu) while 7-bit ones
# stay exact; on two trained checkpoints 7 bits cost nothing measurable against exact 8-bit arithmetic
# (README, "CPUs without VNNI"), and the integer kernels are the same, so VNNI CPUs lose no speed.
# TensorRT (GPU kernels, no 16-bit lanes) and OpenVINO (NNCF's own overflow-fix choice) keep 8.
DEFAULT_WEIGHT_BITS = {"cpu": 7, "cpu-dynamic": 7}


@dataclass
class ExportOptions:
    precision: str = "fp32"
    target: str = "cpu"            # cpu | tensorrt: picks the INT8 scheme and whether contrib fusions apply
    format: str = "onnx"           # onnx | tensorrt (also build an engine on this machine's GPU)
    opset: int | None = None       # None: the target's opset (export.formats.TARGET_OPSET)
    calib: str | None = None       # data for calibration / the held-out report ("generated": synthetic)
    calib_split: str = "train"
    calib_samples: int = 256
    calib_method: str = "percentile"
    calib_seed: int = 0
    eval_samples: int = 128        # held-out posts for the precision report (0: skip)
    cache_dir: str | None = None   # cache root: calibration/ ranges and graphs/ raw exports
                                   # (default $SYDES_CACHE_DIR or ~/.cache/sydes)
    graph_cache: bool = True       # reuse the raw torch export of identical weights + opset
    overwrite: bool = False
    tolerance: float = FP32_TOLERANCE
    name: str | None = None
    fusions: bool = False          # onnxruntime-only contrib fusions (cpu target; not portable)
    attention_3d: bool = True      # onnxruntime targets: Attention on 3-D inputs (export.attention); False: 4-D
    check_analyzer: bool = True
    openvino_quant: dict[str, Any] | None = None  # --target openvino INT8: overrides of export.openvino.QUANT_OPTIONS
    int8_weight_bits: int | None = None  # 7: weights in [-64, 64], exact on x86 without VNNI (sdk.cpu);
                                         # None: the target's (DEFAULT_WEIGHT_BITS, else 8)
    max_batch: int = 32            # TensorRT profile: batch 1..max_batch (--format tensorrt)
    workspace_mb: int | None = None  # TensorRT workspace pool limit in MiB (None: TensorRT's default)
    progress: bool = True          # a tqdm line naming the running stage


def check_options(opts: ExportOptions) -> ExportOptions:
    """Validate options up front (before any heavy work); ConfigError lists the valid values."""
    get_precision(opts.precision)
    opts.precision = opts.precision.lower()
    opts.target = check_target(opts.target)
    if opts.format not in FORMATS:
        raise ConfigError(f"unknown format {opts.format!r}; valid: {', '.join(FORMATS)}")
    from calibration.methods import check_method

    opts.calib_method = check_method(opts.calib_method)
    if opts.calib_samples <= 0:
        raise ConfigError(f"--calib-samples must be positive, got {opts.calib_samples}")
    if opts.opset is None:
        opts.opset = TARGET_OPSET[opts.target]
    if not 13 <= opts.opset <= 23:
        raise ConfigError(f"--opset {opts.opset} is outside the supported range 13..23 (default for target "
                          f"{opts.target!r}: {TARGET_OPSET[opts.target]})")
    if opts.precision == "int8" and not opts.calib:
        raise ConfigError("INT8 export needs calibration data: --calib DATA (an MSED folder, a JSONL/CSV "
                          "of posts, or a folder of images; 'generated' uses synthetic posts)")
    if opts.int8_weight_bits is None:
        opts.int8_weight_bits = DEFAULT_WEIGHT_BITS.get(opts.target, 8) if opts.precision == "int8" else 8
    if opts.int8_weight_bits not in INT8_WEIGHT_BITS or isinstance(opts.int8_weight_bits, bool):
        raise ConfigError(f"--int8-weight-bits {opts.int8_weight_bits!r} is not valid; valid: "
                          f"{', '.join(map(str, INT8_WEIGHT_BITS))}")
    if opts.int8_weight_bits != 8 and opts.precision != "int8":
        raise ConfigError(f"--int8-weight-bits applies to --precision int8, not {opts.precision}")
    fix = (opts.openvino_quant or {}).get("overflow_fix", "enable")
    if opts.int8_weight_bits == 7 and opts.target == "openvino" and fix != "enable":
        raise ConfigError(f"--int8-weight-bits 7 is NNCF's overflow_fix 'enable'; openvino_quant asks for {fix!r}")
    if opts.target == "openvino":
        if opts.format != "onnx":
            raise ConfigError("--target openvino writes an OpenVINO IR bundle: --format tensorrt does not apply")
        if importlib.util.find_spec("openvino") is None:
            raise ConfigError("--target openvino needs OpenVINO: pip install \"sydes-edge[openvino]\"")
        if opts.precision == "int8" and importlib.util.find_spec("nncf") is None:
            raise ConfigError("INT8 for --target openvino needs NNCF: pip install \"sydes-edge[openvino]\"")
    if not isinstance(opts.max_batch, int) or isinstance(opts.max_batch, bool) or opts.max_batch < 1:
        raise ConfigError(f"--max-batch must be a positive integer, got {opts.max_batch!r}")
    if opts.workspace_mb is not None and (not isinstance(opts.workspace_mb, int) or opts.workspace_mb < 1):
        raise ConfigError(f"--workspace must be a positive number of MiB, got {opts.workspace_mb!r}")
    if opts.format == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailableError("--format tensorrt needs TensorRT 10 or 11 on this machine (`pip install "
                                      "tensorrt`, or the one JetPack ships); export an ONNX bundle here "
                                      "and build the engine on the device")
    return opts


def convert_options(opts: ExportOptions, ir: bool) -> dict[str, Any]:
    """ConvertContext.options: 7-bit weights are onnxruntime's reduce_range and NNCF's overflow fix."""
    if not ir:
        return {"weight_bits": opts.int8_weight_bits}
    quant = dict(opts.openvino_quant or {})
    if opts.int8_weight_bits == 7:
        quant["overflow_fix"] = "enable"  # check_options refused any other choice
    return {"openvino_quant": quant or None}
