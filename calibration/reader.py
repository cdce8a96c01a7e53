"""Feeding posts to a graph: preprocessing exactly as the runtime does (sdk.preprocess + sdk.tokenizer).

`SydesCalibrationReader` implements onnxruntime's CalibrationDataReader protocol (`get_next()` -> feed
dict or None, `rewind()`) and also exposes `batches()`, a plain iterator of numpy feeds that a TensorRT
calibrator or an evaluation loop can use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from calibration.data import Post, data_fingerprint
from sdk.bundle import INPUT_NAMES, TEXT_INPUT_NAMES  # noqa: E402,F401  (the one definition)
from sdk.errors import ConfigError


def _cfg_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    from dataclasses import asdict, is_dataclass

    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


class SydesCalibrationReader:
    """Posts -> feeds {global_pixels u8 [B,224,224,3], canvas_pixels u8 [B,448,448,3],
    input_ids i64 [B,L], attention_mask i64 [B,L]}.

    preprocess_cfg: sdk.preprocess.PreprocessConfig (or its dict), or None for a text-only graph (feeds
    {input_ids, attention_mask} alone; the posts' images are not read); tokenizer: sdk.tokenizer.Tokenizer
    (anything with encode_batch(texts) -> (ids, mask)). trim: True drops the all-pad token columns of
    each batch as the runtime does (its manifest says trim_padding); "dataset" cuts every batch to the
    longest text of all posts (one shape for all batches: onnxruntime's histogram calibrators stack the
    batches, and real tokens still see no more padding than necessary); False keeps max_length.
    Feeds are built lazily, so a rewind costs a re-decode but memory stays at one batch.
    """

    def __init__(self, posts: Sequence[Post], preprocess_cfg: Any, tokenizer: Any, batch_size: int = 1,
                 trim: bool | str = True, input_names: Sequence[str] | None = None) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if not posts:
            raise ConfigError("the calibration reader got no posts")
        images = preprocess_cfg is not None
        input_names = tuple(input_names or (INPUT_NAMES if images else TEXT_INPUT_NAMES))
        if len(input_names) != (4 if images else 2):
            raise ConfigError(f"expected {'4 input names (pixels, canvas, ids, mask)' if images else '2 input names (ids, mask)'}"
                              f", got {list(input_names)}")
        from sdk.preprocess import PreprocessConfig

        if isinstance(preprocess_cfg, dict):
            preprocess_cfg = PreprocessConfig.from_dict(preprocess_cfg)
        self.posts = list(posts)
        self.cfg = preprocess_cfg
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.trim = trim
        self.input_names = tuple(input_names)
        if trim not in (True, False, "dataset"):
            raise ConfigError(f"trim must be True, False or 'dataset', got {trim!r}")
        self._length: int | None = None
        if trim == "dataset":
            _, mask = tokenizer.encode_batch([p.text for p in self.posts])
            self._length = max(2, int(np.asarray(mask).sum(axis=1).max()))
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        """Number of batches (onnxruntime's strided calibration asks for it)."""
        return (len(self.posts) + self.batch_size - 1) // self.batch_size

    def feed(self, posts: Sequence[Post]) -> dict[str, np.ndarray]:
        """One batch of posts -> the graph's input dict."""
        from sdk.preprocess import preprocess

        ids, mask = self.tokenizer.encode_batch([p.text for p in posts])
        if self._length is not None:
            ids, mask = ids[:, :self._length], mask[:, :self._length]
        elif self.trim and hasattr(self.tokenizer, "trim"):
            ids, mask = self.tokenizer.trim(ids, mask)
        *pix, t_ids, t_mask = self.input_names
        out = {t_ids: np.ascontiguousarray(ids, dtype=np.int64), t_mask: np.ascontiguousarray(mask, dtype=np.int64)}
        if self.cfg is None:  # a text-only graph
            return out
        views = [preprocess(p.image, self.cfg) for p in posts]
        g = np.stack([v[0] for v in views]).astype(np.uint8, copy=False)
        c = np.stack([v[1] for v in views]).astype(np.uint8, copy=False)
        return {pix[0]: g, pix[1]: c, **out}

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """A fresh iterator over all batches (independent of get_next / rewind)."""
        for i in range(0, len(self.posts), self.batch_size):
            yield self.feed(self.posts[i:i + self.batch_size])

    # --- onnxruntime.quantization.CalibrationDataReader protocol -----------------------------------
    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self.batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.batches()

    def fingerprint(self) -> str:
        """sha256 over the samples, the preprocessing config, the tokenizer and the batching: what
        decides the activation ranges apart from the graph and the method."""
        h = hashlib.sha256(data_fingerprint(self.posts).encode())
        h.update(json.dumps(_cfg_dict(self.cfg) if self.cfg is not None else None, sort_keys=True, default=str).encode())
        tok_id = getattr(self.tokenizer, "fingerprint", None)
        tok_desc = tok_id() if callable(tok_id) else (type(self.tokenizer).__name__,
                                                      getattr(self.tokenizer, "kind", None),
                                                      getattr(self.tokenizer, "max_length", None))
        h.update(str(tok_desc).encode())
        # a probe encoding pins the vocabulary / max length even when the tokenizer has no fingerprint
        ids, mask = self.tokenizer.encode_batch(["a photo of a cat", "calibration probe: ÄÖ 123"])
        h.update(np.asarray(ids, dtype=np.int64).tobytes() + np.asarray(mask, dtype=np.int64).tobytes())
        h.update(f"batch={self.batch_size};trim={self.trim}".encode())
        return h.hexdigest()
