"""On-disk cache of the frozen image encoder's outputs, for fine-tuning (where the encoder is frozen).

Cut point: `SyDES.image_features` (the image encoder's output for each of the 5 views, global + 4 tiles), i.e. the
backbone's last hidden state [T = 1 + P, D] BEFORE `ln1_post`. `ln1_post` (and everything after it) is
trained while fine-tuning, so caching after it would freeze a trained layer; the image encoder itself
is frozen and in eval mode, and unmasked in fine-tuning, so its output is a pure function of the pixels and
the weights. Feeding cached features therefore gives IDENTICAL logits to the uncached path (tested).

With `tail_blocks=N` (the image encoder's last N layers train: TrainOptions.image_tail_blocks) the cut moves
before those layers: entries hold the hidden state after the first L-N layers, datasets yield it as
`image_hidden` (+ `image_hidden_layer`), and SyDES.encode runs the trained rest. Only the frozen part (the
embeddings and the first L-N layers) enters the key, so the cache stays valid while the tail trains.

Entry: `<root>/<key[:2]>/<key>.safetensors` with one float tensor `features` [5, T, D] and metadata
(format, key, sha256 of the tensor bytes, shape, dtype). key = sha256 over (sha256 of the image file's
bytes, the preprocessing config, the number of views, the encoder-weights hash, the storage dtype, and
for a cut before the last layers, that layer).
Entries are written atomically and verified on every read (metadata, shape, dtype, checksum); a corrupt or
stale entry is recomputed, never trusted. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdk.atomic import atomic_write_bytes
from sdk.errors import ConfigError, DataError
from sdk.hashing import sha256_file

log = logging.getLogger(__name__)

FORMAT = "sydes-feature-cache/1"
NUM_VIEWS = 5


def encoder_hash(encoder: torch.nn.Module, tail_blocks: int = 0) -> str:
    """sha256 over the image encoder's state dict (names, dtypes, shapes, bytes), without the last
    `tail_blocks` layers and output norm (they train: the cache does not depend on them)."""
    tail = encoder.tail_modules(tail_blocks) if tail_blocks else []
    skip = {id(t) for m in tail for t in m.state_dict(keep_vars=True).values()}
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict(keep_vars=True).items()):
        if id(t) in skip:
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FeatureCache:
    """The cache for one model's image encoder under `root`."""

    def __init__(self, root: str | os.PathLike[str], model: torch.nn.Module, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, tail_blocks: int = 0) -> None:
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ConfigError(f"feature cache dtype must be float32, float16 or bfloat16, got {dtype}")
        enc = model.image_encoder
        # None: the encoder's output (image_features); k: the hidden state after its first k layers
        self.layer = enc.num_layers - tail_blocks if tail_blocks else None
        self.root = Path(root)
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.encoder_hash = encoder_hash(enc, tail_blocks)
        self.prep = json.dumps(model.config.preprocess, sort_keys=True)
        self._keys: dict[str, str] = {}  # image path -> key (memoised file hash)
        self.hits = self.misses = self.recomputed = 0

    # ---- keys and files ------------------------------------------------------------------------
    def key(self, image: str | os.PathLike[str]) -> str:
        p = str(image)
        if p not in self._keys:
            h = hashlib.sha256()
            cut = () if self.layer is None else (f"layer {self.layer}",)  # keys of the output cut stay as they were
            for part in (sha256_file(p), self.prep, str(NUM_VIEWS), self.encoder_hash, str(self.dtype), *cut):
                h.update(part.encode())
                h.update(b"\0")
            self._keys[p] = h.hexdigest()
        return self._keys[p]

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def _write(self, key: str, feats: torch.Tensor) -> None:
        from safetensors.torch import save

        t = feats.detach().to("cpu", self.dtype).contiguous()
        meta = {"format": FORMAT, "key": key, "sha256": hashlib.sha256(_bytes(t)).hexdigest(),
                "shape": json.dumps(list(t.shape)), "dtype": str(t.dtype)}
        atomic_write_bytes(self.path(key), save({"features": t}, metadata=meta))

    def read(self, key: str) -> torch.Tensor | None:
        """The verified entry, or None when it is absent, corrupt or stale (the caller recomputes)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                t = f.get_tensor("features")
        except Exception as e:  # noqa: BLE001 - any parse failure means: do not trust it
            log.warning("feature cache: unreadable entry %s (%s); recomputing", p, e)
            return None
        problem = None
        if meta.get("format") != FORMAT or meta.get("key") != key:
            problem = "wrong format or key"
        elif t.dtype != self.dtype or meta.get("dtype") != str(t.dtype):
            problem = f"dtype {t.dtype}, expected {self.dtype}"
        elif json.loads(meta.get("shape", "[]")) != list(t.shape) or t.dim() != 3 or t.shape[0] != NUM_VIEWS:
            problem = f"shape {list(t.shape)}"
        elif hashlib.sha256(_bytes(t)).hexdigest() != meta.get("sha256"):
            problem = "checksum mismatch"
        if problem:
            log.warning("feature cache: invalid entry %s (%s); recomputing", p, problem)
            return None
        return t

    # ---- filling -------------------------------------------------------------------------------
    @torch.no_grad()
    def fill(self, records: Sequence[Any], preprocess_cfg, *, batch_size: int = 16, progress: bool = False) -> int:
        """Compute and store every missing / invalid entry of `records`; returns how many were computed."""
        from sdk.preprocess import preprocess

        todo = [ex for ex in records if self.read(self.key(ex.image)) is None]
        self.hits += len(records) - len(todo)
        if not todo:
            return 0
        enc_mode = self.model.training
        self.model.eval()
        self.model.to(self.device)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="feature cache", unit="img")
        try:
            for i in range(0, len(todo), batch_size):
                chunk = todo[i:i + batch_size]
                gs, cs = [], []
                for ex in chunk:
                    try:
                        g, c = preprocess(ex.image, preprocess_cfg)
                    except Exception as e:
                        raise DataError(f"{ex.source}: image {ex.image}: {e}") from e
                    gs.append(torch.from_numpy(np.array(g, dtype=np.uint8, copy=True)))
                    cs.append(torch.from_numpy(np.array(c, dtype=np.uint8, copy=True)))
                feats = self.model.image_features(global_pixels=torch.stack(gs).to(self.device),
                                                  canvas_pixels=torch.stack(cs).to(self.device), layer=self.layer)
                for ex, f in zip(chunk, feats, strict=True):
                    self._write(self.key(ex.image), f)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            self.model.train(enc_mode)
            if bar is not None:
                bar.close()
        self.misses += len(todo)
        return len(todo)

    def get(self, example: Any, preprocess_cfg=None) -> torch.Tensor:
        """Features [5, T, D] of one example: read and verify; recompute (and rewrite) when invalid."""
        key = self.key(example.image)
        t = self.read(key)
        if t is None:
            if preprocess_cfg is None:
                from sdk.preprocess import PreprocessConfig

                preprocess_cfg = PreprocessConfig.from_dict(self.model.config.preprocess)
            self.recomputed += 1
            self.fill([example], preprocess_cfg, batch_size=1)
            t = self.read(key)
            if t is None:
                raise DataError(f"feature cache: could not write a valid entry for {example.image}")
        return t


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


class CachedFeatureDataset:
    """Wraps a PostDataset built with `with_pixels=False`: items carry `image_features` [5, T, D] float32
    instead of pixels (a cache cut before the last layers: `image_hidden` [5, T, D] and `image_hidden_layer`)."""

    def __init__(self, base, cache: FeatureCache, records: Sequence[Any], transform=None) -> None:
        self.base, self.cache, self.examples = base, cache, list(records)
        self.transform = transform  # optional features -> features (ablations: global view only, no image)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        f = self.cache.get(self.examples[i]).float()
        f = f if self.transform is None else self.transform(f)
        if self.cache.layer is None:
            item["image_features"] = f
        else:
            item["image_hidden"], item["image_hidden_layer"] = f, torch.tensor(self.cache.layer)
        return item


# ---- ablations on cached features (CachedFeatureDataset.transform): exact and cheaper ---------------------
def global_view_only(f: torch.Tensor) -> torch.Tensor:
    """[5, 1+P, D] -> [1, 1+P, D]: the global view alone. The decoder output equals that of a 5-view memory
    whose tiles are copies of the global view (every key / value appears 5 times, which leaves each softmax-
    weighted average unchanged), at a fifth of the decoder's cost."""
    return f[:1].clone()


def no_image_features(f: torch.Tensor) -> torch.Tensor:
    """[5, 1+P, D] -> [1, 2, D] of zeros (a CLS and one token). Equals the all-zero 5-view memory: its keys
    and values are all identical, so attention returns that one value, whatever the number of tokens."""
    return f.new_zeros((1, 2, f.shape[-1]))


# ---- frozen text encoder (report recipe): its outputs computed once, in memory -------------------------
@torch.no_grad()
def encode_texts(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, *, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """Frozen text encoder outputs [N, L, Dt] float32 for token ids / mask [N, L], in eval mode (no dropout).

    Each batch runs trimmed to its longest caption; pad positions are stored as zeros. Exact for the
    logits: pad positions are masked in pooling, and the decoder's causal self-attention never lets a real
    position see a trailing pad (see training.data.trim_padding)."""
    enc = model.text_encoder
    was = enc.training
    enc.eval()
    n, length = ids.shape
    out = None
    try:
        for i in range(0, n, batch_size):
            m = torch.from_numpy(np.ascontiguousarray(mask[i:i + batch_size]))
            k = max(1, int(m.sum(dim=1).max()))
            x = torch.from_numpy(np.ascontiguousarray(ids[i:i + batch_size, :k]))
            h = enc(x.to(device), m[:, :k].to(device)).float().cpu()  # [b, k, Dt]
            if out is None:
                out = torch.zeros(n, length, h.shape[-1])
            out[i:i + h.shape[0], :k] = h * m[:, :k].unsqueeze(-1).to(h.dtype)
    finally:
        enc.train(was)
    return out if out is not None else torch.zeros(0, length, 0)


class CachedTextDataset:
    """Wraps a dataset: items also carry `text_hidden` [L, Dt], the frozen text encoder's outputs."""

    def __init__(self, base, hidden: torch.Tensor) -> None:
        if len(base) != hidden.shape[0]:
            raise DataError(f"text cache holds {hidden.shape[0]} rows for a dataset of {len(base)}")
        self.base, self.hidden = base, hidden

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        item["text_hidden"] = self.hidden[i]
        return item

    def __getattr__(self, name: str) -> Any:  # transform etc. of the wrapped dataset
        if name in ("base", "hidden"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("base", "hidden"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.base, name, value)
