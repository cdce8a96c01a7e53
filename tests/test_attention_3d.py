"""export.attention: ONNX Attention fed 3-D projections instead of Reshape/Transpose-ed heads."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.attention import attention_3d  # noqa: E402

B, S, T, H, D = 2, 5, 7, 2, 8  # batch, query length, key length, heads, head size


def _graph(*, dynamic_heads: bool = False, mask: bool = False, perm=(0, 2, 1, 3), no_op_reshape: bool = False,
           scale: float | None = None):
    """x [B, S, H*D], y [B, T, H*D] -> Linear q / k / v -> the exporter's 4-D attention -> [B, S, H*D]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((H * D, H * D)).astype(np.float32), n)
             for n in ("wq", "wk", "wv")]
    heads = -1 if dynamic_heads else H
    inits += [numpy_helper.from_array(np.array([-1, S, H * D], np.int64), "shape_out"),
              numpy_helper.from_array(np.array([-1, H, S, D], np.int64), "shape_noop")]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["y", "wk"], ["k"]),
             helper.make_node("MatMul", ["y", "wv"], ["v"])]
    # reshapes to heads with a dynamic batch, as the exporter writes them: Concat(Shape(x)[0:1], [len, heads, D])
    for src, length, shape in (("x", S, "shape_q"), ("y", T, "shape_kv")):
        nodes += [helper.make_node("Shape", [src], [src + "_b"], start=0, end=1),
                  helper.make_node("Constant", [], [shape + "_tail"], value=numpy_helper.from_array(
                      np.array([length, heads, D], np.int64))),
                  helper.make_node("Concat", [src + "_b", shape + "_tail"], [shape], axis=0)]
    for name, shape in (("q", "shape_q"), ("k", "shape_kv"), ("v", "shape_kv")):
        nodes += [helper.make_node("Reshape", [name, shape], [name + "4"]),
                  helper.make_node("Transpose", [name + "4"], [name + "h"], perm=list(perm))]
    ins = ["qh", "kh", "vh"] + (["m"] if mask else [])
    attrs = {"scale": scale} if scale is not None else {}
    nodes.append(helper.make_node("Attention", ins, ["a"], **attrs))
    cur = "a"
    if no_op_reshape:
        nodes.append(helper.make_node("Reshape", ["a", "shape_noop"], ["a2"]))
        cur = "a2"
    nodes += [helper.make_node("Transpose", [cur], ["at"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["at", "shape_out"], ["out"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", S, H * D]),
              helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", T, H * D])]
    if mask:
        inputs.append(helper.make_tensor_value_info("m", TensorProto.BOOL, ["batch", 1, S, T]))
    out = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", S, H * D])]
    g = helper.make_graph(nodes, "attn", inputs, out, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])


def _feeds(mask: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    f = {"x": rng.standard_normal((B, S, H * D)).astype(np.float32),
         "y": rng.standard_normal((B, T, H * D)).astype(np.float32)}
    if mask:
        m = np.ones((B, 1, S, T), bool)
        m[1, ..., 4:] = False  # padding in the second row
        f["m"] = m
    return f


def _run(model, feeds) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize("kw", [{}, {"mask": True}, {"dynamic_heads": True}, {"no_op_reshape": True},
                                {"scale": 0.3}])
def test_rewrite_is_exact_and_drops_the_head_reshapes(kw):
    model = _graph(**kw)
    feeds = _feeds(kw.get("mask", False))
    before = _run(model, feeds)
    counts = attention_3d(model)
    assert counts["attention_3d"] == 1 and counts["attention_kept"] == 0
    ops = [n.op_type for n in model.graph.node]
    assert "Transpose" not in ops and "Reshape" not in ops and "Concat" not in ops  # shape arithmetic gone too
    (att,) = [n for n in model.graph.node if n.op_type == "Attention"]
    attrs = {a.name: helper.get_attribute_value(a) for a in att.attribute}
    assert attrs["q_num_heads"] == H and attrs["kv_num_heads"] == H
    assert list(att.input[:3]) == ["q", "k", "v"]
    assert {t.name for t in model.graph.initializer} == {"wq", "wk", "wv"}  # unused shapes pruned
    onnx.checker.check_model(model)
    after = _run(model, feeds)
    assert after.shape == (B, S, H * D)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_other_layouts_are_left_alone():
    model = _graph(perm=(0, 2, 3, 1))  # not the head split: the pattern must match exactly
    n_before = len(model.graph.node)
    counts = attention_3d(model)
    assert counts == {"attention_3d": 0, "attention_kept": 1, "nodes_removed": 0}
    assert len(model.graph.node) == n_before


def test_a_head_tensor_used_elsewhere_is_left_alone():
    model = _graph()
    model.graph.output.append(helper.make_tensor_value_info("qh", TensorProto.FLOAT, None))
    assert attention_3d(model)["attention_3d"] == 0


def test_a_graph_with_subgraphs_keeps_everything_else():
    """If / Loop bodies read outer names no node input lists: only the rewrite's own nodes go."""
    model = _graph()
    body = helper.make_graph([helper.make_node("Identity", ["shape_out"], ["sub_out"])], "body", [],
                             [helper.make_tensor_value_info("sub_out", TensorProto.INT64, None)])
    model.graph.node.extend([
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node("If", ["cond"], ["if_out"], then_branch=body, else_branch=body)])
    model.graph.output.append(helper.make_tensor_value_info("if_out", TensorProto.INT64, None))
    n_inits = len(model.graph.initializer)
    counts = attention_3d(model)
    assert counts["attention_3d"] == 1
    assert len(model.graph.initializer) == n_inits  # shape_out, read inside the If body, stays
    assert "Concat" in [n.op_type for n in model.graph.node]  # no sweep: dead shape arithmetic is left
