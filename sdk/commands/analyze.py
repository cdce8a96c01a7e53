"""`sydes analyze`: one post (`BUNDLE IMAGE TEXT` -> JSON) or a file of posts (`--input` -> `--output`).

File mode reads posts.jsonl or posts.csv and writes one JSON line per post, in input order, flushed as it
finishes (`sdk.results.result_record`: row, id, ok, tasks, error, error_type); failed rows are written with
their reason. It resumes: the output's finished rows are a prefix of the input's, so a re-run counts them
(memory flat in rows: `sdk.commands.analyze_output`), cuts off a torn last line and goes on. A run that
ends writes a completion marker (OUTPUT.done). `--num-shards N --shard-index I` runs one of N shards
(row n belongs to shard (n - 1) % N) into its own output; `--engine ray` runs the job on a Ray cluster
(`sdk.commands.analyze_ray`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.commands.analyze_output import Shard, fsync_file, marker_path, read_marker, scan_output, write_marker
from sdk.errors import ConfigError, DataError
from sdk.results import record_line, result_record

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
    parser.add_argument("--num-shards", type=int, default=1, help="split the input into N shards "
                        "(row n goes to shard (n-1) %% N); each shard writes OUTPUT-0000I-of-0000N.jsonl")
    parser.add_argument("--shard-index", type=int, default=0, help="which shard this run does (0..N-1)")
    from sdk.commands.analyze_ray import add_ray_arguments

    add_ray_arguments(parser)


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


# --- the input plan and its items (shared by both engines) --------------------------------------------
@dataclass(frozen=True)
class InputPlan:
    """Which columns of `path` hold the id, text and image path, and where relative image paths start."""

    path: Path
    id_col: str | None
    text_col: str | None
    image_col: str | None
    image_pattern: str | None
    root: Path


def plan_input(args: argparse.Namespace) -> InputPlan:
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
    return InputPlan(args.input, id_col, text_col, image_col, args.image_pattern, args.image_root or args.input.parent)


def iter_items(plan: InputPlan, shard: Shard) -> Iterator[tuple[dict[str, Any], Any]]:
    """(key, item) for each of the shard's rows, in input order: key = {"row": n[, "id": ...]}, item =
    (image path, text) or the DataError that row raised (it keeps its place and is written as failed)."""
    # n counts data rows from 1 (header excluded), as MSED names its images: row K <-> images/K.jpg
    for n, row in enumerate(read_rows(plan.path), start=1):
        if not shard.owns(n):
            continue
        key: dict[str, Any] = {"row": n}
        if isinstance(row, DataError):
            if plan.id_col:
                key["id"] = f"row-{n}"
            yield key, row
            continue
        if plan.id_col:
            key["id"] = row.get(plan.id_col)
        try:
            text = row.get(plan.text_col) if plan.text_col else None
            if plan.image_pattern:
                rel = plan.image_pattern.format(row=n, id=key.get("id"), **{k: v for k, v in row.items()
                                                                           if isinstance(k, str)})
            else:
                rel = row.get(plan.image_col)
            if not isinstance(rel, str) or not rel:
                raise DataError(f"row {n} has no image path in column {plan.image_col!r}")
            path = Path(rel)
            yield key, (path if path.is_absolute() else plan.root / path, text)
        except (DataError, KeyError, IndexError, ValueError) as e:
            yield key, e if isinstance(e, DataError) else DataError(f"row {n}: bad --image-pattern: {e}")


def _resume_items(plan: InputPlan, shard: Shard, done: int, last: dict[str, Any] | None,
                  out: Path) -> Iterator[tuple[dict[str, Any], Any]]:
    """The shard's items after the `done` already written; checks the last written row is the input's."""
    it = iter_items(plan, shard)
    key: dict[str, Any] | None = None
    for _ in range(done):
        pair = next(it, None)
        if pair is None:
            raise DataError(f"{out} has {done} rows but this shard of {plan.path} has fewer: the input "
                            "changed since the output was started; use a new --output")
        key = pair[0]
    if key is not None and last is not None and key.get("id") != last.get("id"):
        raise DataError(f"{out} row {key['row']} has id {last.get('id')!r} but {plan.path} has "
                        f"{key.get('id')!r} there: the input changed since the output was started; "
                        "use a new --output")
    yield from it


# --- commands -----------------------------------------------------------------------------------------
def _single(args: argparse.Namespace) -> int:
    from sdk.analyzer import Analyzer

    with Analyzer(args.bundle, device=args.device, backend=args.backend, threads=args.threads,
                  max_batch_size=1) as az:
        r = az.analyze(args.image, args.text)
    print(json.dumps(r.to_dict(), indent=2, ensure_ascii=False))
    return 0 if r.ok else 1


def _file(args: argparse.Namespace, plan: InputPlan, shard: Shard) -> int:
    from tqdm import tqdm

    from sdk.analyzer import Analyzer

    out_path = shard.output_path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    total = sum(1 for _ in iter_items(plan, shard))  # streamed: memory flat in rows
    marker = read_marker(out_path)
    # the marker holds the rows and bytes it saw: a grown input or an edited output makes it stale
    if (marker is not None and out_path.is_file() and marker.get("rows") == total
            and marker.get("bytes") == out_path.stat().st_size):
        print(f"0 posts analysed (0 failed), {total} already in {out_path} (complete: {marker_path(out_path)})",
              file=sys.stderr)
        return 0
    marker_path(out_path).unlink(missing_ok=True)  # stale: this run writes a new one
    resume = scan_output(out_path, shard)
    meta: deque[dict[str, Any]] = deque()  # keys of the items in flight: bounded by stream's prefetch

    def items() -> Iterator[Any]:
        for key, item in _resume_items(plan, shard, resume.done, resume.last, out_path):
            meta.append(key)
            yield item

    n_ok = n_bad = 0
    with Analyzer(args.bundle, device=args.device, backend=args.backend, threads=args.threads,
                  max_batch_size=max(args.batch_size, 1)) as az, \
            open(out_path, "a", encoding="utf-8") as out, \
            tqdm(total=max(0, total - resume.done), unit="post", disable=True if args.no_progress else None,
                 file=sys.stderr) as bar:
        try:
            for result in az.stream(items(), batch_size=args.batch_size, workers=args.workers):
                out.write(record_line(result_record(meta.popleft(), result)))
                out.flush()  # one complete line at a time: an interrupted run leaves a valid prefix
                n_ok += result.ok
                n_bad += not result.ok
                bar.update(1)
        except KeyboardInterrupt:
            fsync_file(out)
            print(f"\ninterrupted after {n_ok + n_bad} posts; re-run the same command to resume", file=sys.stderr)
            raise
        fsync_file(out)
    write_marker(out_path, {"rows": total, "bytes": out_path.stat().st_size, "input": str(plan.path), "num_shards": shard.count,
                            "shard_index": shard.index, "bundle": str(args.bundle)})
    print(f"{n_ok + n_bad} posts analysed ({n_bad} failed), {resume.done} already in {out_path}",
          file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.input is not None:
        if args.image or args.text:
            raise ConfigError("give either IMAGE TEXT or --input, not both")
        if args.output is None:
            raise ConfigError("--input needs --output (results are written one JSON line per post)")
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        shard = Shard(args.num_shards, args.shard_index)
        plan = plan_input(args)
        if args.engine == "ray":
            from sdk.commands.analyze_ray import run_ray

            if shard.count > 1:
                raise ConfigError("--num-shards is for --engine process; with --engine ray, Ray splits the work")
            return run_ray(args, plan)
        return _file(args, plan, shard)
    if args.image is None or args.text is None:
        raise ConfigError("give IMAGE and TEXT (one post) or --input FILE --output FILE (many posts)")
    return _single(args)
