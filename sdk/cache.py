"""The one cache root of SyDES (converted backbones, feature caches, calibration ranges, raw graph exports,
compiled OpenVINO models): $SYDES_CACHE_DIR, else $XDG_CACHE_HOME/sydes, else ~/.cache/sydes. Never inside
the repository."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    env = os.environ.get("SYDES_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sydes"


def user_engine_dir(graph_sha256: str) -> Path:
    """The user-cache folder for compiled engines of one graph (used when the bundle cannot be written)."""
    return cache_root() / "engines" / graph_sha256[:16]


def engine_cache_dir(bundle: Any, name: str) -> Path | None:
    """A writable folder for one runtime's compiled engines / caches of `bundle` (`name`: "ort-trt",
    "openvino", ...): the bundle's engines/<name> when it can be written, else the user cache; None if neither."""
    for folder in (Path(bundle.engines_dir) / name, user_engine_dir(bundle.manifest.graph.sha256) / name):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    return None
