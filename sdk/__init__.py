"""SyDES Edge runtime: read a bundle, preprocess posts, run them on the fastest backend available.

`import sdk` stays light (no torch, no onnxruntime): names are resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Analyzer": "sdk.analyzer",
    "Result": "sdk.results",
    "TaskResult": "sdk.results",
    "load_image": "sdk.preprocess",
    "make_views": "sdk.preprocess",
    "PreprocessConfig": "sdk.preprocess",
    "Tokenizer": "sdk.tokenizer",
    "Bundle": "sdk.bundle",
    "load_bundle": "sdk.bundle",
}

if TYPE_CHECKING:  # pragma: no cover
    from sdk.analyzer import Analyzer
    from sdk.bundle import Bundle, load_bundle
    from sdk.preprocess import PreprocessConfig, load_image, make_views
    from sdk.results import Result, TaskResult
    from sdk.tokenizer import Tokenizer

__all__ = [
    "Analyzer", "Bundle", "PreprocessConfig", "Result", "TaskResult", "Tokenizer", "__version__",
    "load_bundle", "load_image", "make_views",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sdk' has no attribute {name!r}")
