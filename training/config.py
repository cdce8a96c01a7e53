"""Typed configuration of a SyDES model (saved as a checkpoint's `config.json`).

The config holds everything needed to rebuild the module structure without any file other than
itself: backbone kinds and their Hugging Face config dicts, decoder sizes, tasks and their ordered
label names, preprocessing (the dict form of `sdk.preprocess.PreprocessConfig`) and tokenizer settings.
Weights are never referenced here except as an optional `pretrained` source of a backbone (hub id or
local folder) used only when a model is first built.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdk.errors import ConfigError
from sdk.text_fields import TextFields

# Label names in the index order used by the reference code (../shared/data/msed-mini/README.md).
MSED_TASKS: dict[str, tuple[str, ...]] = {
    "sentiment": ("negative", "neutral", "positive"),
    "emotion": ("happiness", "sad", "neutral", "disgust", "anger", "fear"),
    "desire": ("vengeance", "curiosity", "social-contact", "family", "tranquility", "romance", "none"),
}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VISION_KINDS = ("clip", "dinov2", "vit")
TEXT_KINDS = ("clip", "bert")
TOKENIZER_KINDS = ("clip", "wordpiece")
CONFIG_VERSION = 1


def preprocess_dict(
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
    global_size: int = 224,
    canvas_size: int = 448,
    max_pixels: int = 64_000_000,
) -> dict[str, Any]:
    """The dict form of `sdk.preprocess.PreprocessConfig`.

    The pad colour is int(mean * 255) per channel, truncated as the reference's expand2square does
    (CLIP: 122, 116, 104).
    """
    return {
        "global_size": int(global_size),
        "canvas_size": int(canvas_size),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "pad_rgb": [int(m * 255) for m in mean],
        "max_pixels": int(max_pixels),
    }


def task_labels(tasks: tuple[str, ...] | list[str] | str) -> dict[str, list[str]]:
    """MSED task names -> ordered label names; unknown names raise listing the valid ones."""
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    if not tasks:
        raise ConfigError(f"at least one task is needed; valid tasks: {', '.join(MSED_TASKS)}")
    out: dict[str, list[str]] = {}
    for t in tasks:
        if t not in MSED_TASKS:
            raise ConfigError(f"unknown task {t!r}; valid tasks: {', '.join(MSED_TASKS)}")
        if t in out:
            raise ConfigError(f"task {t!r} is listed twice")
        out[t] = list(MSED_TASKS[t])
    return out


@dataclass
class BackboneSpec:
    """An encoder: `kind` picks the transformers class, `config` is its HF config dict.

    `pretrained` (hub id or local folder) is loaded with `from_pretrained` when the model is first
    built (`SyDES(config, load_pretrained=True)`); checkpoints store the trained weights themselves.
    """

    kind: str
    config: dict[str, Any]
    pretrained: str | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])


@dataclass
class DecoderConfig:
    """The image-guided text decoder (CoCa multimodal transformer)."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    output_dim: int = 512  # text_projection width = pooled feature width = head input
    # Zero the last projection of every residual branch at init, so that a fresh decoder starts as the
    # identity on the text tokens and the image enters as training finds it useful (edge preset; the
    # reference keeps xavier, and imported weights overwrite the init anyway).
    zero_init_residual: bool = False


@dataclass
class ImageDecoderConfig:
    """The training-only text-guided MAE image decoder."""

    dim: int = 512
    blocks: int = 8
    heads: int = 8
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75


@dataclass
class TokenizerSpec:
    kind: str = "clip"  # "clip" | "wordpiece"
    max_length: int = 77
    # The text the model reads (sdk.text_fields.TextFields): these columns' non-empty values joined by the
    # separator. The reference reads the Caption alone; configs written before these keys load with it.
    text_fields: list[str] = field(default_factory=lambda: ["Caption"])
    text_separator: str = " "

    def text_recipe(self) -> TextFields:
        """The recorded text fields as a TextFields (ConfigError where they are invalid)."""
        return TextFields.from_dict({"text_fields": self.text_fields, "text_separator": self.text_separator})

    def set_text_recipe(self, recipe: TextFields) -> None:
        """Record a TextFields (the columns and separator the model is trained to read)."""
        self.text_fields, self.text_separator = list(recipe.fields), recipe.separator


@dataclass
class SydesConfig:
    preset: str
    vision: BackboneSpec
    text: BackboneSpec
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_decoder: ImageDecoderConfig = field(default_factory=ImageDecoderConfig)
    latent_dim: int = 512
    tasks: dict[str, list[str]] = field(default_factory=lambda: task_labels(("sentiment",)))
    preprocess: dict[str, Any] = field(default_factory=preprocess_dict)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    dropout: float = 0.1
    # Valid label combinations of the training data (sdk.labels.LabelStructure.to_dict()), or None.
    label_structure: dict[str, Any] | None = None
    # Edge addition (not in the reference): the heads also see a summary of the global view's patch tokens
    # (mean and max -> LayerNorm -> Linear -> GELU), concatenated to the decoder's pooled text feature.
    image_summary: bool = False
    # Training only (not in the reference): a linear head per task on each modality alone, whose CE joins the
    # fused one (extra_heads.UnimodalHeads; the recipe's `unimodal` variant). The inference path never reads them.
    unimodal_heads: bool = False
    # Not in the reference: the structured tasks' logits are the log-marginals of a joint output over the
    # label_structure's combinations (extra_heads.JointHead; the recipe's `joint-head` variant). Needs the table.
    joint_head: bool = False
    version: int = CONFIG_VERSION

    # ---- derived sizes --------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.vision.config.get("image_size", 224))

    @property
    def patch_size(self) -> int:
        return int(self.vision.config["patch_size"])

    @property
    def num_patches(self) -> int:
        """Patch tokens per 224x224 view (196 for ViT-B/16, 256 for a /14 at 224)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        """What the task heads read: the pooled decoder output [O], with the global-view summary [2 * O]."""
        return self.decoder.output_dim * (2 if self.image_summary else 1)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    # ---- validation -----------------------------------------------------------------------------
    def validate(self) -> SydesConfig:
        """Raise ConfigError naming the first inconsistency; returns self."""
        if self.vision.kind not in VISION_KINDS:
            raise ConfigError(f"unknown vision kind {self.vision.kind!r}; valid: {', '.join(VISION_KINDS)}")
        if self.text.kind not in TEXT_KINDS:
            raise ConfigError(f"unknown text kind {self.text.kind!r}; valid: {', '.join(TEXT_KINDS)}")
        if self.tokenizer.kind not in TOKENIZER_KINDS:
            raise ConfigError(
                f"unknown tokenizer kind {self.tokenizer.kind!r}; valid: {', '.join(TOKENIZER_KINDS)}"
            )
        want_tok = "clip" if self.text.kind == "clip" else "wordpiece"
        if self.tokenizer.kind != want_tok:
            raise ConfigError(
                f"text kind {self.text.kind!r} needs tokenizer kind {want_tok!r}, got {self.tokenizer.kind!r}"
            )
        for name, spec in (("vision", self.vision), ("text", self.text)):
            for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
                if key not in spec.config:
                    raise ConfigError(f"{name} backbone config lacks {key!r}")
        if "patch_size" not in self.vision.config:
            raise ConfigError("vision backbone config lacks 'patch_size'")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"vision image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        g, c = int(self.preprocess.get("global_size", 0)), int(self.preprocess.get("canvas_size", 0))
        if g != self.image_size or c != 2 * self.image_size:
            raise ConfigError(
                f"preprocess sizes (global {g}, canvas {c}) must be the encoder's image size "
                f"{self.image_size} and twice it ({2 * self.image_size}) for the 2x2 tiler"
            )
        from sdk.preprocess import PreprocessConfig  # numpy + pillow only: cheap

        PreprocessConfig.from_dict(self.preprocess)  # one validation, the runtime's own (ConfigError)
        # The reference's quirk: ln2_post normalises vision tokens at the decoder width.
        if self.decoder.width != self.vision.hidden_size:
            raise ConfigError(
                f"decoder width ({self.decoder.width}) must equal the vision width "
                f"({self.vision.hidden_size}): the decoder's memory is the vision tokens themselves"
            )
        if self.decoder.width % self.decoder.heads:
            raise ConfigError(f"decoder width {self.decoder.width} is not divisible by heads {self.decoder.heads}")
        if self.image_decoder.dim % self.image_decoder.heads:
            raise ConfigError(
                f"image decoder dim {self.image_decoder.dim} is not divisible by heads {self.image_decoder.heads}"
            )
        if self.image_decoder.dim % 4:
            raise ConfigError("image decoder dim must be divisible by 4 (2-D sin-cos positions)")
        if self.latent_dim != self.image_decoder.dim:
            raise ConfigError(
                f"latent_dim ({self.latent_dim}) must equal the image decoder dim ({self.image_decoder.dim}): "
                "the consistency loss compares the aggregated decoder feature with the image latent"
            )
        # 0.0 is the reference's own fine-tune setting (no masking when fine-tuning)
        if not 0.0 <= self.image_decoder.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {self.image_decoder.mask_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if min(self.decoder.layers, self.decoder.heads, self.image_decoder.blocks, self.decoder.output_dim) < 1:
            raise ConfigError("decoder layers/heads/output_dim and image decoder blocks must be >= 1")
        if not self.tasks:
            raise ConfigError(f"at least one task is needed; valid tasks: {', '.join(MSED_TASKS)}")
        for t, labels in self.tasks.items():
            if t not in MSED_TASKS:
                raise ConfigError(f"unknown task {t!r}; valid tasks: {', '.join(MSED_TASKS)}")
            if len(labels) < 2 or len(set(labels)) != len(labels):
                raise ConfigError(f"task {t!r} needs >= 2 distinct label names, got {labels}")
        if self.label_structure is not None:
            from sdk.labels import LabelStructure

            LabelStructure.from_dict(self.label_structure, self.tasks)  # ConfigError naming the problem
        elif self.joint_head:
            raise ConfigError("joint_head needs a label_structure (the valid label combinations it scores)")
        max_pos = self.text.config.get("max_position_embeddings")
        if max_pos is not None and self.tokenizer.max_length > int(max_pos):
            raise ConfigError(
                f"tokenizer max_length {self.tokenizer.max_length} exceeds the text encoder's "
                f"max_position_embeddings {max_pos}"
            )
        if self.tokenizer.max_length < 2:
            raise ConfigError("tokenizer max_length must be >= 2 (the text CLS token is removed)")
        self.tokenizer.text_recipe()
        return self

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SydesConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"a SyDES config must be a JSON object, got {type(d).__name__}")
        d = copy.deepcopy(d)
        version = d.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config version {version} is not supported (this code reads {CONFIG_VERSION})")
        try:
            cfg = cls(
                preset=str(d.pop("preset")),
                vision=BackboneSpec(**d.pop("vision")),
                text=BackboneSpec(**d.pop("text")),
                decoder=DecoderConfig(**d.pop("decoder", {})),
                image_decoder=ImageDecoderConfig(**d.pop("image_decoder", {})),
                latent_dim=int(d.pop("latent_dim", 512)),
                tasks={str(k): [str(x) for x in v] for k, v in d.pop("tasks").items()},
                preprocess=dict(d.pop("preprocess", preprocess_dict())),
                tokenizer=TokenizerSpec(**d.pop("tokenizer", {})),
                dropout=float(d.pop("dropout", 0.1)),
                label_structure=d.pop("label_structure", None),
                image_summary=bool(d.pop("image_summary", False)),
                unimodal_heads=bool(d.pop("unimodal_heads", False)),
                joint_head=bool(d.pop("joint_head", False)),
            )
        except KeyError as e:
            raise ConfigError(f"SyDES config lacks the field {e.args[0]!r}") from None
        except TypeError as e:  # unknown keys inside a sub-config
            raise ConfigError(f"invalid SyDES config: {e}") from None
        if d:
            raise ConfigError(f"unknown SyDES config fields: {', '.join(sorted(d))}")
        return cfg.validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SydesConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def from_file(cls, path: str | Path) -> SydesConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return cls.from_json(path.read_text(encoding="utf-8"))
