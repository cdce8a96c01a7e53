"""What needs ray itself: the JSONL datasink that writes `sydes analyze` rows from Ray workers.

Imported only by the `--engine ray` path and by users' Ray scripts (it imports ray at module level, so
it is never imported by `import sdk` or `sdk.integrations.ray_data`).
"""

from __future__ import annotations

import json
from typing import Any

from ray.data.block import BlockAccessor
from ray.data.datasource import BlockBasedFileDatasink

from sdk.results import RESULT_FIELDS, Result, record_line, result_record

KEY_COLUMN = "_sydes_key"  # the row's key fields as JSON (`sydes analyze` puts {"row": n, "id": ...} there)


class JsonlResultSink(BlockBasedFileDatasink):
    """Write a predictor's output blocks as JSONL part files (one per write task) under `path`, each line
    exactly as the single-process `sydes analyze` writes it (`sdk.results.result_record` + `record_line`).

    The key fields come from the `_sydes_key` JSON column where the block has one, else from every
    non-result column in order. A retried write task rewrites its own part file (the name depends on the
    write's id and the task index only), so a retry never duplicates rows.
    """

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, file_format="jsonl", **kwargs)

    def write_block_to_file(self, block: BlockAccessor, file: Any) -> None:
        lines = []
        for row in block.to_arrow().to_pylist():
            if KEY_COLUMN in row:
                key = json.loads(row[KEY_COLUMN])
            else:
                key = {k: v for k, v in row.items() if k not in RESULT_FIELDS}
            tasks = row.get("tasks")
            if isinstance(tasks, str):  # the predictor's tasks_format="json"
                row = {**row, "tasks": json.loads(tasks)}
            lines.append(record_line(result_record(key, Result.from_dict(row))))
        file.write("".join(lines).encode("utf-8"))
