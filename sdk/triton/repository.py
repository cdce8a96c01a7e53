"""Write a Triton model repository from a bundle: graph model, Python preprocessing model, ensemble.

Names, dtypes and dims come from the bundle's manifest (sdk.bundle); the text inputs get a fixed length
(the tokenizer's max_length) because Triton batches only requests of equal shapes. Each model's
config.pbtxt is written with sdk.triton.pbtxt; nothing here needs Triton or protobuf installed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.atomic import atomic_directory
from sdk.bundle import INPUT_NAMES, Bundle, TensorSpec, load_bundle
from sdk.errors import BundleError, ConfigError, MissingExtraError
from sdk.triton.pbtxt import Enum, to_pbtxt

TRITON_DTYPES = {"uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                 "float16": "TYPE_FP16", "float32": "TYPE_FP32", "bool": "TYPE_BOOL"}
TEXT_INPUTS = ("input_ids", "attention_mask")  # the [batch, seq] inputs padded to max_length
IMAGE_IN, TEXT_IN = "IMAGE", "TEXT"  # the ensemble's inputs: encoded image file bytes, UTF-8 text
SETTINGS = "settings.json"  # what the preprocessing model reads in initialize()
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}


@dataclass(frozen=True)
class TritonOptions:
    """name: the ensemble's model name (the others are NAME_graph, NAME_preprocess). max_queue_size:
    Triton's per-model queue bound (requests beyond it are rejected at once, as `sydes serve` sheds)."""

    name: str = "sydes"
    format: str = "onnxruntime"  # see FORMATS
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    max_queue_size: int = 128
    queue_timeout_us: int = 0  # 0: no per-request queue timeout
    kind: str = "gpu"  # instance_group kind of the graph model: gpu | cpu
    instances: int = 1
    preprocess_instances: int = 2  # Python backend instances (CPU): decoding runs in parallel
    engine: str | None = None  # tensorrt: the plan file (default: the one engine in the bundle's engines/)
    fast_decode: bool = True  # as Analyzer(fast_decode=True): JPEGs decoded at a reduced DCT scale

    def __post_init__(self) -> None:
        for n in ("max_batch_size", "max_queue_size", "instances", "preprocess_instances"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{n} must be a positive integer, got {v!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"format {self.format!r} is not known; valid: {', '.join(map(repr, FORMATS))}")
        if self.kind not in KINDS:
            raise ConfigError(f"kind {self.kind!r} is not valid; valid: {', '.join(map(repr, KINDS))}")
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"name {self.name!r} must be letters, digits, '_' or '-'")

    @property
    def graph_name(self) -> str:
        return f"{self.name}_graph"

    @property
    def preprocess_name(self) -> str:
        return f"{self.name}_preprocess"


# --- graph formats (a registry: a wrong --format lists the valid ones) --------------------------------
def _copy_onnx(bundle: Bundle, version: Path, opts: TritonOptions) -> None:
    if bundle.graph_format != "onnx":
        raise ConfigError(f"bundle {bundle.name!r} holds an {bundle.graph_format} graph (--target openvino): "
                          "write it for Triton's OpenVINO backend with --format openvino")
    src = bundle.graph_path()
    shutil.copy2(src, version / "model.onnx")
    for extra in src.parent.glob(src.name + ".data"):  # external weights, where the export wrote them
        shutil.copy2(extra, version / extra.name)


def _openvino_ir(bundle: Bundle, version: Path, opts: TritonOptions) -> None:
    try:
        import openvino as ov
    except ModuleNotFoundError as e:
        raise MissingExtraError("openvino", "openvino", "needed by `sydes triton --format openvino`") from e
    if bundle.graph_format == "openvino":  # already an IR (its INT8 / FP16 weights as exported): copy it
        src = bundle.graph_path()
        shutil.copy2(src, version / "model.xml")
        shutil.copy2(src.with_suffix(".bin"), version / "model.bin")
        return
    ov.save_model(ov.convert_model(str(bundle.graph_path())), str(version / "model.xml"), compress_to_fp16=False)


def _tensorrt_plan(bundle: Bundle, version: Path, opts: TritonOptions) -> None:
    if opts.engine:
        plan = Path(opts.engine)
    else:
        found = sorted(bundle.engines_dir.glob("*.engine")) if bundle.engines_dir.is_dir() else []
        if len(found) != 1:
            raise ConfigError(f"--format tensorrt needs one engine; {bundle.engines_dir} holds {len(found)} "
                              f"({', '.join(p.name for p in found) or 'none'}): pass --engine PATH (an engine "
                              "built on the serving GPU with a batch profile up to max_batch_size)")
        plan = found[0]
    if not plan.is_file():
        raise ConfigError(f"engine {plan} does not exist")
    shutil.copy2(plan, version / "model.plan")


@dataclass(frozen=True)
class GraphFormat:
    fields: dict[str, str]  # backend / platform lines of config.pbtxt
    filename: str
    write: Callable[[Bundle, Path, TritonOptions], None] = field(compare=False)


FORMATS: dict[str, GraphFormat] = {
    "onnxruntime": GraphFormat({"backend": "onnxruntime"}, "model.onnx", _copy_onnx),
    "openvino": GraphFormat({"backend": "openvino"}, "model.xml", _openvino_ir),
    "tensorrt": GraphFormat({"platform": "tensorrt_plan"}, "model.plan", _tensorrt_plan),
}


# --- configs ------------------------------------------------------------------------------------------
def _dims(t: TensorSpec, text_length: int) -> list[int]:
    """Manifest shape -> Triton dims: the leading batch axis dropped, the text axis fixed."""
    if not t.shape or isinstance(t.shape[0], int):
        raise BundleError(f"graph tensor {t.name!r} has shape {list(t.shape)}: Triton batching needs a "
                          "dynamic leading batch axis")
    dims = []
    for d in t.shape[1:]:
        if isinstance(d, int):
            dims.append(d)
        elif t.name in TEXT_INPUTS:
            dims.append(text_length)
        else:
            raise BundleError(f"graph tensor {t.name!r} has a dynamic axis {d!r} Triton cannot batch on")
    return dims


def _dtype(t: TensorSpec) -> Enum:
    if t.dtype not in TRITON_DTYPES:
        raise BundleError(f"graph tensor {t.name!r} has dtype {t.dtype!r}; Triton types known: {sorted(TRITON_DTYPES)}")
    return Enum(TRITON_DTYPES[t.dtype])


def _io(t: TensorSpec, text_length: int, labels: str | None = None) -> dict[str, Any]:
    return {"name": t.name, "data_type": _dtype(t), "dims": _dims(t, text_length), "label_filename": labels}


def _batching(opts: TritonOptions) -> dict[str, Any]:
    policy = {"max_queue_size": opts.max_queue_size, "timeout_action": Enum("REJECT"),
              "default_timeout_microseconds": opts.queue_timeout_us or None}
    return {"max_queue_delay_microseconds": opts.max_queue_delay_us, "default_queue_policy": policy}


def model_configs(bundle: Bundle, opts: TritonOptions) -> dict[str, dict[str, Any]]:
    """{model name: ModelConfig as nested dicts} for the graph, the preprocessing model and the ensemble."""
    g = bundle.manifest.graph
    names = tuple(t.name for t in g.inputs)
    if not bundle.uses_images:  # the ensemble's first step decodes and tiles an image
        raise BundleError(f"bundle {bundle.name!r} is text-only (graph inputs {list(names)}): the Triton "
                          "repository is an image + text ensemble; serve text-only bundles with `sydes serve`")
    if sorted(names) != sorted(INPUT_NAMES):
        raise BundleError(f"graph inputs {list(names)} are not the bundle contract's {list(INPUT_NAMES)}")
    L = bundle.manifest.tokenizer.max_length
    outs = [t for t in g.outputs if t.name.startswith("probs_")]
    labels = {t.name: f"labels_{t.name[len('probs_'):]}.txt" for t in outs}
    graph = {"name": opts.graph_name, **FORMATS[opts.format].fields, "max_batch_size": opts.max_batch_size,
             "default_model_filename": FORMATS[opts.format].filename,
             "input": [_io(t, L) for t in g.inputs], "output": [_io(t, L, labels[t.name]) for t in outs],
             "dynamic_batching": _batching(opts),
             "instance_group": [{"count": opts.instances, "kind": Enum(KINDS[opts.kind])}]}
    encoded = [{"name": IMAGE_IN, "data_type": Enum("TYPE_STRING"), "dims": [1]},
               {"name": TEXT_IN, "data_type": Enum("TYPE_STRING"), "dims": [1]}]
    pre = {"name": opts.preprocess_name, "backend": "python", "max_batch_size": opts.max_batch_size,
           "input": encoded, "output": [_io(t, L) for t in g.inputs], "dynamic_batching": _batching(opts),
           "instance_group": [{"count": opts.preprocess_instances, "kind": Enum("KIND_CPU")}]}
    steps = [
        {"model_name": opts.preprocess_name, "model_version": -1,
         "input_map": [{"key": n, "value": n} for n in (IMAGE_IN, TEXT_IN)],
         "output_map": [{"key": n, "value": n} for n in names]},
        {"model_name": opts.graph_name, "model_version": -1,
         "input_map": [{"key": n, "value": n} for n in names],
         "output_map": [{"key": t.name, "value": t.name} for t in outs]},
    ]
    ensemble = {"name": opts.name, "platform": "ensemble", "max_batch_size": opts.max_batch_size,
                "input": encoded, "output": [_io(t, L, labels[t.name]) for t in outs],
                "ensemble_scheduling": {"step": steps}}
    return {opts.graph_name: graph, opts.preprocess_name: pre, opts.name: ensemble}


MODEL_PY = '''"""Triton Python backend model: SyDES Edge preprocessing (written by `sydes triton`).

Needs `sydes-edge` (its sdk package: numpy, pillow, tokenizers) in the Python environment Triton's
Python backend runs; the bundle's tokenizer and preprocessing settings sit beside this file.
"""

from sdk.triton.python_model import TritonPythonModel  # noqa: F401
'''


def write_repository(bundle: str | os.PathLike[str] | Bundle, out: str | os.PathLike[str],
                     options: TritonOptions | None = None, *, overwrite: bool = False) -> Path:
    """Write the model repository to `out` (atomically: all of it or nothing); -> its path."""
    opts = options or TritonOptions()
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    configs = model_configs(b, opts)
    m = b.manifest
    if Path(out).exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for name, cfg in configs.items():
            (tmp / name / "1").mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(to_pbtxt(cfg))
        FORMATS[opts.format].write(b, tmp / opts.graph_name / "1", opts)
        for model in (opts.graph_name, opts.name):
            for task, labels in m.tasks.items():
                (tmp / model / f"labels_{task}.txt").write_text("\n".join(labels) + "\n")
        pre = tmp / opts.preprocess_name / "1"
        (pre / "model.py").write_text(MODEL_PY)
        shutil.copy2(b.tokenizer_path, pre / "tokenizer.json")
        settings = {"bundle": m.name, "preprocess": m.preprocess, "fast_decode": opts.fast_decode,
                    "tokenizer": {"file": "tokenizer.json", "kind": m.tokenizer.kind,
                                  "max_length": m.tokenizer.max_length},
                    "image_input": IMAGE_IN, "text_input": TEXT_IN, "outputs": list(INPUT_NAMES)}
        (pre / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
    return Path(out)
