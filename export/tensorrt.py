"""`--format tensorrt`: build the bundle's TensorRT engine on this machine's GPU at export time.

The engine goes where the runtime looks for it (`engines/<engine_cache_key>.engine`, same profile as
sdk.Analyzer's default), so the first Analyzer start on this GPU does not rebuild. The building itself
is sdk.backends.tensorrt.build_engine (TensorRT 10 API: explicit batch, optimisation profile over
batch and text length, FP16 flag, INT8 from the graph's Q/DQ scales, a timing cache per GPU).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("export.tensorrt")


def build_bundle_engine(bundle_path: str | Path, max_batch: int = 32) -> Path:
    """Build (or find) the engine for the bundle at `bundle_path`; returns the engine file."""
    from sdk.backends.tensorrt import (
        OptimizationProfile,
        _import_trt,
        build_engine,
        engine_cache_key,
        gpu_identity,
    )
    from sdk.bundle import load_bundle

    trt = _import_trt()  # BackendUnavailableError naming what to install when absent
    bundle = load_bundle(bundle_path)
    m = bundle.manifest
    gpu, cc = gpu_identity(0)
    profile = OptimizationProfile.for_bundle(max_batch, m.tokenizer.max_length, m.tokenizer.trim_padding)
    key = engine_cache_key(gpu, cc, trt.__version__, m.precision, profile, m.graph.sha256)
    engine = bundle.engines_dir / f"{key}.engine"
    if engine.is_file():
        log.info("TensorRT engine %s already built", engine.name)
        return engine
    timing = bundle.engines_dir / f"timing-{gpu.replace(' ', '_')}.cache"
    return build_engine(bundle.graph_path("model"), engine, m.precision, profile, timing)
