"""`sydes info BUNDLE`: a bundle's manifest, readable (or raw with --json)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="the NAME.sydes/ folder")
    parser.add_argument("--json", action="store_true", help="print manifest.json as it is")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle's files")


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
    lines.append("preprocess " + ", ".join(f"{k}={v}" for k, v in m.preprocess.items()))
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
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from sdk.bundle import load_bundle

    b = load_bundle(args.bundle, verify=not args.no_verify)
    if args.json:
        print(json.dumps(b.manifest.raw, indent=2, ensure_ascii=False))
    else:
        print(format_bundle(b))
    return 0
