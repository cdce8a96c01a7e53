"""What one training step needs, apart from the loop: the recipe's per-group learning rates, freezing per
stage, the batch -> losses / logits calls (cached features through the model's seam), the DDP wrapper."""

from __future__ import annotations

from typing import Any

import torch

from sdk.errors import ConfigError
from training.data import MISSING


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The SyDES inside DDP / the loss wrapper."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, _LossForward):
            model = model.module_
        else:
            return model


class _LossForward(torch.nn.Module):
    """Makes `training_losses` the forward DDP wraps (DDP hooks its gradient sync on forward)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module_ = model

    def forward(self, inputs, labels, stage, weights=None):  # noqa: D401
        return self.module_.training_losses(inputs, labels, stage=stage, weights=weights)


# Per-module learning rates of the reference recipe (../shared/SYDES.md), by the model's parameter groups
# (image_encoder, text_encoder, text_decoder, image_decoder, other).
RECIPE_LRS = {
    "pretrain": {"image_encoder": 5e-6, "text_encoder": 5e-5, "text_decoder": 1e-4, "image_decoder": 1e-4,
                 "other": 1e-4},
    "finetune": {"image_encoder": 0.0, "text_encoder": 1e-4, "text_decoder": 2e-4, "image_decoder": 0.0,
                 "other": 1e-4},
}


def prepare_model_for_stage(model: torch.nn.Module, stage: str, *, fresh_finetune: bool,
                            image_tail_blocks: int = 0) -> None:
    """Freeze / re-init per the recipe. Fine-tune: image encoder (but its last `image_tail_blocks` layers) +
    image decoder frozen, heads trainable and (when starting from a pretrained checkpoint) the last head layer
    re-initialised. Pretrain: heads frozen (no classification loss), everything else trainable."""
    m = unwrap(model)
    finetune = stage == "finetune"
    m.freeze_image_encoder(finetune, tail_blocks=image_tail_blocks if finetune else 0)
    m.freeze_image_decoder(finetune)
    m.heads.requires_grad_(finetune)
    if finetune and fresh_finetune:
        m.reinit_last_head_layer()


def optimizer_groups(model: torch.nn.Module, stage: str, overrides: dict[str, float] | None = None) -> list[dict]:
    """AdamW parameter groups with the recipe's LR per module group (`overrides` by group name)."""
    lrs = dict(RECIPE_LRS[stage])
    for k, v in (overrides or {}).items():
        if k not in lrs:
            raise ConfigError(f"unknown parameter group {k!r} in --lr; valid: {', '.join(lrs)}")
        lrs[k] = v
    groups = []
    for name, params in unwrap(model).parameter_groups().items():
        if params and lrs[name] > 0:
            groups.append({"name": name, "params": params, "lr": lrs[name]})
        elif params:  # a zero LR means frozen: keep it out of the optimiser and of the graph
            for p in params:
                p.requires_grad_(False)
    if not groups:
        raise ConfigError(f"nothing to train in stage {stage!r}: every parameter group is frozen")
    return groups


def _model_inputs(batch: dict[str, Any], stage: str = "finetune") -> dict[str, Any]:
    """The image (uint8 canvases, or the cached `image_features` through the model's encode seam) and any
    cached `text_hidden` of a batch, as the model's keyword inputs. Pretraining with cached image features
    still gets the canvases: its masked tiles need the real (frozen) encoder; the cache stands in for the
    global view only (SyDES.forward_encoder)."""
    keys = ("global_pixels", "canvas_pixels", "image_features", "image_hidden", "image_hidden_layer", "text_hidden")
    inputs = {k: batch[k] for k in keys if k in batch}
    cached = "image_features" in inputs or "image_hidden" in inputs
    if cached and stage != "pretrain":  # the cache replaces the pixels
        inputs.pop("global_pixels", None)
        inputs.pop("canvas_pixels", None)
    return inputs


def drop_text(batch: dict[str, Any], p: float, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Modality dropout: each post's text is replaced, with probability `p`, by the empty text ([CLS] [SEP],
    what the tokenizer makes of ""), so the fused model must also answer from its image path.
    input_ids / attention_mask [B, L]; returns a new batch (the input is not changed)."""
    if p <= 0.0:
        return batch
    if "text_hidden" in batch:
        raise ConfigError("drop_text needs token ids, not cached text-encoder outputs (text_hidden)")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if ids.shape[1] < 2:
        return batch
    drop = (torch.rand(ids.shape[0], generator=generator) < p).to(ids.device)
    if not bool(drop.any()):
        return batch
    rows = torch.arange(ids.shape[0], device=ids.device)
    sep = ids[rows, (mask.sum(dim=1) - 1).clamp(min=1)]  # each row's last real token: the [SEP]
    ids, mask = ids.clone(), mask.clone()
    ids[drop, 1] = sep[drop]
    # beyond [SEP] the ids are masked out everywhere (the trim_padding argument), as pads are
    mask[drop, 2:] = 0
    return {**batch, "input_ids": ids, "attention_mask": mask}


def batch_losses(model: torch.nn.Module, batch: dict[str, Any], stage: str,
                 weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Weighted losses of one batch (model.training_losses, `weights` over the stage's defaults); key "loss"
    is the total to back-propagate.
    Tasks with no labelled row in the batch are left out of the CE (their mean would be 0/0)."""
    labels = batch["labels"]
    tasks = unwrap(model).config.task_names
    y = {t: labels[:, i] for i, t in enumerate(tasks) if bool((labels[:, i] != MISSING).any())}
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **_model_inputs(batch, stage)}
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model(inputs, y, stage, weights)  # DDP's forward -> training_losses (see _LossForward)
    return model.training_losses(inputs, y, stage=stage, weights=weights)


def batch_logits(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return unwrap(model)(batch["input_ids"], batch["attention_mask"], **_model_inputs(batch))


