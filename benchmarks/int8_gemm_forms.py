"""One Linear of the edge image encoder (DINOv2-S: 384 -> 384 for each of q, k, v and the output projection,
384 -> 1152 for q, k and v merged, 384 -> 1536 fc1, 1536 -> 384 fc2) in the
onnxruntime forms an INT8 CPU bundle could use, timed in one run on the same input:

- fp32:   MatMul + Add;
- mmi2f:  the `--target cpu` INT8 bundle's form: QuantizeLinear (static, per tensor) + com.microsoft
          MatMulIntegerToFloat with the bias fused (export/qdq_fuse.py), 7-bit weights per output channel
          (the default for CPUs without VNNI, sdk.cpu);
- nbits8: com.microsoft MatMulNBits, 8-bit weights in blocks of 32 along K, accuracy_level=4 (the activation
          quantised to int8 on the fly, per block: an int8 GEMM without a calibrated activation scale).

    python benchmarks/int8_gemm_forms.py [--rows 4112] [--repeats 7] [--threads 2] [--shapes 384x384 384x1152]
                                         [--forms fp32 mmi2f]

Prints ms, GOP/s and the max error relative to the float product per form and shape. Each time includes the
session's run overhead and fetching the [M, N] output, which weighs most on the narrow shapes (384 x 384); for
a graph-level question (e.g. merging q, k and v) time the graph itself. The activation scale of
mmi2f is a fixed stand-in (x in [-2, 2]), so its error column measures clipping, not the bundle's accuracy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SHAPES = ((384, 384), (384, 1152), (384, 1536), (1536, 384))
FORMS = ("fp32", "mmi2f", "nbits8")


def linear_model(form: str, k: int, n: int, rng: np.random.Generator) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A one-Linear ONNX model x [M, K] -> y [M, N] in `form`; returns (model bytes, W [K, N], bias [N])."""
    from onnx import TensorProto, helper, numpy_helper

    w = rng.normal(0, 0.05, (k, n)).astype(np.float32)
    bias = rng.normal(0, 0.1, n).astype(np.float32)
    inits = [numpy_helper.from_array(bias, "bias")]
    ms = "com.microsoft"
    if form == "fp32":
        inits.append(numpy_helper.from_array(w, "W"))
        nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "bias"], ["y"])]
    elif form == "mmi2f":
        ws = (np.abs(w).max(0) / 63).astype(np.float32)
        inits += [numpy_helper.from_array(np.clip(np.round(w / ws), -64, 63).astype(np.int8), "Wq"),
                  numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(np.array(4 / 255, np.float32), "xs"),
                  numpy_helper.from_array(np.array(128, np.uint8), "xzp")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
                 helper.make_node("MatMulIntegerToFloat", ["xq", "Wq", "xs", "ws", "xzp", "", "bias"], ["y"], domain=ms)]
    else:
        block = 32
        wt = w.T.reshape(n, k // block, block)
        scale = (np.abs(wt).max(-1) / 127).astype(np.float32)
        q = (np.clip(np.round(wt / scale[..., None]), -127, 127) + 128).astype(np.uint8)  # zero point 128
        inits += [numpy_helper.from_array(q, "Bq"), numpy_helper.from_array(scale.reshape(-1), "scale")]
        nodes = [helper.make_node("MatMulNBits", ["x", "Bq", "scale", "", "", "bias"], ["y"], domain=ms,
                                  K=k, N=n, bits=8, block_size=block, accuracy_level=4)]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(ms, 1)])
    return model.SerializeToString(), w, bias


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4112, help="GEMM rows M (4112 = one view of 16 posts, 16 x 257)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="+", default=[f"{k}x{n}" for k, n in SHAPES], help="KxN of each Linear")
    ap.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    args = ap.parse_args()
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    except ValueError:
        ap.error(f"--shapes takes KxN pairs such as 384x1152, got {args.shapes}")
    if any(len(s) != 2 or min(s) < 1 for s in shapes):
        ap.error(f"--shapes takes KxN pairs of positive integers, got {args.shapes}")
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, M = {args.rows}, {args.threads} threads, median of {args.repeats}")
    print("| K | N | form | ms | GOP/s | max rel. error |\n|---|---|---|---|---|---|")
    for k, n in shapes:
        x = rng.normal(0, 1, (args.rows, k)).astype(np.float32)
        for form in args.forms:
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            buf, w, bias = linear_model(form, k, n, rng)
            sess = ort.InferenceSession(buf, so, providers=["CPUExecutionProvider"])
            ref = x @ w + bias
            err = float(np.abs(sess.run(None, {"x": x})[0] - ref).max() / np.abs(ref).max())
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                sess.run(None, {"x": x})
                times.append(time.perf_counter() - t0)
            t = float(np.median(times))
            print(f"| {k} | {n} | {form} | {1e3 * t:.1f} | {2 * args.rows * k * n / t / 1e9:.0f} | {err:.4f} |")


if __name__ == "__main__":
    main()
