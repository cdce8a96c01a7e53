"""`sydes analyze`: one post (`BUNDLE IMAGE TEXT` -> JSON) or a file of posts (`--input` -> `--output`).

File mode reads posts.jsonl / .csv / .tsv or an MSED split folder (through `sdk.posts`, the one posts
reader; each row's text built from the bundle's text fields where the file has those columns, as the model
was trained, e.g. Title + Caption of an MSED CSV; --text-column reads one column instead) and writes one
JSON line per post, in input order, flushed as it finishes
(`sdk.results.result_record`: row, id, ok, tasks, error, error_type); failed rows are written with
their reason. It resumes: the output's finished rows are a prefix of the input's, so a re-run counts them
(memory flat in rows: `sdk.commands.analyze_output`), cuts off a torn last line and goes on. A run that
ends writes a completion marker (OUTPUT.done). `--num-shards N --shard-index I` runs one of N shards
(row n belongs to shard (n - 1) % N) into its own output; `--engine ray` runs the job on a Ray cluster
(`sdk.commands.analyze_ray`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdk.commands.analyze_output import Shard, fsync_file, marker_path, read_marker, scan_output, write_marker
from sdk.errors import ConfigError, DataError
from sdk.posts import IMAGE_COLUMNS, TEXT_COLUMNS, PostsPlan, iter_rows, plan_posts
from sdk.results import record_line, result_record
from sdk.text_fields import DEFAULT_TEXT_FIELDS, TextFields

log = logging.getLogger("sdk.commands.analyze")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdk.backends import BACKENDS
    from sdk.backends.openvino import HINTS

    parser.add_argument("bundle", help="the NAME.sydes/ folder")
    parser.add_argument("image", nargs="?", help="an image file (single-post mode; a text-only bundle takes "
                        "the TEXT alone: sydes analyze BUNDLE TEXT)")
    parser.add_argument("text", nargs="?", help="the post's text (single-post mode)")
    parser.add_argument("--input", type=Path, help="posts.jsonl, posts.csv / .tsv, or an MSED split folder "
                        "or its CSV (file mode)")
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
    parser.add_argument("--text-column", help="read the text from this one column (default: the bundle's text "
                        f"fields where the file has them all, else the first of {', '.join(TEXT_COLUMNS)})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--backend", default="auto", choices=("auto", *BACKENDS), help="default auto")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: physical cores)")
    parser.add_argument("--hint", choices=HINTS,
                        help="OpenVINO only (file mode): throughput splits each batch over one stream per core "
                        "(faster or not depending on the model and the host); auto compiles both and keeps, "
                        "per batch size, the one measured faster")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--num-shards", type=int, default=1, help="split the input into N shards "
                        "(row n goes to shard (n-1) %% N); each shard writes OUTPUT-0000I-of-0000N.jsonl")
    parser.add_argument("--shard-index", type=int, default=0, help="which shard this run does (0..N-1)")
    from sdk.commands.analyze_ray import add_ray_arguments

    add_ray_arguments(parser)


# --- the input plan and its items (shared by both engines; the reading itself is sdk.posts) ------------
InputPlan = PostsPlan  # which columns hold the id, text and image path, and where relative paths start


def plan_input(args: argparse.Namespace, text_fields: TextFields | None = None, images: bool = True) -> InputPlan:
    """--input (a posts file, an MSED split folder or its CSV), the column flags and the bundle's
    `text_fields` (the text is built from them where the file has them all) -> the plan; `images=False`
    (a text-only bundle): the rows' images are not read, so none are needed."""
    plan = plan_posts(args.input, image_column=args.image_column, text_column=args.text_column,
                      text_fields=text_fields, id_column=args.id_column, image_pattern=args.image_pattern,
                      image_root=args.image_root, images=images)
    # the reference's recipe (Caption) reading a posts file's `text` column is the usual case, not news
    if text_fields not in (None, DEFAULT_TEXT_FIELDS) and not args.text_column and plan.text_fields is None and (
            plan.text_col not in (None, *text_fields.fields)):
        log.warning("the bundle's model reads %s; %s lacks %s: reading the text from column %r instead",
                    text_fields.describe(), plan.path, ", ".join(f for f in text_fields.fields
                                                                  if f not in plan.columns), plan.text_col)
    return plan


def bundle_text_fields(bundle: str | Path) -> TextFields:
    """The text fields of a bundle's manifest (read, not verified: the Analyzer verifies the bundle)."""
    from sdk.bundle import load_bundle

    return load_bundle(bundle, verify=False).text_fields


def iter_items(plan: InputPlan, shard: Shard) -> Iterator[tuple[dict[str, Any], Any]]:
    """(key, item) for each of the shard's rows, in input order: key = {"row": n[, "id": ...]}, item =
    (image path, text) or the DataError that row raised (it keeps its place and is written as failed)."""
    # n counts data rows from 1 (header excluded), as MSED names its images: row K <-> images/K.jpg
    for row in iter_rows(plan, tasks=()):
        if not shard.owns(row.n):
            continue
        key: dict[str, Any] = {"row": row.n}
        if plan.id_col:
            key["id"] = f"row-{row.n}" if row.id is None and row.error is not None else row.id
        yield key, (row.error if row.error is not None else (row.image, row.text))


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
    hint = {"hint": args.hint} if args.hint else {}
    with Analyzer(args.bundle, device=args.device, backend=args.backend, threads=args.threads,
                  max_batch_size=max(args.batch_size, 1), **hint) as az, \
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


def _check_hint(args: argparse.Namespace, bundle: Any) -> None:
    """--hint only where the job runs on OpenVINO (backend="auto" runs an IR bundle there, ONNX elsewhere)."""
    if not args.hint or args.backend == "openvino":
        return
    if args.backend != "auto" or bundle.graph_format != "openvino":
        raise ConfigError("--hint is an OpenVINO setting: pass --backend openvino, or use an OpenVINO bundle "
                          "(sydes export --target openvino)")


def run(args: argparse.Namespace) -> int:
    from sdk.bundle import load_bundle

    bundle = load_bundle(args.bundle, verify=False)  # its manifest, read once (the Analyzer verifies the files)
    if args.input is not None:
        if args.image or args.text:
            raise ConfigError("give either IMAGE TEXT or --input, not both")
        if args.output is None:
            raise ConfigError("--input needs --output (results are written one JSON line per post)")
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        shard = Shard(args.num_shards, args.shard_index)
        plan = plan_input(args, bundle.text_fields, bundle.uses_images)
        if args.engine == "ray":
            from sdk.commands.analyze_ray import run_ray

            if shard.count > 1:
                raise ConfigError("--num-shards is for --engine process; with --engine ray, Ray splits the work")
            if args.hint:
                raise ConfigError("--hint is for --engine process")
            return run_ray(args, plan)
        _check_hint(args, bundle)
        return _file(args, plan, shard)
    if args.image is not None and args.text is None and not bundle.uses_images:
        args.image, args.text = None, args.image  # a text-only bundle: sydes analyze BUNDLE TEXT
    elif args.image is None or args.text is None:
        raise ConfigError("give IMAGE and TEXT (one post; TEXT alone for a text-only bundle) or --input FILE "
                          "--output FILE (many posts)")
    return _single(args)
