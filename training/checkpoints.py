"""One loader for every checkpoint family: config.json's `preset` says which class reads the folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdk.errors import CheckpointError


def load_model(path: str | Path, *, map_location: str = "cpu") -> Any:
    """SyDES or TextClassifier from a checkpoint folder, in eval mode."""
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it has no config.json")
    try:
        preset = json.loads(cfg.read_text(encoding="utf-8")).get("preset")
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"{cfg} is not a JSON object: {e}") from None
    from training.text_model import PRESET, TextClassifier

    if preset == PRESET:
        return TextClassifier.from_pretrained(path, map_location=map_location)
    from training.model import SyDES

    return SyDES.from_pretrained(path, map_location=map_location)
