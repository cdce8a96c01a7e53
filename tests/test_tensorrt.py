"""The strongly typed TensorRT build path against fake TensorRT 10.x and 11.x modules (tests/tensorrt_fakes.py).

What is pinned: the network creation flag (STRONGLY_TYPED only), no precision builder flags / calibrators /
precision constraints ever (the 11.x fake does not even have them), TF32 cleared for FP32 bundles only, one
optimisation profile with min/opt/max for batch and text length on every input, the workspace limit, the
timing cache read and written back, the atomic engine write, progress reporting, and the version check.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from tensorrt_fakes import NAMES_IN, install

from sdk.backends.trt_build import OptimizationProfile, build_engine, import_trt, trt_major
from sdk.errors import BackendUnavailableError, ConfigError, SydesError

VERSIONS = ["10.3.0.26", "10.13.0", "11.4.0"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_strongly_typed_build_pins_the_calls(tmp_path: Path, monkeypatch, version: str, precision: str) -> None:
    calls = install(monkeypatch, version)
    trt = sys.modules["tensorrt"]
    prof = OptimizationProfile(1, 4, 8, 2, 16, 16)
    timing = tmp_path / "timing.cache"
    out = build_engine(tmp_path / "m.onnx", tmp_path / "engines" / "k.engine", precision, prof, timing,
                       workspace_bytes=256 << 20)
    assert out.read_bytes() == b"ENGINE-" + version.encode()
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temp file
    assert calls.network_flags == [1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED]
    assert calls.set_flags == []  # no FP16 / INT8 / BF16 / precision-constraint flag, on 10.x either
    assert calls.cleared_flags == (["TF32"] if precision == "fp32" else [])
    assert set(calls.config_attrs) == {"progress_monitor"}  # no int8_calibrator or anything else
    assert isinstance(calls.config_attrs["progress_monitor"], trt.IProgressMonitor)
    assert calls.config_attrs["progress_monitor"].base_init
    assert calls.pool_limits == [("WORKSPACE", 256 << 20)]
    assert calls.shapes == {
        "global_pixels": ((1, 224, 224, 3), (4, 224, 224, 3), (8, 224, 224, 3)),
        "canvas_pixels": ((1, 448, 448, 3), (4, 448, 448, 3), (8, 448, 448, 3)),
        "input_ids": ((1, 2), (4, 16), (8, 16)),
        "attention_mask": ((1, 2), (4, 16), (8, 16)),
    }
    assert calls.parsed == [str(tmp_path / "m.onnx")]
    assert calls.timing_in == [b""] and timing.read_bytes() == b"TIMING"
    build_engine(tmp_path / "m.onnx", tmp_path / "engines" / "k2.engine", precision, prof, timing)
    assert calls.timing_in[-1] == b"TIMING"  # the second build starts from the first one's timing cache
    assert len(calls.pool_limits) == 1  # no workspace given: TensorRT's default


def test_the_11x_fake_has_no_weak_typing_api(monkeypatch) -> None:
    install(monkeypatch, "11.4.0")
    trt = sys.modules["tensorrt"]
    for name in ("FP16", "INT8", "BF16", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"):
        assert not hasattr(trt.BuilderFlag, name)
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert not hasattr(trt, "IInt8EntropyCalibrator2")
    assert import_trt() is trt


def test_build_progress_is_logged(tmp_path: Path, monkeypatch, caplog) -> None:
    install(monkeypatch, "11.4.0")
    import sdk.backends.trt_build as B

    monitor = {}
    real = B._Progress.__init__

    def init(self, trt, what, every_s=20.0):
        real(self, trt, what, every_s=0.01)
        monitor["m"] = self.monitor

    monkeypatch.setattr(B._Progress, "__init__", init)
    trt = sys.modules["tensorrt"]
    slow = trt.Builder.build_serialized_network

    def build(self, net, cfg):
        cfg.progress_monitor.phase_start("Building engine", None, 3)
        assert cfg.progress_monitor.step_complete("Building engine", 1) is True
        import time
        time.sleep(0.1)  # long enough for the heartbeat
        return slow(self, net, cfg)

    monkeypatch.setattr(trt.Builder, "build_serialized_network", build)
    with caplog.at_level(logging.INFO, logger="sdk.backends.tensorrt"):
        build_engine(tmp_path / "m.onnx", tmp_path / "e.engine", "fp16", OptimizationProfile())
    text = caplog.text
    assert "TensorRT build: Building engine (3 steps)" in text
    assert "still building the TensorRT engine e.engine" in text
    assert "built TensorRT engine e.engine" in text


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "12.0.0", "nightly"])
def test_unsupported_tensorrt_is_a_clear_error(tmp_path: Path, monkeypatch, version: str) -> None:
    install(monkeypatch, "10.3.0")
    sys.modules["tensorrt"].__version__ = version
    with pytest.raises(BackendUnavailableError, match=rf"TensorRT {version} is not supported: .*10\.x or 11\.x"):
        import_trt()
    with pytest.raises(BackendUnavailableError, match="is not supported"):
        build_engine(tmp_path / "m.onnx", tmp_path / "e.engine", "fp16", OptimizationProfile())


def test_tensorrt_without_strongly_typed_flag_is_refused(monkeypatch) -> None:
    install(monkeypatch, "10.0.0")
    trt = sys.modules["tensorrt"]
    del trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    with pytest.raises(BackendUnavailableError, match="no NetworkDefinitionCreationFlag.STRONGLY_TYPED"):
        import_trt()


def test_trt_major() -> None:
    assert trt_major("10.3.0.26") == 10 and trt_major("11.4.0") == 11
    with pytest.raises(ConfigError, match="cannot read a TensorRT version from 'x.y'"):
        trt_major("x.y")


def test_parse_and_build_failures(tmp_path: Path, monkeypatch) -> None:
    calls = install(monkeypatch, "11.4.0")
    calls.parse_ok = False
    with pytest.raises(SydesError, match="TensorRT cannot parse .*m.onnx: unsupported op Foo"):
        build_engine(tmp_path / "m.onnx", tmp_path / "e.engine", "fp16", OptimizationProfile())
    calls.parse_ok, calls.build_ok = True, False
    with pytest.raises(SydesError, match=r"TensorRT failed to build an engine .*precision int8"):
        build_engine(tmp_path / "m.onnx", tmp_path / "e.engine", "int8", OptimizationProfile())
    assert not (tmp_path / "e.engine").exists()
    with pytest.raises(ConfigError, match="precision 'bf16' is not valid; valid: fp32, fp16, int8"):
        build_engine(tmp_path / "m.onnx", tmp_path / "e.engine", "bf16", OptimizationProfile())


def test_profile_covers() -> None:
    big = OptimizationProfile.for_bundle(32, 77, trim=True)
    assert big.covers(OptimizationProfile.for_bundle(16, 77, trim=True))
    assert big.covers(big)
    assert not big.covers(OptimizationProfile.for_bundle(64, 77, trim=True))
    assert not OptimizationProfile.for_bundle(32, 77, trim=False).covers(big)  # min_seq 77 > 2
    assert OptimizationProfile.from_dict(big.to_dict()) == big
    assert set(NAMES_IN) == {"global_pixels", "canvas_pixels", "input_ids", "attention_mask"}
