"""Graph pass: feed ONNX `Attention` (opset 23) 3-D tensors instead of Reshape/Transpose-ed 4-D heads.

torch's exporter writes every `scaled_dot_product_attention` as

    x_q, x_k, x_v [B, S, H*d] -> Reshape [B, S, H, d] -> Transpose (0,2,1,3) -> Attention (4-D, [B, H, S, d])
    -> (Reshape [B, H, S, d], a no-op some models add) -> Transpose (0,2,1,3) -> Reshape [B, S, H*d]

The op also takes 3-D inputs with `q_num_heads` / `kv_num_heads`, and then returns [B, S, H*d] itself: six
Transposes and up to five Reshapes (plus the shape arithmetic that feeds them) go per attention, and the runtime
lays the heads out inside its own kernel. Same math: scale, mask and softmax are the op's, unchanged (the
default scale 1/sqrt(d) is the same for both layouts, and an explicit one is kept). Verified by the export
(parity against the unrewritten graph) like every other pass; an attention that does not match the pattern
exactly is left as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

PERM = [0, 2, 1, 3]


class _Graph:
    """Producer / consumer maps and constant lookup over one onnx GraphProto."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}
        self._init = {t.name: t for t in graph.initializer}
        self._np = numpy_helper

    def const(self, name: str) -> list[int] | None:
        """The int values of a 1-D initializer / Constant / Concat of those (None where one is dynamic:
        such entries come back as None inside the list instead)."""
        if name in self._init:
            return [int(v) for v in self._np.to_array(self._init[name]).reshape(-1)]
        n = self.producer.get(name)
        if n is None:
            return None
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return [int(v) for v in self._np.to_array(a.t).reshape(-1)]
            return None
        if n.op_type == "Concat":
            out: list[Any] = []
            for i in n.input:
                part = self.const(i)
                out.extend(part if part is not None else [None])  # a dynamic piece: one unknown entry
            return out
        return None

    def only_consumer(self, name: str) -> Any | None:
        c = self.consumers.get(name, [])
        return c[0] if len(c) == 1 and name not in self.outputs else None


def _perm(node: Any) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def _split_heads(g: _Graph, name: str) -> tuple[str, int | None, int] | None:
    """`name` = Transpose(0,2,1,3)(Reshape(x, [B, S, H|-1, d])) used by the attention alone -> (x, H or None, d)."""
    t = g.producer.get(name)
    if t is None or t.op_type != "Transpose" or _perm(t) != PERM or g.only_consumer(name) is None:
        return None
    r = g.producer.get(t.input[0])
    if r is None or r.op_type != "Reshape" or g.only_consumer(r.output[0]) is not t:
        return None
    shape = g.const(r.input[1])
    if shape is None or len(shape) != 4 or not isinstance(shape[3], int) or shape[3] <= 0:
        return None
    heads = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else None
    return r.input[0], heads, shape[3]


def _merge_heads(g: _Graph, name: str) -> tuple[list[Any], str] | None:
    """The chain after a 4-D attention output back to [B, S, H*d] -> (its nodes, the final output name)."""
    chain, cur = [], name
    n = g.only_consumer(cur)
    if n is not None and n.op_type == "Reshape":  # a 4-D no-op reshape [B, H, S, d] some exports add
        shape = g.const(n.input[1])
        if shape is None or len(shape) != 4:
            return None
        chain.append(n)
        cur = n.output[0]
        n = g.only_consumer(cur)
    if n is None or n.op_type != "Transpose" or _perm(n) != PERM:
        return None
    chain.append(n)
    r = g.only_consumer(n.output[0])
    if r is None or r.op_type != "Reshape":
        return None
    shape = g.const(r.input[1])
    if shape is None or len(shape) != 3:
        return None
    chain.append(r)
    return chain, r.output[0]


def _hidden_sizes(model: Any) -> dict[str, int]:
    """Last-dimension sizes of the graph's value infos (from onnx shape inference), where static."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    out: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[-1].HasField("dim_value"):
            out[vi.name] = dims[-1].dim_value
    return out


def _prune(graph: Any, dead: Iterable[Any]) -> int:
    """Remove `dead` nodes, then every node left with no consumer and no graph output; returns how many went."""
    drop = {id(n) for n in dead}
    keep = [n for n in graph.node if id(n) not in drop]
    removed = len(graph.node) - len(keep)
    outputs = {o.name for o in graph.output}
    # If / Loop bodies read outer names that no node input lists: there, sweep nothing beyond the rewrite's nodes
    sweep = not any(a.g.node or a.graphs for n in keep for a in n.attribute)
    while sweep:
        used = {i for n in keep for i in n.input} | outputs
        alive = [n for n in keep if any(o in used for o in n.output)]
        if len(alive) == len(keep):
            break
        removed += len(keep) - len(alive)
        keep = alive
    del graph.node[:]
    graph.node.extend(keep)
    if sweep:  # initializers only the removed shape arithmetic read
        used = {i for n in keep for i in n.input} | outputs
        inits = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(inits)
    return removed


def attention_3d(model: Any) -> dict[str, int]:
    """Rewrite `model` (onnx ModelProto, in place) as the module docstring says; returns
    {"attention_3d": rewritten, "attention_kept": left as they were, "nodes_removed": n}."""
    import onnx

    g = _Graph(model.graph)
    sizes: dict[str, int] | None = None
    dead: list[Any] = []
    rewritten = kept = 0
    for node in [n for n in model.graph.node if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]:
        heads_in = [_split_heads(g, i) for i in node.input[:3]] if len(node.input) >= 3 else [None]
        merge = _merge_heads(g, node.output[0]) if len(node.output) == 1 else None
        if any(h is None for h in heads_in) or merge is None:
            kept += 1
            continue
        (xq, q_heads, d), (xk, kv_heads, dk), (xv, _, dv) = heads_in  # type: ignore[misc]
        if not d == dk == dv:
            kept += 1
            continue
        if (q_heads is None or kv_heads is None) and sizes is None:
            sizes = _hidden_sizes(model)  # a "-1" head count: heads = hidden / d
        q_heads = q_heads or (sizes or {}).get(xq, 0) // d
        kv_heads = kv_heads or (sizes or {}).get(xk, 0) // d
        if q_heads <= 0 or kv_heads <= 0:
            kept += 1
            continue
        chain, out_name = merge
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute
                 if a.name not in ("q_num_heads", "kv_num_heads")}
        new = onnx.helper.make_node("Attention", [xq, xk, xv, *node.input[3:]], [out_name], name=node.name + "_3d",
                                    q_num_heads=q_heads, kv_num_heads=kv_heads, **attrs)
        model.graph.node.insert(list(model.graph.node).index(node), new)
        for i in node.input[:3]:
            t = g.producer[i]
            dead.extend([t, g.producer[t.input[0]]])
        dead.extend([node, *chain])
        rewritten += 1
    removed = _prune(model.graph, dead) if rewritten else 0
    if rewritten:
        log.info("attention: %d rewritten to 3-D inputs, %d kept, %d nodes removed", rewritten, kept, removed)
    return {"attention_3d": rewritten, "attention_kept": kept, "nodes_removed": removed}
