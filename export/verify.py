"""Checking an exported graph against the torch model on real-looking posts.

Inputs go through the runtime's own preprocessing (sdk.preprocess) and tokenizer, in two batches of
different sizes and text lengths (so the dynamic axes are exercised too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.graph import ExportGraph

# Captions in the style of social-media posts (written for this purpose; no data set text).
CAPTIONS = (
    "Portrait of a smiling woman in a sunny field of flowers",
    "Angry man shouting at his laptop in a dark office late at night",
    "Two old friends laughing together on a park bench",
    "A lonely child looking out of a rainy window",
    "Family having dinner together at home, warm evening light",
    "Businessman running to catch the last train",
    "Couple holding hands on the beach at sunset, in love",
    "Close-up of a disgusting rotten apple on a kitchen table",
    "Quiet lake in the mountains, calm morning",
    "Crowd protesting in the street with signs and flags",
    "Scared cat hiding under the bed",
    "Student wondering about a strange puzzle in the library",
)


def verification_feeds(preprocess_cfg: Any, tokenizer: Any, batch_sizes: Sequence[int] = (5, 1, 1),
                       seed: int = 1234, trim: bool = True) -> list[dict[str, np.ndarray]]:
    """Feeds of generated images + captions, one dict per batch, preprocessed like the runtime.

    Default batches: 5 posts (mixed lengths), 1 post, and 1 post with an empty caption (the shortest
    text, [BOS, EOS]: length 2 after trimming), so batch and length axes are exercised at their edges.
    `preprocess_cfg` None: text feeds alone (a text-only graph)."""
    from calibration.data import Post, generated_posts
    from calibration.reader import SydesCalibrationReader

    posts = generated_posts(sum(batch_sizes), seed=seed)
    posts = [Post(p.image, CAPTIONS[i % len(CAPTIONS)], id=p.id) for i, p in enumerate(posts)]
    if batch_sizes and batch_sizes[-1] == 1 and len(batch_sizes) > 1:
        posts[-1].text = ""
    reader = SydesCalibrationReader(posts, preprocess_cfg, tokenizer, batch_size=1, trim=trim)
    feeds, start = [], 0
    for b in batch_sizes:
        feeds.append(reader.feed(posts[start:start + b]))
        start += b
    return feeds


def torch_probs(graph: ExportGraph, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The torch model's probabilities per task over all feeds (FP32, eval mode)."""
    graph.eval()
    out: dict[str, list[np.ndarray]] = {t: [] for t in graph.tasks}
    with torch.no_grad():
        for feed in feeds:
            probs = graph(*(torch.as_tensor(feed[n]) for n in graph.input_names))
            for t, p in zip(graph.tasks, probs, strict=True):
                out[t].append(p.float().numpy())
    return {t: np.concatenate(v) for t, v in out.items()}


def onnx_probs(path: str | Path, feeds: Sequence[dict[str, np.ndarray]], tasks: Sequence[str],
               ) -> dict[str, np.ndarray]:
    from calibration.report import run_graph

    res = run_graph(path, feeds)
    return {t: res[f"probs_{t}"].astype(np.float32) for t in tasks}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, Any]:
    """{"max_abs_diff": {task: x}, "agreement": {task: top-1 agreement}, "samples": N}."""
    diff = {t: float(np.max(np.abs(reference[t].astype(np.float64) - candidate[t]))) for t in reference}
    agree = {t: float(np.mean(reference[t].argmax(-1) == candidate[t].argmax(-1))) for t in reference}
    n = int(next(iter(reference.values())).shape[0])
    return {"max_abs_diff": diff, "agreement": agree, "samples": n}
