"""FP16: weights and most activations in float16; numerically sensitive ops stay in float32.

Kept in float32: LayerNormalization, Softmax, reductions (the pooling's mean / max), Pow / Sqrt / Exp /
Log / Reciprocal (variance and normalisation maths), and the pixel path from the uint8 inputs to the
first Conv / MatMul (cast, scaling, mean / std normalisation, tiling), so the inputs are normalised
exactly as in FP32. Inputs and outputs keep their types (uint8 / int64 in, float32 probabilities out).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from export.formats import ConvertContext

NAME = "fp16"
DESCRIPTION = "float16 weights/activations, LayerNorm/Softmax/reductions/normalisation in float32"

FP32_OPS = ("LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax",
            "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "Pow", "Sqrt",
            "Exp", "Log", "Reciprocal", "CumSum", "Range", "RandomNormalLike", "RandomUniformLike")
COMPUTE_OPS = ("Conv", "MatMul", "Gemm", "Einsum")
PIXEL_INPUTS = ("global_pixels", "canvas_pixels")


def pixel_path_nodes(model: Any, inputs: tuple[str, ...] = PIXEL_INPUTS) -> list[str]:
    """Names of the nodes between the pixel inputs and the first compute op (exclusive)."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out: list[str] = []
    seen: set[int] = set()
    todo = deque(inputs)
    while todo:
        tensor = todo.popleft()
        for node in consumers.get(tensor, []):
            if id(node) in seen or node.op_type in COMPUTE_OPS:
                continue
            seen.add(id(node))
            if node.name:
                out.append(node.name)
            todo.extend(node.output)
    return out


def convert(ctx: ConvertContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(ctx.src))
    for i, node in enumerate(model.graph.node):  # the block list works by node name
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    keep = pixel_path_nodes(model)
    present = {n.op_type for n in model.graph.node}
    blocked_ops = [op for op in FP32_OPS if op in present]
    # plus onnxruntime's default list (ops without float16 kernels)
    block = sorted(set(blocked_ops) | set(DEFAULT_OP_BLOCK_LIST))
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                    node_block_list=keep, disable_shape_infer=False)
    onnx.save(fp16, str(ctx.dst))
    return {"fp32_ops": blocked_ops, "fp32_pixel_nodes": len(keep)}
