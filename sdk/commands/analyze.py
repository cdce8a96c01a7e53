"""`sydes analyze`: one post (`BUNDLE IMAGE TEXT` -> JSON) or a file of posts (`--input` -> `--output`).

File mode reads posts.jsonl or posts.csv, writes one JSON line per post (flushed as it finishes), and is
resumable: rows already in the output (keyed by the id column, else the row number) are skipped, and a torn
last line left by a crash or Ctrl-C is cut off before appending. Failed rows are written with their reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdk.errors import ConfigError, DataError

log = logging.getLogger("sdk.commands.analyze")
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename")
TEXT_COLUMNS = ("text", "caption", "Caption")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdk.backends import BACKENDS

    parser.add_argument("bundle", help="the NAME.sydes/ folder")
    parser.add_argument("image", nargs="?", help="an image file (single-post mode)")
    parser.add_argument("text", nargs="?", help="the post's text (single-post mode)")
    parser.add_argument("--input", type=Path, help="posts.jsonl or posts.csv (file mode)")
    parser.add_argument("--output", type=Path, help="results, one JSON line per post (file mode; resumable)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads")
    parser.add_argument("--image-root", type=Path, help="folder relative image paths start from "
                        "(default: the input file's folder)")
    parser.add_argument("--id-column", help="column that identifies a row (default: 'id' if present, "
                        "else the row number)")
    parser.add_argument("--image-column", help=f"image path column (default: first of {', '.join(IMAGE_COLUMNS)})")
    parser.add_argument("--image-pattern", help="image path from the row instead of a column: {row} is the "
                        "data row number counted from 1 (header excluded), {id} / {COLUMN} a column's value; "
                        "e.g. 'images/{row}.jpg' (MSED: row K is images/K.jpg) or '{id}.jpg'")
    parser.add_argument("--text-column", help=f"text column (default: first of {', '.join(TEXT_COLUMNS)})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--backend", default="auto", choices=("auto", *BACKENDS), help="default auto")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: physical cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# --- input rows ---------------------------------------------------------------------------------------
def read_rows(path: Path) -> Iterator[dict[str, Any] | DataError]:
    """Rows of a .jsonl / .csv file as dicts; an unreadable row comes as a DataError (kept in place)."""
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with open(path, encoding="utf-8") as f:
            n = 0
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                n += 1
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    yield DataError(f"{path.name} line {lineno} is not valid JSON: {e}")
                    continue
                yield row if isinstance(row, dict) else DataError(f"{path.name} line {lineno} is not a JSON object")
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield from csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise DataError(f"input file {path} must be .jsonl or .csv, got '{suffix}'")


def _pick(columns: list[str], explicit: str | None, defaults: tuple[str, ...], what: str) -> str | None:
    if explicit:
        if columns and explicit not in columns:
            raise DataError(f"{what} column {explicit!r} is not in the input (columns: {', '.join(columns)})")
        return explicit
    return next((c for c in defaults if c in columns), None)


# --- resume -------------------------------------------------------------------------------------------
def load_done(path: Path, key_field: str) -> set[str]:
    """Keys already in `path`; a torn (unparseable) LAST line is cut off, one in the middle is an error."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    done: set[str] = set()
    offset = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        end = offset + len(line) + (1 if i < len(lines) - 1 else 0)
        if line.strip():
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or key_field not in rec:
                    raise ValueError(f"no '{key_field}' field")
            except ValueError as e:
                if i >= len(lines) - 2 and not any(x.strip() for x in lines[i + 1:]):
                    log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(line))
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                    return done
                raise DataError(f"{path} line {i + 1} is not a result line ({e}); fix or remove it") from None
            done.add(str(rec[key_field]))
        offset = end
    if data and not data.endswith(b"\n"):  # complete JSON but its newline was lost: restore it
        with open(path, "ab") as f:
            f.write(b"\n")
    return done


# --- commands -----------------------------------------------------------------------------------------
def _single(args: argparse.Namespace) -> int:
    from sdk.analyzer import Analyzer

    with Analyzer(args.bundle, device=args.device, backend=args.backend, threads=args.threads,
                  max_batch_size=1) as az:
        r = az.analyze(args.image, args.text)
    print(json.dumps(r.to_dict(), indent=2, ensure_ascii=False))
    return 0 if r.ok else 1


def _file(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sdk.analyzer import Analyzer

    if args.output is None:
        raise ConfigError("--input needs --output (results are written one JSON line per post)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    first = next((r for r in read_rows(args.input) if isinstance(r, dict)), None)
    columns = list(first) if first else []
    id_col = _pick(columns, args.id_column, ("id",), "id")
    text_col = _pick(columns, args.text_column, TEXT_COLUMNS, "text")
    image_col = None if args.image_pattern else _pick(columns, args.image_column, IMAGE_COLUMNS, "image")
    if first is not None and text_col is None:
        raise DataError(f"no text column in {args.input} (columns: {', '.join(columns)}); pass --text-column")
    if first is not None and image_col is None and not args.image_pattern:
        raise DataError(f"no image column in {args.input} (columns: {', '.join(columns)}); "
                        "pass --image-column or --image-pattern")
    key_field = "id" if id_col else "row"
    root = args.image_root or args.input.parent
    args.output.parent.mkdir(parents=True, exist_ok=True)
    done = load_done(args.output, key_field)
    total = sum(1 for _ in read_rows(args.input))
    meta: deque[dict[str, Any]] = deque()

    def items() -> Iterator[Any]:
        # n counts data rows from 1 (header excluded), as MSED names its images: row K <-> images/K.jpg
        for n, row in enumerate(read_rows(args.input), start=1):
            rec: dict[str, Any] = {"row": n}
            if isinstance(row, DataError):
                key = str(n) if not id_col else f"row-{n}"
                if key in done:
                    continue
                rec[key_field] = key if id_col else n
                meta.append(rec)
                yield row
                continue
            if id_col:
                rec["id"] = row.get(id_col)
            key = str(rec[key_field])
            if key in done:
                continue
            meta.append(rec)
            try:
                text = row.get(text_col) if text_col else None
                if args.image_pattern:
                    rel = args.image_pattern.format(row=n, id=rec.get("id"), **{k: v for k, v in row.items()
                                                                              if isinstance(k, str)})
                else:
                    rel = row.get(image_col)
                if not isinstance(rel, str) or not rel:
                    raise DataError(f"row {n} has no image path in column {image_col!r}")
                path = Path(rel)
                yield (path if path.is_absolute() else root / path, text)
            except (DataError, KeyError, IndexError, ValueError) as e:
                yield e if isinstance(e, DataError) else DataError(f"row {n}: bad --image-pattern: {e}")

    n_ok = n_bad = 0
    with Analyzer(args.bundle, device=args.device, backend=args.backend, threads=args.threads,
                  max_batch_size=max(args.batch_size, 1)) as az, \
            open(args.output, "a", encoding="utf-8") as out, \
            tqdm(total=max(0, total - len(done)), unit="post", disable=True if args.no_progress else None,
                 file=sys.stderr) as bar:
        try:
            for result in az.stream(items(), batch_size=args.batch_size, workers=args.workers):
                rec = meta.popleft()
                rec.update(result.to_dict())
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                out.flush()  # one complete line at a time: an interrupted run leaves a valid prefix
                n_ok += result.ok
                n_bad += not result.ok
                bar.update(1)
        except KeyboardInterrupt:
            out.flush()
            os.fsync(out.fileno())
            print(f"\ninterrupted after {n_ok + n_bad} posts; re-run the same command to resume", file=sys.stderr)
            raise
    print(f"{n_ok + n_bad} posts analysed ({n_bad} failed), {len(done)} already in {args.output}",
          file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.input is not None:
        if args.image or args.text:
            raise ConfigError("give either IMAGE TEXT or --input, not both")
        return _file(args)
    if args.image is None or args.text is None:
        raise ConfigError("give IMAGE and TEXT (one post) or --input FILE --output FILE (many posts)")
    return _single(args)
