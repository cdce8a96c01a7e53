"""Evaluate a checkpoint on a labelled split: per-task accuracy, macro / weighted F1, per-class precision
and recall, confusion matrices (table, JSON, PNG when matplotlib is installed)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data import PostDataset, Records, make_loader
from training.metrics import evaluate_predictions

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(model: torch.nn.Module, records: Records, tokenizer, *, batch_size: int = 16,
            device: str | torch.device = "cpu", num_workers: int = 0, progress: bool = False,
            feature_cache=None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run the model over `records`: (true labels, predicted labels, probabilities) per task."""
    from sdk.preprocess import PreprocessConfig

    cfg = model.config
    tasks = cfg.task_names
    images = getattr(model, "uses_images", True)  # the text-only family reads no image
    pcfg = PreprocessConfig.from_dict(cfg.preprocess) if images else None
    ds: Any = PostDataset(records, tokenizer, pcfg, tasks, with_pixels=images and feature_cache is None)
    if feature_cache is not None and images:
        from training.feature_cache import CachedFeatureDataset

        feature_cache.fill(records, PreprocessConfig.from_dict(cfg.preprocess), batch_size=batch_size)
        ds = CachedFeatureDataset(ds, feature_cache, records)
    from training.trainer import resolve_device

    device = resolve_device(device) if isinstance(device, str) else device
    model = model.to(device).eval()
    loader = make_loader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    trues: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    preds: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    probs: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="eval", unit="batch")
    for batch in it:
        kw = {k: batch[k].to(device) for k in ("global_pixels", "canvas_pixels", "image_features") if k in batch}
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device), **kw)
        for i, t in enumerate(tasks):
            p = torch.softmax(logits[t].float(), dim=-1).cpu().numpy()
            probs[t].append(p)
            preds[t].append(p.argmax(-1))
            trues[t].append(batch["labels"][:, i].numpy())
    cat = lambda d: {t: np.concatenate(v) for t, v in d.items()}  # noqa: E731
    return cat(trues), cat(preds), cat(probs)


def evaluate_checkpoint(checkpoint: str | Path, records: Records, *, batch_size: int = 16,
                        device: str = "auto", num_workers: int = 0, progress: bool = False) -> dict[str, dict]:
    """Load `checkpoint` (any family: training.checkpoints) and return per-task reports (training.metrics)."""
    from training.checkpoints import load_model
    from training.runner import load_tokenizer

    model = load_model(checkpoint)
    tokenizer = load_tokenizer(model.config, checkpoint)
    y, p, _ = predict(model, records, tokenizer, batch_size=batch_size, device=device, num_workers=num_workers,
                      progress=progress)
    return evaluate_predictions(y, p, model.config.tasks)
