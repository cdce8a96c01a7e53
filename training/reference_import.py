"""Convert a checkpoint of the reference SyDES trainer into a SyDES Edge checkpoint folder.

Inputs: the reference's weights (safetensors, or a plain torch state dict read with
`torch.load(weights_only=True)`), the reference's own training YAML (its `model:` and `data:` sections
decide the architecture and the task), and the CLIP folder (or hub id) the reference was built from
(vision / text configs and the BPE tokenizer files).

The conversion is a rename: our modules mirror the reference's names (`base_model.` stripped; the
classification head `proj1` / `proj2` becomes `heads.<task>.proj1` / `heads.<task>.proj2`). Unlike the
reference's own loader (`load_state_dict(strict=False)`, which silently keeps random weights for every
key it does not recognise), we refuse with a CheckpointError that lists every unmapped key, every
missing key and every shape mismatch.

Quirks of the reference reproduced here:
- its image decoder always has 8 blocks whatever `model.image_decoder.layers` says;
- its text decoder width must equal the vision width (`ln2_post` normalises vision tokens at the
  decoder width), so a YAML where they differ describes a model that cannot run: refused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

REFERENCE_PREFIX = "base_model."
HEAD_MODULES = ("proj1", "proj2")
TOP_LEVEL_KEYS = ("temperature", "logit_scale")
REFERENCE_IMAGE_DECODER_BLOCKS = 8  # MAEDecoder's depth is hard-wired in the reference code
_MAX_LISTED = 200  # an error message lists at most this many keys per kind (and says how many more)


# --- key mapping --------------------------------------------------------------------------------------
def reference_to_sydes_key(key: str, task: str) -> str | None:
    """Our state-dict key for a reference key (None: the key has no place in our model)."""
    if key.startswith(REFERENCE_PREFIX):
        rest = key[len(REFERENCE_PREFIX):]
        return rest if rest and not rest.startswith("heads.") else None
    head = key.split(".", 1)[0]
    if head in HEAD_MODULES and "." in key:
        return f"heads.{task}.{key}"
    if key in TOP_LEVEL_KEYS:
        return key
    return None


def sydes_to_reference_key(key: str) -> str:
    """Inverse of `reference_to_sydes_key` (for one-task models)."""
    if key in TOP_LEVEL_KEYS:
        return key
    if key.startswith("heads."):
        parts = key.split(".", 2)  # heads, task, proj1.mlp.0.weight
        if len(parts) == 3 and parts[2].split(".", 1)[0] in HEAD_MODULES:
            return parts[2]
    return REFERENCE_PREFIX + key


# --- inputs -------------------------------------------------------------------------------------------
def load_reference_weights(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a reference state dict: safetensors, else torch.load(weights_only=True) of a plain dict.

    Nothing is unpickled beyond tensors and containers (weights_only); a pickle holding other objects,
    a nested checkpoint or an unreadable file raise CheckpointError.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    # safetensors: 8-byte little-endian header length, then a JSON header starting with "{"
    is_safetensors = path.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{")
    if is_safetensors:
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError, OSError ...: the file is damaged or not safetensors
            raise CheckpointError(f"cannot read safetensors weights {path}: {e}") from e
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for non-tensor objects, RuntimeError/EOFError for junk
            raise CheckpointError(
                f"cannot read {path} as a plain torch state dict with torch.load(weights_only=True) "
                f"(only tensors in a dict are accepted; nothing else is unpickled): {e}") from e
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds a {type(sd).__name__}, not a state dict (a dict of tensors)")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in sd.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        hint = " (a nested training checkpoint? pass the model's state dict itself)" \
            if any(isinstance(v, dict) for v in sd.values()) else ""
        raise CheckpointError(f"{path} is not a plain state dict: non-tensor entries {_listing(bad)}{hint}")
    return sd


def read_reference_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The reference's training YAML as a dict (needs `model:` and `data:` sections)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"reference config {path} does not exist")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"reference config {path} is not valid YAML: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("model"), dict) or not isinstance(d.get("data"), dict):
        raise ConfigError(f"reference config {path} needs `model:` and `data:` sections (the reference's "
                          "configs/*.yaml layout)")
    return d


@dataclass
class ClipSource:
    """What the CLIP folder / hub id gives: the two HF config dicts and the tokenizer.json text."""

    vision: dict[str, Any]
    text: dict[str, Any]
    tokenizer_json: str


def _clip_file(clip: str, name: str) -> Path | None:
    p = Path(clip)
    if p.is_dir():
        return p / name if (p / name).is_file() else None
    try:  # a hub id: only reachable where a hub (or its cache) is
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(clip, name))
    except Exception as e:
        log.debug("cannot fetch %s from %s: %s", name, clip, e)
        return None


def clip_config_dicts(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vision, text) config dicts of a CLIPModel config.json, with the keys our presets use, filled
    from transformers' CLIP configs so that a config.json that leaves defaults out still gives all."""
    from transformers import CLIPTextConfig, CLIPVisionConfig

    from .presets import reference

    template = reference()
    out = []
    for cls, sub, keys in ((CLIPVisionConfig, raw["vision_config"], template.vision.config),
                           (CLIPTextConfig, raw["text_config"], template.text.config)):
        try:
            hf = cls(**{k: v for k, v in sub.items() if not k.startswith("_")})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid CLIP {cls.__name__}: {e}") from None
        out.append({k: getattr(hf, k) for k in keys if getattr(hf, k, None) is not None})
    return out[0], out[1]


def read_clip_source(clip: str | os.PathLike[str]) -> ClipSource:
    """Vision/text configs (see `clip_config_dicts`) and tokenizer of a CLIP folder (config.json +
    vocab.json + merges.txt, or a tokenizer.json) or hub id."""
    clip = str(clip)
    cfg_file = _clip_file(clip, "config.json")
    if cfg_file is None:
        raise ConfigError(f"no CLIP config.json in {clip!r} (give an HF CLIP folder or hub id)")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cfg_file} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("vision_config"), dict) \
            or not isinstance(raw.get("text_config"), dict):
        raise ConfigError(f"{cfg_file} is not a CLIPModel config (needs vision_config and text_config)")
    vision, text = clip_config_dicts(raw)

    vocab, merges = _clip_file(clip, "vocab.json"), _clip_file(clip, "merges.txt")
    if vocab is not None and merges is not None:
        try:
            from sdk.tokenizer import build_clip_tokenizer_json
        except ImportError as e:
            raise CheckpointError(f"sdk.tokenizer.build_clip_tokenizer_json is not available: {e}") from e
        tok = build_clip_tokenizer_json(vocab, merges)
    else:
        tok_file = _clip_file(clip, "tokenizer.json")
        if tok_file is None:
            raise ConfigError(f"{clip!r} has neither vocab.json + merges.txt nor tokenizer.json: "
                              "no CLIP tokenizer to put in the checkpoint")
        tok = tok_file.read_text(encoding="utf-8")
    return ClipSource(vision=vision, text=text, tokenizer_json=tok)


def _section(d: dict[str, Any], name: str) -> dict[str, Any]:
    sec = d.get(name)
    if not isinstance(sec, dict):
        raise ConfigError(f"reference config: model.{name} is missing or not a mapping")
    return sec


def _field(sec: dict[str, Any], where: str, key: str, typ: type) -> Any:
    if key not in sec:
        raise ConfigError(f"reference config: {where}.{key} is missing")
    try:
        return typ(sec[key])
    except (TypeError, ValueError):
        raise ConfigError(f"reference config: {where}.{key} = {sec[key]!r} is not a valid {typ.__name__}") from None


def reference_sydes_config(ref_yaml: dict[str, Any], clip: ClipSource):
    """The SydesConfig of a reference model: preset "reference", one task, reference quirks applied."""
    from .config import (
        CLIP_MEAN,
        CLIP_STD,
        MSED_TASKS,
        BackboneSpec,
        DecoderConfig,
        ImageDecoderConfig,
        SydesConfig,
        TokenizerSpec,
        preprocess_dict,
        task_labels,
    )

    model, data = ref_yaml["model"], ref_yaml["data"]
    task = data.get("label_type")
    if task not in MSED_TASKS:
        raise ConfigError(f"reference config: unknown data.label_type {task!r}; valid: {', '.join(MSED_TASKS)}")
    tasks = task_labels((task,))
    num_labels = _field(model, "model", "num_labels", int)
    stage = (ref_yaml.get("training") or {}).get("stage")
    by_size = {len(v): t for t, v in MSED_TASKS.items()}  # 3, 6, 7: one task per head size
    if num_labels != len(tasks[task]) and stage == "pretrain" and num_labels in by_size:
        # The reference's pretrain config says label_type sentiment with num_labels 6: its head is not
        # trained in pretraining (cls weight 0) and is sized by num_labels, so the checkpoint's head is
        # read as the task of that size; fine-tuning re-initialises it anyway.
        log.warning("reference pretrain config: num_labels %d does not fit label_type %r; its (untrained) "
                    "head is imported as task %r", num_labels, task, by_size[num_labels])
        task = by_size[num_labels]
        tasks = task_labels((task,))
    if num_labels != len(tasks[task]):
        raise ConfigError(f"reference config: model.num_labels = {num_labels} but task {task!r} has "
                          f"{len(tasks[task])} labels ({', '.join(tasks[task])})")
    td, idec = _section(model, "text_decoder"), _section(model, "image_decoder")
    vision_width = int(clip.vision["hidden_size"])
    width = _field(td, "model.text_decoder", "embed_dim", int)
    if width != vision_width:  # quirk: ln2_post normalises the vision tokens at the decoder width
        raise ConfigError(f"reference config: model.text_decoder.embed_dim = {width} differs from the CLIP "
                          f"vision width {vision_width}; the reference cannot run such a model")
    layers_cfg = idec.get("layers")
    if layers_cfg is not None and int(layers_cfg) != REFERENCE_IMAGE_DECODER_BLOCKS:
        log.info("model.image_decoder.layers = %s is ignored: the reference's image decoder always has %d "
                 "blocks", layers_cfg, REFERENCE_IMAGE_DECODER_BLOCKS)
    image_size = int(clip.vision["image_size"])
    cfg = SydesConfig(
        preset="reference",
        vision=BackboneSpec("clip", dict(clip.vision)),
        text=BackboneSpec("clip", dict(clip.text)),
        decoder=DecoderConfig(
            width=width, layers=_field(td, "model.text_decoder", "layers", int),
            heads=_field(td, "model.text_decoder", "nhead", int),
            mlp_ratio=_field(td, "model.text_decoder", "mlp_ratio", float),
            output_dim=_field(td, "model.text_decoder", "output_dim", int)),
        image_decoder=ImageDecoderConfig(
            dim=_field(idec, "model.image_decoder", "embed_dim", int), blocks=REFERENCE_IMAGE_DECODER_BLOCKS,
            heads=_field(idec, "model.image_decoder", "nhead", int),
            mlp_ratio=_field(idec, "model.image_decoder", "mlp_ratio", float),
            mask_ratio=float(idec.get("mask_ratio", 0.75))),
        latent_dim=_field(model, "model", "latent_dim", int),
        tasks=tasks,
        preprocess=preprocess_dict(CLIP_MEAN, CLIP_STD, image_size, 2 * image_size),
        tokenizer=TokenizerSpec("clip", min(77, int(clip.text.get("max_position_embeddings", 77)))),
        dropout=0.1,
    )
    return cfg.validate()


# --- conversion ---------------------------------------------------------------------------------------
def _listing(items: list[str]) -> str:
    more = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f" ... and {more} more" if more > 0 else "")


def convert_state_dict(ref_sd: dict[str, Any], model: Any, task: str) -> dict[str, Any]:
    """Rename a reference state dict onto `model`'s keys, checking everything.

    Every reference key must land on a key of the model with the same shape; every parameter and
    persistent buffer of the model must receive a value. Buffers the model computes itself from its
    config and does not save are not part of the state dict and need nothing. Float tensors are cast to
    the model's dtype (lossless from fp16/bf16 to fp32). Raises CheckpointError listing all problems.
    """
    target = model.state_dict()
    out: dict[str, Any] = {}
    mapped: set[str] = set()
    unmapped, mismatched, bad_dtype = [], [], []
    for key, value in ref_sd.items():
        new = reference_to_sydes_key(key, task)
        if new is None or new not in target:
            unmapped.append(key if new is None else f"{key} (-> {new})")
            continue
        mapped.add(new)
        want = target[new]
        if tuple(value.shape) != tuple(want.shape):
            mismatched.append(f"{key}: checkpoint {list(value.shape)} vs model {list(want.shape)}")
            continue
        if want.is_floating_point() != value.is_floating_point():
            bad_dtype.append(f"{key}: {value.dtype} vs {want.dtype}")
            continue
        out[new] = value.to(want.dtype) if value.dtype != want.dtype else value
    missing = [sydes_to_reference_key(k) for k in target if k not in mapped]
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} unmapped key(s) in the checkpoint: {_listing(unmapped)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s) the model needs: {_listing(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if bad_dtype:
        problems.append(f"{len(bad_dtype)} dtype mismatch(es): {_listing(bad_dtype)}")
    if problems:
        raise CheckpointError("the reference checkpoint does not match the model its config describes "
                              "(the reference would silently ignore this; we refuse):\n  " + "\n  ".join(problems))
    return out


def import_reference(weights: str | os.PathLike[str], config: str | os.PathLike[str],
                     clip: str | os.PathLike[str], output: str | os.PathLike[str], *,
                     overwrite: bool = False) -> Path:
    """Convert a reference checkpoint into a SyDES Edge checkpoint folder at `output` (atomically).

    The folder holds config.json, model.safetensors and tokenizer.json; nothing is written when any
    check fails.
    """
    import tempfile

    from .model import SyDES

    output = Path(output)
    if output.exists() and not overwrite:
        raise CheckpointError(f"{output} already exists (pass --overwrite to replace it)")
    ref_yaml = read_reference_yaml(config)
    source = read_clip_source(clip)
    cfg = reference_sydes_config(ref_yaml, source)
    task = cfg.task_names[0]
    ref_sd = load_reference_weights(weights)
    model = SyDES(cfg)
    model.load_checked_state_dict(convert_state_dict(ref_sd, model, task), source=str(weights))
    model.eval()
    with tempfile.TemporaryDirectory(prefix="sydes-import-") as tmp:
        tok = Path(tmp) / "tokenizer.json"
        tok.write_text(source.tokenizer_json, encoding="utf-8")
        model.save_pretrained(output, tokenizer_file=tok, overwrite=overwrite)
    log.info("imported %d reference tensors (task %s, labels %s) from %s into %s",
             len(ref_sd), task, ", ".join(cfg.tasks[task]), weights, output)
    return output
