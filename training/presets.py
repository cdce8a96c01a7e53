"""Preset factories: each returns a validated `SydesConfig`.

- `reference(tasks=("sentiment",))`: the published SyDES (CLIP ViT-B/16 + CLIP text, 12-layer 768-wide
  decoder), one model per task in the reference; any task set works here.
- `edge(tasks=all three)`: DINOv2-S/14 at 224 (256 patches/view) + MiniLM-L6 (BERT, 384-d) with a
  4-layer 384-wide decoder and three heads.
- `tiny_clip(...)`, `tiny_vit_bert(...)`: random tiny configs for tests.

The numbers are written here (not read from files at run time) so that a config is reproducible from
code alone; the CLIP values are those of ../shared/sydes-reference-clip-config.json.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sdk.errors import ConfigError

from .config import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MSED_TASKS,
    BackboneSpec,
    DecoderConfig,
    ImageDecoderConfig,
    SydesConfig,
    TokenizerSpec,
    preprocess_dict,
    task_labels,
)

ALL_TASKS: tuple[str, ...] = tuple(MSED_TASKS)
CLIP_VOCAB = 49408
CLIP_BOS, CLIP_EOS = 49406, 49407
BERT_UNCASED_VOCAB = 30522


def _clip_vision(hidden: int, layers: int, heads: int, intermediate: int, image_size: int, patch: int) -> dict:
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_channels": 3,
        "image_size": image_size,
        "patch_size": patch,
        "hidden_act": "quick_gelu",  # CLIP's activation: the HF config selects QuickGELU from this
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "projection_dim": 512,
    }


def _clip_text(hidden: int, layers: int, heads: int, intermediate: int, vocab: int, max_pos: int) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": max_pos,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "projection_dim": 512,
        "pad_token_id": 1,
        "bos_token_id": min(CLIP_BOS, vocab - 2),
        "eos_token_id": min(CLIP_EOS, vocab - 1),
    }


def _bert(hidden: int, layers: int, heads: int, intermediate: int, vocab: int, max_pos: int) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": max_pos,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "layer_norm_eps": 1e-12,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "pad_token_id": 0,
    }


def _dinov2(hidden: int, layers: int, heads: int, image_size: int, patch: int) -> dict:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "mlp_ratio": 4,
        "num_channels": 3,
        "image_size": image_size,  # position table sized for 224 -> no interpolation at run time
        "patch_size": patch,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "qkv_bias": True,
        "use_swiglu_ffn": False,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "initializer_range": 0.02,
    }


def _vit(hidden: int, layers: int, heads: int, intermediate: int, image_size: int, patch: int) -> dict:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "num_channels": 3,
        "image_size": image_size,
        "patch_size": patch,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "qkv_bias": True,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
    }


def reference(
    tasks: Sequence[str] | str = ("sentiment",),
    *,
    vision_pretrained: str | None = None,
    text_pretrained: str | None = None,
) -> SydesConfig:
    """The published SyDES at the reference size (CLIP ViT-B/16 + CLIP text; 236 GFLOP/post/task).

    `vision_pretrained` / `text_pretrained`: a hub id (e.g. "openai/clip-vit-base-patch16") or a local
    folder loaded with `from_pretrained` when the model is first built.
    """
    return SydesConfig(
        preset="reference",
        vision=BackboneSpec("clip", _clip_vision(768, 12, 12, 3072, 224, 16), vision_pretrained),
        text=BackboneSpec("clip", _clip_text(512, 12, 8, 2048, CLIP_VOCAB, 77), text_pretrained),
        decoder=DecoderConfig(width=768, layers=12, heads=12, mlp_ratio=4.0, output_dim=512),
        image_decoder=ImageDecoderConfig(dim=512, blocks=8, heads=8, mlp_ratio=4.0, mask_ratio=0.75),
        latent_dim=512,
        tasks=task_labels(tasks),
        preprocess=preprocess_dict(CLIP_MEAN, CLIP_STD, 224, 448),
        tokenizer=TokenizerSpec("clip", 77),
        dropout=0.1,
    ).validate()


def edge(
    tasks: Sequence[str] | str = ALL_TASKS,
    *,
    vision_pretrained: str | None = None,
    text_pretrained: str | None = None,
    max_length: int = 128,
    image_summary: bool = True,
) -> SydesConfig:
    """DINOv2-S/14 + MiniLM-L6, one shared trunk with a head per task.

    `image_summary`: the heads also see the global view's pooled patch tokens (an edge addition: on
    msed-mini the decoder alone let the image add less than that plain summary does; docs/msed_report.md).

    Decoder: width 384 (it must equal the vision width), 4 layers, 6 heads (64-d heads like the
    reference's). Its cost is dominated by the K/V projections of the 5 x 256 = 1280 image tokens in
    every cross-attention layer, so 4 layers keep it well under the image encoder's cost while keeping
    the reference's self-attention / cross-attention interleaving. Image decoder (training only):
    dim 256, 4 blocks, 8 heads; latent_dim follows it (256).
    """
    return SydesConfig(
        preset="edge",
        vision=BackboneSpec("dinov2", _dinov2(384, 12, 6, 224, 14), vision_pretrained),
        text=BackboneSpec("bert", _bert(384, 6, 12, 1536, BERT_UNCASED_VOCAB, 512), text_pretrained),
        decoder=DecoderConfig(width=384, layers=4, heads=6, mlp_ratio=4.0, output_dim=384, zero_init_residual=True),
        image_decoder=ImageDecoderConfig(dim=256, blocks=4, heads=8, mlp_ratio=4.0, mask_ratio=0.75),
        latent_dim=256,
        tasks=task_labels(tasks),
        preprocess=preprocess_dict(IMAGENET_MEAN, IMAGENET_STD, 224, 448),
        tokenizer=TokenizerSpec("wordpiece", max_length),
        dropout=0.1,
        image_summary=image_summary,
    ).validate()


def tiny_clip(
    tasks: Sequence[str] | str = ALL_TASKS,
    *,
    image_size: int = 224,
    patch_size: int = 32,
    vocab_size: int = CLIP_VOCAB,
    hidden: int = 32,
    layers: int = 2,
) -> SydesConfig:
    """A random tiny CLIP-style model for tests (takes the standard 224/448 inputs by default).

    The vocabulary defaults to CLIP's so that real tokenizer ids can be fed; pass a small
    `vocab_size` for hand-made ids.
    """
    heads = 4
    return SydesConfig(
        preset="tiny_clip",
        vision=BackboneSpec("clip", _clip_vision(hidden, layers, heads, 2 * hidden, image_size, patch_size)),
        text=BackboneSpec("clip", _clip_text(hidden, layers, heads, 2 * hidden, vocab_size, 77)),
        decoder=DecoderConfig(width=hidden, layers=layers, heads=heads, mlp_ratio=2.0, output_dim=hidden),
        image_decoder=ImageDecoderConfig(dim=hidden, blocks=2, heads=heads, mlp_ratio=2.0, mask_ratio=0.75),
        latent_dim=hidden,
        tasks=task_labels(tasks),
        preprocess=preprocess_dict(CLIP_MEAN, CLIP_STD, image_size, 2 * image_size),
        tokenizer=TokenizerSpec("clip", 77),
        dropout=0.1,
    ).validate()


def tiny_vit_bert(
    tasks: Sequence[str] | str = ALL_TASKS,
    *,
    image_size: int = 224,
    patch_size: int = 32,
    vocab_size: int = BERT_UNCASED_VOCAB,
    hidden: int = 32,
    layers: int = 2,
    max_length: int = 32,
    vision_kind: str = "vit",
) -> SydesConfig:
    """A random tiny ViT (or DINOv2 with `vision_kind="dinov2"`) + BERT model for tests."""
    heads = 4
    if vision_kind == "vit":
        vision = _vit(hidden, layers, heads, 2 * hidden, image_size, patch_size)
    elif vision_kind == "dinov2":
        vision = _dinov2(hidden, layers, heads, image_size, patch_size)
    else:
        raise ConfigError(f"tiny_vit_bert vision_kind must be 'vit' or 'dinov2', got {vision_kind!r}")
    return SydesConfig(
        preset="tiny_vit_bert",
        vision=BackboneSpec(vision_kind, vision),
        text=BackboneSpec("bert", _bert(hidden, layers, heads, 2 * hidden, vocab_size, max(128, max_length))),
        decoder=DecoderConfig(width=hidden, layers=layers, heads=heads, mlp_ratio=2.0, output_dim=hidden),
        image_decoder=ImageDecoderConfig(dim=hidden, blocks=2, heads=heads, mlp_ratio=2.0, mask_ratio=0.75),
        latent_dim=hidden,
        tasks=task_labels(tasks),
        preprocess=preprocess_dict(IMAGENET_MEAN, IMAGENET_STD, image_size, 2 * image_size),
        tokenizer=TokenizerSpec("wordpiece", max_length),
        dropout=0.1,
    ).validate()


PRESETS: dict[str, Callable[..., SydesConfig]] = {
    "reference": reference,
    "edge": edge,
    "tiny_clip": tiny_clip,
    "tiny_vit_bert": tiny_vit_bert,
}


def get_preset(name: str) -> Callable[..., SydesConfig]:
    """The factory named `name` (for the CLI); unknown names list the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
