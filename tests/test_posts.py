"""sdk.posts, the one posts reader: every layout pairs each row's text with its own row's image through every
consumer (training.data.read_any, calibration.data.load_items, `sydes analyze`'s iter_items), and every
error reads "{where}: {problem}"."""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdk.commands.analyze import iter_items, plan_input
from sdk.commands.analyze_output import Shard
from sdk.decode import load_image
from sdk.errors import DataError
from sdk.posts import PostRow, iter_rows, msed_csv, plan_posts, read_rows

N = 6
SENT = ("negative", "neutral", "positive")
EMO = ("happiness", "sad", "neutral", "disgust", "anger", "fear")
DES = ("vengeance", "curiosity", "social-contact", "family", "tranquility", "romance", "none")


def colour(k: int) -> tuple[int, int, int]:
    """The solid colour of row k's image: far apart for different rows (JPEG moves it by a few levels)."""
    return (40 * k) % 256, (255 - 35 * k) % 256, (90 + 60 * k) % 256


def caption(k: int) -> str:
    return f"caption of row {k}" + ("\nwith a second line, and a comma" if k % 3 == 0 else "")


def labels(k: int) -> dict[str, str]:
    return {"sentiment": SENT[k % 3], "emotion": EMO[k % 6], "desire": DES[k % 7]}


def _save(path: Path, k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), colour(k)).save(path, quality=95)


def row_of(image) -> int:
    """The row whose colour the decoded image has (sdk.decode, as the runtime reads it)."""
    mean = np.asarray(load_image(image), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    dist = [np.abs(mean - colour(k)).max() for k in range(1, N + 1)]
    k = int(np.argmin(dist)) + 1
    assert dist[k - 1] < 6, f"{image} has colour {mean}, no row's"
    return k


def _msed(root: Path, split: str = "dev") -> Path:
    """MSED layout: {root}/{split}/{split}.csv, row K <-> images/K.jpg."""
    folder = root / split
    (folder / "images").mkdir(parents=True)
    with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Title", "Caption", "Sentiment", "Emotion", "Desire", "Inference Sequence"])
        for k in range(1, N + 1):
            lab = labels(k)
            w.writerow([f"title {k}", caption(k), lab["sentiment"], lab["emotion"], lab["desire"], "S-E-D"])
    for k in range(1, N + 1):
        _save(folder / "images" / f"{k}.jpg", k)
    return folder


def _name(k: int) -> str:
    return f"pic{(5 * k) % 7}.png"  # not in row order: only the column can pair them


def _posts_file(tmp: Path, suffix: str) -> Path:
    """A posts file whose image column names each row's own image."""
    for k in range(1, N + 1):
        _save(tmp / "imgs" / _name(k), k)
    rows = [{"id": f"p{k}", "image": f"imgs/{_name(k)}", "text": caption(k), **labels(k)} for k in range(1, N + 1)]
    path = tmp / f"posts{suffix}"
    if suffix in (".jsonl", ".ndjson", ".json"):
        # a BOM and blank lines: neither is a row
        path.write_text("\ufeff" + "\n\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8-sig") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if suffix == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    return path


def _analyze(source: Path, **flags) -> list[tuple[int, Path, str]]:
    args = argparse.Namespace(input=source, id_column=None, text_column=None, image_column=None,
                              image_pattern=None, image_root=None)
    for k, v in flags.items():
        setattr(args, k, v)
    out = []
    for key, item in iter_items(plan_input(args), Shard()):
        assert not isinstance(item, Exception), item
        out.append((key["row"], *item))
    return out


def _check(pairs, *, want_labels=None) -> None:
    assert [n for n, *_ in pairs] == list(range(1, N + 1))
    for n, image, text, *lab in pairs:
        assert text == caption(n)
        assert row_of(image) == n, f"row {n}'s text was paired with row {row_of(image)}'s image"
        if want_labels is not None:
            assert lab[0] == want_labels(n)


def _through_training(source: Path, split: str | None = None) -> list:
    from training.data import MSED_TASKS, read_any

    rec = read_any(source, split)
    idx = {t: {n: i for i, n in enumerate(names)} for t, names in MSED_TASKS.items()}
    pairs = [(n, e.image, e.text, e.labels) for n, e in enumerate(rec, start=1)]  # every row is valid
    _check(pairs, want_labels=lambda n: {t: idx[t][v] for t, v in labels(n).items()})
    return pairs


def _through_calibration(source: Path, split: str = "train") -> None:
    from calibration.data import load_items

    posts = load_items(source, split=split)
    _check([(i, p.image, p.text, p.labels) for i, p in enumerate(posts, start=1)], want_labels=labels)


# --- every layout, every consumer -----------------------------------------------------------------------
def test_msed_root_and_split(tmp_path: Path) -> None:
    folder = _msed(tmp_path)
    _through_training(tmp_path, "dev")
    _through_calibration(tmp_path, "dev")
    _check(_analyze(folder))  # sydes analyze has no --split: the split folder (next test) or its CSV
    plan = plan_posts(tmp_path, split="dev")
    assert plan.path == folder / "dev.csv" and plan.image_pattern == "images/{row}.jpg" and plan.text_col == "Caption"
    _check([(r.n, r.image, r.text, r.labels) for r in iter_rows(plan, check_images=True)], want_labels=labels)


def test_msed_split_folder_and_its_csv(tmp_path: Path) -> None:
    folder = _msed(tmp_path)
    for source in (folder, folder / "dev.csv"):
        _through_training(source)
        _through_calibration(source)
        _check(_analyze(source))
    # an MSED CSV with an explicit pattern, as `sydes analyze --input dev.csv --image-pattern images/{row}.jpg`
    _check(_analyze(folder / "dev.csv", image_pattern="images/{row}.jpg", text_column="Caption"))
    rows = list(iter_rows(plan_posts(folder)))
    assert rows[2].where == f"{folder / 'dev.csv'}:row 3" and rows[2].id is None


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson", ".json", ".csv", ".tsv"])
def test_posts_files(tmp_path: Path, suffix: str) -> None:
    path = _posts_file(tmp_path, suffix)
    _through_training(path)
    _through_calibration(path)
    _check(_analyze(path))
    rows = list(iter_rows(plan_posts(path)))
    assert [r.id for r in rows] == [f"p{k}" for k in range(1, N + 1)]
    unit = "line" if suffix in (".jsonl", ".ndjson", ".json") else "row"
    assert rows[0].where == f"{path}:{unit} 1" and rows[1].where == f"{path}:{unit} {3 if unit == 'line' else 2}"


def test_image_pattern(tmp_path: Path) -> None:
    """{row} (data rows from 1), {id} and {COLUMN}; relative to --image-root; a column named "row" does not
    clash with {row}."""
    pics = tmp_path / "pics"
    for k in range(1, N + 1):
        _save(pics / f"r{k}.png", k)
        _save(pics / "byid" / f"p{k}-x{k}.png", k)
    path = tmp_path / "sub" / "posts.csv"
    path.parent.mkdir()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "row", "tag", "text"])
        for k in range(1, N + 1):
            w.writerow([f"p{k}", "999", f"x{k}", caption(k)])
    _check(_analyze(path, image_pattern="r{row}.png", image_root=pics))
    _check(_analyze(path, image_pattern="byid/{id}-{tag}.png", image_root=pics))
    _check(_analyze(path, image_pattern="../pics/r{row}.png"))  # default root: the file's folder
    jl = tmp_path / "p.jsonl"
    jl.write_text("".join(json.dumps({"n": k, "text": caption(k)}) + "\n" for k in range(1, N + 1)))
    _check(_analyze(jl, image_pattern="pics/r{n}.png"))
    _check(_analyze(jl, image_pattern="pics/r{n:d}.png"))


def test_analyze_items_keep_their_place(tmp_path: Path) -> None:
    """A broken row keeps its place and number (written as failed); shards own row n when (n-1) % N == I."""
    path = _posts_file(tmp_path, ".jsonl")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[4] = "{broken\n"  # the 3rd row (lines alternate with blank ones)
    path.write_text("".join(lines), encoding="utf-8")
    args = argparse.Namespace(input=path, id_column=None, text_column=None, image_column=None,
                              image_pattern=None, image_root=None)
    items = list(iter_items(plan_input(args), Shard()))
    assert [k for k, _ in items][:4] == [{"row": 1, "id": "p1"}, {"row": 2, "id": "p2"}, {"row": 3, "id": "row-3"},
                                          {"row": 4, "id": "p4"}]
    assert isinstance(items[2][1], DataError) and str(items[2][1]).startswith(f"{path}:line 5: malformed JSON")
    assert [k["row"] for k, _ in iter_items(plan_input(args), Shard(3, 1))] == [2, 5]


# --- errors ----------------------------------------------------------------------------------------------
def _raise_first(path: Path, plan_kw: dict | None = None, **kw) -> None:
    """Raise the first row error of `path` (PostRow.check), as a caller that does not skip would."""
    for row in iter_rows(plan_posts(path, **(plan_kw or {})), **kw):
        row.check()
    raise AssertionError("expected a row error")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"none.jsonl: posts file not found"):
        plan_posts(tmp_path / "none.jsonl")
    with pytest.raises(DataError, match=r"none.csv: posts file not found"):
        read_rows(tmp_path / "none.csv")  # at once, not on the first next()
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(DataError, match=r"p.txt: unsupported posts file type '.txt'; use .jsonl, .ndjson, .json, "
                                        r".csv, .tsv"):
        plan_posts(tmp_path / "p.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"folder: not an MSED folder"):
        plan_posts(tmp_path / "folder")
    _msed(tmp_path / "root", "train")
    with pytest.raises(DataError, match=r"root: MSED split 'dev' not found \(available: train\)"):
        plan_posts(tmp_path / "root", split="dev")
    with pytest.raises(DataError, match=r"root: MSED needs a split name \(available: train\)"):
        msed_csv(tmp_path / "root")
    (tmp_path / "bad.csv").write_bytes(b"image,text\n\xff\xfe,x\n")
    with pytest.raises(DataError, match=r"bad.csv: cannot read: .*codec"):
        list(iter_rows(plan_posts(tmp_path / "bad.csv")))


def test_column_errors_list_the_columns(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text("picture,words,mood\na.png,hi,x\n")
    with pytest.raises(DataError, match=r"p.csv: no text column \(looked for text, caption, Caption\); "
                                        r"the columns are: picture, words, mood"):
        plan_posts(p)
    with pytest.raises(DataError, match=r"p.csv: no image column \(looked for image, image_path, path, file, "
                                        r"filename\); the columns are: picture, words, mood"):
        plan_posts(p, text_column="words")
    assert plan_posts(p, text_column="words", image_column="picture").image_col == "picture"
    with pytest.raises(DataError, match=r"p.csv: missing text column 'caption'; the columns are: picture, words, mood"):
        plan_posts(p, text_column="caption", image_column="picture")
    with pytest.raises(DataError, match=r"p.csv: missing image column 'img'; the columns are: picture, words, mood"):
        plan_posts(p, text_column="words", image_column="img")
    with pytest.raises(DataError, match=r"p.csv: missing id column 'key'; the columns are: picture, words, mood"):
        plan_posts(p, text_column="words", image_column="picture", id_column="key")
    with pytest.raises(DataError, match=r"p.csv: missing columns 'Sentiment', 'Desire'; the columns are: picture"):
        plan_posts(p, text_column="words", image_column="picture", require=["Sentiment", "mood", "Desire"])


@pytest.mark.parametrize("pattern, match", [
    ("images/{row.jpg", r"bad image pattern 'images/\{row.jpg': .*"),
    ("images/{}.jpg", r"bad image pattern 'images/\{\}.jpg': \{\} is not \{row\}, \{id\} or a column; the columns are: text"),
    ("images/{nope}.jpg", r"bad image pattern 'images/\{nope\}.jpg': \{nope\} is not \{row\}, \{id\} or a column; "
                          r"the columns are: text"),
    ("images/{id}.jpg", r"bad image pattern 'images/\{id\}.jpg': \{id\} needs an id column; the columns are: text"),
])
def test_bad_image_pattern(tmp_path: Path, pattern: str, match: str) -> None:
    p = tmp_path / "p.csv"
    p.write_text("text\nhi\n")
    with pytest.raises(DataError, match=rf"p.csv: {match}"):
        plan_posts(p, image_pattern=pattern)


def test_row_errors(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", 1)
    good = {"image": "a.png", "text": "x", "sentiment": "neutral"}
    p = tmp_path / "p.jsonl"

    def lines(*rows: object) -> Path:
        p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in (good, *rows)))
        return p

    w = re.escape(f"{p}:line 2")
    with pytest.raises(DataError, match=rf"^{w}: malformed JSON \(Expecting"):
        _raise_first(lines("{oops"))
    with pytest.raises(DataError, match=rf"^{w}: expected a JSON object, got list$"):
        _raise_first(lines("[1, 2]"))
    with pytest.raises(DataError, match=rf"^{w}: no image path in column 'image'$"):
        _raise_first(lines({"text": "x"}))
    with pytest.raises(DataError, match=rf"^{w}: image .*gone.png not found$"):
        _raise_first(lines({**good, "image": "gone.png"}), check_images=True)
    assert all(r.ok for r in iter_rows(plan_posts(p)))  # not checked unless asked (the Analyzer reports it)
    with pytest.raises(DataError, match=rf"^{w}: no text in column 'text'$"):
        _raise_first(lines({"image": "a.png"}), require_text=True)
    with pytest.raises(DataError, match=rf"^{w}: text must be a string, got int$"):
        _raise_first(lines({**good, "text": 3}))
    with pytest.raises(DataError, match=rf"^{w}: unknown sentiment label 'glad'; valid labels: negative, neutral, "
                                        r"positive$"):
        _raise_first(lines({**good, "sentiment": "glad"}), tasks={"sentiment": SENT})
    with pytest.raises(DataError, match=rf"^{w}: sentiment label must be a string, got 2$"):
        _raise_first(lines({**good, "sentiment": 2}))
    with pytest.raises(DataError, match=rf"^{w}: no label for any of sentiment, emotion, desire$"):
        _raise_first(lines({"image": "a.png", "text": "x"}), require_labels=True)
    good = {**good, "emotion": "sad", "desire": "none"}
    with pytest.raises(DataError, match=rf"^{w}: no emotion, desire label$"):
        _raise_first(lines({"image": "a.png", "text": "x", "sentiment": "neutral"}), require_labels="all")
    with pytest.raises(DataError, match=rf"^{w}: image pattern '{{image}}' needs field 'image', not in this row$"):
        _raise_first(lines({"text": "x"}), {"image_pattern": "{image}"})
    c = tmp_path / "c.csv"
    c.write_text("image,text\na.png,x,extra\na.png\n")
    assert [str(r.error) for r in iter_rows(plan_posts(c))] == [
        f"{c}:row 1: malformed row (expected 2 fields, as the header)",
        f"{c}:row 2: malformed row (expected 2 fields, as the header)"]
    with pytest.raises(DataError, match=r"c.csv:row 1: malformed row"):
        _raise_first(c)


def test_labels_any_case_and_nested(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", 1)
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"image": "a.png", "text": "x", "Sentiment": " positive ", "mood": "q",
                             "labels": {"desire": "none", "sentiment": "negative"}}) + "\n")
    (row,) = iter_rows(plan_posts(p), tasks={"sentiment": SENT, "desire": DES})
    assert row == PostRow(1, f"{p}:line 1", tmp_path / "a.png", "x", {"sentiment": "positive", "desire": "none"})
    (row,) = iter_rows(plan_posts(p), tasks=())
    assert row.labels == {}
