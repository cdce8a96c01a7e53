"""The label structure of a training set, and joint decoding over it (numpy only).

Labels of several tasks are often nested: in MSED, emotion follows from sentiment and only 12 of the 21
(sentiment, desire) pairs occur. A model with one head per task answers each task on its own and can
return a combination that never occurs (sentiment neutral with emotion happiness). `LabelStructure`
holds the combinations seen in the training labels with their counts (learnt from any tasks, nothing
here knows MSED), and `decode` answers with the most probable valid combination:

    score(c) = sum_t log p_t(c_t)  [+ log prior(c) with use_prior]

The per-task probabilities are left as they are; only the chosen labels change. The table is stored in
a checkpoint's config.json and in a bundle's manifest.json as `to_dict()`.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdk.errors import ConfigError

FORMAT = "sydes-label-structure/1"


@dataclass(frozen=True)
class LabelStructure:
    """Valid label combinations over `tasks`: `combos[i]` holds one label index per task, `counts[i]` how
    often that combination occurs in the training labels."""

    tasks: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]  # label names per task, in model order
    combos: tuple[tuple[int, ...], ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.tasks) < 2:
            raise ConfigError(f"a label structure needs >= 2 tasks, got {list(self.tasks)}")
        if len(self.labels) != len(self.tasks):
            raise ConfigError("a label structure needs one label list per task")
        if not self.combos or len(self.combos) != len(self.counts):
            raise ConfigError("a label structure needs >= 1 combination and one count per combination")
        for c in self.combos:
            if len(c) != len(self.tasks) or any(not 0 <= i < len(lab) for i, lab in zip(c, self.labels, strict=False)):
                raise ConfigError(f"label combination {list(c)} does not fit the tasks {list(self.tasks)}")
        if len(set(self.combos)) != len(self.combos):
            raise ConfigError("a label structure lists a combination twice")
        if any(n < 1 for n in self.counts):
            raise ConfigError("label combination counts must be >= 1")

    # ---- building ---------------------------------------------------------------------------------
    @classmethod
    def from_labels(cls, tasks: Mapping[str, Sequence[str]], rows: np.ndarray) -> LabelStructure:
        """Learn the table from label indices `rows` [N, T] (columns in `tasks` order); rows with a missing
        (negative) label in any task are ignored."""
        rows = np.asarray(rows, dtype=np.int64)
        names = tuple(tasks)
        if rows.ndim != 2 or rows.shape[1] != len(names):
            raise ConfigError(f"label rows must be [N, {len(names)}], got shape {list(rows.shape)}")
        full = rows[(rows >= 0).all(axis=1)]
        if not len(full):
            raise ConfigError("no training row labels every task: the label structure cannot be learnt")
        counts = Counter(tuple(int(v) for v in r) for r in full)
        combos = sorted(counts, key=lambda c: (-counts[c], c))
        return cls(names, tuple(tuple(tasks[t]) for t in names), tuple(combos), tuple(counts[c] for c in combos))

    # ---- JSON form --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Combinations by label name (readable in a manifest), most frequent first."""
        return {
            "format": FORMAT,
            "tasks": list(self.tasks),
            "combinations": [
                {"labels": [self.labels[j][i] for j, i in enumerate(c)], "count": n}
                for c, n in zip(self.combos, self.counts, strict=False)
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], tasks: Mapping[str, Sequence[str]]) -> LabelStructure:
        """Parse `to_dict()` against the model's `tasks` (every task named must be one of them)."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ConfigError(f"label structure must be an object with format {FORMAT!r}")
        names = tuple(str(t) for t in d.get("tasks", ()))
        unknown = [t for t in names if t not in tasks]
        if unknown:
            raise ConfigError(f"label structure names unknown task(s) {unknown}; model tasks: {', '.join(tasks)}")
        labels = tuple(tuple(tasks[t]) for t in names)
        combos, counts = [], []
        for entry in d.get("combinations", ()):
            labs = list(entry.get("labels", ()))
            if len(labs) != len(names):
                raise ConfigError(f"label combination {labs} does not have one label per task {list(names)}")
            try:
                combos.append(tuple(labels[j].index(lab) for j, lab in enumerate(labs)))
            except ValueError:
                raise ConfigError(f"label combination {labs} holds a label that is not one of its task's") from None
            counts.append(int(entry.get("count", 1)))
        return cls(names, labels, tuple(combos), tuple(counts))

    # ---- decoding ---------------------------------------------------------------------------------
    @functools.cached_property
    def _combo_set(self) -> frozenset[tuple[int, ...]]:
        return frozenset(self.combos)

    def contains(self, combo: Sequence[int]) -> bool:
        return tuple(int(i) for i in combo) in self._combo_set

    def decode(self, probs: Mapping[str, np.ndarray], *, use_prior: bool = False) -> dict[str, np.ndarray]:
        """probs: {task: [B, C_t]} (every task of the table) -> {task: [B] label index} of the most probable
        valid combination; tasks of `probs` outside the table keep their own argmax."""
        missing = [t for t in self.tasks if t not in probs]
        if missing:
            raise ConfigError(f"joint decoding needs probabilities of {missing}")
        combos = np.asarray(self.combos, dtype=np.int64)  # [K, T]
        eps = 1e-12  # a zero probability rules a combination out without producing -inf - -inf = nan
        score = 0.0
        for j, t in enumerate(self.tasks):
            p = np.asarray(probs[t], dtype=np.float64)
            if p.ndim != 2 or p.shape[1] != len(self.labels[j]):
                raise ConfigError(f"probabilities of {t!r} must be [B, {len(self.labels[j])}], got {list(p.shape)}")
            score = score + np.log(p[:, combos[:, j]] + eps)  # [B, K]
        if use_prior:
            counts = np.asarray(self.counts, dtype=np.float64)
            score = score + np.log(counts / counts.sum())[None, :]
        best = combos[np.argmax(score, axis=1)]  # [B, T]
        out = {t: np.asarray(p).argmax(axis=-1) for t, p in probs.items()}
        out.update({t: best[:, j] for j, t in enumerate(self.tasks)})
        return out


def structure_or_none(d: Mapping[str, Any] | None, tasks: Mapping[str, Sequence[str]]) -> LabelStructure | None:
    """The table of `d` (a `to_dict()`, or None) over the tasks of `tasks` it names: a bundle that serves a
    subset of the training tasks gets the table projected onto them (counts summed). None when there is
    no table or fewer than 2 of its tasks are served."""
    if not d:
        return None
    served = [t for t in d.get("tasks", ()) if t in tasks]
    if len(served) < 2:
        return None
    full_tasks = {t: list(tasks[t]) if t in tasks else None for t in d.get("tasks", ())}
    keep = [j for j, t in enumerate(full_tasks) if t in tasks]
    counts: Counter[tuple[str, ...]] = Counter()
    for entry in d.get("combinations", ()):
        labs = list(entry.get("labels", ()))
        if len(labs) != len(full_tasks):
            raise ConfigError(f"label combination {labs} does not have one label per task {list(full_tasks)}")
        counts[tuple(labs[j] for j in keep)] += int(entry.get("count", 1))
    projected = {"format": d.get("format"), "tasks": served,
                 "combinations": [{"labels": list(c), "count": n} for c, n in counts.most_common()]}
    return LabelStructure.from_dict(projected, tasks)
