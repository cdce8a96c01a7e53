"""What this CPU offers INT8 inference, and whether its integer GEMM gives the numbers an INT8 graph means.

On x86 the fast INT8 GEMMs multiply u8 activations by s8 weights. With VNNI (AVX512-VNNI / AVX-VNNI) or
AMX each product is summed straight into 32 bits. Without it (plain AVX2 / AVX-512 CPUs: pre-Ice-Lake
Intel, AMD before Zen 4) the kernels use `vpmaddubsw`, which adds two u8 x s8 products into a *saturating*
16-bit lane: 2 x 255 x 127 = 64,770 does not fit, and the result is clipped. onnxruntime's and oneDNN's
documentation name the remedy: 7-bit weights (|w| <= 64, 2 x 255 x 64 = 32,640 fits), i.e.
`sydes export --int8-weight-bits 7`.

`int8_gemm_saturates()` does not guess from CPU flags: it runs onnxruntime's own integer kernel on a
134-byte MatMulInteger graph with the worst-case values and compares with the exact sum (microseconds,
once per process). `int8_isa()` names the CPU's INT8 dot-product instructions for reports.
Measured on a 2-core AMD EPYC with AVX2 and no VNNI: the probe returns 1,048,544 for the exact 2,072,640,
and the edge INT8 bundle's probabilities differ from what its Q/DQ graph means by up to 0.10 (the
quantisation itself moves them by 0.016).
"""

from __future__ import annotations

import base64
import functools
import platform
from typing import Any

# y[m, n] = a[m, k] @ b[k, n] as MatMulInteger (u8 x s8 -> i32), opset 13, both operands inputs (so no
# weight pre-packing decides the kernel); built with onnx.helper, see tests/test_cpu_int8.py.
PROBE_MODEL = base64.b64decode(
    "CAgSEHN5ZGVzLWludDgtcHJvYmU6agoYCgFhCgFiEgF5Ig1NYXRNdWxJbnRlZ2VyEglpbnQ4cHJvYmVaFQoBYRIQCg4IAhIKCgMSAW0KAxIB"
    "a1oVCgFiEhAKDggDEgoKAxIBawoDEgFuYhUKAXkSEAoOCAYSCgoDEgFtCgMSAW5CBAoAEA0=")
PROBE_SHAPE = (8, 64, 8)  # m, k, n: k spans whole SIMD lanes, m and n a full micro-tile
# weight bits -> the largest |s8| weight: 8-bit symmetric per-channel weights reach 127, 7-bit 64
# (onnxruntime's reduce_range range for INT8, [-64, 64]; NNCF's overflow fix halves the range the same way)
WEIGHT_LIMIT = {8: 127, 7: 64}
INT8_WEIGHT_BITS = tuple(WEIGHT_LIMIT)  # what `sydes export --int8-weight-bits` accepts
# /proc/cpuinfo flags -> INT8 dot-product instructions, best first
ISA_FLAGS = (("amx-int8", ("amx_int8",)), ("avx512-vnni", ("avx512_vnni",)), ("avx-vnni", ("avx_vnni",)),
             ("arm-i8mm", ("i8mm",)), ("arm-dotprod", ("asimddp",)))


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The first CPU's feature flags ("flags" on x86, "Features" on ARM) from /proc/cpuinfo text."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def int8_isa(flags: frozenset[str] | None = None) -> str:
    """The CPU's best INT8 dot-product instructions: one of ISA_FLAGS' names, or "none"."""
    have = cpu_flags() if flags is None else flags
    return next((name for name, need in ISA_FLAGS if all(f in have for f in need)), "none")


def probe_gemm(ort: Any, weight: int) -> tuple[int, int]:
    """(onnxruntime's MatMulInteger result, the exact one) for all-255 activations times all-`weight` weights."""
    import numpy as np

    m, k, n = PROBE_SHAPE
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(PROBE_MODEL, sess_options=so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"a": np.full((m, k), 255, np.uint8), "b": np.full((k, n), weight, np.int8)})[0]
    return int(y.min()), k * 255 * weight


@functools.lru_cache(maxsize=4)
def int8_gemm_saturates(weight_bits: int = 8) -> bool:
    """True when onnxruntime's u8 x s8 GEMM on this CPU clips sums of `weight_bits`-bit weights."""
    if weight_bits not in WEIGHT_LIMIT:
        raise ValueError(f"weight_bits {weight_bits} is not valid; valid: {', '.join(map(str, WEIGHT_LIMIT))}")
    from sdk.backends.onnxruntime import _ort

    got, exact = probe_gemm(_ort(), WEIGHT_LIMIT[weight_bits])
    return got != exact


def describe() -> dict[str, Any]:
    """For reports: machine, INT8 ISA, and whether 8-bit / 7-bit weights saturate here."""
    out: dict[str, Any] = {"machine": platform.machine(), "int8_isa": int8_isa()}
    try:
        out["saturates"] = {bits: int8_gemm_saturates(bits) for bits in sorted(WEIGHT_LIMIT, reverse=True)}
    except Exception as e:  # noqa: BLE001 - a report, not a decision: say why the probe did not run
        out["saturates"] = f"not probed: {e}"
    return out


def bundle_weight_bits(provenance: dict[str, Any]) -> int:
    """The INT8 weight bits a bundle was exported with (manifest provenance; bundles older than the option: 8)."""
    sch = (provenance.get("precision_details") or {}).get("scheme") or {}
    if sch.get("quantizer") == "nncf":
        return 7 if sch.get("overflow_fix") == "enable" else 8
    return int(sch.get("weight_bits", 8))


def int8_runtime_check(provenance: dict[str, Any], runtime: str) -> dict[str, Any]:
    """What an INT8 bundle meets on this CPU -> {"isa", "weight_bits", "saturates", "warning"?}.

    onnxruntime: the probe answers for its own kernels. OpenVINO (oneDNN) has the same 16-bit pairs on x86
    without VNNI; without onnxruntime's probe to run for it, the ISA decides ("likely")."""
    bits = bundle_weight_bits(provenance)
    isa = int8_isa()
    out: dict[str, Any] = {"isa": isa, "weight_bits": bits}
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    if runtime == "onnxruntime":
        out["saturates"] = int8_gemm_saturates(bits)
    else:
        out["saturates"] = "likely" if x86 and isa == "none" and bits == 8 else False
    if out["saturates"]:
        out["warning"] = (f"this CPU has no VNNI ({isa}): its INT8 GEMM clips sums of {bits}-bit weights, so this "
                          "bundle's answers drift from what it was verified to give; re-export it with "
                          "`sydes export ... --int8-weight-bits 7`")
    if runtime == "openvino" and x86 and isa == "none":
        out["warning"] = (out.get("warning", "") + ("; " if "warning" in out else "") +
                          "OpenVINO's INT8 kernels without VNNI are generic GEMMs: an FP32 bundle or an onnxruntime "
                          "INT8 bundle is faster on this CPU (README, CPU inference)")
    return out
