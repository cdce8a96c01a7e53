"""`sydes info BUNDLE --trtexec`: the trtexec / Polygraphy commands for the bundle's engines."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from bundle_fixture import build_fake_bundle
from tensorrt_fakes import install

from sdk.bundle import load_bundle
from sdk.commands.info import nvidia_commands
from sdk.errors import ConfigError


def _lines(text: str, tool: str) -> list[list[str]]:
    return [shlex.split(line) for line in text.splitlines() if line.startswith(tool + " ")]


def test_commands_for_a_bundle_without_engines(tmp_path: Path, capsys) -> None:
    from sdk.cli import main

    b = build_fake_bundle(tmp_path / "b.sydes", max_length=16, precision="fp32")
    assert main(["info", str(b), "--trtexec", "--max-batch", "16"]) == 0
    out = capsys.readouterr().out
    (trtexec,) = _lines(out, "trtexec")
    assert trtexec[1:3] == [f"--onnx={b / 'model.onnx'}", "--stronglyTyped"]
    assert "--minShapes=global_pixels:1x224x224x3,canvas_pixels:1x448x448x3,input_ids:1x2,attention_mask:1x2" in trtexec
    assert "--maxShapes=global_pixels:16x224x224x3,canvas_pixels:16x448x448x3,input_ids:16x16,attention_mask:16x16" \
        in trtexec
    assert f"--saveEngine={b / 'engines' / 'trtexec-fp32-b16.engine'}" in trtexec
    assert "--noTF32" in trtexec  # FP32 parity
    assert not {"--fp16", "--int8", "--best", "--precisionConstraints=obey"} & set(trtexec)
    (poly,) = _lines(out, "polygraphy")
    assert poly[:6] == ["polygraphy", "run", str(b / "model.onnx"), "--trt", "--onnxrt", "--strongly-typed"]
    i = poly.index("--trt-max-shapes")
    assert poly[i + 1:i + 5] == ["global_pixels:[16,224,224,3]", "canvas_pixels:[16,448,448,3]", "input_ids:[16,16]",
                                 "attention_mask:[16,16]"]
    assert "input_ids:[0,39]" in poly and "global_pixels:[0,255]" in poly  # ids inside the 40-token vocabulary
    assert poly[poly.index("--atol") + 1] == "1e-4"
    with pytest.raises(ConfigError, match="--max-batch must be a positive integer"):
        nvidia_commands(load_bundle(b), 0)


def test_commands_follow_the_recorded_engines(tmp_path: Path, monkeypatch, capsys) -> None:
    from sdk.backends.tensorrt import EngineTarget, OptimizationProfile, ensure_engine
    from sdk.cli import main

    install(monkeypatch, "10.3.0")
    b = build_fake_bundle(tmp_path / "b.sydes", max_length=16, precision="int8")
    bb = load_bundle(b)
    target = EngineTarget("NVIDIA Fake GPU", "8.7", "10.3.0", "int8", bb.manifest.graph.sha256)
    path, _ = ensure_engine(bb, target, OptimizationProfile(1, 4, 64, 2, 16, 16), build=True, workspace_bytes=2 << 30)
    assert main(["info", str(b), "--trtexec"]) == 0
    out = capsys.readouterr().out
    (trtexec,) = _lines(out, "trtexec")
    assert f"--saveEngine={path}" in trtexec and "--memPoolSize=workspace:2048" in trtexec
    assert any(a.startswith("--optShapes=global_pixels:4x") for a in trtexec) and "--noTF32" not in trtexec
    assert main(["info", str(b)]) == 0
    assert "recorded engines/" in capsys.readouterr().out
