"""benchmarks/cpu_peers.py's table and options (no model is built or timed here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cpu_peers  # noqa: E402


def test_table_of_a_subset_of_paths() -> None:
    med = {"ort-int8": {1: 100.0, 16: 90.0}, "ort-int8-unfused": {1: 110.0, 16: 99.0}}
    t = cpu_peers.table("edge", med, floor=80.0)
    assert "| ort-int8 | 100.0 | 90.0 | - | - |" in t  # no torch / peer row measured: no ratio invented
    assert "best INT8 path ort-int8: 90.0 ms/post = 1.12x the floor" in t
    assert "onnxruntime INT8 vs ort-int8-unfused (b16): 1.100x" in t
    assert "ort-int8-4d" not in t


def test_table_ratios_against_torch_and_the_peer() -> None:
    med = {"torch-fp32": {16: 300.0}, "peer-ov-nncf-defaults": {16: 200.0}, "ort-int8": {16: 100.0}}
    t = cpu_peers.table("edge", med, floor=50.0)
    assert "| ort-int8 | 100.0 | 3.00x | 2.00x |" in t


def test_unknown_path_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cpu_peers.main(["--paths", "ort-int9"])
    err = capsys.readouterr().err
    assert "invalid choice: 'ort-int9'" in err and "ort-int8-unfused" in err
