"""The engine-reuse rule, the manifest's engine records, backend="auto" never building, the export step
and onnxruntime's TensorRT-provider options; all against fake TensorRT / cuda-python modules."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from bundle_fixture import build_fake_bundle, read_manifest
from tensorrt_fakes import install

from sdk.backends.tensorrt import EngineNotBuiltError, EngineTarget, OptimizationProfile, ensure_engine
from sdk.bundle import load_bundle, validate_manifest
from sdk.errors import BackendUnavailableError, BundleError, ConfigError

GPU, CC = "NVIDIA Fake GPU", "8.7"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return build_fake_bundle(tmp_path / "b.sydes", max_length=16, precision="fp16")


def _target(b, trt="10.3.0", gpu=GPU):
    return EngineTarget(gpu, CC, trt, b.precision, b.manifest.graph.sha256)


def _want(b, max_batch):
    return OptimizationProfile.for_bundle(max_batch, b.manifest.tokenizer.max_length, True)


def test_built_engine_is_recorded_and_reused_by_smaller_requests(bundle: Path, monkeypatch, caplog) -> None:
    calls = install(monkeypatch, "10.3.0")
    b = load_bundle(bundle)
    with caplog.at_level(logging.INFO, logger="sdk.backends.tensorrt"):
        path, prof = ensure_engine(b, _target(b), _want(b, 32), build=True)
    assert "building a TensorRT engine for NVIDIA Fake GPU (TensorRT 10.3.0, fp16, batch 1..32" in caplog.text
    assert path.parent == bundle / "engines" and calls.builds == 1
    rec = read_manifest(bundle)["tensorrt_engines"]
    assert len(rec) == 1 and rec[0]["profile"] == prof.to_dict() == {
        "min_batch": 1, "opt_batch": 8, "max_batch": 32, "min_seq": 2, "opt_seq": 16, "max_seq": 16}
    assert rec[0]["file"] == f"engines/{path.name}" and rec[0]["strongly_typed"] is True
    assert rec[0]["gpu"] == GPU and rec[0]["compute_capability"] == CC and rec[0]["tensorrt"] == "10.3.0"
    b = load_bundle(bundle)  # what a later process sees
    assert b.manifest.engine_records[0].covers(16, 2, 16)
    for batch in (1, 16, 32):  # sydes analyze (16), the HTTP sample (16), export's default (32)
        got, gp = ensure_engine(b, _target(b), _want(b, batch), build=False)
        assert got == path and gp.max_batch == 32
    assert calls.builds == 1
    with pytest.raises(EngineNotBuiltError, match=r"covers batch 1\.\.64, text length 2\.\.16.*--max-batch 64"):
        ensure_engine(b, _target(b), _want(b, 64), build=False)
    for other in (_target(b, trt="10.4.0"), _target(b, gpu="NVIDIA Other"),
                  EngineTarget(GPU, CC, "10.3.0", "int8", b.manifest.graph.sha256)):
        with pytest.raises(EngineNotBuiltError, match="no TensorRT engine"):
            ensure_engine(b, other, _want(b, 16), build=False)


def test_the_smallest_covering_engine_wins(bundle: Path, monkeypatch) -> None:
    install(monkeypatch, "11.4.0")
    b = load_bundle(bundle)
    p32, _ = ensure_engine(b, _target(b, "11.4.0"), _want(b, 32), build=True)
    p64, _ = ensure_engine(load_bundle(bundle), _target(b, "11.4.0"), _want(b, 64), build=True)
    # an existing engine that covers the request is used even when building is allowed
    assert ensure_engine(load_bundle(bundle), _target(b, "11.4.0"), _want(b, 48), build=True)[0] == p64
    assert p64 != p32 and len(read_manifest(bundle)["tensorrt_engines"]) == 2
    b = load_bundle(bundle)
    assert ensure_engine(b, _target(b, "11.4.0"), _want(b, 16), build=False)[0] == p32
    assert ensure_engine(b, _target(b, "11.4.0"), _want(b, 48), build=False)[0] == p64


def test_a_modified_engine_is_not_deserialised(bundle: Path, monkeypatch, caplog) -> None:
    install(monkeypatch, "10.3.0")
    b = load_bundle(bundle)
    path, _ = ensure_engine(b, _target(b), _want(b, 32), build=True)
    path.write_bytes(b"ENGINE-10.3.1")  # same size, other content
    b = load_bundle(bundle)
    with caplog.at_level(logging.WARNING), pytest.raises(EngineNotBuiltError, match="no TensorRT engine"):
        ensure_engine(b, _target(b), _want(b, 16), build=False)
    assert "does not match its recorded sha256" in caplog.text


def test_unrecorded_engine_of_an_older_bundle_is_used(bundle: Path, monkeypatch) -> None:
    install(monkeypatch, "10.3.0")
    b = load_bundle(bundle)
    legacy = bundle / "engines" / f"{_target(b).key(_want(b, 16))}.engine"
    legacy.write_bytes(b"OLD")
    assert ensure_engine(b, _target(b), _want(b, 16), build=False)[0] == legacy


def test_read_only_bundle_records_in_the_user_cache(bundle: Path, monkeypatch, tmp_path: Path) -> None:
    import sdk.backends.trt_engines as E

    install(monkeypatch, "10.3.0")
    monkeypatch.setenv("SYDES_CACHE_DIR", str(tmp_path / "cache"))
    real = os.access
    monkeypatch.setattr(E.os, "access", lambda p, m: False if str(p).startswith(str(bundle)) else real(p, m))
    before = (bundle / "manifest.json").read_bytes()
    b = load_bundle(bundle)
    path, _ = ensure_engine(b, _target(b), _want(b, 32), build=True)
    assert (bundle / "manifest.json").read_bytes() == before
    udir = tmp_path / "cache" / "engines" / b.manifest.graph.sha256[:16]
    assert path.parent == udir
    index = json.loads((udir / "index.json").read_text())
    assert index["format"] == "sydes-engine-index/1" and index["tensorrt_engines"][0]["file"] == path.name
    assert ensure_engine(load_bundle(bundle), _target(b), _want(b, 8), build=False)[0] == path
    (udir / "index.json").write_text("{broken")  # a broken cache index costs a rebuild, nothing else
    with pytest.raises(EngineNotBuiltError):
        ensure_engine(load_bundle(bundle), _target(b), _want(b, 8), build=False)


@pytest.mark.parametrize(("change", "match"), [
    (lambda r: r["profile"].update(min_batch=4, opt_batch=2), "needs min <= opt <= max"),
    (lambda r: r["profile"].pop("max_seq"), r"tensorrt_engines\[0\]\.profile\.max_seq' is missing"),
    (lambda r: r.update(precision="bf16"), "precision' is 'bf16'; valid: fp32, fp16, int8"),
    (lambda r: r.update(file="/etc/passwd"), "must be a relative path inside the bundle"),
    (lambda r: r.update(key="xyz"), "key' must be 64 lowercase hex digits"),
    (lambda r: r.update(workspace_bytes=0), "workspace_bytes' must be a positive integer or null"),
    (lambda r: r.update(strongly_typed="yes"), "strongly_typed' must be true or false"),
])
def test_engine_records_are_validated(bundle: Path, change, match) -> None:
    m = read_manifest(bundle)
    assert validate_manifest(m).engine_records == ()  # manifests without records stay valid
    rec = {"file": "engines/a.engine", "sha256": "0" * 64, "bytes": 3, "key": "1" * 64, "gpu": GPU,
           "compute_capability": CC, "tensorrt": "10.3.0", "precision": "fp16", "graph_sha256": "2" * 64,
           "profile": {"min_batch": 1, "opt_batch": 8, "max_batch": 32, "min_seq": 2, "opt_seq": 16,
                       "max_seq": 16}, "strongly_typed": True, "workspace_bytes": None}
    m["tensorrt_engines"] = [rec]
    assert validate_manifest(m).engine_records[0].profile["max_batch"] == 32
    change(rec)
    with pytest.raises(BundleError, match=match):
        validate_manifest(m)
    m["tensorrt_engines"] = {"not": "a list"}
    with pytest.raises(BundleError, match="'tensorrt_engines' must be a list"):
        validate_manifest(m)


# --- the backends ---------------------------------------------------------------------------------------
def test_auto_never_builds_and_says_how(bundle: Path, monkeypatch, caplog) -> None:
    import sdk.backends.tensorrt as T
    from sdk.analyzer import Analyzer

    calls = install(monkeypatch, "10.3.0")
    monkeypatch.setattr(T.TensorRTBackend, "probe", classmethod(lambda cls, d: None))
    with caplog.at_level(logging.WARNING), Analyzer(bundle, warmup=False, max_batch_size=16) as a:
        assert a.info.backend == "onnxruntime"
    assert calls.builds == 0 and not list((bundle / "engines").glob("*.engine"))
    assert "backend tensorrt could not start (no TensorRT engine" in caplog.text
    assert "backend='tensorrt'" in caplog.text and "--format tensorrt --max-batch 16" in caplog.text


def test_auto_uses_an_engine_that_exists(bundle: Path, monkeypatch) -> None:
    import sdk.backends.tensorrt as T
    from sdk.backends import create_backend

    calls = install(monkeypatch, "11.4.0")
    monkeypatch.setattr(T.TensorRTBackend, "probe", classmethod(lambda cls, d: None))
    b = load_bundle(bundle)
    path, _ = ensure_engine(b, _target(b, "11.4.0"), _want(b, 32), build=True)
    be = create_backend(load_bundle(bundle), "cuda", "auto", max_batch_size=16)
    assert be.name == "tensorrt" and be.engine_path == path and be.profile.max_batch == 32
    assert calls.builds == 1 and calls.deserialised == [path.read_bytes()]
    assert be.inputs == ["global_pixels", "canvas_pixels", "input_ids", "attention_mask"]
    assert str(be.dtypes["global_pixels"]) == "uint8" and str(be.dtypes["probs_sentiment"]) == "float32"


def test_explicit_tensorrt_builds_and_says_so(bundle: Path, monkeypatch, caplog) -> None:
    import sdk.backends.tensorrt as T
    from sdk.backends import create_backend

    calls = install(monkeypatch, "10.3.0")
    monkeypatch.setattr(T.TensorRTBackend, "probe", classmethod(lambda cls, d: None))
    with caplog.at_level(logging.WARNING):
        be = create_backend(load_bundle(bundle), "cuda", "tensorrt", max_batch_size=4, workspace_bytes=1 << 30)
    assert calls.builds == 1 and calls.pool_limits == [("WORKSPACE", 1 << 30)]
    assert "building a TensorRT engine" in caplog.text and "this takes minutes" in caplog.text
    assert read_manifest(bundle)["tensorrt_engines"][0]["workspace_bytes"] == 1 << 30
    assert be.profile.max_batch == 4
    monkeypatch.undo()  # the real probe: the CPU is refused before any engine work
    with pytest.raises(BackendUnavailableError, match="backend 'tensorrt' cannot run on device 'cpu'"):
        create_backend(load_bundle(bundle), "cpu", "tensorrt")
    install(monkeypatch, "10.3.0")
    monkeypatch.setattr(T.TensorRTBackend, "probe", classmethod(lambda cls, d: None))
    with pytest.raises(EngineNotBuiltError, match="building is disabled"):
        create_backend(load_bundle(bundle), "cuda", "tensorrt", engine_path=bundle / "nope.engine", build=False)


def test_export_builds_and_records_the_engine(bundle: Path, monkeypatch) -> None:
    from export.tensorrt import build_bundle_engine

    calls = install(monkeypatch, "10.3.0")
    path = build_bundle_engine(bundle, max_batch=32, workspace_mb=512)
    assert calls.pool_limits == [("WORKSPACE", 512 << 20)]
    assert calls.shapes["input_ids"] == ((1, 2), (8, 16), (32, 16))
    assert read_manifest(bundle)["tensorrt_engines"][0]["file"] == f"engines/{path.name}"
    assert build_bundle_engine(bundle, max_batch=16) == path and calls.builds == 1  # covered: no rebuild
    with pytest.raises(ConfigError, match="--max-batch must be a positive integer, got 0"):
        build_bundle_engine(bundle, max_batch=0)
    with pytest.raises(ConfigError, match="--workspace must be a positive number of MiB"):
        build_bundle_engine(bundle, workspace_mb=-5)


def test_export_cli_takes_max_batch_and_workspace() -> None:
    import argparse

    from export.commands.export import add_arguments
    from export.pipeline import ExportOptions, check_options

    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args(["ck", "-o", "x.sydes", "--format", "tensorrt", "--max-batch", "64", "--workspace", "2048"])
    assert (a.max_batch, a.workspace) == (64, 2048)
    with pytest.raises(ConfigError, match="--max-batch must be a positive integer"):
        check_options(ExportOptions(max_batch=0))


# --- onnxruntime's TensorRT execution provider -----------------------------------------------------------
def _ort(bundle: Path, **kw):
    from sdk.backends.base import Device
    from sdk.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(load_bundle(bundle), Device.parse("cuda"), **kw)


def test_ort_tensorrt_provider_options(bundle: Path) -> None:
    opts = _ort(bundle, max_batch_size=16)._trt_options(0)
    assert opts["trt_profile_min_shapes"] == ("global_pixels:1x224x224x3,canvas_pixels:1x448x448x3,"
                                              "input_ids:1x2,attention_mask:1x2")
    assert opts["trt_profile_opt_shapes"] == ("global_pixels:8x224x224x3,canvas_pixels:8x448x448x3,"
                                              "input_ids:8x16,attention_mask:8x16")
    assert opts["trt_profile_max_shapes"] == ("global_pixels:32x224x224x3,canvas_pixels:32x448x448x3,"
                                              "input_ids:32x16,attention_mask:32x16")
    assert opts["trt_engine_cache_enable"] is True and opts["trt_timing_cache_enable"] is True
    assert opts["trt_engine_cache_path"] == str(bundle / "engines" / "ort-trt")
    assert opts["trt_fp16_enable"] is True and opts["trt_int8_enable"] is False
    # batch sizes 16 and 32 share one profile (one cached engine); 64 gets its own
    assert _ort(bundle, max_batch_size=32)._trt_options(0)["trt_profile_max_shapes"] == opts["trt_profile_max_shapes"]
    assert _ort(bundle, max_batch_size=64)._trt_options(0)["trt_profile_max_shapes"].startswith("global_pixels:64x")
    assert _ort(bundle, workspace_bytes=1 << 30)._trt_options(0)["trt_max_workspace_size"] == 1 << 30


def test_ort_tensorrt_provider_is_never_a_silent_build(bundle: Path, caplog) -> None:
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level(logging.INFO):
        names = [p[0] if isinstance(p, tuple) else p for p in _ort(bundle)._provider_list(avail)]
    assert names == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "TensorRT provider skipped: no cached engine" in caplog.text and "ort_tensorrt=True" in caplog.text
    with caplog.at_level(logging.WARNING):
        names = [p[0] if isinstance(p, tuple) else p for p in _ort(bundle, ort_tensorrt=True)._provider_list(avail)]
    assert names[0] == "TensorrtExecutionProvider" and "builds its engines on the first session start" in caplog.text
    (bundle / "engines" / "ort-trt" / "TensorrtExecutionProvider_TRTKernel_x_sm87.engine").write_bytes(b"E")
    assert _ort(bundle)._provider_list(avail)[0][0] == "TensorrtExecutionProvider"  # cached: used
    assert [p for p in _ort(bundle, ort_tensorrt=False)._provider_list(avail) if isinstance(p, tuple)
            and p[0] == "TensorrtExecutionProvider"] == []


def test_manifest_lock_held_too_long_is_a_clear_error(bundle: Path) -> None:
    from sdk.backends.trt_engines import file_lock, record_engine

    lock = bundle / ".manifest.json.lock"
    with file_lock(lock):
        assert lock.exists()
        with pytest.raises(BundleError, match=r"\.manifest\.json\.lock is held by another process"), \
                file_lock(lock, timeout_s=0.3):
            pass
    assert not lock.exists()
    with pytest.raises(BundleError, match=r"tensorrt_engines\[0\]\.profile' is missing"):
        record_engine(bundle, {"file": "engines/x.engine"})  # validated before anything is written
    assert "tensorrt_engines" not in read_manifest(bundle)


def test_ort_tensorrt_cache_falls_back_to_the_user_cache(bundle: Path, monkeypatch, tmp_path: Path) -> None:
    import sdk.backends.onnxruntime as O

    monkeypatch.setenv("SYDES_CACHE_DIR", str(tmp_path / "cache"))
    real = os.access
    monkeypatch.setattr(O.os, "access", lambda p, m: False if str(p).startswith(str(bundle)) else real(p, m))
    cache = _ort(bundle)._trt_options(0)["trt_engine_cache_path"]
    assert cache.startswith(str(tmp_path / "cache" / "engines")) and cache.endswith("ort-trt")
    monkeypatch.setattr(O.os, "access", lambda p, m: False)
    with pytest.raises(BackendUnavailableError, match="no writable folder for onnxruntime's TensorRT engine cache"):
        _ort(bundle)._trt_options(0)
