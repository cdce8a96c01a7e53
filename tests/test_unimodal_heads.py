"""The training-only unimodal heads (SyDES.add_unimodal_heads, the recipe's `unimodal` variant): the inference
path unchanged, the loss each modality's CE, the gradient reaching each branch, the checkpoint round trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from training import presets
from training.model import SyDES

TASKS = ("sentiment", "emotion")


def model(image_summary: bool = True, heads: bool = False) -> SyDES:
    torch.manual_seed(0)
    cfg = dataclasses.replace(presets.tiny_vit_bert(TASKS, image_size=64, patch_size=16, vocab_size=100),
                              image_summary=image_summary)
    m = SyDES(cfg.validate())
    if heads:
        m.add_unimodal_heads()
    return m


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[2, 5:] = 0
    return {"input_ids": torch.randint(0, 100, (3, 8), generator=g), "attention_mask": mask,
            "global_pixels": torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=g),
            "canvas_pixels": torch.randint(0, 256, (3, 128, 128, 3), dtype=torch.uint8, generator=g)}


LABELS = {"sentiment": torch.tensor([0, 2, 1]), "emotion": torch.tensor([1, 0, 5])}


@pytest.mark.parametrize("image_summary", [True, False])
def test_heads_leave_the_init_and_the_inference_path_unchanged(image_summary: bool) -> None:
    plain, with_heads = model(image_summary).eval(), model(image_summary, heads=True).eval()
    sd = with_heads.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in plain.state_dict().items())  # the same init, heads added last
    extra = sorted(set(sd) - set(plain.state_dict()))
    assert extra and all(k.startswith("unimodal.") for k in extra)
    # image head: on image_summary's [B, O] where the model has it, else the global view's mean patch [B, Dv]
    cfg = plain.config
    width = cfg.decoder.output_dim if image_summary else cfg.vision.hidden_size
    assert sd["unimodal.image.sentiment.weight"].shape == (3, width)
    assert sd["unimodal.text.emotion.weight"].shape == (6, cfg.text.hidden_size)
    b = batch()
    ids, mask = b.pop("input_ids"), b.pop("attention_mask")
    with torch.no_grad():
        a, c = plain(ids, mask, **b), with_heads(ids, mask, **b)
    for t in TASKS:
        torch.testing.assert_close(a[t], c[t], rtol=0, atol=0)


def test_the_loss_is_each_modalitys_ce_and_reaches_each_branch() -> None:
    m = model(heads=True).eval()  # eval: no dropout, so a second forward gives the same logits
    out = m.training_losses(batch(), LABELS, stage="finetune", weights={"unimodal": 0.5})
    b = batch()
    ids, mask = b.pop("input_ids"), b.pop("attention_mask")
    f = m.encode(ids, mask, **b)
    uni = m.unimodal(m.summarise_image(f.memory), f.text_tokens, f.text_mask)
    want = sum(F.cross_entropy(uni[mod][t], y) for mod in ("image", "text") for t, y in LABELS.items())
    torch.testing.assert_close(out["unimodal"], want)
    torch.testing.assert_close(out["loss"], 0.4 * out["itc"] + out["ce"] + 0.5 * out["unimodal"])
    # unweighted: nothing added
    plain = m.training_losses(batch(), LABELS, stage="finetune")
    torch.testing.assert_close(plain["loss"], 0.4 * plain["itc"] + plain["ce"])
    # the unimodal CE alone trains the image summary and the text encoder, not the fused heads
    m.zero_grad()
    out["unimodal"].backward()
    assert m.image_summary[1].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.text_encoder.parameters())
    assert all(p.grad is None for p in m.heads.parameters())


def test_text_mean_ignores_padding_and_survives_empty_texts() -> None:
    m = model(heads=True)
    tokens = torch.randn(2, 4, m.config.text.hidden_size)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    image = torch.randn(2, m.config.decoder.output_dim)
    out = m.unimodal(image, tokens, mask)
    lin = m.unimodal.text["sentiment"]
    torch.testing.assert_close(out["text"]["sentiment"][0], lin(tokens[0, :2].mean(0)))
    torch.testing.assert_close(out["text"]["sentiment"][1], lin.bias)  # no token: the zero vector
    assert set(out["image"]) == set(TASKS)


def test_checkpoint_round_trip(tmp_path) -> None:
    m = model(heads=True)
    m.save_pretrained(tmp_path / "ckpt")
    back = SyDES.from_pretrained(tmp_path / "ckpt")
    assert back.config.unimodal_heads
    torch.testing.assert_close(back.unimodal.image["emotion"].weight, m.unimodal.image["emotion"].weight)
    # a config written before the field existed reads as without the heads
    from training.config import SydesConfig

    d = m.config.to_dict()
    d.pop("unimodal_heads")
    assert not SydesConfig.from_dict(d).unimodal_heads and "unimodal" not in dict(SyDES(SydesConfig.from_dict(d)).named_children())
