"""Learning-rate schedule: linear warm-up then cosine decay to zero (a pure function of the step).

Being a function of the step only, it needs no state of its own in a checkpoint: resuming at step s
gives exactly the learning rates an uninterrupted run would have used.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_frac: float) -> float:
    """Multiplier in [0, 1] of the base LR for optimiser step `step` (0-based)."""
    total = max(1, int(total_steps))
    warm = int(round(warmup_frac * total))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def set_lrs(optimizer, step: int, total_steps: int, warmup_frac: float) -> float:
    """Set every group's lr to its `base_lr` x the multiplier; returns the multiplier."""
    m = warmup_cosine(step, total_steps, warmup_frac)
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * m
    return m
