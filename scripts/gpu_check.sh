#!/usr/bin/env bash
# The GPU check kit: what to run the first time a CUDA machine is lent (target: under 10 minutes).
#
#   scripts/gpu_check.sh [--dry-run] [--no-edge] [--out DIR]      (or SYDES_GPU_DRY_RUN=1)
#
# 1. a venv (${SYDES_GPU_VENV:-.venv-gpu}; --system-site-packages on Jetson or with SYDES_GPU_SYSTEM_SITE=1,
#    so JetPack's TensorRT and onnxruntime-gpu are used) with, from the package registry only:
#    onnxruntime-gpu (and NOT onnxruntime: both at once lose CUDA), cuda-python, tensorrt where the registry
#    gives a working one (x86-64; never on Jetson), and torch + transformers + onnx + onnxscript for the
#    edge export;
# 2. `sydes doctor` (fails when both onnxruntime builds are installed or a provider does not really run);
# 3. scripts/gpu_kit.py: tiny and edge bundles on the CUDA provider (and TensorRT where present), parity
#    vs CPU (FP32 <= 1e-4 on probabilities, FP16 top-1 agreement >= 99%), engine reuse, CUDA refusals,
#    throughput at batch 1 / 16 / 64 and GPU memory; report in OUT/gpu_kit.json;
# 4. the pytest checks marked gpu / tensorrt.
# --dry-run: the CPU part only, in the current Python (${PYTHON:-python3}), no installs: tiny bundle,
# refusals, CPU parity and throughput; the GPU parts are skipped with a message. CI runs it via
# tests/test_gpu_kit.py. Nothing of this has run on a GPU yet.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=${SYDES_GPU_DRY_RUN:-0}
EDGE=1
OUT=${SYDES_GPU_OUT:-gpu-check}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --no-edge) EDGE=0 ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (valid: --dry-run, --no-edge, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
T0=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - T0 )) s)"; }

if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-python3}
  step "dry run: CPU only, no installs, tiny bundle ($PY)"
  echo "SKIP: venv + onnxruntime-gpu / tensorrt install, CUDA provider, TensorRT engines, GPU throughput and memory"
  "$PY" -m sdk.cli doctor || echo "(doctor reported a failure; a dry run goes on)"
  exec "$PY" scripts/gpu_kit.py --out "$OUT" --dry-run
fi

step "GPU"
if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /etc/nv_tegra_release ]; then
  echo "gpu_check.sh: no nvidia-smi and not a Jetson: this is not a CUDA machine (use --dry-run)" >&2
  exit 1
fi
nvidia-smi || true
JETSON=0; [ -e /etc/nv_tegra_release ] && JETSON=1 && cat /etc/nv_tegra_release

step "venv"
VENV=${SYDES_GPU_VENV:-.venv-gpu}
SITE=""
if [ "$JETSON" = 1 ] || [ "${SYDES_GPU_SYSTEM_SITE:-0}" = 1 ]; then SITE="--system-site-packages"; fi
[ -x "$VENV/bin/python" ] || ${PYTHON:-python3} -m venv $SITE "$VENV"
PY="$VENV/bin/python"
PIP="$PY -m pip install -q --disable-pip-version-check"
$PIP --upgrade pip
# The runtime core plus onnxruntime-gpu; NOT the cpu/export extras (they pull onnxruntime, the CPU build).
$PIP -e ".[dev]"
if [ "$JETSON" = 1 ]; then
  # PyPI has no aarch64 onnxruntime-gpu and no Jetson TensorRT: both come from JetPack (system site packages).
  "$PY" -c "import onnxruntime, tensorrt" || echo "WARNING: JetPack's onnxruntime-gpu / TensorRT not importable; see docs/jetson.md"
else
  # [cuda,cudnn]: CUDA 12 / cuDNN 9 from the registry's nvidia-* wheels (a bare machine may have no cuDNN);
  # the kit loads them with onnxruntime.preload_dlls().
  $PIP "onnxruntime-gpu[cuda,cudnn]" || $PIP onnxruntime-gpu
  $PIP cuda-python || echo "WARNING: cuda-python did not install: the native TensorRT backend is off"
  $PIP tensorrt || echo "WARNING: tensorrt did not install from the registry: TensorRT checks are skipped"
fi
if [ "$EDGE" = 1 ]; then
  # The edge export needs torch (any build: it runs on the CPU here) + transformers + onnx + onnxscript.
  $PIP onnx onnxscript "transformers>=4.45" safetensors pyyaml torch || { echo "WARNING: export deps failed: tiny only"; EDGE=0; }
fi
# A dependency may still have pulled the CPU onnxruntime in: two builds in one folder lose CUDA.
if "$PY" -m pip show -q onnxruntime >/dev/null 2>&1 && "$PY" -m pip show -q onnxruntime-gpu >/dev/null 2>&1; then
  echo "both onnxruntime and onnxruntime-gpu are installed: keeping onnxruntime-gpu only"
  "$PY" -m pip uninstall -y -q onnxruntime
  $PIP --force-reinstall --no-deps onnxruntime-gpu
fi

step "sydes doctor"
"$PY" -m sdk.cli doctor || echo "(doctor reported a failure: see above; the kit goes on to measure)"

step "kit"
RC=0
KIT_ARGS=(--out "$OUT")
[ "$EDGE" = 0 ] && KIT_ARGS+=(--no-edge)
"$PY" scripts/gpu_kit.py "${KIT_ARGS[@]}" || RC=1

step "pytest -m 'gpu or tensorrt'"
"$PY" -m pytest -q -m "gpu or tensorrt" tests/test_gpu_kit.py || RC=1

step "done: rc $RC, report $OUT/gpu_kit.json"
exit $RC
