"""The one cache root of SyDES (converted backbones, feature caches, calibration ranges, raw graph exports,
compiled OpenVINO models): $SYDES_CACHE_DIR, else $XDG_CACHE_HOME/sydes, else ~/.cache/sydes. Never inside
the repository."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("SYDES_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sydes"
