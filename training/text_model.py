"""The text-only model family: the baseline a user would train instead of SyDES, and a product option
for posts without images.

    encode  text encoder -> masked mean over the tokens (sentence-transformers' pooling)  [B, Dt]
    head    per task: dropout -> Linear(Dt, C)                                          {task: [B, C]}

It speaks the same training interface as `training.model.SyDES` (config with tasks and label structure,
`training_losses`, `parameter_groups`, `save_pretrained` / `from_pretrained`), so the one Trainer and the
one recipe train both. Checkpoints say `"preset": "text-only"` in config.json (training.checkpoints picks
the class from it).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sdk.errors import ConfigError

from .backbones import TextEncoder
from .checkpoints import Checkpointable
from .config import CONFIG_VERSION, TEXT_KINDS, BackboneSpec, TokenizerSpec, task_labels
from .losses import label_combos, loss_weights, structure_loss
from .modules import masked_mean

PRESET = "text-only"


@dataclass
class TextOnlyConfig:
    text: BackboneSpec
    tasks: dict[str, list[str]] = field(default_factory=lambda: task_labels(("sentiment",)))
    tokenizer: TokenizerSpec = field(default_factory=lambda: TokenizerSpec("wordpiece", 128))
    dropout: float = 0.1
    label_structure: dict[str, Any] | None = None
    preset: str = PRESET
    version: int = CONFIG_VERSION

    uses_images = False  # class attribute: the Trainer and the recipe read pixels / features only if True

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def validate(self) -> TextOnlyConfig:
        if self.preset != PRESET:
            raise ConfigError(f"a text-only config has preset {PRESET!r}, got {self.preset!r}")
        if self.text.kind not in TEXT_KINDS:
            raise ConfigError(f"unknown text kind {self.text.kind!r}; valid: {', '.join(TEXT_KINDS)}")
        if not self.tasks:
            raise ConfigError("at least one task is needed")
        task_labels(tuple(self.tasks))  # unknown names raise listing the valid ones
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        self.tokenizer.text_recipe()  # the text fields (ConfigError naming the problem)
        if self.label_structure is not None:
            from sdk.labels import LabelStructure

            LabelStructure.from_dict(self.label_structure, self.tasks)
        return self

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextOnlyConfig:
        d = dict(copy.deepcopy(d))
        version = d.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config version {version} is not supported (this code reads {CONFIG_VERSION})")
        try:
            cfg = cls(text=BackboneSpec(**d.pop("text")),
                      tasks={str(k): [str(x) for x in v] for k, v in d.pop("tasks").items()},
                      tokenizer=TokenizerSpec(**d.pop("tokenizer", {})), dropout=float(d.pop("dropout", 0.1)),
                      label_structure=d.pop("label_structure", None), preset=str(d.pop("preset", PRESET)))
        except KeyError as e:
            raise ConfigError(f"text-only config lacks the field {e.args[0]!r}") from None
        except TypeError as e:
            raise ConfigError(f"invalid text-only config: {e}") from None
        if d:
            raise ConfigError(f"unknown text-only config fields: {', '.join(sorted(d))}")
        return cfg.validate()


def text_only(tasks=("sentiment", "emotion", "desire"), *, text_pretrained: str | None = None,
              max_length: int = 128) -> TextOnlyConfig:
    """MiniLM-L6 (BERT, 384-d) + mean pooling + one linear layer per task (the issue's baseline)."""
    from .presets import BERT_UNCASED_VOCAB, _bert

    return TextOnlyConfig(text=BackboneSpec("bert", _bert(384, 6, 12, 1536, BERT_UNCASED_VOCAB, 512), text_pretrained),
                          tasks=task_labels(tuple(tasks)), tokenizer=TokenizerSpec("wordpiece", max_length)).validate()


class TextClassifier(Checkpointable, nn.Module):
    """Text encoder + masked mean pooling + a linear head per task."""

    uses_images = False
    config_class = TextOnlyConfig
    family = "text-only"

    def __init__(self, config: TextOnlyConfig, *, load_pretrained: bool = False) -> None:
        super().__init__()
        self.config = config.validate()
        d = config.text.hidden_size
        self.text_encoder = TextEncoder(config.text, load_pretrained)
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict({t: nn.Linear(d, len(labels)) for t, labels in config.tasks.items()})
        self.heads.apply(_init_linear)

    # ---- inference ------------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               text_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """ids, mask [B, L] (or the text encoder's cached output `text_hidden` [B, L, Dt]) -> mean of the
        attended token states [B, Dt]."""
        hidden = self.text_encoder(input_ids, attention_mask) if text_hidden is None else text_hidden  # [B, L, Dt]
        return masked_mean(hidden, attention_mask)

    def head(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """pooled [B, Dt] -> {task: logits [B, C]}."""
        x = self.dropout(pooled)
        return {t: h(x) for t, h in self.heads.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_probs: bool = False,
                text_hidden: torch.Tensor | None = None, **_images: Any) -> dict[str, torch.Tensor]:
        """-> {task: logits [B, C]}; image arguments are accepted and ignored (one call shape for both
        families)."""
        logits = self.head(self.encode(input_ids, attention_mask, text_hidden))
        return {k: torch.softmax(v, dim=-1) for k, v in logits.items()} if return_probs else logits

    # ---- training interface (as SyDES) ----------------------------------------------------------
    def training_losses(self, batch_inputs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor] | None = None,
                        stage: str = "finetune", weights: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
        if stage != "finetune":
            raise ConfigError(f"the text-only model has no {stage!r} stage; it is fine-tuned only")
        logits = self(batch_inputs["input_ids"], batch_inputs["attention_mask"],
                      text_hidden=batch_inputs.get("text_hidden"))
        ce = sum((F.cross_entropy(logits[t], y) for t, y in (labels or {}).items()),
                 start=logits[next(iter(logits))].new_zeros(()))
        w = loss_weights(stage, weights)  # of SyDES's losses only ce and structure apply to this model
        out = {"ce": ce, "loss": w["ce"] * ce}
        if w["structure"] > 0:
            out["structure"] = structure_loss(logits, *label_combos(self.config.label_structure, self.config.tasks,
                                                                    required=True, device=ce.device))
            out["loss"] = out["loss"] + w["structure"] * out["structure"]
        return out

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        from .model import PARAM_GROUPS

        groups: dict[str, list[nn.Parameter]] = {g: [] for g in PARAM_GROUPS}
        for name, p in self.named_parameters():
            if p.requires_grad:
                groups["text_encoder" if name.startswith("text_encoder.") else "other"].append(p)
        return groups

    def freeze_image_encoder(self, frozen: bool = True, *, tail_blocks: int = 0) -> None:  # no image path
        if tail_blocks:
            raise ConfigError("the text-only model has no image encoder: image_tail_blocks must be 0")

    def freeze_image_decoder(self, frozen: bool = True) -> None:
        pass

    def reinit_last_head_layer(self) -> None:
        self.heads.apply(_init_linear)

    # checkpoints: save_pretrained / from_pretrained / load_checked_state_dict come from training.checkpoints


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
