"""benchmarks/cpu_peers.py's table and options (no model is built or timed here)."""

from __future__ import annotations

import argparse
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


def test_table_compares_a_graph_baseline_but_never_picks_it_as_best() -> None:
    med = {"ort-int8": {16: 100.0}, "old-int8": {16: 80.0}}  # an older commit's graph, via --graph
    t = cpu_peers.table("edge", med, floor=50.0)
    assert "best INT8 path ort-int8: 100.0 ms/post" in t
    assert "onnxruntime INT8 vs old-int8 (b16): 0.800x" in t


@pytest.mark.parametrize("arg, match", [("old.onnx", "takes NAME=MODEL.onnx"),
                                        ("ort-int8=x.onnx", "is a built-in path; valid built-ins: torch-fp32"),
                                        ("old=missing.onnx", "no such file missing.onnx")])
def test_graph_option_errors(arg: str, match: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        cpu_peers.graph_arg(arg)


def test_graph_names_must_differ(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(SystemExit):
        cpu_peers.main(["--graph", f"old={tmp_path / 'm.onnx'}", "--graph", f"old={tmp_path / 'm.onnx'}"])
    assert "--graph names must differ" in capsys.readouterr().err


def test_graph_option_takes_a_name_and_a_file(tmp_path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert cpu_peers.graph_arg(f"old={tmp_path / 'm.onnx'}") == ("old", tmp_path / "m.onnx")


def test_unknown_path_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cpu_peers.main(["--paths", "ort-int9"])
    err = capsys.readouterr().err
    assert "invalid choice: 'ort-int9'" in err and "ort-int8-unfused" in err


def test_bundle_cache_is_keyed_by_the_export_code(tmp_path, monkeypatch) -> None:
    import export.pipeline

    root = tmp_path / "src"
    for pkg in ("export", "calibration", "training"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(cpu_peers, "ROOT", root)
    monkeypatch.setattr(cpu_peers, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(cpu_peers, "checkpoint", lambda preset: tmp_path / "ck")
    built: list[Path] = []

    def fake_export(checkpoints, out, opts):
        out.mkdir(parents=True)
        (out / "manifest.json").write_text("{}")
        built.append(out)

        class Report:
            def summary(self) -> str:
                return "built"
        return Report()

    monkeypatch.setattr(export.pipeline, "export_checkpoints", fake_export)
    first = cpu_peers.bundle("edge", "ort-fp32", 8)
    assert cpu_peers.bundle("edge", "ort-fp32", 8) == first and len(built) == 1  # reused
    assert cpu_peers.code_key([8, None]) != cpu_peers.code_key([16, None])
    (root / "export" / "a.py").write_text("x = 2\n")  # the export code changed: built afresh, the old one gone
    second = cpu_peers.bundle("edge", "ort-fp32", 8)
    assert second != first and len(built) == 2 and second.is_dir() and not first.exists()
