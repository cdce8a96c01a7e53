"""`sydes info BUNDLE`: a bundle's manifest, readable (or raw with --json); with --trtexec, the trtexec and
Polygraphy commands that rebuild and compare its TensorRT engines with NVIDIA's own tools."""

from __future__ import annotations

import argparse
import json
import shlex


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="the NAME.sydes/ folder")
    parser.add_argument("--json", action="store_true", help="print manifest.json as it is")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle's files")
    parser.add_argument("--trtexec", action="store_true",
                        help="print the trtexec / Polygraphy commands that rebuild and compare the bundle's "
                             "TensorRT engines (strongly typed, with their recorded profiles)")
    parser.add_argument("--max-batch", type=int, default=32, metavar="N",
                        help="--trtexec for a bundle without recorded engines: the profile's max batch (default 32)")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def format_bundle(b) -> str:
    m = b.manifest
    lines = [f"bundle     {m.name}  ({b.path})", f"created    {m.created or '-'}",
             f"schema     v{m.schema_version}", f"precision  {m.precision}", "tasks"]
    lines += [f"  {t:<10} {len(v)} labels: {', '.join(v)}" for t, v in m.tasks.items()]
    lines.append("graphs")
    for name, g in m.graphs.items():
        lines.append(f"  {name:<10} {g.file}  {_mb(g.bytes)}  sha256 {g.sha256[:16]}...")
        for t in g.inputs:
            lines.append(f"    in   {t.name:<16} {t.dtype:<8} [{', '.join(map(str, t.shape))}]")
        for t in g.outputs:
            lines.append(f"    out  {t.name:<16} {t.dtype:<8} [{', '.join(map(str, t.shape))}]")
    tk = m.tokenizer
    lines.append(f"tokenizer  {tk.file} ({tk.kind}, max_length {tk.max_length}, "
                 f"trim_padding {'yes' if tk.trim_padding else 'no'})")
    lines.append(f"text       {b.text_fields.describe()} (sydes analyze --input builds it so)")
    lines.append("preprocess " + (", ".join(f"{k}={v}" for k, v in m.preprocess.items()) if m.preprocess is not None
                                  else "none: a text-only bundle (it reads no image)"))
    prov = m.provenance
    if prov:
        pk = prov.get("packages") or {}
        lines.append(f"provenance opset {prov.get('opset', '-')}; packages: "
                     + (", ".join(f"{k} {v}" for k, v in pk.items()) or "-"))
        for c in prov.get("checkpoints") or []:
            lines.append(f"  checkpoint {c.get('path', '?')}  sha256 {str(c.get('sha256', ''))[:16]}...")
        cal = prov.get("calibration")
        if cal:
            lines.append(f"  calibration {cal.get('method', '?')} on {cal.get('samples', '?')} samples")
    if m.validation:
        lines.append("validation " + json.dumps(m.validation, sort_keys=True))
    engines = sorted(p.name for p in b.engines_dir.glob("*.engine")) if b.engines_dir.is_dir() else []
    lines.append(f"engines    {len(engines)} cached" + "".join(f"\n  {e}" for e in engines))
    for r in m.engine_records:
        p = r.profile
        lines.append(f"  recorded {r.file}: {r.gpu} (cc {r.compute_capability}), TensorRT {r.tensorrt}, {r.precision}, "
                     f"batch {p['min_batch']}/{p['opt_batch']}/{p['max_batch']}, text "
                     f"{p['min_seq']}/{p['opt_seq']}/{p['max_seq']}{', strongly typed' if r.strongly_typed else ''}")
    return "\n".join(lines)


def _vocab_size(b) -> int | None:
    try:
        vocab = json.loads(b.tokenizer_path.read_text(encoding="utf-8"))["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return len(vocab) if isinstance(vocab, (dict, list)) else None


def nvidia_commands(b, max_batch: int = 32) -> str:
    """trtexec (build) and Polygraphy (TensorRT vs onnxruntime) commands for each recorded engine's profile,
    or for the default profile up to `max_batch` when none is recorded. Strongly typed: no --fp16 / --int8,
    the graph's FP16 / Q/DQ types decide; FP32 bundles add --noTF32 (FP32 parity)."""
    from sdk.backends.trt_build import OptimizationProfile
    from sdk.errors import ConfigError

    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"--max-batch must be a positive integer, got {max_batch!r}")
    m = b.manifest
    onnx = str(b.graph_path("model"))
    recorded = [(OptimizationProfile.from_dict(r.profile), r.workspace_bytes, str(b.path / r.file))
                for r in m.engine_records]
    profiles = recorded or [(OptimizationProfile.for_bundle(max_batch, m.tokenizer.max_length,
                                                            m.tokenizer.trim_padding), None, None)]
    vocab = _vocab_size(b)
    # value ranges Polygraphy's generated inputs must respect: pixels are bytes, ids index the vocabulary
    ranges = (["global_pixels:[0,255]", "canvas_pixels:[0,255]"] if b.uses_images else []) + ["attention_mask:[1,1]"]
    if vocab:
        ranges.append(f"input_ids:[0,{vocab - 1}]")
    tol = {"fp32": ("1e-4", "1e-3"), "fp16": ("1e-2", "1e-2"), "int8": ("5e-2", "5e-2")}[m.precision]
    out = [f"# {m.name} ({m.precision}): rebuild and compare its TensorRT engine(s) with NVIDIA's tools"]
    for prof, ws, engine in profiles:
        shapes = {t.name: prof.shapes(t.shape) for t in m.graph.inputs}
        dims = [",".join(f"{n}:{'x'.join(map(str, s[k]))}" for n, s in shapes.items()) for k in range(3)]
        lists = [[f"{n}:[{','.join(map(str, s[k]))}]" for n, s in shapes.items()] for k in range(3)]
        engine = engine or str(b.engines_dir / f"trtexec-{m.precision}-b{prof.max_batch}.engine")
        cmd = ["trtexec", f"--onnx={onnx}", "--stronglyTyped", f"--minShapes={dims[0]}", f"--optShapes={dims[1]}",
               f"--maxShapes={dims[2]}", f"--saveEngine={engine}"]
        if m.precision == "fp32":
            cmd.append("--noTF32")
        if ws:
            cmd.append(f"--memPoolSize=workspace:{max(1, ws >> 20)}")
        poly = ["polygraphy", "run", onnx, "--trt", "--onnxrt", "--strongly-typed",
                "--trt-min-shapes", *lists[0], "--trt-opt-shapes", *lists[1], "--trt-max-shapes", *lists[2],
                "--input-shapes", *lists[1], "--val-range", *ranges, "--atol", tol[0], "--rtol", tol[1]]
        out += [f"# profile: batch {prof.min_batch}..{prof.max_batch} (opt {prof.opt_batch}), text "
                f"{prof.min_seq}..{prof.max_seq} (opt {prof.opt_seq})", shlex.join(cmd), shlex.join(poly)]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from sdk.bundle import load_bundle

    b = load_bundle(args.bundle, verify=not args.no_verify)
    if args.trtexec:
        print(nvidia_commands(b, args.max_batch))
    elif args.json:
        print(json.dumps(b.manifest.raw, indent=2, ensure_ascii=False))
    else:
        print(format_bundle(b))
    return 0
