"""SyDES's training losses (SYDES.md): the weights per stage and the losses of one forward_train output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from sdk.errors import ConfigError

from .options import check_stage

LOSSES = ("itc", "consistency", "kl", "recon", "ce", "structure", "unimodal", "joint")
# structure, unimodal, joint: not in SYDES.md; off unless asked for (the recipe's `structure-loss` / `unimodal` /
# `joint-head` variants, #13)
_EXTRA = {"structure": 0.0, "unimodal": 0.0, "joint": 0.0}
PRETRAIN_WEIGHTS = {"itc": 0.5, "consistency": 0.5, "kl": 0.025, "recon": 1.0, "ce": 0.0, **_EXTRA}
FINETUNE_WEIGHTS = {"itc": 0.4, "consistency": 0.0, "kl": 0.0, "recon": 0.0, "ce": 1.0, **_EXTRA}


def loss_weights(stage: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The stage's default weights with `overrides` (only known loss names)."""
    check_stage(stage)
    w = dict(PRETRAIN_WEIGHTS if stage == "pretrain" else FINETUNE_WEIGHTS)
    if overrides:
        unknown = set(overrides) - set(w)
        if unknown:
            raise ConfigError(f"unknown loss weights {sorted(unknown)}; valid: {', '.join(w)}")
        w.update(overrides)
    return w


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """[N, 3, S, S] -> [N, P, p*p*3] (MAE's order: row-major patches, pixels (y, x, channel))."""
    n, _, h, w = imgs.shape
    x = imgs.reshape(n, 3, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // p) * (w // p), p * p * 3)


def structure_loss(logits: Mapping[str, torch.Tensor], tasks: Sequence[str], combos: torch.Tensor) -> torch.Tensor:
    """-log of the probability mass the independent per-task posteriors put on the valid label combinations
    (sdk.labels.LabelStructure), batch mean. logits {task: [B, C_t]}; combos [K, T] label indices in `tasks`
    order. 0 when every post's posteriors sit inside the table; needs no labels (it regularises agreement)."""
    combos = combos.to(logits[tasks[0]].device)
    score = sum(F.log_softmax(logits[t].float(), dim=-1)[:, combos[:, j]] for j, t in enumerate(tasks))  # [B, K]
    return -torch.logsumexp(score, dim=1).mean()


def joint_nll(scores: torch.Tensor, labels: Mapping[str, torch.Tensor], tasks: Sequence[str],
              combos: torch.Tensor) -> torch.Tensor:
    """-log p(the post's label combination) under the joint head's scores [B, K] over `combos` [K, T] (columns
    in `tasks` order), mean over the posts whose labels form one of the combinations (others, e.g. with a
    missing label, add nothing); 0 when there is none."""
    y = torch.stack([labels[t] for t in tasks], dim=1).to(combos.device)  # [B, T]
    match = (y.unsqueeze(1) == combos.unsqueeze(0)).all(dim=-1)  # [B, K]
    keep = match.any(dim=1)
    if not keep.any():
        return scores.new_zeros(())
    s = scores[keep].float()
    return (torch.logsumexp(s, dim=1) - s[match[keep]]).mean()


def label_combos(structure: Mapping[str, Any] | None, tasks: Mapping[str, Sequence[str]], *, required: bool,
                 device: torch.device | None = None) -> tuple[Sequence[str], torch.Tensor] | None:
    """A config's label_structure -> (its tasks, combos [K, T] long) for structure_loss; None without one
    (a ConfigError when `required`, i.e. the structure loss has a weight)."""
    if structure is None:
        if required:
            raise ConfigError("the structure loss needs the model's label_structure (learnt from the training "
                              "labels: sydes train recipe sets it)")
        return None
    from sdk.labels import LabelStructure

    table = LabelStructure.from_dict(structure, tasks)
    return table.tasks, torch.tensor(table.combos, dtype=torch.long, device=device)


def sydes_losses(out: Mapping[str, Any], labels: Mapping[str, torch.Tensor], stage: str, *,
                 temperature: torch.Tensor, logit_scale: torch.Tensor, patch_size: int,
                 structure: tuple[Sequence[str], torch.Tensor] | None = None,
                 joint: tuple[Sequence[str], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """forward_train's outputs -> unweighted losses: itc (symmetric InfoNCE, similarities scaled by
    exp(temperature)); pretrain: consistency (MSE of the decoder's and the image's latents), kl (MAE vs CLIP
    similarity distributions, + entropy), recon (pixel MSE over the dropped patches); ce (summed over
    `labels`' tasks, logits from out["logits"]); unimodal (the same CE of out["unimodal_logits"]' image and text
    heads, where the model has them); structure (structure_loss over `structure` = (tasks,
    combos), when given and logits were computed, else 0); joint (joint_nll of out["joint_scores"] over `joint` =
    (tasks, combos) of the model's joint head, where every one of those tasks is labelled, else 0)."""
    img, txt = out["img_latents"], out["text_latents"]
    zero = img.new_zeros(())
    losses: dict[str, torch.Tensor] = {}
    sim = (txt @ img.t()) * temperature.exp()
    target = torch.arange(sim.shape[0], device=sim.device)
    losses["itc"] = 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))
    if stage == "pretrain":
        dec = F.normalize(out["dec_latents"], dim=1, eps=1e-12)
        losses["consistency"] = F.mse_loss(dec, img)
        logits_clip = logit_scale * (img @ txt.t())
        logits_mae = logit_scale * (dec @ txt.t())
        kl = F.kl_div(F.log_softmax(logits_mae, dim=-1), F.softmax(logits_clip, dim=-1), reduction="batchmean")
        entropy = -(F.softmax(logits_mae, dim=0) * F.log_softmax(logits_mae, dim=0)).mean()
        losses["kl"] = kl + entropy
        target_px = patchify(out["tiles"].reshape(-1, *out["tiles"].shape[2:]), patch_size)
        per_patch = ((out["recon_pred"] - target_px) ** 2).mean(dim=-1)
        m = out["recon_mask"]
        losses["recon"] = (per_patch * m).sum() / m.sum()
    else:
        losses["consistency"] = losses["kl"] = losses["recon"] = zero
    losses["ce"] = sum((F.cross_entropy(out["logits"][t], y) for t, y in labels.items()), start=zero)
    # the CE of each modality's own heads (config.unimodal_heads), image and text summed
    uni = out.get("unimodal_logits") or {}
    losses["unimodal"] = sum((F.cross_entropy(m[t], y) for m in uni.values() for t, y in labels.items()), start=zero)
    logits = out.get("logits")
    losses["structure"] = structure_loss(logits, *structure) if structure is not None and logits else zero
    scores = out.get("joint_scores")
    labelled = joint is not None and all(t in labels for t in joint[0])
    losses["joint"] = joint_nll(scores, labels, *joint) if scores is not None and labelled else zero  # type: ignore[misc]
    return losses
