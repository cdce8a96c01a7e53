"""Heads added onto SyDES for a recipe variant (#13), after the rest of the model so its init is unchanged:
UnimodalHeads (training only, `unimodal`) and JointHead (on the inference path, `joint-head`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sdk.errors import ConfigError

from .modules import masked_mean


class UnimodalHeads(nn.Module):
    """Training-only linear heads on each modality alone, whose CE joins the fused one (the recipe's `unimodal`
    variant; Wang et al. 2020, "What makes training multi-modal classification networks hard?": a fused model
    under-trains its weaker branch, unimodal losses keep each branch learning). Not on the inference path.
    image [B, Di], text tokens [B, L-1, Dt] with mask [B, L-1] (masked mean) -> {"image" | "text": {task: [B, C]}}."""

    def __init__(self, image_dim: int, text_dim: int, tasks: Mapping[str, int]) -> None:
        super().__init__()
        self.image = nn.ModuleDict({t: nn.Linear(image_dim, c) for t, c in tasks.items()})
        self.text = nn.ModuleDict({t: nn.Linear(text_dim, c) for t, c in tasks.items()})

    def forward(self, image: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor
                ) -> dict[str, dict[str, torch.Tensor]]:
        text = masked_mean(text_tokens, text_mask)  # [B, Dt] (empty texts: 0)
        return {"image": {t: h(image) for t, h in self.image.items()},
                "text": {t: h(text) for t, h in self.text.items()}}


class JointHead(nn.Module):
    """A joint output over the valid label combinations (sdk.labels.LabelStructure; the recipe's `joint-head`
    variant): score(c) = sum_t task_logits_t[c_t] + proj(x)[c], over the K combinations only, and each task's
    logits become the log-marginals of that distribution (so an exported graph keeps its per-task outputs).
    proj starts at zero: the model starts as the per-task heads with the invalid combinations ruled out, and
    learns what the tasks share beyond that. x [B, D], logits {task: [B, C_t]} -> scores [B, K]."""

    def __init__(self, dim: int, tasks: Sequence[str], sizes: Mapping[str, int], combos: Sequence[Sequence[int]]
                 ) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.proj = nn.Linear(dim, len(combos))
        nn.init.zeros_(self.proj.weight)  # the start: per-task heads, invalid combinations ruled out
        nn.init.zeros_(self.proj.bias)
        c = torch.tensor(combos, dtype=torch.long)  # [K, T]
        self.register_buffer("combos", c, persistent=False)  # derived from the config, not weights
        for j, t in enumerate(self.tasks):  # [C_t, K]: 0 where combination k has label y, else -1e4
            member = torch.arange(sizes[t]).unsqueeze(1) == c[:, j].unsqueeze(0)
            self.register_buffer(f"mask_{t}", (~member).float() * -1e4, persistent=False)

    @classmethod
    def for_config(cls, config: Any) -> JointHead:
        """The head over a SydesConfig's label_structure, on what its task heads read; ConfigError without one."""
        if config.label_structure is None:
            raise ConfigError("the joint head needs the model's label_structure (sydes train recipe sets it)")
        from sdk.labels import LabelStructure

        table = LabelStructure.from_dict(config.label_structure, config.tasks)
        return cls(config.head_dim, table.tasks, {t: len(v) for t, v in config.tasks.items()}, table.combos)

    def scores(self, x: torch.Tensor, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        unary = sum(logits[t][:, self.combos[:, j]] for j, t in enumerate(self.tasks))  # [B, K]
        return unary + self.proj(x)

    def marginals(self, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """scores [B, K] -> {task: log-marginal logits [B, C_t]} (-1e4-ish for a label in no combination)."""
        return {t: torch.logsumexp(scores.unsqueeze(1) + getattr(self, f"mask_{t}"), dim=-1) for t in self.tasks}
