"""`sydes doctor`: what this machine has for SyDES Edge, and what is wrong with it.

Reports the platform (and the Jetson module / L4T / JetPack release), the GPUs, CUDA runtime and
driver, TensorRT (and whether this SDK supports it), onnxruntime's version and execution providers,
flags the known ways to lose the GPU (onnxruntime and onnxruntime-gpu installed at once: they share
one `onnxruntime` package folder, so whichever was installed last wins), and runs a real tiny
onnxruntime session on every provider that claims to be available, checking that the provider really
ran and that the numbers are right. Exit status 1 when a check fails.

Every probe goes through `Env`, so the checks are unit-tested on x86 with stand-ins.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.metadata
import json
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# onnxruntime distributions that each install the `onnxruntime` import package.
ORT_DISTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
             "onnxruntime-qnn", "onnxruntime-training", "ort-nightly", "ort-nightly-gpu")
# L4T major -> JetPack (JetPack 6 = L4T R36 with TensorRT 10.x; JetPack 7 = L4T R38, Thor, TensorRT 10.x).
JETPACK = {35: "5 (TensorRT 8.5: not supported, needs TensorRT 10)", 36: "6", 38: "7"}
# y = softmax(x @ w), w[i, j] = ((4 i + j) % 5) / 4: a 220-byte ONNX model (opset 13, MatMul + Softmax).
TINY_MODEL = base64.b64decode(
    "CAgSDHN5ZGVzLWRvY3RvcjrDAQoRCgF4CgF3EgFoIgZNYXRNdWwKJQoBaBIBeSIHU29mdG1heCoUCgRheGlzGP///////////wGgAQISBmRvY3Rv"
    "cipLCAQIBBABIkAAAAAAAACAPgAAAD8AAEA/AACAPwAAAAAAAIA+AAAAPwAAQD8AAIA/AAAAAAAAgD4AAAA/AABAPwAAgD8AAAAAQgF3WhgKAXgS"
    "EwoRCAESDQoHEgViYXRjaAoCCARiGAoBeRITChEIARINCgcSBWJhdGNoCgIIBEIECgAQDQ==")
STATUSES = ("ok", "info", "warn", "fail")
# TensorRT would build an engine for the tiny model; Azure is a remote-endpoint provider, not a device.
SKIP_SESSION = ("TensorrtExecutionProvider", "AzureExecutionProvider")


@dataclass
class Check:
    name: str
    status: str  # ok | info | warn | fail
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None


def _dists() -> dict[str, str]:
    out = {}
    for d in importlib.metadata.distributions():
        name = (d.metadata.get("Name") or "").lower().replace("_", "-")
        if name:
            out[name] = d.version
    return out


@dataclass
class Env:
    """The machine as the checks see it; tests pass stand-ins."""

    read: Callable[[str], str | None] = _read
    run: Callable[[list[str]], str | None] = _run
    distributions: Callable[[], dict[str, str]] = _dists
    import_module: Callable[[str], Any] = importlib.import_module
    machine: Callable[[], str] = platform.machine
    system: Callable[[], str] = platform.platform


# --- checks ---------------------------------------------------------------------------------------------
def check_platform(env: Env) -> Check:
    py = sys.version.split()[0]
    detail = f"{env.system()} ({env.machine()}), Python {py}"
    data: dict[str, Any] = {"machine": env.machine(), "python": py}
    model = env.read("/proc/device-tree/model")
    tegra = env.read("/etc/nv_tegra_release")
    if tegra:
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", tegra)
        l4t = f"R{m.group(1)}.{m.group(2)}" if m else tegra.splitlines()[0]
        jp = JETPACK.get(int(m.group(1)), "unknown") if m else "unknown"
        data.update(jetson=model or "unknown Jetson", l4t=l4t, jetpack=jp)
        detail += f"; Jetson: {model or 'unknown module'}, L4T {l4t}, JetPack {jp}"
        if m and int(m.group(1)) < 36:
            return Check("platform", "fail", detail + ": upgrade to JetPack 6 or 7", data)
    return Check("platform", "ok", detail, data)


def check_gpu(env: Env) -> Check:
    out = env.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                   "--format=csv,noheader"])
    if out:
        gpus = [dict(zip(("name", "driver", "memory", "compute_capability"), (x.strip() for x in line.split(",")),
                         strict=False)) for line in out.splitlines() if line.strip()]
        return Check("gpu", "ok", "; ".join(f"{g.get('name')} (cc {g.get('compute_capability')}, "
                                            f"{g.get('memory')}, driver {g.get('driver')})" for g in gpus),
                     {"gpus": gpus})
    if env.read("/etc/nv_tegra_release"):  # Jetson: integrated GPU, nvidia-smi may be absent or partial
        return Check("gpu", "info", "integrated Jetson GPU (nvidia-smi gave nothing; see the CUDA line)")
    return Check("gpu", "info", "no NVIDIA GPU found (nvidia-smi absent or failed): CPU backends only")


def check_cuda(env: Env) -> Check:
    cudart = None
    for mod in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            cudart = env.import_module(mod)
            break
        except ImportError:
            continue
    if cudart is None:
        return Check("cuda", "info", "cuda-python not installed (only the native TensorRT backend needs it: "
                                     "pip install cuda-python)")
    try:
        err, rt = cudart.cudaRuntimeGetVersion()
        err2, drv = cudart.cudaDriverGetVersion()
        err3, count = cudart.cudaGetDeviceCount()
    except Exception as e:  # noqa: BLE001 - no driver raises from the bindings
        return Check("cuda", "fail", f"cuda-python cannot talk to the driver: {e}")
    if int(err) or int(err2) or int(err3):
        return Check("cuda", "fail", f"CUDA error (runtime {err}, driver {err2}, devices {err3}): no usable GPU")

    def v(x: int) -> str:
        return f"{x // 1000}.{x % 1000 // 10}"

    return Check("cuda", "ok" if count else "warn", f"runtime {v(rt)}, driver supports {v(drv)}, {count} device(s)",
                 {"runtime": v(rt), "driver": v(drv), "devices": count})


def check_tensorrt(env: Env) -> Check:
    from sdk.backends.trt_build import SUPPORTED_MAJORS, trt_major

    try:
        trt = env.import_module("tensorrt")
    except ImportError:
        return Check("tensorrt", "info", "not installed (native TensorRT backend off; pip install tensorrt, "
                                         "or JetPack's python3-libnvinfer with a --system-site-packages venv)")
    version = str(getattr(trt, "__version__", "?"))
    try:
        major = trt_major(version)
    except ValueError:
        major = -1
    typed = hasattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED")
    if major not in SUPPORTED_MAJORS or not typed:
        return Check("tensorrt", "fail", f"TensorRT {version}: not supported (needs 10.x or 11.x with strongly "
                                         "typed networks)", {"version": version})
    return Check("tensorrt", "ok", f"TensorRT {version} (strongly typed builds)", {"version": version})


def check_onnxruntime_dists(env: Env) -> Check:
    dists = env.distributions()
    found = {d: dists[d] for d in ORT_DISTS if d in dists}
    if not found:
        return Check("onnxruntime-dists", "fail", "no onnxruntime installed: pip install \"sydes-edge[cpu]\" "
                                                  "(or [gpu]; on Jetson the onnxruntime-gpu wheel for your JetPack)")
    listed = ", ".join(f"{d} {v}" for d, v in found.items())
    if len(found) > 1:
        return Check("onnxruntime-dists", "fail",
                     f"{listed} are installed at once: they share the `onnxruntime` package folder, so the last one "
                     "installed wins and CUDA can silently be lost. Fix: pip uninstall -y "
                     f"{' '.join(found)} && pip install onnxruntime-gpu (or onnxruntime on CPU-only machines)",
                     {"distributions": found})
    return Check("onnxruntime-dists", "ok", listed, {"distributions": found})


def check_onnxruntime(env: Env) -> tuple[Check, Any]:
    try:
        ort = env.import_module("onnxruntime")
    except ImportError as e:
        return Check("onnxruntime", "fail", f"cannot import onnxruntime: {e}"), None
    provs = list(ort.get_available_providers())
    return Check("onnxruntime", "ok", f"{ort.__version__}; providers: {', '.join(provs)}",
                 {"version": str(ort.__version__), "providers": provs}), ort


def tiny_expected(x: Any) -> Any:
    import numpy as np

    w = (np.arange(16, dtype=np.float32) % 5 / 4).reshape(4, 4)
    h = x @ w
    e = np.exp(h - h.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_sessions(ort: Any, providers: list[str]) -> list[Check]:
    """A real tiny session per provider (but SKIP_SESSION): it must really run
    on that provider (onnxruntime silently drops one whose libraries fail to load) and be right."""
    import numpy as np

    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    want = tiny_expected(x)
    out = []
    for p in [p for p in providers if p not in SKIP_SESSION]:
        name = f"session[{p.removesuffix('ExecutionProvider')}]"
        try:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(TINY_MODEL, sess_options=so, providers=[p])
            ran = list(sess.get_providers())
            y = sess.run(None, {"x": x})[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            out.append(Check(name, "fail", f"could not run: {e}"))
            continue
        if p not in ran:
            out.append(Check(name, "fail", f"asked for {p}, onnxruntime ran {ran}: its libraries (CUDA / cuDNN) "
                                           "did not load"))
            continue
        err = float(np.max(np.abs(y - want)))
        out.append(Check(name, "ok" if err <= 1e-3 else "fail", f"ran on {ran[0]}, max |error| {err:.1e}"))
    return out


def check_cpu_int8(env: Env, ort: Any) -> Check:
    """The CPU's INT8 dot-product instructions, and whether onnxruntime's u8 x s8 GEMM is exact here (sdk.cpu)."""
    from sdk.cpu import WEIGHT_LIMIT, cpu_flags, int8_isa, probe_gemm

    isa = int8_isa(cpu_flags(env.read("/proc/cpuinfo") or ""))
    try:
        probes = {bits: probe_gemm(ort, WEIGHT_LIMIT[bits]) for bits in WEIGHT_LIMIT}
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        return Check("cpu-int8", "warn", f"INT8 instructions: {isa}; the INT8 GEMM probe did not run: {e}",
                     {"isa": isa})
    clipped = [bits for bits, (got, exact) in probes.items() if got != exact]
    data = {"isa": isa, "probe": {str(b): {"got": g, "exact": x} for b, (g, x) in probes.items()}}
    if not clipped:
        return Check("cpu-int8", "ok", f"INT8 instructions: {isa}; onnxruntime's u8 x s8 GEMM is exact", data)
    got, exact = probes[clipped[0]]
    detail = (f"INT8 instructions: {isa}; onnxruntime's u8 x s8 GEMM clips {clipped[0]}-bit weights here (a 16-bit "
              f"sum of pairs: {got:,} for {exact:,})")
    if 7 in clipped:
        return Check("cpu-int8", "fail", detail + ": INT8 bundles are not exact on this CPU; use FP32", data)
    return Check("cpu-int8", "warn", detail + ": INT8 bundles for this CPU need 7-bit weights (the default of "
                 "--target cpu; --int8-weight-bits 7). "
                 "OpenVINO's INT8 has no VNNI kernels here either: prefer onnxruntime INT8", data)


def run_checks(env: Env | None = None) -> list[Check]:
    env = env or Env()
    checks = [check_platform(env), check_gpu(env), check_cuda(env), check_tensorrt(env),
              check_onnxruntime_dists(env)]
    ort_check, ort = check_onnxruntime(env)
    checks.append(ort_check)
    if ort is not None:
        checks += check_sessions(ort, ort_check.data["providers"])
        checks.append(check_cpu_int8(env, ort))
        gpu_here = any(c.name == "gpu" and c.status == "ok" for c in checks)
        if gpu_here and not {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort_check.data["providers"]):
            checks.append(Check("gpu-onnxruntime", "warn", "an NVIDIA GPU is here but this onnxruntime has no CUDA "
                                                           "provider: install onnxruntime-gpu (only)"))
    return checks


# --- command --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.status:<5} {c.name:<{width}}  {c.detail}" for c in checks)


def run(args: argparse.Namespace) -> int:
    checks = run_checks()
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(format_checks(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0
