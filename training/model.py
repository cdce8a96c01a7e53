"""SyDES in torch: the inference path (what an exported engine computes) and the training-only parts.

Shapes use B = batch, S = view size (224), P = patches per view, Dv / Dt = vision / text widths,
W = decoder width (= Dv), O = decoder output width, L = token length, C = classes.

Inference: `forward` = `head(encode(...))`, the seam where callers cut (export's shared-encoder graph,
the feature cache, training with cached encoder outputs):
  encode (backbone) -> Features
    tiler           u8 global [B,S,S,3], canvas [B,2S,2S,3] -> global [B,3,S,S], tiles [B,4,3,S,S]
    image_features  5 views as one [B*5] pass of the image encoder -> [B,5,1+P,Dv] (what the cache stores)
    ln1_post        on all tokens -> memory = the patch tokens [B,5P,Dv], global view first
    encode_text     text encoder -> text CLS (EOS / [SEP] at sum(mask)-1) removed -> [B,L-1,Dt], mask [B,L-1]
  head -> {task: logits}
    decode          text_proj -> ln3_post = queries; ln2_post(memory) = memory; causal decoder -> [B,L-1,O]
    pool            masked mean / max / attention pooling -> multipool_proj -> ln4_post -> [B,O]
    classify        (+ the global-view summary) per task: proj2(proj1(x) + x) -> logits [B,C]
    joint           (joint_head) scores of the K valid label combinations -> per-task log-marginals [B,C]
Training (MAE's split): `forward_encoder` (pretrain: the tiles' patches masked before the encoder),
`forward_decoder` (the text-guided MIM image decoder), `forward_loss` (training.losses).
Only the patch tokens reach the logits: the global view's CLS (and CLIP's post_layernorm) feed
nothing but the contrastive latents, as in the reference.

Module names mirror the reference's state-dict keys without its `base_model.` prefix; its `proj1/proj2`
are `heads.<task>.proj1/proj2` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sdk.errors import ConfigError

from .backbones import TextEncoder, VisionEncoder
from .checkpoints import Checkpointable
from .config import SydesConfig
from .extra_heads import JointHead, UnimodalHeads
from .losses import LOSSES, label_combos, loss_weights, sydes_losses
from .modules import (
    Attention,
    CombinedAggregator,
    EmbedToLatents,
    GateKV,
    ImageDecoder,
    TaskHead,
    TaskHeads,
    TextDecoder,
    Tiler,
    init_module,
    masked_mean,
    random_masking,
)
from .options import check_stage
from .seam import Features, MaskedFeatures

PARAM_GROUPS = ("image_encoder", "text_encoder", "text_decoder", "image_decoder", "other")
BACKBONES = ("image_encoder", "text_encoder")  # pretrained (or their library's own init): the rule skips them


class SyDES(Checkpointable, nn.Module):
    """The SyDES model for one config (any backbone kinds, one or more task heads)."""

    config_class = SydesConfig
    family = "SyDES"

    def __init__(self, config: SydesConfig, *, load_pretrained: bool = False) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dv, dt = config.vision.hidden_size, config.text.hidden_size
        dec, idec = config.decoder, config.image_decoder
        p, patch = config.num_patches, config.patch_size
        out = dec.output_dim

        self.tiler = Tiler(config.image_size, tuple(config.preprocess["mean"]), tuple(config.preprocess["std"]))
        self.image_encoder = VisionEncoder(config.vision, load_pretrained)
        self.text_encoder = TextEncoder(config.text, load_pretrained)

        # training-only: text-guided MAE image decoder with gated keys/values, aggregator, latents
        self.text_kv_proj = nn.Linear(dt, idec.dim)
        self.img_kv_proj = nn.Linear(dv, idec.dim)
        self.text_kv_ln = nn.LayerNorm(idec.dim)
        self.img_kv_ln = nn.LayerNorm(idec.dim)
        self.gate_kv = GateKV(idec.heads, idec.dim, init_bias=-3.0)
        self.text_to_patch_queries = nn.Parameter(torch.randn(1, p, idec.dim) * 0.02)
        self.text2patch_attn = Attention(idec.dim, idec.heads)
        self.image_decoder = ImageDecoder(dv, idec.dim, idec.blocks, idec.heads, idec.mlp_ratio, p, patch)
        self.aggregator = CombinedAggregator(idec.dim, idec.dim // 2, views=4)
        self.text_to_latents = EmbedToLatents(dt, config.latent_dim)
        self.img_to_latents = EmbedToLatents(dv, config.latent_dim)

        # inference path
        self.text_proj = nn.Linear(dt, dec.width)
        self.ln1_post = nn.LayerNorm(dv)
        self.ln2_post = nn.LayerNorm(dec.width)
        self.text_decoder = TextDecoder(dec.width, dec.layers, dec.heads, dec.mlp_ratio, out)
        self.ln3_post = nn.LayerNorm(dec.width)
        self.ln4_post = nn.LayerNorm(out)
        self.pool_attn_q = nn.Parameter(torch.zeros(1, out))
        self.multipool_proj = nn.Sequential(
            nn.LayerNorm(3 * out), nn.Linear(3 * out, out), nn.GELU(), nn.Dropout(config.dropout)
        )
        if config.image_summary:  # [mean, max] of the global view's patch tokens -> [B, O]
            self.image_summary = nn.Sequential(nn.LayerNorm(2 * dv), nn.Linear(2 * dv, out), nn.GELU())
        self.heads = TaskHeads({t: TaskHead(config.head_dim, len(labels), config.dropout)
                                for t, labels in config.tasks.items()})
        self.temperature = nn.Parameter(torch.tensor([1.0]))
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / 0.07))

        self.init_weights()
        if config.unimodal_heads:
            self.add_unimodal_heads()
        if config.joint_head:
            self.add_joint_head()

    def init_weights(self) -> None:
        """`init_module` through the module tree (the backbones excepted), then the two exceptions the recipe
        needs: the pooling query N(0, 0.02), and with `zero_init_residual` every decoder block's last
        projections zero, so that each block starts as the identity (see DecoderConfig)."""
        for name, m in self.named_modules():
            if name.split(".", 1)[0] not in BACKBONES:
                init_module(m)
        nn.init.normal_(self.pool_attn_q, std=0.02)
        if self.config.decoder.zero_init_residual:
            for blk in (*self.text_decoder.resblocks, *self.text_decoder.cross_attn):
                nn.init.zeros_(blk.attn.out_proj.weight)
                nn.init.zeros_(blk.mlp.c_proj.weight)

    def add_unimodal_heads(self) -> None:
        """Attach the training-only extra_heads.UnimodalHeads (image: summarise_image's output; text: its tokens) and
        set config.unimodal_heads. Created after the rest, so the other modules' init is the same without them."""
        c = self.config
        c.unimodal_heads = True
        image_dim = c.decoder.output_dim if c.image_summary else c.vision.hidden_size
        self.unimodal = UnimodalHeads(image_dim, c.text.hidden_size, {t: len(v) for t, v in c.tasks.items()})
        self.unimodal.apply(init_module)

    def add_joint_head(self) -> None:
        """Attach extra_heads.JointHead (after the rest, like add_unimodal_heads) and set config.joint_head."""
        self.joint = JointHead.for_config(self.config)
        self.config.joint_head = True

    # ---- backbone: encode -> Features ----------------------------------------------------------
    def image_features(self, *, layer: int | None = None, **views: torch.Tensor) -> torch.Tensor:
        """Pixels (see views_from_inputs) -> the image encoder's outputs [B, 5, 1+P, Dv], view 0 = global, then
        tiles TL, TR, BL, BR, before ln1_post: the cut point of training.feature_cache. `layer=k`: the hidden
        state after its first k layers instead (a cache before trained last layers: VisionEncoder.encode_from)."""
        g, t = self.views_from_inputs(**views)
        b, enc = g.shape[0], self.image_encoder
        stacked = torch.cat([g.unsqueeze(1), t], dim=1).reshape(b * 5, *g.shape[1:])  # one [B*5] pass
        out = enc(stacked) if layer is None else enc.encode_layers(enc.embed(stacked), 0, layer)  # [B*5, 1+P, Dv]
        return out.reshape(b, 5, *out.shape[1:])

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
               image_features: torch.Tensor | None = None, text_hidden: torch.Tensor | None = None,
               image_hidden: torch.Tensor | None = None, image_hidden_layer: torch.Tensor | int | None = None,
               **views: torch.Tensor) -> Features:
        """ids, mask [B, L] and pixels / views, or cached `image_features` [B, V, 1+P, Dv] (image_features'
        output, V = 5 or the cache's 1-view ablations) or `image_hidden` after `image_hidden_layer` layers
        (image_features(layer=k); the remaining, trainable layers run here), and `text_hidden` [B, L, Dt] (the
        text encoder's output) -> Features."""
        if image_hidden is not None:
            if image_features is not None or image_hidden_layer is None:
                raise ConfigError("image_hidden= needs image_hidden_layer= and no image_features=")
            image_features = self.image_encoder.encode_from(image_hidden.to(self.ln1_post.weight.dtype),
                                                            image_hidden_layer)
        if image_features is None:
            image_features = self.image_features(**views)
        elif views:
            raise ConfigError("pass cached image features or pixels / views, not both")
        hidden = self.ln1_post(image_features.to(self.ln1_post.weight.dtype))  # [B, V, 1+P, Dv]
        b, _, _, d = hidden.shape
        text_cls, text_tokens, mask = self.encode_text(input_ids, attention_mask, text_hidden)
        return Features(memory=hidden[:, :, 1:].reshape(b, -1, d), image_cls=hidden[:, 0, 0], text_cls=text_cls,
                        text_tokens=text_tokens, text_mask=mask)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids, mask [B, L] (or the text encoder's cached output `hidden` [B, L, Dt]) -> (text CLS [B, Dt],
        tokens without it [B, L-1, Dt], mask [B, L-1]).

        The text CLS is the last attended position (CLIP's EOS; BERT's [SEP]): index sum(mask) - 1.
        It is removed from the sequence by a gather of the other L-1 positions (in order), and the
        mask becomes the input mask with that position zeroed, cut to its first L-1 columns (exactly
        the reference's semantics, written with tensor ops only so that it exports).
        """
        if hidden is None:
            hidden = self.text_encoder(input_ids, attention_mask)  # [B, L, Dt]
        elif tuple(hidden.shape[:2]) != tuple(input_ids.shape):
            raise ConfigError(f"cached text features {tuple(hidden.shape)} do not match ids {tuple(input_ids.shape)}")
        b, length, d = hidden.shape
        eos = (attention_mask.long().sum(dim=1) - 1).clamp(min=0)  # [B]
        text_cls = torch.gather(hidden, 1, eos.view(b, 1, 1).expand(b, 1, d)).squeeze(1)
        j = torch.arange(length - 1, device=hidden.device).unsqueeze(0)  # [1, L-1]
        keep = j + (j >= eos.unsqueeze(1)).long()  # skip the EOS position
        tokens = torch.gather(hidden, 1, keep.unsqueeze(-1).expand(b, length - 1, d))
        pos = torch.arange(length, device=hidden.device).unsqueeze(0)
        new_mask = attention_mask * (pos != eos.unsqueeze(1)).to(attention_mask.dtype)
        return text_cls, tokens, new_mask[:, : length - 1]

    # ---- head: Features -> logits ----------------------------------------------------------------
    def head(self, f: Features) -> dict[str, torch.Tensor]:
        """Features -> {task: logits [B, C]}: decode, pool, classify."""
        return self.head_outputs(f)[0]

    def head_outputs(self, f: Features) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Features -> ({task: logits [B, C]}, joint-head scores [B, K] or None; its log-marginals are the logits)."""
        pooled = self.pool(self.decode(f.memory, f.text_tokens, f.memory_padding), f.text_mask)
        if self.config.image_summary:
            pooled = torch.cat([pooled, self.summarise_image(f.memory)], -1)
        logits = self.heads(pooled)
        if not self.config.joint_head:
            return logits, None
        scores = self.joint.scores(pooled, logits)
        return {**logits, **self.joint.marginals(scores)}, scores

    def decode(self, memory: torch.Tensor, text_tokens: torch.Tensor,
               image_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """memory [B, M, Dv], text tokens [B, L-1, Dt] -> decoder output [B, L-1, O]."""
        queries = self.ln3_post(self.text_proj(text_tokens))  # [B, L-1, W]
        return self.text_decoder(self.ln2_post(memory), queries, image_key_padding_mask)

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens [B, L-1, O], mask [B, L-1] (1 = real) -> pooled [B, O]."""
        keep = mask.bool()
        mean = masked_mean(tokens, mask)
        neg = torch.finfo(tokens.dtype).min
        mx = tokens.masked_fill(~keep.unsqueeze(-1), neg).max(dim=1).values
        q = self.pool_attn_q.unsqueeze(0).expand(tokens.shape[0], -1, -1)  # [B, 1, O]
        scores = (q @ tokens.transpose(1, 2)).masked_fill(~keep.unsqueeze(1), neg)  # [B, 1, L-1]
        attn = (torch.softmax(scores, dim=-1) @ tokens).squeeze(1)
        return self.ln4_post(self.multipool_proj(torch.cat([mean, mx, attn], dim=-1)))

    def summarise_image(self, memory: torch.Tensor) -> torch.Tensor:
        """memory [B, V*P, Dv] -> the global view's summary [B, O] (image_summary), or its mean patch [B, Dv]."""
        g = memory[:, : self.config.num_patches]  # [B, P, Dv] (1 token for the zero-image ablation)
        if not self.config.image_summary:
            return g.mean(dim=1)
        return self.image_summary(torch.cat([g.mean(dim=1), g.amax(dim=1)], dim=-1))

    def views_from_inputs(self, global_pixels: torch.Tensor | None = None, canvas_pixels: torch.Tensor | None = None,
                          global_view: torch.Tensor | None = None, tiles: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Either uint8 canvases or float views -> (global [B,3,S,S], tiles [B,4,3,S,S])."""
        if global_pixels is not None and canvas_pixels is not None and global_view is None and tiles is None:
            return self.tiler(global_pixels, canvas_pixels)
        if global_view is not None and tiles is not None and global_pixels is None and canvas_pixels is None:
            return global_view, tiles
        raise ConfigError(
            "pass either global_pixels= and canvas_pixels= (uint8 NHWC) or global_view= and tiles= (float)"
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_probs: bool = False,
                **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """ids, mask [B, L] + the image (global_pixels= / canvas_pixels= uint8, global_view= / tiles= float,
        or cached image_features= [B, 5, 1+P, Dv] / image_hidden=) -> {task: logits [B, C]} in config order (softmax
        probabilities with return_probs=True)."""
        logits = self.head(self.encode(input_ids, attention_mask, **inputs))
        if return_probs:
            return {k: torch.softmax(v, dim=-1) for k, v in logits.items()}
        return logits

    def forward_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **views: Any) -> dict:
        """forward(...) with softmax applied (what an exported graph outputs as probs_<task>)."""
        return self.forward(input_ids, attention_mask, return_probs=True, **views)

    # ---- training-only parts --------------------------------------------------------------------
    def forward_encoder(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                        image_features: torch.Tensor | None = None, text_hidden: torch.Tensor | None = None,
                        **views: torch.Tensor) -> MaskedFeatures:
        """MIM encoder (pretrain): the global view whole (or its cached features, `image_features[:, 0]`), each
        tile with `image_decoder.mask_ratio` of its patches dropped before the encoder. The decoder memory
        holds the kept patches in place and mask tokens elsewhere, flagged in `memory_padding`."""
        g, t = self.views_from_inputs(**views)  # the tiles' pixels are needed: masking, reconstruction target
        b = t.shape[0]
        enc = self.image_encoder
        hidden_g = self.ln1_post(enc(g) if image_features is None else image_features[:, 0])  # [B, 1+P, Dv]
        emb = enc.embed(t.reshape(b * 4, *t.shape[2:]))  # [B*4, 1+P, Dv]
        kept, masks, ids_restore = random_masking(emb[:, 1:], self.config.image_decoder.mask_ratio)
        tile_hidden = self.ln1_post(enc.encode(torch.cat([emb[:, :1], kept], dim=1)))  # [B*4, 1+K, Dv]
        vis = tile_hidden[:, 1:]
        p, d = emb.shape[1] - 1, vis.shape[-1]
        filled = torch.cat([vis, self.image_decoder.mask_token_img.expand(b * 4, p - vis.shape[1], -1)], dim=1)
        tile_memory = torch.gather(filled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # [B*4, P, Dv]
        padding = torch.cat([torch.zeros(b, p, dtype=torch.bool, device=emb.device), masks.bool().view(b, -1)], 1)
        text_cls, text_tokens, mask = self.encode_text(input_ids, attention_mask, text_hidden)
        return MaskedFeatures(
            memory=torch.cat([hidden_g[:, 1:], tile_memory.reshape(b, -1, d)], dim=1),  # [B, 5P, Dv]
            image_cls=hidden_g[:, 0], text_cls=text_cls, text_tokens=text_tokens, text_mask=mask,
            memory_padding=padding, tiles=t, tile_hidden=tile_hidden, tile_memory=tile_memory,
            recon_mask=masks, ids_restore=ids_restore)

    def forward_decoder(self, f: MaskedFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """The text-guided MIM image decoder: per-head gated mix of text-derived and image keys / values ->
        (pixel predictions [B*4, P, p*p*3], aggregated latents [B, Di])."""
        b = f.text_tokens.shape[0]
        txt = self.text_kv_ln(self.text_kv_proj(f.text_tokens)).repeat_interleave(4, dim=0)  # [B*4, L-1, Di]
        img = self.img_kv_ln(self.img_kv_proj(f.tile_memory))  # [B*4, P, Di]
        queries = self.text_to_patch_queries.expand(b * 4, -1, -1)
        # the reference attends over all text positions here (no padding mask)
        kv = self.gate_kv(img, self.text2patch_attn(queries, txt, txt))
        pred, align = self.image_decoder(f.tile_hidden, kv, f.ids_restore)
        return pred, self.aggregator(align.view(b, 4, -1))

    def forward_train(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, stage: str = "finetune",
                      need_logits: bool = True, **inputs: torch.Tensor) -> dict[str, Any]:
        """The reference's training forward: pretrain = forward_encoder (MIM) + forward_decoder; fine-tune =
        encode (inference path). `inputs`: pixels / views and optionally cached image_features= / text_hidden=
        (pretrain uses the cache for the global view only). -> latents, logits and, pretraining, the MIM
        tensors forward_loss needs."""
        check_stage(stage)
        out: dict[str, Any] = {}
        if stage == "pretrain":
            f: Features = self.forward_encoder(input_ids, attention_mask, **inputs)
            pred, dec_latents = self.forward_decoder(f)
            out.update(recon_pred=pred, recon_mask=f.recon_mask, dec_latents=dec_latents, tiles=f.tiles)
        else:
            f = self.encode(input_ids, attention_mask, **inputs)
        out["img_latents"] = self.img_to_latents(f.image_cls)
        out["text_latents"] = self.text_to_latents(f.text_cls)
        if need_logits:
            out["logits"], out["joint_scores"] = self.head_outputs(f)
            if self.config.unimodal_heads:
                out["unimodal_logits"] = self.unimodal(self.summarise_image(f.memory), f.text_tokens, f.text_mask)
        return out

    def training_losses(
        self,
        batch_inputs: Mapping[str, torch.Tensor],
        labels: Mapping[str, torch.Tensor] | None = None,
        stage: str = "pretrain",
        weights: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """forward_train + forward_loss on one batch: `batch_inputs` holds input_ids, attention_mask and the
        image (uint8 canvases, float views, or cached features); `labels` {task: [B]}. Default weights:
        PRETRAIN_WEIGHTS / FINETUNE_WEIGHTS."""
        w = loss_weights(stage, weights)
        labels = dict(labels or {})
        unknown_tasks = set(labels) - set(self.config.tasks)
        if unknown_tasks:
            raise ConfigError(f"labels for unknown tasks {sorted(unknown_tasks)}; model tasks: {', '.join(self.config.tasks)}")
        need_logits = bool(labels) and w["ce"] > 0
        inputs = dict(batch_inputs)
        out = self.forward_train(inputs.pop("input_ids"), inputs.pop("attention_mask"), stage=stage,
                                 need_logits=need_logits, **inputs)
        losses = self.forward_loss(out, labels if need_logits else {}, stage, structure=w["structure"] > 0)
        losses["loss"] = sum(w[k] * losses[k] for k in LOSSES)
        return losses

    def forward_loss(self, out: Mapping[str, Any], labels: Mapping[str, torch.Tensor], stage: str,
                     structure: bool = False) -> dict[str, torch.Tensor]:
        """forward_train's outputs -> unweighted losses (training.losses; `structure`: with the structure loss)."""
        combos = label_combos(self.config.label_structure, self.config.tasks, required=True) if structure else None
        joint = (self.joint.tasks, self.joint.combos) if self.config.joint_head else None
        return sydes_losses(out, labels, stage, temperature=self.temperature, logit_scale=self.logit_scale,
                            patch_size=self.config.patch_size, structure=combos, joint=joint)

    def forward_pretrain(self, batch_inputs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
        """training_losses(..., stage="pretrain") (the name docs/contracts.md uses)."""
        return self.training_losses(batch_inputs, labels, stage="pretrain")

    def reinit_last_head_layer(self) -> None:
        """Re-initialise proj2 of every head (xavier / zero), as the reference's fine-tune does by not
        loading `proj2.*` from the pretrain checkpoint."""
        for head in self.heads.values():
            head.proj2.apply(init_module)

    def freeze_image_encoder(self, frozen: bool = True, *, tail_blocks: int = 0) -> None:
        """Freeze (or not) the image encoder, but its last `tail_blocks` layers and output norm."""
        self.image_encoder.requires_grad_(not frozen)
        for m in self.image_encoder.tail_modules(tail_blocks) if frozen and tail_blocks else ():
            m.requires_grad_(True)

    def freeze_image_decoder(self, frozen: bool = True) -> None:
        """Freeze the MAE branch (the reference's fine-tune also freezes the text->patch queries)."""
        self.image_decoder.requires_grad_(not frozen)
        self.text_to_patch_queries.requires_grad_(not frozen)
        self.text2patch_attn.requires_grad_(not frozen)
        # the sin-cos positions stay fixed whatever happens
        self.image_decoder.decoder_pos_embed.requires_grad_(False)

    def param_group_name(self, name: str) -> str:
        return name.split(".", 1)[0] if name.split(".", 1)[0] in PARAM_GROUPS else "other"

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group (image_encoder, text_encoder, text_decoder, image_decoder, other)
        for per-module learning rates; groups with nothing trainable are empty lists."""
        groups: dict[str, list[nn.Parameter]] = {g: [] for g in PARAM_GROUPS}
        for name, p in self.named_parameters():
            if p.requires_grad:
                groups[self.param_group_name(name)].append(p)
        return groups

    # checkpoints: save_pretrained / from_pretrained / load_checked_state_dict come from training.checkpoints
