"""calibration/: sampling, data sources, the reader protocol, the range cache, the report maths."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calibration import (
    MIN_RECOMMENDED_SAMPLES,
    CalibrationCache,
    Post,
    SydesCalibrationReader,
    calibrate,
    check_method,
    compare_probs,
    data_fingerprint,
    generated_posts,
    label_indices,
    load_items,
    macro_f1,
    select_samples,
)
from sdk.errors import ConfigError, DataError

TASKS = {"sentiment": ["negative", "neutral", "positive"]}


# --- sampling -----------------------------------------------------------------------------------------
def _rows(counts: dict[str, int]) -> list[Post]:
    rows = []
    for label, n in counts.items():
        rows += [Post(image=None, text=f"{label} {i}", labels={"sentiment": label}) for i in range(n)]
    return rows


def test_select_samples_stratified_and_reproducible() -> None:
    rows = _rows({"negative": 300, "neutral": 90, "positive": 10})
    a = select_samples(rows, 200, seed=3)
    b = select_samples(rows, 200, seed=3)
    assert [r.text for r in a] == [r.text for r in b]
    assert len(a) == 200 and len({id(r) for r in a}) == 200
    counts = {k: sum(r.labels["sentiment"] == k for r in a) for k in ("negative", "neutral", "positive")}
    assert counts == {"negative": 150, "neutral": 45, "positive": 5}  # proportional
    assert [r.text for r in select_samples(rows, 200, seed=4)] != [r.text for r in a]
    # rare classes survive small n
    small = select_samples(rows, 3, seed=0, warn_below=0)
    assert {r.labels["sentiment"] for r in small} == {"negative", "neutral", "positive"}


def test_select_samples_edge_cases(caplog: pytest.LogCaptureFixture) -> None:
    rows = _rows({"negative": 5, "positive": 5})
    with caplog.at_level(logging.WARNING):
        out = select_samples(rows, 50)
    assert len(out) == 10
    assert f"fewer than the {MIN_RECOMMENDED_SAMPLES} recommended" in caplog.text
    plain = [Post(image=None, text=str(i)) for i in range(20)]  # no labels: uniform
    assert len(select_samples(plain, 7, warn_below=0)) == 7
    with pytest.raises(ConfigError, match="must be positive"):
        select_samples(rows, 0)
    with pytest.raises(ConfigError, match="no samples"):
        select_samples([], 5)
    with pytest.raises(ConfigError, match="cannot stratify by"):
        select_samples(rows, 4, stratify_by="desire", warn_below=0)
    by_fn = select_samples(rows, 4, stratify_by=lambda r: r.labels["sentiment"], warn_below=0)
    assert sorted(r.labels["sentiment"] for r in by_fn) == ["negative"] * 2 + ["positive"] * 2


# --- data sources -------------------------------------------------------------------------------------
def _img(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (60, 40), colour).save(path)


def test_load_msed_layout(tmp_path: Path) -> None:
    split = tmp_path / "train"
    (split / "images").mkdir(parents=True)
    (split / "train.csv").write_text(
        'Title,Caption,Sentiment,Emotion,Desire,Inference Sequence\n'
        't1,"a caption\nover two lines",positive,happiness,none,S-E-D\n'
        't2,second,negative,sad,family,S-E-D\n', encoding="utf-8")
    for k in (1, 2):
        _img(split / "images" / f"{k}.jpg")
    posts = load_items(tmp_path, split="train")
    assert [p.text for p in posts] == ["a caption\nover two lines", "second"]
    assert posts[1].labels == {"sentiment": "negative", "emotion": "sad", "desire": "family"}
    assert posts[0].image.endswith("1.jpg")
    assert len(load_items(split)) == 2  # the split folder itself
    with pytest.raises(DataError, match="split 'dev' not found .*available: train"):
        load_items(tmp_path, split="dev")


def test_load_posts_files_and_folder(tmp_path: Path) -> None:
    _img(tmp_path / "imgs" / "a.jpg")
    _img(tmp_path / "imgs" / "b.png", (0, 0, 255))
    (tmp_path / "imgs" / "a.txt").write_text("hello there\n")
    jl = tmp_path / "posts.jsonl"
    jl.write_text(json.dumps({"image": "imgs/a.jpg", "text": "x", "sentiment": "positive"}) + "\n\n"
                  + json.dumps({"image": "imgs/b.png", "text": "y", "labels": {"desire": "none"}}) + "\n")
    posts = load_items(jl)
    assert [p.labels for p in posts] == [{"sentiment": "positive"}, {"desire": "none"}]
    assert Path(posts[0].image) == tmp_path / "imgs" / "a.jpg"
    csvf = tmp_path / "posts.csv"
    csvf.write_text("image,text,emotion\nimgs/a.jpg,hi,fear\n")
    assert load_items(csvf)[0].labels == {"emotion": "fear"}
    folder = load_items(tmp_path / "imgs")
    assert [(p.id, p.text) for p in folder] == [("a", "hello there"), ("b", "")]
    # the posts reader's errors (sdk.posts): "{file}:line {k}: {problem}"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "imgs/a.jpg", "text": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:line 2: malformed JSON"):
        load_items(bad)
    bad.write_text('{"image": "imgs/a.jpg", "text": "x"}\n{"image": "imgs/gone.jpg", "text": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:line 2: image .*gone.jpg not found"):
        load_items(bad)
    bad.write_text('{"image": "imgs/a.jpg", "text": "x"}\n{"image": "imgs/a.jpg"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:line 2: no text in column 'text'"):
        load_items(bad)
    (tmp_path / "noimg.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match=r"noimg.jsonl: no image column .*the columns are: text"):
        load_items(tmp_path / "noimg.jsonl")
    with pytest.raises(DataError, match="missing: calibration data not found"):
        load_items(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_items(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DataError, match=r"x.txt: unsupported posts file type '.txt'"):
        load_items(tmp_path / "x.txt")


def test_fingerprints_follow_content(tmp_path: Path) -> None:
    posts = generated_posts(3, seed=1, tasks=TASKS)
    assert data_fingerprint(posts) == data_fingerprint(generated_posts(3, seed=1, tasks=TASKS))
    assert data_fingerprint(posts) != data_fingerprint(generated_posts(3, seed=2, tasks=TASKS))
    _img(tmp_path / "a.jpg")
    p = Post(str(tmp_path / "a.jpg"), "t")
    before = data_fingerprint([p])
    _img(tmp_path / "a.jpg", (1, 2, 3))  # same name, new pixels
    assert data_fingerprint([p]) != before


@pytest.mark.msed
def test_msed_mini_dev(msed_dir: Path) -> None:
    posts = load_items(msed_dir, split="dev")
    assert len(posts) == 1021
    assert all(set(p.labels) == {"sentiment", "emotion", "desire"} for p in posts)
    picked = select_samples(posts, 128, seed=0)
    assert len({p.labels["desire"] for p in picked}) == 7


# --- reader -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from sdk.tokenizer import Tokenizer

    return Tokenizer.clip()


def _cfg():
    from sdk.preprocess import PreprocessConfig

    return PreprocessConfig()


def test_reader_protocol_and_shapes(tokenizer) -> None:
    posts = generated_posts(5, seed=0)
    for p in posts[1:]:
        p.text = "short"
    posts[0].text = "a much longer caption than the others with many many words in it"
    r = SydesCalibrationReader(posts, _cfg(), tokenizer, batch_size=2)
    assert len(r) == 3
    feeds = []
    while (f := r.get_next()) is not None:
        feeds.append(f)
    assert [f["global_pixels"].shape for f in feeds] == [(2, 224, 224, 3), (2, 224, 224, 3), (1, 224, 224, 3)]
    assert feeds[0]["canvas_pixels"].shape == (2, 448, 448, 3) and feeds[0]["canvas_pixels"].dtype == np.uint8
    assert feeds[0]["input_ids"].dtype == np.int64 and feeds[0]["attention_mask"].dtype == np.int64
    assert feeds[0]["input_ids"].shape[1] > feeds[1]["input_ids"].shape[1]  # trimmed per batch
    assert r.get_next() is None
    r.rewind()
    again = r.get_next()
    np.testing.assert_array_equal(again["canvas_pixels"], feeds[0]["canvas_pixels"])
    same = list(r.batches())
    assert len(same) == 3
    # one length for all batches (histogram calibrators stack them)
    ds = SydesCalibrationReader(posts, _cfg(), tokenizer, batch_size=2, trim="dataset")
    assert len({f["input_ids"].shape[1] for f in ds.batches()}) == 1
    full = SydesCalibrationReader(posts, _cfg(), tokenizer, trim=False)
    assert full.get_next()["input_ids"].shape == (1, 77)
    assert r.fingerprint() == SydesCalibrationReader(posts, _cfg(), tokenizer, batch_size=2).fingerprint()
    assert r.fingerprint() != SydesCalibrationReader(posts[:4], _cfg(), tokenizer, batch_size=2).fingerprint()
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        SydesCalibrationReader(posts, _cfg(), tokenizer, batch_size=0)
    with pytest.raises(ConfigError, match="no posts"):
        SydesCalibrationReader([], _cfg(), tokenizer)
    with pytest.raises(ConfigError, match="trim must be"):
        SydesCalibrationReader(posts, _cfg(), tokenizer, trim="sometimes")


# --- ranges and their cache ---------------------------------------------------------------------------
def _tiny_graph(path: Path) -> Path:
    """uint8 pixels -> float -> MatMul -> mean; takes (and ignores) ids / mask like a bundle graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("Cast", ["global_pixels"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("ReduceMean", ["y"], ["probs_sentiment"], keepdims=0)]
    inputs = [helper.make_tensor_value_info("global_pixels", TensorProto.UINT8, ["b", 224, 224, 3]),
              helper.make_tensor_value_info("canvas_pixels", TensorProto.UINT8, ["b", 448, 448, 3]),
              helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])]
    out = [helper.make_tensor_value_info("probs_sentiment", TensorProto.FLOAT, None)]
    g = helper.make_graph(nodes, "tiny", inputs, out, [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibrate_caches_ranges(tmp_path: Path, tokenizer, method: str, monkeypatch) -> None:
    from onnxruntime.quantization.calibrate import load_tensors_data

    graph = _tiny_graph(tmp_path / "g.onnx")
    reader = SydesCalibrationReader(generated_posts(4, seed=0), _cfg(), tokenizer, trim="dataset")
    cache = CalibrationCache(tmp_path / "cache")
    first = calibrate(graph, reader, method, cache, op_types=["MatMul"])
    assert not first.hit and first.samples == 4 and first.path.is_file()
    ranges = load_tensors_data(first.path)
    assert "x" in ranges.data and "y" in ranges.data
    # a re-run with the same graph, data, method and N does not run the calibrator
    import calibration.methods as cm

    monkeypatch.setattr(cm, "compute_ranges", lambda *a, **k: pytest.fail("recalibrated on a cache hit"))
    second = calibrate(graph, reader, method, cache, op_types=["MatMul"])
    assert second.hit and second.key == first.key
    assert cache.meta(first.key)["samples"] == 4
    monkeypatch.undo()
    other = calibrate(graph, SydesCalibrationReader(generated_posts(3, seed=0), _cfg(), tokenizer, trim="dataset"),
                      method, cache, op_types=["MatMul"])
    assert not other.hit and other.key != first.key


def test_cache_ignores_corrupt_entries(tmp_path: Path, tokenizer) -> None:
    graph = _tiny_graph(tmp_path / "g.onnx")
    reader = SydesCalibrationReader(generated_posts(2, seed=0), _cfg(), tokenizer, trim="dataset")
    cache = CalibrationCache(tmp_path)
    res = calibrate(graph, reader, "minmax", cache)
    res.path.write_text("{ truncated")
    assert cache.get(res.key) is None
    again = calibrate(graph, reader, "minmax", cache)
    assert not again.hit and cache.get(res.key) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing


def test_check_method_lists_valid() -> None:
    assert check_method("Entropy") == "entropy"
    with pytest.raises(ConfigError, match="valid: minmax, entropy, percentile"):
        check_method("kl")


# --- report -------------------------------------------------------------------------------------------
def test_macro_f1_matches_definition() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    assert macro_f1(y, y) == 1.0
    p = np.array([0, 1, 1, 1, 2, 0])
    # per class F1: c0 2*1/(2+2)=0.5, c1 2*2/(2+3)=0.8, c2 2*1/(2+1)=0.667
    assert macro_f1(y, p) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    t, q = rng.integers(0, 7, 300), rng.integers(0, 6, 300)  # class 6 never predicted
    assert macro_f1(t, q, 7) == pytest.approx(sklearn.f1_score(t, q, average="macro"))
    with pytest.raises(ValueError, match="y_true has 2 labels but y_pred has 1"):
        macro_f1([0, 1], [0])
    # all labels of the task count, as training's reports do (a class absent from the slice scores 0)
    assert macro_f1([0, 1], [0, 1], 3) == pytest.approx(2 / 3)


def test_compare_probs_and_labels() -> None:
    ref = {"sentiment": np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])}
    cand = {"sentiment": np.array([[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])}
    posts = [Post(None, "", {"sentiment": s}) for s in ("negative", "neutral", "bogus")]
    labels = label_indices(posts, TASKS)
    np.testing.assert_array_equal(labels["sentiment"], [0, 1, -1])
    rep = compare_probs(ref, cand, labels)["sentiment"]
    assert rep["top1_agreement"] == pytest.approx(2 / 3)
    assert rep["max_abs_diff"] == pytest.approx(0.4)
    # macro over all 3 classes, as every report of the project: "positive" has no sample here and scores 0
    assert rep["labelled"] == 2 and rep["macro_f1_reference"] == pytest.approx(2 / 3)
    assert rep["macro_f1_drop"] == pytest.approx(2 / 3 - macro_f1([0, 1], [0, 0], 3))
