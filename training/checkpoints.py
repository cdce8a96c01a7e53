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


def set_label_structure(path: str | Path, structure: dict[str, Any] | None, decoding: str = "joint") -> None:
    """Write a label-structure table (sdk.labels.LabelStructure.to_dict()) into a checkpoint's config.json,
    with the decoding the runtime should use ("joint" or "joint+prior"); None removes it. Validated against
    the checkpoint's tasks first; the file is replaced atomically."""
    from sdk.atomic import atomic_write_text
    from sdk.errors import ConfigError
    from sdk.labels import LabelStructure

    if decoding not in ("joint", "joint+prior"):
        raise ConfigError(f"decoding must be 'joint' or 'joint+prior', got {decoding!r}")
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it has no config.json")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    if structure is None:
        cfg.pop("label_structure", None)
    else:
        LabelStructure.from_dict(structure, cfg["tasks"])
        cfg["label_structure"] = {**structure, "decoding": decoding}
    atomic_write_text(cfg_file, json.dumps(cfg, indent=2) + "\n")


def label_structure_of(records: Any, tasks: dict[str, list[str]]) -> dict[str, Any]:
    """The label-structure table learnt from the labels of training Records (sdk.labels)."""
    import numpy as np

    from sdk.labels import LabelStructure

    rows = np.array([[e.labels.get(t, -100) for t in tasks] for e in records.examples]).reshape(-1, len(tasks))
    return LabelStructure.from_labels(tasks, rows).to_dict()
