"""The text recipe (sdk.text_fields.TextFields): which columns make a post's text. It is recorded in checkpoints
(config.json's tokenizer section) and bundles (manifest.json's), and sdk.posts, training, calibration,
`sydes eval` and `sydes analyze --input` build the text the same way from the same columns."""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import build_fake_bundle, read_manifest
from PIL import Image

from sdk.errors import BundleError, ConfigError, DataError
from sdk.posts import iter_rows, plan_posts
from sdk.text_fields import DEFAULT_TEXT_FIELDS, TextFields

TC = TextFields(("Title", "Caption"))
# words of the fake bundle's vocabulary (bundle_fixture.WORDS), so that the text moves its outputs
TITLES = ["happy dog", "", "angry man", "love flower"]  # row 2 has no title
CAPTIONS = ["sunny beach", "sad night", "great food", "bad day"]
JOINED = ["happy dog sunny beach", "sad night", "angry man great food", "love flower bad day"]
N = len(TITLES)
TASKS = {"sentiment": ["negative", "neutral", "positive"], "emotion": ["happiness", "sad", "neutral", "disgust",
         "anger", "fear"], "desire": ["vengeance", "curiosity", "social-contact", "family", "tranquility", "romance",
                                      "none"]}


def _image(path: Path, k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((30, 40, 3), (50 * k, 255 - 40 * k, 30 * k), dtype=np.uint8)).save(path, quality=95)


def _msed(root: Path, split: str = "test", header=("Title", "Caption")) -> Path:
    """MSED layout {root}/{split}/{split}.csv + images/K.jpg; `header`: the text columns it has."""
    folder = root / split
    with_title = "Title" in header
    (folder / "images").mkdir(parents=True)
    with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*header, "Sentiment", "Emotion", "Desire", "Inference Sequence"])
        for k in range(N):
            w.writerow([*([TITLES[k]] if with_title else []), CAPTIONS[k], "neutral", "sad", "none", "S-E-D"])
    for k in range(1, N + 1):
        _image(folder / "images" / f"{k}.jpg", k)
    return folder


def _posts_csv(tmp: Path, columns=("id", "image", "Title", "Caption", "text")) -> Path:
    for k in range(1, N + 1):
        _image(tmp / "imgs" / f"p{k}.png", k)
    path = tmp / "posts.csv"
    values = {"id": lambda k: f"p{k}", "image": lambda k: f"imgs/p{k}.png", "Title": lambda k: TITLES[k - 1],
              "Caption": lambda k: CAPTIONS[k - 1], "text": lambda k: f"own text {k}", "sentiment": lambda k: "neutral"}
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for k in range(1, N + 1):
            w.writerow([values[c](k) for c in columns])
    return path


# --- the recipe itself -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, separator, match", [
    ((), " ", r"^text fields must name at least one column$"),
    ("Caption", " ", r"^text fields must be a list of column names, got 'Caption'$"),
    (("Title", ""), " ", r"^text fields must be non-empty column names, got ''$"),
    (("Title", 3), " ", r"^text fields must be non-empty column names, got 3$"),
    (("Title", "Title"), " ", r"^text field 'Title' is named twice$"),
    (("Title",), None, r"^the text separator must be a string, got NoneType$"),
])
def test_invalid_text_fields(fields, separator, match) -> None:
    with pytest.raises(ConfigError, match=match):
        TextFields(fields, separator)


def test_text_fields_forms_and_round_trip() -> None:
    assert TextFields(["Title", "Caption"]) == TC and TextFields(["Title", "Caption"]).fields == ("Title", "Caption")
    assert TextFields.parse(" Title , Caption ") == TC == TextFields.of("Title,Caption") == TextFields.of(["Title", "Caption"])
    assert TextFields.of(None) is None and TextFields.of(TC) is TC
    with pytest.raises(ConfigError, match="at least one column"):
        TextFields.parse(" , ")
    piped = TextFields(("Title", "Caption"), " | ")
    assert piped.to_dict() == {"text_fields": ["Title", "Caption"], "text_separator": " | "}
    assert TextFields.from_dict(json.loads(json.dumps(piped.to_dict()))) == piped
    # a tokenizer section: its other keys are not the recipe's; without the keys, the reference's Caption
    assert TextFields.from_dict({"kind": "clip", "max_length": 77, **piped.to_dict()}) == piped
    assert TextFields.from_dict({"kind": "clip"}) == DEFAULT_TEXT_FIELDS == TextFields(("Caption",), " ")
    with pytest.raises(ConfigError, match=r"^text fields come from an object, got list$"):
        TextFields.from_dict([])
    with pytest.raises(ConfigError, match=r"must be a list of column names, got 'Caption'"):
        TextFields.from_dict({"text_fields": "Caption"})
    assert DEFAULT_TEXT_FIELDS.describe() == "the Caption column"
    assert piped.describe() == "the Title and Caption columns joined by ' | ' (empty ones left out)"


def test_build() -> None:
    assert TC.build({"Title": "A", "Caption": "b", "other": 1}) == "A b"
    assert TextFields(("Caption", "Title"), ". ").build({"Title": "A", "Caption": "b"}) == "b. A"
    for empty in ("", None, "  \n"):  # left out with its separator
        assert TC.build({"Title": empty, "Caption": "b"}) == "b"
    assert TC.build({"Title": "", "Caption": None}) == ""
    assert TC.build({"Title": " A ", "Caption": "b\nc"}) == " A  b\nc"  # values as they are
    with pytest.raises(DataError, match=r"^f.csv:row 2: missing text column 'Title'; the columns are: Caption, x$"):
        TC.build({"Caption": "b", "x": "y"}, "f.csv:row 2")
    with pytest.raises(DataError, match=r"^missing text column 'Caption'; the columns are: Title$"):
        TC.build({"Title": "b"})
    with pytest.raises(DataError, match=r"^f:line 1: text column 'Title' must hold a string, got int$"):
        TC.build({"Title": 3, "Caption": "b"}, "f:line 1")


# --- sdk.posts ----------------------------------------------------------------------------------------------
def test_plan_posts_msed_title_caption(tmp_path: Path) -> None:
    folder = _msed(tmp_path)
    for source in (tmp_path, folder, folder / "test.csv"):
        plan = plan_posts(source, split="test", text_fields=TC)
        assert (plan.text_fields, plan.text_col, plan.image_pattern) == (TC, None, "images/{row}.jpg")
        rows = [r.check() for r in iter_rows(plan, check_images=True, require_text=True)]
        assert [r.text for r in rows] == JOINED
        assert [r.image for r in rows] == [folder / "images" / f"{k}.jpg" for k in range(1, N + 1)]
    # as `sydes analyze --input test.csv --image-pattern 'images/{row}.jpg'`
    plan = plan_posts(folder / "test.csv", text_fields=TC, image_pattern="images/{row}.jpg")
    assert [r.text for r in iter_rows(plan)] == JOINED
    piped = plan_posts(folder, text_fields=TextFields(("Title", "Caption"), " | "))
    assert [r.text for r in iter_rows(piped)][:2] == ["happy dog | sunny beach", "sad night"]
    # the default, a one-field recipe (that column), an explicit column (overrides), a recipe the file lacks
    for plan in (plan_posts(folder), plan_posts(folder, text_fields=DEFAULT_TEXT_FIELDS),
                 plan_posts(folder, text_fields=TextFields(("Headline", "Caption")))):
        assert (plan.text_col, plan.text_fields) == ("Caption", None)
        assert [r.text for r in iter_rows(plan)] == CAPTIONS
    plan = plan_posts(folder, text_fields=TC, text_column="Title")
    assert (plan.text_col, plan.text_fields) == ("Title", None) and [r.text for r in iter_rows(plan)] == TITLES
    assert [r.text for r in iter_rows(plan_posts(folder, text_fields=["Title"]))] == TITLES


def test_plan_posts_files(tmp_path: Path) -> None:
    path = _posts_csv(tmp_path)
    assert [r.text for r in iter_rows(plan_posts(path, text_fields=TC))] == JOINED
    assert [r.text for r in iter_rows(plan_posts(path))] == [f"own text {k}" for k in range(1, N + 1)]  # as before
    assert [r.text for r in iter_rows(plan_posts(path, text_fields=TC, text_column="text"))][0] == "own text 1"
    (tmp_path / "b").mkdir()
    plain = _posts_csv(tmp_path / "b", ("image", "text"))
    plan = plan_posts(plain, text_fields=TC)  # no Title / Caption: its text column, as sydes analyze reads it
    assert (plan.text_col, plan.text_fields) == ("text", None)
    with pytest.raises(DataError, match=r"posts.csv: missing columns 'Title', 'Caption'; the columns are: image, text"):
        plan_posts(plain, text_fields=TC, require=TC.fields)
    # JSON lines: the columns are the first object's; a later row without a field is that row's error
    _image(tmp_path / "a.png", 1)
    jl = tmp_path / "p.jsonl"
    rows = [{"image": "a.png", "Title": "happy", "Caption": "dog"}, {"image": "a.png", "Caption": "dog"},
            {"image": "a.png", "Title": None, "Caption": "cat"}, {"image": "a.png", "Title": 2, "Caption": "x"}]
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = list(iter_rows(plan_posts(jl, text_fields=TC), require_text=True))
    assert [r.text for r in got] == ["happy dog", None, "cat", None]
    assert str(got[1].error) == f"{jl}:line 2: missing text column 'Title'; the columns are: image, Caption"
    assert str(got[3].error) == f"{jl}:line 4: text column 'Title' must hold a string, got int"


# --- training, calibration, sydes eval -----------------------------------------------------------------------
def test_training_and_calibration_read_the_fields(tmp_path: Path, caplog) -> None:
    from calibration.data import load_items
    from training.data import read_any, read_msed, read_posts
    from training.runner import read_split

    folder = _msed(tmp_path)
    assert [e.text for e in read_msed(tmp_path, "test", text_fields=TC)] == JOINED
    assert [e.text for e in read_msed(tmp_path, "test")] == CAPTIONS
    assert [e.text for e in read_any(folder, text_fields=TC)] == JOINED
    assert [e.text for e in read_split(str(tmp_path), "test", None, tasks=TASKS, text_fields=TC)] == JOINED
    assert [p.text for p in load_items(tmp_path, split="test", text_fields=TC)] == JOINED
    assert [p.text for p in load_items(folder)] == CAPTIONS
    _msed(tmp_path, "dev", header=("Caption",))  # an MSED CSV without the Title: no silent fallback
    with pytest.raises(DataError, match=r"dev.csv: missing column 'Title'; the columns are: Caption, Sentiment.*"
                                        r"--text-fields names the columns to read, e.g. --text-fields Caption"):
        read_msed(tmp_path, "dev", text_fields=TC)
    with pytest.raises(DataError, match=r"dev.csv: missing column 'Title'"):
        load_items(tmp_path, split="dev", text_fields=TC)
    path = _posts_csv(tmp_path, ("image", "Title", "Caption", "text", "sentiment"))
    assert [e.text for e in read_posts(path, text_fields=TC)] == JOINED
    assert [p.text for p in load_items(path, text_fields=TC)] == JOINED
    (tmp_path / "b").mkdir()
    plain = _posts_csv(tmp_path / "b", ("image", "text", "sentiment"))
    with caplog.at_level(logging.WARNING, logger="training.data"):
        assert read_posts(plain, text_fields=TC)[0].text == "own text 1"  # its text column, as sydes analyze
    assert "posts.csv has not all of Title, Caption: reading the text from its column 'text'" in caplog.text
    with pytest.raises(DataError, match=r"posts.csv: missing columns 'Title', 'Caption'"):
        read_posts(plain, text_fields=TC, strict_text=True)  # training: a recipe other than the Caption's


def test_eval_reads_the_checkpoints_fields(tmp_path: Path, monkeypatch) -> None:
    import training.evaluate
    import training.metrics
    from sdk.cli import main

    _msed(tmp_path)
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"tasks": TASKS, "tokenizer": {"kind": "wordpiece", **TC.to_dict()}}))
    seen = []
    monkeypatch.setattr(training.evaluate, "evaluate_checkpoint", lambda c, records, **kw: seen.append(records) or {})
    monkeypatch.setattr(training.metrics, "format_report", lambda reports: "")
    assert main(["eval", str(ck), "--data", str(tmp_path), "--split", "test"]) == 0
    assert [e.text for e in seen[0]] == JOINED


# --- checkpoints ---------------------------------------------------------------------------------------------
def test_checkpoint_config_records_the_fields() -> None:
    from training.config import SydesConfig
    from training.presets import tiny_vit_bert

    cfg = tiny_vit_bert()
    assert cfg.tokenizer.text_recipe() == DEFAULT_TEXT_FIELDS
    piped = TextFields(("Title", "Caption"), " | ")
    cfg.tokenizer.set_text_recipe(piped)
    d = json.loads(cfg.to_json())
    assert d["tokenizer"]["text_fields"] == ["Title", "Caption"] and d["tokenizer"]["text_separator"] == " | "
    back = SydesConfig.from_json(cfg.to_json())
    assert back.tokenizer.text_recipe() == piped and back.to_dict() == cfg.to_dict()
    old = {**d, "tokenizer": {"kind": d["tokenizer"]["kind"], "max_length": d["tokenizer"]["max_length"]}}
    assert SydesConfig.from_dict(old).tokenizer.text_recipe() == DEFAULT_TEXT_FIELDS  # written before the keys
    with pytest.raises(ConfigError, match="text fields must name at least one column"):
        SydesConfig.from_dict({**d, "tokenizer": {**d["tokenizer"], "text_fields": []}})
    with pytest.raises(ConfigError, match="the text separator must be a string, got int"):
        SydesConfig.from_dict({**d, "tokenizer": {**d["tokenizer"], "text_separator": 3}})


def test_text_only_config_records_the_fields() -> None:
    from training.presets import tiny_vit_bert
    from training.text_model import TextOnlyConfig

    ref = tiny_vit_bert()
    cfg = TextOnlyConfig(text=ref.text, tasks=ref.tasks, tokenizer=ref.tokenizer)
    cfg.tokenizer.set_text_recipe(TC)
    assert TextOnlyConfig.from_dict(json.loads(cfg.to_json())).tokenizer.text_recipe() == TC
    d = cfg.to_dict()
    d["tokenizer"] = {"kind": "wordpiece", "max_length": 16}
    assert TextOnlyConfig.from_dict(d).tokenizer.text_recipe() == DEFAULT_TEXT_FIELDS
    d["tokenizer"]["text_fields"] = ["Title", "Title"]
    with pytest.raises(ConfigError, match="text field 'Title' is named twice"):
        TextOnlyConfig.from_dict(d)


# --- bundles -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tc_bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("b") / "tc.sydes", text=TC.to_dict())


def test_manifest_round_trip(tc_bundle: Path, tmp_path: Path, capsys) -> None:
    from sdk import bundle as B
    from sdk.cli import main

    b = B.load_bundle(tc_bundle)
    assert b.text_fields == TC and b.manifest.tokenizer.text_fields == ("Title", "Caption")
    assert not {"text_fields", "text_separator"} & set(b.manifest.tokenizer.extra)
    old = B.load_bundle(build_fake_bundle(tmp_path / "old.sydes"))  # a manifest from before the keys
    assert old.text_fields == DEFAULT_TEXT_FIELDS and "text_fields" not in read_manifest(old.path)["tokenizer"]
    m = read_manifest(tc_bundle)
    for bad, match in (({"text_fields": []}, r"'tokenizer.text_fields': text fields must name at least one column$"),
                       ({"text_fields": "Title"}, r"'tokenizer.text_fields': text fields must be a list of column "
                                                  r"names, got 'Title'$"),
                       ({"text_fields": ["Title", None]}, r"'tokenizer.text_fields': text fields must be non-empty "
                                                          r"column names, got None$"),
                       ({"text_separator": 1}, r"'tokenizer.text_separator' must be a string$")):
        with pytest.raises(BundleError, match=rf"^manifest field {match}"):
            B.validate_manifest({**m, "tokenizer": {**m["tokenizer"], **bad}})
    assert main(["info", str(tc_bundle)]) == 0
    assert "text       the Title and Caption columns joined by ' '" in capsys.readouterr().out


def test_bundle_card_names_the_fields(tc_bundle: Path, tmp_path: Path) -> None:
    from export.model_card import write_bundle_card

    m = read_manifest(tc_bundle)
    m["validation"] = {"max_abs_diff": dict.fromkeys(m["tasks"], 0.0), "agreement": dict.fromkeys(m["tasks"], 1.0)}
    write_bundle_card(tmp_path, m, [])
    assert "- text: the Title and Caption columns joined by ' ' (empty ones left out) of a post" in (
        tmp_path / "README.md").read_text()


# --- sydes analyze -------------------------------------------------------------------------------------------
def _args(source: Path, **flags) -> argparse.Namespace:
    args = argparse.Namespace(input=source, id_column=None, text_column=None, image_column=None,
                              image_pattern=None, image_root=None)
    for k, v in flags.items():
        setattr(args, k, v)
    return args


def test_analyze_items_build_the_bundles_text(tc_bundle: Path, tmp_path: Path, caplog) -> None:
    from sdk.commands.analyze import bundle_text_fields, iter_items, plan_input
    from sdk.commands.analyze_output import Shard
    from sdk.commands.analyze_ray import stage_rows

    fields = bundle_text_fields(tc_bundle)
    assert fields == TC
    folder = _msed(tmp_path)
    for source in (folder, folder / "test.csv"):
        items = list(iter_items(plan_input(_args(source, image_pattern="images/{row}.jpg"), fields), Shard()))
        assert [text for _, (_, text) in items] == JOINED
    plan = plan_input(_args(folder / "test.csv", text_column="Caption"), fields)  # --text-column overrides
    assert [text for _, (_, text) in iter_items(plan, Shard())] == CAPTIONS
    pytest.importorskip("pyarrow")
    (table,) = stage_rows(plan_input(_args(folder), fields), target_blocks=1, min_rows=1)  # --engine ray
    assert table.column("text").to_pylist() == JOINED
    (tmp_path / "b").mkdir()
    plain = _posts_csv(tmp_path / "b", ("image", "text"))
    with caplog.at_level(logging.WARNING, logger="sdk.commands.analyze"):
        plan = plan_input(_args(plain), fields)
    assert plan.text_col == "text"
    assert "reads the Title and Caption columns joined by ' ' (empty ones left out); " in caplog.text
    assert "lacks Title, Caption: reading the text from column 'text' instead" in caplog.text


def test_analyze_msed_csv_unchanged_command(tc_bundle: Path, tmp_path: Path) -> None:
    """`sydes analyze BUNDLE --input test/test.csv --image-pattern 'images/{row}.jpg'`: each row is analysed
    with its own image and the text the bundle's fields build (Title + Caption), as Analyzer.analyze(image,
    text) answers for that text given as it is."""
    from sdk import Analyzer
    from sdk.cli import main

    folder = _msed(tmp_path)
    out = tmp_path / "tags.jsonl"
    assert main(["analyze", str(tc_bundle), "--input", str(folder / "test.csv"), "--output", str(out),
                 "--image-pattern", "images/{row}.jpg", "--no-progress"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(1, N + 1)) and all(r["ok"] for r in rows)

    def probs(tasks: dict) -> np.ndarray:
        return np.concatenate([list(t["probs"].values()) for t in tasks.values()])

    with Analyzer(tc_bundle, device="cpu", warmup=False) as az:
        for k, r in enumerate(rows, start=1):
            image = folder / "images" / f"{k}.jpg"
            joined = probs(az.analyze(image, JOINED[k - 1]).to_dict()["tasks"])
            caption = probs(az.analyze(image, CAPTIONS[k - 1]).to_dict()["tasks"])
            assert np.abs(probs(r["tasks"]) - joined).max() < 1e-3, f"row {k} was not read as Title + Caption"
            if TITLES[k - 1]:
                assert np.abs(probs(r["tasks"]) - caption).max() > 1e-3


def test_export_calibrates_on_the_checkpoints_text(tmp_path: Path) -> None:
    """export's --calib DATA: the calibration and held-out posts read the checkpoint's text fields."""
    from export.pipeline import ExportOptions, _calibration_posts

    _msed(tmp_path, "train")
    _msed(tmp_path, "dev")
    calib = _calibration_posts(ExportOptions(calib=str(tmp_path), calib_samples=N, eval_samples=N), TASKS, TC)
    assert sorted(p.text for p in calib.posts) == sorted(JOINED) == sorted(p.text for p in calib.held)
    calib = _calibration_posts(ExportOptions(calib=str(tmp_path), calib_samples=N, eval_samples=0), TASKS)
    assert sorted(p.text for p in calib.posts) == sorted(CAPTIONS)
