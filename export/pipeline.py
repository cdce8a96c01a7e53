"""checkpoint(s) -> verified bundle: the whole export, step by step.

1. load the checkpoint(s) (several single-task ones must share identical image-encoder weights; a text-only
   checkpoint is exported alone);
2. torch.onnx.export (dynamo) of ExportGraph: uint8 pixels + ids -> probs_<task>, dynamic batch / length
   (TextExportGraph for a text-only model: ids + mask -> probs_<task>; the manifest's preprocess is null);
3. verify the raw graph against torch (FP32 max |dp| <= tolerance, else ExportValidationError);
4. optimise (portable onnxruntime basic level; onnxruntime targets: Attention on 3-D inputs; with --fusions,
   for --target cpu, onnxruntime.transformers' contrib-op fusions when they apply and verify);
5. convert to the precision (fp32 / fp16 / int8 with calibration, cached);
6. verify the final graph against torch (figures into the manifest), and for reduced precisions with
   calibration data, compare with FP32 on a held-out slice (top-1 agreement, macro-F1 drop);
7. stage the bundle in a temp folder (each file hashed once), open it with sdk.Analyzer on the in-memory
   manifest, then write manifest.json once (with the Analyzer's figures) and rename into place
   (export.bundle_writer);
8. optionally build a TensorRT engine into the bundle's engines/.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.bundle_writer import bundle_manifest, write_bundle
from export.checks import (
    check_branches,
    check_fp32,
    check_models,
    check_output,
    check_with_analyzer,
    checkpoint_record,
    held_out_report,
    label_structure,
    package_versions,
    tensor_specs,
)
from export.errors import ExportError
from export.formats import ConvertContext, get_precision
from export.options import ExportOptions, check_options, convert_options
from export.progress import Stopwatch
from sdk.bundle import sha256_file

log = logging.getLogger("export")



@dataclass
class ExportReport:
    bundle: Path
    manifest: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.manifest
        v = m["validation"]
        g = m["graphs"]["model"]
        lines = [f"bundle {self.bundle} ({m['precision']}, tasks: {', '.join(m['tasks'])})",
                 f"  graph {(g['bytes'] + g.get('weights', {}).get('bytes', 0)) / 1e6:.1f} MB "
                 f"({g.get('format', 'onnx')}), sha256 {g['sha256'][:16]}",
                 "  vs torch: max |dp| " + ", ".join(f"{t} {x:.2e}" for t, x in v["max_abs_diff"].items())
                 + "; top-1 agreement " + ", ".join(f"{t} {x:.3f}" for t, x in v["agreement"].items())]
        rep = m.get("calibration_report")
        if rep and rep.get("tasks"):
            for t, r in rep["tasks"].items():
                s = f"  held-out {t}: agreement with FP32 {r['top1_agreement']:.3f}"
                if "macro_f1_drop" in r:
                    s += f", macro-F1 {r['macro_f1_reference']:.4f} -> {r['macro_f1']:.4f}"
                lines.append(s)
        lines.append("  time: " + ", ".join(f"{k} {s:.1f}s" for k, s in self.seconds.items()))
        return "\n".join(lines)


# --- helpers ------------------------------------------------------------------------------------------
@dataclass
class _Calibration:
    posts: list[Any] = field(default_factory=list)  # calibration posts
    held: list[Any] = field(default_factory=list)   # held-out posts for the precision report
    desc: str | None = None                         # description of the data


def _calibration_posts(opts: ExportOptions, tasks: dict[str, list[str]], text_fields: Any = None) -> _Calibration:
    """The calibration and held-out posts of `opts.calib` (none without it), their text built from the
    checkpoint's `text_fields` (sdk.text_fields.TextFields) as `sydes analyze` builds it."""
    if not opts.calib:
        return _Calibration()
    from calibration.data import generated_posts, load_items
    from calibration.sampling import select_samples

    if opts.calib == "generated":
        posts = generated_posts(opts.calib_samples + opts.eval_samples, seed=opts.calib_seed, tasks=tasks)
        return _Calibration(posts[:opts.calib_samples], posts[opts.calib_samples:], "generated")
    src = Path(str(opts.calib))
    pool = load_items(src, split=opts.calib_split, text_fields=text_fields)
    calib = select_samples(pool, opts.calib_samples, seed=opts.calib_seed)
    held: list[Any] = []
    if opts.eval_samples > 0:
        # a labelled held-out slice: MSED's dev split when calibrating on train, else the unused rows
        if src.is_dir() and opts.calib_split != "dev" and (src / "dev" / "dev.csv").is_file():
            rest = load_items(src, split="dev", text_fields=text_fields)
        else:
            chosen = {id(p) for p in calib}
            rest = [p for p in pool if id(p) not in chosen]
        if rest:
            held = select_samples(rest, opts.eval_samples, seed=opts.calib_seed + 1, warn_below=0)
    return _Calibration(calib, held, f"{src}" + (f" [{opts.calib_split}]" if src.is_dir() else ""))


# --- the pipeline: one function per stage ---------------------------------------------------------------
@dataclass
class _Job:
    """What every stage reads: the validated options, the graph and its preprocessing / tokenizer, the
    verification feeds, the scratch folder, the cache root and the stopwatch."""

    opts: ExportOptions
    graph: Any
    pcfg: Any
    tokenizer: Any
    feeds: list[dict[str, Any]]
    tmp: Path
    cache: Path
    sw: Stopwatch

    @property
    def ir(self) -> bool:  # an OpenVINO IR (model.xml + model.bin) instead of model.onnx
        return self.opts.target == "openvino"


def _export_raw(job: _Job, ref: dict[str, Any]) -> tuple[Path, bool]:
    """torch.onnx.export (through the graph cache) and its FP32 check -> (raw.onnx, cache hit)."""
    from export.graph import cached_export_onnx
    from export.verify import compare, onnx_probs

    raw = job.tmp / "raw.onnx"
    with job.sw("onnx_export"):
        _, hit = cached_export_onnx(job.graph, job.feeds[0], raw, opset=job.opts.opset,
                                    max_length=int(job.graph.models[0].config.tokenizer.max_length),
                                    cache_dir=job.cache / "graphs" if job.opts.graph_cache else None)
    with job.sw("verify"):
        cmp = compare(ref, onnx_probs(raw, job.feeds, job.graph.tasks))
    check_fp32(cmp, job.opts.tolerance, "the exported ONNX graph")
    return raw, hit


def _optimise(job: _Job, raw: Path, ref: dict[str, Any]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Basic optimisation (+ contrib fusions where asked and harmless) -> (graph, info, its comparison)."""
    from export.optimize import ATTENTION_3D_TARGETS, optimize_basic, rewrite_attention, transformer_fusions
    from export.verify import compare, onnx_probs

    opts = job.opts
    with job.sw("optimise"):
        opt = job.tmp / "optimised.onnx"
        info = optimize_basic(raw, opt)
        if opts.attention_3d and opts.target in ATTENTION_3D_TARGETS:  # verified with the rest below (check_fp32)
            opt, info["attention"] = rewrite_attention(opt, job.tmp / "attention3d.onnx")
        fused: dict[str, int] = {}
        if opts.fusions and opts.target == "cpu" and opts.precision in ("fp32", "fp16"):
            fused_path = job.tmp / "fused.onnx"
            fused = transformer_fusions(opt, fused_path)
            if fused:
                fcmp = compare(ref, onnx_probs(fused_path, job.feeds, job.graph.tasks))
                if max(fcmp["max_abs_diff"].values()) <= opts.tolerance:
                    opt = fused_path
                    info["method"] += "+transformer-fusions"
                else:
                    log.warning("transformer fusions changed the outputs (%s): not used", fcmp["max_abs_diff"])
                    fused = {}
        info["fusions"] = fused
        cmp = compare(ref, onnx_probs(opt, job.feeds, job.graph.tasks))
    check_fp32(cmp, opts.tolerance, "the optimised graph")
    return opt, info, cmp


def _convert(job: _Job, opt: Path, calib: _Calibration) -> tuple[Path, dict[str, Any]]:
    """The optimised graph -> the bundle's precision (and format) -> (final graph, precision details)."""
    from calibration.cache import CalibrationCache
    from calibration.reader import SydesCalibrationReader

    opts = job.opts
    reader = (SydesCalibrationReader(calib.posts, job.pcfg, job.tokenizer, batch_size=1, trim="dataset")
              if calib.posts else None)
    final = job.tmp / ("model.xml" if job.ir else "model.onnx")
    with job.sw("convert_" + opts.precision):
        ctx = ConvertContext(src=opt, dst=final, work_dir=job.tmp, target=opts.target, calib_reader=reader,
                             calib_method=opts.calib_method, calib_cache=CalibrationCache(job.cache / "calibration"),
                             options=convert_options(opts, job.ir))
        if job.ir:
            from export.openvino import convert as to_openvino

            info = to_openvino(ctx, opts.precision)
        else:
            info = get_precision(opts.precision).convert(ctx)
    return final, info


def _manifest(job: _Job, name: str, models: Sequence[Any], checkpoints: Sequence[dict[str, Any]], *,
              opt: Path, opt_info: dict[str, Any], opt_cmp: dict[str, Any], info: dict[str, Any],
              final_cmp: dict[str, Any], graph_hit: bool, calib: _Calibration,
              calib_report: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest but its file records (bundle_writer adds them once the files are staged)."""
    opts, graph = job.opts, job.graph
    tok = graph.models[0].config.tokenizer
    inputs, outputs = tensor_specs(opt)  # the final graph has the optimised graph's inputs and outputs
    provenance: dict[str, Any] = {
        "checkpoints": list(checkpoints), "packages": package_versions(), "opset": opts.opset,
        "exporter": "torch.onnx.export(dynamo=True)", "target": opts.target,
        "optimisation": opt_info, "precision_details": {k: v for k, v in info.items() if k != "calibration"},
        "calibration": ({"method": opts.calib_method, "samples": len(calib.posts), "data": calib.desc}
                        if opts.precision == "int8" else None),
        "shared_image_encoder": graph.shared, "graph_cache_hit": graph_hit,
    }
    validation = {
        "tolerance": opts.tolerance, "reference": "torch fp32",
        "max_abs_diff": final_cmp["max_abs_diff"], "agreement": final_cmp["agreement"],
        "fp32_graph_max_abs_diff": opt_cmp["max_abs_diff"],
        "samples": final_cmp["samples"], "batch_sizes": [int(f["input_ids"].shape[0]) for f in job.feeds],
        "text_lengths": [int(f["input_ids"].shape[1]) for f in job.feeds],
        "passed": max(final_cmp["max_abs_diff"].values()) <= opts.tolerance if opts.precision == "fp32" else None,
    }
    return bundle_manifest(name=name, labels=graph.labels, precision=opts.precision, inputs=inputs, outputs=outputs,
                           tokenizer={"kind": tok.kind, "max_length": int(tok.max_length), "trim_padding": True,
                                      **tok.text_recipe().to_dict()},
                           preprocess=job.pcfg.to_dict() if job.pcfg is not None else None, provenance=provenance, validation=validation,
                           calibration_report=calib_report, label_structure=label_structure(models, graph.labels))


def export_models(models: Sequence[Any], output: str | Path, opts: ExportOptions | None = None,
                  tokenizer_file: str | Path | None = None,
                  checkpoints: Sequence[dict[str, Any]] = ()) -> ExportReport:
    """Export in-memory SyDES model(s) (all sharing one tokenizer / preprocessing) to a bundle."""
    opts = check_options(opts or ExportOptions())
    check_output(Path(output), opts)
    return _export(models, Path(output), opts, check_models(models, tokenizer_file), checkpoints)


def _export(models: Sequence[Any], output: Path, opts: ExportOptions, tokenizer_file: Path,
            checkpoints: Sequence[dict[str, Any]]) -> ExportReport:
    """The stages, in order, on checked options and models."""
    from calibration.cache import cache_root
    from export.graph import export_graph
    from export.verify import compare, onnx_probs, torch_probs, verification_feeds
    from sdk.preprocess import PreprocessConfig
    from sdk.tokenizer import Tokenizer

    graph = export_graph(list(models)).eval()
    cfg0 = models[0].config
    # a text-only graph has no image to preprocess (and its manifest says so: "preprocess": null)
    pcfg = PreprocessConfig.from_dict(cfg0.preprocess) if graph.uses_images else None
    tokenizer = Tokenizer.from_file(tokenizer_file, max_length=int(cfg0.tokenizer.max_length),
                                    kind=cfg0.tokenizer.kind)
    sw = Stopwatch(opts.progress)
    with tempfile.TemporaryDirectory(prefix="sydes-export.") as tmp:
        job = _Job(opts, graph, pcfg, tokenizer, verification_feeds(pcfg, tokenizer), Path(tmp),
                   Path(opts.cache_dir) if opts.cache_dir else cache_root(), sw)
        with sw("torch_reference"):
            ref = torch_probs(graph, job.feeds)
            if graph.shared:  # the shared-encoder graph must answer as each model does on its own
                check_branches(graph, job.feeds, ref)
        raw, graph_hit = _export_raw(job, ref)
        opt, opt_info, opt_cmp = _optimise(job, raw, ref)
        calib = _calibration_posts(opts, graph.labels, cfg0.tokenizer.text_recipe())
        final, info = _convert(job, opt, calib)
        with sw("verify"):
            final_cmp = compare(ref, onnx_probs(final, job.feeds, graph.tasks))
        if opts.precision == "fp32":
            check_fp32(final_cmp, opts.tolerance, "the final FP32 graph")
        calib_report = held_out_report(opt, final, info, calib.held, calib.desc, graph=graph, pcfg=pcfg,
                                       tokenizer=tokenizer, precision=opts.precision, sw=sw)
        manifest = _manifest(job, opts.name or output.name.removesuffix(".sydes"), models, checkpoints, opt=opt,
                             opt_info=opt_info, opt_cmp=opt_cmp, info=info, final_cmp=final_cmp,
                             graph_hit=graph_hit, calib=calib, calib_report=calib_report)
        tol = opts.tolerance if opts.precision == "fp32" else None  # reduced precisions: figures only
        check = functools.partial(check_with_analyzer, graph=graph, pcfg=pcfg, tokenizer=tokenizer, tolerance=tol,
                                  backend="openvino" if job.ir else "onnxruntime")
        with sw("write_bundle"):  # the Analyzer checks the staged bundle; the manifest is written once, after it
            manifest = write_bundle(output, manifest, graph=final, tokenizer=tokenizer_file, overwrite=opts.overwrite,
                                    check=check if opts.check_analyzer else None, checkpoints=checkpoints)
    if opts.format == "tensorrt":
        with sw("tensorrt_engine"):
            from export.tensorrt import build_bundle_engine

            build_bundle_engine(output, max_batch=opts.max_batch, workspace_mb=opts.workspace_mb)
    sw.close()
    return ExportReport(bundle=output, manifest=manifest, seconds=sw.seconds)


def export_checkpoints(checkpoints: Sequence[str | Path], output: str | Path,
                       opts: ExportOptions | None = None) -> ExportReport:
    """Load checkpoint folder(s) and export them to one bundle.

    Several checkpoints (e.g. one fine-tune per task) must hold identical image-encoder weights: the
    bundle's graph then runs the image encoder once and one text/decoder/head branch per checkpoint.
    """
    from export.errors import SharedEncoderMismatchError
    from export.graph import shared_encoder_mismatch, uses_images
    from sdk.errors import CheckpointError
    from training.checkpoints import load_model

    opts = check_options(opts or ExportOptions())
    paths = [Path(c) for c in checkpoints]
    if not paths:
        raise ExportError("no checkpoint given")
    check_output(Path(output), opts)
    if len({p.resolve() for p in paths}) != len(paths):
        raise ExportError("the same checkpoint is given more than once")
    models = []
    for p in paths:
        if not p.is_dir():
            raise CheckpointError(f"checkpoint {p} is not a folder (expected config.json + model.safetensors)")
        models.append(load_model(p).eval())  # the family config.json names (SyDES or text-only)
    if len(models) > 1:
        uses_images(models)  # a text-only checkpoint among image ones: that error, not a weight mismatch
        bad = shared_encoder_mismatch(models, [str(p) for p in paths])
        if bad:
            shown = ", ".join(bad[:8]) + (f" ... (+{len(bad) - 8} more)" if len(bad) > 8 else "")
            raise SharedEncoderMismatchError(
                f"checkpoints {', '.join(map(str, paths))} cannot share one image encoder: {len(bad)} tensor(s) "
                f"differ from {paths[0]}: {shown}. Export them as separate bundles, or fine-tune them from "
                "the same pretrained checkpoint with the image encoder frozen.", bad)
    tok = paths[0] / "tokenizer.json"
    for p in paths[1:]:
        other = p / "tokenizer.json"
        if other.is_file() and tok.is_file() and sha256_file(other) != sha256_file(tok):
            raise ExportError(f"{p} has a different tokenizer.json than {paths[0]}: one bundle has one tokenizer")
    return _export(models, Path(output), opts, check_models(models, tok), [checkpoint_record(p) for p in paths])
