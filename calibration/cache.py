"""Calibration cache: activation ranges keyed by (graph hash, data hash, method, N, options).

A file `<key>.json` holds onnxruntime's TensorsData JSON (so `quantize_static(calibration_cache_path=...)`
reads it directly) plus a `sydes` entry with what the key was made of. Files are written atomically,
so an interrupted calibration never leaves a cache entry that a later export would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from sdk.atomic import atomic_write_text
from sdk.errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1


from sdk.cache import cache_root  # noqa: E402  (the one definition)


def default_cache_dir() -> Path:
    return cache_root() / "calibration"


def cache_key(graph_sha256: str, data_sha256: str, method: str, samples: int,
              options: dict[str, Any] | None = None) -> str:
    """Hex sha256 of everything that decides the ranges."""
    blob = json.dumps({"v": CACHE_VERSION, "graph": graph_sha256, "data": data_sha256, "method": method,
                       "samples": samples, "options": options or {}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class CalibrationCache:
    """A folder of cached range files. `get(key)` -> path or None; `put(key, tensors_data, meta)`."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(directory) if directory is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str) -> Path | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with open(p, encoding="utf-8") as f:
                payload = json.load(f)
            if payload.get("sydes", {}).get("key") != key or "data" not in payload:
                raise ValueError("key mismatch or no ranges")
        except (OSError, ValueError) as e:  # corrupt entry: ignore it, it will be rewritten
            log.warning("ignoring unreadable calibration cache entry %s: %s", p, e)
            return None
        return p

    def load(self, key: str) -> Any | None:
        """The cached onnxruntime TensorsData, or None."""
        p = self.get(key)
        if p is None:
            return None
        from onnxruntime.quantization.calibrate import load_tensors_data

        return load_tensors_data(p)

    def meta(self, key: str) -> dict[str, Any] | None:
        p = self.get(key)
        if p is None:
            return None
        with open(p, encoding="utf-8") as f:
            return json.load(f).get("sydes")

    def put(self, key: str, tensors_data: Any, meta: dict[str, Any] | None = None) -> Path:
        """Store onnxruntime TensorsData under `key` (atomic write) and return the file's path."""
        from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

        payload = tensors_data.to_dict()
        payload["smooth_quant"] = False
        payload["sydes"] = {"key": key, "version": CACHE_VERSION, **(meta or {})}
        try:
            text = json.dumps(payload, cls=CalibrationCacheEncoder)
        except TypeError as e:
            raise DataError(f"calibration ranges cannot be serialised: {e}") from e
        p = self.path(key)
        atomic_write_text(p, text)
        return p
