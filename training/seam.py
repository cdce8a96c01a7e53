"""The backbone / head seam of training.model.SyDES: what `encode` returns and `head` reads (export's
shared-encoder graph, the feature cache and training with cached encoder outputs cut here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    """What `encode` returns and `head` reads (the backbone / head seam).

    memory [B, V*P, Dv]: ln1_post of the image encoder's patch tokens, global view first (V = 5, or 1 for the
    cache's ablations); image_cls [B, Dv]: the global view's CLS after ln1_post; text_cls [B, Dt];
    text_tokens [B, L-1, Dt] and text_mask [B, L-1] (the text CLS removed); memory_padding [B, V*P] bool,
    True = a patch MIM dropped (pretrain only, else None)."""

    memory: torch.Tensor
    image_cls: torch.Tensor
    text_cls: torch.Tensor
    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    memory_padding: torch.Tensor | None = None


@dataclass
class MaskedFeatures(Features):
    """forward_encoder's output in pretraining: Features plus what the MIM decoder and loss need.
    tiles [B, 4, 3, S, S] (the reconstruction target); tile_hidden [B*4, 1+K, Dv] (the K kept patches
    encoded); tile_memory [B*4, P, Dv] (kept patches back in place, mask tokens elsewhere); recon_mask
    [B*4, P] (1 = dropped); ids_restore [B*4, P]."""

    tiles: torch.Tensor | None = None
    tile_hidden: torch.Tensor | None = None
    tile_memory: torch.Tensor | None = None
    recon_mask: torch.Tensor | None = None
    ids_restore: torch.Tensor | None = None
