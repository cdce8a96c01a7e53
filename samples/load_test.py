"""Load-test `sydes serve` on this machine: N requests with C concurrent clients (stdlib only).

    sydes serve BUNDLE --port 8080 &
    python samples/load_test.py --port 8080 IMAGE [--requests 200] [--concurrency 16]

Counts answers by status (200 ok, 503 shed, 504 late). Loopback only (127.0.0.1 / localhost / ::1):
this is a test tool, not a traffic generator. benchmarks/serve_load.py is the rising-rate benchmark.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_REQUESTS = 10_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--text", default="a happy day at the beach")
    args = ap.parse_args(argv)
    if args.host not in LOOPBACK:
        ap.error(f"--host must be a loopback address ({', '.join(sorted(LOOPBACK))})")
    if not 1 <= args.requests <= MAX_REQUESTS or not 1 <= args.concurrency <= 256:
        ap.error(f"--requests must be 1..{MAX_REQUESTS} and --concurrency 1..256")
    with open(args.image, "rb") as f:
        body = json.dumps({"image": base64.b64encode(f.read()).decode(), "text": args.text}).encode()

    def one(_: int) -> tuple[float, int]:
        conn = http.client.HTTPConnection(args.host, args.port, timeout=60)
        try:
            t = time.perf_counter()
            conn.request("POST", "/v1/analyze", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            return (time.perf_counter() - t) * 1000, resp.status
        finally:
            conn.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as ex:
        out = list(ex.map(one, range(args.requests)))
    wall = time.perf_counter() - t0
    ms = sorted(m for m, _ in out)
    ok = sum(1 for _, s in out if s == 200)
    shed = sum(1 for _, s in out if s == 503)
    late = sum(1 for _, s in out if s == 504)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    print(f"{args.requests} requests, concurrency {args.concurrency}: {ok} ok, {shed} shed (503), {late} late "
          f"(504), {args.requests / wall:.1f} req/s, latency p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms")
    return 0 if ok == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
