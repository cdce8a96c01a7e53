"""The joint head (extra_heads.JointHead, SyDES.add_joint_head, the recipe's `joint-head` variant): its marginals and
NLL against brute force, its start, the errors, the checkpoint round trip and the exported graph's parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdk.errors import ConfigError
from sdk.labels import LabelStructure
from training import presets
from training.extra_heads import JointHead
from training.losses import joint_nll
from training.model import SyDES

SIZES = {"sentiment": 3, "emotion": 4}
COMBOS = [(0, 0), (1, 1), (2, 2), (2, 1)]  # emotion 3 occurs in no combination


def brute_joint(logits: dict[str, torch.Tensor], extra: torch.Tensor) -> torch.Tensor:
    """p(c) [B, K] by enumeration: exp(sum of the per-task logits + the joint term), normalised over COMBOS."""
    s = torch.stack([logits["sentiment"][:, i] + logits["emotion"][:, j] + extra[:, k]
                     for k, (i, j) in enumerate(COMBOS)], dim=1)
    return torch.softmax(s, dim=1)


def head(seed: int = 0, zero: bool = False) -> JointHead:
    torch.manual_seed(seed)
    h = JointHead(5, ("sentiment", "emotion"), SIZES, COMBOS)
    if zero:
        torch.nn.init.zeros_(h.proj.weight)
        torch.nn.init.zeros_(h.proj.bias)
    return h


def test_marginals_are_the_joint_distributions_marginals() -> None:
    h = head()
    x = torch.randn(3, 5)
    logits = {t: torch.randn(3, c) for t, c in SIZES.items()}
    scores = h.scores(x, logits)
    assert scores.shape == (3, len(COMBOS))
    p = brute_joint(logits, h.proj(x))
    torch.testing.assert_close(torch.softmax(scores, 1), p)
    marg = {t: torch.softmax(v, -1) for t, v in h.marginals(scores).items()}
    assert marg["sentiment"].shape == (3, 3) and marg["emotion"].shape == (3, 4)
    want_s = torch.stack([p[:, [k for k, c in enumerate(COMBOS) if c[0] == y]].sum(1) for y in range(3)], 1)
    want_e = torch.stack([p[:, [k for k, c in enumerate(COMBOS) if c[1] == y]].sum(1) if y < 3
                          else torch.zeros(3) for y in range(4)], 1)
    torch.testing.assert_close(marg["sentiment"], want_s)
    torch.testing.assert_close(marg["emotion"], want_e)  # a label in no combination gets no mass


def test_zero_start_is_the_per_task_posteriors_restricted_to_the_table() -> None:
    h = head(zero=True)
    logits = {t: torch.randn(2, c) for t, c in SIZES.items()}
    p = torch.softmax(h.scores(torch.randn(2, 5), logits), 1)
    ps, pe = (torch.softmax(logits[t], -1) for t in SIZES)
    prod = torch.stack([ps[:, i] * pe[:, j] for i, j in COMBOS], 1)
    torch.testing.assert_close(p, prod / prod.sum(1, keepdim=True))


def test_joint_nll_is_minus_log_of_the_combination_and_skips_the_rest() -> None:
    torch.manual_seed(0)
    scores = torch.randn(4, len(COMBOS))
    combos = torch.tensor(COMBOS)
    # rows: (2, 1) = combination 3; (0, 0) = 0; (0, 2) in no combination; a missing label (-100)
    labels = {"sentiment": torch.tensor([2, 0, 0, -100]), "emotion": torch.tensor([1, 0, 2, 1])}
    logp = torch.log_softmax(scores, 1)
    want = -(logp[0, 3] + logp[1, 0]) / 2
    torch.testing.assert_close(joint_nll(scores, labels, ("sentiment", "emotion"), combos), want)
    none = {"sentiment": torch.tensor([0]), "emotion": torch.tensor([2])}
    assert joint_nll(scores[:1], none, ("sentiment", "emotion"), combos).item() == 0.0


def tiny(joint: bool = True, **sizes: int) -> SyDES:
    torch.manual_seed(0)
    m = SyDES(presets.tiny_vit_bert(("sentiment", "emotion"), **(sizes or {"image_size": 64, "patch_size": 16})))
    tasks = {t: m.config.tasks[t] for t in ("sentiment", "emotion")}
    m.config.label_structure = LabelStructure.from_labels(tasks, np.array([[0, 0], [1, 1], [2, 2], [2, 1]])).to_dict()
    if joint:
        m.add_joint_head()
    return m


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, 100, (3, 8), generator=g), "attention_mask": torch.ones(3, 8, dtype=torch.long),
            "global_pixels": torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=g),
            "canvas_pixels": torch.randint(0, 256, (3, 128, 128, 3), dtype=torch.uint8, generator=g)}


def test_model_outputs_and_loss() -> None:
    plain, m = tiny(joint=False).eval(), tiny().eval()
    sd = m.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in plain.state_dict().items())  # the head is added last
    assert sorted(set(sd) - set(plain.state_dict())) == ["joint.proj.bias", "joint.proj.weight"]
    b = batch()
    ids, mask = b.pop("input_ids"), b.pop("attention_mask")
    with torch.no_grad():
        f = m.encode(ids, mask, **b)
        per_task, scores = plain.head_outputs(f)
        got, got_scores = m.head_outputs(f)
    assert scores is None and got_scores is not None and got_scores.shape == (3, 4)
    probs = {t: torch.softmax(v, -1) for t, v in got.items()}
    # every answer's mass sits on valid combinations: emotion labels outside the table get none
    assert float(probs["emotion"][:, 3:].max()) < 1e-6
    p = brute_joint(per_task, torch.zeros(3, 4))
    torch.testing.assert_close(probs["sentiment"][:, 2], p[:, 2] + p[:, 3])
    labels = {"sentiment": torch.tensor([0, 2, 1]), "emotion": torch.tensor([0, 1, 1])}
    out = m.training_losses(batch(), labels, stage="finetune", weights={"joint": 0.5})
    assert out["joint"].item() > 0
    torch.testing.assert_close(out["loss"], 0.4 * out["itc"] + out["ce"] + 0.5 * out["joint"])
    plain_w = m.training_losses(batch(), labels, stage="finetune")  # unweighted: logged, not added
    torch.testing.assert_close(plain_w["loss"], 0.4 * plain_w["itc"] + plain_w["ce"])
    # the NLL trains the joint term
    m.zero_grad()
    out["joint"].backward()
    assert m.joint.proj.weight.grad.abs().sum() > 0


def test_joint_head_needs_the_table() -> None:
    m = SyDES(presets.tiny_vit_bert(("sentiment", "emotion"), image_size=64, patch_size=16, vocab_size=100))
    with pytest.raises(ConfigError, match="joint head needs the model's label_structure"):
        m.add_joint_head()
    cfg = m.config.to_dict()
    cfg["joint_head"] = True
    from training.config import SydesConfig

    with pytest.raises(ConfigError, match="joint_head needs a label_structure"):
        SydesConfig.from_dict(cfg)


def test_checkpoint_round_trip_and_exported_graph(tmp_path) -> None:
    from export.pipeline import ExportOptions, export_models
    from training.checkpoints import load_model
    from training.runner import load_tokenizer

    m = tiny(image_size=64, patch_size=32).eval()  # the real vocabulary: the export tokenises real text
    with torch.no_grad():  # a non-zero joint term, so the round trip checks its weights too
        m.joint.proj.weight.normal_(0, 0.5)
    load_tokenizer(m.config).save(tmp_path / "tokenizer.json")
    ck = m.save_pretrained(tmp_path / "ck", tokenizer_file=tmp_path / "tokenizer.json")
    back = load_model(ck).eval()
    assert back.config.joint_head and json.loads((ck / "config.json").read_text())["joint_head"] is True
    b = batch()
    ids, mask = b.pop("input_ids"), b.pop("attention_mask")
    with torch.no_grad():
        a, c = m(ids, mask, **b), back(ids, mask, **b)
    for t in a:
        torch.testing.assert_close(a[t], c[t], rtol=0, atol=0)
    # the bundle keeps its per-task outputs, and the export verifies them against torch
    export_models([back], tmp_path / "b.sydes", ExportOptions(cache_dir=str(tmp_path / "cache"), progress=False),
                  tokenizer_file=ck / "tokenizer.json")
    manifest = json.loads((tmp_path / "b.sydes" / "manifest.json").read_text())
    assert manifest["validation"]["passed"] is True
    assert max(manifest["validation"]["max_abs_diff"].values()) <= 1e-4


def test_int8_bundle_keeps_the_table(tmp_path) -> None:
    """The INT8 export quantises around the joint head's gathers and log-sum-exp: labels in no combination
    still get no mass through sdk.Analyzer."""
    from export.pipeline import ExportOptions, export_models
    from sdk import Analyzer
    from training.runner import load_tokenizer

    m = tiny(image_size=64, patch_size=32).eval()
    load_tokenizer(m.config).save(tmp_path / "tokenizer.json")
    opts = ExportOptions(precision="int8", calib="generated", calib_samples=8, eval_samples=8,
                         cache_dir=str(tmp_path / "cache"), progress=False)
    export_models([m], tmp_path / "q.sydes", opts, tokenizer_file=tmp_path / "tokenizer.json")
    rng = np.random.default_rng(0)
    with Analyzer(tmp_path / "q.sydes", joint=False) as az:
        results = az.analyze_batch([(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), "a happy day"),
                                    (rng.integers(0, 256, (64, 30, 3), dtype=np.uint8), "so sad")])
    for r in results:
        assert r.ok
        emotion = r.tasks["emotion"].probs
        assert sum(emotion.values()) == pytest.approx(1.0, abs=1e-5)
        assert emotion[m.config.tasks["emotion"][3]] < 1e-6
