"""Classification metrics in plain numpy, defined once for the whole project (training's reports, the
calibration report of a bundle, the recipe), checked against scikit-learn in tests.

Conventions follow scikit-learn with `labels=` all classes of the task: precision / recall / F1 of a class
with no predicted (or no true) sample is 0, macro = unweighted mean over ALL classes of the task (also
those absent from the slice), weighted = mean weighted by true support.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdk.errors import DataError


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [C, C]: row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise DataError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{name} holds a class index outside [0, {num_classes})")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def task_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, macro/weighted F1, per-class precision/recall/F1/support and the confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = cm.sum()
    return {
        "n": int(n),
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()) if len(labels) else 0.0,
        "weighted_f1": float((f1 * support).sum() / n) if n else 0.0,
        "per_class": {
            lab: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                  "support": int(support[i])}
            for i, lab in enumerate(labels)
        },
        "labels": list(labels),
        "confusion": cm.tolist(),
    }


def macro_f1_resampled(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, idx: np.ndarray) -> np.ndarray:
    """Macro-F1 (the conventions above) of every resample at once: idx [R, N] row indices into y_true /
    y_pred [N] -> [R] (bootstrap intervals without R calls of task_report)."""
    t, p = np.asarray(y_true, dtype=np.int64)[idx], np.asarray(y_pred, dtype=np.int64)[idx]  # [R, N]
    cm = np.zeros((idx.shape[0], num_classes, num_classes))
    np.add.at(cm, (np.broadcast_to(np.arange(idx.shape[0])[:, None], t.shape), t, p), 1)
    tp = np.einsum("rkk->rk", cm)
    precision, recall = _safe_div(tp, cm.sum(axis=1)), _safe_div(tp, cm.sum(axis=2))
    return _safe_div(2 * precision * recall, precision + recall).mean(axis=1)


def macro_f1(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
             num_classes: int | None = None) -> float:
    """Macro-F1 over all `num_classes` classes (default: max label + 1; pass the task's class count)."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.size == 0 and p.size == 0:
        return float("nan")
    k = int(num_classes or max(t.max(initial=0), p.max(initial=0)) + 1)
    return task_report(t, p, [str(i) for i in range(k)])["macro_f1"]
