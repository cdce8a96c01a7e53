"""What a `sydes train recipe` run is told (RecipeOptions, validated up front), its named presets, variants and
ablations, the learning rates it trains with, and the stratified selection split (export/recipe.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdk.errors import ConfigError
from sdk.text_fields import TextFields
from training.options import check_ema

RECIPE_PRESETS = ("edge", "text-only", "tiny_vit_bert")
ABLATIONS = ("global-only", "image-only")
# Candidates for RUN/best besides the preset trained from the pretrained encoders. warm-text: the text
# encoder starts from the fine-tuned baseline's, so the fused model does not have to relearn from the
# image path what the text alone already gives (multimodal models under-train their stronger modality).
# structure-loss: the CE plus training.losses.structure_loss (-log of the posterior mass on valid combinations).
# image-tail: the image encoder's last IMAGE_TAIL_BLOCKS layers (and output norm) train too, at IMAGE_TAIL_LR;
# its feature cache is cut before them (a second cache fill, about the first one's cost).
# unimodal: training-only linear heads on the image summary and on the text tokens alone, their CE added with
# UNIMODAL_LOSS_WEIGHT (SyDES.add_unimodal_heads): the fused model otherwise leans on the text, and the image
# path learns only what the text leaves over; inference is unchanged.
# joint-head: the heads answer through a joint output over the valid label combinations (SyDES.add_joint_head;
# per-task logits = its log-marginals, so the bundle's outputs do not change), trained with the per-task CE
# plus the combination's NLL at JOINT_LOSS_WEIGHT: the tasks share what the label table says they share.
# shallow-decoder: the preset's multimodal decoder with half its layers (edge: 2 of 4), fewer weights to fit
# from 1,274 posts; the encoders and everything else as the preset.
# text-dropout: modality dropout, each training post's text replaced by the empty text with probability
# TEXT_DROPOUT (training.steps.drop_text): the text is the stronger modality, and a model that can always lean
# on it has little reason to learn what the image adds; inference is unchanged.
VARIANTS = ("warm-text", "structure-loss", "image-tail", "unimodal", "joint-head", "shallow-decoder", "text-dropout")
STRUCTURE_LOSS_WEIGHT = 1.0
UNIMODAL_LOSS_WEIGHT = 1.0  # not tuned: each modality's CE weighs as much as the fused one
JOINT_LOSS_WEIGHT = 1.0  # not tuned: the combination's NLL weighs as much as the per-task CE
VARIANT_LOSS_WEIGHTS = {"structure-loss": {"structure": STRUCTURE_LOSS_WEIGHT},
                        "unimodal": {"unimodal": UNIMODAL_LOSS_WEIGHT}, "joint-head": {"joint": JOINT_LOSS_WEIGHT}}
TEXT_DROPOUT = 0.25  # not tuned: a quarter of each batch answers from the image path alone
IMAGE_TAIL_BLOCKS = 1
IMAGE_TAIL_LR = 5e-5  # the text encoder's: the rate that fine-tunes a pretrained encoder here
BASELINE = "text-only"
# Learning rates by parameter group. The text encoder is trained at the rate that fine-tunes MiniLM well
# on its own; the freshly initialised decoder / pooling / heads learn faster. SYDES.md's fine-tune rates
# (2e-4 / 1e-4) are for 50 epochs of 6k posts; this recipe has a few hundred steps, hence 3e-4.
MODEL_LRS = {"image_encoder": 0.0, "text_encoder": 5e-5, "text_decoder": 3e-4, "other": 3e-4}
BASELINE_LRS = {"text_encoder": 5e-5, "other": 1e-3}


@dataclass
class RecipeOptions:
    preset: str = "edge"
    epochs: int = 6
    # the baseline is cheap (~1/4 of the model's step time): 10 epochs scored higher on the selection slice
    # than 6 (docs/msed_report.md, run 4), and a margin over an under-trained baseline would mean nothing
    baseline_epochs: int = 10
    patience: int = 3  # evaluations on the selection slice without improvement before stopping
    batch_size: int = 32
    select_fraction: float = 0.15
    seed: int = 0
    # > 0: both models select and save an exponential moving average of their weights (training.ema), e.g.
    # 0.98 (an average over ~50 steps, ~1.3 epochs of msed-mini's fit split); not the default (see the report)
    ema: float = 0.0
    baseline: bool = True
    ablations: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    int8: bool = True
    int8_calib_samples: int = 256
    device: str = "auto"
    progress: bool = True
    limit: int | None = None  # rows per split (smoke runs)
    # the columns the text is built from (sdk.text_fields.TextFields), for the baseline and the model alike.
    # Title + Caption: MSED posts have both, and the Title lifted the text-only model by 1.4 points on the
    # selection slice (docs/msed_report.md); the reference reads the Caption alone (--text-fields Caption).
    text_fields: tuple[str, ...] = ("Title", "Caption")
    text_separator: str = " "
    model_lrs: dict[str, float] = field(default_factory=lambda: dict(MODEL_LRS))
    baseline_lrs: dict[str, float] = field(default_factory=lambda: dict(BASELINE_LRS))

    def validate(self) -> RecipeOptions:
        if self.preset not in RECIPE_PRESETS:
            raise ConfigError(f"unknown recipe preset {self.preset!r}; valid: {', '.join(RECIPE_PRESETS)}")
        bad = [a for a in self.ablations if a not in ABLATIONS]
        if bad:
            raise ConfigError(f"unknown ablation(s) {bad}; valid: {', '.join(ABLATIONS)}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ConfigError(f"unknown variant(s) {bad}; valid: {', '.join(VARIANTS)}")
        if (self.ablations or self.variants) and self.preset == BASELINE:
            raise ConfigError("ablations and variants change the image model: they need an image preset, not text-only")
        if "warm-text" in self.variants and not self.baseline:
            raise ConfigError("the warm-text variant starts from the baseline: it needs the baseline stage")
        if not 0.0 < self.select_fraction < 0.5:
            raise ConfigError(f"select_fraction must be in (0, 0.5), got {self.select_fraction}")
        check_ema(self.ema)
        for name in ("epochs", "baseline_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.text_fields = self.text_recipe().fields  # "Title,Caption" or a list -> a tuple of names
        return self

    def text_recipe(self) -> TextFields:
        return TextFields(TextFields.of(self.text_fields).fields, self.text_separator)


def stratified_split(rows: np.ndarray, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (fit, select): `fraction` of each label combination (rows [N, T]) goes to select, at
    least one of every combination seen >= 2 times; deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    strata: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(np.asarray(rows)):
        strata.setdefault(tuple(int(v) for v in r), []).append(i)
    select: list[int] = []
    for key in sorted(strata):
        idx = strata[key]
        if len(idx) < 2:
            continue
        k = max(1, int(round(fraction * len(idx))))
        select.extend(int(i) for i in rng.permutation(idx)[:k])
    chosen = set(select)
    return [i for i in range(len(rows)) if i not in chosen], sorted(select)
