"""Computing activation ranges with onnxruntime's calibrators (minmax / entropy / percentile), cached."""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.cache import CalibrationCache, cache_key
from sdk.bundle import sha256_file
from sdk.errors import ConfigError, MissingExtraError

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
# per-method calibrator options (onnxruntime's create_calibrator extra_options); part of the cache key
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 128, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


def check_method(method: str) -> str:
    m = method.lower()
    if m not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; valid: {', '.join(METHODS)}")
    return m


def _ort_method(method: str) -> Any:
    try:
        from onnxruntime.quantization import CalibrationMethod
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MissingExtraError("onnxruntime", "cpu", "INT8 calibration") from e
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]



@dataclass
class CalibrationResult:
    path: Path            # the cache file (onnxruntime TensorsData JSON)
    key: str
    hit: bool             # True when the ranges came from the cache (no inference ran)
    method: str
    samples: int
    seconds: float


class _ListReader:
    """A CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self.feeds = feeds

    def get_next(self) -> dict[str, Any] | None:
        return self.feeds.pop(0) if self.feeds else None


def compute_ranges(model_path: str | Path, reader: Any, method: str = "minmax",
                   op_types: Sequence[str] | None = None, options: dict[str, Any] | None = None,
                   providers: Sequence[str] | None = None, chunk: int = 8) -> Any:
    """Run the calibrator over `reader` and return onnxruntime TensorsData for `model_path`'s tensors.

    Batches go in chunks of `chunk` (histograms and min/max are merged across chunks), so memory
    stays at `chunk` batches of activations whatever the number of samples."""
    method = check_method(method)
    from onnxruntime.quantization.calibrate import create_calibrator

    opts = {**DEFAULT_OPTIONS[method], **(options or {})}
    with tempfile.TemporaryDirectory(prefix="sydes-calib.") as tmp:
        calibrator = create_calibrator(Path(model_path), list(op_types) if op_types else None,
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=_ort_method(method), extra_options=opts,
                                       providers=list(providers) if providers else None)
        # onnxruntime's calibrators keep every intermediate output of one collect_data call in memory:
        # feeding chunks bounds that (histograms and min/max merge across calls)
        feeds = iter(reader.batches()) if hasattr(reader, "batches") else iter(reader.get_next, None)
        fed = 0
        while block := list(itertools.islice(feeds, chunk)):
            fed += len(block)
            calibrator.collect_data(_ListReader(block))
        if not fed:
            raise ConfigError("the calibration reader produced no data")
        ranges = calibrator.compute_data()
        del calibrator  # releases the session before the temp folder goes
    return ranges


def calibrate(model_path: str | Path, reader: Any, method: str = "minmax",
              cache: CalibrationCache | None = None, op_types: Sequence[str] | None = None,
              options: dict[str, Any] | None = None, data_sha256: str | None = None) -> CalibrationResult:
    """Ranges for `model_path` from the cache when (graph, data, method, N, options) match, else computed
    and stored. `reader` must have `fingerprint()` unless `data_sha256` is given."""
    method = check_method(method)
    cache = cache or CalibrationCache()
    n = len(getattr(reader, "posts", ())) or len(reader)
    data_hash = data_sha256 or reader.fingerprint()
    opts = {**DEFAULT_OPTIONS[method], **(options or {}), "op_types": sorted(op_types or [])}
    key = cache_key(sha256_file(model_path), data_hash, method, n, opts)
    t0 = time.perf_counter()
    hit = cache.get(key)
    if hit is not None:
        log.info("calibration cache hit (%s, %d samples): %s", method, n, hit)
        return CalibrationResult(hit, key, True, method, n, time.perf_counter() - t0)
    log.info("calibrating with %s over %d samples ...", method, n)
    ranges = compute_ranges(model_path, reader, method, op_types, options)
    path = cache.put(key, ranges, {"method": method, "samples": n, "data_sha256": data_hash})
    return CalibrationResult(path, key, False, method, n, time.perf_counter() - t0)
