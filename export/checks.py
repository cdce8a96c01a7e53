"""The export's checks and records: the output folder and the models exported together, graph I/O specs,
package versions, FP32 parity, the shared-encoder branches, the held-out precision report, the staged bundle
opened by sdk.Analyzer, the label-structure table, checkpoint provenance."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError, ExportValidationError
from sdk.bundle import Bundle, sha256_file

log = logging.getLogger("export")


def package_versions() -> dict[str, str]:
    out = {}
    for dist in ("sydes-edge", "torch", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy",
                 "tokenizers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def tensor_specs(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnx

    elem = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}
    model = onnx.load(str(path), load_external_data=False)

    def spec(vi: Any) -> dict[str, Any]:
        t = vi.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        return {"name": vi.name, "dtype": elem.get(t.elem_type, str(t.elem_type)), "shape": shape}

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def check_branches(graph: Any, feeds: list[dict[str, np.ndarray]], ref: dict[str, np.ndarray]) -> None:
    import torch

    from export.graph import INPUT_NAMES

    with torch.no_grad():
        for m in graph.models:
            own: dict[str, list[np.ndarray]] = {t: [] for t in m.config.tasks}
            for feed in feeds:
                ids, mask, g, c = (torch.as_tensor(feed[n]) for n in
                                   (INPUT_NAMES[2], INPUT_NAMES[3], INPUT_NAMES[0], INPUT_NAMES[1]))
                for t, p in m.forward_probs(ids, mask, global_pixels=g, canvas_pixels=c).items():
                    own[t].append(p.numpy())
            for t, parts in own.items():
                d = float(np.max(np.abs(np.concatenate(parts) - ref[t])))
                if d > 1e-5:
                    raise ExportError(f"the shared-encoder graph's {t!r} branch differs from its own model by "
                                      f"{d:.2e} (> 1e-5): the model's image path is not the shared one")


def check_output(output: Path, opts: Any) -> None:
    """The bundle's folder is new, or `opts.overwrite` allows replacing it (checked before any heavy work)."""
    if output.exists() and not opts.overwrite:
        raise ExportError(f"{output} already exists (pass --overwrite to replace it)")


def check_models(models: Sequence[Any], tokenizer_file: str | Path | None) -> Path:
    """Models exported together share preprocessing and tokenizer settings; -> the tokenizer file."""
    cfg0 = models[0].config
    for m in models[1:]:
        if getattr(m.config, "preprocess", None) != getattr(cfg0, "preprocess", None) or m.config.tokenizer != cfg0.tokenizer:
            raise ExportError("checkpoints exported together must share preprocessing and tokenizer settings "
                              "(kind, max length, text fields)")
    if tokenizer_file is None or not Path(tokenizer_file).is_file():
        raise ExportError(f"tokenizer file {tokenizer_file} not found (a checkpoint holds tokenizer.json)")
    return Path(tokenizer_file)


def check_fp32(cmp: dict[str, Any], tolerance: float, what: str) -> None:
    worst = max(cmp["max_abs_diff"].values())
    if worst > tolerance:
        figures = ", ".join(f"{t}: {d:.3e}" for t, d in cmp["max_abs_diff"].items())
        raise ExportValidationError(
            f"{what} does not reproduce the torch model: max |probability difference| per task {figures} "
            f"exceeds the tolerance {tolerance:g} ({cmp['samples']} verification posts)",
            {"max_abs_diff": cmp["max_abs_diff"], "tolerance": tolerance})


def check_with_analyzer(bundle: Path | Bundle, graph: Any, pcfg: Any, tokenizer: Any, tolerance: float | None,
                        backend: str = "onnxruntime") -> dict[str, Any]:
    """Open the bundle as a user would (sdk.Analyzer: its own preprocessing and tokenisation; a folder is
    also validated and hash-checked, a Bundle was when it was opened) and compare one post's probabilities
    with the torch model's. With `tolerance` (FP32) a larger difference is an ExportValidationError.
    `pcfg` None: a text-only graph (the Analyzer is given no image)."""
    from calibration.data import generated_posts
    from calibration.reader import SydesCalibrationReader
    from export.verify import CAPTIONS, torch_probs
    from sdk.analyzer import Analyzer

    post = generated_posts(1, seed=4321)[0]
    post.text = CAPTIONS[2]
    ref = torch_probs(graph, [SydesCalibrationReader([post], pcfg, tokenizer).feed([post])])
    with Analyzer(bundle, backend=backend, device="cpu", warmup=False, fast_decode=False) as a:
        backend = a.info.backend
        res = a.analyze(post.image if pcfg is not None else None, post.text)
    if not res.ok:
        raise ExportError(f"the written bundle does not run in sdk.Analyzer: {res.error}")
    diff = {}
    for t in graph.tasks:
        got = np.array([res.tasks[t].probs[label] for label in graph.labels[t]], dtype=np.float64)
        diff[t] = float(np.max(np.abs(got - ref[t][0])))
    if tolerance is not None and max(diff.values()) > tolerance:
        raise ExportValidationError(
            f"sdk.Analyzer on the written bundle disagrees with the torch model: max |dp| "
            f"{', '.join(f'{t}: {d:.3e}' for t, d in diff.items())} exceeds {tolerance:g}",
            {"max_abs_diff": diff, "tolerance": tolerance})
    return {"backend": backend, "max_abs_diff": diff}


def held_out_report(opt: Path, final: Path, info: dict[str, Any], held: Sequence[Any], desc: str | None, *,
                    graph: Any, pcfg: Any, tokenizer: Any, precision: str, sw: Any) -> dict[str, Any] | None:
    """A reduced-precision graph vs the FP32 (optimised) one on the held-out posts (top-1 agreement,
    macro-F1 drop), plus INT8's calibration record; None for FP32 or without held-out posts."""
    from calibration.reader import SydesCalibrationReader
    from calibration.report import compare_probs, label_indices, run_graph

    report = None
    if precision != "fp32" and held:
        with sw("held_out_report"):
            reader = SydesCalibrationReader(list(held), pcfg, tokenizer, batch_size=8, trim=True)
            base, cand = run_graph(opt, reader.batches()), run_graph(final, reader.batches())
            rep = compare_probs({t: base[f"probs_{t}"] for t in graph.tasks},
                                {t: cand[f"probs_{t}"] for t in graph.tasks}, label_indices(held, graph.labels))
        report = {"reference": "fp32", "data": desc, "samples": len(held), "tasks": rep}
    if precision == "int8" and "calibration" in info:
        report = report or {"reference": "fp32", "data": desc, "samples": 0, "tasks": {}}
        report["calibration"] = info["calibration"]
    return report


def label_structure(models: Sequence[Any], labels: dict[str, Any]) -> dict[str, Any] | None:
    """The one label-structure table of the model(s) (sdk.labels), when they carry one and agree."""
    tables = [m.config.label_structure for m in models if getattr(m.config, "label_structure", None)]
    if not tables:
        return None
    if any(t != tables[0] for t in tables[1:]):
        raise ExportError("checkpoints exported together carry different label-structure tables")
    from sdk.labels import structure_or_none

    return tables[0] if structure_or_none(tables[0], labels) is not None else None


def checkpoint_record(path: Path) -> dict[str, Any]:
    """Provenance of one checkpoint folder: path, sha256 of its weights and of its config."""
    rec = {"path": str(path)}
    for key, fname in (("sha256", "model.safetensors"), ("config_sha256", "config.json")):
        f = path / fname
        if f.is_file():
            rec[key] = sha256_file(f)
    return rec
