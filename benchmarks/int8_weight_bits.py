"""8-bit or 7-bit INT8 weights on this CPU: what the bundle gives against what its Q/DQ graph means.

    python benchmarks/int8_weight_bits.py --checkpoint RUN/best [--data ../shared/data/msed-mini]
        [--limit 256] [--rounds 5] [--json out.json]

x86 CPUs without VNNI sum pairs of u8 x s8 products in saturating 16-bit lanes (sdk.cpu). This exports the
checkpoint as an FP32 bundle and as INT8 bundles with 8-bit and 7-bit weights (the same calibration posts
and ranges), and runs the first `--limit` posts of the dev split through:
  - each bundle through sdk.Analyzer's onnxruntime backend (what users run: this CPU's integer kernels);
  - each INT8 graph with onnxruntime's Q/DQ kernels off (`session.disable_quant_qdq`): the same quantised
    values in float arithmetic, i.e. what a CPU whose integer GEMM is exact (VNNI, AMX, ARM) computes.
Per task: macro-F1 (independent argmax), top-1 agreement with FP32, max |dp| against FP32. Then the
analyzers' model-only time at batch 16, interleaved shuffled rounds, medians. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
MSED = ROOT.parent / "shared" / "data" / "msed-mini"
BUNDLES = {"fp32": {"precision": "fp32"}, "int8-w8": {"precision": "int8", "int8_weight_bits": 8},
           "int8-w7": {"precision": "int8", "int8_weight_bits": 7}}


def export_all(ck: Path, data: Path, out: Path, calib_samples: int) -> dict[str, Path]:
    from export.pipeline import ExportOptions, export_checkpoints

    paths = {}
    for key, kw in BUNDLES.items():
        dst = out / f"{key}.sydes"
        if not (dst / "manifest.json").is_file():
            calib = dict(calib=str(data), calib_samples=calib_samples) if kw["precision"] == "int8" else {}
            rep = export_checkpoints([ck], dst, ExportOptions(target="cpu", eval_samples=0, overwrite=True,
                                                              progress=False, **calib, **kw))
            print(rep.summary(), file=sys.stderr, flush=True)
        paths[key] = dst
    return paths


def simulated(bundle: Path, threads: int) -> Any:
    """The INT8 graph with Q/DQ kernels off: quantised values, float arithmetic."""
    import onnx
    import onnxruntime as ort

    from export.qdq_fuse import unfuse_matmul_epilogues

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    model = onnx.load(str(bundle / "model.onnx"))
    unfuse_matmul_epilogues(model)  # the fused integer MatMuls back to Q/DQ, which the option runs in float
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    names, inputs = [o.name for o in sess.get_outputs()], [i.name for i in sess.get_inputs()]
    return lambda f: dict(zip(names, sess.run(names, {k: f[k] for k in inputs}), strict=True))


def score(probs: dict[str, np.ndarray], ref: dict[str, np.ndarray], gold: dict[str, np.ndarray],
          tasks: dict[str, tuple[str, ...]]) -> dict[str, dict[str, float]]:
    from sdk.metrics import macro_f1

    out = {}
    for t, labels in tasks.items():
        p, r = probs[f"probs_{t}"], ref[f"probs_{t}"]
        out[t] = {"macro_f1": 100 * macro_f1(gold[t], p.argmax(1), len(labels)),
                  "agreement": float((p.argmax(1) == r.argmax(1)).mean()), "max_abs_dp": float(np.abs(p - r).max())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--data", type=Path, default=MSED)
    ap.add_argument("--limit", type=int, default=256, help="dev posts scored (default 256)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("~/.cache/sydes/bench/int8-bits").expanduser())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from runtime_targets import feeds_for

    from calibration.data import load_items
    from sdk import Analyzer, cpu

    ck = args.checkpoint.resolve()
    paths = export_all(ck, args.data, args.out / ck.parent.name / ck.name, args.calib_samples)
    azs = {k: Analyzer(p, backend="onnxruntime", device="cpu", threads=args.threads, warmup=False)
           for k, p in paths.items()}
    tasks = dict(azs["fp32"].bundle.manifest.tasks)
    posts = load_items(args.data, split="dev", text_fields=azs["fp32"].bundle.text_fields)[:args.limit]
    gold = {t: np.array([labels.index(p.labels[t]) for p in posts]) for t, labels in tasks.items()}
    batches = [feeds_for(azs["fp32"], [(p.image, p.text) for p in posts[i:i + args.batch]])
               for i in range(0, len(posts), args.batch)]
    # a text-only bundle takes no pixels: each path gets the inputs its graph has
    runs = {k: (lambda f, b=az.backend: b.run({n: f[n] for n in b.input_names})) for k, az in azs.items()}
    runs |= {f"{k}-simulated": simulated(paths[k], args.threads) for k in ("int8-w8", "int8-w7")}
    probs = {}
    for k, fn in runs.items():
        t = time.perf_counter()
        outs = [fn(f) for f in batches]
        probs[k] = {n: np.concatenate([o[n] for o in outs]) for n in outs[0]}
        print(f"[{k}: {len(posts)} posts in {time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)
    scores = {k: score(p, probs["fp32"], gold, tasks) for k, p in probs.items()}

    timed = [k for k in runs if not k.endswith("simulated")]
    f16 = next(f for f in batches if len(f["input_ids"]) == args.batch)
    times: dict[str, list[float]] = {k: [] for k in timed}
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(timed)
        for k in timed:
            t = time.perf_counter()
            runs[k](f16)
            times[k].append(1000 * (time.perf_counter() - t) / args.batch)
    med = {k: statistics.median(v) for k, v in times.items()}

    info = cpu.describe()
    print(f"\nCPU: INT8 instructions {info['int8_isa']}; onnxruntime's u8 x s8 GEMM clips: {info['saturates']}")
    print(f"{len(posts)} dev posts of {args.data.name}, checkpoint {ck}\n")
    print("| path | " + " | ".join(f"{t} F1" for t in tasks) + " | mean F1 | min agreement vs FP32 "
          "| max abs dp vs FP32 | ms/post (b16) |")
    print("|---|" + "---|" * (len(tasks) + 4))
    for k, s in scores.items():
        f1 = [s[t]["macro_f1"] for t in tasks]
        print(f"| {k} | " + " | ".join(f"{x:.1f}" for x in f1) + f" | {np.mean(f1):.1f} | "
              f"{min(s[t]['agreement'] for t in tasks):.3f} | {max(s[t]['max_abs_dp'] for t in tasks):.3f} | "
              + (f"{med[k]:.1f}" if k in med else "-") + " |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": info, "posts": len(posts), "scores": scores, "ms_per_post": med,
                                         "times": times}, indent=2))
    for az in azs.values():
        az.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
