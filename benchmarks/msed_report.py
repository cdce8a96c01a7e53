"""MSED-mini report: the edge preset (offline DINOv2-S/14 + MiniLM-L6) trained on msed-mini/train and
evaluated on msed-mini/dev, with ablations, as one table of per-task macro-F1 and accuracy (+ JSON).

Variants (all fine-tunes keep the image encoder frozen, so its outputs are cached once on disk):
    mim+mixed     MIM pretrain (image encoder frozen too, everything else trained), then fine-tune
    mixed         fine-tune from the preset's backbones (no pretrain), 5 views (global + 4 tiles)
    global-only   as `mixed` but the decoder sees only the global view (equivalently: tile features replaced
                  by copies of the global view's, since attention over duplicated keys/values equals attention
                  over one copy; run as the global view's 256 tokens alone, which is exact and 5x cheaper)
    text-only     as `mixed` with every image feature zeroed (the image carries no information; run as one
                  zero token, exact for the same reason)
    image-only    as `mixed` with empty captions
Model selection is by dev macro-F1 on the same dev split (msed-mini has no test split): the figures are
therefore optimistic, and comparable between variants.

    python benchmarks/msed_report.py --epochs 3 --batch-size 16 --out runs/msed_report_full.json \
        --runs runs/msed_report_full                                           # full data (~50 min warm cache)
    python benchmarks/msed_report.py --train-subset 256 --dev-subset 200 --epochs 2 --batch-size 8 \\
        --variants mixed,text-only,global-only,image-only,mim+mixed --out runs/msed_report.json  # CPU budget run
    python benchmarks/msed_report.py --limit 12 --train-subset 8 --dev-subset 6 --epochs 1 --out /tmp/r.json
    python benchmarks/msed_report.py --markdown runs/msed_report.json          # the table, as Markdown

Report recipe (documented as such; not the paper's): the image encoder AND the text encoder are frozen; the
5-view image features are computed once into the on-disk cache (fp16 by default; the cached path's logits
are checked against the uncached fp32 path and the difference is recorded) and shared by every variant; the
frozen text encoder's outputs are computed once per variant in memory; token padding is trimmed to each
batch's longest caption (exact). Every variant trains text_proj, the ln*_post, the decoder, pooling and heads
with AdamW at one lr (--lr), the same epochs / batch / seed, and keeps its best epoch on dev. mim+mixed
pretrains first (image encoder frozen, global view from the cache, masked tiles through the real encoder,
text encoder trained at the recipe lr), then fine-tunes exactly as `mixed`. Linear probes (logistic
regression) are fitted on the same train subset and scored on the same dev subset, from the same caches.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = Path(os.environ.get("SYDES_MSED_DIR", ROOT.parent / "shared" / "data" / "msed-mini"))
VARIANTS = ("mim+mixed", "mixed", "global-only", "text-only", "image-only")


def _blank(records):
    from dataclasses import replace

    from training.data import Records

    return Records([replace(e, text="") for e in records], list(records.skipped), records.source)


def report_lrs(args) -> dict[str, float]:
    """The report recipe's learning rates: frozen image and text encoders (both cached), decoder + pooling +
    heads trained."""
    lrs = {"text_decoder": args.lr, "other": args.lr}
    if not args.train_text_encoder:
        lrs["text_encoder"] = 0.0
    return lrs


def run_variant(name: str, args, train, dev, out_dir: Path, init: str | None = None) -> dict:
    """Fine-tune one variant with the shared feature cache; returns its dev row (per-task macro-F1/accuracy)."""
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
                        progress=not args.no_progress, log_every=10, lrs=report_lrs(args),
                        text_cache=not args.train_text_encoder)
    tr = Trainer(model, train, dev, tok, out_dir / name, opts, init_from=init)
    from training.feature_cache import global_view_only, no_image_features

    transform = {"global-only": global_view_only, "text-only": no_image_features}.get(name)
    tr.train_ds.transform = transform
    tr.dev_ds.transform = transform
    t0 = time.perf_counter()
    tr.fit()
    from safetensors.torch import load_file

    tr.model.load_state_dict(load_file(str(out_dir / name / "best" / "model.safetensors")))
    row = tr.evaluate()
    row["train_seconds"] = time.perf_counter() - t0
    row["best_step"] = tr.best_step
    row["steps"] = tr.step
    row["evals"] = [json.loads(x) for x in (out_dir / name / "metrics.jsonl").read_text().splitlines()
                    if '"eval"' in x]
    del tr, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return row


def pretrain(args, train, out_dir: Path) -> str:
    """MIM pretrain of the edge preset with the image encoder frozen (lr 0): the global view comes from the
    shared cache, the masked tiles run the real encoder; no dev set (the last weights are kept)."""
    from training.runner import build_model
    from training.trainer import Trainer, TrainOptions, set_seed

    set_seed(args.seed)
    model, tok = build_model(preset="edge")
    opts = TrainOptions(stage="pretrain", epochs=args.pretrain_epochs, batch_size=args.batch_size,
                        accum=args.accum, seed=args.seed, num_workers=args.num_workers, save_every=10**9,
                        lrs={"image_encoder": 0.0}, feature_cache=str(args.cache_dir),
                        feature_cache_dtype=args.cache_dtype, progress=not args.no_progress, log_every=10)
    Trainer(model, train, None, tok, out_dir / "pretrain", opts).fit()
    return str(out_dir / "pretrain" / "best")


def subset(records, n: int | None, seed: int):
    """A fixed random subset of `n` rows (the same for every variant), in file order."""
    import random

    from training.data import Records

    if n is None or n >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return Records([records[i] for i in keep], list(records.skipped), records.source)


def fill_cache_and_check(args, train, dev) -> dict:
    """Fill the shared cache once (all 5 views of every image of both splits); check that the cached path's
    logits match the uncached fp32 path on a few dev posts (fp16 storage is not bit-exact)."""
    import torch

    from sdk.preprocess import PreprocessConfig
    from training.data import PostDataset, collate
    from training.feature_cache import CachedFeatureDataset, FeatureCache
    from training.runner import build_model
    from training.trainer import batch_logits, set_seed

    set_seed(args.seed)
    model, tok = build_model(preset="edge")
    model.eval()
    pcfg = PreprocessConfig.from_dict(model.config.preprocess)
    cache = FeatureCache(args.cache_dir, model, dtype=getattr(torch, args.cache_dtype))
    t0 = time.perf_counter()
    n = cache.fill(list(train) + list(dev), pcfg, batch_size=8, progress=not args.no_progress)
    fill_s = time.perf_counter() - t0
    k = min(4, len(dev))
    plain = PostDataset(list(dev)[:k], tok, pcfg, model.config.task_names)
    cached = CachedFeatureDataset(PostDataset(list(dev)[:k], tok, pcfg, model.config.task_names,
                                              with_pixels=False), cache, list(dev)[:k])
    with torch.no_grad():
        a = batch_logits(model, collate([plain[i] for i in range(k)], trim=True))
        b = batch_logits(model, collate([cached[i] for i in range(k)], trim=True))
    diff = max(float((a[t] - b[t]).abs().max()) for t in a)
    # linear-probe features from the same caches: DINOv2 global view CLS + mean patch; MiniLM mean-pooled
    from training.feature_cache import encode_texts

    feats = {}
    for split, rec in (("train", train), ("dev", dev)):
        img = torch.stack([cache.get(e)[0].float() for e in rec])  # [N, T, D] view 0 = global
        ds = PostDataset(rec, tok, pcfg, model.config.task_names, with_pixels=False)
        h = encode_texts(model, ds.ids, ds.mask, batch_size=64)
        m = torch.from_numpy(ds.mask).float().unsqueeze(-1)
        feats[split] = {"dinov2": torch.cat([img[:, 0], img[:, 1:].mean(1)], 1).numpy(),
                        "text": ((h * m).sum(1) / m.sum(1).clamp(min=1)).numpy()}
        feats[split]["text+dinov2"] = np.concatenate([feats[split]["text"], feats[split]["dinov2"]], 1)
    return {"computed": n, "fill_seconds": fill_s, "dtype": args.cache_dtype,
            "max_abs_logit_diff_vs_uncached_fp32": diff, "checked_posts": k}, feats


def subset_probes(feats, train, dev) -> dict:
    """Logistic-regression probes fitted on the train subset, scored on the dev subset (as the variants)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from training.data import MSED_TASKS
    from training.metrics import task_report

    rows = {}
    with threadpool_limits(1):
        for name in feats["train"]:
            r = {}
            for t, labels in MSED_TASKS.items():
                ytr = np.array([e.labels[t] for e in train])
                yte = np.array([e.labels[t] for e in dev])
                clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
                clf.fit(feats["train"][name], ytr)
                rep = task_report(yte, clf.predict(feats["dev"][name]), list(labels))
                r[f"{t}/macro_f1"], r[f"{t}/accuracy"] = rep["macro_f1"], rep["accuracy"]
            r["macro_f1"] = float(np.mean([r[f"{t}/macro_f1"] for t in MSED_TASKS]))
            rows[f"probe:{name}"] = r
    return rows


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


FLOOR = {  # the linear-probe floor (macro-F1 %, full msed, sentiment / emotion / desire)
    "issue floor: text+image": (77.5, 71.5, 65.0),
    "issue floor: text alone": (75.4, 68.5, 66.4),
    "issue floor: image alone": (64.2, 44.5, 38.0),
}


def table(rows: dict[str, dict], tasks: list[str]) -> str:
    header = f"{'variant':<22} " + " ".join(f"{t[:9] + ' F1':>12} {t[:9] + ' acc':>13}" for t in tasks) + "  mean F1"
    lines = [header, "-" * len(header)]
    for v, r in rows.items():
        lines.append(f"{v:<22} " + " ".join(f"{100 * r[f'{t}/macro_f1']:>12.1f} {100 * r[f'{t}/accuracy']:>13.1f}"
                                            for t in tasks) + f"  {100 * r['macro_f1']:.1f}")
    for name, f1 in FLOOR.items():
        lines.append(f"{name:<22} " + " ".join(f"{x:>12.1f} {'-':>13}" for x in f1) + f"  {sum(f1) / 3:.1f}")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The report's table (variants finished so far + probes + the issue's floor) as Markdown, in %."""
    from training.data import MSED_TASKS

    tasks = list(MSED_TASKS)
    head = "| variant | " + " | ".join(f"{t} F1 | {t} acc" for t in tasks) + " | mean F1 |"
    lines = [head, "|" + "---|" * (2 * len(tasks) + 2)]
    for v, r in {**report.get("variants", {}), **report.get("probes", {})}.items():
        lines.append(f"| {v} | " + " | ".join(f"{100 * r[f'{t}/macro_f1']:.1f} | {100 * r[f'{t}/accuracy']:.1f}"
                                             for t in tasks) + f" | {100 * r['macro_f1']:.1f} |")
    for name, f1 in FLOOR.items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.1f} | -" for x in f1) + f" | {sum(f1) / 3:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "msed_report.json")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "msed_report")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "sydes" / "features")
    p.add_argument("--cache-dtype", default="float16", choices=["float32", "float16"])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--limit", type=int, default=None, help="rows read per split (smoke runs)")
    p.add_argument("--train-subset", type=int, default=None, help="fixed random subset of train (CPU budget)")
    p.add_argument("--dev-subset", type=int, default=None, help="fixed random subset of dev (CPU budget)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--pretrain-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-4, help="decoder + pooling + heads learning rate")
    p.add_argument("--train-text-encoder", action="store_true",
                   help="train the text encoder (recipe lr) instead of freezing and caching it")
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--cache-speedup", action="store_true", help="only measure steps/s with vs without cache")
    p.add_argument("--speed-samples", type=int, default=32)
    p.add_argument("--tmp", default="/tmp/sydes_speed")
    p.add_argument("--markdown", type=Path, default=None, help="only print the table of a report JSON as Markdown")
    args = p.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0

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
    train = subset(read_split(str(args.data), "train", None, tasks=MSED_TASKS, limit=args.limit),
                   args.train_subset, args.seed)
    dev = subset(read_split(str(args.data), "dev", None, tasks=MSED_TASKS, limit=args.limit),
                 args.dev_subset, args.seed + 1)
    tasks = list(MSED_TASKS)
    t_start = time.perf_counter()
    report = {"data": str(args.data), "train_rows": len(train), "dev_rows": len(dev), "preset": "edge",
              "recipe": {"image_encoder": "frozen, 5-view outputs cached once (shared by all variants)",
                         "text_encoder": "trained (recipe lr)" if args.train_text_encoder else
                         "frozen, outputs cached once per variant (report recipe)",
                         "trained": "text_proj, ln*_post, decoder, pooling, heads (+ text encoder if trained)",
                         "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
                         "token_padding": "trimmed to each batch's longest caption"},
              "selection": "best epoch by dev macro-F1 (dev is also the evaluation split)",
              "args": {k: str(v) for k, v in vars(args).items()}, "variants": {}}

    def save() -> None:
        report["wall_seconds"] = time.perf_counter() - t_start
        atomic_write_text(args.out, json.dumps(report, indent=2))

    report["cache"], feats = fill_cache_and_check(args, train, dev)
    print(f"cache: {json.dumps(report['cache'])}", flush=True)
    report["probes"] = subset_probes(feats, train, dev)
    save()
    print(table(report["probes"], tasks), flush=True)
    rows: dict[str, dict] = report["variants"]
    for v in variants:
        t0 = time.perf_counter()
        init = None
        if v == "mim+mixed":
            init = pretrain(args, train, args.runs)
            report["pretrain_seconds"] = time.perf_counter() - t0
        rows[v] = run_variant(v, args, train, dev, args.runs, init=init)
        rows[v]["seconds"] = time.perf_counter() - t0
        print(f"{v} ({rows[v]['seconds']:.0f} s): " + ", ".join(
            f"{k} {rows[v][k]:.4f}" for k in sorted(rows[v]) if "macro_f1" in k), flush=True)
        save()  # incremental: a cut-short run still leaves every finished variant
    text = table({**rows, **report["probes"]}, tasks)
    report["table"] = text
    print(text)
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
