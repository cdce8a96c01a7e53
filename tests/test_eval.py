from __future__ import annotations

import json

import numpy as np
import pytest

from sdk.errors import DataError
from training.metrics import confusion_matrix, evaluate_predictions, format_report, summary_row, task_report


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    c = 6
    y = rng.integers(0, c - 1, size=200)  # class 5 never true: exercises the zero-division convention
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, c, size=200))
    r = task_report(y, p, [f"c{i}" for i in range(c)])
    labels = list(range(c))
    assert r["accuracy"] == pytest.approx(sk.accuracy_score(y, p))
    assert r["macro_f1"] == pytest.approx(sk.f1_score(y, p, average="macro", labels=labels, zero_division=0))
    assert r["weighted_f1"] == pytest.approx(sk.f1_score(y, p, average="weighted", labels=labels, zero_division=0))
    prec = sk.precision_score(y, p, average=None, labels=labels, zero_division=0)
    rec = sk.recall_score(y, p, average=None, labels=labels, zero_division=0)
    for i in range(c):
        assert r["per_class"][f"c{i}"]["precision"] == pytest.approx(prec[i])
        assert r["per_class"][f"c{i}"]["recall"] == pytest.approx(rec[i])
    assert np.array_equal(np.array(r["confusion"]), sk.confusion_matrix(y, p, labels=labels))


def test_resampled_macro_f1_equals_one_call_per_resample():
    from sdk.metrics import macro_f1, macro_f1_resampled

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=50)  # 5 classes, class 4 never true
    p = np.where(rng.random(50) < 0.5, y, rng.integers(0, 5, size=50))
    idx = rng.integers(0, 50, size=(20, 50))
    got = macro_f1_resampled(y, p, 5, idx)
    assert got.shape == (20,)
    assert np.allclose(got, [macro_f1(y[i], p[i], 5) for i in idx])


def test_missing_labels_are_left_out_and_report_formats():
    tasks = {"sentiment": ["negative", "neutral", "positive"]}
    reps = evaluate_predictions({"sentiment": np.array([0, -100, 2, 1])}, {"sentiment": np.array([0, 1, 2, 2])},
                                tasks)
    assert reps["sentiment"]["n"] == 3 and reps["sentiment"]["accuracy"] == pytest.approx(2 / 3)
    text = format_report(reps)
    assert "macro-F1" in text and "positive" in text
    row = summary_row(reps)
    assert row["macro_f1"] == row["sentiment/macro_f1"]
    json.dumps(reps)


def test_metric_errors():
    with pytest.raises(DataError, match="y_true has 2 labels but y_pred has 3"):
        confusion_matrix(np.array([0, 1]), np.array([0, 1, 1]), 2)
    with pytest.raises(DataError, match=r"outside \[0, 2\)"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 2)
