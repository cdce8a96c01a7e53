"""`sydes triton BUNDLE -o REPO`: write a Triton Inference Server model repository (sdk.triton)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdk.triton.repository import FORMATS, KINDS

    parser.add_argument("bundle", help="the NAME.sydes/ folder")
    parser.add_argument("-o", "--output", required=True, help="the model repository folder to write")
    parser.add_argument("--name", default="sydes", help="the ensemble's model name (default: sydes)")
    parser.add_argument("--format", default="onnxruntime", choices=list(FORMATS), help="graph model format")
    parser.add_argument("--engine", default=None, help="tensorrt: the engine (plan) file to serve")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching delay")
    parser.add_argument("--max-queue-size", type=int, default=128, help="Triton rejects requests beyond it")
    parser.add_argument("--kind", default="gpu", choices=list(KINDS), help="instance kind of the graph model")
    parser.add_argument("--instances", type=int, default=1, help="graph model instances")
    parser.add_argument("--preprocess-instances", type=int, default=2, help="Python preprocessing instances")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing REPO")


def run(args: argparse.Namespace) -> int:
    from sdk.triton.repository import TritonOptions, write_repository

    opts = TritonOptions(name=args.name, format=args.format, engine=args.engine, max_batch_size=args.max_batch_size,
                         max_queue_delay_us=args.max_queue_delay_us, max_queue_size=args.max_queue_size,
                         kind=args.kind, instances=args.instances, preprocess_instances=args.preprocess_instances)
    out = write_repository(args.bundle, args.output, opts, overwrite=args.overwrite)
    print(f"wrote Triton model repository {out}: {opts.name} (ensemble) = {opts.preprocess_name} (python) -> "
          f"{opts.graph_name} ({opts.format}); serve it with `tritonserver --model-repository {out}`")
    return 0
