"""`sydes serve` under a rising request rate on 127.0.0.1: throughput, p50 / p99, shed rate, server RSS.

    python benchmarks/serve_load.py [BUNDLE] [--rates 10,20,40,80,160] [--step-s 4] [--plot out.png]

Starts `sydes serve` as a child process (no BUNDLE: the tests' tiny fake bundle, i.e. the service's own
overhead) and drives it open-loop from this process: at each offered rate, requests (one JPEG post,
JSON + base64) leave at fixed intervals for --step-s seconds whatever the answers do, at most
--max-in-flight at once (a bound on this tool, not on the server). Per step: the rate really sent
(below the offered one when this client runs out of CPU), answered 200 per second,
p50 / p99 latency of the 200s (client's view, and p99 of the service's own
time from its Server-Timing header), p99 of the 503s (shed at once?), shed (503) and late (504) shares, and
the server's RSS (VmRSS at the step's end; VmHWM = its peak). Loopback only; bounded; asserts nothing.
Client and server share this machine's cores: on 2 cores the client's own CPU caps the top rates.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's sdk, not an installed one
MAX_RATE, MAX_STEP_S = 2000, 60  # bounded: a local measurement, not a traffic generator


def _status_kb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def start_server(bundle: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "sdk.cli", "serve", str(bundle), "--port", "0", "--device", "cpu",
           "--threads", str(args.threads), "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue),
           "--deadline-ms", str(args.deadline_ms), "--no-access-log"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    port = None
    for line in srv.stderr:
        if "Uvicorn running on http://127.0.0.1:" in line:
            port = int(line.split("http://127.0.0.1:")[1].split()[0])
            break
    if port is None:
        srv.kill()
        raise SystemExit("sydes serve did not start")
    threading.Thread(target=lambda: [None for _ in srv.stderr], daemon=True).start()  # keep the pipe drained
    return srv, port


async def step(client, body: bytes, rate: float, seconds: float, max_in_flight: int) -> dict:
    """Open loop: a request every 1/rate s for `seconds`; -> per-status latencies."""
    lat: dict[int, list[float]] = {}
    server: list[float] = []  # the service's own time of its 200s (Server-Timing)
    sem = asyncio.Semaphore(max_in_flight)
    skipped = 0

    async def one() -> None:
        t = time.perf_counter()
        try:
            r = await client.post("/v1/analyze", content=body, headers={"content-type": "application/json"})
            code = r.status_code
            if code == 200:
                server.append(float(r.headers.get("server-timing", "app;dur=nan").split("dur=")[1]))
        except Exception:  # noqa: BLE001 - a refused / reset connection counts as its own kind
            code = -1
        finally:
            sem.release()
        lat.setdefault(code, []).append((time.perf_counter() - t) * 1000)

    tasks, n, t0 = [], int(rate * seconds), time.perf_counter()
    for i in range(n):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        if sem.locked():
            skipped += 1  # the tool's own bound: not sent, reported
            continue
        await sem.acquire()
        tasks.append(asyncio.create_task(one()))
    sent_wall = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    return {"lat": lat, "server": server, "sent": len(tasks), "skipped": skipped, "wall": max(sent_wall, 1e-9)}


async def drive(port: int, srv_pid: int, args: argparse.Namespace) -> list[dict]:
    import httpx
    from PIL import Image

    a = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=85)
    body = json.dumps({"image": base64.b64encode(buf.getvalue()).decode(), "text": "a happy day"}).encode()
    rows = []
    limits = httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=args.max_in_flight)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits) as client:
        for _ in range(600):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        await step(client, body, 5, 1, args.max_in_flight)  # warm-up
        for rate in args.rates:
            s = await step(client, body, rate, args.step_s, args.max_in_flight)
            ok, shed, late = (s["lat"].get(c, []) for c in (200, 503, 504))
            other = sum(len(v) for c, v in s["lat"].items() if c not in (200, 503, 504))
            rows.append({"offered": rate, "sent": s["sent"], "sent_per_s": s["sent"] / s["wall"], "skipped": s["skipped"], "ok_per_s": len(ok) / s["wall"],
                         "p50": _pct(ok, 50), "p99": _pct(ok, 99),
                         "srv_p99": _pct(s["server"], 99), "shed_p99": _pct(shed, 99),
                         "shed": len(shed) / max(1, s["sent"]), "late": len(late) / max(1, s["sent"]),
                         "other": other, "rss_mb": _status_kb(srv_pid, "VmRSS")})
            print(_fmt(rows[-1]), flush=True)
    return rows


HEAD = (f"{'offered/s':>9}{'sent':>6}{'sent/s':>8}{'ok/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'srv p99':>8}{'503 p99':>8}{'shed':>7}{'late':>6}"
        f"{'other':>6}{'RSS MB':>8}")


def _fmt(r: dict) -> str:
    return (f"{r['offered']:>9g}{r['sent']:>6}{r['sent_per_s']:>8.1f}{r['ok_per_s']:>8.1f}{r['p50']:>8.1f}{r['p99']:>8.1f}{r['srv_p99']:>8.1f}"
            f"{r['shed_p99']:>8.1f}{r['shed']:>7.1%}{r['late']:>6.1%}{r['other']:>6}{r['rss_mb']:>8.0f}")


def plot(rows: list[dict], path: Path, deadline_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["offered"] for r in rows]
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    ax[0, 0].plot(x, [r["ok_per_s"] for r in rows], "o-")
    ax[0, 0].plot(x, [r["sent_per_s"] for r in rows], "s:", color="grey", label="sent (the client's real rate)")
    ax[0, 0].set(title="answered (200) per second", xlabel="offered req/s")
    ax[0, 0].legend()
    ax[0, 1].plot(x, [r["p50"] for r in rows], "o-", label="p50 (200)")
    ax[0, 1].plot(x, [r["p99"] for r in rows], "o-", label="p99 (200)")
    ax[0, 1].plot(x, [r["srv_p99"] for r in rows], "s--", label="p99 in the service (Server-Timing)")
    ax[0, 1].plot(x, [r["shed_p99"] for r in rows], "x--", label="p99 (503)")
    ax[0, 1].axhline(deadline_ms, color="red", ls=":", label="deadline")
    ax[0, 1].set(title="latency (ms)", xlabel="offered req/s", yscale="log")
    ax[0, 1].legend()
    ax[1, 0].plot(x, [100 * r["shed"] for r in rows], "o-", label="shed (503)")
    ax[1, 0].plot(x, [100 * r["late"] for r in rows], "o-", label="late (504)")
    ax[1, 0].set(title="share of requests (%)", xlabel="offered req/s")
    ax[1, 0].legend()
    ax[1, 1].plot(x, [r["rss_mb"] for r in rows], "o-")
    ax[1, 1].set(title="server RSS (MB)", xlabel="offered req/s", ylim=(0, None))
    for a in ax.flat:
        a.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", default=None)
    ap.add_argument("--rates", default="10,20,40,80,160", help="offered requests/s, comma-separated")
    ap.add_argument("--step-s", type=float, default=4.0)
    ap.add_argument("--max-in-flight", type=int, default=128, help="this tool's bound on open requests")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--deadline-ms", type=float, default=1000.0)
    ap.add_argument("--plot", default=None, help="write the figure to this PNG")
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",")]
    if not all(0 < r <= MAX_RATE for r in args.rates) or not 0 < args.step_s <= MAX_STEP_S:
        ap.error(f"--rates must be in (0, {MAX_RATE}] and --step-s in (0, {MAX_STEP_S}]")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else None
        if bundle is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from bundle_fixture import build_fake_bundle

            bundle = build_fake_bundle(Path(tmp) / "fake.sydes")
        srv, port = start_server(bundle, args)
        try:
            print(f"sydes serve on 127.0.0.1:{port}: max_batch {args.max_batch}, max_queue {args.max_queue}, "
                  f"deadline {args.deadline_ms:g} ms; {args.step_s:g} s per rate; load {os.getloadavg()[0]:.2f}")
            print(HEAD)
            rows = asyncio.run(drive(port, srv.pid, args))
            peak = _status_kb(srv.pid, "VmHWM")
        finally:
            srv.terminate()
            srv.wait(30)
    print(f"server peak RSS (VmHWM) {peak:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "peak_rss_mb": peak}, indent=2))
    if args.plot:
        plot(rows, Path(args.plot), args.deadline_ms)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
