"""`sydes train recipe|pretrain|finetune`.

`recipe` is the way to train: the whole recipe end to end and resumable (export/recipe.py; it lives in the
export layer because its last stage exports the INT8 bundle and scores it through sdk.Analyzer):
    sydes train recipe --preset edge --data ../shared/data/msed-mini --output runs/edge-recipe
`pretrain` / `finetune` run one stage of the reference recipe (training/commands/train.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

RECIPE_HELP = """Run the whole training recipe, resumable (rerun the same command to continue):
  1. split: a stratified slice of train is held out for selection (dev is only reported on);
     the valid label combinations are learnt from the rest of train;
  2. features: the frozen image encoder's outputs of every image, once, into the on-disk cache
     ($SYDES_CACHE_DIR or ~/.cache/sydes/features; about 0.5 s per image on 2 cores);
  3. baseline: the text-only model (same text encoder, mean pooling + a linear layer per task);
  4. model: the preset, text encoder trained, image encoder frozen (from the cache), early stopping;
  5. decoding: independent vs joint decoding over the label combinations, chosen on the slice;
  6. RUN/best/ (checkpoint + model card), RUN/int8.sydes scored on dev through sdk.Analyzer (and the
     baseline's, RUN/baseline-int8.sydes, a text-only bundle), RUN/report.json and RUN/report.md.
Every model reads the text --text-fields builds (default Title,Caption; the reference reads Caption alone),
recorded in RUN/best and its bundle, so `sydes analyze BUNDLE --input FILE` builds it the same way."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.commands.train import _stage_arguments

    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    r = sub.add_parser("recipe", help="the whole recipe, end to end (the way to train)", description=RECIPE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _recipe_arguments(r)
    for stage in ("pretrain", "finetune"):
        _stage_arguments(sub.add_parser(stage, help=f"one {stage} stage of the reference recipe",
                                        formatter_class=argparse.ArgumentDefaultsHelpFormatter))


def _recipe_arguments(p: argparse.ArgumentParser) -> None:
    from export.recipe_options import ABLATIONS, RECIPE_PRESETS, VARIANTS
    from training.commands.train import text_arguments

    p.add_argument("--preset", required=True, choices=RECIPE_PRESETS)
    p.add_argument("--data", required=True, metavar="DIR", help="MSED-layout folder with train/ and dev/")
    p.add_argument("--output", required=True, metavar="RUN", help="run folder (rerun to resume)")
    p.add_argument("--epochs", type=int, default=6, help="most epochs of the preset (default 6)")
    p.add_argument("--baseline-epochs", type=int, default=10, help="most epochs of the text-only baseline (default 10)")
    p.add_argument("--patience", type=int, default=3, help="evals without improvement before stopping (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--select-fraction", type=float, default=0.15, help="share of train held out for selection")
    p.add_argument("--variants", default="", help=f"comma-separated extra candidates for best: {', '.join(VARIANTS)}")
    p.add_argument("--ablations", default="", help=f"comma-separated diagnostics: {', '.join(ABLATIONS)}")
    text_arguments(p, default="Title,Caption")
    p.add_argument("--no-baseline", action="store_true", help="do not train the text-only baseline")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 bundle and its dev score")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="both models select and save an EMA of their weights, e.g. 0.98 (default 0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--limit", type=int, default=None, help="read at most N rows per split (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_recipe(args: argparse.Namespace) -> int:
    from export.recipe import Recipe, RecipeOptions

    opts = RecipeOptions(preset=args.preset, epochs=args.epochs, baseline_epochs=args.baseline_epochs,
                         patience=args.patience, batch_size=args.batch_size, select_fraction=args.select_fraction,
                         seed=args.seed, ema=args.ema, baseline=not args.no_baseline, int8=not args.no_int8,
                         ablations=_names(args.ablations), variants=_names(args.variants),
                         device=args.device, progress=not args.no_progress, limit=args.limit,
                         text_fields=_names(args.text_fields), text_separator=args.text_separator)
    Recipe(args.data, args.output, opts).run()
    print((Path(args.output) / "report.md").read_text(encoding="utf-8"))
    return 0




def run(args: argparse.Namespace) -> int:
    if args.stage == "recipe":
        return run_recipe(args)
    from training.commands import train as stage_command

    return stage_command.run(args)


def _names(csv: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in csv.split(",") if a.strip())
