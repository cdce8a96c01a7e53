"""Building blocks of SyDES (see training/model.py for how they are wired).

Parameter names follow the reference's state-dict keys (open_clip's multimodal transformer for the
text decoder, timm/MAE names for the image decoder), so a reference checkpoint imports by renaming
prefixes only. Attention is written out with `F.scaled_dot_product_attention` rather than
`nn.MultiheadAttention` (same `in_proj_weight` / `out_proj` parameters, same maths): it exports to
ONNX without the native fast path and takes boolean masks of any broadcastable shape.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameter layout (batch first)."""

    def __init__(self, dim: int, heads: int, bias: bool = True) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim)) if bias else None
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """q [B, Lq, D], k/v [B, Lk, D]; attn_mask bool, True = may attend, broadcast to [B, H, Lq, Lk]."""
        b = self.in_proj_bias
        if q is k and k is v:  # self-attention: one projection GEMM
            q, k, v = F.linear(q, self.in_proj_weight, b).chunk(3, dim=-1)
        else:
            wq, wk, wv = self.in_proj_weight.chunk(3, dim=0)
            bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
            q, k, v = F.linear(q, wq, bq), F.linear(k, wk, bk), F.linear(v, wv, bv)
        bsz, hd = q.shape[0], self.dim // self.heads
        q = q.reshape(bsz, -1, self.heads, hd).transpose(1, 2)  # [B, H, Lq, hd]
        k = k.reshape(bsz, -1, self.heads, hd).transpose(1, 2)
        v = v.reshape(bsz, -1, self.heads, hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(o.transpose(1, 2).reshape(bsz, -1, self.dim))


# ---- image-guided text decoder (CoCa multimodal transformer) ------------------------------------
class ResidualAttentionBlock(nn.Module):
    """Pre-LN attention block + MLP (exact GELU); `cross=True` adds `ln_1_kv` on the memory."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, cross: bool = False) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        if cross:
            self.ln_1_kv = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, hidden), gelu=nn.GELU(), c_proj=nn.Linear(hidden, width))
        )
        self.cross = cross

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.cross:
            kv = self.ln_1_kv(memory)
            x = x + self.attn(self.ln_1(x), kv, kv, attn_mask)
        else:
            h = self.ln_1(x)
            x = x + self.attn(h, h, h, attn_mask)
        return x + self.mlp(self.ln_2(x))


class TextDecoder(nn.Module):
    """`layers` x (causal self-attention block, cross-attention block) -> ln_final -> @ text_projection."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, output_dim: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.cross_attn = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, cross=True) for _ in range(layers)
        )
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(
        self,
        image_embs: torch.Tensor,
        text_embs: torch.Tensor,
        image_key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """image_embs [B, M, W] (memory), text_embs [B, L, W] -> [B, L, output_dim].

        Self-attention is causal and has no text padding mask (as in the reference: padded positions
        come after the real ones, so the causal mask already keeps them out of real positions).
        `image_key_padding_mask` [B, M] bool, True = ignore (masked tiles' tokens while pretraining).
        """
        idx = torch.arange(text_embs.shape[1], device=text_embs.device)
        causal = idx[:, None] >= idx[None, :]  # [L, L], True = may attend
        cross_mask = None
        if image_key_padding_mask is not None:
            cross_mask = (~image_key_padding_mask.bool())[:, None, None, :]  # [B, 1, 1, M]
        x = text_embs
        for self_block, cross_block in zip(self.resblocks, self.cross_attn, strict=True):
            x = self_block(x, attn_mask=causal)
            x = cross_block(x, memory=image_embs, attn_mask=cross_mask)
        return self.ln_final(x) @ self.text_projection


# ---- training-only: text-guided MAE image decoder ----------------------------------------------
def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos positions: [grid*grid (+1), dim] (first half rows, second half columns)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )

    def one_d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return torch.cat([out.sin(), out.cos()], dim=1)

    # MAE builds its grid with np.meshgrid(w, h): grid[0] varies along columns, and puts it first.
    emb = torch.cat([one_d(xs), one_d(ys)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CrossAttentionBlock(nn.Module):
    """Image tokens attend to the (gated) memory, then an MLP; pre-LN, eps 1e-6 as in MAE."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_memory = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        kv = self.norm_memory(memory)
        x = x + self.attn(self.norm1(x), kv, kv)
        return x + self.mlp(self.norm2(x))


class ImageDecoder(nn.Module):
    """MAE-style decoder: visible tile tokens + mask tokens -> pixels per patch and one align feature."""

    def __init__(
        self, vision_dim: int, dim: int, blocks: int, heads: int, mlp_ratio: float, num_patches: int, patch: int
    ) -> None:
        super().__init__()
        self.num_patches, self.patch = num_patches, patch
        self.decoder_embed = nn.Linear(vision_dim, dim)
        self.mask_token_img = nn.Parameter(torch.zeros(1, 1, vision_dim))  # fills dropped encoder tokens
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        grid = int(math.isqrt(num_patches))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed_2d(dim, grid)[None], requires_grad=False)
        self.decoder_blocks = nn.ModuleList(CrossAttentionBlock(dim, heads, mlp_ratio) for _ in range(blocks))
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, patch * patch * 3)
        self.decoder_image = nn.Linear(num_patches, 1)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.mask_token_img, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, ids_restore: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, 1+V, Dv] (CLS + visible), memory [N, P, dim], ids_restore [N, P] ->
        (pred [N, P, p*p*3], align [N, dim])."""
        x = self.decoder_embed(x)
        if ids_restore is not None:
            n_mask = ids_restore.shape[1] + 1 - x.shape[1]
            rest = torch.cat([x[:, 1:], self.mask_token.expand(x.shape[0], n_mask, -1)], dim=1)
            rest = torch.gather(rest, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
            x = torch.cat([x[:, :1], rest], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x, memory)
        x = self.decoder_norm(x)
        align = self.decoder_image(x[:, 1:].transpose(1, 2)).squeeze(-1)  # [N, dim]
        pred = self.decoder_pred(x)[:, 1:]
        return pred, align


class GateKV(nn.Module):
    """Per-head mix alpha * text + (1 - alpha) * image, alpha = sigmoid(gate_bias) (init -3)."""

    def __init__(self, heads: int, dim: int, init_bias: float = -3.0) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.gate_bias = nn.Parameter(torch.full((heads,), float(init_bias)))

    def forward(self, img_kv: torch.Tensor, text_kv: torch.Tensor) -> torch.Tensor:
        n, length, d = img_kv.shape
        alpha = torch.sigmoid(self.gate_bias).view(1, 1, self.heads, 1)
        img_h = img_kv.reshape(n, length, self.heads, d // self.heads)
        txt_h = text_kv.reshape(n, length, self.heads, d // self.heads)
        return (alpha * txt_h + (1.0 - alpha) * img_h).reshape(n, length, d)


class CombinedAggregator(nn.Module):
    """4 tile features -> one: softmax view weights, MLP, and a one-query attention over the views."""

    def __init__(self, dim: int, hidden: int, views: int = 4) -> None:
        super().__init__()
        self.view_weights = nn.Parameter(torch.ones(views))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn_q, self.attn_k, self.attn_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = dim**-0.5

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """views [B, V, D] -> [B, D]. (The reference returns only the attention output.)"""
        weighted = (views * F.softmax(self.view_weights, dim=0).view(1, -1, 1)).sum(1)
        q = self.attn_q(self.norm(self.mlp(weighted))).unsqueeze(1)  # [B, 1, D]
        nv = self.norm(views)
        k, v = self.attn_k(nv), self.attn_v(nv)
        attn = F.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)  # [B, 1, V]
        return (attn @ v).squeeze(1)


class EmbedToLatents(nn.Module):
    def __init__(self, dim: int, latent: int) -> None:
        super().__init__()
        self.to_latents = nn.Linear(dim, latent, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.to_latents(x), dim=-1)


# ---- heads ----------------------------------------------------------------------------------------
class MLPLayer(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear (keys mlp.0 / mlp.3)."""

    def __init__(self, dim: int, middle: int, out: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, middle), nn.ReLU(), nn.Dropout(dropout), nn.Linear(middle, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class TaskHead(nn.Module):
    """proj1 (residual MLP d->d->d) then proj2 (MLP d->d/2->C)."""

    def __init__(self, dim: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.proj1 = MLPLayer(dim, dim, dim, dropout)
        self.proj2 = MLPLayer(dim, dim // 2, num_labels, dropout)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(pooled) + pooled)


class TaskHeads(nn.ModuleDict):
    """One TaskHead per task (keys `heads.<task>.proj1/proj2`); calling it gives task -> logits."""

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {task: head(pooled) for task, head in self.items()}


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens [B, L, D], mask [B, L] (1 = real) -> the mean of the real tokens [B, D] (0 where there is none)."""
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


# ---- the mixed-scale tiler ------------------------------------------------------------------------
class Tiler(nn.Module):
    """uint8 NHWC global [B,S,S,3] + canvas [B,2S,2S,3] -> normalised global [B,3,S,S], tiles [B,4,3,S,S].

    Tiles are in the order top-left, top-right, bottom-left, bottom-right. Only permute / cast /
    arithmetic / reshape, so it exports to ONNX as plain elementwise and layout ops.
    """

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, H, W], (x / 255 - mean) / std as on the host."""
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)
        return (x / 255.0 - self.mean) / self.std

    def forward(
        self, global_pixels: torch.Tensor, canvas_pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.size
        g = self.normalise(global_pixels)
        c = self.normalise(canvas_pixels)  # [B, 3, 2S, 2S]
        tiles = c.reshape(-1, 3, 2, s, 2, s).permute(0, 2, 4, 1, 3, 5)  # [B, row, col, 3, S, S]
        return g, tiles.reshape(-1, 4, 3, s, s)


# ---- MAE helpers (pretraining) -------------------------------------------------------------------------
def random_masking(x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random (1-ratio) of tokens per row: x [N, P, D] -> (kept [N, K, D], mask [N, P] 1=dropped,
    ids_restore [N, P])."""
    n, length, d = x.shape
    keep = int(length * (1 - ratio))
    ids_shuffle = torch.argsort(torch.rand(n, length, device=x.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def init_module(m: nn.Module) -> None:
    """The one init rule (the reference's, for its own modules): xavier-uniform weights and zero biases of
    linear maps (nn.Linear and the fused in-projection of modules.Attention), LayerNorm 1 / 0. Parameters that
    are not a linear map (queries, mask tokens, gate biases, projections) keep the init their module gives them."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, Attention):
        nn.init.xavier_uniform_(m.in_proj_weight)
        if m.in_proj_bias is not None:
            nn.init.zeros_(m.in_proj_bias)
