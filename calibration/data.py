"""Calibration / evaluation data: posts (image + text + optional labels) read from common layouts.

Layouts understood by `load_items(source)`:
- MSED: a folder holding `{split}/{split}.csv` + `{split}/images/K.jpg` (row K, 1-based <-> K.jpg),
  text = the Caption column, labels = Sentiment / Emotion / Desire; or the split folder itself.
- A JSONL file of posts: one object a line with `image` (path, relative to the file) and `text`;
  any other string field whose name is a task (`sentiment`, ...) or a `labels` object gives labels.
- A CSV file of posts: columns `image` (or `image_path`) and `text` (or `Caption`), optional label columns.
- A folder of images: the text of `x.jpg` comes from `x.txt` beside it when present, else "".
Only the paths are read here; images are decoded later by the reader with sdk.preprocess, exactly
as the runtime does.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdk.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TASK_NAMES = ("sentiment", "emotion", "desire")


@dataclass
class Post:
    """One image-text pair. `image` is anything sdk.preprocess accepts (a path, bytes, array, PIL)."""

    image: Any
    text: str
    labels: dict[str, str] = field(default_factory=dict)
    id: str = ""

    def fingerprint(self) -> bytes:
        """sha256 of the image content + text + labels (identifies the sample, not its file name)."""
        h = hashlib.sha256()
        img = self.image
        if isinstance(img, (str, os.PathLike)):
            with open(img, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        elif isinstance(img, (bytes, bytearray)):
            h.update(bytes(img))
        elif isinstance(img, np.ndarray):
            h.update(str((img.shape, img.dtype.str)).encode())
            h.update(np.ascontiguousarray(img).tobytes())
        else:  # PIL image or other: hash its pixels
            arr = np.asarray(img)
            h.update(str((arr.shape, arr.dtype.str)).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(b"\0text\0" + self.text.encode("utf-8"))
        h.update(b"\0labels\0" + json.dumps(self.labels, sort_keys=True).encode())
        return h.digest()


def data_fingerprint(posts: Sequence[Post]) -> str:
    """sha256 over the ordered samples' fingerprints."""
    h = hashlib.sha256()
    for p in posts:
        h.update(p.fingerprint())
    return h.hexdigest()


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))  # a real CSV parser: MSED captions span lines inside quotes
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from e


def _labels_from(row: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    nested = row.get("labels")
    if isinstance(nested, dict):
        labels.update({str(k).lower(): str(v) for k, v in nested.items()})
    for k, v in row.items():
        if isinstance(k, str) and k.lower() in TASK_NAMES and v not in (None, ""):
            labels[k.lower()] = str(v).strip()
    return labels


def load_msed(split_dir: Path) -> list[Post]:
    """Rows of an MSED split folder (`dev/` holding dev.csv and images/)."""
    csv_path = split_dir / f"{split_dir.name}.csv"
    if not csv_path.is_file():
        raise DataError(f"{split_dir} is not an MSED split folder: {csv_path.name} is missing")
    rows = _read_csv(csv_path)
    posts = []
    for k, row in enumerate(rows, start=1):
        if "Caption" not in row:
            raise DataError(f"{csv_path}: no 'Caption' column (columns: {sorted(row)})")
        img = split_dir / "images" / f"{k}.jpg"
        posts.append(Post(image=str(img), text=row["Caption"] or "", labels=_labels_from(row), id=str(k)))
    return posts


def load_posts_file(path: Path) -> list[Post]:
    """A JSONL or CSV file of posts (image paths relative to the file's folder)."""
    base = path.parent
    if path.suffix.lower() in (".jsonl", ".json"):
        rows: list[dict[str, Any]] = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {n}: not JSON ({e.msg})") from e
                if not isinstance(obj, dict):
                    raise DataError(f"{path}, line {n}: expected an object, got {type(obj).__name__}")
                rows.append(obj)
    else:
        rows = _read_csv(path)
    posts = []
    for n, row in enumerate(rows, start=1):
        img = row.get("image", row.get("image_path"))
        text = row.get("text", row.get("Caption"))
        if not img:
            raise DataError(f"{path}, row {n}: no 'image' field")
        if text is None:
            raise DataError(f"{path}, row {n}: no 'text' field")
        img_path = Path(img) if Path(img).is_absolute() else base / img
        posts.append(Post(image=str(img_path), text=str(text), labels=_labels_from(row),
                          id=str(row.get("id", n))))
    return posts


def load_image_folder(path: Path) -> list[Post]:
    """Every image in a folder (sorted by name); texts from `name.txt` sidecars when present."""
    posts = []
    for img in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        txt = img.with_suffix(".txt")
        text = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
        posts.append(Post(image=str(img), text=text, id=img.stem))
    if not posts:
        raise DataError(f"{path}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return posts


def load_items(source: str | os.PathLike[str], split: str = "train") -> list[Post]:
    """Posts from an MSED root / split folder, a JSONL/CSV file, or a folder of images (see module doc)."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"calibration data not found: {path}")
    if path.is_file():
        if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
            raise DataError(f"{path}: unsupported data file (expected .jsonl or .csv)")
        return load_posts_file(path)
    if (path / split / f"{split}.csv").is_file():
        return load_msed(path / split)
    if (path / f"{path.name}.csv").is_file():
        return load_msed(path)
    splits = sorted(p.name for p in path.iterdir() if (p / f"{p.name}.csv").is_file())
    if splits:
        raise DataError(f"{path}: MSED split {split!r} not found (available: {', '.join(splits)})")
    return load_image_folder(path)


_GEN_WORDS = ("a", "photo", "of", "happy", "sad", "dog", "family", "beach", "angry", "man", "crowd",
              "sunset", "friends", "alone", "city", "rain", "smile", "party", "quiet", "forest")


def generated_posts(n: int, seed: int = 0, size: tuple[int, int] = (408, 612),
                    tasks: dict[str, Sequence[str]] | None = None) -> list[Post]:
    """`n` synthetic posts (smooth random images as uint8 arrays, short random texts, random labels).

    For tests and for exporting without data: smooth gradients + blobs look more like photos than
    white noise, so activation ranges are closer to real ones.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    posts = []
    for i in range(n):
        base = rng.uniform(0, 255, size=3)
        grad = rng.uniform(-0.4, 0.4, size=(2, 3))
        img = base + yy[..., None] * grad[0] * (255 / h) + xx[..., None] * grad[1] * (255 / w)
        for _ in range(3):  # a few soft blobs
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, min(h, w) / 2)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img = img + blob[..., None] * rng.uniform(-120, 120, size=3)
        img = img + rng.normal(0, 6, size=img.shape)
        words = rng.choice(_GEN_WORDS, size=int(rng.integers(3, 14)))
        labels = {t: str(rng.choice(list(names))) for t, names in (tasks or {}).items()}
        posts.append(Post(image=np.clip(img, 0, 255).astype(np.uint8), text=" ".join(words),
                          labels=labels, id=f"gen{i}"))
    return posts
