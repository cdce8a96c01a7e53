"""The runtime's speed targets, each measured against its baseline in the same run (medians, ratios).

    python benchmarks/runtime_targets.py [--only ceiling,reference,edge,host,import,microbatch,rss] [--json OUT]
                                         [--repeats 5] [--posts 64] [--calib-samples 48]

Parts (one table at the end; `target` says what the issue asks for):
  ceiling     GEMM throughput of torch FP32, onnxruntime FP32 and onnxruntime INT8 (benchmarks/gemm_ceiling.py)
              on this machine, in this run: the bound on the reference ratios below (the 6x / 2x targets
              assume DESIGN.md's Zen 5, where INT8 GEMM is 8.0x torch FP32 and onnxruntime FP32 2.1x).
  reference   reference preset (CLIP ViT-B/16, random weights), one task, batch 16: INT8 and FP32 bundles
              through sdk.Analyzer vs the same weights in torch eager FP32 -- model-only and end-to-end
              (JPEG bytes -> decode + views + tokenise + model). Targets: INT8 >= 6x, FP32 >= 2x torch.
  edge        edge preset, INT8, three tasks: ms per post at batch 16 (target <= 60 ms), model and e2e.
  host        stream() over real posts: share of the end-to-end time that is not model time
              (target <= 15%): 1 - (model-only time of the same batches) / (stream wall time).
  import      `import sdk` in a fresh interpreter (target < 0.3 s) and that it loads no torch / onnxruntime.
  microbatch  16 threads via Analyzer.submit vs the same posts one at a time (target >= 3x throughput;
              p99 latency < max delay + one batch's model time), edge INT8.
  rss         peak RSS of `sydes analyze` (a child process) on the edge INT8 bundle over a small JSONL.

Checkpoints (random weights, seeded) and bundles are cached under $SYDES_BENCH_CACHE
(default ~/.cache/sydes/bench) and reused on rerun; each export runs in a child process so its memory is
returned before timing. Images: /work/shared/data/msed-mini/dev/images (read in place) or, when absent,
synthetic posts (calibration.data.generated_posts). The machine's load average is printed with each part:
on a shared machine the figures are noisy, so every timing is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

PARTS = ("ceiling", "reference", "edge", "host", "import", "microbatch", "rss")
MSED = Path(os.environ.get("SYDES_MSED", ROOT.parent / "shared" / "data" / "msed-mini"))  # ../shared beside the checkout
CACHE = Path(os.environ.get("SYDES_BENCH_CACHE", "~/.cache/sydes/bench")).expanduser()
BATCH = 16
TEXTS = ["a happy day at the beach with friends", "so sad, lost my dog today",
         "angry about the traffic again, every single morning the same queue on the bridge",
         "family dinner, love these people", "Portrait of a young woman standing in meadow, laughing",
         "Cropped view of a businessman crouched as a giant shoe comes down on him"]


# --- helpers ------------------------------------------------------------------------------------------
def load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of `fn` in ms over `repeats` runs (after `warmup` untimed ones), and all runs."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs), runs


def posts(n: int) -> list[tuple[bytes, str]]:
    """`n` (JPEG bytes, caption) posts: MSED dev images read in place, else synthetic JPEGs."""
    folder = MSED / "dev" / "images"
    files = sorted(folder.glob("*.jpg"), key=lambda p: (len(p.stem), p.stem))[:n] if folder.is_dir() else []
    out = [(f.read_bytes(), TEXTS[i % len(TEXTS)]) for i, f in enumerate(files)]
    if len(out) < n:
        import numpy as np
        from PIL import Image

        from calibration.data import generated_posts

        for i, p in enumerate(generated_posts(n - len(out), seed=7)):
            buf = io.BytesIO()
            Image.fromarray(np.asarray(p.image)).save(buf, format="JPEG", quality=90)
            out.append((buf.getvalue(), TEXTS[(len(out) + i) % len(TEXTS)]))
    return out


def image_source() -> str:
    return f"{MSED}/dev/images (JPEG, real)" if (MSED / "dev" / "images").is_dir() else "synthetic JPEGs"


# --- checkpoints and bundles (cached) -----------------------------------------------------------------
def _key(preset: str, tasks: tuple[str, ...]) -> Path:
    return CACHE / f"{preset}-{'+'.join(tasks)}-seed0"


def _build(preset: str, tasks: tuple[str, ...], precision: str, calib_samples: int) -> None:
    """Child-process body: seeded random checkpoint (cached), then the bundle."""
    import torch

    from export.pipeline import ExportOptions, export_checkpoints
    from training.runner import build_model

    ckpt = _key(preset, tasks) / "checkpoint"
    if not (ckpt / "model.safetensors").is_file():
        torch.manual_seed(0)
        model, tok = build_model(preset=preset, tasks=list(tasks), offline_backbones=False)
        with tempfile.TemporaryDirectory() as tmp:
            tok.save(Path(tmp) / "tokenizer.json")
            model.eval().save_pretrained(ckpt, tokenizer_file=Path(tmp) / "tokenizer.json")
        del model
    calib = None
    if precision == "int8":
        calib = str(MSED) if (MSED / "train" / "train.csv").is_file() else "generated"
    out = _key(preset, tasks) / f"{precision}.sydes"
    t = time.perf_counter()
    rep = export_checkpoints([ckpt], out, ExportOptions(precision=precision, calib=calib,
                                                        calib_samples=calib_samples, eval_samples=0,
                                                        overwrite=True))
    print(rep.summary(), file=sys.stderr)
    print(f"exported {out} in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def bundle(preset: str, tasks: tuple[str, ...], precision: str, calib_samples: int) -> Path:
    out = _key(preset, tasks) / f"{precision}.sydes"
    if not (out / "manifest.json").is_file():
        print(f"[build] {out} (once; cached for reruns) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, "--_build", f"{preset}:{','.join(tasks)}:{precision}",
                        "--calib-samples", str(calib_samples)], check=True, cwd=ROOT)
    return out


# --- measurement building blocks ----------------------------------------------------------------------
def ort_figures(bundle_path: Path, data: list[tuple[bytes, str]], repeats: int) -> dict[str, float]:
    """Model-only and e2e median ms per batch of BATCH through sdk.Analyzer."""
    from sdk import Analyzer

    batch = data[:BATCH]
    with Analyzer(bundle_path, device="cpu", max_batch_size=BATCH) as az:
        feeds = feeds_for(az, batch)
        model, _ = median_ms(lambda: az.backend.run(feeds), repeats)
        e2e, _ = median_ms(lambda: az.analyze_batch(batch), repeats)
        info = az.info
    return {"model_ms": model, "e2e_ms": e2e, "threads": info.device, "precision": info.precision}


def feeds_for(az: Any, batch: list[tuple[bytes, str]]) -> dict[str, Any]:
    """The exact arrays Analyzer hands its backend for `batch` (views, ids trimmed as it trims them)."""
    import numpy as np

    prepared = [az._prepare(img, text) for img, text in batch]
    ids, mask = az.tokenizer.encode_batch([p[2] for p in prepared])
    if az.trim:
        ids, mask = az.tokenizer.trim(ids, mask)
    return {"global_pixels": np.stack([p[0] for p in prepared]),
            "canvas_pixels": np.stack([p[1] for p in prepared]), "input_ids": ids, "attention_mask": mask}


def torch_figures(ckpt: Path, bundle_path: Path, data: list[tuple[bytes, str]], repeats: int) -> dict[str, float]:
    """The same weights in torch eager FP32: model-only on the same arrays, and e2e (same host code,
    decoding inline as a plain script would, then the torch forward)."""
    import torch

    from sdk import Analyzer
    from training.model import SyDES

    batch = data[:BATCH]
    torch.set_num_threads(os.cpu_count() or 1)
    model = SyDES.from_pretrained(ckpt).eval()
    # The Analyzer only lends its host code (decode, tokeniser): no model session is kept warm.
    with Analyzer(bundle_path, device="cpu", max_batch_size=BATCH, warmup=False) as az:
        feeds = feeds_for(az, batch)
        t = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def fwd(t: dict[str, Any] = t) -> Any:
            with torch.inference_mode():
                return model(t["input_ids"], t["attention_mask"], global_pixels=t["global_pixels"],
                             canvas_pixels=t["canvas_pixels"])

        def e2e() -> Any:
            f = feeds_for(az, batch)
            return fwd({k: torch.from_numpy(v) for k, v in f.items()})

        model_ms, _ = median_ms(fwd, repeats)
        e2e_ms, _ = median_ms(e2e, max(1, repeats // 2), warmup=0)
    return {"model_ms": model_ms, "e2e_ms": e2e_ms, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


# --- parts --------------------------------------------------------------------------------------------
def part_ceiling(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from gemm_ceiling import DESIGN_GOPS, measure

    r = measure(repeats=max(5, args.repeats))
    r["load"] = load()
    for key, base, what, target in (("int8_over_torch", "ort_int8", "INT8 u8s8", "6x target"),
                                    ("ort_fp32_over_torch", "ort_fp32", "onnxruntime FP32", "2x target")):
        premise = DESIGN_GOPS[base] / DESIGN_GOPS["torch_fp32"]
        rows.append(_row(f"GEMM ceiling: {what} vs torch FP32", f"{r[base]:.0f} GOP/s",
                         f"{r['torch_fp32']:.0f} GFLOP/s", r[key], f"premise of {target}: {premise:.1f}x", None,
                         r["load"], "bounds the reference rows"))
    return r


def part_reference(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    tasks = ("sentiment",)
    fp32 = bundle("reference", tasks, "fp32", args.ref_calib_samples)
    int8 = bundle("reference", tasks, "int8", args.ref_calib_samples)
    data = posts(BATCH)
    print(f"[reference] load {load()}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"load_before": load()}
    # Torch in a child process: its arena would otherwise stay in this process during the ORT timings.
    out["torch"] = _child("torch_ref", args)
    out["int8"] = ort_figures(int8, data, args.repeats)
    out["fp32"] = ort_figures(fp32, data, args.repeats)
    out["load_after"] = load()
    tm, te = out["torch"]["model_ms"], out["torch"]["e2e_ms"]
    for name, target in (("int8", 6.0), ("fp32", 2.0)):
        r = out[name]
        for kind, base in (("model", tm), ("e2e", te)):
            ms = r[f"{kind}_ms"]
            rows.append(_row(f"reference {name.upper()} vs torch eager, {kind}, b{BATCH}",
                             f"{ms / BATCH:.0f} ms/post", f"{base / BATCH:.0f} ms/post", base / ms,
                             f">= {target:g}x", base / ms >= target, out["load_after"]))
    return out


def part_edge(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    b = bundle("edge", ("sentiment", "emotion", "desire"), "int8", args.calib_samples)
    print(f"[edge] load {load()}", file=sys.stderr, flush=True)
    r = ort_figures(b, posts(BATCH), args.repeats)
    r["load"] = load()
    for kind in ("model", "e2e"):
        ms = r[f"{kind}_ms"] / BATCH
        rows.append(_row(f"edge INT8 (3 tasks), {kind}, b{BATCH}", f"{ms:.1f} ms/post", "-", None,
                         "<= 60 ms/post", ms <= 60, r["load"]))
    return r


def part_host(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from sdk import Analyzer

    b = bundle("edge", ("sentiment", "emotion", "desire"), "int8", args.calib_samples)
    data = posts(args.posts)
    print(f"[host] load {load()}", file=sys.stderr, flush=True)
    with Analyzer(b, device="cpu", max_batch_size=BATCH) as az:
        batches = [feeds_for(az, data[i:i + BATCH]) for i in range(0, len(data), BATCH)]
        in_stream: list[float] = []
        run = az.backend.run

        def timed_run(feeds: dict[str, Any]) -> Any:
            t = time.perf_counter()
            try:
                return run(feeds)
            finally:
                in_stream.append(time.perf_counter() - t)

        def model_only() -> None:
            for f in batches:
                run(f)

        def stream() -> None:
            for r in az.stream(data, batch_size=BATCH):
                if not r.ok:
                    raise RuntimeError(r.error)

        model_ms, _ = median_ms(model_only, args.repeats)
        az.backend.run = timed_run  # type: ignore[method-assign]
        walls = []
        shares_idle = []
        stream()  # warm the stream's decode threads
        for _ in range(args.repeats):
            in_stream.clear()
            t = time.perf_counter()
            stream()
            w = time.perf_counter() - t
            walls.append(w * 1000)
            shares_idle.append(1 - sum(in_stream) / w)
        az.backend.run = run  # type: ignore[method-assign]
        # the host work itself, one thread, no model running: decode + views + tokenise per post
        def host_only() -> None:
            for img, text in data:
                az._prepare(img, text)
            az.tokenizer.encode_batch([text for _, text in data])

        host_ms, _ = median_ms(host_only, max(1, args.repeats // 2))
    wall = statistics.median(walls)
    share = 1 - model_ms / wall
    r = {"posts": len(data), "stream_wall_ms": wall, "model_only_ms": model_ms, "host_share": share,
         "model_idle_share": statistics.median(shares_idle), "host_cpu_ms_per_post": host_ms / len(data),
         "load": load()}
    rows.append(_row(f"stream() host share (edge INT8, {len(data)} posts)", f"{share * 100:.1f}%",
                     f"model {model_ms / len(data):.1f} ms/post", None, "<= 15%", share <= 0.15, r["load"],
                     note=f"model idle {r['model_idle_share'] * 100:.1f}%; host CPU "
                          f"{r['host_cpu_ms_per_post']:.1f} ms/post"))
    return r


def part_import(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    code = ("import sys, time; t = time.perf_counter(); import sdk; d = time.perf_counter() - t; "
            "import json; print(json.dumps({'s': d, 'torch': 'torch' in sys.modules, "
            "'onnxruntime': 'onnxruntime' in sys.modules, 'numpy': 'numpy' in sys.modules}))")
    runs = []
    for _ in range(max(5, args.repeats)):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
        runs.append(json.loads(p.stdout))
    s = statistics.median(x["s"] for x in runs)
    heavy = [m for m in ("torch", "onnxruntime") if any(x[m] for x in runs)]
    r = {"seconds": s, "heavy_modules": heavy, "load": load()}
    rows.append(_row("import sdk (fresh interpreter)", f"{s * 1000:.0f} ms",
                     "-", None, "< 300 ms, no torch", s < 0.3 and not heavy, r["load"],
                     note="loads " + (", ".join(heavy) if heavy else "no torch / onnxruntime")))
    return r


def part_microbatch(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np
    from runtime_microbatch import _posts

    from sdk import Analyzer

    b = bundle("edge", ("sentiment", "emotion", "desire"), "int8", args.calib_samples)
    data = _posts(args.posts)
    callers, delay_ms = 16, 2.0
    print(f"[microbatch] load {load()}", file=sys.stderr, flush=True)
    with Analyzer(b, device="cpu", max_batch_size=BATCH, max_delay_ms=delay_ms) as az:
        feeds = feeds_for(az, data[:BATCH])
        batch_ms, _ = median_ms(lambda: az.backend.run(feeds), args.repeats)
        # what batching itself buys on this machine (model only, b16 vs b1): no micro-batcher can beat it
        feeds1 = feeds_for(az, data[:1])
        one_ms, _ = median_ms(lambda: az.backend.run(feeds1), args.repeats)
        for p in data[:4]:
            az.analyze(*p)
        seq_walls, conc_walls, lat1, latc = [], [], [], []
        for _ in range(max(1, args.repeats // 2)):
            t0 = time.perf_counter()
            for p in data:
                t = time.perf_counter()
                az.analyze(*p)
                lat1.append((time.perf_counter() - t) * 1000)
            seq_walls.append(time.perf_counter() - t0)
            def caller(k: int, barrier: threading.Barrier, lock: threading.Lock) -> None:
                barrier.wait()
                for i in range(k, len(data), callers):
                    t = time.perf_counter()
                    r = az.submit(*data[i]).result()
                    dt = (time.perf_counter() - t) * 1000
                    if not r.ok:
                        raise RuntimeError(r.error)
                    with lock:
                        latc.append(dt)

            barrier, lock = threading.Barrier(callers), threading.Lock()
            threads = [threading.Thread(target=caller, args=(k, barrier, lock)) for k in range(callers)]
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            conc_walls.append(time.perf_counter() - t0)
        mb = az._batcher
        mean_batch = mb.items / max(1, mb.batches) if mb else 0.0
    seq, conc = statistics.median(seq_walls), statistics.median(conc_walls)
    p99 = float(np.percentile(latc, 99))
    bound = delay_ms + batch_ms
    r = {"posts": len(data), "callers": callers, "seq_posts_s": len(data) / seq, "conc_posts_s": len(data) / conc,
         "ratio": seq / conc, "p50_one_ms": float(np.percentile(lat1, 50)), "p99_submit_ms": p99,
         "p50_submit_ms": float(np.percentile(latc, 50)), "batch16_model_ms": batch_ms, "mean_batch": mean_batch,
         "p99_bound_ms": bound, "batch1_model_ms": one_ms, "batching_ceiling": BATCH * one_ms / batch_ms,
         "load": load()}
    rows.append(_row(f"  ceiling: model throughput b{BATCH} vs b1 (edge INT8)", f"{BATCH * 1000 / batch_ms:.1f} posts/s",
                     f"{1000 / one_ms:.1f} posts/s", r["batching_ceiling"], "bounds the row below", None, r["load"]))
    rows.append(_row(f"{callers} callers submit vs one at a time (edge INT8)", f"{len(data) / conc:.1f} posts/s",
                     f"{len(data) / seq:.1f} posts/s", seq / conc, ">= 3x", seq / conc >= 3, r["load"],
                     note=f"mean batch {mean_batch:.1f}"))
    rows.append(_row("  submit p99 latency", f"{p99:.0f} ms", f"bound {bound:.0f} ms", None,
                     "< max delay + 1 batch", p99 < bound, r["load"],
                     note=f"p50 {r['p50_submit_ms']:.0f} ms; batch-16 model {batch_ms:.0f} ms"))
    return r


def part_rss(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    b = bundle("edge", ("sentiment", "emotion", "desire"), "int8", args.calib_samples)
    data = posts(32)
    print(f"[rss] load {load()}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="sydes-rss.") as tmp:
        d = Path(tmp)
        with open(d / "posts.jsonl", "w", encoding="utf-8") as f:
            for i, (img, text) in enumerate(data):
                (d / f"{i}.jpg").write_bytes(img)  # a temp copy outside the repo, deleted with the folder
                f.write(json.dumps({"id": i, "image": f"{i}.jpg", "text": text}) + "\n")
        cmd = [sys.executable, "-m", "sdk.cli", "analyze", str(b), "--input", str(d / "posts.jsonl"),
               "--output", str(d / "out.jsonl"), "--no-progress"]
        t = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage (not every child's maximum)
        wall = time.perf_counter() - t
        err = p.stderr.read().decode() if p.stderr else ""
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"sydes analyze failed ({p.returncode}): {err[-2000:]}")
        n_out = len((d / "out.jsonl").read_text(encoding="utf-8").splitlines())
    rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
    graph_mb = (b / "model.onnx").stat().st_size / 1e6
    r = {"peak_rss_mb": rss_mb, "posts": n_out, "wall_s": wall, "graph_mb": graph_mb, "load": load()}
    rows.append(_row(f"sydes analyze peak RSS (edge INT8, {n_out} posts)", f"{rss_mb:.0f} MB",
                     f"graph {graph_mb:.0f} MB", None, "report", None, r["load"],
                     note=f"{wall:.1f} s wall incl. start-up"))
    return r


def _child(what: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (memory isolation); -> its JSON."""
    p = subprocess.run([sys.executable, __file__, "--_child", what, "--repeats", str(args.repeats),
                        "--ref-calib-samples", str(args.ref_calib_samples)], capture_output=True, text=True,
                       cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"child {what} failed: {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _row(name: str, value: str, baseline: str, ratio: float | None, target: str, ok: bool | None, load: str,
         note: str = "") -> dict[str, Any]:
    return {"measure": name, "value": value, "baseline": baseline, "ratio": ratio, "target": target,
            "met": ok, "load": load, "note": note}


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'measure':<52} {'value':>14} {'baseline':>22} {'ratio':>7}  {'target':<22} {'met':<4} {'load1,5,15':<15} note"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        lines.append(f"{r['measure']:<52} {r['value']:>14} {r['baseline']:>22} {ratio:>7}  {r['target']:<22} "
                     f"{met:<4} {r['load']:<15} {r['note']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (medians)")
    ap.add_argument("--posts", type=int, default=64, help="posts for the host and microbatch parts")
    ap.add_argument("--calib-samples", type=int, default=12, help="INT8 calibration posts (edge bundle)")
    # onnxruntime's calibrators hold every sample's activations in memory (~0.4 GB/post for edge, more
    # for reference, measured: 48 edge posts were OOM-killed at 20 GB): keep them few. Ranges do not change the speed.
    ap.add_argument("--ref-calib-samples", type=int, default=6, help="INT8 calibration posts (reference)")
    ap.add_argument("--_build", help=argparse.SUPPRESS)
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._build:
        preset, tasks, precision = args._build.split(":")
        _build(preset, tuple(tasks.split(",")), precision, args.calib_samples)
        return
    if args._child == "torch_ref":
        tasks = ("sentiment",)
        fig = torch_figures(_key("reference", tasks) / "checkpoint",
                            bundle("reference", tasks, "fp32", args.ref_calib_samples), posts(BATCH), args.repeats)
        fig["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(fig))
        return
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in only if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "load_start": load(), "images": image_source(),
                              "repeats": args.repeats, "batch": BATCH, "parts": {}}
    fns = {"ceiling": part_ceiling, "reference": part_reference, "edge": part_edge, "host": part_host, "import": part_import,
           "microbatch": part_microbatch, "rss": part_rss}
    for part in PARTS:
        if part in only:
            report["parts"][part] = fns[part](args, rows)
    report["rows"] = rows
    report["load_end"] = load()
    print(f"{os.cpu_count()} CPUs; load average at start {report['load_start']}, at end {report['load_end']}; "
          f"images: {report['images']}; medians of {args.repeats} runs; batch {BATCH}")
    print(format_table(rows))
    if args.json:
        from sdk.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
