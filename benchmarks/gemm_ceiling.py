"""What this CPU can do at all: GEMM throughput of torch FP32, onnxruntime FP32 and onnxruntime INT8
(u8 activations x s8 weights, the kernel INT8 bundles run) on the reference model's dominant shape.

    python benchmarks/gemm_ceiling.py [--repeats 7] [--threads N]

Why: the runtime's speed targets are ratios against torch FP32 on the same machine. Two thirds of the
reference model's time is GEMM (74% of its FLOPs are the image encoder's linear layers), so the ratio of
the INT8 GEMM to torch's FP32 GEMM bounds what any INT8 bundle can reach here, and the ratio of
onnxruntime's FP32 GEMM to torch's bounds the FP32 bundle. ../shared/DESIGN.md measured 1,714 GOP/s INT8,
449 GFLOP/s onnxruntime FP32 and 213 GFLOP/s torch FP32 on a 2-core Zen 5 (8.0x and 2.1x); this prints
the same figures for the machine it runs on, in the same run as the model timings that use them.

Shape: the ViT-B/16 MLP's first layer over a batch of 4 posts x 5 views: [20*197, 768] x [768, 3072].
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

M, K, N = 20 * 197, 768, 3072
# DESIGN.md's figures (2-core Zen 5): the premises of the 6x INT8 and 2x FP32 targets
DESIGN_GOPS = {"torch_fp32": 213.0, "ort_fp32": 449.0, "ort_int8": 1714.0}


def _median_s(fn: Any, repeats: int) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def _ort_session(nodes: list[Any], inits: list[Any], x_type: int, threads: int) -> Any:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", x_type, [M, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(helper.make_model(graph, opset_imports=opsets).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def measure(repeats: int = 7, threads: int | None = None) -> dict[str, float]:
    """GOP/s (2*M*K*N ops per GEMM) of torch FP32, onnxruntime FP32 and onnxruntime INT8 u8 x s8."""
    import os

    import numpy as np
    import torch
    from onnx import TensorProto, helper, numpy_helper

    threads = threads or os.cpu_count() or 1
    ops = 2.0 * M * K * N
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = (rng.standard_normal((K, N), dtype=np.float32) * 0.02).astype(np.float32)
    out: dict[str, float] = {"threads": float(threads)}

    torch.set_num_threads(threads)
    xt, wt = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w.T))
    with torch.inference_mode():
        out["torch_fp32"] = ops / _median_s(lambda: torch.nn.functional.linear(xt, wt), repeats) / 1e9

    s = _ort_session([helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(w, "w")],
                     TensorProto.FLOAT, threads)
    out["ort_fp32"] = ops / _median_s(lambda: s.run(None, {"x": x}), repeats) / 1e9

    xq = rng.integers(0, 256, (M, K), dtype=np.uint8)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (K, N), dtype=np.int8), "wq"),
             numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(np.full(N, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.zeros(N, np.int8), "wz")]
    node = helper.make_node("MatMulIntegerToFloat", ["x", "wq", "xs", "ws", "xz", "wz"], ["y"],
                            domain="com.microsoft")
    s = _ort_session([node], inits, TensorProto.UINT8, threads)
    out["ort_int8"] = ops / _median_s(lambda: s.run(None, {"x": xq}), repeats) / 1e9
    out["int8_over_torch"] = out["ort_int8"] / out["torch_fp32"]
    out["ort_fp32_over_torch"] = out["ort_fp32"] / out["torch_fp32"]
    return out


def table(r: dict[str, float]) -> str:
    lines = [f"{'GEMM [' + str(M) + 'x' + str(K) + '] x [' + str(K) + 'x' + str(N) + ']':<34} "
             f"{'this machine':>13} {'DESIGN.md (Zen 5)':>18}"]
    for key, name in (("torch_fp32", "torch FP32 GFLOP/s"), ("ort_fp32", "onnxruntime FP32 GFLOP/s"),
                      ("ort_int8", "onnxruntime INT8 u8s8 GOP/s")):
        lines.append(f"{name:<34} {r[key]:>13.0f} {DESIGN_GOPS[key]:>18.0f}")
    lines.append(f"{'INT8 / torch FP32':<34} {r['int8_over_torch']:>12.2f}x "
                 f"{DESIGN_GOPS['ort_int8'] / DESIGN_GOPS['torch_fp32']:>17.2f}x")
    lines.append(f"{'onnxruntime FP32 / torch FP32':<34} {r['ort_fp32_over_torch']:>12.2f}x "
                 f"{DESIGN_GOPS['ort_fp32'] / DESIGN_GOPS['torch_fp32']:>17.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="default: all CPUs")
    args = ap.parse_args(argv)
    print(table(measure(args.repeats, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
