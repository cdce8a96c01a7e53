"""Evaluation reports over tasks (per-task metrics come from `sdk.metrics`, their one definition).

Conventions follow scikit-learn's defaults: precision/recall/F1 of a class with no predicted (or no true)
samples is 0 (sklearn's `zero_division` warning case), macro = unweighted mean over all classes of the task
(also those absent from the split), weighted = mean weighted by true support.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk.errors import DataError  # noqa: F401  (re-exported for callers of this module)
from sdk.metrics import confusion_matrix, macro_f1, task_report  # noqa: F401  (one definition, in sdk)


def evaluate_predictions(y_true: dict[str, np.ndarray], y_pred: dict[str, np.ndarray],
                         tasks: dict[str, Sequence[str]]) -> dict[str, dict]:
    """Per-task reports; rows whose true label is missing (< 0) are left out of that task."""
    out: dict[str, dict] = {}
    for task, labels in tasks.items():
        if task not in y_true:
            continue
        t = np.asarray(y_true[task]).ravel()
        p = np.asarray(y_pred[task]).ravel()
        keep = t >= 0
        out[task] = task_report(t[keep], p[keep], labels)
    return out


def format_report(reports: dict[str, dict]) -> str:
    """A readable text table per task: summary line, per-class P/R/F1, confusion matrix."""
    lines: list[str] = []
    for task, r in reports.items():
        lines.append(f"== {task}  (n={r['n']})  accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  "
                     f"weighted-F1 {r['weighted_f1']:.4f}")
        w = max(10, *(len(lab) for lab in r["labels"]))
        lines.append(f"  {'class':<{w}} {'prec':>7} {'recall':>7} {'f1':>7} {'support':>8}")
        for lab, c in r["per_class"].items():
            lines.append(f"  {lab:<{w}} {c['precision']:>7.4f} {c['recall']:>7.4f} {c['f1']:>7.4f} "
                         f"{c['support']:>8d}")
        lines.append("  confusion (rows = true, columns = predicted, order as above):")
        cw = max(4, *(len(str(v)) for row in r["confusion"] for v in row))
        lines.extend("  " + " ".join(f"{v:>{cw}d}" for v in row) + f"   {lab}"
                     for lab, row in zip(r["labels"], r["confusion"], strict=True))
        lines.append("")
    return "\n".join(lines)


def summary_row(reports: dict[str, dict]) -> dict[str, float]:
    """Flat {task/metric: value} for metrics.jsonl and selection (mean macro-F1 over tasks included)."""
    row = {}
    for task, r in reports.items():
        row[f"{task}/accuracy"] = r["accuracy"]
        row[f"{task}/macro_f1"] = r["macro_f1"]
        row[f"{task}/weighted_f1"] = r["weighted_f1"]
    if reports:
        row["macro_f1"] = float(np.mean([r["macro_f1"] for r in reports.values()]))
    return row


def save_confusion_png(reports: dict[str, dict], path: str) -> bool:
    """Plot the confusion matrices (one panel per task); returns False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import io

    from sdk.atomic import atomic_write_bytes

    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 4.5), squeeze=False)
    for ax, (task, r) in zip(axes[0], reports.items(), strict=True):
        cm = np.asarray(r["confusion"])
        ax.imshow(cm, cmap="Blues")
        ax.set_title(f"{task}: acc {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}")
        ax.set_xticks(range(len(r["labels"])), r["labels"], rotation=45, ha="right")
        ax.set_yticks(range(len(r["labels"])), r["labels"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def to_json(reports: dict[str, dict], **extra) -> str:
    return json.dumps({**extra, "tasks": reports}, indent=2)


class MetricsLog:
    """Appends JSON lines to metrics.jsonl (and TensorBoard when installed); rank 0 only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled, self.tb = path, enabled, None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{row.get('event', 'train')}/{k}", v, row.get("step", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
