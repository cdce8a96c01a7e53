"""Fold the float ops that follow a quantised MatMul into onnxruntime's MatMulIntegerToFloat.

onnxruntime runs `DQ(x_q) -> MatMul(., DQ(W_q))` of a QDQ graph as MatMulIntegerToFloat (an integer GEMM
with a float result), but it fuses the bias only in the dynamic-quantisation pattern (MatMulInteger ->
Cast -> Mul -> Add; onnxruntime's matmul_integer_to_float.cc): in a static QDQ graph every Linear's bias
stays a separate Add, one more pass over each [tokens, N] output. This pass writes the fused op itself:

    Q(x) -> DQ -> MatMul(., DQ(W)) -> Add(bias) [-> Mul(gamma)]
      =>  Q(x) -> MatMulIntegerToFloat(x_q, W_q, x_scale, W_scale * gamma, x_zp, W_zp, bias * gamma)

where `gamma` is a constant per-channel scale right after the bias (DINOv2's LayerScale): folded into the
weight scales, it costs nothing. The integer arithmetic is unchanged (the same kernel runs either way);
only the float epilogue is reordered. The result holds a contrib op, so it is for onnxruntime only, like
the cpu target's other fusions. Shapes: x_q [.., K] u8, W_q [K, N] s8 per output channel, bias and gamma [N].
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

MS_DOMAIN = "com.microsoft"


def _const_vector(inits: dict[str, Any], name: str, n: int) -> np.ndarray | None:
    """The float initializer `name` as a [n] vector (leading 1-dims allowed), or None."""
    from onnx import TensorProto, numpy_helper

    t = inits.get(name)
    if t is None or t.data_type != TensorProto.FLOAT:
        return None
    a = numpy_helper.to_array(t)
    if a.ndim < 1 or a.shape[-1] != n or any(d != 1 for d in a.shape[:-1]) or n < 2:
        return None
    return a.reshape(n)


def _other(node: Any, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def fuse_matmul_epilogues(model: Any) -> dict[str, int]:
    """Rewrite `model` (an onnx.ModelProto in QDQ form) in place; -> {"bias": n, "scale": m} fused."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in g.output}
    only_user = lambda name: (consumers[name][0] if len(consumers[name]) == 1  # noqa: E731
                              and name not in outputs else None)
    replace: dict[int, Any] = {}  # id(MatMul node) -> its fused node
    dead: set[int] = set()
    counts = {"bias": 0, "scale": 0}
    for mm in g.node:
        if mm.op_type != "MatMul" or mm.domain not in ("", "ai.onnx"):
            continue
        dqa, dqb = producer.get(mm.input[0]), producer.get(mm.input[1])
        if not (dqa and dqb and dqa.op_type == dqb.op_type == "DequantizeLinear" and dqb.input[0] in inits):
            continue
        w = inits[dqb.input[0]]
        axis = next((a.i for a in dqb.attribute if a.name == "axis"), 1)
        if len(w.dims) != 2 or axis not in (1, -1) or dqa.input[1] not in inits:
            continue  # per-output-channel weights [K, N] and a per-tensor activation scale only
        n_out = int(w.dims[1])
        add = only_user(mm.output[0])
        bias = None if add is None or add.op_type != "Add" else _const_vector(inits, _other(add, mm.output[0]), n_out)
        if bias is None:
            continue
        bias_name, scale_name, out, drop = _other(add, mm.output[0]), dqb.input[1], add.output[0], [add]
        mul = only_user(add.output[0])
        gamma = None if mul is None or mul.op_type != "Mul" else _const_vector(inits, _other(mul, add.output[0]), n_out)
        if gamma is not None:
            w_scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
            bias_name, scale_name = f"{mm.name}_fused_bias", f"{mm.name}_fused_scale"
            g.initializer.extend([numpy_helper.from_array((bias * gamma).astype(np.float32), bias_name),
                                  numpy_helper.from_array((w_scale * gamma).astype(np.float32), scale_name)])
            out, drop = mul.output[0], [add, mul]
            counts["scale"] += 1
        zp = lambda dq: dq.input[2] if len(dq.input) > 2 else ""  # noqa: E731
        replace[id(mm)] = helper.make_node(
            "MatMulIntegerToFloat", [dqa.input[0], dqb.input[0], dqa.input[1], scale_name, zp(dqa), zp(dqb),
                                     bias_name], [out], name=f"{mm.name}_fused", domain=MS_DOMAIN)
        dead.update(id(d) for d in drop)
        for x in (mm.output[0], *(d.output[0] for d in drop[:-1])):
            consumers[x] = []
        consumers[mm.input[0]].remove(mm)
        consumers[mm.input[1]].remove(mm)
        counts["bias"] += 1
    if not replace:
        return counts
    # the DequantizeLinear nodes no one reads any more (the fused op takes the quantised tensors)
    dead.update(id(n) for n in g.node if n.op_type == "DequantizeLinear" and not consumers[n.output[0]]
                and n.output[0] not in outputs)
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in dead]
    del g.node[:]
    g.node.extend(nodes)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return counts


def unfuse_matmul_epilogues(model: Any) -> int:
    """The inverse, for inspection: each fused MatMulIntegerToFloat back to DQ -> DQ -> MatMul -> Add (the
    folded scale stays in the weight scale), so that onnxruntime's `session.disable_quant_qdq` can run the
    graph's quantised values in float arithmetic again (benchmarks/int8_weight_bits.py). -> nodes undone."""
    from onnx import helper

    nodes, undone = [], 0
    for n in model.graph.node:
        if n.op_type != "MatMulIntegerToFloat" or n.domain != MS_DOMAIN or len(n.input) < 7 or not n.input[6]:
            nodes.append(n)
            continue
        x, w, xs, ws, xz, wz, bias = n.input[:7]
        tag, out = n.name or n.output[0], n.output[0]
        nodes += [helper.make_node("DequantizeLinear", [x, xs, *([xz] if xz else [])], [f"{tag}_x"], name=f"{tag}_dqx"),
                  helper.make_node("DequantizeLinear", [w, ws, *([wz] if wz else [])], [f"{tag}_w"], name=f"{tag}_dqw",
                                   axis=1),
                  helper.make_node("MatMul", [f"{tag}_x", f"{tag}_w"], [f"{tag}_y"], name=f"{tag}_matmul"),
                  helper.make_node("Add", [f"{tag}_y", bias], [out], name=f"{tag}_bias")]
        undone += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return undone
