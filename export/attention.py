"""Graph pass: ONNX `Attention` (opset 23) written out as MatMul -> mask -> Softmax -> MatMul.

torch.onnx exports every `F.scaled_dot_product_attention` (ours, HF's DINOv2 and BERT) as one opset-23
`Attention` node. onnxruntime's CPU kernel for it runs in float32 only, and measured slower than the
same maths as plain ops (one DINOv2 layer, 80 views x 6 heads x 257 tokens, 2 threads, medians of 7):
Attention 4-D 158 ms, Attention with 3-D inputs 218 ms, com.microsoft.MultiHeadAttention 182 ms,
MatMul / Softmax / MatMul 125 ms. Written out, the two products are ordinary MatMuls, so INT8 export
can quantise them too (export.formats.int8, `attention="matmul"`); the Attention op cannot be.

Only the plain form is rewritten: 3 or 4 inputs (no past key / value), one output, no causal flag, no
softcap, the default output mode, 4-D Q/K/V (3-D inputs need the head count, left alone). The scale is
the node's `scale` attribute, else 1/sqrt(head size) read from Q's shape at run time. A boolean mask
becomes Where(mask, scores, -inf) (ONNX's semantics for False), a float mask is added. The caller verifies
the rewritten graph's outputs against the original (export verifies every graph it writes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rewritable(node: Any, attrs: dict[str, Any]) -> bool:
    return (node.op_type == "Attention" and node.domain in ("", "ai.onnx") and len(node.output) == 1
            and 3 <= len(node.input) <= 4 and not attrs.get("is_causal", 0) and not attrs.get("softcap", 0.0)
            and not attrs.get("qk_matmul_output_mode", 0) and "q_num_heads" not in attrs)


def decompose_attention(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Rewrite `src` into `dst`; returns {"attention_decomposed": n, "attention_kept": kept}."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    typed = onnx.shape_inference.infer_shapes(model).graph  # element types of the masks
    elem_type = {v.name: v.type.tensor_type.elem_type for v in (*typed.value_info, *typed.input, *typed.output)}
    extra_inits: list[Any] = []
    out_nodes: list[Any] = []
    done = kept = 0
    neg_inf = "sydes_attention_neg_inf"
    for node in g.node:
        attrs = _attrs(node)
        if node.op_type != "Attention":
            out_nodes.append(node)
            continue
        if not _rewritable(node, attrs):
            kept += 1
            out_nodes.append(node)
            continue
        q, k, v = node.input[:3]
        mask = node.input[3] if len(node.input) == 4 and node.input[3] else None
        if mask is not None and elem_type.get(mask, TensorProto.UNDEFINED) == TensorProto.UNDEFINED:
            kept += 1  # a mask of unknown type: Where or Add cannot be chosen
            out_nodes.append(node)
            continue
        p = f"{node.name or node.output[0]}/sydes"
        new: list[Any] = [helper.make_node("Transpose", [k], [f"{p}/kT"], perm=[0, 1, 3, 2], name=f"{p}/kT")]
        if "scale" in attrs:
            sc = f"{p}/scale"
            extra_inits.append(numpy_helper.from_array(np.array(attrs["scale"], dtype=np.float32), sc))
        else:  # 1/sqrt(head size) from Q's last dim, as the op's default
            sc = f"{p}/scale"
            new += [helper.make_node("Shape", [q], [f"{p}/hd_i"], start=-1, name=f"{p}/hd_i"),
                    helper.make_node("Cast", [f"{p}/hd_i"], [f"{p}/hd"], to=TensorProto.FLOAT, name=f"{p}/hd"),
                    helper.make_node("Sqrt", [f"{p}/hd"], [f"{p}/sqrt"], name=f"{p}/sqrt"),
                    helper.make_node("Reciprocal", [f"{p}/sqrt"], [sc], name=f"{p}/rsqrt")]
        new += [helper.make_node("Mul", [q, sc], [f"{p}/qs"], name=f"{p}/qs"),
                helper.make_node("MatMul", [f"{p}/qs", f"{p}/kT"], [f"{p}/scores"], name=f"{p}/qk")]
        scores = f"{p}/scores"
        if mask is not None:
            if elem_type.get(mask) == TensorProto.BOOL:
                if not any(i.name == neg_inf for i in extra_inits):
                    extra_inits.append(numpy_helper.from_array(np.array(-np.inf, dtype=np.float32), neg_inf))
                new.append(helper.make_node("Where", [mask, scores, neg_inf], [f"{p}/masked"], name=f"{p}/mask"))
            else:
                new.append(helper.make_node("Add", [scores, mask], [f"{p}/masked"], name=f"{p}/mask"))
            scores = f"{p}/masked"
        new += [helper.make_node("Softmax", [scores], [f"{p}/probs"], axis=-1, name=f"{p}/softmax"),
                helper.make_node("MatMul", [f"{p}/probs", v], [node.output[0]], name=f"{p}/pv")]
        out_nodes.extend(new)
        done += 1
    if done:
        del g.node[:]
        g.node.extend(out_nodes)
        g.initializer.extend(extra_inits)
    onnx.save(model, str(dst))
    return {"attention_decomposed": done, "attention_kept": kept}
