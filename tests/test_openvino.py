"""--target openvino and the openvino backend at tiny size: export (FP32 / FP16 / INT8 by NNCF), verification,
Analyzer(backend="openvino"), the auto rule, the errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ov = pytest.importorskip("openvino")

from export.pipeline import ExportOptions, check_options, export_checkpoints  # noqa: E402
from sdk.errors import BackendUnavailableError, BundleIntegrityError, ConfigError, MissingExtraError  # noqa: E402


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from torch_fixture import tiny_clip_work

    return tiny_clip_work(tmp_path_factory.mktemp("ov"))


def _export(work: dict[str, Path], name: str, **kw):
    return export_checkpoints([work["ck"]], work["root"] / name, ExportOptions(
        cache_dir=str(work["cache"]), target=kw.pop("target", "openvino"), progress=False, **kw))


@pytest.fixture(scope="module")
def ov_fp32(work):
    return _export(work, "ov32.sydes")


@pytest.fixture(scope="module")
def ov_int8(work):
    return _export(work, "ov8.sydes", precision="int8", calib="generated", calib_samples=12, eval_samples=8)


def _post(seed: int = 3):
    from calibration.data import generated_posts

    p = generated_posts(1, seed=seed)[0]
    return p.image, "a happy dog on the beach"


def test_fp32_ir_bundle_is_verified_and_runs_on_openvino(ov_fp32, work) -> None:
    from sdk import Analyzer
    from sdk.bundle import load_bundle

    b = load_bundle(ov_fp32.bundle)
    g = b.manifest.raw["graphs"]["model"]
    assert b.graph_format == "openvino" and g["file"] == "model.xml" and g["weights"]["file"] == "model.bin"
    assert not (b.path / "model.onnx").exists()
    v = b.manifest.validation
    assert v["passed"] is True and max(v["max_abs_diff"].values()) <= 1e-4
    assert v["analyzer"]["backend"] == "openvino" and max(v["analyzer"]["max_abs_diff"].values()) <= 1e-4
    assert [t.name for t in b.manifest.graph.inputs][:2] == ["global_pixels", "canvas_pixels"]
    assert b.manifest.provenance["target"] == "openvino"
    card = (b.path / "README.md").read_text()  # every artifact carries a model card
    assert "(SyDES bundle, fp32, openvino)" in card and "model.bin" in card and "| emotion |" in card
    # the same post through the torch-exported ONNX on onnxruntime: the same probabilities
    onnx_b = _export(work, "ort32.sydes", target="cpu")
    image, text = _post()
    with Analyzer(ov_fp32.bundle) as a, Analyzer(onnx_b.bundle, backend="onnxruntime") as o:
        assert a.info.backend == "openvino" and a.info.providers[0].startswith("OpenVINO")  # auto -> openvino
        ra, ro = a.analyze(image, text), o.analyze(image, text)
        assert ra.ok and ro.ok
        for t in ra.tasks:
            assert max(abs(ra.tasks[t].probs[k] - ro.tasks[t].probs[k]) for k in ra.tasks[t].probs) <= 1e-4
        # batches from several threads at once (one infer request per stream, handed out by a queue)
        posts = [(_post(s)[0], f"post {s}") for s in range(6)]
        many = list(a.stream(posts, batch_size=4))
        assert all(r.ok for r in many) and len(many) == 6
    # the ONNX bundle also runs on OpenVINO when asked (FP32), within the FP32 tolerance
    with Analyzer(onnx_b.bundle, backend="openvino") as a2:
        r2 = a2.analyze(image, text)
        assert max(abs(r2.tasks["emotion"].probs[k] - ro.tasks["emotion"].probs[k]) for k in r2.tasks["emotion"].probs) <= 1e-4
    # compiled-model cache inside the bundle
    assert any((ov_fp32.bundle / "engines" / "openvino").iterdir())


def test_int8_ir_by_nncf_reports_agreement_and_reuses_its_cache(ov_int8, work) -> None:
    from sdk import Analyzer, cpu

    m = json.loads((ov_int8.bundle / "manifest.json").read_text())
    sch = m["provenance"]["precision_details"]["scheme"]
    assert m["precision"] == "int8" and sch["quantizer"] == "nncf" and sch["model_type"] == "transformer"
    rep = m["calibration_report"]
    assert rep["samples"] == 8 and set(rep["tasks"]) == {"sentiment", "emotion", "desire"}
    assert all(0.0 <= r["top1_agreement"] <= 1.0 for r in rep["tasks"].values())
    assert rep["calibration"]["cache_hit"] is False
    xml = (ov_int8.bundle / "model.xml").read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml  # really quantised
    again = _export(work, "ov8b.sydes", precision="int8", calib="generated", calib_samples=12, eval_samples=8)
    assert again.manifest["calibration_report"]["calibration"]["cache_hit"] is True
    assert (again.bundle / "model.bin").read_bytes() == (ov_int8.bundle / "model.bin").read_bytes()
    with Analyzer(ov_int8.bundle, backend="openvino", device="cpu", threads=1) as a:
        assert a.info.precision == "int8" and a.info.settings["threads"] == 1
        assert a.info.settings["int8"]["weight_bits"] == 8 == cpu.bundle_weight_bits(m["provenance"])
        assert a.analyze(*_post()).ok
    assert sch["overflow_fix"] == "default"
    # --int8-weight-bits 7: NNCF's overflow fix on every layer (a new cache entry: the options differ)
    seven = _export(work, "ov7.sydes", precision="int8", calib="generated", calib_samples=12, eval_samples=8,
                    int8_weight_bits=7)
    assert seven.manifest["provenance"]["precision_details"]["scheme"]["overflow_fix"] == "enable"
    assert seven.manifest["calibration_report"]["calibration"]["cache_hit"] is False
    assert cpu.bundle_weight_bits(seven.manifest["provenance"]) == 7


def test_fp16_ir(work) -> None:
    rep = _export(work, "ov16.sydes", precision="fp16")
    assert rep.manifest["provenance"]["precision_details"]["weights"] == "fp16"
    assert max(rep.manifest["validation"]["max_abs_diff"].values()) < 1e-2


def test_openvino_errors(ov_fp32, work, tmp_path, monkeypatch) -> None:
    from sdk import Analyzer
    from sdk.backends.base import Device

    with pytest.raises(BackendUnavailableError, match="loads onnx graphs and this bundle holds a openvino graph"):
        Analyzer(ov_fp32.bundle, backend="onnxruntime")
    with pytest.raises(BackendUnavailableError, match="it runs on 'auto', 'cpu', 'gpu', 'npu', not on 'cuda:0'"):
        Analyzer(ov_fp32.bundle, backend="openvino", device="cuda")
    with pytest.raises(BackendUnavailableError, match="sees no NPU"):
        Analyzer(ov_fp32.bundle, backend="openvino", device="npu")
    with pytest.raises(ConfigError, match="hint 'fastest' is not valid; valid: latency, throughput"):
        Analyzer(ov_fp32.bundle, backend="openvino", hint="fastest")
    with pytest.raises(ConfigError, match="device 'tpu' is not valid"):
        Device.parse("tpu")
    assert str(Device.parse("gpu:1")) == "gpu:1"
    # a modified weights file is caught like any other bundle file
    bad = tmp_path / "bad.sydes"
    shutil.copytree(ov_fp32.bundle, bad)
    with open(bad / "model.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleIntegrityError, match="model.bin does not match its sha256"):
        Analyzer(bad)
    # the export's own option checks
    with pytest.raises(ConfigError, match="--format tensorrt does not apply"):
        check_options(ExportOptions(target="openvino", format="tensorrt"))
    with pytest.raises(ConfigError, match="unknown target 'npu'; valid: cpu, tensorrt, cpu-dynamic, openvino"):
        check_options(ExportOptions(target="npu"))
    from export.errors import ExportError
    from export.openvino import quant_options

    with pytest.raises(ExportError, match="unknown OpenVINO quantisation option"):
        quant_options({"bits": 4})
    with pytest.raises(ExportError, match="unknown NNCF preset"):
        quant_options({"preset": "fast"})
    with pytest.raises(ExportError, match="unknown NNCF overflow_fix 'half'; valid: default, enable, first_layer"):
        quant_options({"overflow_fix": "half"})
    with pytest.raises(ConfigError, match="--int8-weight-bits 7 is NNCF's overflow_fix 'enable'; .* 'disable'"):
        check_options(ExportOptions(target="openvino", precision="int8", calib="generated", int8_weight_bits=7,
                                    openvino_quant={"overflow_fix": "disable"}))
    from export.options import convert_options as _convert_options

    seven = _convert_options(ExportOptions(target="openvino", precision="int8", int8_weight_bits=7), ir=True)
    assert seven == {"openvino_quant": {"overflow_fix": "enable"}}
    # openvino missing: a clear error naming the extra, at probe time and at export time
    monkeypatch.setitem(sys.modules, "openvino", None)
    from sdk.backends.openvino import OpenVINOBackend

    assert "sydes-edge[openvino]" in OpenVINOBackend.probe(Device.parse("cpu"))
    with pytest.raises(BackendUnavailableError, match=r"sydes-edge\[openvino\]"):
        Analyzer(ov_fp32.bundle, backend="openvino")
    with pytest.raises(MissingExtraError):
        from sdk.backends.openvino import available_devices

        available_devices()
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "openvino" else object())
    with pytest.raises(ConfigError, match="needs OpenVINO"):
        check_options(ExportOptions(target="openvino"))


def test_auto_keeps_onnx_bundles_on_onnxruntime(work) -> None:
    from sdk import Analyzer

    onnx_b = work["root"] / "ort32.sydes"
    if not onnx_b.exists():
        _export(work, "ort32.sydes", target="cpu")
    with Analyzer(onnx_b, device="cpu") as a:
        assert a.info.backend == "onnxruntime"


def test_throughput_hint_splits_a_batch_over_the_streams(ov_fp32) -> None:
    from sdk import Analyzer

    posts = [(_post(s)[0], f"post number {s}") for s in range(5)]
    with Analyzer(ov_fp32.bundle, hint="throughput", streams=2, threads=2) as split, \
            Analyzer(ov_fp32.bundle, split_batches=False, hint="throughput", streams=2, threads=2) as whole, \
            Analyzer(ov_fp32.bundle) as latency:
        assert split.info.settings["split_batches"] == 2 and whole.info.settings["split_batches"] == 1
        assert latency.info.settings["split_batches"] == 1  # the latency hint: one request per batch
        got = [list(a.stream(posts, batch_size=5)) for a in (split, whole, latency)]
    first, last = got[2][0].tasks["emotion"].probs, got[2][4].tasks["emotion"].probs
    assert max(abs(first[k] - last[k]) for k in first) > 1e-3  # the posts differ: an order slip would show
    with pytest.raises(ConfigError, match="split_batches needs >= 2 streams"):
        Analyzer(ov_fp32.bundle, split_batches=True, hint="latency")
    for rs in got[1:]:  # parts of 3 + 2 posts, concatenated in order: the same answers, post by post
        for r0, r in zip(got[0], rs, strict=True):
            for t in r0.tasks:
                assert max(abs(r0.tasks[t].probs[k] - r.tasks[t].probs[k]) for k in r0.tasks[t].probs) <= 1e-4


def test_analyze_file_mode_takes_the_openvino_hint(ov_fp32, work, tmp_path, capsys) -> None:
    from PIL import Image

    from calibration.data import generated_posts
    from sdk.cli import main

    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i, p in enumerate(generated_posts(5, seed=2)):
        Image.fromarray(p.image).save(images / f"{i}.png")
        lines.append(json.dumps({"id": f"p{i}", "image": f"images/{i}.png", "text": p.text}))
    posts = tmp_path / "posts.jsonl"
    posts.write_text("\n".join(lines) + "\n")
    outs = {}
    for hint in ("throughput", "latency", "auto"):
        outs[hint] = tmp_path / f"{hint}.jsonl"
        assert main(["analyze", str(ov_fp32.bundle), "--input", str(posts), "--output", str(outs[hint]),
                     "--batch-size", "4", "--hint", hint, "--no-progress"]) == 0
    rows = {h: [json.loads(x) for x in o.read_text().splitlines()] for h, o in outs.items()}
    assert [r["id"] for r in rows["throughput"]] == [f"p{i}" for i in range(5)] and all(r["ok"] for r in rows["throughput"])
    for a, b, c in zip(rows["throughput"], rows["latency"], rows["auto"], strict=True):
        assert a["tasks"]["emotion"]["label"] == b["tasks"]["emotion"]["label"] == c["tasks"]["emotion"]["label"]
    # an ONNX bundle runs on onnxruntime under backend auto: the hint is refused before anything is written
    onnx_b = work["root"] / "ort32.sydes"
    if not (onnx_b / "manifest.json").is_file():
        onnx_b = _export(work, "ort32-hint.sydes", target="cpu").bundle
    bad_out = tmp_path / "never.jsonl"
    assert main(["analyze", str(onnx_b), "--input", str(posts), "--output", str(bad_out), "--hint", "throughput"]) == 1
    assert "--hint is an OpenVINO setting" in capsys.readouterr().err and not bad_out.exists()


def test_auto_choice_measures_each_batch_size_then_keeps_the_faster() -> None:
    from sdk.backends.openvino import AutoChoice

    c = AutoChoice(trials=2)
    assert c.pick(1) == "latency"  # a single post is never split
    times = {"latency": [0.30, 0.10], "throughput": [0.20, 0.15]}
    for i in range(2):
        for name in ("latency", "throughput"):
            assert c.pick(4) == name  # the two alternate while measuring
            c.record(4, name, times[name][i])
    assert c.chosen() == {4: "latency"}  # the lower best time (0.10), not the lower mean
    assert c.pick(4) == "latency" and c.pick(8) == "latency"  # another batch size is measured on its own
    c.record(4, "throughput", 0.001)  # settled: later times change nothing
    assert c.chosen() == {4: "latency"}


def test_auto_hint_compiles_both_and_answers_as_latency(ov_fp32) -> None:
    from sdk import Analyzer
    from sdk.backends.openvino import AUTO_TRIALS

    posts = [(_post(s)[0], f"post number {s}") for s in range(4)]
    with Analyzer(ov_fp32.bundle, hint="auto", threads=2) as auto, Analyzer(ov_fp32.bundle, threads=2) as latency:
        s = auto.info.settings
        assert s["performance_hint"] == "AUTO" and s["split_batches"] == 2
        ref = latency.analyze_batch(posts)
        for _ in range(2 * AUTO_TRIALS):
            got = auto.analyze_batch(posts)
            for r0, r in zip(ref, got, strict=True):
                assert max(abs(r0.tasks["desire"].probs[k] - r.tasks["desire"].probs[k]) for k in r0.tasks["desire"].probs) <= 1e-4
        assert auto.info.settings["auto_choice"][4] in ("latency", "throughput")
    with pytest.raises(ConfigError, match="decides the batch split itself"):
        Analyzer(ov_fp32.bundle, hint="auto", split_batches=True)
