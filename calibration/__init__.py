"""calibration layer of SyDES Edge (see docs/architecture.md for the layers and who owns each contract).

Choosing calibration posts (stratified, reproducible), feeding them exactly as the runtime preprocesses
(`SydesCalibrationReader`), computing and caching activation ranges, and reporting what INT8 changes.
Imports sdk and numpy only; onnxruntime lazily.
"""

from __future__ import annotations

from calibration.cache import CalibrationCache, cache_key
from calibration.data import Post, data_fingerprint, generated_posts, load_items
from calibration.methods import METHODS, CalibrationResult, calibrate, check_method, compute_ranges
from calibration.reader import INPUT_NAMES, SydesCalibrationReader
from calibration.report import compare_probs, label_indices, macro_f1, run_graph
from calibration.sampling import MIN_RECOMMENDED_SAMPLES, select_samples

__all__ = [
    "INPUT_NAMES", "METHODS", "MIN_RECOMMENDED_SAMPLES", "CalibrationCache", "CalibrationResult", "Post",
    "SydesCalibrationReader", "cache_key", "calibrate", "check_method", "compare_probs", "compute_ranges",
    "data_fingerprint", "generated_posts", "label_indices", "load_items", "macro_f1", "run_graph",
    "select_samples",
]
