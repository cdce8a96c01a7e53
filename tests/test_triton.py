"""`sydes triton`: configs parsed with Triton's own schema, the graph run on Triton's padded shapes, and
the Python preprocessing model's execute() with stand-ins for triton_python_backend_utils."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import build_fake_bundle, jpeg_bytes

from sdk.analyzer import Analyzer
from sdk.bundle import INPUT_NAMES
from sdk.errors import BundleError, ConfigError
from sdk.triton import TritonOptions, write_repository
from sdk.triton.pbtxt import Enum, to_pbtxt

ATOL = 2e-4  # as tests/test_analyzer.py: batch composition moves the fake graph's means by ~1e-5
L = 12


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("b") / "fake.sydes", max_length=L)


@pytest.fixture(scope="module")
def repo(bundle: Path, tmp_path_factory) -> Path:
    return write_repository(bundle, tmp_path_factory.mktemp("r") / "repo", TritonOptions(max_batch_size=8))


def _jpeg(seed: int, size=(64, 48)) -> bytes:
    return jpeg_bytes(seed, size, quality=90)


def _parse(path: Path):
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), mc.ModelConfig())


# --- stand-ins for Triton's Python backend utilities (pin the calls model.py makes) -------------------
class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeRequest:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = {k: FakeTensor(k, v) for k, v in inputs.items()}


class FakeResponse:
    def __init__(self, output_tensors, error=None) -> None:
        self.output_tensors, self.error = output_tensors, error


class FakeError:
    def __init__(self, msg: str) -> None:
        self.msg = msg

    def message(self) -> str:
        return self.msg


@pytest.fixture
def pb_utils(monkeypatch):
    m = types.ModuleType("triton_python_backend_utils")
    m.Tensor = FakeTensor
    m.InferenceResponse = FakeResponse
    m.TritonError = FakeError
    m.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", m)
    return m


def _load_model_py(repo: Path):
    """Import the repository's own model.py, as Triton's Python backend does."""
    path = repo / "sydes_preprocess" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("sydes_triton_model_py", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    model.initialize({"model_repository": str(repo / "sydes_preprocess"), "model_version": "1",
                      "model_config": "{}"})
    return model


def _strings(*values) -> np.ndarray:
    return np.array([[v] for v in values], dtype=object)  # TYPE_STRING [B, 1]


def test_configs_parse_with_tritons_schema(repo: Path) -> None:
    g = _parse(repo / "sydes_graph" / "config.pbtxt")
    assert g.name == "sydes_graph" and g.backend == "onnxruntime" and g.max_batch_size == 8
    inputs = {t.name: t for t in g.input}
    assert sorted(inputs) == sorted(INPUT_NAMES)
    mc = sys.modules["tritonclient.grpc.model_config_pb2"]
    assert inputs["canvas_pixels"].data_type == mc.TYPE_UINT8 and list(inputs["canvas_pixels"].dims) == [448, 448, 3]
    assert inputs["input_ids"].data_type == mc.TYPE_INT64 and list(inputs["input_ids"].dims) == [L]
    outs = {t.name: t for t in g.output}
    assert list(outs["probs_emotion"].dims) == [6] and outs["probs_emotion"].label_filename == "labels_emotion.txt"
    assert g.dynamic_batching.max_queue_delay_microseconds == 2000
    assert g.dynamic_batching.default_queue_policy.max_queue_size == 128
    assert g.dynamic_batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert g.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU and g.instance_group[0].count == 1
    assert (repo / "sydes_graph" / "1" / "model.onnx").is_file()
    assert (repo / "sydes_graph" / "labels_desire.txt").read_text().splitlines()[-1] == "none"

    p = _parse(repo / "sydes_preprocess" / "config.pbtxt")
    assert p.backend == "python" and [t.data_type for t in p.input] == [mc.TYPE_STRING] * 2
    assert {t.name: list(t.dims) for t in p.output} == {t.name: list(t.dims) for t in g.input}

    e = _parse(repo / "sydes" / "config.pbtxt")
    assert e.platform == "ensemble" and e.max_batch_size <= g.max_batch_size
    # every step input is an ensemble input or an earlier step's output; the last outputs are the ensemble's
    known = {t.name for t in e.input}
    for step in e.ensemble_scheduling.step:
        assert set(step.input_map.values()) <= known, step.model_name
        known |= set(step.output_map.values())
    assert {t.name for t in e.output} <= known
    assert [s.model_name for s in e.ensemble_scheduling.step] == ["sydes_preprocess", "sydes_graph"]


def test_ensemble_path_equals_analyzer(repo: Path, bundle: Path, pb_utils) -> None:
    """model.py's execute() -> the repository's graph on Triton's padded shapes (onnxruntime) == Analyzer."""
    ort = pytest.importorskip("onnxruntime")
    posts = [(_jpeg(0), "a happy dog"), (_jpeg(1, (300, 200)), "sad day at the beach"), (_jpeg(2), "party")]
    model = _load_model_py(repo)
    (resp,) = model.execute([FakeRequest(IMAGE=_strings(*[p[0] for p in posts]),
                                         TEXT=_strings(*[p[1].encode() for p in posts]))])
    assert resp.error is None
    feeds = {t.name(): t.as_numpy() for t in resp.output_tensors}
    assert feeds["input_ids"].shape == (3, L) and feeds["canvas_pixels"].shape == (3, 448, 448, 3)
    sess = ort.InferenceSession(str(repo / "sydes_graph" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    with Analyzer(bundle, device="cpu", threads=1, warmup=False) as az:
        ref = az.analyze_batch(posts)
    for i, r in enumerate(ref):
        for task, tr in r.tasks.items():
            assert np.allclose(outs[f"probs_{task}"][i], list(tr.probs.values()), atol=ATOL), (i, task)


def test_bad_post_fails_only_its_request(repo: Path, pb_utils) -> None:
    model = _load_model_py(repo)
    good = FakeRequest(IMAGE=_strings(_jpeg(3)), TEXT=_strings(b"cat"))
    bad_img = FakeRequest(IMAGE=_strings(_jpeg(3), b"not an image"), TEXT=_strings(b"cat", b"dog"))
    bad_txt = FakeRequest(IMAGE=_strings(_jpeg(3)), TEXT=_strings(b"\xff\xfe"))
    empty = FakeRequest(IMAGE=_strings(_jpeg(3)), TEXT=_strings(b"   "))
    path = FakeRequest(IMAGE=np.array([["/etc/passwd"]], dtype=object), TEXT=_strings(b"x"))
    missing = FakeRequest(IMAGE=_strings(_jpeg(3)))
    r = model.execute([good, bad_img, bad_txt, empty, path, missing])
    assert r[0].error is None and len(r[0].output_tensors) == 4
    assert r[1].error.message() == "ImageDecodeError: post 1: image is not an image in a format Pillow can read"
    assert "TEXT is not valid UTF-8" in r[2].error.message()
    assert r[3].error.message().startswith("TextError: post 0: text (item 0) is empty")
    assert "IMAGE must be the encoded image file's bytes, got str" in r[4].error.message()
    assert r[5].error.message() == "InputError: the request has no input 'TEXT'"


def test_formats_options_and_errors(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="format 'pytorch' is not known; valid: 'onnxruntime', 'openvino', 'tensorrt'"):
        TritonOptions(format="pytorch")
    with pytest.raises(ConfigError, match="kind 'tpu' is not valid"):
        TritonOptions(kind="tpu")
    with pytest.raises(ConfigError, match="max_batch_size must be a positive integer"):
        TritonOptions(max_batch_size=0)
    with pytest.raises(ConfigError, match="needs one engine;.*holds 0"):
        write_repository(bundle, tmp_path / "t", TritonOptions(format="tensorrt"))
    assert not (tmp_path / "t").exists()  # atomic: nothing half-written
    plan = tmp_path / "fake.engine"
    plan.write_bytes(b"plan bytes")
    out = write_repository(bundle, tmp_path / "t", TritonOptions(format="tensorrt", engine=str(plan), kind="cpu",
                                                                 name="m"))
    g = _parse(out / "m_graph" / "config.pbtxt")
    assert g.platform == "tensorrt_plan" and (out / "m_graph" / "1" / "model.plan").read_bytes() == b"plan bytes"
    with pytest.raises(ConfigError, match="exists; pass overwrite=True"):
        write_repository(bundle, out, TritonOptions())
    assert to_pbtxt({"a": Enum("X"), "b": [1, 2], "c": {"d": "q\"s"}, "e": None}) == 'a: X\nb: [1, 2]\nc {\n  d: "q\\"s"\n}\n'


def test_openvino_ir(bundle: Path, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    out = write_repository(bundle, tmp_path / "ov", TritonOptions(format="openvino", kind="cpu"))
    g = _parse(out / "sydes_graph" / "config.pbtxt")
    assert g.backend == "openvino" and g.default_model_filename == "model.xml"
    model = ov.Core().read_model(str(out / "sydes_graph" / "1" / "model.xml"))
    assert sorted(i.get_any_name() for i in model.inputs) == sorted(INPUT_NAMES)
    # the IR answers as the bundle's ONNX graph on Triton's padded shapes
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    feeds = {"global_pixels": rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8),
             "canvas_pixels": rng.integers(0, 256, (2, 448, 448, 3), dtype=np.uint8),
             "input_ids": rng.integers(5, 30, (2, L)).astype(np.int64),
             "attention_mask": np.ones((2, L), np.int64)}
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # no bf16 / f16
    got = compiled(feeds)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    for o, ref in zip(sess.get_outputs(), sess.run(None, feeds), strict=True):
        assert np.allclose(got[compiled.output(o.name)], ref, atol=1e-4), o.name


def test_cli_and_static_graph_refused(bundle: Path, tmp_path: Path) -> None:
    from sdk.cli import main

    assert main(["triton", str(bundle), "-o", str(tmp_path / "r"), "--kind", "cpu", "--max-batch-size", "4"]) == 0
    assert (tmp_path / "r" / "sydes" / "config.pbtxt").is_file()
    import json

    from sdk.bundle import load_bundle
    from sdk.triton.repository import model_configs

    b = load_bundle(bundle)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["graphs"]["model"]["inputs"][0]["shape"] = [1, 224, 224, 3]
    from sdk.bundle import Bundle, validate_manifest

    with pytest.raises(BundleError, match="'global_pixels' has shape \\[1, 224, 224, 3\\]: Triton batching needs"):
        model_configs(Bundle(path=b.path, manifest=validate_manifest(raw)), TritonOptions())


def test_client_sample_builds_the_ensembles_inputs() -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))
    try:
        import triton_client
    finally:
        sys.path.pop(0)
    img, txt = triton_client.make_inputs([b"\xff\xd8jpeg", b"png"], ["a caption", "é"], grpcclient)
    assert (img.name(), img.datatype(), img.shape()) == ("IMAGE", "BYTES", [2, 1])
    assert (txt.name(), txt.datatype(), txt.shape()) == ("TEXT", "BYTES", [2, 1])
    assert txt._get_tensor().name == "TEXT" and len(txt._get_content()) > 0


def _ir_bundle(bundle: Path, dst: Path) -> Path:
    """The fake bundle as an OpenVINO IR bundle (what --target openvino writes): model.xml + hashed model.bin."""
    ov = pytest.importorskip("openvino")
    import json
    import shutil

    from sdk.bundle import file_record, write_manifest

    shutil.copytree(bundle, dst)
    ov.save_model(ov.convert_model(str(dst / "model.onnx")), str(dst / "model.xml"), compress_to_fp16=False)
    (dst / "model.onnx").unlink()
    m = json.loads((dst / "manifest.json").read_text())
    m["graphs"]["model"].update(file_record(dst, "model.xml"), format="openvino", weights=file_record(dst, "model.bin"))
    write_manifest(dst, m)
    return dst


def test_ir_bundle_goes_to_the_openvino_backend_as_it_is(bundle: Path, tmp_path: Path) -> None:
    ir = _ir_bundle(bundle, tmp_path / "ir.sydes")
    out = write_repository(ir, tmp_path / "repo", TritonOptions(format="openvino", kind="cpu"))
    version = out / "sydes_graph" / "1"
    assert (version / "model.bin").read_bytes() == (ir / "model.bin").read_bytes()  # copied, not re-converted
    assert _parse(out / "sydes_graph" / "config.pbtxt").backend == "openvino"
    with pytest.raises(ConfigError, match="holds an openvino graph .* --format openvino"):
        write_repository(ir, tmp_path / "repo2", TritonOptions(format="onnxruntime", kind="cpu"))
