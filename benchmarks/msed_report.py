"""MSED-mini report: the edge preset (offline DINOv2-S/14 + MiniLM-L6) trained on msed-mini/train and
evaluated on msed-mini/dev, with ablations, as one table of per-task macro-F1 and accuracy (+ JSON).

Variants (all fine-tunes keep the image encoder frozen, so its outputs are cached once on disk):
    mim+mixed     MIM pretrain (image encoder frozen too, everything else trained), then fine-tune
    mixed         fine-tune from the preset's backbones (no pretrain), 5 views (global + 4 tiles)
    global-only   as `mixed` but the decoder sees only the global view (tile features replaced by copies of
                  the global view's: attention over duplicated keys/values equals attention over one copy)
    text-only     as `mixed` with every image feature zeroed (the image carries no information)
    image-only    as `mixed` with empty captions
Model selection is by dev macro-F1 on the same dev split (msed-mini has no test split): the figures are
therefore optimistic, and comparable between variants.

    python benchmarks/msed_report.py --out runs/msed_report.json               # the full run (~1 h, 2 cores)
    python benchmarks/msed_report.py --limit 64 --epochs 1 --out /tmp/r.json   # a smoke run
    python benchmarks/msed_report.py --cache-speedup                            # steps/s with vs without cache
Skips with a message (exit 0) where the data or the offline backbones are absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = Path(os.environ.get("SYDES_MSED_DIR", ROOT.parent / "shared" / "data" / "msed-mini"))
VARIANTS = ("mim+mixed", "mixed", "global-only", "text-only", "image-only")


def _global_only(f):
    return f[:1].expand_as(f).clone()


def _no_image(f):
    return f.new_zeros(f.shape)


def _blank(records):
    from dataclasses import replace

    from training.data import Records

    return Records([replace(e, text="") for e in records], list(records.skipped), records.source)


def run_variant(name: str, args, train, dev, out_dir: Path, init: str | None = None) -> dict:
    """Fine-tune one variant with the feature cache; returns its dev row (per-task macro-F1/accuracy)."""
    import torch

    from training.runner import build_model
    from training.trainer import Trainer, TrainOptions, set_seed

    set_seed(args.seed)
    model, tok = build_model(preset=None if init else "edge", init=init)
    if name == "image-only":
        train, dev = _blank(train), _blank(dev)
    opts = TrainOptions(stage="finetune", epochs=args.epochs, batch_size=args.batch_size, accum=args.accum,
                        seed=args.seed, num_workers=args.num_workers, feature_cache=str(args.cache_dir),
                        feature_cache_dtype=args.cache_dtype, save_every=10**9, patience=args.patience,
                        progress=not args.no_progress, log_every=10)
    tr = Trainer(model, train, dev, tok, out_dir / name, opts, init_from=init)
    transform = {"global-only": _global_only, "text-only": _no_image}.get(name)
    tr.train_ds.transform = transform
    tr.dev_ds.transform = transform
    t0 = time.perf_counter()
    tr.fit()
    from safetensors.torch import load_file

    tr.model.load_state_dict(load_file(str(out_dir / name / "best" / "model.safetensors")))
    row = tr.evaluate()
    row["train_seconds"] = time.perf_counter() - t0
    row["best_step"] = tr.best_step
    del tr, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return row


def pretrain(args, train, dev, out_dir: Path) -> str:
    """MIM pretrain of the edge preset with the image encoder frozen (lr 0): its cache stays valid."""
    from training.runner import build_model
    from training.trainer import Trainer, TrainOptions, set_seed

    set_seed(args.seed)
    model, tok = build_model(preset="edge")
    opts = TrainOptions(stage="pretrain", epochs=args.pretrain_epochs, batch_size=args.batch_size,
                        accum=args.accum, seed=args.seed, num_workers=args.num_workers, save_every=10**9,
                        lrs={"image_encoder": 0.0}, progress=not args.no_progress, log_every=10)
    Trainer(model, train, dev, tok, out_dir / "pretrain", opts).fit()
    return str(out_dir / "pretrain" / "best")


def cache_speedup(args) -> dict:
    """Fine-tuning steps/s on this machine with vs without the feature cache (edge preset, msed-mini)."""
    import torch

    from training.runner import build_model, read_split
    from training.trainer import Trainer, TrainOptions, set_seed

    res = {}
    for use in (False, True):
        set_seed(0)
        model, tok = build_model(preset="edge")
        train = read_split(str(args.data), "train", None, tasks=model.config.tasks, limit=args.speed_samples)
        opts = TrainOptions(stage="finetune", epochs=1, batch_size=args.batch_size, accum=1, num_workers=args.num_workers,
                            feature_cache=str(args.cache_dir) if use else None, save_every=10**9, progress=False,
                            feature_cache_dtype=args.cache_dtype)
        tr = Trainer(model, train, None, tok, Path(args.tmp) / f"speed-{use}", opts)
        # time the training steps only (the cache was filled in the constructor: a one-off cost)
        t0 = time.perf_counter()
        tr.fit()
        dt = time.perf_counter() - t0
        res["with_cache" if use else "without_cache"] = {"steps": tr.step, "seconds": dt, "steps_per_s": tr.step / dt,
                                                          "samples_per_s": len(train) / dt}
    res["speedup"] = res["with_cache"]["steps_per_s"] / res["without_cache"]["steps_per_s"]
    res["threads"] = torch.get_num_threads()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "msed_report.json")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "msed_report")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "sydes" / "features")
    p.add_argument("--cache-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--limit", type=int, default=None, help="rows per split (smoke runs)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--pretrain-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--cache-speedup", action="store_true", help="only measure steps/s with vs without cache")
    p.add_argument("--speed-samples", type=int, default=32)
    p.add_argument("--tmp", default="/tmp/sydes_speed")
    args = p.parse_args(argv)

    if not (args.data / "train" / "train.csv").is_file():
        print(f"SKIP: MSED data not found at {args.data} (set SYDES_MSED_DIR or --data)")
        return 0
    try:
        from training.offline import edge_backbone_sources

        edge_backbone_sources()
    except Exception as e:  # noqa: BLE001 - any missing offline backbone means: skip, say why
        print(f"SKIP: offline edge backbones unavailable: {e}")
        return 0
    if args.cache_speedup:
        res = cache_speedup(args)
        print(json.dumps(res, indent=2))
        return 0

    from sdk.atomic import atomic_write_text
    from training.data import MSED_TASKS
    from training.runner import read_split

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; valid: {', '.join(VARIANTS)}")
    train = read_split(str(args.data), "train", None, tasks=MSED_TASKS, limit=args.limit)
    dev = read_split(str(args.data), "dev", None, tasks=MSED_TASKS, limit=args.limit)
    rows: dict[str, dict] = {}
    for v in variants:
        init = pretrain(args, train, dev, args.runs) if v == "mim+mixed" else None
        rows[v] = run_variant(v, args, train, dev, args.runs, init=init)
        print(f"{v}: " + ", ".join(f"{k} {rows[v][k]:.4f}" for k in sorted(rows[v]) if "macro_f1" in k), flush=True)
    tasks = list(MSED_TASKS)
    header = f"{'variant':<12} " + " ".join(f"{t[:9] + ' F1':>12} {t[:9] + ' acc':>13}" for t in tasks) + "  mean F1"
    lines = [header, "-" * len(header)]
    for v, r in rows.items():
        lines.append(f"{v:<12} " + " ".join(f"{r[f'{t}/macro_f1']:>12.4f} {r[f'{t}/accuracy']:>13.4f}" for t in tasks)
                     + f"  {r['macro_f1']:.4f}")
    print("\n".join(lines))
    report = {"data": str(args.data), "train_rows": len(train), "dev_rows": len(dev), "preset": "edge",
              "selection": "best dev macro-F1 (dev is also the evaluation split)", "args": {
                  k: str(v) for k, v in vars(args).items()}, "variants": rows}
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
