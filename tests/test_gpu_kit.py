"""The GPU check kit: its CPU dry run here (CI), and the GPU / TensorRT checks (skipped without a GPU).

The `gpu` and `tensorrt` tests are what scripts/gpu_check.sh runs on a lent CUDA machine
(`pytest -m "gpu or tensorrt" tests/test_gpu_kit.py`); none of them has run yet: no GPU was lent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_dry_run_of_the_kit(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    env = {**os.environ, "PYTHON": sys.executable, "SYDES_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "SKIP: venv + onnxruntime-gpu / tensorrt install" in out
    assert "dry run: no GPU parts" in out and "session[CPU]" in out  # sydes doctor ran too
    rows = {row["check"]: row for row in json.loads((tmp_path / "out" / "gpu_kit.json").read_text())}
    assert rows["tiny fp16 on cpu"]["status"] == "ok" and rows["tiny fp16 on cpu"]["figures"]["agreement"] >= 0.99
    assert set(rows["tiny cpu throughput"]["figures"]) == {"batch1_posts_per_s", "batch16_posts_per_s",
                                                           "batch64_posts_per_s"}
    for ask in ("device='cuda'", "providers=[CUDA]", "backend='tensorrt'", "device='cuda:99'"):
        assert rows[f"refuse {ask}"]["status"] == "ok"  # asking for CUDA on a CPU machine is an error
    assert rows["edge bundles"]["status"] == "skip"
    assert not [r for r in rows.values() if r["status"] == "fail"]


def test_env_var_dry_run_and_bad_option(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "SYDES_GPU_DRY_RUN": "1"}
    r = subprocess.run(["bash", str(SCRIPT), "--bogus"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unknown option --bogus (valid: --dry-run, --no-edge, --out DIR)" in r.stderr


def test_kit_comparisons() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from gpu_kit import compare

    ref = {"a": np.array([[0.7, 0.3], [0.4, 0.6]]), "b": np.array([[0.1, 0.9], [0.5, 0.5 - 1e-9]])}
    got = {"a": np.array([[0.7, 0.3], [0.6, 0.4]]), "b": ref["b"] + 1e-5}
    diff, agree = compare(ref, got)
    assert diff == pytest.approx(0.2) and agree == 0.75


# --- on a CUDA machine -------------------------------------------------------------------------------------
def _cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _trt() -> bool:
    try:
        from sdk.backends.base import Device
        from sdk.backends.tensorrt import TensorRTBackend
    except ImportError:
        return False
    return TensorRTBackend.probe(Device.parse("cuda")) is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from gpu_kit import tiny_bundles

    return tiny_bundles(tmp_path_factory.mktemp("kit"))


@pytest.mark.gpu
def test_cuda_provider_parity_on_the_tiny_bundle(tiny) -> None:
    if not _cuda():
        pytest.skip("no CUDA execution provider here")
    from gpu_kit import compare, make_posts, probs

    from sdk.analyzer import Analyzer

    with Analyzer(tiny["fp32"], device="cpu", warmup=False) as cpu, \
            Analyzer(tiny["fp32"], device="cuda", backend="onnxruntime", ort_tensorrt=False, warmup=False) as gpu, \
            Analyzer(tiny["fp16"], device="cuda", backend="onnxruntime", ort_tensorrt=False, warmup=False) as g16:
        assert gpu.info.providers[0] == "CUDAExecutionProvider" and gpu.info.device == "cuda:0"
        pairs = make_posts(64, {t: list(v) for t, v in cpu.tasks.items()})
        ref = probs(cpu, pairs)
        assert compare(ref, probs(gpu, pairs))[0] <= 1e-4
        assert compare(ref, probs(g16, pairs))[1] >= 0.99


@pytest.mark.gpu
def test_cuda_that_cannot_run_is_an_error(tiny) -> None:
    if not _cuda():
        pytest.skip("no CUDA execution provider here")
    from sdk.analyzer import Analyzer
    from sdk.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="cuda:99"):
        Analyzer(tiny["fp32"], device="cuda:99", warmup=False)


@pytest.mark.tensorrt
def test_tensorrt_engine_is_built_once_and_reused(tiny) -> None:
    if not _trt():
        pytest.skip("TensorRT + cuda-python + a CUDA GPU are not all here")
    from gpu_kit import compare, make_posts, probs

    from sdk.analyzer import Analyzer
    from sdk.bundle import load_bundle

    b = tiny["fp16"]
    with Analyzer(b, device="cpu", warmup=False) as cpu:
        pairs = make_posts(64, {t: list(v) for t, v in cpu.tasks.items()})
        ref = probs(cpu, pairs)
    with Analyzer(b, device="cuda", backend="tensorrt", max_batch_size=64, warmup=False) as big:
        built = big.backend.engine_path
        assert compare(ref, probs(big, pairs))[1] >= 0.99
    recs = load_bundle(b).manifest.engine_records
    assert [r.profile["max_batch"] for r in recs] == [64] and recs[0].strongly_typed
    with Analyzer(b, device="cuda", backend="tensorrt", max_batch_size=16, build=False, warmup=False) as small, \
            Analyzer(b, device="cuda", max_batch_size=16, warmup=False) as auto:
        assert small.backend.engine_path == built and auto.info.backend == "tensorrt"
    assert len(load_bundle(b).manifest.engine_records) == 1


def test_kit_gpu_path_logic_with_a_cpu_stand_in(tmp_path: Path, monkeypatch) -> None:
    """The kit's CUDA branch (parity rules, provider check, TF32 diagnosis rerun) run against a stand-in
    Analyzer that answers on the CPU but says it ran on CUDA; the first FP32 run is perturbed by 3e-4."""
    pytest.importorskip("onnxruntime")
    import types

    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_kit

    import sdk.analyzer as A

    real = A.Analyzer

    class StandIn:
        def __init__(self, bundle, device="auto", backend="auto", providers=None, **kw):
            self.inner = real(bundle, device="cpu", backend="onnxruntime", warmup=False,
                              max_batch_size=kw.get("max_batch_size", 32))
            self.noisy = device == "cuda" and providers is None and self.inner.backend.precision == "fp32"
            self.tasks, self.backend, self.bundle = self.inner.tasks, self.inner.backend, self.inner.bundle
            self.info = types.SimpleNamespace(backend="onnxruntime", providers=["CUDAExecutionProvider"],
                                              device="cuda:0")

        def analyze_batch(self, pairs):
            res = self.inner.analyze_batch(pairs)
            if self.noisy:
                for r in res:
                    for t in r.tasks.values():
                        t.probs = {k: v + 3e-4 for k, v in t.probs.items()}
            return res

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

    monkeypatch.setattr(A, "Analyzer", StandIn)
    monkeypatch.setattr(gpu_kit, "gpu_memory_mb", lambda: 123.0)
    tp = gpu_kit.throughput
    monkeypatch.setattr(gpu_kit, "throughput", lambda az: tp(az, (1, 2), repeats=1))  # keep the test fast
    kit = gpu_kit.Kit(tmp_path, dry_run=False, posts=8, budget_s=300)
    gpu_kit.check_bundle(kit, "tiny", gpu_kit.tiny_bundles(tmp_path / "b"), trt_ok=False, ort_trt=False)
    rows = {r.check: r for r in kit.rows}
    assert rows["tiny cuda fp32"].status == "fail" and rows["tiny cuda fp32"].figures["max_abs_diff"] > 1e-4
    assert rows["tiny cuda fp32 (use_tf32=0)"].status == "ok"  # the diagnosis rerun
    assert rows["tiny cuda fp16"].status == "ok" and rows["tiny cuda fp16"].figures["gpu_memory_mb"] == 123.0
    assert {"batch1_posts_per_s", "batch2_posts_per_s"} <= set(rows["tiny cuda fp16"].figures)
