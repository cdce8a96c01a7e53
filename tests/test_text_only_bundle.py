"""A text-only bundle (the text-only model family exported): no image inputs, a null preprocess, and every
runtime path (Analyzer, `sydes analyze`, Ray rows, the HTTP parser, the Triton refusal) working without images."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sdk.analyzer import Analyzer
from sdk.bundle import TEXT_INPUT_NAMES, validate_manifest
from sdk.cli import main
from sdk.errors import BundleError

TEXTS = ["what a lovely day at the beach", "this is terrible", "", "we want to win the cup together"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A tiny random text-only checkpoint (tiny_vit_bert's text encoder) and its FP32 bundle."""
    from export.pipeline import ExportOptions, export_checkpoints
    from training.presets import tiny_vit_bert
    from training.runner import load_tokenizer
    from training.text_model import TextClassifier, TextOnlyConfig

    root = tmp_path_factory.mktemp("txt")
    torch.manual_seed(0)
    ref = tiny_vit_bert()
    model = TextClassifier(TextOnlyConfig(text=ref.text, tasks=ref.tasks, tokenizer=ref.tokenizer)).eval()
    load_tokenizer(model.config).save(root / "tokenizer.json")
    ck = model.save_pretrained(root / "ck", tokenizer_file=root / "tokenizer.json")
    bundle = root / "text.sydes"
    export_checkpoints([ck], bundle, ExportOptions(cache_dir=str(root / "cache"), progress=False))
    return {"root": root, "ck": ck, "bundle": bundle, "cache": root / "cache"}


def _torch_probs(ck: Path, texts: list[str]) -> dict[str, np.ndarray]:
    from sdk.tokenizer import Tokenizer
    from training.checkpoints import load_model

    model = load_model(ck)
    tok = Tokenizer.from_file(ck / "tokenizer.json", max_length=model.config.tokenizer.max_length,
                              kind=model.config.tokenizer.kind)
    ids, mask = tok.encode_batch(texts)
    with torch.no_grad():
        out = model(torch.as_tensor(ids, dtype=torch.int64), torch.as_tensor(mask, dtype=torch.int64), return_probs=True)
    return {t: v.numpy() for t, v in out.items()}


def test_manifest_has_text_inputs_and_no_preprocess(work: dict[str, Path]) -> None:
    m = json.loads((work["bundle"] / "manifest.json").read_text())
    assert m["preprocess"] is None
    assert tuple(i["name"] for i in m["graphs"]["model"]["inputs"]) == TEXT_INPUT_NAMES
    assert m["validation"]["passed"] is True and max(m["validation"]["max_abs_diff"].values()) <= 1e-4


def test_analyzer_matches_torch_without_images(work: dict[str, Path]) -> None:
    ref = _torch_probs(work["ck"], TEXTS)
    with Analyzer(work["bundle"], require_text=False, joint=False) as az:
        assert az.info.uses_images is False
        results = az.analyze_batch([(None, t) for t in TEXTS])
        # a plain string or a dict without "image" is a text item; an image given is not read
        same = [az.analyze(None, TEXTS[0]), az.analyze_batch([TEXTS[0]])[0], az.analyze_batch([{"text": TEXTS[0]}])[0],
                az.analyze(b"not an image at all", TEXTS[0])]
        streamed = list(az.stream(((None, t) for t in TEXTS), batch_size=2))
    for r, s in zip(results, streamed, strict=True):
        assert r.ok and s.ok and r.tasks["desire"].probs == pytest.approx(s.tasks["desire"].probs, abs=1e-6)
    for t, labels in az.tasks.items():
        got = np.array([[r.tasks[t].probs[lab] for lab in labels] for r in results])
        assert got.shape == (len(TEXTS), len(labels))
        np.testing.assert_allclose(got, ref[t], atol=1e-4)  # FP32 graph vs torch, batched and trimmed
    for r in same:
        assert r.ok and r.tasks["emotion"].probs == pytest.approx(results[0].tasks["emotion"].probs, abs=1e-5)


def test_int8_and_openvino_text_bundles(work: dict[str, Path]) -> None:
    from export.pipeline import ExportOptions, export_checkpoints

    ref = _torch_probs(work["ck"], TEXTS[:2])
    targets = [("cpu", "onnxruntime")]
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401

        targets.append(("openvino", "openvino"))
    except ImportError:
        pass
    for target, backend in targets:
        out = work["root"] / f"int8-{target}.sydes"
        rep = export_checkpoints([work["ck"]], out, ExportOptions(
            precision="int8", target=target, calib="generated", calib_samples=16, eval_samples=16,
            cache_dir=str(work["cache"]), progress=False))
        assert rep.manifest["preprocess"] is None and rep.manifest["calibration_report"]["samples"] == 16
        with Analyzer(out, backend=backend) as az:
            got = az.analyze_batch(TEXTS[:2])
        assert az.info.backend == backend
        for i, r in enumerate(got):  # INT8 of a random tiny model: close, not equal
            assert max(abs(r.tasks["sentiment"].probs[lab] - ref["sentiment"][i][j])
                       for j, lab in enumerate(az.tasks["sentiment"])) < 0.05


def test_manifest_checks_the_inputs_and_preprocess(work: dict[str, Path]) -> None:
    m = json.loads((work["bundle"] / "manifest.json").read_text())
    bad = copy.deepcopy(m)
    bad["preprocess"] = {"global_size": 224}
    with pytest.raises(BundleError, match="'preprocess' must be null for a text-only graph"):
        validate_manifest(bad)
    bad = copy.deepcopy(m)
    bad["graphs"]["model"]["inputs"][0]["name"] = "token_ids"
    with pytest.raises(BundleError, match=r"graphs.model.inputs' names .*text-only"):
        validate_manifest(bad)


def test_text_only_cannot_join_image_models(work: dict[str, Path]) -> None:
    from export.errors import ExportError
    from export.graph import export_graph
    from training.checkpoints import load_model
    from training.model import SyDES
    from training.presets import tiny_vit_bert

    text = load_model(work["ck"])
    with pytest.raises(ExportError, match="cannot be exported together with image models"):
        export_graph([text, SyDES(tiny_vit_bert())])
    with pytest.raises(ExportError, match="holds one checkpoint"):
        export_graph([text, load_model(work["ck"])])


def test_cli_single_and_file_mode_without_images(work: dict[str, Path], tmp_path: Path, capsys) -> None:
    b = str(work["bundle"])
    assert main(["analyze", b, "a happy dog on the beach"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and set(r["tasks"]) == {"sentiment", "emotion", "desire"}
    assert main(["info", b]) == 0
    assert "none: a text-only bundle" in capsys.readouterr().out
    # a posts file with no image column at all, and an MSED-style CSV whose image pattern is not needed
    posts = tmp_path / "posts.csv"
    posts.write_text("id,text\np0,great news\np1,so sad today\n")
    assert main(["analyze", b, "--input", str(posts), "--output", str(tmp_path / "a.jsonl"), "--no-progress"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [x["id"] for x in rows] == ["p0", "p1"] and all(x["ok"] for x in rows)
    msed = tmp_path / "test.csv"
    msed.write_text("Title,Caption,Sentiment\nt,hello there,positive\n")
    assert main(["analyze", b, "--input", str(msed), "--image-pattern", "images/{row}.jpg", "--output",
                 str(tmp_path / "b.jsonl"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "b.jsonl").read_text())["ok"]


def test_ray_rows_http_and_triton_without_images(work: dict[str, Path], tmp_path: Path) -> None:
    from sdk.serve.inputs import RequestError, parse_json
    from sdk.triton import TritonOptions, write_repository

    assert parse_json(b'{"text": "hi"}', images=False) == (None, "hi")
    with pytest.raises(RequestError, match="'image' must be the base64"):
        parse_json(b'{"text": "hi"}')
    with pytest.raises(BundleError, match="is text-only .* serve text-only bundles with `sydes serve`"):
        write_repository(work["bundle"], tmp_path / "repo", TritonOptions())
    pytest.importorskip("pyarrow")
    from sdk.integrations.ray_data import SydesPredictor

    pred = SydesPredictor(work["bundle"], batch_size=4)
    table = pred({"id": np.array(["a", "b"]), "text": np.array(["good", "bad"])})  # no image column
    assert table.column("ok").to_pylist() == [True, True] and table.column("id").to_pylist() == ["a", "b"]


def test_benchmark_and_mixed_export_errors(work: dict[str, Path], tmp_path: Path) -> None:
    from export.errors import ExportError
    from export.pipeline import export_checkpoints
    from training.model import SyDES
    from training.presets import tiny_vit_bert

    out = tmp_path / "bench.json"
    assert main(["benchmark", str(work["bundle"]), "--batch-sizes", "1,2", "--iters", "1", "--warmup", "0",
                 "--image-size", "64x48", "--compare", str(work["ck"]), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["per_batch"]["2"]["model_ms"]["p50"] > 0 and rep["compare"]["per_batch"]["2"]["max_abs_prob_diff"] < 1e-4
    image_ck = SyDES(tiny_vit_bert()).save_pretrained(tmp_path / "img", tokenizer_file=work["ck"] / "tokenizer.json")
    with pytest.raises(ExportError, match="cannot be exported together with image models"):
        export_checkpoints([image_ck, work["ck"]], tmp_path / "mixed.sydes")
