"""`sydes analyze` output files: shard assignment and names, the resume scan, the completion marker.

Resume is flat in memory: the single-process engine writes rows in input order, one complete line at a
time, so the finished part of an output is a prefix of the shard's rows. The scan streams the file in
1 MiB chunks, checks that line j is the shard's j-th row (its `"row"` field, which every writer puts
first: `sdk.results.result_record`), cuts off a torn last line and returns the count and the last record;
the run then skips that many rows of the input. Memory: one chunk and one line, whatever the row count.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.atomic import atomic_write_text
from sdk.errors import ConfigError, DataError

log = logging.getLogger("sdk.commands.analyze")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Shard:
    """Rows of shard `index` of `count`: data row n (counted from 1) belongs to shard (n - 1) % count.

    Row number mod N, not a hash of the id: every row has a number (even one whose JSON cannot be parsed,
    so it has no id), shards are balanced to one row, and line j of a shard's output is row
    index + 1 + j * count, which lets resume check each line without reading the input or keeping keys.
    It assumes the input file is not edited between runs, as resume always did.
    """

    count: int = 1
    index: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"--num-shards must be >= 1, got {self.count}")
        if not isinstance(self.index, int) or not 0 <= self.index < self.count:
            raise ConfigError(f"--shard-index must be in 0..{self.count - 1} for --num-shards {self.count}, "
                              f"got {self.index}")

    def owns(self, row: int) -> bool:
        return (row - 1) % self.count == self.index

    def row_of(self, j: int) -> int:
        """The data row number of the shard's j-th row (j from 0)."""
        return self.index + 1 + j * self.count

    def output_path(self, output: Path) -> Path:
        """tags.jsonl -> tags-00001-of-00004.jsonl for shard 1 of 4; the path itself when unsharded."""
        if self.count == 1:
            return output
        return output.with_name(f"{output.stem}-{self.index:05d}-of-{self.count:05d}{output.suffix}")


def marker_path(output: Path) -> Path:
    """The completion marker beside an output: tags.jsonl -> tags.jsonl.done (JSON: rows, ok, failed, ...)."""
    return output.with_name(output.name + ".done")


def read_marker(output: Path) -> dict[str, Any] | None:
    p = marker_path(output)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        return None  # written atomically, so unreadable means hand-edited: treat it as absent
    return data if isinstance(data, dict) else None


def write_marker(output: Path, info: dict[str, Any]) -> None:
    """Written atomically after the output is fsynced: its presence means the output is complete."""
    atomic_write_text(marker_path(output), json.dumps(info, indent=2, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class ResumePoint:
    done: int                    # complete rows already in the output (a prefix of the shard's rows)
    last: dict[str, Any] | None  # the last of them, parsed (its id is checked against the input)


def _row_prefix(row: int) -> bytes:
    return b'{"row": %d,' % row


def scan_output(path: Path, shard: Shard = Shard()) -> ResumePoint:
    """Count the finished rows of `path`; a torn LAST line is cut off, a wrong line elsewhere is an error.

    A line is finished when it ends with "}" and starts with the row the shard expects at its place; the
    last one is also parsed as JSON (a crash can only tear the last line, which has no newline yet).
    """
    if not path.exists():
        return ResumePoint(0, None)
    done, offset, last_line = 0, 0, b""
    bad: tuple[int, int, str] | None = None  # (byte offset, line number, why) of the first wrong line
    lineno = 0
    with open(path, "rb") as f:
        tail = b""
        while True:
            chunk = f.read(CHUNK)
            buf = tail + chunk
            lines = buf.split(b"\n")
            tail = lines.pop() if chunk else b""
            for k, line in enumerate(lines):
                lineno += 1
                # the file's last line has no newline: its end is the end of the buffer
                has_nl = bool(chunk) or k < len(lines) - 1
                size = len(line) + has_nl
                if bad is not None:
                    if line.strip():
                        raise DataError(f"{path} line {bad[1]} is not a result line ({bad[2]}); fix or remove it")
                    continue
                if not line.strip():
                    offset += size
                    continue
                why = _check(line, shard.row_of(done), complete=has_nl)
                if why is not None:
                    bad = (offset, lineno, why)
                    continue
                done, last_line = done + 1, line
                offset += size
            if not chunk:
                break
    size = path.stat().st_size
    if bad is not None:
        log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, size - bad[0])
        with open(path, "r+b") as f:
            f.truncate(bad[0])
    elif size and offset == size and not last_line.endswith(b"\n"):
        with open(path, "rb") as f:
            f.seek(size - 1)
            ends_nl = f.read(1) == b"\n"
        if not ends_nl:  # complete JSON whose newline was lost: restore it
            with open(path, "ab") as f:
                f.write(b"\n")
    last = json.loads(last_line) if last_line else None
    return ResumePoint(done, last)


def _check(line: bytes, row: int, *, complete: bool) -> str | None:
    """None when `line` is the finished output row `row`; else why not."""
    s = line.rstrip(b"\r ")
    if not s.startswith(_row_prefix(row)):
        got = s[:40].decode("utf-8", "replace")
        return f"expected row {row} here, the line starts {got!r}"
    if not s.endswith(b"}"):
        return "it is cut short"
    if not complete:  # the last line: only a full parse proves it is whole
        try:
            rec = json.loads(s)
        except ValueError as e:
            return f"not valid JSON: {e}"
        if not isinstance(rec, dict):
            return "not a JSON object"
    return None


def fsync_file(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
