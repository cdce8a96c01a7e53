"""`sydes analyze` single-process vs `--engine ray` on a local Ray, and the resume scan's memory.

    python benchmarks/ray_scaling.py [BUNDLE] [--posts 1000] [--repeats 3] [--actors 2] [--resume-rows 1000000]
                                     [--json OUT]

Without BUNDLE a tiny fake bundle is built (tests/bundle_fixture.py: its model costs ~nothing, so the
figures are the runtime's own cost: JPEG decode + views + tokenise, plus Ray's overhead -- the point of
the comparison). Posts: `--posts` synthetic JPEGs (smooth gradients, 480x320) + short texts, made here,
every 50th one broken (missing image) so failed rows travel too.

  single   `sydes analyze` in this process (--threads 2, 2 decoding threads), wall median of --repeats.
  ray      the same job through `--engine ray`'s run_job on a local Ray started once (ray.init with
           num_cpus = this machine's CPUs, not counted; actor start-up and bundle loading are counted),
           --actors actors with 1 model thread and 1 decoding thread each; wall median; ratio vs single.
           Also one cold run of the CLI (`--engine ray` starting its own Ray) for the full price.
  killed   one ray run whose first batch kills its actor (os._exit); Ray restarts it and retries.
  rows     every run's output is checked against the single-process rows: lost / duplicated counts.
  resume   peak memory of the resume scan (sdk.commands.analyze_output.scan_output) over a generated
           output of 10k rows and of --resume-rows rows (realistic row lines), each in a fresh child
           process: peak RSS growth and tracemalloc peak; and the old key-set resume (git 7069aa2's
           load_done: the whole file read, every key in a set) at the same sizes, for comparison.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
TEXTS = ["a happy day at the beach with friends", "so sad, lost my dog today", "family dinner, love these people",
         "angry about the traffic again", "the flower in the house", "a night out with people"]


def make_posts(folder: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:320, 0:480].astype(np.float32)
    rows = []
    for i in range(1, n + 1):
        if i % 50:
            c = rng.uniform(0, 255, 3)
            g = rng.uniform(-0.3, 0.3, (2, 3))
            img = np.clip(c + yy[..., None] * g[0] + xx[..., None] * g[1], 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=90)
            (folder / "images" / f"{i}.jpg").write_bytes(buf.getvalue())
        rows.append(json.dumps({"id": f"post-{i}", "image": f"images/{i}.jpg", "text": TEXTS[i % len(TEXTS)]}))
    p = folder / "posts.jsonl"
    p.write_text("\n".join(rows) + "\n")
    return p


def rows_of(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(x) for p in paths for x in p.read_text().splitlines() if x.strip()]


def compare(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    seen: dict[int, dict[str, Any]] = {}
    dup = 0
    for r in got:
        dup += r["row"] in seen
        seen[r["row"]] = r
    lost = sum(1 for w in want if w["row"] not in seen)
    diff = 0.0
    same_labels = True
    for w in want:
        g = seen.get(w["row"])
        if g is None or w["tasks"] is None:
            continue
        for t, tw in w["tasks"].items():
            same_labels &= g["tasks"][t]["label"] == tw["label"]
            diff = max(diff, float(np.abs(np.array(list(g["tasks"][t]["probs"].values()))
                                          - np.array(list(tw["probs"].values()))).max()))
    return {"lost": lost, "duplicated": dup, "labels_equal": bool(same_labels), "max_prob_diff": diff}


def run_single(bundle: Path, posts: Path, out: Path) -> float:
    from sdk.cli import main

    out.unlink(missing_ok=True)
    Path(str(out) + ".done").unlink(missing_ok=True)
    t0 = time.perf_counter()
    rc = main(["analyze", str(bundle), "--input", str(posts), "--output", str(out), "--batch-size", "16",
               "--threads", "2", "--workers", "2", "--no-progress"])
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"single-process run failed ({rc})")
    return wall


def run_ray(bundle: Path, posts: Path, out: Path, actors: int, predictor: type | None = None) -> float:
    import shutil

    from sdk.commands.analyze import plan_input
    from sdk.commands.analyze_ray import RayJob, run_job

    shutil.rmtree(out, ignore_errors=True)
    args = argparse.Namespace(input=posts, id_column=None, text_column=None, image_column=None,
                              image_pattern=None, image_root=None)
    t0 = time.perf_counter()
    run_job(plan_input(args), RayJob(bundle=str(bundle), output=out, actors=actors, batch_size=16, workers=1,
                                     threads=1), predictor=predictor)
    return time.perf_counter() - t0


RESUME_CHILD = r"""
import json, sys, tracemalloc
from pathlib import Path
sys.path.insert(0, sys.argv[3])
path, kind = Path(sys.argv[1]), sys.argv[2]
def hwm():  # this process's peak RSS in KiB (ru_maxrss would carry the parent's peak across fork + exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
before = hwm()
if kind == "new":
    from sdk.commands.analyze_output import scan_output
    fn = lambda: scan_output(path).done
else:  # the old resume: every key in a set (git 7069aa2 sdk/commands/analyze.py load_done, inlined)
    def fn():
        data = path.read_bytes()
        done = set()
        for line in data.split(b"\n"):
            if line.strip():
                done.add(str(json.loads(line)["row"]))
        return len(done)
tracemalloc.start()
n = fn()
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
after = hwm()
print(json.dumps({"rows": n, "tracemalloc_peak_mib": peak / 2**20, "rss_growth_mib": (after - before) / 1024}))
"""


def write_output(path: Path, n: int, template: dict[str, Any]) -> None:
    from sdk.results import record_line

    body = {k: v for k, v in template.items() if k not in ("row", "id")}
    with open(path, "w", encoding="utf-8") as f:
        chunk = []
        for k in range(1, n + 1):
            chunk.append(record_line({"row": k, "id": f"post-{k}", **body}))
            if len(chunk) == 20_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))


def resume_memory(tmp: Path, sizes: list[int], template: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        p = tmp / f"done-{n}.jsonl"
        write_output(p, n, template)
        for kind in ("new", "old"):
            r = subprocess.run([sys.executable, "-c", RESUME_CHILD, str(p), kind, str(ROOT)], capture_output=True,
                               text=True, check=True, timeout=600)
            rec = json.loads(r.stdout)
            rec.update(kind="scan (this change)" if kind == "new" else "key set (before)", file_mib=p.stat().st_size / 2**20)
            out.append(rec)
            print(f"  resume {rec['kind']:<18} {n:>9,} rows ({rec['file_mib']:.0f} MiB file): tracemalloc peak "
                  f"{rec['tracemalloc_peak_mib']:.1f} MiB, RSS growth {rec['rss_growth_mib']:.1f} MiB", flush=True)
        p.unlink()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", nargs="?", type=Path)
    ap.add_argument("--posts", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--resume-rows", type=int, default=1_000_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="sydes-ray-bench-"))
    bundle = args.bundle
    if bundle is None:
        from bundle_fixture import build_fake_bundle

        bundle = build_fake_bundle(tmp / "fake.sydes")
    posts = make_posts(tmp / "posts", args.posts)
    print(f"{args.posts} posts, bundle {bundle.name}, load {os.getloadavg()[0]:.2f}, cpus {os.cpu_count()}", flush=True)
    report: dict[str, Any] = {"posts": args.posts, "bundle": str(bundle), "cpus": os.cpu_count()}

    single = [run_single(bundle, posts, tmp / "single.jsonl") for _ in range(args.repeats)]
    want = rows_of([tmp / "single.jsonl"])
    report["single_s"] = single
    print(f"  single-process walls {[f'{s:.2f}' for s in single]} s, median {statistics.median(single):.2f}", flush=True)

    # the cold CLI run first (it starts and stops its own Ray), then a Ray kept up for the warm runs
    from sdk.cli import main as cli

    t0 = time.perf_counter()
    rc = cli(["analyze", str(bundle), "--input", str(posts), "--output", str(tmp / "ray-cold"), "--engine", "ray",
              "--actors", str(args.actors), "--threads", "1", "--workers", "1", "--no-progress"])
    report["ray_cold_cli_s"] = time.perf_counter() - t0
    report["ray_cold_rows"] = compare(rows_of(sorted((tmp / "ray-cold").glob("*.jsonl"))), want)
    print(f"  ray cold CLI (starts Ray) rc={rc}: {report['ray_cold_cli_s']:.2f} s, {report['ray_cold_rows']}", flush=True)

    import ray

    from sdk.commands.analyze_ray import start_ray

    # the workers import the tests' dying predictor from tests/ (start_ray adds this checkout's root)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    start_ray(None)
    try:
        from test_ray_data import DyingPredictor  # the tests' actor that os._exit()s on its first batch

        walls, checks = [], []
        for _ in range(args.repeats):
            walls.append(run_ray(bundle, posts, tmp / "ray", args.actors))
            checks.append(compare(rows_of(sorted((tmp / "ray").glob("*.jsonl"))), want))
        report["ray_s"], report["ray_rows"] = walls, checks
        ratio = statistics.median(walls) / statistics.median(single)
        report["ratio_ray_over_single"] = ratio
        print(f"  ray warm walls {[f'{s:.2f}' for s in walls]} s, median {statistics.median(walls):.2f}; "
              f"ratio {ratio:.2f}x (target <= 1.3x); rows {checks[-1]}", flush=True)
        (bundle.parent / "killed-once").unlink(missing_ok=True)
        kw = run_ray(bundle, posts, tmp / "ray-killed", args.actors, predictor=DyingPredictor)
        report["killed_s"] = kw
        report["killed_actor_died"] = (bundle.parent / "killed-once").is_file()
        report["killed_rows"] = compare(rows_of(sorted((tmp / "ray-killed").glob("*.jsonl"))), want)
        print(f"  ray with a killed actor: {kw:.2f} s, died={report['killed_actor_died']}, rows {report['killed_rows']}",
              flush=True)
    finally:
        ray.shutdown()

    sizes = sorted({min(10_000, args.resume_rows), args.resume_rows})
    report["resume"] = resume_memory(tmp, sizes, want[0])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
