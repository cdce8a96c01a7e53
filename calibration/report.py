"""How much a reduced-precision graph changes the answers: top-1 agreement with FP32 and the macro-F1
drop on a labelled slice (sdk.metrics' macro-F1, the same as every other report of the project)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk.metrics import macro_f1  # noqa: F401  (the one macro-F1: all classes of the task)


def run_graph(model_path: str | Path, feeds: Iterable[dict[str, np.ndarray]], threads: int | None = None,
              ) -> dict[str, np.ndarray]:
    """All outputs of a graph over a stream of feeds, concatenated along the batch axis: an ONNX file on
    onnxruntime's CPU provider, an OpenVINO IR (.xml) on OpenVINO's CPU plugin at FP32 precision."""
    if str(model_path).endswith(".xml"):
        return _run_ir(model_path, feeds, threads)
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        res = sess.run(names, {k: v for k, v in feed.items() if k in wanted})
        for n, r in zip(names, res, strict=True):
            out[n].append(r)
    return {n: np.concatenate(v) for n, v in out.items() if v}


def _run_ir(xml: str | Path, feeds: Iterable[dict[str, np.ndarray]], threads: int | None) -> dict[str, np.ndarray]:
    import openvino as ov

    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    compiled = ov.Core().compile_model(str(xml), "CPU", cfg)
    req = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.outputs]
    wanted = {p.get_any_name() for p in compiled.inputs}
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        req.infer({k: v for k, v in feed.items() if k in wanted})
        for n in names:
            out[n].append(np.array(req.get_tensor(n).data, copy=True))
    return {n: np.concatenate(v) for n, v in out.items() if v}


def compare_probs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                  labels: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Per task: max |dp|, top-1 agreement, and (with labels, int arrays, -1 = unknown) macro-F1 of both
    and the drop. Keys of the dicts are task names; arrays are probabilities [N, C]."""
    report: dict[str, Any] = {}
    for task, ref in reference.items():
        cand = candidate[task]
        r = {"max_abs_diff": float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64)))),
             "top1_agreement": float(np.mean(ref.argmax(-1) == cand.argmax(-1))),
             "samples": int(ref.shape[0])}
        if labels is not None and task in labels:
            y = np.asarray(labels[task])
            ok = y >= 0
            if ok.any():
                c = ref.shape[-1]
                f_ref = macro_f1(y[ok], ref.argmax(-1)[ok], c)
                f_cand = macro_f1(y[ok], cand.argmax(-1)[ok], c)
                r.update({"macro_f1_reference": f_ref, "macro_f1": f_cand, "macro_f1_drop": f_ref - f_cand,
                          "labelled": int(ok.sum())})
        report[task] = r
    return report


def label_indices(posts: Sequence[Any], tasks: dict[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """Posts' label strings -> index arrays per task (-1 where a post has no or an unknown label)."""
    out = {}
    for task, names in tasks.items():
        lookup = {n: i for i, n in enumerate(names)}
        out[task] = np.array([lookup.get(getattr(p, "labels", {}).get(task, ""), -1) for p in posts],
                             dtype=np.int64)
    return out
