"""Data sets: MSED's layout, users' posts (JSONL / CSV), a torch Dataset and its loader.

MSED layout: `{root}/{split}/{split}.csv` (columns Title, Caption, Sentiment, Emotion, Desire, ...) and
`{root}/{split}/images/K.jpg` for the K-th data row (1-based, header excluded). Only the Caption is used.

Posts file (JSONL: one object per line; CSV: a header row) with fields `image` (a path, relative to the
file's folder unless absolute), `text`, and any of `sentiment`, `emotion`, `desire` (label names).

Images are turned into pixels by `sdk.preprocess` and text into ids by `sdk.tokenizer`: the very code the
runtime uses, so training and serving see identical inputs.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdk.errors import DataError, SydesError

log = logging.getLogger(__name__)

# Label names in the index order of the reference SyDES code (msed-mini/README.md).
MSED_TASKS: dict[str, list[str]] = {
    "sentiment": ["negative", "neutral", "positive"],
    "emotion": ["happiness", "sad", "neutral", "disgust", "anger", "fear"],
    "desire": ["vengeance", "curiosity", "social-contact", "family", "tranquility", "romance", "none"],
}
MSED_COLUMNS = {"sentiment": "Sentiment", "emotion": "Emotion", "desire": "Desire"}
MISSING = -100  # label index of a task a row does not label (ignored by the loss and the metrics)


@dataclass(frozen=True)
class Example:
    """One post: image file, caption, label index per task (MISSING where unlabelled), where it came from."""

    image: Path
    text: str
    labels: dict[str, int]
    source: str  # "file:row" for error messages


@dataclass
class Records:
    """The rows read from a file; `skipped` holds one message per invalid row left out (skip_invalid)."""

    examples: list[Example]
    skipped: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def report(self) -> str:
        msg = f"{self.source}: {len(self.examples)} rows read, {len(self.skipped)} skipped"
        if self.skipped:
            shown = self.skipped[:5]
            msg += ":\n  " + "\n  ".join(shown) + ("\n  ..." if len(self.skipped) > 5 else "")
        return msg


def _label_index(task: str, value: Any, tasks: dict[str, Sequence[str]], where: str) -> int:
    names = tasks[task]
    if not isinstance(value, str):
        raise DataError(f"{where}: {task} label must be a string, got {value!r}")
    v = value.strip()
    if v not in names:
        raise DataError(f"{where}: unknown {task} label {value!r}; valid labels: {', '.join(names)}")
    return list(names).index(v)


def _finish(examples: list[Example], skipped: list[str], source: str, skip_invalid: bool) -> Records:
    rec = Records(examples, skipped, source)
    if skipped:
        log.warning("%s", rec.report())
    if not examples:
        raise DataError(f"{source}: no usable rows" + (f" ({len(skipped)} skipped)" if skip_invalid else ""))
    return rec


def read_msed(root: str | os.PathLike[str], split: str, *, tasks: dict[str, Sequence[str]] | None = None,
              skip_invalid: bool = False, limit: int | None = None) -> Records:
    """Read `{root}/{split}/{split}.csv`; row K (1-based) <-> `images/K.jpg`.

    Raises DataError naming file, row and problem (missing image, unknown label, malformed row), unless
    `skip_invalid`, where such rows are counted in `Records.skipped` instead.
    """
    tasks = dict(MSED_TASKS if tasks is None else tasks)
    for t in tasks:
        if t not in MSED_COLUMNS:
            raise DataError(f"unknown task {t!r}; MSED tasks: {', '.join(MSED_COLUMNS)}")
    folder = Path(root) / split
    csv_path = folder / f"{split}.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: not found (expected MSED layout {{root}}/{split}/{split}.csv)")
    examples: list[Example] = []
    skipped: list[str] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        needed = ["Caption", *(MSED_COLUMNS[t] for t in tasks)]
        missing_cols = [c for c in needed if c not in header]
        if missing_cols:
            raise DataError(f"{csv_path}: missing column(s) {', '.join(missing_cols)}; header is {header}")
        for k, row in enumerate(reader, start=1):
            if limit is not None and len(examples) >= limit:
                break
            where = f"{csv_path}:row {k}"
            try:
                if None in row or any(row.get(c) is None for c in needed):  # too many / too few fields
                    raise DataError(f"{where}: malformed row (expected {len(header)} fields)")
                image = folder / "images" / f"{k}.jpg"
                if not image.is_file():
                    raise DataError(f"{where}: image {image} not found")
                labels = {t: _label_index(t, row[MSED_COLUMNS[t]], tasks, where) for t in tasks}
                examples.append(Example(image, row["Caption"], labels, where))
            except DataError as e:
                if not skip_invalid:
                    raise
                skipped.append(str(e))
    return _finish(examples, skipped, str(csv_path), skip_invalid)


def _iter_posts(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) pairs; a row that is not an object is passed through for the caller to reject."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:line {i}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as e:
                    yield where, DataError(f"{where}: malformed JSON ({e.msg})")
    elif suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for k, row in enumerate(reader, start=1):
                yield f"{path}:row {k}", row
    else:
        raise DataError(f"{path}: unsupported posts file type {suffix!r}; use .jsonl or .csv")


def read_posts(path: str | os.PathLike[str], *, tasks: dict[str, Sequence[str]] | None = None,
               skip_invalid: bool = False, require_labels: bool = True,
               limit: int | None = None) -> Records:
    """Read a JSONL / CSV posts file. Each row needs `image` and `text`; labels are optional per task,
    but (with `require_labels`) a row must label at least one of `tasks`."""
    tasks = dict(MSED_TASKS if tasks is None else tasks)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: posts file not found")
    examples: list[Example] = []
    skipped: list[str] = []
    for where, row in _iter_posts(path):
        if limit is not None and len(examples) >= limit:
            break
        try:
            if isinstance(row, DataError):
                raise row
            if not isinstance(row, dict) or None in row:
                raise DataError(f"{where}: malformed row (expected an object / the header's fields)")
            img, text = row.get("image"), row.get("text")
            if not isinstance(img, str) or not img.strip():
                raise DataError(f"{where}: missing 'image' (a path relative to {path.parent})")
            if not isinstance(text, str):
                raise DataError(f"{where}: missing 'text'")
            image = Path(img) if os.path.isabs(img) else path.parent / img
            if not image.is_file():
                raise DataError(f"{where}: image {image} not found")
            labels = {}
            for t in tasks:
                v = row.get(t)
                labels[t] = MISSING if v is None or v == "" else _label_index(t, v, tasks, where)
            if require_labels and all(v == MISSING for v in labels.values()):
                raise DataError(f"{where}: no label for any of {', '.join(tasks)}")
            examples.append(Example(image, text, labels, where))
        except DataError as e:
            if not skip_invalid:
                raise
            skipped.append(str(e))
    return _finish(examples, skipped, str(path), skip_invalid)


def read_any(spec: str | os.PathLike[str], split: str | None = None, **kw) -> Records:
    """An MSED root (with `split`) or a posts file."""
    p = Path(spec)
    if p.is_dir():
        if split is None:
            raise DataError(f"{p}: an MSED folder needs a split name (train / dev / test)")
        return read_msed(p, split, **kw)
    return read_posts(p, **kw)


# --- torch side ---------------------------------------------------------------------------------------
def _torch():
    import torch

    return torch


class PostDataset:
    """torch Dataset of uint8 views + token ids + labels.

    Item: `global_pixels` uint8 [224,224,3], `canvas_pixels` uint8 [448,448,3], `input_ids` int64 [L],
    `attention_mask` int64 [L], `labels` int64 [T] (MISSING where unlabelled), `index` int.
    Texts are tokenised once up front (the tokenizer pads to max_length, so items stack).
    """

    def __init__(self, records: Records | Sequence[Example], tokenizer, preprocess_cfg,
                 tasks: Sequence[str], *, with_pixels: bool = True) -> None:
        self.examples = list(records)
        self.tasks = list(tasks)
        self.cfg = preprocess_cfg
        self.with_pixels = with_pixels
        ids, mask = tokenizer.encode_batch([e.text for e in self.examples])
        self.ids = np.asarray(ids, dtype=np.int64)
        self.mask = np.asarray(mask, dtype=np.int64)
        self.labels = np.array([[e.labels.get(t, MISSING) for t in self.tasks] for e in self.examples],
                               dtype=np.int64).reshape(len(self.examples), len(self.tasks))

    def __len__(self) -> int:
        return len(self.examples)

    def views(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from sdk.preprocess import preprocess

        ex = self.examples[i]
        try:
            return preprocess(ex.image, self.cfg)
        except SydesError as e:
            raise DataError(f"{ex.source}: image {ex.image}: {e}") from e

    def __getitem__(self, i: int) -> dict[str, Any]:
        torch = _torch()
        item: dict[str, Any] = {
            "input_ids": torch.from_numpy(self.ids[i]),
            "attention_mask": torch.from_numpy(self.mask[i]),
            "labels": torch.from_numpy(self.labels[i]),
            "index": i,
        }
        if self.with_pixels:
            g, c = self.views(i)
            item["global_pixels"] = torch.from_numpy(np.array(g, dtype=np.uint8, copy=True))
            item["canvas_pixels"] = torch.from_numpy(np.array(c, dtype=np.uint8, copy=True))
        return item


TOKEN_KEYS = ("input_ids", "attention_mask", "text_hidden")  # tensors whose dim 1 is the token length


def trim_padding(batch: dict[str, Any]) -> dict[str, Any]:
    """Cut the token dimension of `TOKEN_KEYS` to the batch's longest real sequence (max of the mask sums).

    Exact for the logits: trailing pads are masked keys in the text encoder's attention and in the pooling,
    and the decoder's self-attention is causal, so no real position ever sees a trailing pad.
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch
    n = max(1, int(mask.sum(dim=1).max()))
    if n >= mask.shape[1]:
        return batch
    return {k: v[:, :n] if k in TOKEN_KEYS and hasattr(v, "dim") and v.dim() >= 2 else v for k, v in batch.items()}


def collate(items: list[dict[str, Any]], trim: bool = False) -> dict[str, Any]:
    """Stack a list of items into a batch (tensors stacked, `index` as an int64 tensor); `trim` cuts the
    token padding to the batch's longest caption (trim_padding)."""
    torch = _torch()
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.tensor(vals, dtype=torch.int64) if k == "index" else torch.stack(vals)
    return trim_padding(out) if trim else out


class ResumableSampler:
    """Deterministic shuffled order that can restart mid-epoch and shard across DDP ranks.

    Order of epoch e = randperm(n, seed + e); padded (by wrapping) to a multiple of `world_size`, rank r
    takes every world_size-th index from r (like DistributedSampler). `start` skips the first `start`
    samples of this rank's share (resume inside an epoch).
    """

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        torch = _torch()
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.drop_last:
            order = order[: self.n - self.n % self.world_size]
        else:
            pad = (-self.n) % self.world_size
            order += order[:pad]
        return order[self.rank :: self.world_size]

    def per_rank(self) -> int:
        return len(self._order())

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)


def make_loader(dataset, *, batch_size: int, sampler: ResumableSampler | None = None, shuffle: bool = False,
                seed: int = 0, num_workers: int = 0, drop_last: bool = False, trim: bool = False):
    """A DataLoader over `dataset` with `collate`; workers are seeded from `seed` for determinism; `trim`
    cuts each batch's token padding to its longest caption."""
    import functools

    torch = _torch()
    from torch.utils.data import DataLoader

    if sampler is None:
        sampler = ResumableSampler(len(dataset), seed=seed, shuffle=shuffle)
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      collate_fn=functools.partial(collate, trim=True) if trim else collate,
                      num_workers=num_workers, drop_last=drop_last, generator=g,
                      persistent_workers=False, pin_memory=False)
