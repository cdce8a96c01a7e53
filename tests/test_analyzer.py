"""sdk.Analyzer against a tiny fake bundle: every call, bad inputs, batching, streaming, threads."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import build_fake_bundle
from PIL import Image

from sdk.analyzer import Analyzer
from sdk.batcher import MicroBatcher
from sdk.errors import BackendUnavailableError, ConfigError, SydesError
from sdk.results import Result


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("b") / "fake.sydes", max_length=12)


@pytest.fixture(scope="module")
def az(bundle: Path):
    with Analyzer(bundle, device="cpu", threads=1, max_batch_size=4, warmup=False) as a:
        yield a


# Batch composition changes the float reduction order of the fake graph's 50k-pixel means (ORT blocks
# reductions by shape), which moves probabilities by ~1e-5; real differences are far larger.
ATOL = 2e-4


def _img(seed: int, size=(64, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_img(seed)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(seed: int, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_img(seed, size)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _probs(r: Result) -> np.ndarray:
    assert r.ok, r.reason
    return np.concatenate([list(t.probs.values()) for t in r.tasks.values()])


def test_analyze_result_shape_and_info(az: Analyzer, bundle: Path) -> None:
    r = az.analyze(_img(0), "a happy dog on the beach")
    assert r.ok and list(r.tasks) == ["sentiment", "emotion", "desire"]
    s = r["sentiment"]
    assert s.label in ("negative", "neutral", "positive") and s.score == max(s.probs.values())
    assert abs(sum(s.probs.values()) - 1) < 1e-5 and list(s.probs) == ["negative", "neutral", "positive"]
    d = r.to_dict()
    assert d["ok"] and d["error"] is None and Result.from_dict(d) == r
    info = az.info
    assert info.backend == "onnxruntime" and info.device == "cpu" and info.providers == ["CPUExecutionProvider"]
    assert info.bundle == "fake" and info.precision == "fp32" and info.tasks["sentiment"][0] == "negative"
    assert "onnxruntime" in repr(az)
    # the text axis varies per batch: no per-shape memory patterns piling up for the session's life
    assert az.backend.session.get_session_options().enable_mem_pattern is False


def test_results_depend_on_image_and_text(az: Analyzer) -> None:
    a = _probs(az.analyze(_img(0), "a happy dog"))
    assert not np.allclose(a, _probs(az.analyze(_img(1), "a happy dog")))
    assert not np.allclose(a, _probs(az.analyze(_img(0), "sad night car")))


def test_all_image_source_types_agree(az: Analyzer, tmp_path: Path) -> None:
    png = _png(3)
    p = tmp_path / "x.png"
    p.write_bytes(png)
    ref = _probs(az.analyze(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), "cat"))
    for src in (str(p), p, png, io.BytesIO(png), Image.open(io.BytesIO(png))):
        assert np.allclose(_probs(az.analyze(src, "cat")), ref, atol=ATOL), type(src)


def _bad_inputs(tmp_path: Path) -> list[tuple[str, object, object, str, str]]:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(_jpeg(1, (256, 256))[:300])
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("this is not an image\n" * 10)
    big = tmp_path / "big.png"
    Image.new("1", (9000, 9000)).save(big)  # 81 Mpx, a few KB: caught from the header
    tf = open(text_file, encoding="utf-8")  # noqa: SIM115 - the text-mode file object is the bad input
    return [
        ("0-byte file", empty, "cat", "ImageDecodeError", "is empty"),
        ("empty bytes", b"", "cat", "ImageDecodeError", "empty"),
        ("truncated jpeg", trunc, "cat", "ImageDecodeError", "truncated|cannot be decoded"),
        ("non-image file", text_file, "cat", "ImageDecodeError", "not an image"),
        ("garbage bytes", b"\x00\x01garbage" * 20, "cat", "ImageDecodeError", "not an image"),
        ("missing file", tmp_path / "missing.jpg", "cat", "ImageDecodeError", "does not exist"),
        ("directory", tmp_path, "cat", "ImageDecodeError", "is a directory"),
        ("None image", None, "cat", "InputTypeError", "image is None"),
        ("int image", 42, "cat", "InputTypeError", "got int"),
        ("list image", [1, 2, 3], "cat", "InputTypeError", "got list"),
        ("text-mode file", tf, "cat", "InputTypeError", "text-mode file"),
        ("over-limit pixels", big, "cat", "ImageTooLargeError", "81,?000,?000|too large|exceeds"),
        ("numpy int32", np.zeros((8, 8, 3), np.int32), "cat", "InputTypeError", "dtype int32"),
        ("numpy complex", np.zeros((8, 8, 3), np.complex64), "cat", "InputTypeError", "dtype complex64"),
        ("numpy 5 channels", np.zeros((8, 8, 5), np.uint8), "cat", "InputTypeError", r"shape \(8, 8, 5\)"),
        ("numpy 1-D", np.zeros((8,), np.uint8), "cat", "InputTypeError", "shape"),
        ("numpy empty", np.zeros((0, 8, 3), np.uint8), "cat", "InputTypeError", "shape"),
        ("numpy float > 1", np.full((8, 8, 3), 2.0, np.float32), "cat", "InputTypeError", r"in \[0, 1\]"),
        ("numpy NaN", np.full((8, 8, 3), np.nan, np.float32), "cat", "InputTypeError", "finite"),
        ("empty text", _img(0), "", "TextError", "empty or whitespace only"),
        ("whitespace text", _img(0), "  \n\t ", "TextError", "empty or whitespace only"),
        ("None text", _img(0), None, "InputTypeError", "text must be a str, got NoneType"),
        ("int text", _img(0), 7, "InputTypeError", "text must be a str, got int"),
        ("bytes text", _img(0), b"cat", "InputTypeError", "text must be a str, got bytes"),
        ("list text", _img(0), ["cat"], "InputTypeError", "text must be a str, got list"),
    ]


def test_bad_inputs_each_give_a_clear_error(az: Analyzer, tmp_path: Path) -> None:
    import re

    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 20
    for what, image, text, etype, pattern in cases:
        r = az.analyze(image, text)
        assert not r.ok and r.tasks is None, what
        assert r.error_type == etype, f"{what}: {r.reason}"
        assert re.search(pattern, r.error), f"{what}: {r.reason!r} !~ {pattern!r}"
        assert r.reason.startswith(etype + ": ")
    # the same items inside one batch with good ones: every good item is answered, in order
    good = (_img(5), "a happy cat")
    pairs = [good] + [(i, t) for _, i, t, _, _ in cases] + [good]
    out = az.analyze_batch(pairs)
    assert len(out) == len(pairs) and out[0].ok and out[-1].ok
    assert [r.error_type for r in out[1:-1]] == [c[3] for c in cases]
    assert np.allclose(_probs(out[0]), _probs(az.analyze(*good)), atol=ATOL)


def test_bad_item_shapes_in_batch(az: Analyzer) -> None:
    out = az.analyze_batch([(_img(0), "cat"), (1, 2, 3), {"text": "x"}, {"image": _img(1), "text": "dog"}, "ab"])
    assert [r.ok for r in out] == [True, False, False, True, False]
    assert "(image, text) pair" in out[1].error and "no 'image' key" in out[2].error
    with pytest.raises(TypeError, match="list of \\(image, text\\) pairs"):
        az.analyze_batch("not a list")
    assert az.analyze_batch([]) == []


def test_rows_are_independent_and_batching_is_exact(az: Analyzer) -> None:
    pairs = [(_img(i), t) for i, t in enumerate(["cat", "a sad man", "party with friends and family", "dog", "x",
                                                 "sunny beach day"])]
    batch = az.analyze_batch(pairs)  # 6 items, max_batch_size 4: two model calls
    for p, r in zip(pairs, batch, strict=True):
        assert np.allclose(_probs(r), _probs(az.analyze(*p)), atol=ATOL)


def test_trim_padding_does_not_change_results(az: Analyzer, monkeypatch) -> None:
    pairs = [(_img(i), t) for i, t in enumerate(["cat", "the happy dog runs on the beach"])]
    trimmed = [_probs(r) for r in az.analyze_batch(pairs)]
    seen = []
    orig = az.backend.run
    monkeypatch.setattr(az.backend, "run", lambda f: seen.append(f["input_ids"].shape[1]) or orig(f))
    monkeypatch.setattr(az, "trim", False)
    full = [_probs(r) for r in az.analyze_batch(pairs)]
    assert seen == [12]  # untrimmed: max_length
    monkeypatch.setattr(az, "trim", True)
    az.analyze_batch(pairs)
    assert seen[1] < 12
    for a, b in zip(trimmed, full, strict=True):
        assert np.allclose(a, b, atol=ATOL)


def test_long_text_is_truncated(az: Analyzer) -> None:
    r = az.analyze(_img(0), "happy " * 5000)
    assert r.ok
    ids, _ = az.tokenizer.encode_batch(["happy " * 5000])
    assert ids.shape[1] == 12


def test_stream_order_and_bounded_prefetch(az: Analyzer) -> None:
    n = 23
    pairs = [(_img(i), f"cat dog {'sad ' * (i % 4)}") for i in range(n)]
    pulled = []

    def gen():
        for i, p in enumerate(pairs):
            pulled.append(i)
            yield p if i != 7 else (None, "bad")

    it = az.stream(gen(), batch_size=3, workers=2, prefetch=6)
    first = next(it)
    assert len(pulled) <= 6 + 3  # bounded: never reads far ahead of the model
    rest = list(it)
    out = [first] + rest
    assert len(out) == n and not out[7].ok
    ref = az.analyze_batch(pairs)
    for i in range(n):
        if i != 7:
            assert np.allclose(_probs(out[i]), _probs(ref[i]), atol=ATOL), i
    inline = list(az.stream(pairs[:5], batch_size=2, workers=0))
    assert [np.allclose(_probs(a), _probs(b), atol=ATOL) for a, b in zip(inline, ref[:5], strict=True)] == [True] * 5
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        az.stream(pairs, batch_size=0)
    with pytest.raises(ConfigError, match="workers must be an integer >= 0"):
        az.stream(pairs, workers=-1)


def test_stream_stops_early_cleanly(az: Analyzer) -> None:
    it = az.stream(((_img(i), "cat") for i in range(1000)), batch_size=2, workers=2)
    assert next(it).ok
    it.close()  # abandons the rest without decoding 1000 images


def test_submit_from_16_threads(az: Analyzer) -> None:
    pairs = [(_img(i), ["cat", "sad day", "party"][i % 3]) for i in range(48)]
    pairs[10] = (b"", "cat")
    ref = az.analyze_batch(pairs)
    barrier = threading.Barrier(16)

    def worker(k: int) -> list[Result]:
        barrier.wait()
        futs = [az.submit(*pairs[i]) for i in range(k, len(pairs), 16)]
        return [f.result(timeout=60) for f in futs]

    with ThreadPoolExecutor(16) as ex:
        outs = list(ex.map(worker, range(16)))
    for k, rs in enumerate(outs):
        for i, r in zip(range(k, len(pairs), 16), rs, strict=True):
            if i == 10:
                assert r.error_type == "ImageDecodeError"
            else:
                assert np.allclose(_probs(r), _probs(ref[i]), atol=ATOL)
    assert az._batcher is not None and az._batcher.items >= 47
    assert az._batcher.batches < 47  # concurrent submits really shared batches


def test_micro_batcher_basics() -> None:
    calls = []

    def fn(items):
        calls.append(len(items))
        if "boom" in items:
            raise RuntimeError("boom")
        return [x * 2 for x in items]

    with MicroBatcher(fn, max_batch=4, max_delay_ms=50) as mb:
        futs = [mb.submit(i) for i in range(10)]
        assert [f.result(timeout=10) for f in futs] == [i * 2 for i in range(10)]
        assert max(calls) <= 4
        with pytest.raises(RuntimeError, match="boom"):
            mb.submit("boom").result(timeout=10)
    with pytest.raises(SydesError, match="closed"):
        mb.submit(1)
    with pytest.raises(ConfigError, match="max_batch must be a positive integer"):
        MicroBatcher(fn, max_batch=0)
    with pytest.raises(ConfigError, match="max_delay_ms must be >= 0"):
        MicroBatcher(fn, max_delay_ms=-1)


def test_explicit_unavailable_backends_and_devices_raise(bundle: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="backend 'tensorrt' cannot run on device 'auto'.*tensorrt"):
        Analyzer(bundle, backend="tensorrt", warmup=False)
    with pytest.raises(BackendUnavailableError, match="TensorRT runs on NVIDIA GPUs only"):
        Analyzer(bundle, backend="tensorrt", device="cpu", warmup=False)
    with pytest.raises(BackendUnavailableError, match="no backend can run on device 'cuda:0'.*onnxruntime-gpu"):
        Analyzer(bundle, device="cuda", warmup=False)
    with pytest.raises(BackendUnavailableError, match="onnxruntime.*CUDA or TensorRT execution provider"):
        Analyzer(bundle, device="cuda:1", backend="onnxruntime", warmup=False)
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider not available here"):
        Analyzer(bundle, providers=["CUDAExecutionProvider"], warmup=False)
    with pytest.raises(ConfigError, match="backend 'openvina' is not known; valid: 'auto', 'tensorrt', 'onnxruntime', 'openvino'"):
        Analyzer(bundle, backend="openvina", warmup=False)
    # "gpu" is OpenVINO's (Intel) GPU: only the openvino backend takes it, and this machine has none
    with pytest.raises(BackendUnavailableError, match="onnxruntime: it runs on 'auto', 'cpu', 'cuda', not on 'gpu:0'"):
        Analyzer(bundle, device="gpu", warmup=False)
    with pytest.raises(ConfigError, match="device 'tpu' is not valid"):
        Analyzer(bundle, device="tpu", warmup=False)
    with pytest.raises(ConfigError, match="device 'cpu:1' is not valid"):
        Analyzer(bundle, device="cpu:1", warmup=False)
    with pytest.raises(ConfigError, match="max_batch_size must be a positive integer"):
        Analyzer(bundle, max_batch_size=0, warmup=False)
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        Analyzer(bundle, threads=0, warmup=False)


def test_io_binding_path_and_lifecycle(bundle: Path) -> None:
    a = Analyzer(bundle, device="cpu", backend="onnxruntime", providers=["CPUExecutionProvider"], io_binding=True,
                 spin=False, max_batch_size=2)
    b = Analyzer(bundle, device="cpu", warmup=False)
    pairs = [(_img(i), "cat") for i in range(3)]
    for x, y in zip(a.analyze_batch(pairs), b.analyze_batch(pairs), strict=True):
        assert np.allclose(_probs(x), _probs(y), atol=ATOL)
    a.close()
    a.close()  # idempotent
    with pytest.raises(SydesError, match="Analyzer is closed"):
        a.analyze(_img(0), "cat")
    with pytest.raises(SydesError, match="Analyzer is closed"):
        a.submit(_img(0), "cat")
    with pytest.raises(SydesError, match="backend is closed: call load"):
        a.backend.run({})
    b.close()


def test_fast_decode_passes_reduce_for(bundle: Path, monkeypatch) -> None:
    import sdk.preprocess as P

    seen = []
    orig = P.load_image
    monkeypatch.setattr(P, "load_image", lambda *a, **k: seen.append(k.get("reduce_for")) or orig(*a, **k))
    jpg = _jpeg(2, (1200, 1000))
    with Analyzer(bundle, device="cpu", warmup=False, fast_decode=True) as fast, \
            Analyzer(bundle, device="cpu", warmup=False, fast_decode=False) as full:
        rf, rs = fast.analyze(jpg, "cat"), full.analyze(jpg, "cat")
    assert seen == [224, None]
    assert np.allclose(_probs(rf), _probs(rs), atol=0.05)  # reduced DCT decode: close, not bit-exact


def test_require_text_false_allows_empty(bundle: Path) -> None:
    with Analyzer(bundle, device="cpu", warmup=False, require_text=False) as a:
        assert a.analyze(_img(0), "").ok
        assert a.analyze(_img(0), None).error_type == "InputTypeError"


# --- TensorRT backend pieces that run without TensorRT -------------------------------------------------
def test_engine_cache_key_stable_and_sensitive() -> None:
    from sdk.backends.tensorrt import OptimizationProfile, engine_cache_key

    prof = OptimizationProfile(1, 8, 32, 1, 77, 77)
    base = dict(gpu_name="NVIDIA H100", compute_capability=(9, 0), trt_version="10.3.0", precision="fp16",
                profile=prof, graph_sha256="ab" * 32)
    k = engine_cache_key(**base)
    assert len(k) == 64 and k == engine_cache_key(**{**base, "compute_capability": "9.0"})
    assert k == engine_cache_key(**{**base, "profile": OptimizationProfile(1, 8, 32, 1, 77, 77)})
    changes = [{"gpu_name": "NVIDIA A100"}, {"compute_capability": (8, 0)}, {"trt_version": "10.4.0"},
               {"precision": "int8"}, {"profile": OptimizationProfile(1, 8, 16, 1, 77, 77)},
               {"profile": OptimizationProfile(1, 8, 32, 1, 64, 77)}, {"graph_sha256": "cd" * 32}]
    keys = {engine_cache_key(**{**base, **c}) for c in changes}
    assert len(keys) == len(changes) and k not in keys
    with pytest.raises(ConfigError, match="precision 'bf16' is not valid"):
        engine_cache_key(**{**base, "precision": "bf16"})


@pytest.mark.parametrize(("kw", "match"), [
    ({"min_batch": 0}, "min_batch must be a positive integer"),
    ({"max_batch": 4, "opt_batch": 8}, "min_batch <= opt_batch <= max_batch"),
    ({"min_seq": 10, "opt_seq": 5}, "min_seq <= opt_seq <= max_seq"),
    ({"max_seq": 2.5}, "max_seq must be a positive integer"),
    ({"opt_batch": True}, "opt_batch must be a positive integer"),
])
def test_profile_validation(kw, match) -> None:
    from sdk.backends.tensorrt import OptimizationProfile

    with pytest.raises(ConfigError, match=match):
        OptimizationProfile(**kw)


def test_profile_shapes() -> None:
    from sdk.backends.tensorrt import OptimizationProfile

    p = OptimizationProfile.for_bundle(max_batch=16, max_length=77, trim=True)
    assert p.shapes(("batch", 224, 224, 3)) == ((1, 224, 224, 3), (8, 224, 224, 3), (16, 224, 224, 3))
    assert p.shapes(("batch", "seq")) == ((1, 2), (8, 77), (16, 77))
    assert OptimizationProfile.for_bundle(4, 77, trim=False).shapes((-1, -1))[0] == (1, 77)
    with pytest.raises(ConfigError, match="batch 17; this engine's profile takes 1..16"):
        p.check("input_ids", (17, 77))


def test_tensorrt_absent_is_a_clear_error(bundle: Path, monkeypatch) -> None:
    import sys

    from sdk.backends import tensorrt as T

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, even where installed
    with pytest.raises(BackendUnavailableError, match=r"'tensorrt' package is not installed: install TensorRT 10"):
        T._import_trt()
    assert "install TensorRT" in T.TensorRTBackend.probe(T.Device.parse("cuda"))
    with pytest.raises(BackendUnavailableError, match=r"backend 'tensorrt' cannot run on device 'cuda:0'.*pip install tensorrt"):
        Analyzer(bundle, backend="tensorrt", device="cuda", warmup=False)
    with pytest.raises(BackendUnavailableError, match="'tensorrt' package is not installed"):
        T.build_engine(bundle / "model.onnx", bundle / "engines" / "x.engine", "fp16", T.OptimizationProfile())


def test_tensorrt_never_falls_back_silently(bundle: Path, monkeypatch) -> None:
    """backend='tensorrt' that cannot start must raise, never hand back an onnxruntime Analyzer."""
    import sdk.backends.tensorrt as T

    monkeypatch.setattr(T.TensorRTBackend, "probe", classmethod(lambda cls, d: None))

    def fail(self):
        raise BackendUnavailableError("engine build failed (simulated)")

    monkeypatch.setattr(T.TensorRTBackend, "_load", fail)
    with pytest.raises(BackendUnavailableError, match="engine build failed"):
        Analyzer(bundle, backend="tensorrt", warmup=False)
    # backend="auto" may move on, but says so and reports what really runs
    with Analyzer(bundle, backend="auto", warmup=False) as a:
        assert a.info.backend == "onnxruntime"


# The TensorRT build calls (strongly typed, 10.x and 11.x) are pinned in tests/test_tensorrt.py.
