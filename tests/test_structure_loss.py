"""The label-structure loss (training.losses.structure_loss): its value, its gradient, and how a model and
the recipe take it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sdk.errors import ConfigError
from sdk.labels import LabelStructure
from training import presets
from training.losses import label_combos, structure_loss
from training.options import TrainOptions

TASKS = {"sentiment": ["neg", "neu", "pos"], "emotion": ["sad", "calm", "happy"]}
# valid: (neg, sad), (neu, calm), (pos, happy), (pos, calm)
ROWS = np.array([[0, 0], [1, 1], [2, 2], [2, 1], [2, 2]])


def table() -> LabelStructure:
    return LabelStructure.from_labels(TASKS, ROWS)


def test_structure_loss_is_minus_log_of_the_valid_mass() -> None:
    torch.manual_seed(0)
    logits = {t: torch.randn(4, len(v)) for t, v in TASKS.items()}
    tasks, combos = label_combos(table().to_dict(), TASKS, required=True)
    got = structure_loss(logits, tasks, combos)
    p = {t: torch.softmax(v, -1).numpy() for t, v in logits.items()}
    valid = {tuple(c) for c in ROWS.tolist()}
    mass = np.array([sum(p["sentiment"][b, i] * p["emotion"][b, j]
                         for i, j in itertools.product(range(3), range(3)) if (i, j) in valid) for b in range(4)])
    assert got.item() == pytest.approx(float(-np.log(mass).mean()), rel=1e-5)
    # posteriors certain of a valid combination cost ~0; of an invalid one, a lot
    sure = {"sentiment": torch.tensor([[0.0, 30.0, 0.0]]), "emotion": torch.tensor([[0.0, 30.0, 0.0]])}
    assert structure_loss(sure, tasks, combos).item() < 1e-6
    wrong = {"sentiment": torch.tensor([[30.0, 0.0, 0.0]]), "emotion": torch.tensor([[0.0, 0.0, 30.0]])}
    assert structure_loss(wrong, tasks, combos).item() > 10


def test_a_gradient_step_moves_mass_into_the_table() -> None:
    tasks, combos = label_combos(table().to_dict(), TASKS, required=True)
    logits = {"sentiment": torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True),
              "emotion": torch.tensor([[0.0, 0.0, 2.0]], requires_grad=True)}  # (neg, happy): invalid
    before = structure_loss(logits, tasks, combos)
    before.backward()
    with torch.no_grad():
        stepped = {t: v - 0.5 * v.grad for t, v in logits.items()}
    assert structure_loss(stepped, tasks, combos).item() < before.item()


def test_label_combos_without_a_table() -> None:
    assert label_combos(None, TASKS, required=False) is None
    with pytest.raises(ConfigError, match="needs the model's label_structure"):
        label_combos(None, TASKS, required=True)


def test_models_add_the_weighted_structure_loss() -> None:
    from training.model import SyDES

    torch.manual_seed(0)
    model = SyDES(presets.tiny_vit_bert(("sentiment", "emotion"), image_size=64, patch_size=16,
                                        vocab_size=100)).train()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 100, (2, 8), generator=g), "attention_mask": torch.ones(2, 8, dtype=torch.long),
             "global_pixels": torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=g),
             "canvas_pixels": torch.randint(0, 256, (2, 128, 128, 3), dtype=torch.uint8, generator=g)}
    labels = {"sentiment": torch.tensor([0, 2]), "emotion": torch.tensor([0, 2])}
    with pytest.raises(ConfigError, match="needs the model's label_structure"):
        model.training_losses(batch, labels, stage="finetune", weights={"structure": 1.0})
    model.config.label_structure = LabelStructure.from_labels(
        {t: model.config.tasks[t] for t in TASKS}, np.array([[0, 0], [1, 1], [2, 2]])).to_dict()
    plain = model.training_losses(batch, labels, stage="finetune")
    assert plain["structure"].item() == 0.0  # computed only when weighted
    torch.manual_seed(1)
    out = model.training_losses(batch, labels, stage="finetune", weights={"structure": 2.0})
    assert out["structure"].item() > 0
    torch.testing.assert_close(out["loss"], 0.4 * out["itc"] + out["ce"] + 2.0 * out["structure"])

    from training.text_model import TextClassifier, TextOnlyConfig

    cfg = model.config
    text = TextClassifier(TextOnlyConfig(text=cfg.text, tasks=cfg.tasks, tokenizer=cfg.tokenizer,
                                         label_structure=cfg.label_structure)).train()
    t_out = text.training_losses(batch, labels, weights={"structure": 0.5})
    torch.testing.assert_close(t_out["loss"], t_out["ce"] + 0.5 * t_out["structure"])
    assert set(text.training_losses(batch, labels)) == {"ce", "loss"}


def test_train_options_name_unknown_loss_weights() -> None:
    with pytest.raises(ConfigError, match="unknown loss weights"):
        TrainOptions(loss_weights={"structur": 1.0}).validate()
    assert TrainOptions(loss_weights={"structure": 1.0}).validate().loss_weights == {"structure": 1.0}
