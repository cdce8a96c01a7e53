"""`sydes demo`: the whole product on a built-in default, end to end, in a few minutes on a laptop CPU.

1. generate a small data set in MSED's layout whose sentiment sits in a 1-pixel texture that only the
   high-resolution tiles can see (plus keywords in some captions) -- training/synthetic.py;
2. train a small SyDES model (the tiny ViT + BERT preset, three task heads) on it;
3. export it to a calibrated, verified INT8 bundle (tiler fused into the graph);
4. analyse a few held-out posts through `sdk.Analyzer` and print the results and the speed.

It lives in the export layer because it uses training, export and sdk together.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

BANNER = ("NOTE: this is a DEMONSTRATION model, trained for a few minutes on generated images and captions. "
          "Its predictions mean nothing for real posts.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=None,
                   help="folder for the data, checkpoint and bundle (default: a fresh temporary folder)")
    p.add_argument("--train-size", type=int, default=384, help="generated training posts")
    p.add_argument("--dev-size", type=int, default=96, help="generated dev posts")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="int8", choices=("fp32", "fp16", "int8"), help="bundle precision (default int8)")
    p.add_argument("--show", type=int, default=6, help="how many dev posts to print")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sydes-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(BANNER)
    print(f"working in {workdir}\n")

    # 1. data ---------------------------------------------------------------------------------------
    from training.synthetic import generate

    data = workdir / "data"
    t0 = time.perf_counter()
    if not (data / "dev" / "dev.csv").is_file():
        generate(data, splits={"train": args.train_size, "dev": args.dev_size}, seed=args.seed)
    print(f"[1/4] generated data set: {args.train_size} train / {args.dev_size} dev posts "
          f"({time.perf_counter() - t0:.1f} s)")

    # 2. training -----------------------------------------------------------------------------------
    from training.runner import train

    run_dir = workdir / "run"
    t0 = time.perf_counter()
    summary = train(stage="finetune", output=run_dir, preset="tiny_vit_bert", data=str(data),
                    epochs=args.epochs, batch_size=args.batch_size, accum=1, seed=args.seed, lrs={"other": 2e-3,
                    "text_decoder": 2e-3, "text_encoder": 1e-3, "image_encoder": 1e-3}, warmup=0.1,
                    save_every=10_000, num_workers=0, progress=True)
    best = run_dir / "best"
    # the valid label combinations of the training data: the bundle answers one consistent combination
    from training.checkpoints import label_structure_of, set_label_structure
    from training.data import read_msed

    set_label_structure(best, label_structure_of(read_msed(data, "train"), summary_tasks(best)))
    print(f"[2/4] trained tiny SyDES in {time.perf_counter() - t0:.0f} s; best dev macro-F1 (mean of tasks) "
          f"{summary.get('best')}; checkpoint {best}")

    # 3. export -------------------------------------------------------------------------------------
    from export.pipeline import ExportOptions, export_checkpoints

    bundle = workdir / f"demo-{args.precision}.sydes"
    t0 = time.perf_counter()
    report = export_checkpoints([best], bundle, ExportOptions(
        precision=args.precision, calib=str(data), calib_samples=min(128, args.train_size),
        eval_samples=min(64, args.dev_size), overwrite=True))
    val = report.manifest.get("validation", {})
    print(f"[3/4] exported {args.precision.upper()} bundle {bundle} in {time.perf_counter() - t0:.0f} s")
    print("      validation against torch: " + json.dumps(val, default=str)[:400])

    # 4. analyse ------------------------------------------------------------------------------------
    from sdk import Analyzer
    from sdk.posts import iter_rows, plan_posts

    rows = [r.check() for r in iter_rows(plan_posts(data / "dev"), check_images=True, require_labels="all")]
    posts = [(r.image, r.text) for r in rows]
    with Analyzer(bundle) as analyzer:
        print(f"[4/4] Analyzer on {analyzer.info.backend} ({', '.join(analyzer.info.providers or [])}), "
              f"precision {analyzer.info.precision}, decoding {analyzer.info.decoding}")
        t0 = time.perf_counter()
        results = analyzer.analyze_batch(posts)
        dt = time.perf_counter() - t0
        for (path, text), row, res in list(zip(posts, rows, results, strict=True))[: args.show]:
            got = {t: r.label for t, r in res.tasks.items()} if res.ok else {"error": res.error}
            print(f"  {path.name:>7}  {text[:60]!r}\n           predicted {got}\n           truth     {row.labels}")
        correct = {t: 0 for t in ("sentiment", "emotion", "desire")}
        for row, res in zip(rows, results, strict=True):
            for t in correct:
                correct[t] += bool(res.ok and res.tasks[t].label == row.labels[t])
        acc = ", ".join(f"{t} {100 * c / len(rows):.1f}%" for t, c in correct.items())
        print(f"\n  dev accuracy through the bundle: {acc}")
        print(f"  speed: {len(posts)} posts in {dt:.2f} s = {1000 * dt / len(posts):.1f} ms/post "
              f"({len(posts) / dt:.1f} posts/s, decode + preprocess + model)")
    print("\n" + BANNER)
    return 0


def summary_tasks(checkpoint: Path) -> dict[str, list[str]]:
    """The ordered task labels of a checkpoint (its config.json)."""
    return dict(json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["tasks"])
