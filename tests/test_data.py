from __future__ import annotations

import json

import numpy as np
import pytest

from sdk.errors import DataError
from training.data import MISSING, MSED_TASKS, ResumableSampler, read_msed, read_posts
from training.synthetic import generate


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), splits={"train": 12, "dev": 6}, seed=3)


def _write_csv(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _img(path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (10, 20, 30)).save(path)


def test_synthetic_is_deterministic(tmp_path):
    a = generate(tmp_path / "a", splits={"train": 4}, seed=1)
    b = generate(tmp_path / "b", splits={"train": 4}, seed=1)
    assert (a / "train/train.csv").read_text() == (b / "train/train.csv").read_text()
    for k in range(1, 5):
        assert (a / f"train/images/{k}.jpg").read_bytes() == (b / f"train/images/{k}.jpg").read_bytes()


def test_synthetic_texture_only_at_high_resolution():
    from PIL import Image

    from training.synthetic import _texture

    # all three textures have the same mean and vanish (identically) under a 2x antialiased downscale
    small = [np.asarray(Image.fromarray(_texture(k, 56, 56)).resize((28, 28), Image.BICUBIC)) for k in range(3)]
    assert all(np.abs(s[4:-4, 4:-4].astype(int) - small[0][4:-4, 4:-4]).max() <= 1 for s in small)
    assert len({_texture(k, 8, 8).tobytes() for k in range(3)}) == 3


def test_read_msed_layout(syn):
    rec = read_msed(syn, "train")
    assert len(rec) == 12 and not rec.skipped
    ex = rec[4]
    assert ex.image.name == "5.jpg"  # row K (1-based) <-> K.jpg
    rows = (syn / "train/train.csv").read_text().splitlines()
    assert ex.text == rows[5].split(",")[1]
    assert set(ex.labels) == set(MSED_TASKS)


def test_read_msed_multiline_caption_and_label_order(tmp_path):
    _write_csv(tmp_path / "train/train.csv",
               'Title,Caption,Sentiment,Emotion,Desire,Inference Sequence\n'
               't,"line one\nline ""two""",positive,fear,none,S-E-D\n')
    _img(tmp_path / "train/images/1.jpg")
    rec = read_msed(tmp_path, "train")
    assert rec[0].text == 'line one\nline "two"'
    assert rec[0].labels == {"sentiment": 2, "emotion": 5, "desire": 6}


def test_read_msed_errors(tmp_path):
    with pytest.raises(DataError, match=r"dev.csv: not found \(expected MSED layout"):
        read_msed(tmp_path, "dev")
    _write_csv(tmp_path / "train/train.csv",
               "Title,Caption,Sentiment,Emotion,Desire\n"
               "t,a,positive,happiness,none\n"
               "t,b,glad,happiness,none\n"
               "t,c,positive,happiness,none\n"
               "t,d,positive,happiness,none,extra\n")
    _img(tmp_path / "train/images/1.jpg")
    _img(tmp_path / "train/images/2.jpg")
    _img(tmp_path / "train/images/4.jpg")
    with pytest.raises(DataError, match=r"row 2: unknown sentiment label 'glad'; valid labels: negative, neutral"):
        read_msed(tmp_path, "train")
    with pytest.raises(DataError, match=r"row 3: image .*3.jpg not found"):
        read_msed(tmp_path, "train", tasks={"desire": MSED_TASKS["desire"]})
    rec = read_msed(tmp_path, "train", skip_invalid=True)
    assert len(rec) == 1 and len(rec.skipped) == 3
    assert "malformed row" in rec.skipped[2] and "row 4" in rec.skipped[2]
    assert "3 skipped" in rec.report()
    _write_csv(tmp_path / "x/x.csv", "Title,Text\n")
    with pytest.raises(DataError, match=r"x.csv: missing columns 'Caption', 'Sentiment', 'Emotion', 'Desire'; "
                                        r"the columns are: Title, Text"):
        read_msed(tmp_path, "x")
    with pytest.raises(DataError, match="unknown task"):
        read_msed(tmp_path, "train", tasks={"mood": ["a"]})


def test_read_posts_jsonl_and_csv(tmp_path):
    _img(tmp_path / "imgs/a.png")
    rows = [{"image": "imgs/a.png", "text": "hi", "sentiment": "neutral"},
            {"image": "imgs/a.png", "text": "yo", "desire": "family", "emotion": "sad"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    rec = read_posts(tmp_path / "p.jsonl")
    assert rec[0].labels == {"sentiment": 1, "emotion": MISSING, "desire": MISSING}
    assert rec[1].labels == {"sentiment": MISSING, "emotion": 1, "desire": 3}
    assert rec[0].image == tmp_path / "imgs/a.png"
    (tmp_path / "p.csv").write_text('image,text,sentiment\nimgs/a.png,"a, b",positive\n')
    assert read_posts(tmp_path / "p.csv")[0].text == "a, b"


GOOD = '{"image": "a.png", "text": "x", "sentiment": "neutral"}'


@pytest.mark.parametrize("line, match", [
    ('{"image": "nope.png", "text": "x", "sentiment": "neutral"}', r"p.jsonl:line 2: image .*nope.png not found"),
    ('{"image": "a.png", "text": "x", "sentiment": "meh"}',
     r"p.jsonl:line 2: unknown sentiment label 'meh'; valid labels: negative, neutral, positive"),
    ('{"image": "a.png", "text": "x", "sentiment": 1}', r"p.jsonl:line 2: sentiment label must be a string, got 1"),
    ('{"image": "a.png", "text": "x"}', r"p.jsonl:line 2: no label for any of sentiment, emotion, desire"),
    ('{"image": "a.png", "sentiment": "neutral"}', r"p.jsonl:line 2: no text in column 'text'"),
    ('{"image": "a.png", "text": 5, "sentiment": "neutral"}', r"p.jsonl:line 2: text must be a string, got int"),
    ('{"text": "x", "sentiment": "neutral"}', r"p.jsonl:line 2: no image path in column 'image'"),
    ("[1, 2]", r"p.jsonl:line 2: expected a JSON object, got list"),
    ("{oops", r"p.jsonl:line 2: malformed JSON"),
])
def test_read_posts_errors(tmp_path, line, match):
    """Row errors read "{file}:line {k}: {problem}" (sdk.posts); the first object defines the columns, so
    the broken row comes second."""
    _img(tmp_path / "a.png")
    (tmp_path / "p.jsonl").write_text(GOOD + "\n" + line + "\n")
    with pytest.raises(DataError, match=match):
        read_posts(tmp_path / "p.jsonl")
    (tmp_path / "p.jsonl").write_text(GOOD + "\n" + line + "\n" + GOOD + "\n")
    rec = read_posts(tmp_path / "p.jsonl", skip_invalid=True)
    assert len(rec) == 2 and len(rec.skipped) == 1 and rec.skipped[0].startswith(f"{tmp_path / 'p.jsonl'}:line 2: ")


def test_read_posts_columns_come_from_the_first_object(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "p.jsonl").write_text('{"text": "x"}\n' + GOOD + "\n")
    with pytest.raises(DataError, match=r"p.jsonl: no image column \(looked for image, .*\); the columns are: text"):
        read_posts(tmp_path / "p.jsonl", skip_invalid=True)  # a file error: skipping rows cannot help


def test_read_posts_bad_file(tmp_path):
    with pytest.raises(DataError, match="none.jsonl: posts file not found"):
        read_posts(tmp_path / "none.jsonl")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(DataError, match=r"p.txt: unsupported posts file type '.txt'; use .jsonl, .ndjson, .json, .csv, .tsv"):
        read_posts(tmp_path / "p.txt")
    (tmp_path / "e.jsonl").write_text('{"image": "gone.png", "text": "x", "sentiment": "neutral"}\n')
    with pytest.raises(DataError, match=r"e.jsonl: no usable rows \(1 skipped\)"):
        read_posts(tmp_path / "e.jsonl", skip_invalid=True)


def test_resumable_sampler_shards_and_resumes():
    full = list(ResumableSampler(10, seed=5))
    assert sorted(full) == list(range(10))
    s = ResumableSampler(10, seed=5)
    s.set_epoch(0, start=4)
    assert list(s) == full[4:]
    s.set_epoch(1)
    assert list(s) != full
    r0, r1 = (list(ResumableSampler(9, seed=5, rank=r, world_size=2)) for r in (0, 1))
    assert len(r0) == len(r1) == 5 and set(r0) | set(r1) == set(range(9))


def test_dataset_and_loader(syn):
    pytest.importorskip("torch")
    preprocess = pytest.importorskip("sdk.preprocess")
    tok = pytest.importorskip("sdk.tokenizer")
    from training.data import PostDataset, make_loader

    tokenizer = tok.Tokenizer.clip()
    ds = PostDataset(read_msed(syn, "dev"), tokenizer, preprocess.PreprocessConfig(), list(MSED_TASKS))
    it = ds[0]
    assert it["global_pixels"].shape == (224, 224, 3) and str(it["global_pixels"].dtype) == "torch.uint8"
    assert it["canvas_pixels"].shape == (448, 448, 3)
    assert it["input_ids"].shape == (77,)
    g, c = preprocess.preprocess(ds.examples[0].image, preprocess.PreprocessConfig())
    assert np.array_equal(it["canvas_pixels"].numpy(), c)  # the one preprocessing
    batch = next(iter(make_loader(ds, batch_size=4, shuffle=True, seed=0)))
    assert batch["global_pixels"].shape == (4, 224, 224, 3) and batch["labels"].shape == (4, 3)
