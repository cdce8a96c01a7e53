"""SyDES in torch: the inference path (what an exported engine computes) and the training-only parts.

Shapes use B = batch, S = view size (224), P = patches per view, Dv / Dt = vision / text widths,
W = decoder width (= Dv), O = decoder output width, L = token length, C = classes.

Inference (`forward`):
    tiler         u8 global [B,S,S,3], canvas [B,2S,2S,3] -> global [B,3,S,S], tiles [B,4,3,S,S]
    encode_image  5 views as one [B*5] pass -> ln1_post on all tokens -> drop CLS -> memory [B,5P,Dv]
    encode_text   text encoder -> text CLS (EOS / [SEP] at sum(mask)-1) removed -> [B,L-1,Dt], mask [B,L-1]
    decode        text_proj -> ln3_post = queries; ln2_post(memory) = memory; causal decoder -> [B,L-1,O]
    pool          masked mean / max / attention pooling -> multipool_proj -> ln4_post -> [B,O]
    heads         per task: proj2(proj1(x) + x) -> logits [B,C]
Only the patch tokens reach the logits: the global view's CLS (and CLIP's post_layernorm) feed
nothing but the contrastive latents, as in the reference.

Module names mirror the reference's state-dict keys without its `base_model.` prefix; its `proj1/proj2`
are `heads.<task>.proj1/proj2` here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sdk.errors import CheckpointError, ConfigError

from .backbones import TextEncoder, VisionEncoder
from .config import SydesConfig
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
)

PRETRAIN_WEIGHTS = {"itc": 0.5, "consistency": 0.5, "kl": 0.025, "recon": 1.0, "ce": 0.0}
FINETUNE_WEIGHTS = {"itc": 0.4, "consistency": 0.0, "kl": 0.0, "recon": 0.0, "ce": 1.0}
STAGES = ("pretrain", "finetune")
PARAM_GROUPS = ("image_encoder", "text_encoder", "text_decoder", "image_decoder", "other")
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"


def _xavier_init(module: nn.Module) -> None:
    """The reference's init for its own modules: xavier weights (>1-D), zero biases, LayerNorm 1/0."""
    for name, p in module.named_parameters():
        if "weight" in name and p.dim() > 1:
            nn.init.xavier_uniform_(p)
        elif "bias" in name:
            nn.init.zeros_(p)
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SyDES(nn.Module):
    """The SyDES model for one config (any backbone kinds, one or more task heads)."""

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
        head_in = out
        if config.image_summary:  # [mean, max] of the global view's patch tokens -> [B, O]
            self.image_summary = nn.Sequential(nn.LayerNorm(2 * dv), nn.Linear(2 * dv, out), nn.GELU())
            head_in = 2 * out
        self.heads = TaskHeads({t: TaskHead(head_in, len(labels), config.dropout) for t, labels in config.tasks.items()})
        self.temperature = nn.Parameter(torch.tensor([1.0]))
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / 0.07))

        nn.init.normal_(self.pool_attn_q, std=0.02)
        for m in (self.aggregator, self.text_to_latents, self.img_to_latents, self.ln1_post, self.ln2_post,
                  self.ln3_post, self.ln4_post, self.text_kv_proj, self.text_kv_ln, self.img_kv_proj,
                  self.img_kv_ln, self.text2patch_attn, self.text_proj, self.multipool_proj, self.heads,
                  *([self.image_summary] if config.image_summary else [])):
            _xavier_init(m)
        for blk in (*self.text_decoder.resblocks, *self.text_decoder.cross_attn):
            _xavier_init(blk)
            if dec.zero_init_residual:  # each block starts as the identity (see DecoderConfig)
                nn.init.zeros_(blk.attn.out_proj.weight)
                nn.init.zeros_(blk.mlp.c_proj.weight)

    # ---- inference stages -----------------------------------------------------------------------
    def encode_views(self, global_view: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        """global [B,3,S,S], tiles [B,4,3,S,S] -> ln1_post(hidden) [B, 5, 1+P, Dv] (view 0 = global)."""
        b = global_view.shape[0]
        views = torch.cat([global_view.unsqueeze(1), tiles], dim=1)  # [B, 5, 3, S, S]
        views = views.reshape(b * 5, *views.shape[2:])  # one [B*5] pass through the shared encoder
        hidden = self.ln1_post(self.image_encoder(views))  # [B*5, 1+P, Dv]
        # -1, not 5: a feature-cache replay may stand in with fewer views (exact ablations, training/feature_cache)
        return hidden.reshape(b, -1, hidden.shape[1], hidden.shape[2])

    def encode_image(self, global_view: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        """-> decoder memory [B, 5P, Dv]: patch tokens of the global view, then of tiles TL, TR, BL, BR."""
        hidden = self.encode_views(global_view, tiles)
        b, _, _, d = hidden.shape
        return hidden[:, :, 1:].reshape(b, -1, d)

    def hidden_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The seam for cached image-encoder outputs: features [B, V, 1+P, Dv] (before ln1_post, V = 5 or the
        1-view ablations of training.feature_cache) -> ln1_post(features), as encode_views returns."""
        return self.ln1_post(features.to(self.ln1_post.weight.dtype))

    def memory_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, V, 1+P, Dv] -> decoder memory [B, V*P, Dv] (patch tokens), as encode_image."""
        b, _, _, d = features.shape
        return self.hidden_from_features(features)[:, :, 1:].reshape(b, -1, d)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids, mask [B, L] -> (text CLS [B, Dt], tokens without it [B, L-1, Dt], mask [B, L-1]).

        The text CLS is the last attended position (CLIP's EOS; BERT's [SEP]): index sum(mask) - 1.
        It is removed from the sequence by a gather of the other L-1 positions (in order), and the
        mask becomes the input mask with that position zeroed, cut to its first L-1 columns (exactly
        the reference's semantics, written with tensor ops only so that it exports).
        """
        hidden = self.text_encoder(input_ids, attention_mask)  # [B, L, Dt]
        b, length, d = hidden.shape
        eos = (attention_mask.long().sum(dim=1) - 1).clamp(min=0)  # [B]
        text_cls = torch.gather(hidden, 1, eos.view(b, 1, 1).expand(b, 1, d)).squeeze(1)
        j = torch.arange(length - 1, device=hidden.device).unsqueeze(0)  # [1, L-1]
        keep = j + (j >= eos.unsqueeze(1)).long()  # skip the EOS position
        tokens = torch.gather(hidden, 1, keep.unsqueeze(-1).expand(b, length - 1, d))
        pos = torch.arange(length, device=hidden.device).unsqueeze(0)
        new_mask = attention_mask * (pos != eos.unsqueeze(1)).to(attention_mask.dtype)
        return text_cls, tokens, new_mask[:, : length - 1]

    def decode(
        self,
        memory: torch.Tensor,
        text_tokens: torch.Tensor,
        image_key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """memory [B, M, Dv], text tokens [B, L-1, Dt] -> decoder output [B, L-1, O]."""
        queries = self.ln3_post(self.text_proj(text_tokens))  # [B, L-1, W]
        return self.text_decoder(self.ln2_post(memory), queries, image_key_padding_mask)

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens [B, L-1, O], mask [B, L-1] (1 = real) -> pooled [B, O]."""
        keep = mask.bool()
        mask_f = mask.to(tokens.dtype).unsqueeze(-1)
        mean = (tokens * mask_f).sum(dim=1) / mask_f.sum(dim=1).clamp(min=1.0)
        neg = torch.finfo(tokens.dtype).min
        mx = tokens.masked_fill(~keep.unsqueeze(-1), neg).max(dim=1).values
        q = self.pool_attn_q.unsqueeze(0).expand(tokens.shape[0], -1, -1)  # [B, 1, O]
        scores = (q @ tokens.transpose(1, 2)).masked_fill(~keep.unsqueeze(1), neg)  # [B, 1, L-1]
        attn = (torch.softmax(scores, dim=-1) @ tokens).squeeze(1)
        return self.ln4_post(self.multipool_proj(torch.cat([mean, mx, attn], dim=-1)))

    def classify(self, pooled: torch.Tensor, memory: torch.Tensor) -> dict[str, torch.Tensor]:
        """pooled [B, O], memory [B, V*P, Dv] -> {task: logits [B, C]} (with the global-view summary where the
        config has it: the first P memory tokens are the global view's patches)."""
        if self.config.image_summary:
            g = memory[:, : self.config.num_patches]  # [B, P, Dv] (1 token for the zero-image ablation)
            pooled = torch.cat([pooled, self.image_summary(torch.cat([g.mean(dim=1), g.amax(dim=1)], dim=-1))], -1)
        return self.heads(pooled)

    def views_from_inputs(
        self,
        global_pixels: torch.Tensor | None = None,
        canvas_pixels: torch.Tensor | None = None,
        global_view: torch.Tensor | None = None,
        tiles: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Either uint8 canvases or float views -> (global [B,3,S,S], tiles [B,4,3,S,S])."""
        if global_pixels is not None and canvas_pixels is not None and global_view is None and tiles is None:
            return self.tiler(global_pixels, canvas_pixels)
        if global_view is not None and tiles is not None and global_pixels is None and canvas_pixels is None:
            return global_view, tiles
        raise ConfigError(
            "pass either global_pixels= and canvas_pixels= (uint8 NHWC) or global_view= and tiles= (float)"
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        global_pixels: torch.Tensor | None = None,
        canvas_pixels: torch.Tensor | None = None,
        global_view: torch.Tensor | None = None,
        tiles: torch.Tensor | None = None,
        return_probs: bool = False,
        image_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """-> {task: logits [B, C]} in config order (softmax probabilities with return_probs=True).
        `image_features` [B, 5, 1+P, Dv]: cached image-encoder outputs instead of any pixels."""
        if image_features is not None:
            if any(v is not None for v in (global_pixels, canvas_pixels, global_view, tiles)):
                raise ConfigError("pass image_features= or pixels / views, not both")
            memory = self.memory_from_features(image_features)
        else:
            g, t = self.views_from_inputs(global_pixels, canvas_pixels, global_view, tiles)
            memory = self.encode_image(g, t)  # [B, 5P, Dv]
        _, text_tokens, mask = self.encode_text(input_ids, attention_mask)  # [B, L-1, Dt], [B, L-1]
        pooled = self.pool(self.decode(memory, text_tokens), mask)  # [B, O]
        logits = self.classify(pooled, memory)
        if return_probs:
            return {k: torch.softmax(v, dim=-1) for k, v in logits.items()}
        return logits

    def forward_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **views: Any) -> dict:
        """forward(...) with softmax applied (what an exported graph outputs as probs_<task>)."""
        return self.forward(input_ids, attention_mask, return_probs=True, **views)

    # ---- training-only parts --------------------------------------------------------------------
    def random_masking(self, x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random (1-ratio) of tokens per row: x [N, P, D] -> (kept [N, V, D], mask [N, P] 1=dropped,
        ids_restore [N, P])."""
        n, length, d = x.shape
        keep = int(length * (1 - ratio))
        ids_shuffle = torch.argsort(torch.rand(n, length, device=x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, P, p*p*3] (MAE's order: row-major patches, pixels (y, x, channel))."""
        p = self.config.patch_size
        n, _, h, w = imgs.shape
        x = imgs.reshape(n, 3, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, (h // p) * (w // p), p * p * 3)

    def forward_train(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        stage: str = "finetune",
        need_logits: bool = True,
        **views: torch.Tensor,
    ) -> dict[str, Any]:
        """The reference's training forward. Pretrain masks 75% of each tile's patches (MIM) and runs the
        image decoder; fine-tune runs the inference path. Returns latents, decoder outputs, logits."""
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
        features = views.pop("image_features", None)
        if features is not None:  # cached encoder outputs through the seam (fine-tune only: no MIM)
            if stage != "finetune" or views:
                raise ConfigError("image_features= replaces the pixels and works for stage 'finetune' only")
            g = t = None
            b = features.shape[0]
        else:
            g, t = self.views_from_inputs(**views)
            b = g.shape[0]
        out: dict[str, Any] = {"tiles": t}
        text_cls, text_tokens, mask = self.encode_text(input_ids, attention_mask)
        kpm = None
        if stage == "pretrain":
            enc = self.image_encoder
            hidden_g = self.ln1_post(enc(g))  # [B, 1+P, Dv]
            tile_px = t.reshape(b * 4, *t.shape[2:])
            emb = enc.embed(tile_px)  # [B*4, 1+P, Dv]
            kept, masks, ids_restore = self.random_masking(emb[:, 1:], self.config.image_decoder.mask_ratio)
            hidden_t = self.ln1_post(enc.encode(torch.cat([emb[:, :1], kept], dim=1)))  # [B*4, 1+V, Dv]
            vis = hidden_t[:, 1:]
            p, d = emb.shape[1] - 1, vis.shape[-1]
            filled = torch.cat([vis, self.image_decoder.mask_token_img.expand(b * 4, p - vis.shape[1], -1)], dim=1)
            full_tiles = torch.gather(filled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # [B*4, P, Dv]
            kpm = torch.cat([torch.zeros(b, p, dtype=torch.bool, device=emb.device), masks.bool().view(b, -1)], 1)
            global_cls = hidden_g[:, 0]
            memory = torch.cat([hidden_g[:, 1:], full_tiles.reshape(b, -1, d)], dim=1)  # [B, 5P, Dv]
            # image decoder: per-head gated mix of text-derived and image keys/values
            txt = self.text_kv_ln(self.text_kv_proj(text_tokens)).repeat_interleave(4, dim=0)  # [B*4, L-1, Di]
            img = self.img_kv_ln(self.img_kv_proj(full_tiles))  # [B*4, P, Di]
            queries = self.text_to_patch_queries.expand(b * 4, -1, -1)
            # the reference attends over all text positions here (no padding mask)
            kv = self.gate_kv(img, self.text2patch_attn(queries, txt, txt))
            pred, align = self.image_decoder(hidden_t, kv, ids_restore)
            out.update(recon_pred=pred, recon_mask=masks, dec_latents=self.aggregator(align.view(b, 4, -1)))
        else:
            # [B, V, 1+P, Dv]: cached features through the seam, or the encoder on the 5 views
            hidden = self.hidden_from_features(features) if features is not None else self.encode_views(g, t)
            global_cls = hidden[:, 0, 0]
            memory = hidden[:, :, 1:].reshape(b, -1, hidden.shape[-1])  # [B, 5P, Dv], global view first
        out["img_latents"] = self.img_to_latents(global_cls)
        out["text_latents"] = self.text_to_latents(text_cls)
        if need_logits:
            out["logits"] = self.classify(self.pool(self.decode(memory, text_tokens, kpm), mask), memory)
        return out

    def training_losses(
        self,
        batch_inputs: Mapping[str, torch.Tensor],
        labels: Mapping[str, torch.Tensor] | None = None,
        stage: str = "pretrain",
        weights: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of one batch: itc, consistency, kl, recon (pretrain), ce (sum over labelled tasks) and
        the weighted total "loss". `batch_inputs`: input_ids, attention_mask and either the uint8
        canvases or the float views. Default weights: PRETRAIN_WEIGHTS / FINETUNE_WEIGHTS."""
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
        w = dict(PRETRAIN_WEIGHTS if stage == "pretrain" else FINETUNE_WEIGHTS)
        if weights:
            unknown = set(weights) - set(w)
            if unknown:
                raise ConfigError(f"unknown loss weights {sorted(unknown)}; valid: {', '.join(w)}")
            w.update(weights)
        labels = dict(labels or {})
        unknown_tasks = set(labels) - set(self.config.tasks)
        if unknown_tasks:
            raise ConfigError(f"labels for unknown tasks {sorted(unknown_tasks)}; model tasks: {', '.join(self.config.tasks)}")
        need_logits = bool(labels) and w["ce"] > 0
        inputs = dict(batch_inputs)
        out = self.forward_train(inputs.pop("input_ids"), inputs.pop("attention_mask"), stage=stage,
                                 need_logits=need_logits, **inputs)
        img, txt = out["img_latents"], out["text_latents"]
        zero = img.new_zeros(())
        losses: dict[str, torch.Tensor] = {}
        # ITC: symmetric cross-entropy, similarities scaled by exp(temperature)
        sim = (txt @ img.t()) * self.temperature.exp()
        target = torch.arange(sim.shape[0], device=sim.device)
        losses["itc"] = 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))
        if stage == "pretrain":
            dec = F.normalize(out["dec_latents"], dim=1, eps=1e-12)
            losses["consistency"] = F.mse_loss(dec, img)
            logits_clip = self.logit_scale * (img @ txt.t())
            logits_mae = self.logit_scale * (dec @ txt.t())
            kl = F.kl_div(F.log_softmax(logits_mae, dim=-1), F.softmax(logits_clip, dim=-1), reduction="batchmean")
            entropy = -(F.softmax(logits_mae, dim=0) * F.log_softmax(logits_mae, dim=0)).mean()
            losses["kl"] = kl + entropy
            target_px = self.patchify(out["tiles"].reshape(-1, *out["tiles"].shape[2:]))
            per_patch = ((out["recon_pred"] - target_px) ** 2).mean(dim=-1)
            m = out["recon_mask"]
            losses["recon"] = (per_patch * m).sum() / m.sum()
        else:
            losses["consistency"] = losses["kl"] = losses["recon"] = zero
        ce = zero
        if need_logits:
            for task, y in labels.items():
                ce = ce + F.cross_entropy(out["logits"][task], y)
        losses["ce"] = ce
        losses["loss"] = sum(w[k] * losses[k] for k in ("itc", "consistency", "kl", "recon", "ce"))
        return losses

    def forward_pretrain(
        self, batch_inputs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """training_losses(..., stage="pretrain") (the name docs/contracts.md uses)."""
        return self.training_losses(batch_inputs, labels, stage="pretrain")

    def reinit_last_head_layer(self) -> None:
        """Re-initialise proj2 of every head (xavier / zero), as the reference's fine-tune does by not
        loading `proj2.*` from the pretrain checkpoint."""
        for head in self.heads.values():
            _xavier_init(head.proj2)

    def freeze_image_encoder(self, frozen: bool = True) -> None:
        self.image_encoder.requires_grad_(not frozen)

    def freeze_image_decoder(self, frozen: bool = True) -> None:
        """Freeze the MAE branch (the reference's fine-tune also freezes the text->patch queries)."""
        self.image_decoder.requires_grad_(not frozen)
        self.text_to_patch_queries.requires_grad_(not frozen)
        self.text2patch_attn.requires_grad_(not frozen)
        # the sin-cos positions stay fixed whatever happens
        self.image_decoder.decoder_pos_embed.requires_grad_(False)

    def param_group_name(self, name: str) -> str:
        top = name.split(".", 1)[0]
        return top if top in PARAM_GROUPS else "other"

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group (image_encoder, text_encoder, text_decoder, image_decoder, other)
        for per-module learning rates; groups with nothing trainable are empty lists."""
        groups: dict[str, list[nn.Parameter]] = {g: [] for g in PARAM_GROUPS}
        for name, p in self.named_parameters():
            if p.requires_grad:
                groups[self.param_group_name(name)].append(p)
        return groups

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_pretrained(
        self, path: str | Path, *, tokenizer_file: str | Path | None = None, overwrite: bool = True
    ) -> Path:
        """Write config.json + model.safetensors (+ tokenizer.json) atomically as one folder."""
        import shutil

        from safetensors.torch import save_file

        from sdk.atomic import atomic_directory

        path = Path(path)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        with atomic_directory(path, overwrite=overwrite) as tmp:
            (tmp / CONFIG_FILE).write_text(self.config.to_json(), encoding="utf-8")
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "preset": self.config.preset})
            if tokenizer_file is not None:
                if not Path(tokenizer_file).is_file():
                    raise CheckpointError(f"tokenizer file {tokenizer_file} does not exist")
                shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> SyDES:
        """Load a checkpoint folder; any missing / unexpected key or shape mismatch is a CheckpointError."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not cfg_file.is_file() or not weights.is_file():
            raise CheckpointError(f"{path} is not a SyDES checkpoint: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
        try:
            config = SydesConfig.from_json(cfg_file.read_text(encoding="utf-8"))
        except ConfigError as e:
            raise CheckpointError(f"{cfg_file}: {e}") from e
        try:
            state = load_file(str(weights), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"cannot read {weights}: {e}") from e
        model = cls(config)
        model.load_checked_state_dict(state, source=str(weights))
        return model.eval()

    def load_checked_state_dict(self, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        """load_state_dict that reports every missing / unexpected key and shape mismatch at once."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(
            f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
            for k in set(own) & set(state)
            if tuple(state[k].shape) != tuple(own[k].shape)
        )
        if missing or unexpected or shapes:
            def show(xs: list[str]) -> str:
                return ", ".join(xs[:12]) + (f" ... (+{len(xs) - 12})" if len(xs) > 12 else "") if xs else "none"

            raise CheckpointError(
                f"{source} does not match the config: missing keys: {show(missing)}; "
                f"unexpected keys: {show(unexpected)}; shape mismatches: {show(shapes)}"
            )
        self.load_state_dict(dict(state), strict=True)

    def config_json(self) -> str:
        return json.dumps(self.config.to_dict(), indent=2)
