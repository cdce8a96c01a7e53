"""16 concurrent callers via Analyzer.submit (shared micro-batches) vs the same posts one at a time.

    python benchmarks/runtime_microbatch.py [BUNDLE] [--posts 64] [--callers 16] [--device auto]

Without BUNDLE a tiny fake bundle is built in a temp folder (tests/bundle_fixture.py; needs onnx), which
measures the runtime's overhead rather than a model. Prints a table; asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sdk import Analyzer  # noqa: E402


def _posts(n: int) -> list[tuple[bytes, str]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (31, 41, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(buf, format="JPEG", quality=90)
        out.append((buf.getvalue(), ["a happy day", "so sad today", "angry again", "love my family"][i % 4]))
    return out


def _pct(ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ms), q))


def run(bundle: Path, posts: int, callers: int, device: str, max_delay_ms: float) -> None:
    data = _posts(posts)
    with Analyzer(bundle, device=device, max_batch_size=32, max_delay_ms=max_delay_ms) as az:
        info = az.info
        for p in data[:4]:  # warm decoders and caches
            az.analyze(*p)
        # one at a time: each post is its own model call
        lat1 = []
        t0 = time.perf_counter()
        for p in data:
            t = time.perf_counter()
            az.analyze(*p)
            lat1.append((time.perf_counter() - t) * 1000)
        seq_wall = time.perf_counter() - t0
        # concurrent callers: each submits its share one by one and waits, like request handlers
        latc: list[float] = []
        lock = threading.Lock()
        barrier = threading.Barrier(callers)

        def caller(k: int) -> None:
            barrier.wait()
            for i in range(k, posts, callers):
                t = time.perf_counter()
                r = az.submit(*data[i]).result()
                dt = (time.perf_counter() - t) * 1000
                assert r.ok, r.reason
                with lock:
                    latc.append(dt)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conc_wall = time.perf_counter() - t0
        mb = az._batcher
        mean_batch = mb.items / max(1, mb.batches) if mb else 0.0
    print(f"bundle {info.bundle} ({info.precision}) on {info.device} via {info.backend}; {posts} posts (640x480 JPEG)")
    print(f"{'mode':<22} {'posts/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10}")
    print(f"{'one at a time':<22} {posts / seq_wall:>8.1f} {_pct(lat1, 50):>8.1f} {_pct(lat1, 99):>8.1f} {1.0:>10.1f}")
    print(f"{f'{callers} callers, submit':<22} {posts / conc_wall:>8.1f} {_pct(latc, 50):>8.1f} "
          f"{_pct(latc, 99):>8.1f} {mean_batch:>10.1f}")
    print(f"throughput ratio (submit / one at a time): {seq_wall / conc_wall:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", type=Path)
    ap.add_argument("--posts", type=int, default=64)
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    args = ap.parse_args()
    if args.bundle is None:
        from bundle_fixture import build_fake_bundle

        with tempfile.TemporaryDirectory() as tmp:
            run(build_fake_bundle(Path(tmp) / "fake.sydes"), args.posts, args.callers, args.device, args.max_delay_ms)
    else:
        run(args.bundle, args.posts, args.callers, args.device, args.max_delay_ms)


if __name__ == "__main__":
    main()
