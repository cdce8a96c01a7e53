"""`sydes doctor` on x86 with stand-ins for a Jetson, a CUDA box and broken installs; plus a real run here."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from sdk.commands.doctor import (
    TINY_MODEL,
    Env,
    check_cuda,
    check_gpu,
    check_onnxruntime_dists,
    check_platform,
    check_sessions,
    check_tensorrt,
    run_checks,
    tiny_expected,
)


def _env(files=None, run=None, dists=None, modules=None, machine="x86_64") -> Env:
    files, modules = files or {}, modules or {}

    def imp(name):
        if name in modules and modules[name] is not None:
            return modules[name]
        raise ImportError(f"No module named {name!r}")

    return Env(read=files.get, run=lambda cmd: (run or {}).get(cmd[0]), distributions=lambda: dict(dists or {}),
               import_module=imp, machine=lambda: machine, system=lambda: "Linux-test")


JETSON = {"/etc/nv_tegra_release": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64",
          "/proc/device-tree/model": "NVIDIA Jetson AGX Orin Developer Kit"}


def test_jetson_platform_is_recognised() -> None:
    c = check_platform(_env(files=JETSON, machine="aarch64"))
    assert c.status == "ok" and c.data["l4t"] == "R36.4.3" and c.data["jetpack"] == "6"
    assert "Jetson AGX Orin" in c.detail and "(aarch64)" in c.detail
    thor = {"/etc/nv_tegra_release": "# R38 (release), REVISION: 2.0", "/proc/device-tree/model": "NVIDIA Jetson AGX Thor"}
    assert check_platform(_env(files=thor)).data["jetpack"] == "7"
    old = check_platform(_env(files={"/etc/nv_tegra_release": "# R35 (release), REVISION: 5.0"}))
    assert old.status == "fail" and "upgrade to JetPack 6 or 7" in old.detail
    assert "jetson" not in check_platform(_env()).data


def test_gpu_lines() -> None:
    smi = {"nvidia-smi": "NVIDIA H200, 570.10, 143771 MiB, 9.0\nNVIDIA L4, 570.10, 23034 MiB, 8.9"}
    c = check_gpu(_env(run=smi))
    assert c.status == "ok" and [g["name"] for g in c.data["gpus"]] == ["NVIDIA H200", "NVIDIA L4"]
    assert "NVIDIA H200 (cc 9.0, 143771 MiB, driver 570.10)" in c.detail
    assert check_gpu(_env(files=JETSON)).detail.startswith("integrated Jetson GPU")
    assert check_gpu(_env()).status == "info"


def test_cuda_lines() -> None:
    ok = types.SimpleNamespace(cudaRuntimeGetVersion=lambda: (0, 12060), cudaDriverGetVersion=lambda: (0, 12080),
                               cudaGetDeviceCount=lambda: (0, 1))
    c = check_cuda(_env(modules={"cuda.bindings.runtime": ok}))
    assert c.status == "ok" and c.detail == "runtime 12.6, driver supports 12.8, 1 device(s)"
    assert check_cuda(_env(modules={"cuda.cudart": ok})).status == "ok"  # older cuda-python layout
    bad = types.SimpleNamespace(cudaRuntimeGetVersion=lambda: (0, 12060), cudaDriverGetVersion=lambda: (35, 0),
                                cudaGetDeviceCount=lambda: (100, 0))
    assert check_cuda(_env(modules={"cuda.bindings.runtime": bad})).status == "fail"
    assert "cuda-python not installed" in check_cuda(_env()).detail


@pytest.mark.parametrize(("version", "typed", "status"), [
    ("10.3.0", True, "ok"), ("11.4.0", True, "ok"), ("8.6.1", True, "fail"), ("10.3.0", False, "fail")])
def test_tensorrt_line(version, typed, status) -> None:
    flags = types.SimpleNamespace(STRONGLY_TYPED=1) if typed else types.SimpleNamespace()
    trt = types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags)
    c = check_tensorrt(_env(modules={"tensorrt": trt}))
    assert c.status == status and version in c.detail
    assert check_tensorrt(_env()).status == "info"


def test_both_onnxruntime_builds_installed_is_a_failure() -> None:
    c = check_onnxruntime_dists(_env(dists={"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0", "numpy": "2"}))
    assert c.status == "fail"
    assert "onnxruntime 1.22.0, onnxruntime-gpu 1.22.0 are installed at once" in c.detail
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in c.detail
    assert check_onnxruntime_dists(_env(dists={"onnxruntime-gpu": "1.22.0"})).status == "ok"
    assert check_onnxruntime_dists(_env(dists={"numpy": "2"})).status == "fail"


class _FakeOrt:
    """An onnxruntime stand-in whose CUDA provider silently falls back to CPU (missing cuDNN)."""

    __version__ = "1.22.0"

    def __init__(self) -> None:
        import onnxruntime

        self.real = onnxruntime
        self.SessionOptions = onnxruntime.SessionOptions

    def get_available_providers(self):
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def InferenceSession(self, model, sess_options=None, providers=None):  # noqa: N802 - onnxruntime's name
        sess = self.real.InferenceSession(model, sess_options=sess_options, providers=["CPUExecutionProvider"])
        return sess


def test_sessions_detect_a_silently_dropped_provider() -> None:
    pytest.importorskip("onnxruntime")
    ort = _FakeOrt()
    checks = {c.name: c for c in check_sessions(ort, ort.get_available_providers())}
    assert set(checks) == {"session[CUDA]", "session[CPU]"}  # TensorRT would build an engine: not run
    assert checks["session[CUDA]"].status == "fail" and "did not load" in checks["session[CUDA]"].detail
    assert checks["session[CPU]"].status == "ok"


def test_gpu_without_cuda_onnxruntime_warns(monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime

    env = _env(run={"nvidia-smi": "NVIDIA L4, 570.10, 23034 MiB, 8.9"}, dists={"onnxruntime": "1.22.0"},
               modules={"onnxruntime": onnxruntime})
    checks = {c.name: c for c in run_checks(env)}
    assert checks["gpu-onnxruntime"].status == "warn" and "install onnxruntime-gpu" in checks["gpu-onnxruntime"].detail


def test_tiny_model_matches_its_numpy_reference() -> None:
    ort = pytest.importorskip("onnxruntime")
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    y = ort.InferenceSession(TINY_MODEL, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(y, tiny_expected(x), atol=1e-6) and np.allclose(y.sum(1), 1)


def test_sydes_doctor_runs_here(capsys) -> None:
    pytest.importorskip("onnxruntime")
    from sdk.cli import main

    rc = main(["doctor"])
    out = capsys.readouterr().out
    assert "session[CPU]" in out and "onnxruntime-dists" in out
    assert rc == (1 if any(line.startswith("fail") for line in out.splitlines()) else 0)
    main(["doctor", "--json"])
    names = [c["name"] for c in json.loads(capsys.readouterr().out)]
    assert names[:4] == ["platform", "gpu", "cuda", "tensorrt"]
