from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MSED_DIR = Path(os.environ.get("SYDES_MSED_DIR", ROOT.parent / "shared" / "data" / "msed-mini"))

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def msed_dir() -> Path:
    if not (MSED_DIR / "dev" / "dev.csv").is_file():
        pytest.skip(f"MSED data not found at {MSED_DIR} (set SYDES_MSED_DIR)")
    return MSED_DIR


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Caches (calibration ranges, raw graphs, converted backbones) go to a per-session folder, never ~/.cache."""
    old = os.environ.get("SYDES_CACHE_DIR")
    os.environ["SYDES_CACHE_DIR"] = str(tmp_path_factory.mktemp("sydes-cache"))
    yield
    if old is None:
        os.environ.pop("SYDES_CACHE_DIR", None)
    else:
        os.environ["SYDES_CACHE_DIR"] = old
