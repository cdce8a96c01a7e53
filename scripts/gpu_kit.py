"""The GPU check kit's checks (run by scripts/gpu_check.sh; `--dry-run` does the CPU part only).

    python scripts/gpu_kit.py --out DIR [--dry-run] [--no-edge] [--posts N] [--budget-s S]

Bundles (random weights): "tiny" is tests/bundle_fixture.py's graph (onnx only, no torch) in FP32 and
an FP16 conversion of it (export/formats/fp16.py); "edge" is the edge preset exported as benchmarks/
does (torch + transformers), FP32 and FP16. On each: CPU reference (onnxruntime CPU, FP32 bundle); the
CUDA provider (FP32 max |dp| <= 1e-4 on probabilities, FP16 top-1 agreement >= 99% with the CPU FP32
answers); native TensorRT where `tensorrt` + `cuda-python` import (same thresholds; the engine built
for batch 64 must then serve a batch-16 Analyzer and backend="auto" without a rebuild); onnxruntime's
TensorRT provider on the tiny bundle where present; asking for CUDA where it cannot run must raise;
model-only throughput at batch 1 / 16 / 64 and this process's GPU memory. Results: a table on stdout
and DIR/gpu_kit.json; exit 1 when a check fails. Nothing here has run on a GPU yet (none was lent).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

FP32_TOL = 1e-4
FP16_AGREEMENT = 0.99
BATCHES = (1, 16, 64)
CUDA = "CUDAExecutionProvider"


@dataclass
class Row:
    check: str
    status: str  # ok | fail | skip
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)


class Kit:
    def __init__(self, out: Path, dry_run: bool, posts: int, budget_s: float) -> None:
        self.out, self.dry_run, self.n_posts = out, dry_run, posts
        self.deadline = time.monotonic() + budget_s
        self.rows: list[Row] = []

    def add(self, check: str, status: str, detail: str, **figures: Any) -> None:
        self.rows.append(Row(check, status, detail, figures))
        figs = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        print(f"[{status:>4}] {check}: {detail}" + (f" [{figs}]" if figs else ""), flush=True)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


# --- bundles --------------------------------------------------------------------------------------------
def tiny_bundles(root: Path) -> dict[str, Path]:
    """The test fixture's graph as an FP32 bundle and its FP16 conversion (same weights)."""
    from bundle_fixture import build_fake_bundle, read_manifest

    from export.formats import ConvertContext, get_precision
    from sdk.bundle import file_record, write_manifest

    fp32 = root / "tiny-fp32.sydes"
    if not (fp32 / "manifest.json").is_file():
        build_fake_bundle(fp32, name="tiny-fp32")
    fp16 = root / "tiny-fp16.sydes"
    if not (fp16 / "manifest.json").is_file():
        build_fake_bundle(fp16, name="tiny-fp16", precision="fp16")
        tmp = fp16 / "model.fp16.onnx"
        get_precision("fp16").convert(ConvertContext(src=fp16 / "model.onnx", dst=tmp, work_dir=fp16))
        os.replace(tmp, fp16 / "model.onnx")
        m = read_manifest(fp16)
        m["graphs"]["model"].update(file_record(fp16, "model.onnx"))
        write_manifest(fp16, m)
    return {"fp32": fp32, "fp16": fp16}


def edge_bundles(root: Path) -> dict[str, Path]:
    """The edge preset (random seeded weights) exported FP32 and FP16, as benchmarks/runtime_targets.py does."""
    import tempfile

    import torch

    from export.pipeline import ExportOptions, export_checkpoints
    from training.runner import build_model

    ckpt = root / "edge-checkpoint"
    if not (ckpt / "model.safetensors").is_file():
        torch.manual_seed(0)
        model, tok = build_model(preset="edge", tasks=["sentiment", "emotion", "desire"], offline_backbones=False)
        with tempfile.TemporaryDirectory() as tmp:
            tok.save(Path(tmp) / "tokenizer.json")
            model.eval().save_pretrained(ckpt, tokenizer_file=Path(tmp) / "tokenizer.json")
        del model
    out = {}
    for precision in ("fp32", "fp16"):
        b = root / f"edge-{precision}.sydes"
        if not (b / "manifest.json").is_file():
            t = time.perf_counter()
            export_checkpoints([ckpt], b, ExportOptions(precision=precision, eval_samples=0, progress=False,
                                                        cache_dir=str(root / "cache"), overwrite=True))
            print(f"exported {b.name} in {time.perf_counter() - t:.0f} s", flush=True)
        out[precision] = b
    return out


# --- measurements ---------------------------------------------------------------------------------------
def make_posts(n: int, tasks: dict[str, Any]) -> list[tuple[Any, str]]:
    from calibration.data import generated_posts

    return [(p.image, p.text) for p in generated_posts(n, seed=7, tasks=tasks)]


def probs(az: Any, pairs: list[tuple[Any, str]]) -> dict[str, np.ndarray]:
    res = az.analyze_batch(pairs)
    bad = [r.error for r in res if not r.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} posts failed: {bad[0]}")
    return {t: np.array([[r.tasks[t].probs[label] for label in labels] for r in res])
            for t, labels in az.tasks.items()}


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max |dp| over tasks, top-1 agreement over all task answers)."""
    diff = max(float(np.max(np.abs(ref[t] - got[t]))) for t in ref)
    agree = float(np.mean(np.concatenate([ref[t].argmax(1) == got[t].argmax(1) for t in ref])))
    return diff, agree


def throughput(az: Any, batches: tuple[int, ...] = BATCHES, repeats: int = 5) -> dict[str, float]:
    """Model-only posts/s at each batch size (median of `repeats` runs after one warm-up), random inputs."""
    rng = np.random.default_rng(0)
    seq = az.bundle.manifest.tokenizer.max_length
    out = {}
    for b in batches:
        feeds = {"global_pixels": rng.integers(0, 256, (b, 224, 224, 3), dtype=np.uint8),
                 "canvas_pixels": rng.integers(0, 256, (b, 448, 448, 3), dtype=np.uint8),
                 "input_ids": rng.integers(5, 30, (b, seq)).astype(np.int64),
                 "attention_mask": np.ones((b, seq), np.int64)}
        az.backend.run(feeds)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            az.backend.run(feeds)
            times.append(time.perf_counter() - t)
        out[f"batch{b}_posts_per_s"] = round(b / statistics.median(times), 1)
    return out


def gpu_memory_mb() -> float | None:
    """GPU memory this process holds (nvidia-smi's per-process figure); None where it cannot say (Jetson)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        pid, _, mem = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(mem.strip())
    return None


# --- checks ---------------------------------------------------------------------------------------------
def check_bundle(kit: Kit, family: str, bundles: dict[str, Path], trt_ok: bool, ort_trt: bool) -> None:
    from sdk.analyzer import Analyzer

    with Analyzer(bundles["fp32"], device="cpu", backend="onnxruntime", warmup=False) as cpu:
        pairs = make_posts(kit.n_posts, {t: list(v) for t, v in cpu.tasks.items()})
        ref = probs(cpu, pairs)
        kit.add(f"{family} cpu throughput", "ok", "onnxruntime CPU, FP32, model only", **throughput(cpu))
    with Analyzer(bundles["fp16"], device="cpu", backend="onnxruntime", warmup=False) as cpu16:
        _, agree = compare(ref, probs(cpu16, pairs))
        kit.add(f"{family} fp16 on cpu", "ok" if agree >= FP16_AGREEMENT else "fail",
                f"top-1 agreement with FP32 {agree:.4f} (>= {FP16_AGREEMENT})", agreement=agree)
    if kit.dry_run:
        kit.add(f"{family} cuda / tensorrt", "skip", "dry run: no GPU parts (CUDA provider parity, TensorRT "
                                                   "engines, engine reuse, throughput and memory on the GPU)")
        return
    runs: list[tuple[str, dict[str, Any]]] = [("cuda", {"backend": "onnxruntime", "ort_tensorrt": False})]
    if trt_ok:
        runs.append(("tensorrt", {"backend": "tensorrt", "max_batch_size": 64}))
    if ort_trt and family == "tiny":
        runs.append(("ort-tensorrt", {"backend": "onnxruntime", "ort_tensorrt": True}))
    for name, kw in runs:
        if kit.time_left() < 60:
            kit.add(f"{family} {name}", "skip", f"time budget spent ({kit.time_left():.0f} s left)")
            continue
        for precision in ("fp32", "fp16"):
            check_run(kit, f"{family} {name} {precision}", bundles[precision], precision, kw, pairs, ref)
        if name == "cuda" and kit.rows[-2].status == "fail" and "max_abs_diff" in kit.rows[-2].figures:
            # Diagnosis, not a looser rule: onnxruntime's CUDA provider may use TF32 for FP32 MatMul / Conv.
            tf32_off = {**kw, "providers": [(CUDA, {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"]}
            check_run(kit, f"{family} cuda fp32 (use_tf32=0)", bundles["fp32"], "fp32", tf32_off, pairs, ref)
    if trt_ok:
        check_reuse(kit, family, bundles["fp16"])


def check_run(kit: Kit, label: str, bundle: Path, precision: str, kw: dict[str, Any],
              pairs: list[tuple[Any, str]], ref: dict[str, np.ndarray]) -> None:
    from sdk.analyzer import Analyzer

    t = time.perf_counter()
    try:
        az = Analyzer(bundle, device="cuda", warmup=False, **{"max_batch_size": 64, **kw})
    except Exception as e:  # noqa: BLE001 - the kit reports every failure and goes on
        kit.add(label, "fail", f"could not start: {type(e).__name__}: {e}")
        return
    with az:
        start_s = time.perf_counter() - t
        provs = az.info.providers
        want = {False: CUDA, True: "TensorrtExecutionProvider"}.get(kw.get("ort_tensorrt"))
        if kw["backend"] == "onnxruntime" and (not provs or provs[0] != want):
            kit.add(label, "fail", f"asked for {want}, runs {provs}")
            return
        diff, agree = compare(ref, probs(az, pairs))
        ok = diff <= FP32_TOL if precision == "fp32" else agree >= FP16_AGREEMENT
        rule = f"max |dp| {diff:.2e} (<= {FP32_TOL:g})" if precision == "fp32" else \
            f"top-1 agreement {agree:.4f} (>= {FP16_AGREEMENT})"
        kit.add(label, "ok" if ok else "fail", f"{az.info.backend} {az.info.providers[0]}: {rule}; start "
                f"{start_s:.1f} s", max_abs_diff=diff, agreement=agree, start_s=round(start_s, 1),
                gpu_memory_mb=gpu_memory_mb(), **throughput(az))


def check_reuse(kit: Kit, family: str, bundle: Path) -> None:
    """The batch-64 engine built above must serve a batch-16 Analyzer and backend='auto' without a build."""
    from sdk.analyzer import Analyzer
    from sdk.bundle import load_bundle

    before = sorted(p.name for p in (bundle / "engines").glob("*.engine"))
    try:
        with Analyzer(bundle, device="cuda", backend="tensorrt", max_batch_size=16, build=False, warmup=False) as a, \
                Analyzer(bundle, device="cuda", max_batch_size=16, warmup=False) as auto:
            used, auto_backend = a.backend.engine_path.name, auto.info.backend
    except Exception as e:  # noqa: BLE001
        kit.add(f"{family} engine reuse", "fail", f"{type(e).__name__}: {e}")
        return
    after = sorted(p.name for p in (bundle / "engines").glob("*.engine"))
    recs = load_bundle(bundle).manifest.engine_records
    ok = before == after and used in before and auto_backend == "tensorrt" and len(recs) >= 1
    kit.add(f"{family} engine reuse", "ok" if ok else "fail",
            f"batch-16 and auto Analyzers used {used} (auto picked {auto_backend}); engines before {before}, after "
            f"{after}; {len(recs)} recorded")


def check_cuda_refusal(kit: Kit, bundle: Path, gpu: bool) -> None:
    """Asking for CUDA where it cannot run must raise, never fall back to the CPU."""
    from sdk.analyzer import Analyzer
    from sdk.errors import BackendUnavailableError

    asks = [("device='cuda:99'", {"device": "cuda:99"})]
    if not gpu:
        asks += [("device='cuda'", {"device": "cuda"}), ("providers=[CUDA]", {"providers": [CUDA]}),
                 ("backend='tensorrt'", {"backend": "tensorrt", "device": "cuda"})]
    for what, kw in asks:
        try:
            Analyzer(bundle, warmup=False, **kw).close()
        except BackendUnavailableError as e:
            kit.add(f"refuse {what}", "ok", f"BackendUnavailableError: {str(e)[:120]}")
        else:
            kit.add(f"refuse {what}", "fail", "an Analyzer started: a silent fallback")


def available() -> tuple[bool, bool, bool]:
    """(CUDA provider, native TensorRT importable, onnxruntime's TensorRT provider)."""
    import onnxruntime as ort

    provs = ort.get_available_providers()
    try:
        from sdk.backends.base import Device
        from sdk.backends.tensorrt import TensorRTBackend

        trt_ok = TensorRTBackend.probe(Device.parse("cuda")) is None
    except Exception:  # noqa: BLE001
        trt_ok = False
    return CUDA in provs, trt_ok, "TensorrtExecutionProvider" in provs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="CPU only: tiny bundle, skip the GPU parts")
    ap.add_argument("--no-edge", action="store_true", help="tiny bundle only")
    ap.add_argument("--posts", type=int, default=None, help="posts per parity check (default 256; dry run 16)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip remaining GPU runs past this (default 540)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    kit = Kit(args.out, args.dry_run, args.posts or (16 if args.dry_run else 256), args.budget_s)
    if not args.dry_run:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21: CUDA / cuDNN from the nvidia-* wheels
            ort.preload_dlls()
    cuda, trt_ok, ort_trt = available()
    if args.dry_run:
        cuda = trt_ok = ort_trt = False
    elif not cuda:
        kit.add("cuda provider", "fail", "onnxruntime has no CUDAExecutionProvider: is onnxruntime-gpu (only) "
                                         "installed? see `sydes doctor`")
    kit.add("environment", "ok", f"CUDA provider {cuda}, native TensorRT {trt_ok}, onnxruntime TensorRT provider "
                                 f"{ort_trt}, dry run {args.dry_run}")
    families = {"tiny": tiny_bundles(args.out / "bundles")}
    check_cuda_refusal(kit, families["tiny"]["fp32"], gpu=cuda)
    if not (args.dry_run or args.no_edge):
        try:
            families["edge"] = edge_bundles(args.out / "bundles")
        except ImportError as e:
            kit.add("edge bundles", "fail", f"cannot export the edge preset here ({e}); install torch, "
                                            "transformers, onnx, onnxscript")
    elif args.dry_run:
        kit.add("edge bundles", "skip", "dry run: tiny bundle only")
    for family, bundles in families.items():
        check_bundle(kit, family, bundles, trt_ok, ort_trt)
    (args.out / "gpu_kit.json").write_text(json.dumps([asdict(r) for r in kit.rows], indent=2) + "\n")
    fails = [r for r in kit.rows if r.status == "fail"]
    print(f"\n{len(kit.rows)} checks: {sum(r.status == 'ok' for r in kit.rows)} ok, {len(fails)} failed, "
          f"{sum(r.status == 'skip' for r in kit.rows)} skipped; report {args.out / 'gpu_kit.json'}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
