"""What one training step needs, apart from the loop: the recipe's per-group learning rates, freezing per
stage, the batch -> losses / logits calls (cached features through the model's seam), the DDP wrapper."""

from __future__ import annotations

import contextlib
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

    def forward(self, inputs, labels, stage):  # noqa: D401
        return self.module_.training_losses(inputs, labels, stage=stage)


# Per-module learning rates of the reference recipe (../shared/SYDES.md), by the model's parameter groups
# (image_encoder, text_encoder, text_decoder, image_decoder, other).
RECIPE_LRS = {
    "pretrain": {"image_encoder": 5e-6, "text_encoder": 5e-5, "text_decoder": 1e-4, "image_decoder": 1e-4,
                 "other": 1e-4},
    "finetune": {"image_encoder": 0.0, "text_encoder": 1e-4, "text_decoder": 2e-4, "image_decoder": 0.0,
                 "other": 1e-4},
}


def prepare_model_for_stage(model: torch.nn.Module, stage: str, *, fresh_finetune: bool) -> None:
    """Freeze / re-init per the recipe. Fine-tune: image encoder + image decoder frozen, heads trainable and
    (when starting from a pretrained checkpoint) the last head layer re-initialised. Pretrain: heads frozen
    (no classification loss), everything else trainable."""
    m = unwrap(model)
    finetune = stage == "finetune"
    m.freeze_image_encoder(finetune)
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


@contextlib.contextmanager
def _replayed_encoder(model: torch.nn.Module, batch: dict[str, Any], stage: str = "finetune"):
    """When the batch carries cached encoder outputs, swap in encoders that return them (see
    training.feature_cache) and pass tiny dummy views; otherwise pass the uint8 canvases. Pretraining with
    cached image features replays the global view only (the masked tiles need the real encoder)."""
    from training.feature_cache import replay_global_view, replay_text_encoder

    m = unwrap(model)
    with contextlib.ExitStack() as stack:
        if "text_hidden" in batch:
            stack.enter_context(replay_text_encoder(m, batch["text_hidden"]))
        if "image_features" not in batch:
            pixels = ("global_pixels", "canvas_pixels")
            yield {k: batch[k] for k in pixels if k in batch}  # none for the text-only family
            return
        feats = batch["image_features"]
        b = feats.shape[0]
        if stage == "pretrain":
            _, tiles = m.tiler(batch["global_pixels"], batch["canvas_pixels"])
            stack.enter_context(replay_global_view(m, feats[:, 0]))
            yield {"global_view": feats.new_zeros(b, 3, 1, 1), "tiles": tiles}
            return
        yield {"image_features": feats}  # the model's seam for cached encoder outputs


def batch_losses(model: torch.nn.Module, batch: dict[str, Any], stage: str) -> dict[str, torch.Tensor]:
    """Weighted losses of one batch (model.training_losses); key "loss" is the total to back-propagate.
    Tasks with no labelled row in the batch are left out of the CE (their mean would be 0/0)."""
    labels = batch["labels"]
    tasks = unwrap(model).config.task_names
    y = {t: labels[:, i] for i, t in enumerate(tasks) if bool((labels[:, i] != MISSING).any())}
    with _replayed_encoder(model, batch, stage) as views:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **views}
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return model(inputs, y, stage)  # DDP's forward -> training_losses (see _LossForward)
        return model.training_losses(inputs, y, stage=stage)


def batch_logits(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    m = unwrap(model)
    with _replayed_encoder(m, batch) as views:
        return m(batch["input_ids"], batch["attention_mask"], **views)


