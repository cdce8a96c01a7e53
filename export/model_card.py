"""README.md of a bundle: what it predicts, how it runs, how it was verified, where it came from, and the model
card of each checkpoint it holds (the training data's terms travel with the weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdk.atomic import atomic_write_text
from sdk.text_fields import TextFields


def _verification(m: dict[str, Any]) -> list[str]:
    v = m["validation"]
    lines = ["| task | max abs prob. diff vs torch FP32 | top-1 agreement |", "|---|---|---|"]
    lines += [f"| {t} | {v['max_abs_diff'][t]:.2e} | {v['agreement'][t]:.3f} |" for t in m["tasks"]]
    rep = m.get("calibration_report") or {}
    if rep.get("tasks"):
        lines += ["", f"Held out ({rep['samples']} posts of {rep['data']}), against the FP32 graph:", "",
                  "| task | top-1 agreement | macro-F1 FP32 -> this |", "|---|---|---|"]
        for t, r in rep["tasks"].items():
            f1 = (f"{100 * r['macro_f1_reference']:.1f} -> {100 * r['macro_f1']:.1f}" if "macro_f1" in r else "-")
            lines.append(f"| {t} | {r['top1_agreement']:.3f} | {f1} |")
    return lines


def write_bundle_card(folder: Path, manifest: dict[str, Any], checkpoints: list[dict[str, Any]]) -> None:
    """folder/README.md from the manifest (figures as the manifest has them) and the checkpoints' README.md."""
    m = manifest
    g = m["graphs"]["model"]
    prov = m["provenance"]
    fmt = g.get("format", "onnx")
    run = ("`Analyzer(bundle)` runs it on OpenVINO (`[openvino]` extra; device cpu, gpu or npu)" if fmt == "openvino"
           else "`Analyzer(bundle)` runs it on onnxruntime (CPU, CUDA) or TensorRT")
    lines = [f"# {m['name']} (SyDES bundle, {m['precision']}, {fmt})", "",
             "Predicts, for an image-text post, " + "; ".join(f"**{t}** ({', '.join(v)})" for t, v in m["tasks"].items())
             + ".", "", f"{run}; `sydes info` prints the manifest.", "",
             "## Graph", "", f"- `{g['file']}`" + (f" + `{g['weights']['file']}`" if "weights" in g else "")
             + f", target {prov.get('target')}, opset {prov.get('opset')}, sha256 {g['sha256'][:16]}...",
             "- inputs: " + ", ".join(f"{t['name']} {t['dtype']} {t['shape']}" for t in g["inputs"]),
             "- the mixed-scale tiler (global view + 2x2 high-res tiles) runs inside the graph from uint8 pixels",
             f"- text: {TextFields.from_dict(m['tokenizer']).describe()} of a post; `sydes analyze --input FILE` "
             "builds it so where the file has those columns, `Analyzer.analyze(image, text)` takes the text as given"]
    if m.get("label_structure"):
        ls = m["label_structure"]
        lines.append(f"- answers decoded jointly ({ls.get('decoding', 'joint')}) over {len(ls['combinations'])} "
                     "label combinations seen in training")
    lines += ["", "## Verification at export", "", *_verification(m), "", "## Made from", ""]
    for ck in checkpoints:
        lines.append(f"- `{ck['path']}` (weights sha256 {str(ck.get('sha256', '?'))[:16]}...)")
    for ck in checkpoints:
        card = Path(ck["path"]) / "README.md"
        if card.is_file():  # the checkpoint's own card, headings pushed one level down
            body = card.read_text(encoding="utf-8").splitlines()
            lines += ["", *("#" + ln if ln.startswith("#") else ln for ln in body)]
    atomic_write_text(folder / "README.md", "\n".join(lines).rstrip() + "\n")
