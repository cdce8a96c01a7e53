"""`sydes analyze --num-shards N --shard-index I` and the resume scan: deterministic shards whose union is
the unsharded output, a completion marker, resume after a torn line, a changed input refused, and the
scan's memory flat in rows."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import build_fake_bundle
from PIL import Image

from sdk.cli import main
from sdk.commands.analyze_output import Shard, marker_path, scan_output
from sdk.errors import ConfigError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("b") / "fake.sydes")


@pytest.fixture()
def posts(tmp_path: Path) -> Path:
    """10 rows; row 4's image is missing, row 7 has no text, row 9 is not JSON."""
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(1, 11):
        if i != 4:
            a = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / "images" / f"{i}.png")
        lines.append("{not json" if i == 9 else json.dumps(
            {"id": f"p{i}", "image": f"images/{i}.png", "text": "" if i == 7 else f"happy dog {i}"}))
    p = tmp_path / "posts.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def _run(bundle: Path, posts: Path, out: Path, *extra: str) -> int:
    return main(["analyze", str(bundle), "--input", str(posts), "--output", str(out), "--batch-size", "3",
                 "--no-progress", *extra])


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_shards_partition_the_unsharded_output(bundle: Path, posts: Path, tmp_path: Path) -> None:
    assert _run(bundle, posts, tmp_path / "all.jsonl") == 0
    whole = {r["row"]: r for r in _lines(tmp_path / "all.jsonl")}
    assert len(whole) == 10 and whole[9]["error_type"] == "DataError" and whole[9]["id"] == "row-9"
    assert marker_path(tmp_path / "all.jsonl").is_file()
    got: dict[int, dict] = {}
    for i in range(3):
        assert _run(bundle, posts, tmp_path / "tags.jsonl", "--num-shards", "3", "--shard-index", str(i)) == 0
        shard_out = tmp_path / f"tags-{i:05d}-of-00003.jsonl"
        rows = _lines(shard_out)
        assert [r["row"] for r in rows] == [n for n in range(1, 11) if (n - 1) % 3 == i]  # row mod N, in order
        assert json.loads(marker_path(shard_out).read_text())["rows"] == len(rows)
        got.update({r["row"]: r for r in rows})
    assert got.keys() == whole.keys()
    for n, r in whole.items():
        assert got[n]["ok"] == r["ok"] and got[n]["error"] == r["error"] and got[n]["id"] == r["id"]
        if r["ok"]:
            a = np.array([p for t in r["tasks"].values() for p in t["probs"].values()])
            b = np.array([p for t in got[n]["tasks"].values() for p in t["probs"].values()])
            assert np.abs(a - b).max() < 1e-4  # other batch neighbours: batch kernels differ at ~1e-7


def test_shard_resumes_after_a_torn_line_and_marker_short_circuits(bundle: Path, posts: Path, tmp_path: Path,
                                                                   capsys) -> None:
    args = ("--num-shards", "2", "--shard-index", "1")
    assert _run(bundle, posts, tmp_path / "t.jsonl", *args) == 0
    out = tmp_path / "t-00001-of-00002.jsonl"
    full = out.read_text()
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:17])  # 2 rows + a torn third, as a crash leaves it
    capsys.readouterr()
    assert _run(bundle, posts, tmp_path / "t.jsonl", *args) == 0
    assert "3 posts analysed (0 failed), 2 already in" in capsys.readouterr().err
    again = _lines(out)
    assert [r["row"] for r in again] == [2, 4, 6, 8, 10]
    assert [r["ok"] for r in again] == [True, False, True, True, True]
    assert _run(bundle, posts, tmp_path / "t.jsonl", *args) == 0
    assert "(complete:" in capsys.readouterr().err  # the marker: no scan, nothing redone


def test_changed_input_is_refused(bundle: Path, posts: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.jsonl"
    assert _run(bundle, posts, out) == 0
    marker_path(out).unlink()
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]))
    rows = posts.read_text().splitlines(keepends=True)
    posts.write_text(rows[0] + rows[2] + rows[1] + "".join(rows[3:]))  # rows 2 and 3 swapped
    assert _run(bundle, posts, out) == 1
    err = capsys.readouterr().err
    assert "row 3 has id 'p3' but" in err and "the input changed" in err
    assert len(_lines(out)) == 3


def test_bad_shard_options(bundle: Path, posts: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="--num-shards must be >= 1"):
        Shard(0, 0)
    with pytest.raises(ConfigError, match=r"--shard-index must be in 0\.\.2"):
        Shard(3, 3)
    assert _run(bundle, posts, tmp_path / "t.jsonl", "--num-shards", "2", "--shard-index", "2") == 1
    assert "--shard-index must be in 0..1" in capsys.readouterr().err


def test_scan_checks_every_line_is_the_expected_row(tmp_path: Path) -> None:
    p = tmp_path / "o.jsonl"
    p.write_text('{"row": 1, "ok": true}\n{"row": 3, "ok": true}\n{"row": 5, "ok": true}\n')
    assert scan_output(p, Shard(2, 0)).done == 3 and scan_output(p, Shard(2, 0)).last == {"row": 5, "ok": True}
    with pytest.raises(Exception, match=r"line 2 is not a result line \(expected row 2 here"):
        scan_output(p)  # unsharded, row 2 is missing: a gap is never skipped over
    p.write_text('{"row": 1, "ok": true}\n{"row": 2, "ok": tr\n')  # torn, newline-terminated, last: dropped
    assert scan_output(p).done == 1 and p.read_text() == '{"row": 1, "ok": true}\n'


def _write_rows(path: Path, n: int) -> None:
    tail = ', "ok": true, "tasks": {"sentiment": {"label": "positive", "score": 0.9}}, "error": null, ' \
           '"error_type": null}\n'
    with open(path, "w") as f:
        for start in range(0, n, 10_000):
            f.write("".join(f'{{"row": {k}, "id": "p{k}"' + tail for k in range(start + 1, min(n, start + 10_000) + 1)))


def test_resume_scan_memory_is_flat_in_rows(tmp_path: Path) -> None:
    peaks = {}
    for n in (30_000, 300_000):  # both many 1 MiB read chunks
        p = tmp_path / f"{n}.jsonl"
        _write_rows(p, n)
        tracemalloc.start()
        rp = scan_output(p)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert rp.done == n and rp.last["id"] == f"p{n}"
    # a chunk, its copy and its lines (~5 MB), whatever the row count; 10x the rows, not 10x the memory
    assert peaks[300_000] < 8 * 2**20 and peaks[300_000] < 1.2 * peaks[30_000]


def test_scan_across_read_chunks(tmp_path: Path, monkeypatch) -> None:
    import sdk.commands.analyze_output as ao

    monkeypatch.setattr(ao, "CHUNK", 7)  # every line spans several reads
    p = tmp_path / "o.jsonl"
    full = "".join(f'{{"row": {k}, "id": "p{k}", "ok": true}}\n' for k in range(1, 30))
    p.write_text(full + '{"row": 30, "id": "p3')
    rp = scan_output(p)
    assert rp.done == 29 and rp.last == {"row": 29, "id": "p29", "ok": True} and p.read_text() == full
