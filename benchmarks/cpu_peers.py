"""CPU inference against its peers, in one run: the same seeded checkpoint, the same arrays, interleaved rounds.

    python benchmarks/cpu_peers.py [--presets edge reference] [--batches 1 16] [--rounds 7] [--paths ...] [--plot PNG]
                                   [--graph NAME=MODEL.onnx ...]

Paths (model only: the arrays the Analyzer hands its backend, decode and tokenisation excluded):
  torch eager FP32 (the same weights);
  onnxruntime FP32 and INT8 bundles (`--target cpu`, what `sydes export` writes by default), and the INT8
  bundle with the exporter's 4-D attention (`ort-int8-4d`: ExportOptions(attention_3d=False), as #9 found it),
  and the INT8 bundle's own graph with its fused epilogues undone (`ort-int8-unfused`:
  export.qdq_fuse.unfuse_matmul_epilogues, the same session options: what the epilogue fusion buys);
  OpenVINO FP32 and INT8 bundles (`--target openvino`, INT8 by NNCF, through sdk.Analyzer backend=openvino);
  the OpenVINO INT8 bundle with hint="throughput", one stream per thread, each batch split over the streams;
  the same with hint="auto" (both compiled, per batch size the one measured faster; settled in the warm-up);
  the peer: what an Intel user does by hand on our FP32 model.onnx: `nncf.quantize(ov.Core().read_model(..),
  nncf.Dataset(48 posts), model_type=TRANSFORMER)` compiled with OpenVINO's defaults;
  any other ONNX graph with the bundles' inputs (`--graph NAME=MODEL.onnx`, e.g. the model.onnx of an INT8
  bundle exported by an older commit), run like `ort-int8-unfused`: the INT8 bundle's backend and session
  options, only the graph swapped.
The floor line: the preset's GFLOP/post (benchmarks/model_cost.py) at this CPU's INT8 GEMM rate
(benchmarks/gemm_ceiling.py, measured in the same run). Each round times every path once per batch size, in
a freshly shuffled order (seeded), so drift of a shared machine hits all paths alike; the table gives medians
(ms/post) and ratios.
Bundles are cached under $SYDES_BENCH_CACHE (default ~/.cache/sydes/bench/peers), keyed by the source of the
packages that make them (export/, calibration/, training/): a change to the export code builds them afresh and
drops the stale ones; calibration uses
msed-mini's train split where it is present (else generated posts). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
MSED = Path(os.environ.get("SYDES_MSED", ROOT.parent / "shared" / "data" / "msed-mini"))
CACHE = Path(os.environ.get("SYDES_BENCH_CACHE", "~/.cache/sydes/bench")).expanduser() / "peers"
PEER_SAMPLES = 48
# path -> (bundle to build, how it is run)
BUNDLES = {"ort-fp32": ("cpu", "fp32"), "ort-int8": ("cpu", "int8"), "ov-fp32": ("openvino", "fp32"),
           "ov-int8": ("openvino", "int8"), "ort-int8-4d": ("cpu", "int8")}
# export options besides target / precision: ort-int8-4d is the onnxruntime INT8 bundle as #9 found it (the
# exporter's 4-D attention), the baseline of its onnxruntime target
EXTRA = {"ort-int8-4d": {"attention_3d": False}}
PATHS = ("torch-fp32", *BUNDLES, "ort-int8-unfused", "ov-int8-streams", "ov-int8-auto", "peer-ov-nncf-defaults")


def checkpoint(preset: str) -> Path:
    """A seeded random checkpoint of `preset` (cached)."""
    import tempfile

    import torch

    from training.runner import build_model

    ck = CACHE / preset / "checkpoint"
    if not (ck / "model.safetensors").is_file():
        torch.manual_seed(0)
        model, tok = build_model(preset=preset, offline_backbones=False)
        with tempfile.TemporaryDirectory() as tmp:
            tok.save(Path(tmp) / "tokenizer.json")
            model.eval().save_pretrained(ck, tokenizer_file=Path(tmp) / "tokenizer.json")
    return ck


def calib_data() -> str:
    return str(MSED) if (MSED / "train" / "train.csv").is_file() else "generated"


def code_key(extra: Any = None) -> str:
    """12 hex digits of the sha256 over the .py files of the packages a bundle is made by, and `extra`."""
    import hashlib

    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for pkg in ("export", "calibration", "training"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            h.update(f.relative_to(ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def bundle(preset: str, key: str, calib_samples: int) -> Path:
    import shutil

    from export.pipeline import ExportOptions, export_checkpoints

    target, precision = BUNDLES[key]
    out = CACHE / preset / f"{key}-{code_key([calib_samples, EXTRA.get(key)])}.sydes"
    if not (out / "manifest.json").is_file():
        for stale in (CACHE / preset).glob(f"{key}-*.sydes"):  # made by other code: never timed again
            shutil.rmtree(stale, ignore_errors=True)
        t = time.perf_counter()
        rep = export_checkpoints([checkpoint(preset)], out, ExportOptions(
            precision=precision, target=target, calib=calib_data() if precision == "int8" else None,
            calib_samples=calib_samples, eval_samples=0, overwrite=True, progress=False, **EXTRA.get(key, {})))
        print(rep.summary(), f"\n[built {out} in {time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)
    return out


def peer_model(preset: str, fp32_bundle: Path) -> Any:
    """The OpenVINO + NNCF-defaults peer on our FP32 model.onnx (cached as an IR)."""
    import openvino as ov

    xml = CACHE / preset / f"peer-nncf-defaults-{fp32_bundle.stem}.xml"  # made from that bundle's graph
    core = ov.Core()
    if not xml.is_file():
        for stale in (CACHE / preset).glob("peer-nncf-defaults*"):
            stale.unlink()
        import nncf

        from calibration.data import load_items
        from calibration.reader import SydesCalibrationReader
        from calibration.sampling import select_samples
        from sdk.bundle import load_bundle
        from sdk.tokenizer import Tokenizer

        b = load_bundle(fp32_bundle)
        data = calib_data()
        if data == "generated":
            from calibration.data import generated_posts

            posts = generated_posts(PEER_SAMPLES, seed=0)
        else:
            posts = select_samples(load_items(Path(data), split="train"), PEER_SAMPLES, seed=0)
        tok = Tokenizer.from_file(b.tokenizer_path, max_length=b.manifest.tokenizer.max_length,
                                  kind=b.manifest.tokenizer.kind)
        reader = SydesCalibrationReader(posts, b.preprocess_config(), tok, batch_size=1)
        model = nncf.quantize(core.read_model(str(b.graph_path())), nncf.Dataset(list(reader.batches())),
                              model_type=nncf.ModelType.TRANSFORMER)
        ov.save_model(model, str(xml), compress_to_fp16=False)
    return core.compile_model(str(xml), "CPU")


def posts(n: int) -> list[tuple[Any, str]]:
    from calibration.data import generated_posts, load_items

    if (MSED / "dev" / "dev.csv").is_file():
        items = load_items(MSED, split="dev")[:n]
        return [(p.image, p.text) for p in items]
    return [(p.image, p.text) for p in generated_posts(n, seed=7)]


def feeds(fp32_bundle: Path, batch: list[tuple[Any, str]]) -> dict[str, np.ndarray]:
    """The exact arrays sdk.Analyzer hands its backend for `batch`."""
    from runtime_targets import feeds_for

    from sdk import Analyzer

    with Analyzer(fp32_bundle, device="cpu", warmup=False) as az:
        return feeds_for(az, batch)


def graph_arg(text: str) -> tuple[str, Path]:
    """One `--graph NAME=MODEL.onnx`."""
    name, sep, path = text.partition("=")
    if not (sep and name and path):
        raise argparse.ArgumentTypeError(f"--graph takes NAME=MODEL.onnx, got {text!r}")
    if name in PATHS:
        raise argparse.ArgumentTypeError(f"--graph name {name!r} is a built-in path; valid built-ins: {', '.join(PATHS)}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise argparse.ArgumentTypeError(f"--graph {name}: no such file {path}")
    return name, file


def on_graph(int8_bundle: Path, graph: bytes | str, label: str, threads: int, max_batch: int, keep: list[Any]
             ) -> Callable[[dict[str, np.ndarray]], Any]:
    """The INT8 bundle run by its own backend, with the session swapped for one on `graph` (serialised or a
    path; `label` names it in errors): the bundle's session options, only the graph differs."""
    import onnxruntime as ort

    from sdk import Analyzer

    az = Analyzer(int8_bundle, backend="onnxruntime", device="cpu", threads=threads, max_batch_size=max_batch)
    keep.append(az)
    so = az.backend.session.get_session_options()
    sess = ort.InferenceSession(graph, sess_options=so, providers=["CPUExecutionProvider"])
    if {i.name for i in sess.get_inputs()} != set(az.backend.input_names):
        raise ValueError(f"graph {label} takes inputs "
                         f"{sorted(i.name for i in sess.get_inputs())}, the bundle's {sorted(az.backend.input_names)}")
    az.backend.session = sess
    return az.backend.run


def unfused(int8_bundle: Path, threads: int, max_batch: int, keep: list[Any]
            ) -> Callable[[dict[str, np.ndarray]], Any]:
    """The INT8 bundle's own graph with its fused epilogues undone, run as `on_graph`."""
    import onnx

    from export.qdq_fuse import unfuse_matmul_epilogues

    model = onnx.load(str(int8_bundle / "model.onnx"))
    if unfuse_matmul_epilogues(model) == 0:
        print(f"[warn] {int8_bundle} has no fused epilogues (stale cache?)", file=sys.stderr)
    return on_graph(int8_bundle, model.SerializeToString(), "ort-int8-unfused", threads, max_batch, keep)


def runners(preset: str, batches: dict[int, dict[str, np.ndarray]], calib_samples: int, threads: int,
            only: set[str] | None = None, graphs: dict[str, Path] | None = None
            ) -> tuple[dict[str, Callable[[dict[str, np.ndarray]], Any]], list[Any]]:
    import torch

    from sdk import Analyzer
    from training.model import SyDES

    out: dict[str, Callable[[dict[str, np.ndarray]], Any]] = {}
    keep: list[Any] = []

    def want(key: str) -> bool:  # build (and compile) only the paths that are timed
        return only is None or key in only

    torch.set_num_threads(threads)
    if want("torch-fp32"):
        model = SyDES.from_pretrained(checkpoint(preset)).eval()

        def torch_run(f: dict[str, np.ndarray]) -> Any:
            t = {k: torch.from_numpy(v) for k, v in f.items()}
            with torch.inference_mode():
                return model(t["input_ids"], t["attention_mask"], global_pixels=t["global_pixels"],
                             canvas_pixels=t["canvas_pixels"])

        out["torch-fp32"] = torch_run
    for key in filter(want, BUNDLES):
        backend = "openvino" if key.startswith("ov") else "onnxruntime"
        az = Analyzer(bundle(preset, key, calib_samples), backend=backend, device="cpu", threads=threads,
                      max_batch_size=max(batches))
        keep.append(az)
        out[key] = az.backend.run
    if want("ort-int8-unfused"):
        out["ort-int8-unfused"] = unfused(bundle(preset, "ort-int8", calib_samples), threads, max(batches), keep)
    # the same OpenVINO INT8 bundle with the throughput hint (each batch split over one stream per core), and
    # with hint="auto"
    for key, hint in {"ov-int8-streams": {"hint": "throughput", "streams": threads},
                      "ov-int8-auto": {"hint": "auto"}}.items():
        if want(key):
            az = Analyzer(bundle(preset, "ov-int8", calib_samples), backend="openvino", device="cpu",
                          threads=threads, max_batch_size=max(batches), **hint)
            keep.append(az)
            out[key] = az.backend.run
    if want("peer-ov-nncf-defaults"):
        req = peer_model(preset, bundle(preset, "ort-fp32", calib_samples)).create_infer_request()
        out["peer-ov-nncf-defaults"] = lambda f: req.infer(f)
    for name, path in (graphs or {}).items():
        out[name] = on_graph(bundle(preset, "ort-int8", calib_samples), str(path), f"{name} ({path})", threads,
                             max(batches), keep)
    return out, keep

def measure(preset: str, batch_sizes: list[int], rounds: int, calib_samples: int, threads: int,
            only: set[str] | None = None, graphs: dict[str, Path] | None = None) -> dict[str, Any]:
    data = posts(max(batch_sizes))
    fp32 = bundle(preset, "ort-fp32", calib_samples)
    arrays = {b: feeds(fp32, data[:b]) for b in batch_sizes}
    run, keep = runners(preset, arrays, calib_samples, threads, only, graphs)
    from sdk.backends.openvino import AUTO_TRIALS

    for k, fn in run.items():  # warm-up: first calls allocate and compile shape-specific kernels; "auto" also
        for _ in range(2 * AUTO_TRIALS + 1 if k.endswith("auto") else 1):  # measures both of its models, settles
            for f in arrays.values():
                fn(f)
    times: dict[str, dict[int, list[float]]] = {k: {b: [] for b in batch_sizes} for k in run}
    order, rng = list(run), random.Random(0)
    for _ in range(rounds):
        for b, f in arrays.items():
            rng.shuffle(order)  # a fixed order would hand one path the same neighbour (and drift) every round
            for k in order:
                fn = run[k]
                t = time.perf_counter()
                fn(f)
                times[k][b].append(1000 * (time.perf_counter() - t) / b)
    for az in keep:
        if az.info.settings.get("performance_hint") == "AUTO":
            print(f"[{preset}] ov-int8-auto chose, per batch size: {az.info.settings.get('auto_choice')}", file=sys.stderr)
        az.close()
    return {k: {b: statistics.median(v) for b, v in d.items()} for k, d in times.items()}


def floor_ms(preset: str, int8_gops: float) -> float:
    from model_cost import measure as cost

    return 1000 * cost(preset, 48)["gflops"] / int8_gops


def table(preset: str, med: dict[str, dict[int, float]], floor: float) -> str:
    bs = sorted(next(iter(med.values())))
    lines = [f"### {preset} (ms/post, median; x = speed-up over the path named)", "",
             "| path | " + " | ".join(f"batch {b}" for b in bs) + f" | vs torch (b{bs[-1]}) | vs peer (b{bs[-1]}) |",
             "|" + "---|" * (len(bs) + 3)]
    big = bs[-1]

    def vs(ref: str, d: dict[int, float]) -> str:
        return f"{med[ref][big] / d[big]:.2f}x" if ref in med else "-"

    for k, d in med.items():
        lines.append(f"| {k} | " + " | ".join(f"{d[b]:.1f}" for b in bs) +
                     f" | {vs('torch-fp32', d)} | {vs('peer-ov-nncf-defaults', d)} |")
    lines.append(f"| floor: GFLOP/post at the INT8 GEMM rate | {floor:.1f} | | | |")
    graphs = [k for k in med if k not in PATHS]  # --graph baselines: compared with, never a candidate
    int8 = [k for k in med if "int8" in k and k not in graphs]
    if int8:
        best = min(int8, key=lambda k: med[k][big])
        lines += ["", f"best INT8 path {best}: {med[best][big]:.1f} ms/post = {med[best][big] / floor:.2f}x the floor"]
    if "ort-int8" in med:
        lines += [f"onnxruntime INT8 vs {k} (b{b}): {med[k][b] / med['ort-int8'][b]:.3f}x"
                  for k in ("ort-fp32", "ort-int8-4d", "ort-int8-unfused", *graphs) if k in med for b in bs]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(results["presets"])
    fig, axes = plt.subplots(1, len(presets), figsize=(7 * len(presets), 4.5), squeeze=False)
    for ax, preset in zip(axes[0], presets, strict=True):
        med = results["presets"][preset]["ms_per_post"]
        paths = list(med)
        bs = sorted(int(b) for b in next(iter(med.values())))
        width = 0.8 / len(bs)
        for i, b in enumerate(bs):
            ax.bar([j + i * width for j in range(len(paths))], [med[p][b] for p in paths], width, label=f"batch {b}")
        ax.axhline(results["presets"][preset]["floor_ms"], color="k", ls="--", lw=1, label="INT8 GEMM floor")
        ax.set_xticks([j + width * (len(bs) - 1) / 2 for j in range(len(paths))], paths, rotation=30, ha="right")
        ax.set_ylabel("ms / post (median)")
        ax.set_title(f"{preset}: {results['cpu']}, {results['threads']} threads", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    from gemm_ceiling import measure as gemm

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["edge"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--paths", nargs="+", choices=PATHS, help="time only these paths (default: all)")
    ap.add_argument("--graph", action="append", type=graph_arg, default=[], metavar="NAME=MODEL.onnx",
                    help="also time this ONNX graph (the bundles' inputs) on the onnxruntime INT8 bundle's session "
                         "options, e.g. an older commit's INT8 model.onnx; repeatable")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--plot", type=Path, help="PNG of ms/post by path and batch size ([plot] extra)")
    args = ap.parse_args(argv)
    names = [n for n, _ in args.graph]
    if len(set(names)) != len(names):
        ap.error(f"--graph names must differ, got {names}")
    g = gemm(repeats=7, threads=args.threads)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "?")
    results: dict[str, Any] = {"cpu": cpu, "threads": args.threads, "gemm": g, "presets": {}}
    print(f"{cpu}, {args.threads} threads; INT8 GEMM {g['ort_int8']:.0f} GOP/s, torch FP32 {g['torch_fp32']:.0f} "
          f"GFLOP/s ({g['int8_over_torch']:.2f}x)\n")
    for preset in args.presets:
        med = measure(preset, args.batches, args.rounds, args.calib_samples, args.threads,
                      set(args.paths) if args.paths else None, dict(args.graph))
        floor = floor_ms(preset, g["ort_int8"])
        results["presets"][preset] = {"ms_per_post": med, "floor_ms": floor}
        print(table(preset, med, floor) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
