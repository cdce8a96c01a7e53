"""Parameter counts and GFLOPs per post of the SyDES presets (inference path, one post).

    python benchmarks/model_cost.py [--presets reference edge] [--seq 77]

Models are randomly initialised on the CPU; torch.utils.flop_counter counts the FLOPs of every
matmul / convolution / attention of one forward pass. One multiply-add = 2 FLOPs.
Elementwise ops (LayerNorm, GELU, softmax) are not counted; they are < 1% here.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _stage_of(module_name: str) -> str:
    top = module_name.split(".")[0] if module_name else ""
    return {
        "image_encoder": "image encoder",
        "text_encoder": "text encoder",
        "text_decoder": "decoder",
        "text_proj": "decoder",
        "heads": "pool + heads",
        "multipool_proj": "pool + heads",
    }.get(top, "other")


def measure(name: str, seq: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from training import presets
    from training.model import SyDES

    cfg = presets.get_preset(name)()
    # random init on CPU (HF's mask helpers read tensor values, so the meta device cannot run it)
    model = SyDES(cfg).eval()
    s = cfg.image_size
    ids = torch.zeros(1, seq, dtype=torch.long)
    mask = torch.ones(1, seq, dtype=torch.long)
    gp = torch.zeros(1, s, s, 3, dtype=torch.uint8)
    cp = torch.zeros(1, 2 * s, 2 * s, 3, dtype=torch.uint8)
    params = defaultdict(int)
    for pname, p in model.named_parameters():
        params[pname.split(".")[0]] += p.numel()
    inference_params = sum(v for k, v in params.items() if k in {
        "image_encoder", "text_encoder", "text_proj", "ln1_post", "ln2_post", "ln3_post", "ln4_post",
        "text_decoder", "pool_attn_q", "multipool_proj", "heads"})
    from torch.nn.attention import SDPBackend, sdpa_kernel

    counter = FlopCounterMode(display=False, depth=None)
    # the math SDPA backend is plain bmm/softmax, which the counter sees (CPU fused kernels it misses)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(ids, mask, global_pixels=gp, canvas_pixels=cp)
    by_stage = defaultdict(int)
    for mod, counts in counter.get_flop_counts().items():
        parts = mod.split(".")
        if len(parts) == 2 and parts[0] == "SyDES":  # top-level children only, to avoid double counting
            by_stage[_stage_of(parts[1])] += sum(counts.values())
    return {
        "preset": name,
        "tasks": len(cfg.tasks),
        "params_total": sum(params.values()),
        "params_inference": inference_params,
        "gflops": counter.get_total_flops() / 1e9,
        "stages": {k: v / 1e9 for k, v in by_stage.items()},
        "tokens": f"{5 * cfg.num_patches} img / {seq - 1} txt",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["reference", "edge"])
    ap.add_argument("--seq", type=int, default=None, help="token length (default: the preset's max_length)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from training import presets

    rows = []
    for name in args.presets:
        seq = args.seq or presets.get_preset(name)().tokenizer.max_length
        rows.append(measure(name, seq))
    stages = ["image encoder", "text encoder", "decoder", "pool + heads"]
    head = f"{'preset':<10} {'tasks':>5} {'params':>9} {'infer.':>9} {'GFLOP':>7}  " + "  ".join(
        f"{s:>13}" for s in stages) + f"  {'tokens':>18}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['preset']:<10} {r['tasks']:>5} {r['params_total'] / 1e6:>8.1f}M {r['params_inference'] / 1e6:>8.1f}M "
            f"{r['gflops']:>7.1f}  " + "  ".join(f"{r['stages'].get(s, 0.0):>13.2f}" for s in stages)
            + f"  {r['tokens']:>18}"
        )
    print("\nparams: all parameters (incl. training-only image decoder); infer.: those on the inference path.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
