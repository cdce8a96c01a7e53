"""Tiny end-to-end pretrain -> fine-tune -> eval on the synthetic set, plus the trainer's parts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("training.model")

from sdk.errors import ConfigError, DataError  # noqa: E402
from training.schedule import warmup_cosine  # noqa: E402
from training.synthetic import generate  # noqa: E402
from training.trainer import TrainOptions  # noqa: E402

TINY = dict(epochs=1, batch_size=4, accum=2, num_workers=0, progress=False, log_every=1)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), splits={"train": 16, "dev": 8}, seed=0)


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_schedule():
    assert warmup_cosine(0, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert all(0 <= warmup_cosine(s, 7, 0.15) <= 1 for s in range(7))
    assert math.isclose(warmup_cosine(0, 10, 0.0), 1.0)


@pytest.mark.parametrize("kw, match", [
    (dict(stage="mim"), "unknown stage 'mim'; valid: pretrain, finetune"),
    (dict(amp="fp8"), "unknown amp mode"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(max_steps=0), "max_steps must be >= 1"),
    (dict(stage="pretrain", feature_cache="x"), "finetune only"),
    (dict(text_dropout=1.0), r"text_dropout must be in \[0, 1\), got 1.0"),
    (dict(stage="pretrain", text_dropout=0.2), "needs the finetune stage"),
    (dict(text_dropout=0.2, text_cache=True, lrs={"text_encoder": 0.0}), "no text cache"),
])
def test_option_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainOptions(**kw).validate()


def test_no_training_data_is_an_error(tmp_path):
    from training.runner import build_model, train

    with pytest.raises(DataError, match="no training data"):
        train(stage="finetune", output=tmp_path / "o", preset="tiny_clip", **TINY)
    with pytest.raises(ConfigError, match="exactly one of --preset"):
        build_model()


def test_pretrain_finetune_eval_end_to_end(syn, tmp_path, capsys):
    from sdk.cli import main
    from training.runner import train

    pre = tmp_path / "pre"
    s = train(stage="pretrain", output=pre, preset="tiny_clip", data=str(syn), seed=0, **TINY)
    assert s["step"] == 2 and (pre / "best/model.safetensors").is_file()
    rows = _lines(pre / "metrics.jsonl")
    assert [r["event"] for r in rows if r["event"] != "train"] == ["start", "eval", "end"]
    train_rows = [r for r in rows if r["event"] == "train"]
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in train_rows)
    assert "dev_loss" in rows[-2]

    ft = tmp_path / "ft"
    s = train(stage="finetune", output=ft, init=str(pre / "best"), data=str(syn), seed=0,
              eval_every=1, **{**TINY, "epochs": 2})
    assert s["step"] == 4
    evals = [r for r in _lines(ft / "metrics.jsonl") if r["event"] == "eval"]
    assert len(evals) == 4 and all(0 <= r["macro_f1"] <= 1 for r in evals)
    assert s["best"] == max(r["macro_f1"] for r in evals)
    assert (ft / "last/training_state/state.pt").is_file() and not (ft / "best/training_state").exists()

    out = tmp_path / "report.json"
    assert main(["eval", str(ft / "best"), "--data", str(syn), "--split", "dev", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "macro-F1" in text and "sentiment" in text and "confusion" in text
    rep = json.loads(out.read_text())
    assert set(rep["tasks"]) == {"sentiment", "emotion", "desire"}
    assert rep["tasks"]["desire"]["n"] == 8


def test_eval_command_errors(tmp_path, syn, capsys):
    from sdk.cli import main

    assert main(["eval", str(tmp_path / "nope"), "--data", str(syn)]) == 1
    assert "not a SyDES checkpoint" in capsys.readouterr().err


def test_finetune_freezes_encoder_and_image_decoder(syn, tmp_path):
    from training.runner import build_model
    from training.trainer import prepare_model_for_stage

    model, _ = build_model(preset="tiny_clip")
    prepare_model_for_stage(model, "finetune", fresh_finetune=True)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert not any(p.requires_grad for p in model.image_decoder.parameters())
    assert any(p.requires_grad for p in model.text_decoder.parameters())


def test_feature_cache_gives_identical_logits_and_verifies_entries(syn, tmp_path, caplog):
    from sdk.preprocess import PreprocessConfig
    from training.data import PostDataset, collate, read_msed
    from training.feature_cache import CachedFeatureDataset, FeatureCache
    from training.runner import build_model
    from training.trainer import batch_logits

    torch.manual_seed(0)
    model, tok = build_model(preset="tiny_clip")
    model.eval()
    rec = read_msed(syn, "dev", limit=4)
    pcfg = PreprocessConfig.from_dict(model.config.preprocess)
    cache = FeatureCache(tmp_path / "cache", model)
    assert cache.fill(rec, pcfg, batch_size=2) == 4 and cache.fill(rec, pcfg) == 0
    plain = PostDataset(rec, tok, pcfg, model.config.task_names)
    cached = CachedFeatureDataset(PostDataset(rec, tok, pcfg, model.config.task_names, with_pixels=False), cache, rec)
    with torch.no_grad():
        a = batch_logits(model, collate([plain[i] for i in range(4)]))
        b = batch_logits(model, collate([cached[i] for i in range(4)]))
    for t in a:
        assert torch.equal(a[t], b[t]), t
    assert "image_encoder.vision_model.embeddings.patch_embedding.weight" in model.state_dict()  # swapped back

    # corrupt one entry, truncate another: both are detected and recomputed, never trusted
    p0, p1 = cache.path(cache.key(rec[0].image)), cache.path(cache.key(rec[1].image))
    good = p0.read_bytes()
    raw = bytearray(good)
    raw[-5] ^= 0xFF
    p0.write_bytes(bytes(raw))
    p1.write_bytes(good[:100])
    assert cache.read(cache.key(rec[0].image)) is None and "checksum mismatch" in caplog.text
    assert cache.read(cache.key(rec[1].image)) is None
    f0 = cached[0]["image_features"]
    assert cache.recomputed == 1 and torch.equal(f0, FeatureCache(tmp_path / "cache", model).get(rec[0]))
    assert cache.fill(rec, pcfg) == 1  # the truncated one

    # other encoder weights -> other keys (stale entries are never used)
    with torch.no_grad():
        next(model.image_encoder.parameters()).add_(1.0)
    assert FeatureCache(tmp_path / "cache", model).key(rec[0].image) != cache.key(rec[0].image)


def test_drop_text_gives_the_empty_text(syn):
    """A dropped post's logits are those of the same post with the text "" (the image-only ablation's input);
    the other posts and the input batch are untouched."""
    from dataclasses import replace

    from sdk.preprocess import PreprocessConfig
    from training.data import PostDataset, collate, read_msed
    from training.runner import build_model
    from training.trainer import batch_logits, drop_text

    torch.manual_seed(0)
    model, tok = build_model(preset="tiny_vit_bert")
    model.eval()
    rec = read_msed(syn, "dev", limit=6)
    pcfg = PreprocessConfig.from_dict(model.config.preprocess)
    ds = PostDataset(rec, tok, pcfg, model.config.task_names)
    batch = collate([ds[i] for i in range(6)], trim=True)
    before = batch["input_ids"].clone()
    gen = torch.Generator().manual_seed(1)
    dropped = drop_text(batch, 0.5, gen)
    drop = torch.rand(6, generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < int(drop.sum()) < 6 and torch.equal(batch["input_ids"], before)
    assert torch.equal(dropped["attention_mask"].sum(1)[drop], torch.full((int(drop.sum()),), 2))
    empty = PostDataset(type(rec)([replace(e, text="") for e in rec], [], "empty"), tok, pcfg, model.config.task_names)
    empty_batch = collate([empty[i] for i in range(6)])
    assert torch.equal(dropped["input_ids"][drop, :2], empty_batch["input_ids"][drop, :2])
    with torch.no_grad():
        got, full, none = (batch_logits(model, b) for b in (dropped, batch, empty_batch))
    for t in got:
        assert torch.allclose(got[t][drop], none[t][drop], atol=1e-5, rtol=0), t
        assert torch.allclose(got[t][~drop], full[t][~drop], atol=1e-5, rtol=0), t
    assert drop_text(batch, 0.0) is batch
    with pytest.raises(ConfigError, match="needs token ids, not cached text-encoder outputs"):
        drop_text({**batch, "text_hidden": torch.zeros(6, 2, 4)}, 0.5)


@pytest.mark.parametrize("preset", ["tiny_clip", "tiny_vit_bert"])
def test_trimmed_padding_and_text_cache_keep_logits(syn, preset):
    """Trailing pads never reach real positions: trimmed batches and replayed frozen text-encoder outputs
    give the logits of the full-length path (within float tolerance)."""
    from sdk.preprocess import PreprocessConfig
    from training.data import PostDataset, collate, read_msed
    from training.feature_cache import CachedTextDataset, encode_texts
    from training.runner import build_model
    from training.trainer import batch_logits

    torch.manual_seed(0)
    model, tok = build_model(preset=preset)
    model.eval()
    rec = read_msed(syn, "dev", limit=4)
    pcfg = PreprocessConfig.from_dict(model.config.preprocess)
    ds = PostDataset(rec, tok, pcfg, model.config.task_names)
    full = collate([ds[i] for i in range(4)])
    trimmed = collate([ds[i] for i in range(4)], trim=True)
    assert trimmed["input_ids"].shape[1] < full["input_ids"].shape[1]
    assert trimmed["input_ids"].shape[1] == int(full["attention_mask"].sum(1).max())
    texted = CachedTextDataset(ds, encode_texts(model, ds.ids, ds.mask, batch_size=3))
    replayed = collate([texted[i] for i in range(4)], trim=True)
    with torch.no_grad():
        a, b, c = (batch_logits(model, x) for x in (full, trimmed, replayed))
    for t in a:
        assert torch.allclose(a[t], b[t], atol=1e-5, rtol=0), (t, (a[t] - b[t]).abs().max())
        assert torch.allclose(a[t], c[t], atol=1e-5, rtol=0), (t, (a[t] - c[t]).abs().max())
    assert "text_encoder" in dict(model.named_children()) and not isinstance(model.text_encoder, torch.nn.Identity)


def test_pretrain_with_cached_global_view_matches_uncached(syn, tmp_path):
    from sdk.preprocess import PreprocessConfig
    from training.data import PostDataset, collate, read_msed
    from training.feature_cache import CachedFeatureDataset, FeatureCache
    from training.runner import build_model
    from training.trainer import batch_losses

    torch.manual_seed(0)
    model, tok = build_model(preset="tiny_clip")
    model.eval()
    rec = read_msed(syn, "dev", limit=4)
    pcfg = PreprocessConfig.from_dict(model.config.preprocess)
    cache = FeatureCache(tmp_path / "cache", model)
    cache.fill(rec, pcfg)
    plain = PostDataset(rec, tok, pcfg, model.config.task_names)
    cached = CachedFeatureDataset(PostDataset(rec, tok, pcfg, model.config.task_names), cache, rec)
    with torch.no_grad():
        torch.manual_seed(1)
        a = batch_losses(model, collate([plain[i] for i in range(4)], trim=True), "pretrain")
        torch.manual_seed(1)
        b = batch_losses(model, collate([cached[i] for i in range(4)], trim=True), "pretrain")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_cache_option_errors():
    with pytest.raises(ConfigError, match="frozen text encoder"):
        TrainOptions(text_cache=True).validate()
    with pytest.raises(ConfigError, match="image_encoder learning rate of 0"):
        TrainOptions(stage="pretrain", feature_cache="/tmp/x").validate()
    TrainOptions(stage="pretrain", feature_cache="/tmp/x", lrs={"image_encoder": 0.0}).validate()


@pytest.mark.parametrize("which", ["global", "none"])
def test_reduced_ablation_memories_are_exact(which):
    """The report's global-only / text-only ablations run on 1-view memories; they must give the logits and
    latents of the 5-view memories they stand for (tiles = copies of the global view; all zeros)."""
    from training.feature_cache import global_view_only, no_image_features
    from training.model import SyDES
    from training.presets import tiny_clip

    torch.manual_seed(0)
    model = SyDES(tiny_clip()).eval()
    b, s = 2, model.config.preprocess["global_size"]
    with torch.no_grad():
        f = model.image_encoder(torch.randn(b * 5, 3, s, s)).reshape(b, 5, -1, model.ln1_post.normalized_shape[0])
    full = f[:, :1].expand_as(f).clone() if which == "global" else torch.zeros_like(f)
    short = torch.stack([(global_view_only if which == "global" else no_image_features)(x) for x in f])
    assert short.shape[1] == 1 and short.shape[2] == (f.shape[2] if which == "global" else 2)
    ids = torch.randint(1, 400, (b, 9))
    ids[:, -1] = 49407
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    outs = []
    for feats in (full, short):  # cached features go in through the model's seam
        with torch.no_grad():
            outs.append(model.forward_train(ids, mask, stage="finetune", image_features=feats))
    for t in outs[0]["logits"]:
        torch.testing.assert_close(outs[1]["logits"][t], outs[0]["logits"][t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1]["img_latents"], outs[0]["img_latents"], atol=1e-6, rtol=1e-6)


def test_train_records_the_text_fields(syn, tmp_path, monkeypatch):
    """--text-fields: the model reads Title + Caption and its checkpoint says so; a fine-tune from it keeps
    them (--text-separator alone changes the separator); the CLI passes both."""
    import training.runner
    from sdk.cli import main
    from sdk.text_fields import TextFields
    from training.runner import train

    out = tmp_path / "tc"
    train(stage="finetune", output=out, preset="tiny_vit_bert", data=str(syn), text_fields="Title,Caption",
          **TINY)
    tok = json.loads((out / "best" / "config.json").read_text())["tokenizer"]
    assert (tok["text_fields"], tok["text_separator"]) == (["Title", "Caption"], " ")
    import training.trainer

    seen = []

    class FakeTrainer:  # what the Trainer would train and save
        def __init__(self, model, train_rec, dev_rec, *a, **kw):
            seen.append((model.config.tokenizer.text_recipe(), train_rec[0].text))

        def fit(self):
            return {}

    monkeypatch.setattr(training.trainer, "Trainer", FakeTrainer)
    train(stage="finetune", output=tmp_path / "again", init=str(out / "best"), data=str(syn), text_separator=" | ",
          **TINY)
    assert seen[0][0] == TextFields(("Title", "Caption"), " | ") and seen[0][1].startswith("synthetic post 1 | ")
    kw = []
    monkeypatch.setattr(training.runner, "train", lambda **k: kw.append(k) or {})
    assert main(["train", "finetune", "--preset", "tiny_vit_bert", "--data", str(syn), "--output", str(tmp_path / "x"),
                 "--text-fields", "Title,Caption", "--text-separator", ". "]) == 0
    assert main(["train", "pretrain", "--preset", "tiny_vit_bert", "--data", str(syn), "--output", str(tmp_path / "y")]) == 0
    assert [(k["text_fields"], k["text_separator"]) for k in kw] == [("Title,Caption", ". "), (None, None)]
