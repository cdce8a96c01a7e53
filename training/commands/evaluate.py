"""`sydes eval CHECKPOINT --data DIR --split dev [--json OUT] [--png OUT]`: per-task accuracy, macro and
weighted F1, per-class precision / recall and confusion matrices. Each post's text is built from the
checkpoint's text fields (config.json's tokenizer section), as the model was trained."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder (config.json + model.safetensors + tokenizer.json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="MSED-layout folder")
    src.add_argument("--file", help="posts file (JSONL / CSV) with labels")
    p.add_argument("--split", default="dev", help="split of --data (default dev)")
    p.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    p.add_argument("--png", metavar="OUT", help="plot the confusion matrices (needs matplotlib)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--skip-invalid", action="store_true")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from sdk.atomic import atomic_write_text
    from sdk.errors import CheckpointError
    from sdk.text_fields import TextFields
    from training.evaluate import evaluate_checkpoint
    from training.metrics import format_report, save_confusion_png
    from training.runner import read_split

    cfg_path = f"{args.checkpoint}/config.json"
    try:
        cfg = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
        tasks = cfg["tasks"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{args.checkpoint}: not a SyDES checkpoint ({cfg_path}: {e})") from None
    # the text as the model was trained to read it (as `sydes analyze --input` builds it from a bundle)
    fields = TextFields.from_dict(cfg.get("tokenizer") or {})
    records = read_split(args.data, args.split, args.file, tasks=tasks, text_fields=fields,
                         skip_invalid=args.skip_invalid, limit=args.limit)
    reports = evaluate_checkpoint(args.checkpoint, records, batch_size=args.batch_size, device=args.device,
                                  num_workers=args.num_workers)
    print(format_report(reports))
    if args.json:
        atomic_write_text(args.json, json.dumps({"checkpoint": str(args.checkpoint),
                                                 "data": str(args.data or args.file), "split": args.split,
                                                 "skipped_rows": len(records.skipped), "tasks": reports}, indent=2))
        print(f"wrote {args.json}")
    if args.png:
        if save_confusion_png(reports, args.png):
            print(f"wrote {args.png}")
        else:
            print("matplotlib is not installed: no PNG written")
    return 0
