"""`sydes import-reference`: convert a reference-implementation checkpoint into a SyDES Edge checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", help="the reference trainer's weights: model.safetensors, or a plain torch "
                        "state dict (read with torch.load(weights_only=True))")
    parser.add_argument("--config", required=True, metavar="REFERENCE_YAML",
                        help="the reference's own training config (configs/*.yaml: model and data sections)")
    parser.add_argument("--clip", required=True, metavar="CLIP_DIR",
                        help="HF CLIP folder (config.json, vocab.json, merges.txt) or hub id the reference "
                        "was built from")
    parser.add_argument("-o", "--output", required=True, metavar="CHECKPOINT_DIR",
                        help="the checkpoint folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    from training.reference_import import import_reference

    out = import_reference(args.weights, args.config, args.clip, args.output, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
