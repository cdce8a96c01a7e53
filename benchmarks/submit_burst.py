"""A burst of `Analyzer.submit` calls: every answer equal to sequential, and the process's peak RSS.

    python benchmarks/submit_burst.py [--threads 32] [--per-thread 250] [--baseline-ref 7069aa2]

Builds the tiny fake bundle of the tests (tests/bundle_fixture.py), then in a fresh process per run:
loads an Analyzer (default settings, threads=1), answers 64 distinct posts (JPEG bytes,
--image-size, + text) one at a time, then THREADS threads each submit PER_THREAD posts (post
i % 64) at once and wait on all their Futures. Reports RSS after loading, peak RSS (ru_maxrss) and the
largest difference from the sequential answers. `--baseline-ref REF` also runs the same burst on
sdk/ as of git commit REF (before bounded submits) in the same run, for the before/after ratio.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's sdk, not an installed one

CHILD = r"""
import io, json, resource, sys, threading, time
import numpy as np
from PIL import Image
from sdk import Analyzer

bundle, threads, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
W, H = map(int, sys.argv[4].split("x"))

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

def jpeg(i):
    a = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
    b = io.BytesIO(); Image.fromarray(a).save(b, format="JPEG", quality=85); return b.getvalue()

posts = [(jpeg(i), ["a happy dog", "sad day at the beach", "party with friends", "angry man"][i % 4])
         for i in range(64)]
with Analyzer(bundle, device="cpu", threads=1) as az:
    ref = [np.concatenate([list(t.probs.values()) for t in az.analyze(*p).tasks.values()]) for p in posts]
    rss_loaded = rss_mb()
    barrier = threading.Barrier(threads)
    out = [None] * threads

    def worker(k):
        barrier.wait()
        futs = [(j % 64, az.submit(*posts[j % 64])) for j in range(k * per, (k + 1) * per)]
        out[k] = [(i, f.result(timeout=600)) for i, f in futs]

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts: t.start()
    for t in ts: t.join()
    wall = time.perf_counter() - t0
    diffs, bad = [], 0
    for rs in out:
        for i, r in rs:
            if not r.ok:
                bad += 1
                continue
            diffs.append(float(np.abs(np.concatenate([list(t.probs.values()) for t in r.tasks.values()]) - ref[i]).max()))
    info = az.info.to_dict()
print(json.dumps({"answered": len(diffs) + bad, "failed": bad, "max_abs_diff": max(diffs) if diffs else None,
                  "rss_loaded_mb": rss_loaded, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "wall_s": wall, "max_queued": info.get("max_queued")}))
"""


def run_child(sdk_root: Path, bundle: Path, threads: int, per: int, size: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(sdk_root), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", CHILD, str(bundle), str(threads), str(per), size], capture_output=True,
                       text=True, env=env, cwd=sdk_root, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"burst run failed under {sdk_root}:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--per-thread", type=int, default=250)
    ap.add_argument("--image-size", default="64x48", help="WxH of the JPEG posts (small: decoding outpaces "
                    "the model, as with a real model, so queued posts pile up decoded without a bound)")
    ap.add_argument("--baseline-ref", default="", help="git commit whose sdk/ is the 'before' run")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from bundle_fixture import build_fake_bundle

    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_fake_bundle(Path(tmp) / "fake.sydes")
        runs = {"this tree": run_child(ROOT, bundle, args.threads, args.per_thread, args.image_size)}
        if args.baseline_ref:
            base = Path(tmp) / "base"
            base.mkdir()
            arch = subprocess.run(["git", "archive", args.baseline_ref, "sdk"], cwd=ROOT, capture_output=True,
                                  check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=arch, check=True)
            runs[f"sdk @ {args.baseline_ref}"] = run_child(base, bundle, args.threads, args.per_thread, args.image_size)
    n = args.threads * args.per_thread
    print(f"burst: {args.threads} threads x {args.per_thread} submits = {n} posts ({args.image_size} JPEG bytes), "
          f"tiny bundle, CPU")
    print(f"{'run':<22}{'answered':>9}{'failed':>7}{'max|diff|':>11}{'RSS loaded':>12}{'peak RSS':>10}"
          f"{'wall s':>8}{'max_queued':>11}")
    for name, r in runs.items():
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        print(f"{name:<22}{r['answered']:>9}{r['failed']:>7}{diff:>11}{r['rss_loaded_mb']:>10.0f}MB"
              f"{r['peak_rss_mb']:>8.0f}MB{r['wall_s']:>8.1f}{str(r['max_queued'] or '-'):>11}")
    if len(runs) == 2:
        a, b = runs.values()
        print(f"peak RSS ratio this tree / baseline: {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
