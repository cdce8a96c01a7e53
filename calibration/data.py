"""Calibration / evaluation data: posts (image + text + optional labels) read from common layouts.

Layouts understood by `load_items(source)`:
- MSED: a folder holding `{split}/{split}.csv` + `{split}/images/K.jpg` (row K, 1-based <-> K.jpg),
  text = the model's text fields (default: the Caption column), labels = Sentiment / Emotion / Desire; or
  the split folder itself.
- A posts file (JSONL / CSV / TSV): an image path column (`image`, ...; relative to the file) and the text
  fields' columns, else a text column (`text`, ...); a column named like a task (`sentiment`, ...) or a
  `labels` object gives labels.
- A folder of images: the text of `x.jpg` comes from `x.txt` beside it when present, else "".
MSED and posts files are read by `sdk.posts` (the one posts reader: columns, row numbers, errors); only
the paths are read here, images are decoded later by the reader with sdk.preprocess, exactly as the
runtime does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdk.errors import DataError
from sdk.posts import MSED_PATTERN, TASK_NAMES, PostsPlan, iter_rows, msed_csv, plan_posts
from sdk.text_fields import DEFAULT_TEXT_FIELDS, TextFields

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


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


def _posts(plan: PostsPlan) -> list[Post]:
    """Every row of a posts plan as a Post; the first unusable row raises its DataError."""
    posts = []
    for row in iter_rows(plan, tasks=TASK_NAMES, check_images=True, require_text=True):
        row.check()
        posts.append(Post(image=str(row.image), text=row.text or "", labels=row.labels,
                          id=str(row.n if row.id is None else row.id)))
    return posts


def load_msed(split_dir: Path, text_fields: TextFields | None = None) -> list[Post]:
    """Rows of an MSED split folder (`dev/` holding dev.csv and images/); the text from `text_fields`
    (default: the Caption), whose columns the CSV must have."""
    split_dir = Path(split_dir)
    csv_path = split_dir / f"{split_dir.name}.csv"
    if not csv_path.is_file():
        raise DataError(f"{split_dir}: not an MSED split folder ({csv_path.name} is missing)")
    fields = text_fields or DEFAULT_TEXT_FIELDS
    return _posts(plan_posts(csv_path, text_fields=fields, image_pattern=MSED_PATTERN, require=fields.fields))


def load_posts_file(path: Path, text_fields: TextFields | None = None) -> list[Post]:
    """A JSONL / CSV / TSV file of posts (image paths relative to the file's folder); the text from
    `text_fields` where the file has their columns, else its text column (as `sydes analyze` reads it)."""
    return _posts(plan_posts(path, text_fields=text_fields))


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


def load_items(source: str | os.PathLike[str], split: str = "train",
               text_fields: TextFields | None = None) -> list[Post]:
    """Posts from an MSED root / split folder, a posts file, or a folder of images (see module doc); the
    text built from `text_fields` (the model's: its checkpoint's `config.tokenizer.text_recipe()`)."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: calibration data not found")
    if path.is_dir():
        csv_path = msed_csv(path, split)
        return load_image_folder(path) if csv_path is None else load_msed(csv_path.parent, text_fields)
    return load_posts_file(path, text_fields)


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
