"""Triton's config.pbtxt (protobuf text format of `inference.ModelConfig`) from plain Python values.

A tiny emitter, so writing a repository needs no protobuf: dict -> message, list of dicts -> repeated
message, list of scalars -> `[a, b]`, `Enum("KIND_GPU")` -> a bare enum name, str -> quoted string.
The tests parse the output with Triton's own schema (tritonclient's model_config_pb2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Enum:
    """An enum value written bare (TYPE_FP32, KIND_GPU, REJECT)."""

    name: str


def _scalar(v: Any) -> str:
    if isinstance(v, Enum):
        return v.name
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string literal is a valid protobuf text string literal
    raise TypeError(f"cannot write {type(v).__name__} {v!r} to config.pbtxt")


def _fields(d: dict[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for key, v in d.items():
        if v is None:
            continue
        if isinstance(v, dict):
            out += [f"{pad}{key} {{", *_fields(v, indent + 1), f"{pad}}}"]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for x in v:
                out += [f"{pad}{key} {{", *_fields(x, indent + 1), f"{pad}}}"]
        elif isinstance(v, list):
            out.append(f"{pad}{key}: [{', '.join(_scalar(x) for x in v)}]")
        else:
            out.append(f"{pad}{key}: {_scalar(v)}")
    return out


def to_pbtxt(config: dict[str, Any]) -> str:
    """A ModelConfig as nested dicts -> its text format."""
    return "\n".join(_fields(config, 0)) + "\n"
