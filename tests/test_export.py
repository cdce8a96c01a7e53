"""export/: checkpoint -> verified bundle at every precision (tiny random tiny_clip model).

One FP32 export (the torch -> ONNX step, ~30-50 s here) is shared by the module through the raw-graph
cache, so the FP16 / INT8 / failure-path exports after it take seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from export.errors import ExportError, ExportValidationError  # noqa: E402
from export.pipeline import ExportOptions, check_options, export_checkpoints  # noqa: E402
from sdk.errors import BackendUnavailableError, BundleIntegrityError, ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from torch_fixture import tiny_clip_work

    return tiny_clip_work(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def fp32_bundle(work: dict[str, Path]):
    return export_checkpoints([work["ck"]], work["root"] / "fp32.sydes", ExportOptions(cache_dir=str(work["cache"])))


def _opts(work: dict[str, Path], **kw) -> ExportOptions:
    return ExportOptions(cache_dir=str(work["cache"]), **kw)


def test_fp32_bundle_matches_torch(fp32_bundle, work) -> None:
    from sdk.bundle import load_bundle

    b = load_bundle(fp32_bundle.bundle)
    m = b.manifest
    assert m.precision == "fp32" and list(m.tasks) == ["sentiment", "emotion", "desire"]
    v = m.validation
    assert v["passed"] is True and max(v["max_abs_diff"].values()) <= 1e-4
    assert v["analyzer"]["backend"] == "onnxruntime" and max(v["analyzer"]["max_abs_diff"].values()) <= 1e-4
    assert 2 in v["text_lengths"] and 1 in v["batch_sizes"]  # empty caption and batch 1 were verified
    assert [t.name for t in m.graph.inputs] == ["global_pixels", "canvas_pixels", "input_ids", "attention_mask"]
    assert m.graph.input("input_ids").shape == ("batch", "seq")
    assert [t.name for t in m.graph.outputs] == ["probs_sentiment", "probs_emotion", "probs_desire"]
    prov = m.provenance
    assert prov["checkpoints"][0]["sha256"] and prov["opset"] == 23 and prov["packages"]["onnxruntime"]
    import onnx

    # cpu target, opset 23: every attention (vision, text, both decoder blocks) is one Attention op
    graph = onnx.load(str(b.path / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("Attention") == 8
    # ... fed 3-D projections (export.attention): no Transpose in front of any, heads as attributes
    assert prov["optimisation"]["attention"] == {"attention_3d": 8, "attention_kept": 0,
                                                 "nodes_removed": prov["optimisation"]["attention"]["nodes_removed"]}
    producer = {o: n.op_type for n in graph.node for o in n.output}
    for n in graph.node:
        if n.op_type == "Attention":
            assert {producer.get(i) for i in n.input[:3]} & {"Transpose", "Reshape"} == set()
            assert {a.name for a in n.attribute} >= {"q_num_heads", "kv_num_heads"}
    assert prov["calibration"] is None and m.calibration_report is None
    assert (b.path / "engines").is_dir() and m.tokenizer.trim_padding
    card = (b.path / "README.md").read_text()
    assert "(SyDES bundle, fp32, onnx)" in card and "Verification at export" in card and str(work["ck"]) in card


def test_bundle_records_the_checkpoints_text_fields(fp32_bundle, work) -> None:
    """The manifest's tokenizer section says which columns make the text (default: the Caption); the text
    fields change no graph, so a checkpoint that differs only in them reuses the raw export."""
    import shutil

    assert {k: fp32_bundle.manifest["tokenizer"][k] for k in ("text_fields", "text_separator")} == {
        "text_fields": ["Caption"], "text_separator": " "}
    ck = work["root"] / "ck-title"
    shutil.copytree(work["ck"], ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["tokenizer"].update(text_fields=["Title", "Caption"], text_separator=" | ")
    (ck / "config.json").write_text(json.dumps(cfg))
    rep = export_checkpoints([ck], work["root"] / "title.sydes", _opts(work))
    assert rep.manifest["provenance"]["graph_cache_hit"] is True
    from sdk.bundle import load_bundle

    b = load_bundle(rep.bundle)
    assert (b.text_fields.fields, b.text_fields.separator) == (("Title", "Caption"), " | ")
    assert "text: the Title and Caption columns joined by ' | '" in (b.path / "README.md").read_text()
    with pytest.raises(ExportError, match=r"share preprocessing and tokenizer settings \(kind, max length, text fields\)"):
        export_checkpoints([work["ck"], ck], work["root"] / "both.sydes", _opts(work))


def test_dynamic_batch_and_length(fp32_bundle, work) -> None:
    import onnxruntime as ort

    from training.model import SyDES

    model = SyDES.from_pretrained(work["ck"]).eval()
    sess = ort.InferenceSession(str(fp32_bundle.bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b, length in ((3, 7), (1, 77), (2, 2)):
        feed = {"global_pixels": rng.integers(0, 256, (b, 224, 224, 3), dtype=np.uint8),
                "canvas_pixels": rng.integers(0, 256, (b, 448, 448, 3), dtype=np.uint8),
                "input_ids": rng.integers(1, 49000, (b, length)).astype(np.int64),
                "attention_mask": np.ones((b, length), np.int64)}
        feed["input_ids"][:, -1] = 49407
        out = sess.run(None, feed)
        with torch.no_grad():
            ref = model.forward_probs(torch.as_tensor(feed["input_ids"]), torch.as_tensor(feed["attention_mask"]),
                                      global_pixels=torch.as_tensor(feed["global_pixels"]),
                                      canvas_pixels=torch.as_tensor(feed["canvas_pixels"]))
        for o, r in zip(out, ref.values(), strict=True):
            assert o.shape == (b, r.shape[1])
            np.testing.assert_allclose(o, r.numpy(), atol=1e-4)


def test_fp16_and_int8_bundles_run(fp32_bundle, work) -> None:
    from sdk.analyzer import Analyzer

    fp16 = export_checkpoints([work["ck"]], work["root"] / "fp16.sydes", _opts(work, precision="fp16"))
    assert fp16.manifest["provenance"]["graph_cache_hit"] is True  # no second torch export
    assert fp16.manifest["graphs"]["model"]["bytes"] < 0.6 * fp32_bundle.manifest["graphs"]["model"]["bytes"]
    assert "LayerNormalization" in fp16.manifest["provenance"]["precision_details"]["fp32_ops"]
    assert set(fp16.manifest["validation"]["agreement"]) == {"sentiment", "emotion", "desire"}

    kw = dict(precision="int8", calib="generated", calib_samples=12, eval_samples=6, calib_method="minmax")
    int8 = export_checkpoints([work["ck"]], work["root"] / "int8.sydes", _opts(work, **kw))
    m = int8.manifest
    assert m["provenance"]["calibration"] == {"method": "minmax", "samples": 12, "data": "generated"}
    rep = m["calibration_report"]
    assert rep["calibration"]["cache_hit"] is False and rep["samples"] == 6
    assert set(rep["tasks"]["desire"]) >= {"top1_agreement", "macro_f1", "macro_f1_drop"}
    assert m["provenance"]["precision_details"]["scheme"]["activation_type"] == "QUInt8"
    import onnx

    ops = [n.op_type for n in onnx.load(str(int8.bundle / "model.onnx")).graph.node]
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops)
    # the Linear biases live inside the integer MatMuls (export.qdq_fuse), not in separate Adds
    fused = m["provenance"]["precision_details"]["scheme"]["epilogue_fusions"]
    assert fused["bias"] > 0 and ops.count("MatMulIntegerToFloat") == fused["bias"]
    assert m["provenance"]["optimisation"]["attention"]["attention_3d"] == 8  # quantised after the rewrite
    for bundle in (fp16.bundle, int8.bundle):
        with Analyzer(bundle, backend="onnxruntime", device="cpu", warmup=False) as a:
            res = a.analyze_batch([(np.full((300, 200, 3), 90, np.uint8), "a dog"),
                                   (np.zeros((50, 80, 3), np.uint8), "two people laughing at the beach")])
        assert all(r.ok for r in res) and set(res[0].tasks) == {"sentiment", "emotion", "desire"}

    # same graph, data, method and N: the ranges come from the cache
    again = export_checkpoints([work["ck"]], work["root"] / "int8.sydes", _opts(work, overwrite=True, **kw))
    assert again.manifest["calibration_report"]["calibration"]["cache_hit"] is True
    assert again.manifest["graphs"]["model"]["sha256"] == m["graphs"]["model"]["sha256"]
    trt = export_checkpoints([work["ck"]], work["root"] / "int8t.sydes", _opts(work, target="tensorrt", **kw))
    sch = trt.manifest["provenance"]["precision_details"]["scheme"]
    assert sch["activation_type"] == "QInt8" and sch["activation_symmetric"] and sch["per_channel"]
    assert trt.manifest["provenance"]["opset"] == 18  # the tensorrt target's default
    assert sch["weight_bits"] == 8  # GPU INT8 kernels have no 16-bit lanes to overflow
    assert "Attention" not in {n.op_type for n in onnx.load(str(trt.bundle / "model.onnx")).graph.node}
    assert "attention" not in trt.manifest["provenance"]["optimisation"]  # a portable 4-D graph for TensorRT


def test_int8_weight_bits_7(fp32_bundle, work, monkeypatch, caplog) -> None:
    """7-bit weights, the cpu target's default: every quantised weight in [-64, 64] (exact on CPUs without
    VNNI: sdk.cpu), the ranges of the activations unchanged (the calibration cache is reused), recorded for
    the runtime; --int8-weight-bits 8 uses the full range."""
    import onnx
    from onnx import numpy_helper

    from sdk.analyzer import Analyzer

    kw = dict(precision="int8", calib="generated", calib_samples=12, eval_samples=6, calib_method="minmax")
    full = export_checkpoints([work["ck"]], work["root"] / "w8.sydes", _opts(work, int8_weight_bits=8, **kw))
    seven = export_checkpoints([work["ck"]], work["root"] / "w7.sydes", _opts(work, **kw))  # the default
    assert seven.manifest["provenance"]["precision_details"]["scheme"]["weight_bits"] == 7
    assert seven.manifest["calibration_report"]["calibration"]["cache_hit"] is True

    def weight_peak(bundle) -> int:
        inits = onnx.load(str(bundle / "model.onnx")).graph.initializer
        return max(int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max()) for t in inits
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2)

    assert weight_peak(seven.bundle) <= 64 < weight_peak(full.bundle) <= 127
    with Analyzer(seven.bundle, backend="onnxruntime", device="cpu", warmup=False) as a:
        rep = a.info.settings["int8"]
        assert rep["weight_bits"] == 7 and rep["saturates"] is False and "warning" not in rep
        assert a.analyze(np.full((64, 64, 3), 90, np.uint8), "a dog").ok
    # an 8-bit bundle on a CPU whose GEMM clips (as the probe finds on x86 without VNNI): said, not hidden
    from sdk import cpu

    monkeypatch.setattr(cpu, "int8_gemm_saturates", lambda bits=8: bits == 8)
    with caplog.at_level("WARNING", logger="sdk"), \
            Analyzer(full.bundle, backend="onnxruntime", device="cpu", warmup=False) as a:
        assert a.info.settings["int8"]["saturates"] is True
    assert "re-export it with `sydes export ... --int8-weight-bits 7`" in caplog.text


def test_tampered_bundle_is_refused(fp32_bundle, work) -> None:
    import shutil

    from sdk.bundle import clear_verify_cache, load_bundle

    copy = work["root"] / "tampered.sydes"
    shutil.copytree(fp32_bundle.bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    clear_verify_cache()
    with pytest.raises(BundleIntegrityError, match="does not match its sha256"):
        load_bundle(copy)


def test_manifest_is_written_once_after_the_analyzer_check(fp32_bundle, work, monkeypatch) -> None:
    """sdk.Analyzer opens the staged bundle from the in-memory manifest (no manifest.json yet); the manifest,
    with the Analyzer's figures, is then written once."""
    import export.pipeline
    import sdk.bundle

    writes, staged = [], []
    real_write, real_check = sdk.bundle.write_manifest, export.pipeline.check_with_analyzer

    def write(folder, m):
        writes.append(m["validation"].get("analyzer"))
        return real_write(folder, m)

    def check(bundle, *a, **k):
        staged.append((bundle.path / "manifest.json").exists())
        return real_check(bundle, *a, **k)

    monkeypatch.setattr(sdk.bundle, "write_manifest", write)
    monkeypatch.setattr(export.pipeline, "check_with_analyzer", check)
    rep = export_checkpoints([work["ck"]], work["root"] / "once.sydes", _opts(work))
    assert staged == [False] and len(writes) == 1 and writes[0]["backend"] == "onnxruntime"
    on_disk = json.loads((rep.bundle / "manifest.json").read_text())
    assert on_disk == rep.manifest and on_disk["validation"]["analyzer"] == writes[0]
    assert on_disk["graphs"]["model"]["sha256"] == fp32_bundle.manifest["graphs"]["model"]["sha256"]


def test_interrupted_export_leaves_nothing(fp32_bundle, work, monkeypatch) -> None:
    import sdk.bundle

    def boom(*a, **k):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(sdk.bundle, "write_manifest", boom)
    out = work["root"] / "interrupted" / "x.sydes"
    with pytest.raises(RuntimeError, match="simulated"):
        export_checkpoints([work["ck"]], out, _opts(work))
    assert not out.exists()
    assert os.listdir(out.parent) == []  # no .x.sydes.*.partial temp folder either


def test_fp32_check_fails_loudly(fp32_bundle, work) -> None:
    out = work["root"] / "strict.sydes"
    with pytest.raises(ExportValidationError, match=r"max \|probability difference\| per task sentiment: .* "
                       r"exceeds the tolerance 1e-12") as e:
        export_checkpoints([work["ck"]], out, _opts(work, tolerance=1e-12))
    assert set(e.value.figures["max_abs_diff"]) == {"sentiment", "emotion", "desire"}
    assert not out.exists()


def test_sydes_info_on_bundle(fp32_bundle, capsys) -> None:
    from sdk.cli import main

    assert main(["info", str(fp32_bundle.bundle)]) == 0
    out = capsys.readouterr().out
    assert "probs_desire" in out and "fp32" in out
    assert main(["info", "--json", str(fp32_bundle.bundle)]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "sydes-bundle"


def test_cli_export_errors(work, tmp_path, capsys) -> None:
    from sdk.cli import main

    out = str(tmp_path / "x.sydes")
    # a value outside a set is argparse's usage error (exit 2) listing the valid ones
    with pytest.raises(SystemExit) as e:
        main(["export", str(work["ck"]), "-o", out, "--precision", "int4"])
    assert e.value.code == 2 and "choose from fp32, fp16, int8" in capsys.readouterr().err.replace("'", "")
    with pytest.raises(SystemExit) as e:
        main(["export", str(work["ck"]), "-o", out, "--precision", "int8", "--calib", "generated",
              "--calib-method", "kl"])
    assert e.value.code == 2 and "choose from minmax, entropy, percentile" in capsys.readouterr().err.replace("'", "")
    assert main(["export", str(tmp_path / "nope"), "-o", out]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert not Path(out).exists()


def test_option_errors(work, tmp_path) -> None:
    with pytest.raises(ConfigError, match="valid: cpu, tensorrt"):
        check_options(ExportOptions(target="gpu"))
    with pytest.raises(ConfigError, match="valid: onnx, tensorrt"):
        check_options(ExportOptions(format="engine"))
    with pytest.raises(ConfigError, match="INT8 export needs calibration data"):
        check_options(ExportOptions(precision="int8"))
    with pytest.raises(ConfigError, match="--int8-weight-bits 6 is not valid; valid: 8, 7"):
        check_options(ExportOptions(precision="int8", calib="generated", int8_weight_bits=6))
    with pytest.raises(ConfigError, match="--int8-weight-bits applies to --precision int8, not fp16"):
        check_options(ExportOptions(precision="fp16", int8_weight_bits=7))
    # the default per target: 7 where onnxruntime CPU kernels may clip, 8 for TensorRT and outside INT8
    bits = lambda **kw: check_options(ExportOptions(calib="generated", **kw)).int8_weight_bits  # noqa: E731
    assert [bits(precision="int8"), bits(precision="int8", target="cpu-dynamic")] == [7, 7]
    assert [bits(precision="int8", target="tensorrt"), bits(precision="fp16"), bits()] == [8, 8, 8]
    assert bits(precision="int8", int8_weight_bits=8) == 8
    with pytest.raises(ConfigError, match="opset 9 is outside the supported range 13..23 .default for target 'cpu': 23"):
        check_options(ExportOptions(opset=9))
    assert check_options(ExportOptions(target="tensorrt")).opset == 18
    assert check_options(ExportOptions(target="cpu", opset=17)).opset == 17  # an explicit opset is kept
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(BackendUnavailableError, match="needs TensorRT 10"):
            export_checkpoints([work["ck"]], tmp_path / "t.sydes", ExportOptions(format="tensorrt"))
    existing = tmp_path / "exists.sydes"
    existing.mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_checkpoints([work["ck"]], existing, ExportOptions())
