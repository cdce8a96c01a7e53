"""sdk.cpu: the INT8 ISA, the saturation probe, the 7-bit weight option from export to runtime and doctor."""

from __future__ import annotations

import numpy as np
import pytest

from sdk import cpu
from sdk.commands.doctor import Env, check_cpu_int8

ort = pytest.importorskip("onnxruntime")

X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm sve\n"


def test_probe_model_is_the_matmul_integer_it_claims() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto

    model = onnx.load_from_string(cpu.PROBE_MODEL)
    onnx.checker.check_model(model)
    (node,) = model.graph.node
    assert node.op_type == "MatMulInteger" and list(node.input) == ["a", "b"]
    types = [i.type.tensor_type.elem_type for i in model.graph.input]
    assert types == [TensorProto.UINT8, TensorProto.INT8]


def test_flags_and_isa() -> None:
    assert cpu.cpu_flags(X86) >= {"avx2", "fma"} and cpu.int8_isa(cpu.cpu_flags(X86)) == "none"
    assert cpu.int8_isa(cpu.cpu_flags(ARM)) == "arm-i8mm"
    assert cpu.int8_isa(frozenset({"avx2", "avx512_vnni", "amx_int8"})) == "amx-int8"  # best first
    assert cpu.int8_isa(frozenset({"avx_vnni"})) == "avx-vnni"
    assert cpu.cpu_flags("no flags here") == frozenset()


def test_probe_is_exact_or_the_16_bit_clip() -> None:
    """7-bit weights are exact on every CPU; 8-bit ones either exact (VNNI, ARM) or clipped per pair."""
    m, k, n = cpu.PROBE_SHAPE
    got, exact = cpu.probe_gemm(ort, 64)
    assert got == exact == k * 255 * 64
    got, exact = cpu.probe_gemm(ort, 127)
    assert exact == k * 255 * 127 and got in (exact, (k // 2) * 32767)
    assert cpu.int8_gemm_saturates(8) == (got != exact) and cpu.int8_gemm_saturates(7) is False
    with pytest.raises(ValueError, match="weight_bits 6 is not valid; valid: 8, 7"):
        cpu.int8_gemm_saturates(6)


def test_bundle_weight_bits_from_the_manifest() -> None:
    prov = lambda sch: {"precision_details": {"scheme": sch}}  # noqa: E731
    assert cpu.bundle_weight_bits(prov({"weight_bits": 7})) == 7
    assert cpu.bundle_weight_bits(prov({"mode": "static"})) == 8  # bundles from before the option
    assert cpu.bundle_weight_bits(prov({"quantizer": "nncf", "overflow_fix": "enable"})) == 7
    assert cpu.bundle_weight_bits(prov({"quantizer": "nncf", "overflow_fix": "default"})) == 8
    assert cpu.bundle_weight_bits({}) == 8


def test_runtime_check_warns_where_it_clips(monkeypatch) -> None:
    prov = {"precision_details": {"scheme": {"weight_bits": 8}}}
    monkeypatch.setattr(cpu, "int8_isa", lambda flags=None: "none")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu, "int8_gemm_saturates", lambda bits=8: bits == 8)
    rep = cpu.int8_runtime_check(prov, "onnxruntime")
    assert rep["saturates"] is True and "--int8-weight-bits 7" in rep["warning"]
    rep7 = cpu.int8_runtime_check({"precision_details": {"scheme": {"weight_bits": 7}}}, "onnxruntime")
    assert rep7 == {"isa": "none", "weight_bits": 7, "saturates": False}
    ov = cpu.int8_runtime_check({"precision_details": {"scheme": {"quantizer": "nncf"}}}, "openvino")
    assert ov["saturates"] == "likely" and "--int8-weight-bits 7" in ov["warning"] and "FP32" in ov["warning"]
    monkeypatch.setattr(cpu, "int8_isa", lambda flags=None: "avx512-vnni")
    assert "warning" not in cpu.int8_runtime_check(prov | {}, "openvino")


class _FakeOrt:
    """onnxruntime stand-in whose MatMulInteger clips pairs of products to 16 bits (or not)."""

    def __init__(self, clip: bool) -> None:
        self.clip = clip

    def SessionOptions(self):  # noqa: N802 - onnxruntime's name
        return type("SO", (), {})()

    def InferenceSession(self, model, sess_options=None, providers=None):  # noqa: N802
        clip = self.clip

        class Sess:
            def run(self, _, feeds):
                a, b = feeds["a"].astype(np.int64), feeds["b"].astype(np.int64)
                pairs = a.reshape(len(a), -1, 2)[:, :, :, None] * b.reshape(-1, 2, b.shape[1])[None]
                s = pairs.sum(axis=2)
                return [(np.clip(s, -32768, 32767) if clip else s).sum(axis=1).astype(np.int32)]

        return Sess()


def test_doctor_cpu_int8_check() -> None:
    env = Env(read={"/proc/cpuinfo": X86}.get)
    c = check_cpu_int8(env, _FakeOrt(clip=True))
    assert c.status == "warn" and "--int8-weight-bits 7" in c.detail and "1,048,544 for 2,072,640" in c.detail
    assert c.data["isa"] == "none" and c.data["probe"]["7"]["got"] == c.data["probe"]["7"]["exact"]
    ok = check_cpu_int8(Env(read={"/proc/cpuinfo": ARM}.get), _FakeOrt(clip=False))
    assert ok.status == "ok" and "arm-i8mm" in ok.detail
    broken = check_cpu_int8(env, type("Bad", (), {"SessionOptions": lambda self: 1 / 0})())
    assert broken.status == "warn" and "probe did not run" in broken.detail
