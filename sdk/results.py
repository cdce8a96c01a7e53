"""Plain result dataclasses: one `Result` per analysed post, JSON-ready."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskResult:
    """One task's answer: the top label, its probability, and every class probability in label order."""

    label: str
    score: float
    probs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "probs": dict(self.probs)}


@dataclass
class Result:
    """The answer for one post; `tasks` is None when the item failed, and `error` / `error_type` say why."""

    tasks: dict[str, TaskResult] | None
    error: str | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.tasks is not None

    @property
    def reason(self) -> str | None:
        """`"ImageDecodeError: <message>"` for a failed item, None for a good one."""
        if self.error is None:
            return None
        return f"{self.error_type}: {self.error}" if self.error_type else self.error

    def __getitem__(self, task: str) -> TaskResult:
        if self.tasks is None:
            raise KeyError(f"result has no tasks ({self.reason})")
        return self.tasks[task]

    @classmethod
    def failure(cls, exc: BaseException) -> Result:
        """A failed item's result: the exception's class name and message."""
        return cls(tasks=None, error=str(exc) or repr(exc), error_type=type(exc).__name__)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tasks": None if self.tasks is None else {t: r.to_dict() for t, r in self.tasks.items()},
            "error": self.error,
            "error_type": self.error_type,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        tasks = d.get("tasks")
        return cls(
            tasks=None if tasks is None else {
                t: TaskResult(label=r["label"], score=float(r["score"]), probs=dict(r.get("probs", {})))
                for t, r in tasks.items()
            },
            error=d.get("error"),
            error_type=d.get("error_type"),
        )


# --- the output row of `sydes analyze` (file mode, shards, the Ray engine): one schema, one writer ------
RESULT_FIELDS = ("ok", "tasks", "error", "error_type")


def result_record(key: dict[str, Any], result: Result) -> dict[str, Any]:
    """One output row: the row's key fields first (`row`, the input's data-row number from 1, then `id`
    where the input has an id column), then `Result.to_dict()`'s fields. Resume relies on `row` coming first."""
    rec = dict(key)
    rec.update(result.to_dict())
    return rec


def record_line(rec: dict[str, Any]) -> str:
    """One JSONL line (with its newline) for an output row; every writer of analyze rows goes through here."""
    return json.dumps(rec, ensure_ascii=False) + "\n"
