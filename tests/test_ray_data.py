"""Ray Data: SydesPredictor on the three batch formats, and `sydes analyze --engine ray` on a local 2-CPU
Ray (one ray.init for the module): the single-process rows exactly, broken rows with their errors, and a
killed actor's batch redone by Ray with nothing lost or duplicated. Deselect with `-m "not ray"`."""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import build_fake_bundle
from PIL import Image

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

from sdk.cli import main  # noqa: E402
from sdk.errors import ConfigError, DataError, InputTypeError  # noqa: E402
from sdk.integrations.ray_data import SydesPredictor  # noqa: E402 - imports no ray, no pyarrow

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("b") / "fake.sydes")


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# --- the predictor, no Ray needed ---------------------------------------------------------------------
def test_predictor_formats_and_broken_rows(bundle: Path, tmp_path: Path) -> None:
    from sdk import Analyzer

    (tmp_path / "3.png").write_bytes(_png(3))
    df = pd.DataFrame({"id": ["a", "b", "c", "d", "e"],
                       "image": [_png(1), b"not an image", _png(2), "3.png", _png(4)],
                       "text": ["happy dog", "sad cat", "", "a party", "the beach"],
                       "error": [None, None, None, None, "row 5 is not valid JSON"],
                       "error_type": [None, None, None, None, "DataError"]})
    pred = SydesPredictor(bundle, image_root=tmp_path, threads=1, batch_size=2)
    out = pred(df)
    rows = out.to_pylist()
    assert out.column_names == ["id", "ok", "tasks", "error", "error_type"]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d", "e"]  # one row per input row, in order
    assert [r["ok"] for r in rows] == [True, False, False, True, False]
    assert rows[1]["error_type"] == "ImageDecodeError" and rows[2]["error_type"] == "TextError"
    assert rows[4] == {"id": "e", "ok": False, "tasks": None, "error": "row 5 is not valid JSON",
                       "error_type": "DataError"}
    with Analyzer(bundle, device="cpu", threads=1) as az:
        want = az.analyze(tmp_path / "3.png", "a party").to_dict()
    assert want["tasks"]["emotion"]["label"] == rows[3]["tasks"]["emotion"]["label"]
    assert abs(want["tasks"]["emotion"]["score"] - rows[3]["tasks"]["emotion"]["score"]) < 1e-4
    # the same rows from a pyarrow.Table and from a dict of numpy arrays (arrow holds one type per
    # column, so without the path row: pandas' mixed bytes / str column would become binary there)
    same = df.drop(index=3).reset_index(drop=True)
    want_rows = rows[:3] + rows[4:]
    assert pred(pa.Table.from_pandas(same)).to_pylist() == want_rows
    assert pred({k: same[k].to_numpy() for k in same}).to_pylist() == want_rows
    # a batch whose rows all fail keeps the explicit schema (blocks must concatenate)
    bad = pred(pd.DataFrame({"image": [b"x"], "text": ["y"]}))
    assert bad.schema.field("tasks").type == out.schema.field("tasks").type
    js = SydesPredictor(bundle, threads=1, tasks_format="json")(df.iloc[:1])
    assert json.loads(js.column("tasks")[0].as_py()) == rows[0]["tasks"]


def test_predictor_decoded_images_and_errors(bundle: Path) -> None:
    pred = SydesPredictor(bundle, threads=1)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # as read_images gives
    out = pred({"image": imgs, "text": np.array(["a dog", "a cat", "a car"])}).to_pylist()
    assert [r["ok"] for r in out] == [True, True, True]
    with pytest.raises(DataError, match="the batch has no 'caption' column"):
        SydesPredictor(bundle, text_column="caption", threads=1)(pd.DataFrame({"image": [b""], "text": ["x"]}))
    with pytest.raises(InputTypeError, match="a batch must be a pandas.DataFrame"):
        pred([1, 2])
    with pytest.raises(ConfigError, match="tasks_format must be one of struct, json"):
        SydesPredictor(bundle, tasks_format="xml")


# --- a local 2-CPU Ray ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    # local workers import this checkout's sdk and the tests' helper module (the dying predictor below)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"), old) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def posts(tmp_path_factory) -> Path:
    """24 rows; row 4's image is missing, row 7 has no text, row 9 is not JSON, row 12 is not an image."""
    d = tmp_path_factory.mktemp("posts")
    (d / "images").mkdir()
    lines = []
    for i in range(1, 25):
        if i != 4:
            (d / "images" / f"{i}.png").write_bytes(b"junk" if i == 12 else _png(i))
        lines.append("{not json" if i == 9 else json.dumps(
            {"id": f"p{i}", "image": f"images/{i}.png", "text": "" if i == 7 else f"happy dog {i}"}))
    (d / "posts.jsonl").write_text("\n".join(lines) + "\n")
    return d / "posts.jsonl"


def _rows(folder: Path) -> list[dict]:
    return [json.loads(x) for p in sorted(folder.glob("*.jsonl")) for x in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def single(bundle: Path, posts: Path, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("single") / "tags.jsonl"
    assert main(["analyze", str(bundle), "--input", str(posts), "--output", str(out), "--batch-size", "4",
                 "--threads", "1", "--no-progress"]) == 0
    return [json.loads(x) for x in out.read_text().splitlines()]


def _same(got: list[dict], want: list[dict]) -> None:
    got = sorted(got, key=lambda r: r["row"])
    assert [r["row"] for r in got] == [r["row"] for r in want]  # each row exactly once
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k != "tasks"} == {k: v for k, v in w.items() if k != "tasks"}
        assert (g["tasks"] is None) == (w["tasks"] is None)
        if w["tasks"] is not None:
            for t, tw in w["tasks"].items():
                assert list(g["tasks"][t]["probs"]) == list(tw["probs"]) and g["tasks"][t]["label"] == tw["label"]
                # other batch neighbours than the single-process run: batch kernels differ at ~1e-7
                assert np.allclose(list(g["tasks"][t]["probs"].values()), list(tw["probs"].values()), atol=1e-5)


def test_engine_ray_matches_single_process(ray_local, bundle: Path, posts: Path, single: list[dict],
                                           tmp_path: Path, capsys) -> None:
    out = tmp_path / "ray-out"
    args = ["analyze", str(bundle), "--input", str(posts), "--output", str(out), "--engine", "ray",
            "--actors", "2", "--batch-size", "4", "--threads", "1", "--no-progress"]
    assert main(args) == 0
    assert "24 posts analysed (4 failed) by 2 Ray actors" in capsys.readouterr().err
    got = _rows(out)
    _same(got, single)
    bad = {r["row"]: r["error_type"] for r in got if not r["ok"]}
    assert bad == {4: "ImageDecodeError", 7: "TextError", 9: "DataError", 12: "ImageDecodeError"}
    assert json.loads((out / "_SUCCESS").read_text())["rows"] == 24
    assert main(args) == 1  # a finished run is not overwritten
    assert "already holds a finished Ray run" in capsys.readouterr().err


class DyingPredictor(SydesPredictor):
    """Kills its actor process (os._exit) on the first batch any actor gets, once per test (an O_EXCL
    marker file beside the bundle); Ray restarts the actor and retries the batch. Workers import it from
    this module (tests/ is on their PYTHONPATH)."""

    def __call__(self, batch):
        marker = Path(self.analyzer.bundle.path).parent / "killed-once"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only the first caller dies
        except FileExistsError:
            return super().__call__(batch)
        os.close(fd)
        os._exit(1)


def test_killed_actor_work_is_redone_once(ray_local, posts: Path, single: list[dict],
                                          tmp_path: Path) -> None:
    from sdk.commands.analyze import plan_input
    from sdk.commands.analyze_ray import RayJob, run_job

    bundle = build_fake_bundle(tmp_path / "b" / "fake.sydes")  # same weights (seed 0), its own marker folder
    args = argparse.Namespace(input=posts, id_column=None, text_column=None, image_column=None,
                              image_pattern=None, image_root=None)
    info = run_job(plan_input(args), RayJob(bundle=str(bundle), output=tmp_path / "out", actors=2,
                                            batch_size=4, threads=1), predictor=DyingPredictor)
    assert (bundle.parent / "killed-once").is_file()  # an actor did die
    assert info["rows"] == 24
    _same(_rows(tmp_path / "out"), single)  # nothing lost, nothing duplicated, same answers


def test_importing_the_integration_pulls_in_no_engine() -> None:
    import subprocess
    import sys

    code = ("import sys, sdk, sdk.integrations.ray_data, sdk.commands.analyze; "
            "bad = [m for m in ('ray', 'pyarrow', 'pandas', 'torch') if m in sys.modules]; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_engine_ray_option_errors(bundle: Path, posts: Path, tmp_path: Path, capsys) -> None:
    """Each is refused before Ray starts (no ray.init here)."""
    base = ["analyze", str(bundle), "--input", str(posts), "--engine", "ray", "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "o"), "--num-shards", "2"]) == 1
    assert "--num-shards is for --engine process" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "o"), "--actors", "0"]) == 1
    assert "--actors must be >= 1, got 0" in capsys.readouterr().err
    (tmp_path / "f.jsonl").write_text("")
    assert main([*base, "--output", str(tmp_path / "f.jsonl")]) == 1
    assert "is a file; with --engine ray it is a folder" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "x_000000.jsonl").write_text("{}\n")
    assert main([*base, "--output", str(tmp_path / "half")]) == 1
    assert "part files of an unfinished run" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a usage error that lists the engines
        main([*base, "--output", str(tmp_path / "o"), "--engine", "spark"])
    err = capsys.readouterr().err
    assert "invalid choice: 'spark'" in err and "process" in err and "ray" in err
