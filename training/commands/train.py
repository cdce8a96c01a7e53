"""`sydes train pretrain|finetune`: one stage of the reference recipe (../shared/SYDES.md) with resumable
checkpoints. `sydes train recipe` (the way to train) is export/commands/train.py: its last stage exports.

Examples:
    sydes train pretrain --preset edge --data ../shared/data/msed-mini --output runs/edge-pretrain
    sydes train finetune --init runs/edge-pretrain/best --data ../shared/data/msed-mini --output runs/edge-ft
Rerunning a command whose --output holds `last/training_state` continues where it stopped.
Under torchrun (`torchrun --nproc_per_node N -m training.commands.train ...` or `torchrun $(which sydes) train
...`) it trains data-parallel.
"""

from __future__ import annotations

import argparse
import json
import sys


def _lr(s: str) -> tuple[str, float]:
    name, _, v = s.partition("=")
    try:
        return name, float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr takes GROUP=VALUE (e.g. text_decoder=2e-4), got {s!r}") from None


def text_arguments(p: argparse.ArgumentParser, default: str | None) -> None:
    """--text-fields / --text-separator: the columns the model's text is built from (recorded in the
    checkpoint; `sydes analyze --input` builds it the same way from a bundle of it)."""
    where = "the --init checkpoint's, else Caption" if default is None else default
    p.add_argument("--text-fields", default=default, metavar="COLS",
                   help=f"comma-separated columns joined into the text, e.g. Title,Caption (default: {where})")
    p.add_argument("--text-separator", default=None if default is None else " ", metavar="SEP",
                   help="put between the text fields' non-empty values (default: a space)")


def _stage_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="start from a fresh preset: reference, edge, tiny_clip, tiny_vit_bert")
    src.add_argument("--init", metavar="CHECKPOINT", help="start from a checkpoint folder (e.g. a pretrain's best/)")
    p.add_argument("--tasks", help="comma-separated tasks (default: the preset's / checkpoint's)")
    p.add_argument("--data", metavar="DIR", help="MSED-layout folder with train/ and dev/")
    p.add_argument("--train-file", help="posts file (JSONL / CSV) to train on (instead of --data)")
    p.add_argument("--dev-file", help="posts file (JSONL / CSV) for dev evaluation")
    text_arguments(p, default=None)
    p.add_argument("--output", default=None, help="run folder (default runs/<stage>-<preset or init name>)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accum", type=int, default=2, help="gradient accumulation steps")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--eval-every", type=int, default=0, help="optimiser steps between dev evals (0: each epoch)")
    p.add_argument("--save-every", type=int, default=50, help="optimiser steps between resumable checkpoints")
    p.add_argument("--patience", type=int, default=0, help="early stop after N evals without improvement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", default="auto", choices=["auto", "off", "fp16", "bf16"],
                   help="mixed precision (auto: fp16 + GradScaler on CUDA, off on CPU)")
    p.add_argument("--lr", type=_lr, action="append", default=[], metavar="GROUP=LR",
                   help="override a parameter group's learning rate (repeatable)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up fraction (default 0.15 / 0.10)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="evaluate and save an exponential moving average of the weights (e.g. 0.98; 0 = off)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="read at most N rows per split (smoke runs)")
    p.add_argument("--skip-invalid", action="store_true", help="skip (and count) invalid rows instead of failing")
    p.add_argument("--feature-cache", metavar="DIR", help="cache the frozen image encoder's outputs (finetune)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-exact resume)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def run(args: argparse.Namespace) -> int:
    from training.runner import train

    name = args.preset or (args.init.rstrip("/").split("/")[-1] if args.init else "model")
    output = args.output or f"runs/{args.stage}-{name}"
    summary = train(
        stage=args.stage, output=output, preset=args.preset, init=args.init,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
        data=args.data, train_file=args.train_file, dev_file=args.dev_file, limit=args.limit,
        skip_invalid=args.skip_invalid, epochs=args.epochs, batch_size=args.batch_size, accum=args.accum,
        max_steps=args.max_steps, eval_every=args.eval_every, save_every=args.save_every,
        patience=args.patience, seed=args.seed, device=args.device, amp=args.amp, lrs=dict(args.lr),
        warmup=args.warmup, clip=args.clip, ema=args.ema, num_workers=args.num_workers,
        feature_cache=args.feature_cache, deterministic=args.deterministic, progress=not args.no_progress,
        text_fields=args.text_fields, text_separator=args.text_separator,
    )
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({**summary, "output": output}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m training.commands.train` (and torchrun)."""
    import logging

    from sdk.errors import SydesError

    p = argparse.ArgumentParser(prog="python -m training.commands.train")
    p.add_argument("stage", choices=["pretrain", "finetune"])
    _stage_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except SydesError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
