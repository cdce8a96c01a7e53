"""Choosing calibration samples: reproducible, stratified by label so every class is represented."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import numpy as np

from sdk.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Below this many samples INT8 ranges become unreliable: each activation's range (and for entropy /
# percentile its histogram tail) is estimated from only a handful of posts, so one unusual image or
# caption decides the clipping of a whole tensor, and rare classes (MSED has 16 labels over three tasks,
# some at ~2%) may not appear at all. 128 stratified posts cover every class several times over; the
# ORT and TensorRT guides use a few hundred images for the same reason.
MIN_RECOMMENDED_SAMPLES = 128


def _labels_of(row: Any) -> dict[str, str]:
    labels = getattr(row, "labels", None)
    if labels is None and isinstance(row, dict):
        labels = row.get("labels", row)
    return labels if isinstance(labels, dict) else {}


def _stratum_fn(rows: Sequence[Any], stratify_by: str | Sequence[str] | Callable[[Any], Hashable] | None,
                ) -> Callable[[Any], Hashable] | None:
    if stratify_by is None:
        return None
    if callable(stratify_by):
        return stratify_by
    keys = [stratify_by] if isinstance(stratify_by, str) else list(stratify_by)
    if keys == ["auto"]:
        # every label the rows carry, jointly (MSED: sentiment x emotion x desire)
        present = sorted({k for r in rows for k in _labels_of(r)})
        if not present:
            return None
        keys = present
    else:
        missing = [k for k in keys if any(k not in _labels_of(r) for r in rows)]
        if missing:
            raise ConfigError(f"cannot stratify by {missing}: some rows have no such label")
    return lambda r: tuple(_labels_of(r)[k] for k in keys)


def select_samples(rows: Sequence[T], n: int, seed: int = 0,
                   stratify_by: str | Sequence[str] | Callable[[Any], Hashable] | None = "auto",
                   warn_below: int = MIN_RECOMMENDED_SAMPLES) -> list[T]:
    """Pick `n` of `rows` reproducibly (same rows, n and seed -> same picks, in their original order).

    stratify_by: "auto" (all labels the rows carry, jointly; plain random when they carry none), a label
    name or list of names, a function row -> stratum, or None (uniform). Each stratum gets a share of `n`
    proportional to its size (largest remainder), at least one sample while `n` allows, so rare classes
    are not left out.
    """
    if n <= 0:
        raise ConfigError(f"number of calibration samples must be positive, got {n}")
    if not rows:
        raise ConfigError("no samples to choose from (the data source is empty)")
    if n < warn_below:
        log.warning("%d calibration samples is fewer than the %d recommended: INT8 ranges may be noisy "
                    "and rare classes missing", n, warn_below)
    if n >= len(rows):
        if n > len(rows):
            log.warning("asked for %d calibration samples, the data has only %d: using all", n, len(rows))
        return list(rows)
    rng = np.random.default_rng(seed)
    key = _stratum_fn(rows, stratify_by)
    if key is None:
        picked = rng.choice(len(rows), size=n, replace=False)
        return [rows[i] for i in sorted(picked.tolist())]

    strata: dict[Hashable, list[int]] = {}
    for i, r in enumerate(rows):
        strata.setdefault(key(r), []).append(i)
    names = sorted(strata, key=repr)  # deterministic order whatever the hash seed
    sizes = np.array([len(strata[s]) for s in names], dtype=np.float64)
    quota = sizes * n / sizes.sum()
    alloc = np.floor(quota).astype(int)
    if n >= len(names):  # every stratum at least once
        alloc = np.maximum(alloc, 1)
    # hand out the rest by largest remainder, take back from the largest if the minimum overshot
    while alloc.sum() < n:
        rem = np.where(alloc < sizes, quota - alloc, -np.inf)
        alloc[int(np.argmax(rem))] += 1
    while alloc.sum() > n:
        over = np.where(alloc > 1, alloc - quota, -np.inf)
        alloc[int(np.argmax(over))] -= 1
    picked_idx: list[int] = []
    for s, k in zip(names, alloc, strict=True):
        members = strata[s]
        picked_idx.extend(rng.choice(members, size=int(min(k, len(members))), replace=False).tolist())
    return [rows[i] for i in sorted(picked_idx)]
