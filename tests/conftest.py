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
