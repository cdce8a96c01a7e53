"""The exported computation: uint8 pixels + token ids -> softmax probabilities per task, as one module.

`ExportGraph` wraps one SyDES model (all its tasks) or several single-task models that share their image
encoder: then the tiler and the image encoder run once and each model contributes its text encoder,
decoder, pooling and head (a multi-task graph from task-specific fine-tunes). `TextExportGraph` wraps one
text-only model (training.text_model): ids + mask -> probabilities, no image inputs. `export_graph` picks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.errors import ExportError
from sdk.bundle import INPUT_NAMES, TEXT_INPUT_NAMES  # noqa: E402,F401  (the one definition)


class ExportGraph(nn.Module):
    """forward(global_pixels u8 [B,224,224,3], canvas_pixels u8 [B,448,448,3], input_ids i64 [B,L],
    attention_mask i64 [B,L]) -> tuple of probs f32 [B, C_task], one per task in `self.tasks` order."""

    input_names: tuple[str, ...] = INPUT_NAMES  # the forward's arguments, in order
    uses_images = True

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ExportError("nothing to export: no model given")
        self.models = nn.ModuleList(models)
        self.tasks: list[str] = []
        self.labels: dict[str, list[str]] = {}
        for m in models:
            for task, names in m.config.tasks.items():
                if task in self.labels:
                    raise ExportError(f"task {task!r} is produced by more than one checkpoint; each task "
                                      "must come from exactly one")
                self.tasks.append(task)
                self.labels[task] = list(names)
        self.shared = len(models) > 1

    @property
    def output_names(self) -> list[str]:
        return [f"probs_{t}" for t in self.tasks]

    def forward(self, global_pixels: torch.Tensor, canvas_pixels: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits: dict[str, torch.Tensor] = {}
        if not self.shared:
            logits = self.models[0](input_ids, attention_mask, global_pixels=global_pixels,
                                    canvas_pixels=canvas_pixels)
        else:
            # the shared part, once for all tasks: tiler + image backbone over the 5 views as one [B*5] pass;
            # ln1_post and everything after it are trained per task (fine-tuning freezes only the backbone),
            # so each branch goes on from the features through the model's own seam (encode -> head)
            feats = self.models[0].image_features(global_pixels=global_pixels, canvas_pixels=canvas_pixels)
            for m in self.models:
                logits.update(m.head(m.encode(input_ids, attention_mask, image_features=feats)))
        # softmax in float32 even when the model ran in another precision
        return tuple(torch.softmax(logits[t].float(), dim=-1) for t in self.tasks)


class TextExportGraph(ExportGraph):
    """forward(input_ids i64 [B,L], attention_mask i64 [B,L]) -> tuple of probs f32 [B, C_task]: one
    text-only model, no image inputs."""

    input_names = TEXT_INPUT_NAMES
    uses_images = False

    def __init__(self, models: Sequence[nn.Module]) -> None:
        if len(models) > 1:
            raise ExportError("a text-only bundle holds one checkpoint (there is no image encoder to share)")
        super().__init__(models)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        logits = self.models[0](input_ids, attention_mask)
        return tuple(torch.softmax(logits[t].float(), dim=-1) for t in self.tasks)


def uses_images(models: Sequence[nn.Module]) -> bool:
    """True for image models, False for text-only ones; ExportError for a mix of the two families."""
    images = [getattr(m, "uses_images", True) for m in models]
    if any(images) and not all(images):
        raise ExportError("a text-only checkpoint cannot be exported together with image models")
    return bool(images) and all(images)


def export_graph(models: Sequence[nn.Module]) -> ExportGraph:
    """The graph for `models`: ExportGraph for SyDES models, TextExportGraph for one text-only model."""
    return ExportGraph(models) if uses_images(models) else TextExportGraph(models)


SHARED_PREFIXES = ("image_encoder.",)


def shared_encoder_mismatch(models: Sequence[nn.Module], names: Sequence[str]) -> list[str]:
    """Tensors under SHARED_PREFIXES that differ (by sha256 of dtype, shape and bytes) between the first
    model and any other, as "key (checkpoint)" strings; [] when all are identical."""
    import hashlib

    def digests(m: nn.Module) -> dict[str, str]:
        out = {}
        for k, v in m.state_dict().items():
            if k.startswith(SHARED_PREFIXES):
                t = v.detach().cpu().contiguous()
                h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
                out[k] = h.hexdigest()
        return out

    ref = digests(models[0])
    bad = []
    for m, name in zip(models[1:], names[1:], strict=True):
        other = digests(m)
        for k in sorted(set(ref) | set(other)):
            if ref.get(k) != other.get(k):
                bad.append(f"{k} ({name})")
    return bad


EXPORT_CODE_VERSION = 1  # bump when ExportGraph / export_onnx change what they produce


def _graph_config(config: Any) -> dict[str, Any]:
    """The config as the graph sees it: the text fields (which columns make the text) do not change it."""
    d = config.to_dict()
    d["tokenizer"] = {k: v for k, v in d["tokenizer"].items() if k not in ("text_fields", "text_separator")}
    return d


def graph_fingerprint(graph: ExportGraph, opset: int, max_length: int) -> str:
    """sha256 over everything the raw ONNX graph depends on: configs, weights, opset, tool versions."""
    import hashlib
    import json

    import onnxscript

    h = hashlib.sha256(json.dumps({
        "v": EXPORT_CODE_VERSION, "opset": opset, "max_length": max_length, "torch": torch.__version__,
        "onnxscript": onnxscript.__version__, "configs": [_graph_config(m.config) for m in graph.models],
    }, sort_keys=True, default=str).encode())
    for m in graph.models:
        for k, v in sorted(m.state_dict().items()):
            t = v.detach().cpu().contiguous()
            h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_export_onnx(graph: ExportGraph, example: dict[str, Any], path: str | Path, opset: int,
                       max_length: int, cache_dir: str | Path | None) -> tuple[Path, bool]:
    """export_onnx through a cache of raw graphs keyed by `graph_fingerprint` (a re-export of the same
    checkpoint at another precision skips the torch export). -> (path, cache hit)."""
    import os
    import shutil
    import tempfile

    path = Path(path)
    if cache_dir is None:
        return export_onnx(graph, example, path, opset=opset, max_length=max_length), False
    cdir = Path(cache_dir)
    entry = cdir / f"{graph_fingerprint(graph, opset, max_length)}.onnx"
    if entry.is_file():
        shutil.copyfile(entry, path)
        return path, True
    export_onnx(graph, example, path, opset=opset, max_length=max_length)
    cdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{entry.name}.", suffix=".tmp", dir=cdir)
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, entry)  # atomic: a reader sees the whole graph or none
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path, False


def export_onnx(graph: ExportGraph, example: dict[str, Any], path: str | Path, opset: int = 18,
                max_batch: int = 4096, max_length: int = 512) -> Path:
    """torch.onnx.export (dynamo) with dynamic batch and text length; one file, no external data.

    `example` holds numpy or torch inputs by name (use batch >= 2 and a length that is not 1, so the
    exporter does not specialise those axes)."""
    import onnx
    from torch.export import Dim

    path = Path(path)
    names = list(graph.input_names)
    args = tuple(torch.as_tensor(example[n]) for n in names)
    batch = Dim("batch", min=1, max=max_batch)
    seq = Dim("seq", min=2, max=max_length)
    axes = {"global_pixels": {0: batch}, "canvas_pixels": {0: batch},
            "input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    dynamic_shapes = {n: axes[n] for n in names}
    graph.eval()
    import logging

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with torch.no_grad():
            prog = torch.onnx.export(graph, args, dynamo=True, input_names=names,
                                     output_names=graph.output_names, opset_version=opset,
                                     dynamic_shapes=dynamic_shapes, external_data=False, optimize=True,
                                     verbose=False)
        prog.save(str(path), external_data=False)
    except ExportError:
        raise
    except Exception as e:  # the exporter raises many types; say which step failed
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {str(e)[:2000]}") from e
    # readable axis names (the exporter calls them s0, s1 ...): the manifest and tools show these
    model = onnx.load(str(path))
    sym = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in ("global_pixels", "canvas_pixels", "input_ids") and dims[0].dim_param:
            sym[dims[0].dim_param] = "batch"
        if vi.name == "input_ids" and dims[1].dim_param:
            sym[dims[1].dim_param] = "seq"
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in sym:
                d.dim_param = sym[d.dim_param]
    onnx.save(model, str(path))
    return path
