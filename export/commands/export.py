"""`sydes export CHECKPOINT [CHECKPOINT ...] -o NAME.sydes`: checkpoint(s) -> verified bundle."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from calibration.methods import METHODS
    from export.formats import PRECISIONS, TARGET_OPSET, TARGETS
    from export.options import FORMATS
    from sdk.cpu import INT8_WEIGHT_BITS

    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoint folder(s); several single-task ones sharing an image encoder make one "
                        "multi-task bundle")
    p.add_argument("-o", "--output", required=True, metavar="NAME.sydes", help="bundle folder to write")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="default fp32")
    p.add_argument("--target", default="cpu", choices=TARGETS,
                   help=f"one of {', '.join(TARGETS)}: INT8 scheme (cpu: u8 activations x s8 weights; "
                        "tensorrt: symmetric s8, per-channel weights; openvino: an OpenVINO IR bundle, INT8 by NNCF) "
                        "and whether onnxruntime-only fusions apply")
    p.add_argument("--format", default="onnx", choices=FORMATS,
                   help="tensorrt also builds an engine on this machine's GPU (default onnx)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N",
                   help="--format tensorrt: the engine takes batches 1..N (default 32); any later run with a "
                        "batch size <= N reuses it")
    p.add_argument("--workspace", type=int, default=None, metavar="MB",
                   help="--format tensorrt: TensorRT's workspace memory limit in MiB (default: TensorRT's)")
    p.add_argument("--calib", metavar="DATA", help="calibration data: MSED folder, JSONL/CSV of posts, folder "
                                                    "of images, or 'generated'")
    p.add_argument("--calib-split", default="train", help="MSED split to calibrate on (default train)")
    p.add_argument("--calib-samples", type=int, default=256, metavar="N", help="calibration posts (default 256)")
    p.add_argument("--calib-method", default="percentile", choices=METHODS, help="default percentile")
    p.add_argument("--int8-weight-bits", type=int, default=None, choices=INT8_WEIGHT_BITS,
                   help="INT8 weights in 8 bits or 7 ([-64, 64]); default 7 for --target cpu / cpu-dynamic, 8 for "
                        "tensorrt and openvino. x86 CPUs without VNNI sum u8 x s8 products in saturating 16-bit "
                        "lanes and clip 8-bit weights (`sydes doctor` says whether this one does); 7 bits stay "
                        "exact on every CPU")
    p.add_argument("--eval-samples", type=int, default=128, metavar="N",
                   help="held-out posts for the FP32-agreement / macro-F1 report (0: skip; default 128)")
    p.add_argument("--cache-dir", help="calibration cache folder (default ~/.cache/sydes/calibration)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default per target: " + ", ".join(f"{t} {o}" for t, o in TARGET_OPSET.items())
                        + "; 23 writes attention as one Attention op)")
    p.add_argument("--name", help="bundle name in the manifest (default: the output folder's stem)")
    p.add_argument("--fusions", action="store_true",
                   help="--target cpu only: apply onnxruntime.transformers' contrib-op fusions (BiasGelu, "
                        "SkipLayerNorm, Attention ...) where they apply; the graph then runs on onnxruntime only. "
                        "Off by default: onnxruntime applies the same fusions itself when it loads a graph")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")


def run(args: argparse.Namespace) -> int:
    from export.pipeline import ExportOptions, export_checkpoints

    opts = ExportOptions(precision=args.precision, target=args.target, format=args.format, opset=args.opset,
                         calib=args.calib, calib_split=args.calib_split, calib_samples=args.calib_samples,
                         calib_method=args.calib_method, eval_samples=args.eval_samples,
                         cache_dir=args.cache_dir, overwrite=args.overwrite, name=args.name,
                         fusions=args.fusions, max_batch=args.max_batch, workspace_mb=args.workspace,
                         int8_weight_bits=args.int8_weight_bits)
    report = export_checkpoints(args.checkpoints, args.output, opts)
    print(report.summary())
    return 0
