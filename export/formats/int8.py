"""INT8: quantisation of the MatMul / Gemm / Conv weights (and activations) of the optimised graph.

Per target:
- cpu (default): onnxruntime's transformer fusions first (BiasGelu / Gelu: contrib ops, so the file is
  for onnxruntime only), then static QDQ: activations QUInt8 (asymmetric) from calibrated ranges,
  weights QInt8 symmetric per output channel, MatMul outputs left in float. Fusing first matters: in a
  QDQ graph onnxruntime turns DQ -> MatMul -> Add into MatMulIntegerToFloat and its own Gelu fusion
  then no longer matches, so every GELU ran as Div / Erf / Add / Mul (measured on the edge preset,
  batch 16, 2 threads: unfused 1.29x FP32, fused 2.13x, in one run; see benchmarks/export_precision.py).
  On x86 with VNNI the fast integer GEMM is u8 activations x s8 weights (1,714 GOP/s vs 542 for
  u8 x u8 and 449 GFLOP/s FP32); asymmetric u8 also uses the full range for mostly positive activations.
- cpu-dynamic: the same fusions, then dynamic quantisation (weights QInt8 per output channel, each
  activation quantised to u8 at run time: DynamicQuantizeLinear + MatMulInteger, which onnxruntime
  runs as DynamicQuantizeMatMul). No ranges to calibrate (the calibration posts still feed the
  held-out agreement / macro-F1 report); fastest on onnxruntime CPU (edge preset, same run: 2.5x FP32).
- tensorrt: portable static QDQ (no contrib ops): activations QInt8 symmetric (zero point 0: what
  TensorRT's explicit quantisation accepts), weights QInt8 symmetric per output channel; the attention
  products are quantised too (TensorRT fuses INT8 attention on recent GPUs).
weight_bits 7 (`--int8-weight-bits 7`, onnxruntime's reduce_range) keeps the weights in [-64, 64], so the u8 x s8
kernels of x86 CPUs without VNNI, which sum pairs of products in saturating 16-bit lanes, stay exact (sdk.cpu).
LayerNorm, Softmax, GELU and the pooling stay in float: only the compute-heavy linear ops are quantised.
The graph is pre-processed with quant_pre_process(skip_symbolic_shape=True) first (symbolic shape
inference fails on the dynamic text length).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.formats import ConvertContext

log = logging.getLogger(__name__)

NAME = "int8"
DESCRIPTION = "INT8 MatMul/Gemm/Conv: static QDQ from calibrated ranges (cpu, tensorrt) or dynamic (cpu-dynamic)"
OP_TYPES = ("MatMul", "Gemm", "Conv")
# fused graph vs unfused on one calibration batch: the fusions are exact up to float rounding
FUSION_TOLERANCE = 1e-4


def scheme(target: str) -> dict[str, Any]:
    """Quantisation parameters for `target` (recorded in the manifest)."""
    if target == "tensorrt":
        return {"mode": "static", "activation_type": "QInt8", "weight_type": "QInt8",
                "activation_symmetric": True, "per_channel": True, "matmul_const_b_only": False,
                "float_matmul_outputs": False, "fuse_first": False, "weight_bits": 8}
    if target == "cpu-dynamic":
        return {"mode": "dynamic", "activation_type": "QUInt8", "weight_type": "QInt8",
                "activation_symmetric": False, "per_channel": True, "matmul_const_b_only": True,
                "float_matmul_outputs": True, "fuse_first": True, "weight_bits": 8}
    return {"mode": "static", "activation_type": "QUInt8", "weight_type": "QInt8", "activation_symmetric": False,
            "per_channel": True, "matmul_const_b_only": True, "float_matmul_outputs": True, "fuse_first": True,
            "weight_bits": 8}


def _fuse_epilogues(path: Path) -> dict[str, int]:
    """Fold each quantised MatMul's bias / per-channel scale into MatMulIntegerToFloat (export.qdq_fuse)."""
    import onnx

    from export.qdq_fuse import fuse_matmul_epilogues

    model = onnx.load(str(path))
    counts = fuse_matmul_epilogues(model)
    if counts["bias"]:
        onnx.save(model, str(path))
    return counts


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantisers log warnings meant for other workflows on the root logger: mute them here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _fuse(ctx: ConvertContext) -> tuple[Path, dict[str, int]]:
    """onnxruntime.transformers' fusions on ctx.src when they apply and keep the outputs; else ctx.src."""
    import numpy as np

    from calibration.report import run_graph
    from export.optimize import transformer_fusions

    fused_path = ctx.work_dir / "int8_fused.onnx"
    fused = transformer_fusions(ctx.src, fused_path)
    if not fused or not fused_path.is_file():
        return ctx.src, {}
    feeds = ctx.calib_reader.batches() if hasattr(ctx.calib_reader, "batches") else []
    feed = next(iter(feeds), None)
    if feed is not None:
        try:
            plain, fused_out = run_graph(ctx.src, [feed]), run_graph(fused_path, [feed])
            diff = max(float(np.max(np.abs(plain[k] - fused_out[k]))) for k in plain)
        except Exception as e:  # a fused graph that does not run is not used
            log.warning("fused graph failed to run (%s): quantising the unfused graph", e)
            return ctx.src, {}
        if diff > FUSION_TOLERANCE:
            log.warning("transformer fusions changed the outputs (max |dp| %.2e): quantising the unfused graph", diff)
            return ctx.src, {}
    return fused_path, fused


def convert(ctx: ConvertContext) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from calibration.methods import calibrate

    if ctx.calib_reader is None:
        raise ExportError("INT8 export needs calibration data (--calib DATA)")
    sch = {**scheme(ctx.target), **{k: v for k, v in ctx.options.items() if k in scheme("cpu")}}
    reduce_range = sch["weight_bits"] == 7  # weights in [-64, 64]: exact on x86 without VNNI (sdk.cpu)
    src, fusions = _fuse(ctx) if sch["fuse_first"] else (ctx.src, {})
    pre = ctx.work_dir / "int8_pre.onnx"
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception as e:
        raise ExportError(f"quant_pre_process failed: {type(e).__name__}: {e}") from e
    done = {"scheme": {**sch, "target": ctx.target, "format": "QDQ" if sch["mode"] == "static" else "MatMulInteger",
                       "op_types": list(OP_TYPES), "fusions": fusions}}
    if sch["mode"] == "dynamic":
        try:
            # Conv stays float: dynamic ConvInteger is slow on onnxruntime CPU (the patch embedding is
            # one Conv, a small share of the FLOPs)
            with _quiet_root_logger():
                quantize_dynamic(str(pre), str(ctx.dst), op_types_to_quantize=["MatMul", "Gemm"],
                                 per_channel=sch["per_channel"], reduce_range=reduce_range,
                                 weight_type=getattr(QuantType, sch["weight_type"]),
                                 extra_options={"MatMulConstBOnly": sch["matmul_const_b_only"]})
        except Exception as e:
            raise ExportError(f"quantize_dynamic failed: {type(e).__name__}: {e}") from e
        done["scheme"]["op_types"] = ["MatMul", "Gemm"]
        return done
    cal = calibrate(pre, ctx.calib_reader, ctx.calib_method, ctx.calib_cache, op_types=OP_TYPES)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cal.method]
    extra: dict[str, Any] = {"ActivationSymmetric": sch["activation_symmetric"], "WeightSymmetric": True,
                             "MatMulConstBOnly": sch["matmul_const_b_only"]}
    if sch["float_matmul_outputs"]:
        # no Q/DQ on MatMul outputs: onnxruntime then runs DQ -> MatMul as MatMulIntegerToFloat (u8 x s8
        # GEMM with a float result) instead of QLinearMatMul followed by a dequantise before every float
        # op (Add, LayerNorm, GELU). Measured on the edge preset, batch 16: 1.45x FP32 vs 1.08x. It leaves
        # the bias as a separate Add: export.qdq_fuse folds it (and DINOv2's LayerScale) in afterwards.
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
    try:
        with _quiet_root_logger():
            quantize_static(str(pre), str(ctx.dst), calibration_data_reader=None,
                            calibration_cache_path=str(cal.path), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(OP_TYPES), per_channel=sch["per_channel"],
                            reduce_range=reduce_range, activation_type=getattr(QuantType, sch["activation_type"]),
                            weight_type=getattr(QuantType, sch["weight_type"]), calibrate_method=method,
                            extra_options=extra)
    except Exception as e:
        raise ExportError(f"quantize_static failed: {type(e).__name__}: {e}") from e
    if sch["fuse_first"]:  # an onnxruntime-only graph already: its contrib op may fold the epilogues too
        done["scheme"]["epilogue_fusions"] = _fuse_epilogues(ctx.dst)
    return {**done, "calibration": {"method": cal.method, "samples": cal.samples, "cache_key": cal.key,
                                    "cache_hit": cal.hit, "seconds": round(cal.seconds, 2)}}
