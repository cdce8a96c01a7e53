"""`sydes benchmark BUNDLE [--compare CHECKPOINT]`: sdk's benchmark (sdk/commands/benchmark.py) plus the
torch eager comparison, which needs training (and so lives in the training layer)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdk.commands import benchmark

    benchmark.add_arguments(parser)
    parser.add_argument("--compare", type=Path, metavar="CHECKPOINT",
                        help="also run this training checkpoint in torch eager mode (needs the 'train' extra)")


def _torch_compare(ckpt: Path, az, feeds_by_b: dict[int, dict], iters: int, warmup: int) -> dict[str, Any]:
    """Torch eager latency of `ckpt` on the bundle's own feeds, and the largest probability gap."""
    from sdk.errors import MissingExtraError

    try:
        import torch

        from training.checkpoints import load_model
    except ModuleNotFoundError as e:
        raise MissingExtraError(e.name or "torch", "train", "needed by --compare") from e
    import numpy as np

    from sdk.commands.benchmark import _time, percentiles

    model = load_model(ckpt)  # SyDES or the text-only family (which takes no pixels)
    out: dict[str, Any] = {"checkpoint": str(ckpt), "torch": torch.__version__, "per_batch": {}}
    for b, feeds in feeds_by_b.items():
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}

        def call(t=t):
            with torch.inference_mode():
                return model(t["input_ids"], t["attention_mask"], global_pixels=t.get("global_pixels"),
                             canvas_pixels=t.get("canvas_pixels"))

        ms = _time(call, iters, warmup)
        logits = call()
        ours = az.backend.run(feeds)
        diff = max(float(np.abs(torch.softmax(logits[task].float(), -1).numpy() - ours[f"probs_{task}"]).max())
                   for task in az.tasks)
        out["per_batch"][b] = {"latency_ms": percentiles(ms), "throughput": b * 1000 / percentiles(ms)["mean"],
                               "max_abs_prob_diff": diff}
    return out



def run(args: argparse.Namespace) -> int:
    from sdk.commands import benchmark

    if args.compare is None:
        return benchmark.run(args)
    return benchmark.run(args, compare=lambda az, feeds: _torch_compare(args.compare, az, feeds, args.iters,
                                                                        args.warmup))
