"""One loader for every checkpoint family: config.json's `preset` says which class reads the folder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from sdk.errors import CheckpointError, ConfigError

# the files of a checkpoint folder (one definition; sdk.bundle has the bundle's)
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"


class Checkpointable:
    """Checkpoint folders for a model family: `config.json` (the family's typed config, `config_class`) +
    `model.safetensors` (+ `tokenizer.json`), written atomically, read back with every key checked.
    Mixed into torch modules (SyDES, TextClassifier): needs `config.to_json()` and `config_class.from_dict`."""

    config_class: ClassVar[Any]
    family: ClassVar[str]  # what error messages call a checkpoint of this class ("SyDES", "text-only")

    def save_pretrained(self, path: str | Path, *, tokenizer_file: str | Path | None = None,
                        overwrite: bool = True) -> Path:
        """Write config.json + model.safetensors (+ a copy of tokenizer_file) as one folder, atomically."""
        import shutil

        from safetensors.torch import save_file

        from sdk.atomic import atomic_directory

        path = Path(path)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        if tokenizer_file is not None and not Path(tokenizer_file).is_file():
            raise CheckpointError(f"tokenizer file {tokenizer_file} does not exist")
        config = self.config  # type: ignore[attr-defined]
        with atomic_directory(path, overwrite=overwrite) as tmp:
            (tmp / CONFIG_FILE).write_text(config.to_json(), encoding="utf-8")
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "preset": config.preset})
            if tokenizer_file is not None:
                shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, *, map_location: Any = "cpu") -> Any:
        """Load a checkpoint folder in eval mode; a missing file, a bad config, or any missing / unexpected key
        or shape mismatch is a CheckpointError."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not cfg_file.is_file() or not weights.is_file():
            raise CheckpointError(f"{path} is not a {cls.family} checkpoint: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
        try:
            config = cls.config_class.from_dict(json.loads(cfg_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError, ConfigError) as e:
            raise CheckpointError(f"{cfg_file}: {e}") from e
        try:
            state = load_file(str(weights), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"cannot read {weights}: {e}") from e
        model = cls(config)  # type: ignore[call-arg]
        model.load_checked_state_dict(state, source=str(weights))
        return model.eval()

    def load_checked_state_dict(self, state: Mapping[str, Any], source: str = "state dict") -> None:
        """load_state_dict that reports every missing / unexpected key and shape mismatch at once."""
        own = self.state_dict()  # type: ignore[attr-defined]
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
        if missing or unexpected or shapes:
            def show(xs: list[str]) -> str:
                return ", ".join(xs[:12]) + (f" ... (+{len(xs) - 12})" if len(xs) > 12 else "") if xs else "none"

            raise CheckpointError(f"{source} does not match the config: missing keys: {show(missing)}; "
                                  f"unexpected keys: {show(unexpected)}; shape mismatches: {show(shapes)}")
        self.load_state_dict(dict(state), strict=True)  # type: ignore[attr-defined]


def load_model(path: str | Path, *, map_location: str = "cpu") -> Any:
    """SyDES or TextClassifier from a checkpoint folder, in eval mode."""
    path = Path(path)
    cfg = path / CONFIG_FILE
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
