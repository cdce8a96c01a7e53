"""sdk.labels: the label structure learnt from labels, joint decoding, JSON round trip, the Analyzer's use."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bundle_fixture import TASKS, build_fake_bundle

from sdk.errors import BundleError, ConfigError
from sdk.labels import LabelStructure, structure_or_none

TWO = {"sentiment": ["negative", "neutral", "positive"], "emotion": ["happiness", "sad", "neutral"]}
# emotion follows from sentiment: positive -> happiness, neutral -> neutral, negative -> sad
ROWS = np.array([[2, 0], [2, 0], [1, 2], [0, 1], [0, 1], [0, 1], [-100, 0]])


def table() -> LabelStructure:
    return LabelStructure.from_labels(TWO, ROWS)


def test_table_learnt_from_labels_most_frequent_first() -> None:
    s = table()
    assert s.combos == ((0, 1), (2, 0), (1, 2))
    assert s.counts == (3, 2, 1)  # the row with a missing label is left out
    assert s.contains([2, 0]) and not s.contains([1, 0])


def test_joint_decoding_never_contradicts_and_keeps_consistent_argmax() -> None:
    rng = np.random.default_rng(0)
    s = table()
    p = {t: rng.dirichlet(np.ones(len(v)), size=500) for t, v in TWO.items()}
    for prior in (False, True):
        out = s.decode(p, use_prior=prior)
        assert out["sentiment"].shape == (500,)
        assert all(s.contains(c) for c in zip(out["sentiment"], out["emotion"], strict=False))
    # where the independent argmax is a valid combination, joint decoding without the prior keeps it
    ind = {t: v.argmax(1) for t, v in p.items()}
    out = s.decode(p)
    ok = np.array([s.contains(c) for c in zip(ind["sentiment"], ind["emotion"], strict=False)])
    assert ok.any() and (out["sentiment"][ok] == ind["sentiment"][ok]).all()


def test_joint_decoding_resolves_a_contradiction_by_probability() -> None:
    s = table()
    # sentiment says neutral (0.5) but emotion says happiness (0.9): (positive, happiness) wins
    p = {"sentiment": np.array([[0.1, 0.5, 0.4]]), "emotion": np.array([[0.9, 0.05, 0.05]])}
    out = s.decode(p)
    assert (out["sentiment"][0], out["emotion"][0]) == (2, 0)


def test_prior_breaks_near_ties_towards_frequent_combinations() -> None:
    s = table()
    p = {"sentiment": np.array([[0.49, 0.02, 0.49]]), "emotion": np.array([[0.5, 0.5, 0.0]])}
    assert s.decode(p, use_prior=True)["sentiment"][0] == 0  # (negative, sad) seen 3x vs 2x


def test_round_trip_and_projection() -> None:
    s = table()
    d = json.loads(json.dumps(s.to_dict()))
    assert LabelStructure.from_dict(d, TWO) == s
    three = {**TWO, "desire": ["a", "b"]}
    full = LabelStructure.from_labels(three, np.array([[2, 0, 0], [2, 0, 1], [0, 1, 1]]))
    proj = structure_or_none(full.to_dict(), TWO)
    assert proj is not None and proj.tasks == ("sentiment", "emotion") and dict(zip(proj.combos, proj.counts, strict=False)) == {
        (2, 0): 2, (0, 1): 1}
    assert structure_or_none(full.to_dict(), {"sentiment": TWO["sentiment"]}) is None
    assert structure_or_none(None, TWO) is None


def test_bad_tables_raise_clear_errors() -> None:
    with pytest.raises(ConfigError, match="needs >= 2 tasks"):
        LabelStructure.from_labels({"sentiment": TWO["sentiment"]}, np.array([[0]]))
    with pytest.raises(ConfigError, match="no training row labels every task"):
        LabelStructure.from_labels(TWO, np.array([[-100, 0]]))
    with pytest.raises(ConfigError, match="rows must be"):
        LabelStructure.from_labels(TWO, np.array([0, 1]))
    d = table().to_dict()
    d["combinations"][0]["labels"] = ["negative", "furious"]
    with pytest.raises(ConfigError, match="not one of its task's"):
        LabelStructure.from_dict(d, TWO)
    with pytest.raises(ConfigError, match="format"):
        LabelStructure.from_dict({"tasks": ["sentiment"]}, TWO)
    with pytest.raises(ConfigError, match=r"must be \[B, 3\]"):
        table().decode({"sentiment": np.ones((2, 2)), "emotion": np.ones((2, 3))})


def _msed_table() -> dict:
    rows = np.array([[2, 0, 6], [1, 2, 6], [1, 2, 1], [0, 1, 0], [0, 4, 0], [0, 3, 6], [0, 5, 6]])
    return LabelStructure.from_labels(TASKS, rows).to_dict()


def test_analyzer_answers_valid_combinations_and_keeps_probs(tmp_path) -> None:
    from sdk.analyzer import Analyzer

    structure = LabelStructure.from_dict(_msed_table(), TASKS)
    b = build_fake_bundle(tmp_path / "j.sydes", label_structure=_msed_table())
    img = (np.arange(224 * 224 * 3) % 251).astype(np.uint8).reshape(224, 224, 3)
    posts = [(img + k, t) for k, t in enumerate(["happy day", "sad night", "angry man", "the cat", "great food"])]
    with Analyzer(b, device="cpu", threads=1, warmup=False) as az, \
            Analyzer(b, device="cpu", threads=1, warmup=False, joint=False) as ind:
        assert az.info.decoding == "joint" and ind.info.decoding == "independent"
        for r, q in zip(az.analyze_batch(posts), ind.analyze_batch(posts), strict=False):
            combo = [TASKS[t].index(r.tasks[t].label) for t in TASKS]
            assert structure.contains(combo)
            for t in TASKS:
                assert r.tasks[t].probs == q.tasks[t].probs  # per-task probabilities unchanged
                assert r.tasks[t].score == r.tasks[t].probs[r.tasks[t].label]
                assert q.tasks[t].label == max(q.tasks[t].probs, key=q.tasks[t].probs.get)


def test_analyzer_joint_option_errors(tmp_path) -> None:
    from sdk.analyzer import Analyzer

    plain = build_fake_bundle(tmp_path / "p.sydes")
    with pytest.raises(ConfigError, match="carries no label structure"):
        Analyzer(plain, device="cpu", warmup=False, joint=True)
    with pytest.raises(ConfigError, match="joint must be"):
        Analyzer(plain, device="cpu", warmup=False, joint="yes")
    bad = _msed_table()
    bad["combinations"][0]["labels"][0] = "ecstatic"
    with pytest.raises(BundleError, match="label_structure"):
        build_fake_bundle(tmp_path / "bad.sydes", label_structure=bad)
        from sdk.bundle import load_bundle

        load_bundle(tmp_path / "bad.sydes")
