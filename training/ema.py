"""WeightEMA: an exponential moving average of a model's trainable weights, evaluated and saved in their place.

Why: the recipe fine-tunes for a few hundred steps on ~1.3k posts and selects an epoch on a 225-post slice;
the raw weights at one step carry that step's minibatch noise, and the average over the last ~1/(1-decay)
steps is a flatter, less seed-dependent point (Polyak averaging; timm's ModelEmaV2, without its extra copy of
the whole model: only the parameters that train are shadowed, the frozen encoders are shared).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sdk.errors import ConfigError


class WeightEMA:
    """Shadow copies of `model`'s parameters with requires_grad; `update()` after each optimiser step.

    decay: the long-run factor in (0, 1). Early on the factor is min(decay, (1 + n) / (10 + n)) after n updates,
    so the average does not stay anchored at the initialisation when a run has only a few hundred steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self._params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self._params:
            raise ConfigError("the EMA has nothing to average: the model has no trainable parameters")
        self.shadow = {n: p.detach().clone() for n, p in self._params.items()}

    def factor(self) -> float:
        """The decay the next update uses."""
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self) -> None:
        d = self.factor()
        for n, p in self._params.items():
            self.shadow[n].lerp_(p.detach(), 1.0 - d)  # shadow = d * shadow + (1 - d) * p
        self.updates += 1

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own weights again after it."""
        backup = {n: p.detach().clone() for n, p in self._params.items()}
        for n, p in self._params.items():
            p.copy_(self.shadow[n])
        try:
            yield
        finally:
            for n, p in self._params.items():
                p.copy_(backup[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved average; the parameter names must be the same (a resumed run of the same model)."""
        missing = sorted(set(self.shadow) ^ set(state["shadow"]))
        if missing:
            raise ConfigError(f"the saved EMA does not match this model's trainable parameters: {missing[:5]}")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)
