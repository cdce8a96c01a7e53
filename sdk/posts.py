"""The one reader of posts files: JSONL / CSV / TSV files and MSED's layout, one `PostRow` per data row.

Layouts:
- A posts file: `.jsonl` / `.ndjson` / `.json` (one JSON object a line) or `.csv` / `.tsv` (a header row; a
  real CSV parser, so quoted fields may span lines). Its columns are the header, or the fields of the first
  object of a JSON-lines file.
- MSED: a root holding `{split}/{split}.csv` + `{split}/images/K.jpg`, or the split folder itself, or that
  CSV: text = the Caption column, image = `images/{row}.jpg` (data row K, counted from 1 <-> K.jpg),
  labels = the Sentiment / Emotion / Desire columns.

The text a model reads is a `sdk.text_fields.TextFields` recipe (the reference's: the Caption alone; e.g.
Title + Caption joined by " "), recorded in checkpoints and bundles; `plan_posts(..., text_fields=)` builds
each row's text with it where the file has all its columns, and an explicit text column overrides it.

Row n counts data rows from 1 (the header and blank JSON lines excluded). A row that cannot be used keeps
its place as a `PostRow` carrying its `DataError`, so a caller can raise it, skip and count it, or write it
as a failed row. Every message reads "{where}: {problem}", where = "FILE:row K" (CSV) / "FILE:line K" (JSON).
"""

from __future__ import annotations

import csv
import json
import os
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sdk.errors import DataError
from sdk.text_fields import DEFAULT_TEXT_FIELDS, TextFields  # noqa: F401  (re-exported)

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
SUFFIXES = (*JSON_SUFFIXES, *CSV_SUFFIXES)
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename")
TEXT_COLUMNS = ("text", "caption", "Caption")
TASK_NAMES = ("sentiment", "emotion", "desire")
MSED_TEXT = "Caption"
MSED_PATTERN = "images/{row}.jpg"
RawRow = dict[str, Any]


@dataclass(frozen=True)
class PostRow:
    """One data row: `n` from 1, `where` ("FILE:row n"), the image path, the text, raw label strings by
    lower-case task name, the id column's value, or the `error` that makes the row unusable."""

    n: int
    where: str
    image: Path | None = None
    text: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    id: Any = None
    error: DataError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def check(self) -> PostRow:
        """This row, or raise its error."""
        if self.error is not None:
            raise self.error
        return self


# --- the file parser ------------------------------------------------------------------------------------
def _checked(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: posts file not found")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: unsupported posts file type {path.suffix.lower()!r}; use {', '.join(SUFFIXES)}")
    return path


def read_rows(path: str | os.PathLike[str]) -> Iterator[tuple[str, RawRow | DataError]]:
    """(where, row) for each data row of a posts file; a row that does not parse comes as its DataError.

    Raises DataError at once for a missing file or an unsupported suffix."""
    path = _checked(path)
    delimiter = CSV_SUFFIXES.get(path.suffix.lower())
    return _json_rows(path) if delimiter is None else _csv_rows(path, delimiter)


def _json_rows(path: Path) -> Iterator[tuple[str, RawRow | DataError]]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:line {i}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    yield where, DataError(f"{where}: malformed JSON ({e.msg})")
                    continue
                yield where, obj if isinstance(obj, dict) else DataError(
                    f"{where}: expected a JSON object, got {type(obj).__name__}")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: cannot read: {e}") from e


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[str, RawRow | DataError]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            width = len(reader.fieldnames or ())
            for k, row in enumerate(reader, start=1):
                where = f"{path}:row {k}"
                if None in row or None in row.values():  # more / fewer fields than the header
                    yield where, DataError(f"{where}: malformed row (expected {width} fields, as the header)")
                else:
                    yield where, row
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read: {e}") from e


def _header(path: Path) -> tuple[str, ...]:
    """The columns: the CSV header, or the fields of the first JSON object."""
    if path.suffix.lower() in CSV_SUFFIXES:
        with open(path, newline="", encoding="utf-8-sig") as f:
            try:
                return tuple(next(csv.reader(f, delimiter=CSV_SUFFIXES[path.suffix.lower()]), ()))
            except (UnicodeDecodeError, csv.Error) as e:
                raise DataError(f"{path}: cannot read: {e}") from e
    first = next((r for _, r in read_rows(path) if isinstance(r, dict)), None)
    return tuple(first or ())


# --- MSED's layout --------------------------------------------------------------------------------------
def msed_csv(folder: str | os.PathLike[str], split: str | None = None) -> Path | None:
    """The CSV of an MSED root's `split` or of a split folder itself; None if `folder` is no MSED folder.

    Raises DataError when `folder` holds MSED splits but not `split` (or no split was named)."""
    folder = Path(folder)
    if split and (folder / split / f"{split}.csv").is_file():
        return folder / split / f"{split}.csv"
    if (folder / f"{folder.name}.csv").is_file():
        return folder / f"{folder.name}.csv"
    splits = sorted(p.name for p in folder.iterdir() if (p / f"{p.name}.csv").is_file()) if folder.is_dir() else []
    if splits:
        what = f"split {split!r} not found" if split else "needs a split name"
        raise DataError(f"{folder}: MSED {what} (available: {', '.join(splits)})")
    return None


def _is_msed_csv(path: Path, columns: Sequence[str]) -> bool:
    return (path.stem == path.parent.name and (path.parent / "images").is_dir() and MSED_TEXT in columns
            and not any(c in columns for c in IMAGE_COLUMNS))


# --- columns --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PostsPlan:
    """Which columns of the posts file `path` hold the id, text and image path (or the image pattern), and
    the folder relative image paths start from. `text_fields`: the text is built from several columns
    (TextFields.build) instead of read from `text_col`."""

    path: Path
    id_col: str | None
    text_col: str | None
    image_col: str | None
    image_pattern: str | None
    root: Path
    columns: tuple[str, ...] = ()
    text_fields: TextFields | None = None
    images: bool = True  # False: a text-only model's plan; rows have image None


def _cols(columns: Sequence[str]) -> str:
    return ", ".join(columns) or "none"


def _pick(path: Path, columns: Sequence[str], explicit: str | None, defaults: Sequence[str],
          what: str) -> str | None:
    if explicit:
        if columns and explicit not in columns:
            raise DataError(f"{path}: missing {what} column {explicit!r}; the columns are: {_cols(columns)}")
        return explicit
    return next((c for c in defaults if c in columns), None)


def _check_pattern(path: Path, pattern: str, columns: Sequence[str], id_col: str | None) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise DataError(f"{path}: bad image pattern {pattern!r}: {e}") from e
    for name in names:
        if name == "id" and id_col is None:
            raise DataError(f"{path}: bad image pattern {pattern!r}: {{id}} needs an id column; the columns "
                            f"are: {_cols(columns)}")
        if name not in ("row", "id") and (not name or (columns and name not in columns)):
            raise DataError(f"{path}: bad image pattern {pattern!r}: {{{name}}} is not {{row}}, {{id}} or a "
                            f"column; the columns are: {_cols(columns)}")


def plan_posts(source: str | os.PathLike[str], *, split: str | None = None, image_column: str | None = None,
               text_column: str | None = None, text_fields: TextFields | str | Sequence[str] | None = None,
               id_column: str | None = None, image_pattern: str | None = None,
               image_root: str | os.PathLike[str] | None = None, require: Iterable[str] = (),
               images: bool = True) -> PostsPlan:
    """Resolve a posts file or an MSED folder into a PostsPlan: explicit columns are checked against the
    real ones, defaults are the first of IMAGE_COLUMNS / TEXT_COLUMNS present, `require` lists columns that
    must be there; `images=False` (a text-only model) reads no image: no image column or pattern is needed
    and rows have `image` None. The text: `text_column` when given; else `text_fields` (a model's recipe) when the file
    has all its columns (a single field is that text column); else MSED's Caption, else the first of
    TEXT_COLUMNS. Raises DataError naming the file and the columns it has."""
    path = Path(source)
    if path.is_dir():
        csv_path = msed_csv(path, split)
        if csv_path is None:
            raise DataError(f"{path}: not an MSED folder ({{split}}/{{split}}.csv + {{split}}/images/) "
                            f"and not a posts file ({', '.join(SUFFIXES)})")
        path = csv_path
    columns = _header(_checked(path))
    fields = TextFields.of(text_fields)
    if text_column or not (fields and columns and all(f in columns for f in fields.fields)):
        fields = None  # an explicit column, or a recipe this file cannot follow: the text column rules
    elif len(fields.fields) == 1:
        text_column, fields = fields.fields[0], None
    if not image_column and _is_msed_csv(path, columns):
        text_column = text_column or (None if fields else MSED_TEXT)
        image_pattern = image_pattern or MSED_PATTERN
    missing = [c for c in require if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
                        f"the columns are: {_cols(columns)}")
    id_col = _pick(path, columns, id_column, ("id",), "id")
    text_col = None if fields else _pick(path, columns, text_column, TEXT_COLUMNS, "text")
    image_col = None if image_pattern else _pick(path, columns, image_column, IMAGE_COLUMNS, "image")
    if columns and text_col is None and fields is None:
        raise DataError(f"{path}: no text column (looked for {', '.join(TEXT_COLUMNS)}); the columns are: "
                        f"{_cols(columns)}; name one (--text-column)")
    if not images:
        image_col = image_pattern = None
    elif columns and image_col is None and not image_pattern:
        raise DataError(f"{path}: no image column (looked for {', '.join(IMAGE_COLUMNS)}); the columns are: "
                        f"{_cols(columns)}; name one (--image-column) or give an image pattern (--image-pattern)")
    if image_pattern:
        _check_pattern(path, image_pattern, columns, id_col)
    root = Path(image_root) if image_root is not None else path.parent
    return PostsPlan(path, id_col, text_col, image_col, image_pattern, root, columns, fields, images)


# --- rows -----------------------------------------------------------------------------------------------
def _labels(row: RawRow, where: str, tasks: Mapping[str, Sequence[str] | None]) -> dict[str, str]:
    """Raw label strings by task: a column named like the task (any case) or a `labels` object's field."""
    by_lower = {t.lower(): t for t in tasks}
    found: dict[str, Any] = {}
    nested = row.get("labels")
    for src in (nested if isinstance(nested, dict) else {}, row):
        for k, v in src.items():
            if isinstance(k, str) and k.lower() in by_lower and v is not None and v != "":
                found[by_lower[k.lower()]] = v
    out: dict[str, str] = {}
    for t, v in found.items():
        if not isinstance(v, str):
            raise DataError(f"{where}: {t} label must be a string, got {v!r}")
        names = tasks[t]
        if names is not None and v.strip() not in names:
            raise DataError(f"{where}: unknown {t} label {v!r}; valid labels: {', '.join(names)}")
        out[t] = v.strip()
    return out


def _image(plan: PostsPlan, n: int, row: RawRow, where: str, id_value: Any) -> Path:
    if plan.image_pattern:
        values = {k: v for k, v in row.items() if isinstance(k, str)} | {"row": n, "id": id_value}
        try:
            rel = plan.image_pattern.format_map(values)
        except KeyError as e:
            raise DataError(f"{where}: image pattern {plan.image_pattern!r} needs field {e}, not in this row") from e
        except (ValueError, IndexError, TypeError) as e:
            raise DataError(f"{where}: image pattern {plan.image_pattern!r}: {e}") from e
    else:
        rel = row.get(plan.image_col) if plan.image_col else None
        if not isinstance(rel, str) or not rel.strip():
            raise DataError(f"{where}: no image path in column {plan.image_col!r}")
    p = Path(rel)
    return p if p.is_absolute() else plan.root / p


def _row(plan: PostsPlan, n: int, where: str, row: RawRow, tasks: Mapping[str, Sequence[str] | None], *,
         check_images: bool, require_text: bool, require_labels: bool | str) -> PostRow:
    id_value = row.get(plan.id_col) if plan.id_col else None
    try:
        image = _image(plan, n, row, where, id_value) if plan.images else None
        if check_images and image is not None and not image.is_file():
            raise DataError(f"{where}: image {image} not found")
        text = (plan.text_fields.build(row, where) if plan.text_fields else
                row.get(plan.text_col) if plan.text_col else None)
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where}: text must be a string, got {type(text).__name__}")
        if text is None and require_text:
            raise DataError(f"{where}: no text in column {plan.text_col!r}")
        labels = _labels(row, where, tasks)
        if require_labels == "all" and len(labels) < len(tasks):
            raise DataError(f"{where}: no {', '.join(t for t in tasks if t not in labels)} label")
        if require_labels and not labels:
            raise DataError(f"{where}: no label for any of {', '.join(tasks)}")
    except DataError as e:
        return PostRow(n, where, id=id_value, error=e)
    return PostRow(n, where, image, text, labels, id_value)


def iter_rows(plan: PostsPlan, *, tasks: Iterable[str] | Mapping[str, Sequence[str]] = TASK_NAMES,
              check_images: bool = False, require_text: bool = False,
              require_labels: bool | Literal["all"] = False) -> Iterator[PostRow]:
    """Every data row of the plan's file, in order, streamed. `tasks`: the label columns to read (a mapping
    task -> label names also checks each label); `check_images`: a missing image file is the row's error;
    `require_text` / `require_labels`: a row without text / without any label ("all": without a label for
    every task) is an error."""
    names: dict[str, Sequence[str] | None] = (
        {t: list(v) for t, v in tasks.items()} if isinstance(tasks, Mapping) else dict.fromkeys(tasks))
    for n, (where, row) in enumerate(read_rows(plan.path), start=1):
        if isinstance(row, DataError):
            yield PostRow(n, where, error=row)
        else:
            yield _row(plan, n, where, row, names, check_images=check_images, require_text=require_text,
                       require_labels=require_labels)
