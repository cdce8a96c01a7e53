"""Graph optimisation that keeps the graph portable (standard ONNX ops only).

Two routes:
- onnxruntime.transformers' optimizer (BERT-style fusions: Attention, SkipLayerNorm, FastGelu ...).
  Its fused ops live in the com.microsoft domain: faster on onnxruntime, but TensorRT and other
  runtimes cannot load them. `transformer_fusions()` reports what would fuse; export applies them only
  with `--fusions` and `--target cpu`, and only when they verify. On SyDES graphs only BiasGelu / Gelu
  fuse (measured on the edge preset: 26 BiasGelu + 1 Gelu), and onnxruntime applies those same fusions
  itself when it loads an FP32 / FP16 graph, so the default keeps the portable graph. INT8 for the cpu
  targets fuses first (export.formats.int8): in a quantised graph onnxruntime's own Gelu fusion no longer
  matches (its MatMulIntegerToFloat takes the bias Add); fusing first cut the edge INT8 time by ~40%.
- 3-D attention (export.attention, the onnxruntime targets): every standard `Attention` fed its [B, S, H*d]
  projections directly instead of Reshape/Transpose-ed heads; still standard ONNX (opset 23).
- onnxruntime's offline optimisation at the BASIC level (constant folding, redundant-node elimination,
  cast / identity removal): only standard ops, so the result runs on every backend. This is the default.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from export.errors import ExportError

log = logging.getLogger(__name__)


def op_counts(path: str | Path) -> Counter[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return Counter((n.domain + "." if n.domain not in ("", "ai.onnx") else "") + n.op_type
                   for n in model.graph.node)


def optimize_basic(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """onnxruntime BASIC-level offline optimisation of `src` into `dst`; returns node counts."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"onnxruntime could not load the exported graph for optimisation: {e}") from e
    before, after = op_counts(src), op_counts(dst)
    foreign = sorted(k for k in after if "." in k)
    if foreign:  # basic level must not introduce contrib ops; if it ever does, keep the raw graph
        log.warning("basic optimisation introduced non-standard ops %s; keeping the unoptimised graph", foreign)
        Path(dst).write_bytes(Path(src).read_bytes())
        after = before
    return {"method": "onnxruntime-basic", "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values())}


def transformer_fusions(src: str | Path, dst: str | Path | None = None, num_heads: int = 0,
                        hidden_size: int = 0) -> dict[str, int]:
    """Run onnxruntime.transformers' BERT fusions on `src`; returns the non-zero fusion counts (and
    saves the fused graph to `dst` when given). An empty dict means none applied."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as e:  # pragma: no cover
        log.info("onnxruntime.transformers not available: %s", e)
        return {}
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    import tempfile

    try:
        opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                             opt_level=0, only_onnxruntime=False)
        with tempfile.TemporaryDirectory(prefix="sydes-fuse.") as tmp:
            out = Path(dst) if dst is not None else Path(tmp) / "fused.onnx"
            opt.save_model_to_file(str(out))
            after = op_counts(out)
    except Exception as e:  # the fusion passes are pattern matchers: a foreign graph may trip them
        log.info("transformer fusions failed on this graph: %s", e)
        return {}
    before = op_counts(src)
    # what the fusions added: contrib ops (Attention, SkipLayerNormalization, FastGelu ...) that were
    # not there before
    return {k: v - before.get(k, 0) for k, v in after.items() if k.startswith("com.microsoft.")
            and v > before.get(k, 0)}


# onnxruntime runs `Attention` on 3-D inputs (faster on some CPUs, level on others: export.attention); OpenVINO
# converts both forms to one model, and the tensorrt target's opset 18 has no Attention op
ATTENTION_3D_TARGETS = ("cpu", "cpu-dynamic")
# protobuf's limit for one file; above it the weights go to external data next to the graph
_PROTO_LIMIT = 2**31 - 2**26


def rewrite_attention(src: str | Path, dst: str | Path) -> tuple[Path, dict[str, int]]:
    """export.attention.attention_3d on the graph file `src`, saved to `dst` -> (the graph to use: `dst`, or `src`
    where nothing matched, its counts)."""
    import onnx

    from export.attention import attention_3d

    model = onnx.load(str(src))
    counts = attention_3d(model)
    if not counts["attention_3d"]:
        return Path(src), counts
    large = model.ByteSize() > _PROTO_LIMIT
    onnx.save(model, str(dst), save_as_external_data=large, location=Path(dst).name + ".data" if large else None)
    return Path(dst), counts
