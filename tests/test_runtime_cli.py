"""`sydes info / analyze / benchmark` on the fake bundle: output, resume, torn lines, failures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import build_fake_bundle
from PIL import Image

from sdk.cli import main
from sdk.commands.analyze_output import scan_output


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("b") / "fake.sydes")


@pytest.fixture()
def posts(tmp_path: Path) -> Path:
    """posts.jsonl with 7 rows; images/ beside it; row 3's image is missing, row 5 has no text."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rows = []
    for i in range(7):
        if i != 3:
            a = np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(a).save(img_dir / f"{i}.png")
        rows.append({"id": f"p{i}", "image": f"images/{i}.png", "text": "" if i == 5 else f"happy dog {i}"})
    p = tmp_path / "posts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_info(bundle: Path, capsys) -> None:
    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "precision  fp32" in out and "sentiment  3 labels: negative, neutral, positive" in out
    assert "in   input_ids" in out and "trim_padding yes" in out
    assert main(["info", str(bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "sydes-bundle"
    assert main(["info", str(bundle.parent / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_analyze_single(bundle: Path, posts: Path, capsys) -> None:
    assert main(["analyze", str(bundle), str(posts.parent / "images" / "0.png"), "a happy dog"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and set(r["tasks"]) == {"sentiment", "emotion", "desire"}
    assert main(["analyze", str(bundle), str(posts.parent / "images" / "3.png"), "x"]) == 1
    r = json.loads(capsys.readouterr().out)
    assert r["error_type"] == "ImageDecodeError" and "does not exist" in r["error"]
    assert main(["analyze", str(bundle)]) == 1
    assert "give IMAGE and TEXT" in capsys.readouterr().err
    assert main(["analyze", str(bundle), "--input", str(posts)]) == 1
    assert "--input needs --output" in capsys.readouterr().err


def test_analyze_file_resume_and_torn_line(bundle: Path, posts: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "tags.jsonl"
    args = ["analyze", str(bundle), "--input", str(posts), "--output", str(out), "--batch-size", "3", "--no-progress"]
    assert main(args) == 0
    full = _lines(out)
    assert [r["id"] for r in full] == [f"p{i}" for i in range(7)]
    assert [r["ok"] for r in full] == [True, True, True, False, True, False, True]
    assert full[3]["error_type"] == "ImageDecodeError" and full[5]["error_type"] == "TextError"
    # partial output (3 rows) + a torn 4th line, as a Ctrl-C or crash might leave it
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    assert main(args) == 0
    again = _lines(out)
    assert [r["id"] for r in again] == [f"p{i}" for i in range(7)]  # each row exactly once
    for a, b in zip(full, again, strict=True):
        assert a["ok"] == b["ok"]
        if a["ok"]:
            assert a["tasks"]["sentiment"]["label"] == b["tasks"]["sentiment"]["label"]
    assert "3 already in" in capsys.readouterr().err
    assert main(args) == 0  # nothing left to do
    assert len(_lines(out)) == 7 and "0 posts analysed" in capsys.readouterr().err


def test_resume_scan_rules(tmp_path: Path) -> None:
    """Was test_load_done_rules: resume no longer collects keys (memory flat in rows, tests/test_shards.py)
    but counts the finished prefix, so rows are numbered from 1 in input order; the rules are the same."""
    p = tmp_path / "o.jsonl"
    p.write_text('{"row": 1, "ok": true}\n{"row": 2, "ok": true}')  # complete last record without its newline
    assert scan_output(p).done == 2 and p.read_text().endswith("}\n")
    p.write_text('{"row": 1, "ok": true}\n{"ro')
    assert scan_output(p).done == 1 and p.read_text() == '{"row": 1, "ok": true}\n'
    p.write_text('{"row": 1, "ok": true}\ngarbage\n{"row": 3, "ok": true}\n')
    with pytest.raises(Exception, match="line 2 is not a result line"):
        scan_output(p)


def test_analyze_csv_with_row_keys_and_pattern(bundle: Path, posts: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "dev.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Title", "Caption"])
        for i in range(4):
            w.writerow([f"t{i}", f"sad cat {i}"])
    out = tmp_path / "tags.jsonl"
    rc = main(["analyze", str(bundle), "--input", str(csv_path), "--output", str(out), "--image-pattern",
               "images/{row}.png", "--image-root", str(posts.parent), "--text-column", "Caption", "--no-progress"])
    assert rc == 0
    rows = _lines(out)
    # {row} counts data rows from 1: rows 1, 2 have images, row 3's is missing (fixture), 4 exists
    assert [r["row"] for r in rows] == [1, 2, 3, 4] and [r["ok"] for r in rows] == [True, True, False, True]


def test_analyze_msed_csv_pairs_each_caption_with_its_own_image(bundle: Path, tmp_path: Path) -> None:
    """MSED layout: row K of the CSV is images/K.jpg. Images encode their row (a distinct colour), captions
    too; every output row must equal the Analyzer's answer for its own (image, caption)."""
    from sdk import Analyzer

    split = tmp_path / "test"
    (split / "images").mkdir(parents=True)
    captions = [f"happy day number {k}" if k % 2 else f"sad night {k}" for k in range(1, 7)]
    for k in range(1, 7):
        Image.fromarray(np.full((60, 80, 3), 30 * k, dtype=np.uint8)).save(split / "images" / f"{k}.jpg", quality=95)
    with open(split / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Title", "Caption", "Sentiment", "Emotion", "Desire"])
        for c in captions:
            w.writerow(["a title", c, "neutral", "neutral", "none"])
    out = tmp_path / "tags.jsonl"
    assert main(["analyze", str(bundle), "--input", str(split / "test.csv"), "--output", str(out),
                 "--image-pattern", "images/{row}.jpg", "--no-progress"]) == 0
    rows = _lines(out)
    assert [r["row"] for r in rows] == list(range(1, 7)) and all(r["ok"] for r in rows)
    def probs(tasks: dict) -> np.ndarray:
        return np.concatenate([list(t["probs"].values()) for t in tasks.values()])

    with Analyzer(bundle, device="cpu", warmup=False) as az:
        for k, r in enumerate(rows, start=1):
            own = probs(az.analyze(split / "images" / f"{k}.jpg", captions[k - 1]).to_dict()["tasks"])
            other = probs(az.analyze(split / "images" / f"{k % 6 + 1}.jpg", captions[k - 1]).to_dict()["tasks"])
            got = probs(r["tasks"])
            # batched vs single runs agree to ~1e-4 (batch kernels); a neighbour's image moves them > 1e-2
            assert np.abs(got - own).max() < 1e-3, f"row {k} was not analysed with images/{k}.jpg"
            assert np.abs(got - other).max() > 1e-2


def test_analyze_bad_input_file(bundle: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "posts.txt"
    bad.write_text("x")
    assert main(["analyze", str(bundle), "--input", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "posts.txt: unsupported posts file type '.txt'; use .jsonl" in capsys.readouterr().err
    j = tmp_path / "p.jsonl"
    j.write_text('{"id": 1, "picture": "a.png", "text": "x"}\n')
    assert main(["analyze", str(bundle), "--input", str(j), "--output", str(tmp_path / "o.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "p.jsonl: no image column" in err and "the columns are: id, picture, text" in err


def test_benchmark_quick(bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    assert main(["benchmark", str(bundle), "--batch-sizes", "1,2", "--iters", "2", "--warmup", "0",
                 "--image-size", "64x48", "--json", str(out), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "model p50" in text and "peak RSS" in text
    rep = json.loads(out.read_text())
    assert set(rep["per_batch"]) == {"1", "2"} and rep["per_batch"]["2"]["e2e_ms"]["p99"] > 0
    assert rep["info"]["backend"] == "onnxruntime"
    assert main(["benchmark", str(bundle), "--batch-sizes", "a,b"]) == 1
    assert "--batch-sizes takes" in capsys.readouterr().err


def test_ctrl_c_leaves_valid_output_then_resumes(bundle: Path, posts: Path, tmp_path: Path, monkeypatch,
                                                 capsys) -> None:
    from sdk.analyzer import Analyzer

    out = tmp_path / "tags.jsonl"
    args = ["analyze", str(bundle), "--input", str(posts), "--output", str(out), "--batch-size", "2", "--no-progress"]
    orig = Analyzer.stream

    def interrupted(self, *a, **k):
        for i, r in enumerate(orig(self, *a, **k)):
            if i == 3:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(Analyzer, "stream", interrupted)
    assert main(args) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err
    assert [r["id"] for r in _lines(out)] == ["p0", "p1", "p2"]  # complete lines only
    monkeypatch.setattr(Analyzer, "stream", orig)
    assert main(args) == 0
    assert [r["id"] for r in _lines(out)] == [f"p{i}" for i in range(7)]
