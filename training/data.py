"""Data sets: MSED's layout, users' posts (JSONL / CSV), a torch Dataset and its loader.

MSED layout: `{root}/{split}/{split}.csv` (columns Title, Caption, Sentiment, Emotion, Desire, ...) and
`{root}/{split}/images/K.jpg` for the K-th data row (1-based, header excluded). The text is built from the
model's text fields (`sdk.text_fields.TextFields`: the Caption by default, e.g. Title + Caption).

Posts file (JSONL: one object per line; CSV / TSV: a header row) with an image path column (`image`, ...;
relative to the file's folder unless absolute), a text column (`text`, ...), and any of `sentiment`,
`emotion`, `desire` (label names). Both layouts are read by `sdk.posts` (the one posts reader, shared with
calibration and `sydes analyze`); this module maps its label strings to indices.

Images are turned into pixels by `sdk.preprocess` and text into ids by `sdk.tokenizer`: the very code the
runtime uses, so training and serving see identical inputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sdk.errors import DataError, SydesError
from sdk.posts import MSED_PATTERN, PostsPlan, iter_rows, msed_csv, plan_posts
from sdk.text_fields import DEFAULT_TEXT_FIELDS, TextFields

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

    def without_text(self) -> Records:
        """The same posts with empty texts (an image-only ablation)."""
        return Records([replace(e, text="") for e in self.examples], list(self.skipped), self.source)

    def report(self) -> str:
        msg = f"{self.source}: {len(self.examples)} rows read, {len(self.skipped)} skipped"
        if self.skipped:
            shown = self.skipped[:5]
            msg += ":\n  " + "\n  ".join(shown) + ("\n  ..." if len(self.skipped) > 5 else "")
        return msg


def _finish(examples: list[Example], skipped: list[str], source: str, skip_invalid: bool) -> Records:
    rec = Records(examples, skipped, source)
    if skipped:
        log.warning("%s", rec.report())
    if not examples:
        raise DataError(f"{source}: no usable rows" + (f" ({len(skipped)} skipped)" if skip_invalid else ""))
    return rec


def _records(plan: PostsPlan, tasks: dict[str, Sequence[str]], *, skip_invalid: bool, limit: int | None,
             require_labels: bool | Literal["all"]) -> Records:
    """Examples from sdk.posts' rows: label names -> indices (MISSING where a task is unlabelled)."""
    examples: list[Example] = []
    skipped: list[str] = []
    for row in iter_rows(plan, tasks=tasks, check_images=True, require_text=True, require_labels=require_labels):
        if limit is not None and len(examples) >= limit:
            break
        if row.error is not None:
            if not skip_invalid:
                raise row.error
            skipped.append(str(row.error))
            continue
        assert row.image is not None and row.text is not None
        labels = {t: list(names).index(row.labels[t]) if t in row.labels else MISSING
                  for t, names in tasks.items()}
        examples.append(Example(row.image, row.text, labels, row.where))
    return _finish(examples, skipped, str(plan.path), skip_invalid)


def read_msed(root: str | os.PathLike[str], split: str, *, tasks: dict[str, Sequence[str]] | None = None,
              text_fields: TextFields | None = None, skip_invalid: bool = False, limit: int | None = None) -> Records:
    """Read `{root}/{split}/{split}.csv`; row K (1-based) <-> `images/K.jpg`; the text from `text_fields`
    (default: the Caption), whose columns must all be in the CSV.

    Raises DataError naming file, row and problem (missing image, unknown label, malformed row), unless
    `skip_invalid`, where such rows are counted in `Records.skipped` instead.
    """
    tasks = dict(MSED_TASKS if tasks is None else tasks)
    for t in tasks:
        if t not in MSED_COLUMNS:
            raise DataError(f"unknown task {t!r}; MSED tasks: {', '.join(MSED_COLUMNS)}")
    csv_path = Path(root) / split / f"{split}.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: not found (expected MSED layout {{root}}/{split}/{split}.csv)")
    fields = text_fields or DEFAULT_TEXT_FIELDS
    try:
        plan = plan_posts(csv_path, text_fields=fields, image_pattern=MSED_PATTERN,
                          require=[*fields.fields, *(MSED_COLUMNS[t] for t in tasks)])
    except DataError as e:
        if "missing column" in str(e) and any(repr(f) in str(e) for f in fields.fields):
            # the recipe reads Title + Caption by default: say which option picks other columns
            raise DataError(f"{e} (the text is built from {', '.join(fields.fields)}; --text-fields names the "
                            "columns to read, e.g. --text-fields Caption)") from e
        raise
    return _records(plan, tasks, skip_invalid=skip_invalid, limit=limit, require_labels="all")


def read_posts(path: str | os.PathLike[str], *, tasks: dict[str, Sequence[str]] | None = None,
               text_fields: TextFields | None = None, strict_text: bool = False, skip_invalid: bool = False,
               require_labels: bool = True, limit: int | None = None) -> Records:
    """Read a JSONL / CSV / TSV posts file (or an MSED split folder) through `sdk.posts`: each row needs
    an image path and a text; labels are optional per task, but (with `require_labels`) a row must label
    at least one of `tasks`. The text: `text_fields` where the file has all their columns, else its text
    column (as `sydes analyze` reads it); `strict_text`: the file must have them."""
    tasks = dict(MSED_TASKS if tasks is None else tasks)
    plan = plan_posts(path, text_fields=text_fields, require=text_fields.fields if text_fields and strict_text else ())
    if text_fields not in (None, DEFAULT_TEXT_FIELDS) and plan.text_fields is None and plan.text_col not in (
            None, *text_fields.fields):
        log.warning("%s has not all of %s: reading the text from its column %r", plan.path,
                    ", ".join(text_fields.fields), plan.text_col)
    return _records(plan, tasks, skip_invalid=skip_invalid, limit=limit, require_labels=require_labels)


def read_any(spec: str | os.PathLike[str], split: str | None = None, **kw) -> Records:
    """An MSED root (with `split`), an MSED split folder, or a posts file."""
    p = Path(spec)
    if p.is_dir():
        csv_path = msed_csv(p, split)
        if csv_path is None:
            raise DataError(f"{p}: not an MSED folder (expected {{split}}/{{split}}.csv + {{split}}/images/)")
        return read_msed(csv_path.parent.parent, csv_path.parent.name, **kw)
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
