"""Glue shared by `sydes train`, `sydes eval`, the tests and the benchmarks: build or load a model and its
tokenizer, read the data named on the command line, run a Trainer."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from sdk.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def load_tokenizer(config, folder: str | os.PathLike[str] | None = None):
    """The tokenizer of `config`: `folder/tokenizer.json` when present (a checkpoint or an HF folder), else
    CLIP's (built offline) for kind clip, else the text backbone's `pretrained` folder, else MiniLM's
    uncased WordPiece vocabulary (the BERT-uncased one all BERT-kind presets use)."""
    from sdk.tokenizer import Tokenizer

    kind, n = config.tokenizer.kind, config.tokenizer.max_length
    candidates = []
    if folder is not None:
        candidates.append(Path(folder) / "tokenizer.json")
    if config.text.pretrained and Path(config.text.pretrained).is_dir():
        candidates.append(Path(config.text.pretrained) / "tokenizer.json")
    for c in candidates:
        if c.is_file():
            return Tokenizer.from_file(c, max_length=n, kind=kind)
    if kind == "clip":
        return Tokenizer.clip(max_length=n)
    from training.offline import minilm_l6_folder

    return Tokenizer.from_file(minilm_l6_folder() / "tokenizer.json", max_length=n, kind=kind)


def _with_tasks(model, tasks: list[str]):
    """The same model with heads for `tasks` (kept heads keep their weights, new ones start fresh)."""
    import copy

    from training.config import task_labels
    from training.model import SyDES

    cfg = copy.deepcopy(model.config)
    cfg.tasks = task_labels(tuple(tasks))
    new = SyDES(cfg)
    own = new.state_dict()
    new.load_state_dict({k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape},
                        strict=False)
    return new


def build_model(*, preset: str | None = None, init: str | None = None, tasks: list[str] | None = None,
                offline_backbones: bool = True):
    """A SyDES from `init` (a checkpoint folder) or a fresh `preset`; -> (model, tokenizer).

    A fresh edge preset gets the offline DINOv2 / MiniLM weights (training.offline) when
    `offline_backbones`; the tiny presets stay random.
    """
    from training.model import SyDES

    if (preset is None) == (init is None):
        raise ConfigError("give exactly one of --preset NAME or --init CHECKPOINT")
    if init is not None:
        model = SyDES.from_pretrained(init)
        if tasks and list(tasks) != model.config.task_names:
            model = _with_tasks(model, tasks)
        return model, load_tokenizer(model.config, init)
    from training.presets import get_preset

    factory = get_preset(preset)
    kw: dict[str, Any] = {"tasks": tuple(tasks)} if tasks else {}
    load = False
    if preset == "edge" and offline_backbones:
        from training.offline import edge_backbone_sources

        src = edge_backbone_sources()
        kw.update(vision_pretrained=str(src["vision"]), text_pretrained=str(src["text"]))
        load = True
    config = factory(**kw)
    model = SyDES(config, load_pretrained=load)
    return model, load_tokenizer(config)


def read_split(data: str | None, split: str, file: str | None, *, tasks, text_fields=None,
               strict_text: bool = False, skip_invalid: bool = False, limit: int | None = None):
    """Records from `file` (JSONL / CSV posts) or from the MSED folder `data`'s `split`; None if neither.
    The text from `text_fields` (sdk.text_fields.TextFields; a model's `config.tokenizer.text_recipe()`):
    an MSED CSV must have their columns, a posts file too with `strict_text` (else its text column)."""
    from training.data import read_msed, read_posts

    labels = {t: list(v) for t, v in tasks.items()}
    if file:
        return read_posts(file, tasks=labels, text_fields=text_fields, strict_text=strict_text,
                          skip_invalid=skip_invalid, limit=limit)
    if data:
        return read_msed(data, split, tasks=labels, text_fields=text_fields, skip_invalid=skip_invalid, limit=limit)
    return None


def train(*, stage: str, output: str | os.PathLike[str], preset: str | None = None, init: str | None = None,
          tasks: list[str] | None = None, data: str | None = None, train_file: str | None = None,
          dev_file: str | None = None, limit: int | None = None, skip_invalid: bool = False,
          offline_backbones: bool = True, text_fields=None, text_separator: str | None = None,
          **options) -> dict[str, Any]:
    """Build / load the model, read the data, run one stage; returns the Trainer's summary.

    `text_fields` (a TextFields, "Title,Caption" or a list) and `text_separator`: the text recipe, recorded
    in the checkpoint (default: the --init checkpoint's, else the Caption and " "). The default Caption
    recipe reads a posts file's text column where it has no Caption (as before); any other needs its columns."""
    from sdk.text_fields import DEFAULT_TEXT_FIELDS, TextFields
    from training.trainer import Trainer, TrainOptions, set_seed

    set_seed(int(options.get("seed", 0)))  # fresh weights are part of what a seed reproduces
    model, tokenizer = build_model(preset=preset, init=init, tasks=tasks, offline_backbones=offline_backbones)
    fields = model.config.tokenizer.text_recipe()
    if text_fields is not None or text_separator is not None:
        fields = TextFields(fields.fields if text_fields is None else TextFields.of(text_fields).fields,
                            fields.separator if text_separator is None else text_separator)
        model.config.tokenizer.set_text_recipe(fields)
    read = functools.partial(read_split, tasks=model.config.tasks, text_fields=fields,
                             strict_text=fields != DEFAULT_TEXT_FIELDS, skip_invalid=skip_invalid, limit=limit)
    train_rec = read(data, "train", train_file)
    if train_rec is None:
        raise DataError("no training data: give --data DIR (MSED layout) or --train-file FILE")
    dev_rec = read(data, "dev", dev_file)
    opts = TrainOptions(stage=stage, **options)
    trainer = Trainer(model, train_rec, dev_rec, tokenizer, output, opts,
                      init_from=init if stage == "finetune" else None)
    return trainer.fit()
