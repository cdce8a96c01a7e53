"""The SyDES torch model: config, presets, reference key layout, inference semantics, losses, checkpoints."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from torch import nn  # noqa: E402

from sdk.errors import CheckpointError, ConfigError  # noqa: E402
from training import presets  # noqa: E402
from training.config import MSED_TASKS, SydesConfig  # noqa: E402
from training.model import SyDES  # noqa: E402

REF_KEYS = Path(__file__).resolve().parents[2] / "shared" / "sydes-reference-keys.tsv"
S = 64  # tiny view size used by most tests (the canvas is 2S)

warnings.filterwarnings("ignore", message=".*must be `None` or an integer within the vocabulary.*")


def tiny(kind: str = "clip", tasks=presets.ALL_TASKS, **kw) -> SyDES:
    torch.manual_seed(0)
    make = presets.tiny_clip if kind == "clip" else presets.tiny_vit_bert
    extra = {"vision_kind": kind} if kind in ("vit", "dinov2") else {}
    cfg = make(tasks, image_size=S, patch_size=16, vocab_size=100, **extra, **kw)
    return SyDES(cfg).eval()


def inputs(b: int = 2, length: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 7:] = 0
    gp = torch.randint(0, 256, (b, S, S, 3), dtype=torch.uint8, generator=g)
    cp = torch.randint(0, 256, (b, 2 * S, 2 * S, 3), dtype=torch.uint8, generator=g)
    return ids, mask, gp, cp


# ---- config and presets ---------------------------------------------------------------------------
def test_config_json_round_trip():
    for cfg in (presets.reference(), presets.edge(), presets.tiny_clip(), presets.tiny_vit_bert()):
        again = SydesConfig.from_json(cfg.to_json())
        assert again == cfg
        assert json.loads(cfg.to_json())["tasks"] == cfg.tasks


def test_presets_sizes_and_task_order():
    ref = presets.reference()
    assert list(ref.tasks) == ["sentiment"] and ref.num_patches == 196
    assert ref.vision.config["hidden_act"] == "quick_gelu" and ref.decoder.width == 768
    edge = presets.edge()
    assert list(edge.tasks) == ["sentiment", "emotion", "desire"]
    assert edge.num_patches == 256 and edge.vision.kind == "dinov2" and edge.text.kind == "bert"
    assert edge.preprocess["mean"] == [0.485, 0.456, 0.406] and edge.preprocess["pad_rgb"] == [123, 116, 103]
    assert ref.preprocess["pad_rgb"] == [122, 116, 104]
    for t, labels in MSED_TASKS.items():
        assert presets.edge((t,)).tasks == {t: list(labels)}
    assert presets.reference(("desire", "sentiment")).task_names == ["desire", "sentiment"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["decoder"].update(width=48), "decoder width .* must equal the vision width"),
        (lambda d: d["tasks"].update(mood=["a", "b"]), "unknown task 'mood'; valid tasks: sentiment, emotion, desire"),
        (lambda d: d["vision"].update(kind="resnet"), "unknown vision kind 'resnet'"),
        (lambda d: d["tokenizer"].update(kind="wordpiece"), "needs tokenizer kind 'clip'"),
        (lambda d: d.update(colour="red"), "unknown SyDES config fields: colour"),
        (lambda d: d.pop("tasks"), "lacks the field 'tasks'"),
        (lambda d: d["preprocess"].update(canvas_size=400), "preprocess sizes"),
        (lambda d: d.update(latent_dim=16), "latent_dim"),
        (lambda d: d.update(version=9), "config version 9"),
        (lambda d: d["decoder"].update(depth=3), "invalid SyDES config"),
        (lambda d: d["preprocess"].update(std=[0.2, 0.0, 0.2]), r"preprocess\.std must be > 0"),
    ],
)
def test_bad_configs_raise(mutate, match):
    d = presets.tiny_clip().to_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=match):
        SydesConfig.from_dict(d)


def test_bad_preset_and_task_names():
    with pytest.raises(ConfigError, match="unknown preset 'huge'; valid presets: reference, edge"):
        presets.get_preset("huge")
    with pytest.raises(ConfigError, match="unknown task 'joy'; valid tasks: sentiment, emotion, desire"):
        presets.edge(("joy",))
    with pytest.raises(ConfigError, match="not valid JSON"):
        SydesConfig.from_json("{")


# ---- reference key layout ---------------------------------------------------------------------------
@pytest.mark.skipif(not REF_KEYS.is_file(), reason=f"{REF_KEYS} not found")
def test_reference_state_dict_maps_one_to_one():
    with torch.device("meta"):
        model = SyDES(presets.reference())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = {}
    for line in REF_KEYS.read_text().splitlines()[1:]:
        key, shape = line.split("\t")[:2]
        key = key.removeprefix("base_model.")
        if key.startswith(("proj1.", "proj2.")):
            key = "heads.sentiment." + key
        ref[key] = tuple(json.loads(shape))
    assert len(ref) == 887
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert {k: (ref[k], ours[k]) for k in ref if ref[k] != ours[k]} == {}


def test_edge_structure_on_meta_device():
    with torch.device("meta"):
        model = SyDES(presets.edge())
    sd = model.state_dict()
    # the heads see [decoder pooled 384, global-view summary 384] (edge's image_summary)
    assert sd["image_summary.1.weight"].shape == (384, 768)
    assert sd["heads.desire.proj1.mlp.0.weight"].shape == (768, 768)
    assert sd["heads.desire.proj2.mlp.3.weight"].shape == (7, 384)
    with torch.device("meta"):
        plain = SyDES(presets.edge(image_summary=False)).state_dict()
    assert plain["heads.desire.proj2.mlp.3.weight"].shape == (7, 192) and "image_summary.1.weight" not in plain
    assert sd["image_encoder.vision_model.embeddings.position_embeddings"].shape == (1, 257, 384)
    assert sd["text_decoder.text_projection"].shape == (384, 384)
    assert len(model.text_decoder.resblocks) == 4


# ---- inference semantics ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["clip", "vit", "dinov2"])
def test_shapes_and_both_input_forms_agree(kind):
    model = tiny(kind)
    ids, mask, gp, cp = inputs()
    with torch.no_grad():
        a = model(ids, mask, global_pixels=gp, canvas_pixels=cp)
        g, t = model.tiler(gp, cp)
        b = model(ids, mask, global_view=g, tiles=t)
        probs = model.forward_probs(ids, mask, global_view=g, tiles=t)
    assert list(a) == ["sentiment", "emotion", "desire"]
    assert [tuple(v.shape) for v in a.values()] == [(2, 3), (2, 6), (2, 7)]
    for k in a:
        assert torch.equal(a[k], b[k])
        torch.testing.assert_close(probs[k], torch.softmax(a[k], -1))
    assert g.shape == (2, 3, S, S) and t.shape == (2, 4, 3, S, S)


def test_single_task_model():
    model = tiny("clip", tasks=("emotion",))
    ids, mask, gp, cp = inputs()
    with torch.no_grad():
        out = model(ids, mask, global_pixels=gp, canvas_pixels=cp)
    assert list(out) == ["emotion"] and out["emotion"].shape == (2, 6)


def test_forward_needs_one_input_form():
    model = tiny()
    ids, mask, gp, cp = inputs()
    with pytest.raises(ConfigError, match="pass either global_pixels= and canvas_pixels="):
        model(ids, mask, global_pixels=gp)
    g, t = model.tiler(gp, cp)
    with pytest.raises(ConfigError, match="pass either"):
        model(ids, mask, global_pixels=gp, canvas_pixels=cp, global_view=g, tiles=t)


def test_tiler_matches_host_normalise():
    from sdk.preprocess import PreprocessConfig, normalise

    model = tiny()
    _, _, gp, cp = inputs()
    g, t = model.tiler(gp, cp)
    pcfg = PreprocessConfig.from_dict(model.config.preprocess)
    c = cp.numpy()
    # bit-identical to the runtime's host-side normalisation (same float32 ops in the same order)
    np.testing.assert_array_equal(g.numpy(), normalise(gp.numpy(), pcfg))
    for i in range(2):
        quads = [c[i, :S, :S], c[i, :S, S:], c[i, S:, :S], c[i, S:, S:]]  # TL, TR, BL, BR
        for k, q in enumerate(quads):
            np.testing.assert_array_equal(t[i, k].numpy(), normalise(q, pcfg)[0])


def test_eos_removal_semantics():
    model = tiny()
    b, length, d = 3, 6, model.config.text.hidden_size
    hidden = torch.arange(b * length * d, dtype=torch.float32).view(b, length, d)
    model.text_encoder.forward = lambda ids, mask: hidden  # isolate the gather from the encoder
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    cls, tokens, new_mask = model.encode_text(torch.zeros(b, length, dtype=torch.long), mask)
    eos = [2, 5, 0]
    for i, e in enumerate(eos):
        assert torch.equal(cls[i], hidden[i, e])
        keep = [j for j in range(length) if j != e]
        assert torch.equal(tokens[i], hidden[i, keep])
    assert new_mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]


def test_bert_text_cls_is_sep_position():
    model = tiny("vit")
    ids = torch.tensor([[91, 7, 8, 92, 0, 0]])  # [CLS] a b [SEP] pad pad (vocab 100)
    mask = (ids != 0).long()
    hidden = model.text_encoder(ids, mask)
    cls, tokens, new_mask = model.encode_text(ids, mask)
    assert torch.equal(cls[0], hidden[0, 3])  # [SEP]
    assert new_mask.tolist() == [[1, 1, 1, 0, 0]]
    assert torch.equal(tokens[0, :3], hidden[0, :3])


def test_decoder_is_causal():
    model = tiny()
    torch.manual_seed(1)
    memory = torch.randn(1, 5 * model.config.num_patches, 32)
    text = torch.randn(1, 8, 32)
    text2 = text.clone()
    text2[0, 5:] += 3.0
    with torch.no_grad():
        a, b = model.decode(memory, text), model.decode(memory, text2)
    torch.testing.assert_close(a[0, :5], b[0, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(a[0, 5:], b[0, 5:])


def test_trailing_padding_does_not_change_logits():
    model = tiny()
    ids, mask, gp, cp = inputs()
    with torch.no_grad():
        a = model(ids, mask, global_pixels=gp, canvas_pixels=cp)
        pad = torch.zeros(2, 5, dtype=torch.long)
        b = model(torch.cat([ids, pad], 1), torch.cat([mask, pad], 1), global_pixels=gp, canvas_pixels=cp)
    for k in a:
        torch.testing.assert_close(a[k][1], b[k][1], rtol=0, atol=1e-5)  # row 1 is padded already


def _reference_semantics_logits(model: SyDES, ids, mask, g, t) -> torch.Tensor:
    """An independent re-statement of the reference's inference with torch's own modules:
    nn.MultiheadAttention with -inf additive causal mask, boolean-index EOS removal, separate
    global/tile encoder passes. Shares only the weights with `model`."""

    def mha(attn, width, heads):
        m = nn.MultiheadAttention(width, heads, batch_first=True)
        m.load_state_dict(attn.state_dict())
        return m.eval()

    enc = model.image_encoder.vision_model
    b = g.shape[0]

    def vis(x):
        h = enc.encoder(inputs_embeds=enc.pre_layrnorm(enc.embeddings(x))).last_hidden_state
        return model.ln1_post(h)

    out224 = vis(g)
    out448 = vis(t.reshape(b * 4, *t.shape[2:]))
    memory = torch.cat([out224[:, 1:], out448[:, 1:].reshape(b, -1, out448.shape[-1])], dim=1)
    hidden = model.text_encoder.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    _, length, d = hidden.shape
    eos = (mask.long().sum(1) - 1).clamp(min=0)
    keep = torch.ones(b, length, dtype=torch.bool)
    keep[torch.arange(b), eos] = False
    idx = torch.arange(length).unsqueeze(0).expand(b, -1)[keep].view(b, length - 1)
    tokens = torch.gather(hidden, 1, idx.unsqueeze(2).expand(-1, -1, d))
    new_mask = mask.clone()
    new_mask[torch.arange(b), eos] = 0
    new_mask = new_mask[:, : length - 1]

    dec = model.text_decoder
    w, h = model.config.decoder.width, model.config.decoder.heads
    x = model.ln3_post(model.text_proj(tokens))
    img = model.ln2_post(memory)
    n = x.shape[1]
    causal = torch.full((n, n), float("-inf")).triu_(1)
    for rb, cb in zip(dec.resblocks, dec.cross_attn, strict=True):
        y = rb.ln_1(x)
        x = x + mha(rb.attn, w, h)(y, y, y, need_weights=False, attn_mask=causal)[0]
        x = x + rb.mlp(rb.ln_2(x))
        kv = cb.ln_1_kv(img)
        x = x + mha(cb.attn, w, h)(cb.ln_1(x), kv, kv, need_weights=False)[0]
        x = x + cb.mlp(cb.ln_2(x))
    x = dec.ln_final(x) @ dec.text_projection
    m = new_mask.unsqueeze(-1)
    mean = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
    neg = torch.finfo(x.dtype).min
    mx = x.masked_fill(~new_mask.bool().unsqueeze(-1), neg).max(1).values
    sc = torch.bmm(model.pool_attn_q.unsqueeze(0).expand(b, -1, -1), x.transpose(1, 2))
    att = torch.bmm(torch.softmax(sc.masked_fill(~new_mask.bool().unsqueeze(1), neg), -1), x).squeeze(1)
    pooled = model.ln4_post(model.multipool_proj(torch.cat([mean, mx, att], -1)))
    head = model.heads["sentiment"]
    p1 = head.proj1(pooled)
    p1 += pooled
    return head.proj2(p1)


def test_matches_reference_semantics():
    model = tiny("clip", tasks=("sentiment",))
    ids, mask, gp, cp = inputs(b=3, length=20)
    mask[0, 4:] = 0
    with torch.no_grad():
        g, t = model.tiler(gp, cp)
        ours = model(ids, mask, global_view=g, tiles=t)["sentiment"]
        ref = _reference_semantics_logits(model, ids, mask, g, t)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


# ---- training ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["clip", "dinov2"])
def test_training_losses_finite_and_backward(kind):
    model = tiny(kind).train()
    ids, mask, gp, cp = inputs()
    batch = {"input_ids": ids, "attention_mask": mask, "global_pixels": gp, "canvas_pixels": cp}
    labels = {"sentiment": torch.tensor([0, 2]), "desire": torch.tensor([6, 1])}
    pre = model.training_losses(batch, labels, stage="pretrain")
    assert set(pre) == {"itc", "consistency", "kl", "recon", "ce", "structure", "unimodal", "joint", "loss"}
    assert all(torch.isfinite(v) for v in pre.values())
    expected = 0.5 * pre["itc"] + 0.5 * pre["consistency"] + 0.025 * pre["kl"] + pre["recon"]
    torch.testing.assert_close(pre["loss"], expected)
    torch.manual_seed(5)
    again = model.forward_pretrain(batch)
    assert set(again) == set(pre) and torch.isfinite(again["loss"])
    pre["loss"].backward()
    assert model.image_decoder.decoder_pred.weight.grad is not None
    assert model.gate_kv.gate_bias.grad is not None
    model.zero_grad()
    ft = model.training_losses(batch, labels, stage="finetune")
    assert ft["recon"].item() == 0.0 and ft["ce"].detach().item() > 0
    torch.testing.assert_close(ft["loss"], 0.4 * ft["itc"] + ft["ce"])
    ft["loss"].backward()
    assert model.heads["desire"].proj2.mlp[3].weight.grad is not None
    assert model.heads["emotion"].proj2.mlp[3].weight.grad is None  # no labels for emotion
    with pytest.raises(ConfigError, match="unknown stage 'warmup'"):
        model.training_losses(batch, labels, stage="warmup")
    with pytest.raises(ConfigError, match="unknown loss weights"):
        model.training_losses(batch, labels, weights={"cls": 1.0})
    with pytest.raises(ConfigError, match="labels for unknown tasks"):
        model.training_losses(batch, {"mood": torch.tensor([0, 1])})


def test_freezing_groups_and_reinit():
    model = tiny()
    model.freeze_image_encoder()
    model.freeze_image_decoder()
    groups = model.parameter_groups()
    assert list(groups) == ["image_encoder", "text_encoder", "text_decoder", "image_decoder", "other"]
    assert groups["image_encoder"] == [] and groups["image_decoder"] == []
    assert groups["text_decoder"] and groups["text_encoder"] and groups["other"]
    assert not model.text_to_patch_queries.requires_grad
    before = model.heads["sentiment"].proj2.mlp[3].weight.clone()
    keep = model.heads["sentiment"].proj1.mlp[0].weight.clone()
    model.reinit_last_head_layer()
    assert not torch.equal(before, model.heads["sentiment"].proj2.mlp[3].weight)
    assert torch.equal(keep, model.heads["sentiment"].proj1.mlp[0].weight)


def test_pretrained_backbones_from_folders(tmp_path):
    from training.backbones import load_backbone_state

    donor = tiny("vit")
    donor.image_encoder.vision_model.save_pretrained(tmp_path / "vit")
    donor.text_encoder.text_model.save_pretrained(tmp_path / "bert")
    cfg = donor.config.to_dict()
    cfg["vision"]["pretrained"], cfg["text"]["pretrained"] = str(tmp_path / "vit"), str(tmp_path / "bert")
    cfg = SydesConfig.from_dict(cfg)
    torch.manual_seed(123)
    model = SyDES(cfg, load_pretrained=True)
    for part in ("image_encoder", "text_encoder"):
        a, b = getattr(donor, part).state_dict(), getattr(model, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = SyDES(cfg)  # without load_pretrained: random
    load_backbone_state(fresh.image_encoder, donor.image_encoder.vision_model.state_dict())
    assert torch.equal(fresh.image_encoder.vision_model.layernorm.weight,
                       donor.image_encoder.vision_model.layernorm.weight)
    bad = dict(donor.image_encoder.vision_model.state_dict())
    bad.pop("layernorm.bias")
    with pytest.raises(CheckpointError, match=r"missing \['layernorm.bias'\]"):
        load_backbone_state(fresh.image_encoder, bad)
    cfg.vision.pretrained = str(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="cannot load the vision backbone"):
        SyDES(cfg, load_pretrained=True)


# ---- checkpoints ------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    model = tiny("vit")
    tok = tmp_path / "tok.json"
    tok.write_text("{}")
    path = model.save_pretrained(tmp_path / "ckpt", tokenizer_file=tok)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded = SyDES.from_pretrained(path)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    ids, mask, gp, cp = inputs()
    with torch.no_grad():
        a = model(ids, mask, global_pixels=gp, canvas_pixels=cp)
        b = loaded(ids, mask, global_pixels=gp, canvas_pixels=cp)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="is not a SyDES checkpoint"):
        SyDES.from_pretrained(tmp_path)
    model = tiny()
    path = model.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["tasks"] = {"sentiment": cfg["tasks"]["sentiment"], "emotion": ["a", "b"]}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unexpected keys: heads\.desire.*shape mismatches: heads\.emotion"):
        SyDES.from_pretrained(path)
    (path / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        SyDES.from_pretrained(path)
    with pytest.raises(CheckpointError, match="tokenizer file"):
        model.save_pretrained(tmp_path / "other", tokenizer_file=tmp_path / "missing.json")
    assert not (tmp_path / "other").exists()


# ---- export ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_onnx_export_dynamic_batch_and_seq(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = tiny("clip")

    class Probs(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, gp, cp, ids, mask):
            return tuple(self.m.forward_probs(ids, mask, global_pixels=gp, canvas_pixels=cp).values())

    ids, mask, gp, cp = inputs()
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=77)
    f = tmp_path / "m.onnx"
    torch.onnx.export(
        Probs(model), (gp, cp, ids, mask), str(f), dynamo=True, opset_version=18,
        input_names=["global_pixels", "canvas_pixels", "input_ids", "attention_mask"],
        dynamic_shapes=({0: batch}, {0: batch}, {0: batch, 1: seq}, {0: batch, 1: seq}),
    )
    ids, mask, gp, cp = inputs(b=3, length=20, seed=1)
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"global_pixels": gp.numpy(), "canvas_pixels": cp.numpy(),
                          "input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        want = Probs(model)(gp, cp, ids, mask)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-5)


def test_image_summary_seam_and_effect():
    """With image_summary the heads see the global view: cached features through the seam give the same
    logits as pixels, and changing only the global view's features changes the answer."""
    import dataclasses

    cfg = dataclasses.replace(presets.tiny_vit_bert(), image_summary=True).validate()
    torch.manual_seed(0)
    model = SyDES(cfg).eval()
    g = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    c = torch.randint(0, 256, (2, 448, 448, 3), dtype=torch.uint8)
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.int64)
    with torch.no_grad():
        a = model(ids, mask, global_pixels=g, canvas_pixels=c)
        gv, tiles = model.tiler(g, c)
        views = torch.cat([gv.unsqueeze(1), tiles], 1).flatten(0, 1)
        feats = model.image_encoder(views).view(2, 5, *model.image_encoder(views).shape[1:])
        b = model(ids, mask, image_features=feats)
        other = feats.clone()
        other[:, 0] += torch.randn_like(other[:, 0])  # not a constant: ln1_post would remove that
        d = model(ids, mask, image_features=other)
    assert {t: v.shape[-1] for t, v in a.items()} == {"sentiment": 3, "emotion": 6, "desire": 7}
    for t in a:
        torch.testing.assert_close(a[t], b[t], atol=1e-5, rtol=0)
    assert max(float((d[t] - b[t]).abs().max()) for t in a) > 1e-4
    with pytest.raises(ConfigError, match="not both"):
        model(ids, mask, global_pixels=g, canvas_pixels=c, image_features=feats)
