"""`--target openvino`: the optimised FP32 ONNX graph -> an OpenVINO IR (model.xml + model.bin) at FP32 / FP16 /
INT8, the tiler still fused in (the IR is converted from the same one graph).

- fp32: `openvino.convert_model` of the graph, saved with FP32 weights;
- fp16: the same, weights compressed to FP16 (the CPU plugin computes in FP32 / BF16, iGPUs and NPUs in FP16);
- int8: NNCF post-training quantisation (`nncf.quantize`, TRANSFORMER model type) fed by the calibration
  posts of every target (calibration.sampling / calibration.reader: the same posts, the same reader). The
  quantised IR is cached under the cache root keyed by graph, calibration data and NNCF options: a second
  export of the same weights and data skips NNCF (its statistics pass is most of the export time).

QUANT_OPTIONS are the NNCF settings this project ships (see README "CPU inference" for what each measured);
`options` in the ConvertContext override them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.formats import ConvertContext

log = logging.getLogger(__name__)

# NNCF's defaults for a transformer, written out so that the manifest records what was used
QUANT_OPTIONS: dict[str, Any] = {"model_type": "transformer", "preset": "mixed", "target_device": "any",
                                 "fast_bias_correction": True, "smooth_quant_alpha": None, "ignored_types": (),
                                 "overflow_fix": "default"}
PRESETS = ("performance", "mixed")
# NNCF's fix for CPUs without VNNI (sdk.cpu): 7-bit weights everywhere ("enable", `--int8-weight-bits 7`), in the
# first layer only, nowhere, or NNCF's choice for the target device ("default": the first layer for CPU / any)
OVERFLOW_FIX = {"default": None, "enable": "ENABLE", "first_layer": "FIRST_LAYER", "disable": "DISABLE"}
TARGET_DEVICES = ("any", "cpu", "gpu", "npu")


def _openvino():
    try:
        import openvino
    except ModuleNotFoundError as e:
        raise ExportError("--target openvino needs OpenVINO: pip install \"sydes-edge[openvino]\"") from e
    return openvino


def ir_files(xml: Path) -> tuple[Path, Path]:
    return xml, xml.with_suffix(".bin")


def quant_options(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """QUANT_OPTIONS with `overrides` (only known keys; ConfigError-style ExportError names the valid ones)."""
    over = dict(overrides or {})
    bad = sorted(set(over) - set(QUANT_OPTIONS))
    if bad:
        raise ExportError(f"unknown OpenVINO quantisation option(s) {bad}; valid: {', '.join(QUANT_OPTIONS)}")
    opts = {**QUANT_OPTIONS, **over}
    if opts["preset"] not in PRESETS:
        raise ExportError(f"unknown NNCF preset {opts['preset']!r}; valid: {', '.join(PRESETS)}")
    if opts["target_device"] not in TARGET_DEVICES:
        raise ExportError(f"unknown NNCF target device {opts['target_device']!r}; valid: {', '.join(TARGET_DEVICES)}")
    if opts["overflow_fix"] not in OVERFLOW_FIX:
        raise ExportError(f"unknown NNCF overflow_fix {opts['overflow_fix']!r}; valid: {', '.join(OVERFLOW_FIX)}")
    opts["ignored_types"] = tuple(opts["ignored_types"])
    return opts


def _quantize(model: Any, feeds: list[dict[str, Any]], opts: dict[str, Any]) -> Any:
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    fix = OVERFLOW_FIX[opts["overflow_fix"]]
    extra: dict[str, Any] = {"overflow_fix": OverflowFix[fix]} if fix is not None else {}
    if opts["smooth_quant_alpha"] is not None:
        extra["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=float(opts["smooth_quant_alpha"]))
    advanced = AdvancedQuantizationParameters(**extra)
    ignored = nncf.IgnoredScope(types=list(opts["ignored_types"])) if opts["ignored_types"] else None
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    return nncf.quantize(
        model, nncf.Dataset(feeds), preset=preset[opts["preset"]], model_type=nncf.ModelType.TRANSFORMER,
        target_device=nncf.TargetDevice[opts["target_device"].upper()],
        subset_size=len(feeds), fast_bias_correction=bool(opts["fast_bias_correction"]),
        advanced_parameters=advanced, **({"ignored_scope": ignored} if ignored else {}))


def _cache_key(src: Path, ctx: ConvertContext, opts: dict[str, Any]) -> str:
    from sdk.bundle import sha256_file

    versions = {d: importlib.metadata.version(d) for d in ("openvino", "nncf")}
    blob = json.dumps({"graph": sha256_file(src), "data": ctx.calib_reader.fingerprint(), "options": opts,
                       "versions": versions}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def convert(ctx: ConvertContext, precision: str) -> dict[str, Any]:
    """ctx.src (ONNX) -> ctx.dst (.xml, with its .bin beside it). Returns the manifest's precision details."""
    ov = _openvino()
    if ctx.dst.suffix != ".xml":
        raise ExportError(f"an OpenVINO IR is written to a .xml file, got {ctx.dst.name}")
    try:
        model = ov.convert_model(str(ctx.src))
    except Exception as e:
        raise ExportError(f"openvino.convert_model failed on the optimised graph: {type(e).__name__}: {e}") from e
    info: dict[str, Any] = {"format": "openvino", "openvino": ov.__version__.split("-")[0],
                            "weights": "fp16" if precision == "fp16" else "fp32"}
    if precision != "int8":
        ov.save_model(model, str(ctx.dst), compress_to_fp16=precision == "fp16")
        return info
    if ctx.calib_reader is None:
        raise ExportError("INT8 export needs calibration data (--calib DATA)")
    try:
        import nncf  # noqa: F401
    except ModuleNotFoundError as e:
        raise ExportError("INT8 for --target openvino needs NNCF: pip install \"sydes-edge[openvino]\"") from e
    opts = quant_options(ctx.options.get("openvino_quant"))
    key = _cache_key(ctx.src, ctx, opts)
    cache = ctx.calib_cache.dir.parent / "openvino-int8" if ctx.calib_cache is not None else None
    hit = cache is not None and all(p.is_file() for p in ir_files(cache / f"{key}.xml"))
    if hit:
        for a, b in zip(ir_files(cache / f"{key}.xml"), ir_files(ctx.dst), strict=True):
            shutil.copyfile(a, b)
    else:
        try:
            quantized = _quantize(model, list(ctx.calib_reader.batches()), opts)
        except Exception as e:
            raise ExportError(f"nncf.quantize failed: {type(e).__name__}: {e}") from e
        ov.save_model(quantized, str(ctx.dst), compress_to_fp16=False)
        if cache is not None:
            _store(ctx.dst, cache / f"{key}.xml")
    info["scheme"] = {"quantizer": "nncf", "nncf": importlib.metadata.version("nncf"),
                      **{k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()}}
    info["calibration"] = {"method": "nncf", "samples": len(ctx.calib_reader.posts), "cache_key": key,
                           "cache_hit": hit}
    return info


def _store(xml: Path, dst_xml: Path) -> None:
    """Copy an IR into the cache atomically (a torn copy is never picked up: the .xml lands last)."""
    from sdk.atomic import atomic_write_bytes

    dst_xml.parent.mkdir(parents=True, exist_ok=True)
    src_xml, src_bin = ir_files(xml)
    atomic_write_bytes(dst_xml.with_suffix(".bin"), src_bin.read_bytes())
    atomic_write_bytes(dst_xml, src_xml.read_bytes())
