"""export.qdq_fuse: a quantised Linear's bias and per-channel scale folded into MatMulIntegerToFloat."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.qdq_fuse import fuse_matmul_epilogues, unfuse_matmul_epilogues  # noqa: E402

K, N = 16, 8


def _qdq_model(seed: int = 0) -> onnx.ModelProto:
    """x [2, 5, K] -> Q/DQ -> MatMul(DQ(W)) -> Add(b) -> Mul(gamma) -> y; x -> Q/DQ -> MatMul -> z (no bias,
    read twice: left alone); and a MatMul whose Add reads a graph input (not a constant: left alone)."""
    rng = np.random.default_rng(seed)
    init = lambda a, name: numpy_helper.from_array(a, name)  # noqa: E731
    inits = [init(np.array(0.02, np.float32), "xs"), init(np.array(128, np.uint8), "xz"),
             init(rng.integers(-64, 65, (K, N)).astype(np.int8), "w"),  # 7-bit: exact on any CPU (sdk.cpu)
             init(rng.uniform(0.001, 0.01, N).astype(np.float32), "ws"), init(np.zeros(N, np.int8), "wz"),
             init(rng.standard_normal(N).astype(np.float32), "b"),
             init(rng.uniform(0.1, 2.0, N).astype(np.float32), "gamma")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["h"], name="lin"),
             helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Mul", ["hb", "gamma"], ["y"]),
             helper.make_node("MatMul", ["xd", "wd"], ["z0"], name="twice"),
             helper.make_node("Add", ["z0", "z0"], ["z"]),
             helper.make_node("MatMul", ["xd", "wd"], ["u0"], name="input_bias"),
             helper.make_node("Add", ["u0", "c"], ["u"])]
    f32 = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(nodes, "qdq", [f32("x", [2, 5, K]), f32("c", [N])],
                              [f32("y", [2, 5, N]), f32("z", [2, 5, N]), f32("u", [2, 5, N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict, simulate: bool = False) -> list[np.ndarray]:
    so = ort.SessionOptions()
    if simulate:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_bias_and_scale_fold_into_the_integer_matmul() -> None:
    model, feeds = _qdq_model(), {"x": np.random.default_rng(1).standard_normal((2, 5, K)).astype(np.float32),
                                  "c": np.ones(N, np.float32)}
    want = _run(model, feeds)
    fused = onnx.ModelProto.FromString(model.SerializeToString())
    assert fuse_matmul_epilogues(fused) == {"bias": 1, "scale": 1}
    onnx.checker.check_model(fused)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("MatMul") == 2 and "Mul" not in ops
    (mm,) = [n for n in fused.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert mm.domain == "com.microsoft" and mm.input[0] == "xq" and mm.input[1] == "w" and mm.output == ["y"]
    got = _run(fused, feeds)
    for w, g in zip(want, got, strict=True):
        assert g.shape == (2, 5, N)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)  # the same integers; float epilogue reordered
    # the inverse gives back a Q/DQ graph that onnxruntime can run in float arithmetic again
    assert unfuse_matmul_epilogues(fused) == 1
    assert "MatMulIntegerToFloat" not in [n.op_type for n in fused.graph.node]
    for w, g in zip(_run(model, feeds, simulate=True), _run(fused, feeds, simulate=True), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_nothing_to_fuse_leaves_the_graph_alone() -> None:
    model = _qdq_model()
    graph = model.graph
    keep = [n for n in graph.node if n.name != "lin" and n.output[0] not in ("hb", "y")]
    plain = helper.make_graph(keep, "plain", list(graph.input), [o for o in graph.output if o.name != "y"],
                              list(graph.initializer))
    m = helper.make_model(plain, opset_imports=[helper.make_opsetid("", 17)])
    before = m.SerializeToString()
    assert fuse_matmul_epilogues(m) == {"bias": 0, "scale": 0}
    assert m.SerializeToString() == before
    assert unfuse_matmul_epilogues(m) == 0
