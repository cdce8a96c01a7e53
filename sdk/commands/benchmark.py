"""`sydes benchmark BUNDLE`: latency percentiles and throughput per batch size, peak RSS, backend.

Two timings per batch size: `model` (the backend alone on ready arrays) and `e2e` (analyze_batch on JPEG
bytes: decode + views + tokenise + model). `--compare CHECKPOINT` (torch eager on the same inputs) is
added by training/commands/benchmark.py, the module the CLI runs: sdk never loads training.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEXTS = ["a happy day at the beach with friends", "so sad, lost my dog today",
         "angry about the traffic again", "family dinner, love these people"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdk.backends import BACKENDS

    parser.add_argument("bundle", help="the NAME.sydes/ folder")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per batch size")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--backend", default="auto", choices=("auto", *BACKENDS), help="default auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--image-size", default="640x480", help="WxH of the synthetic JPEGs")
    parser.add_argument("--no-e2e", action="store_true", help="time the model only")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="plot ms/post (p50 line, p90-p99 band) by batch size, model and e2e ([plot] extra)")


def percentiles(ms: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def _time(fn, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1e6 if sys.platform == "darwin" else r / 1e3  # bytes on macOS, KiB on Linux


def _inputs(az, n: int, size: tuple[int, int]):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    jpegs, prepared = [], []
    for i in range(n):
        # smooth random image: compresses like a photo, not like noise
        small = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        jpegs.append((buf.getvalue(), TEXTS[i % len(TEXTS)]))
        prepared.append(az._prepare(buf.getvalue(), TEXTS[i % len(TEXTS)]))
    return jpegs, prepared


def _feeds(az, prepared) -> dict[str, Any]:
    import numpy as np

    ids, mask = az.tokenizer.encode_batch([p[2] for p in prepared])
    feeds = {"input_ids": ids, "attention_mask": mask}
    if az.uses_images:  # a text-only bundle takes the text inputs alone
        feeds.update(global_pixels=np.stack([p[0] for p in prepared]), canvas_pixels=np.stack([p[1] for p in prepared]))
    return feeds


def run(args: argparse.Namespace, compare: Callable[[Any, dict[int, dict]], dict[str, Any]] | None = None) -> int:
    """`compare(analyzer, feeds_by_batch)`, when given, adds a report["compare"] section (torch eager)."""
    from sdk.analyzer import Analyzer
    from sdk.errors import ConfigError

    try:
        sizes = [int(x) for x in str(args.batch_sizes).split(",") if x.strip()]
        w, h = (int(x) for x in str(args.image_size).lower().split("x"))
    except ValueError as e:
        raise ConfigError(f"--batch-sizes takes e.g. 1,8,32 and --image-size e.g. 640x480 ({e})") from e
    if not sizes or min(sizes) < 1 or args.iters < 1:
        raise ConfigError("--batch-sizes must be positive integers and --iters >= 1")
    report: dict[str, Any] = {"bundle": str(args.bundle), "host": platform.processor() or platform.machine(),
                              "iters": args.iters, "per_batch": {}}
    with Analyzer(args.bundle, device=args.device, backend=args.backend, threads=args.threads,
                  max_batch_size=max(sizes)) as az:
        report["info"] = az.info.to_dict()
        jpegs, prepared = _inputs(az, max(sizes), (w, h))
        feeds_by_b = {b: _feeds(az, prepared[:b]) for b in sizes}
        for b in sizes:
            model_ms = _time(lambda b=b: az.backend.run(feeds_by_b[b]), args.iters, args.warmup)
            row = {"model_ms": percentiles(model_ms)}
            row["model_throughput"] = b * 1000 / row["model_ms"]["mean"]
            if not args.no_e2e:
                e2e = _time(lambda b=b: az.analyze_batch(jpegs[:b]), args.iters, args.warmup)
                row["e2e_ms"] = percentiles(e2e)
                row["e2e_throughput"] = b * 1000 / row["e2e_ms"]["mean"]
            report["per_batch"][b] = row
        if compare is not None:
            report["compare"] = compare(az, feeds_by_b)
    report["peak_rss_mb"] = peak_rss_mb()
    print(format_report(report))
    if args.json:
        from sdk.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2))
    if args.plot:
        plot_report(report, args.plot)
        print(f"plot: {args.plot}")
    return 0


def plot_report(r: dict[str, Any], path: Path) -> None:
    """ms per post against batch size: median line, p90..p99 band, for the model alone and end to end."""
    try:
        import matplotlib
    except ModuleNotFoundError as e:
        from sdk.errors import MissingExtraError

        raise MissingExtraError("matplotlib", "plot", "needed by --plot") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(b) for b in r["per_batch"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, name in (("model_ms", "model"), ("e2e_ms", "end to end")):
        rows = [r["per_batch"][b] for b in sizes if key in r["per_batch"][b]]
        if len(rows) != len(sizes):
            continue
        per = {q: [row[key][q] / b for row, b in zip(rows, sizes, strict=True)] for q in ("p50", "p90", "p99")}
        ax.plot(sizes, per["p50"], marker="o", label=f"{name} p50")
        ax.fill_between(sizes, per["p90"], per["p99"], alpha=0.2, label=f"{name} p90-p99")
    info = r.get("info", {})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per post")
    ax.set_title(f"{Path(r['bundle']).name}: {info.get('backend')} {info.get('precision')} on {info.get('device')}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_report(r: dict[str, Any]) -> str:
    i = r["info"]
    lines = [f"bundle {i['bundle']} ({i['precision']}) on {i['device']} via {i['backend']} "
             f"[{', '.join(i['providers'])}]; {r['iters']} iterations; peak RSS {r['peak_rss_mb']:.0f} MB",
             f"{'batch':>5} | {'model p50':>9} {'p90':>7} {'p99':>7} {'posts/s':>8} | "
             f"{'e2e p50':>8} {'p90':>7} {'p99':>7} {'posts/s':>8}"]
    for b, row in r["per_batch"].items():
        m = row["model_ms"]
        s = f"{b:>5} | {m['p50']:>9.2f} {m['p90']:>7.2f} {m['p99']:>7.2f} {row['model_throughput']:>8.1f} |"
        if "e2e_ms" in row:
            e = row["e2e_ms"]
            s += f" {e['p50']:>8.2f} {e['p90']:>7.2f} {e['p99']:>7.2f} {row['e2e_throughput']:>8.1f}"
        lines.append(s)
    if "compare" in r:
        c = r["compare"]
        lines.append(f"torch eager ({c['torch']}) on {c['checkpoint']}:")
        for b, row in c["per_batch"].items():
            m = row["latency_ms"]
            lines.append(f"{b:>5} | {m['p50']:>9.2f} {m['p90']:>7.2f} {m['p99']:>7.2f} {row['throughput']:>8.1f} | "
                         f"max |probs diff| {row['max_abs_prob_diff']:.2e}")
    return "\n".join(lines) + "\n(milliseconds per batch; model = backend only, e2e = JPEG bytes -> Results)"
