"""`--format tensorrt`: build the bundle's TensorRT engine on this machine's GPU at export time.

The engine is strongly typed (TensorRT 10.x / 11.x: the bundle graph's FP16 / Q/DQ types decide the
precision, no builder precision flags) and recorded in the manifest with its profile, so any later
Analyzer whose batch and text range it covers reuses it (sdk.backends.trt_engines): an engine built
with `--max-batch 32` serves `sydes analyze --batch-size 16` and the HTTP sample (16) alike.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sdk.errors import ConfigError

log = logging.getLogger("export.tensorrt")

DEFAULT_MAX_BATCH = 32


def build_bundle_engine(bundle_path: str | Path, max_batch: int = DEFAULT_MAX_BATCH,
                        workspace_mb: int | None = None, device_index: int = 0) -> Path:
    """Find or build the engine for the bundle at `bundle_path` covering batch 1..max_batch; returns its file.

    workspace_mb: TensorRT's workspace memory-pool limit in MiB (None: TensorRT's default, the GPU's memory).
    """
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ConfigError(f"--max-batch must be a positive integer, got {max_batch!r}")
    if workspace_mb is not None and (not isinstance(workspace_mb, int) or workspace_mb < 1):
        raise ConfigError(f"--workspace must be a positive number of MiB, got {workspace_mb!r}")
    from sdk.backends.tensorrt import (
        EngineTarget,
        OptimizationProfile,
        ensure_engine,
        gpu_identity,
        import_trt,
    )
    from sdk.bundle import load_bundle

    trt = import_trt()  # BackendUnavailableError naming what to install when absent or unsupported
    bundle = load_bundle(bundle_path)
    m = bundle.manifest
    gpu, cc = gpu_identity(device_index)
    want = OptimizationProfile.for_bundle(max_batch, m.tokenizer.max_length, m.tokenizer.trim_padding)
    target = EngineTarget(gpu, cc, str(trt.__version__), m.precision, m.graph.sha256)
    path, profile = ensure_engine(bundle, target, want, build=True,
                                  workspace_bytes=workspace_mb * (1 << 20) if workspace_mb else None)
    log.info("TensorRT engine %s (batch %d..%d, text %d..%d)", path, profile.min_batch, profile.max_batch,
             profile.min_seq, profile.max_seq)
    return path
