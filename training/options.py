"""TrainOptions: what one training run is told (stage, epochs, batching, schedule, caches), validated up front."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdk.errors import ConfigError

STAGES = ("pretrain", "finetune")


def check_stage(stage: str) -> str:
    """`stage` if it is one of STAGES, else a ConfigError listing them (the one check: options, model, losses)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    return stage


def check_ema(decay: float) -> float:
    """`decay` if it is a valid EMA setting (0 = off), else a ConfigError (TrainOptions and the recipe's)."""
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"ema is a decay in [0, 1) (0 = off), got {decay}")
    return decay


@dataclass
class TrainOptions:
    stage: str = "finetune"
    epochs: int = 1
    batch_size: int = 8
    accum: int = 1
    max_steps: int | None = None  # optimiser steps; stops early (the schedule still spans `epochs`)
    warmup: float | None = None  # fraction of steps; default 0.15 pretrain / 0.10 fine-tune
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    lrs: dict[str, float] = field(default_factory=dict)  # overrides of the model's group LRs
    clip: float = 1.0
    amp: str = "auto"  # auto | off | fp16 | bf16
    eval_every: int = 0  # optimiser steps between dev evaluations; 0 = at the end of each epoch only
    save_every: int = 50  # optimiser steps between resumable checkpoints (and at every epoch end)
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    log_every: int = 10
    deterministic: bool = False
    progress: bool = True
    feature_cache: str | None = None  # folder of the frozen-encoder feature cache (fine-tune only)
    feature_cache_dtype: str = "float32"  # float32 = exact logits; float16 halves the disk (not exact)
    trim_padding: bool = True  # cut each batch's token padding to its longest caption (exact: see data.py)
    text_cache: bool = False  # frozen text encoder (lr 0): compute its outputs once, in memory
    loss_weights: dict[str, float] = field(default_factory=dict)  # overrides of the stage's (training.losses)
    # fine-tune: the image encoder's last N layers (and its output norm) train at lrs["image_encoder"]; the
    # feature cache then holds the hidden state before them
    image_tail_blocks: int = 0
    # > 0: evaluate and save as best an exponential moving average of the trained weights (training.ema)
    ema: float = 0.0
    # fine-tune: the probability that a training post's text is replaced by the empty text (training.steps.
    # drop_text), so the fused model also learns to answer from the image alone; 0 = off
    text_dropout: float = 0.0

    def validate(self) -> TrainOptions:
        check_stage(self.stage)
        if self.amp not in ("auto", "off", "fp16", "bf16"):
            raise ConfigError(f"unknown amp mode {self.amp!r}; valid: auto, off, fp16, bf16")
        for name in ("epochs", "batch_size", "accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.feature_cache and self.stage != "finetune" and self.lrs.get("image_encoder", None) != 0:
            raise ConfigError("the feature cache needs a frozen image encoder: use it with finetune only, or with "
                              "pretrain and an image_encoder learning rate of 0")
        if self.image_tail_blocks < 0:
            raise ConfigError(f"image_tail_blocks must be >= 0, got {self.image_tail_blocks}")
        if self.image_tail_blocks and (self.stage != "finetune" or not self.lrs.get("image_encoder", 0) > 0):
            raise ConfigError("image_tail_blocks trains the image encoder's last layers: it needs the finetune "
                              "stage and an image_encoder learning rate > 0")
        check_ema(self.ema)
        if self.loss_weights:
            from training.losses import loss_weights

            loss_weights(self.stage, self.loss_weights)  # ConfigError naming unknown losses
        if self.text_cache and self.lrs.get("text_encoder", None) != 0:
            raise ConfigError("the text cache needs a frozen text encoder: set the text_encoder learning rate to 0")
        if not 0.0 <= self.text_dropout < 1.0:
            raise ConfigError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        if self.text_dropout and (self.text_cache or self.stage != "finetune"):
            raise ConfigError("text_dropout drops texts of fine-tuning batches: it needs the finetune stage and "
                              "no text cache (a cached text encoder output has no text left to drop)")
        return self

    @property
    def warmup_frac(self) -> float:
        return self.warmup if self.warmup is not None else (0.15 if self.stage == "pretrain" else 0.10)
