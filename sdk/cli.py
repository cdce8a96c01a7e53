"""The `sydes` command line: a table of subcommands, each imported only when it is run.

Each command module defines `add_arguments(parser)` and `run(args) -> int`, and imports its heavy
libraries inside `run`. The table names modules of the upper layers (training, export) as strings on
purpose: sdk never imports them itself, the dispatcher only loads the one command the user asked for.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass

from sdk.errors import MissingExtraError, SydesError


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    extra: str  # the pip extra the command needs
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("demo", "export.commands.demo", "train,export,cpu", "train, export and run a small demo model end to end"),
    Command("train", "export.commands.train", "train,export",
            "train a model: the whole recipe (train recipe), or one pretrain / fine-tune stage"),
    Command("eval", "training.commands.evaluate", "train", "evaluate a checkpoint on a labelled split"),
    Command("import-reference", "training.commands.import_reference", "train",
            "convert a reference-implementation checkpoint"),
    Command("export", "export.commands.export", "export", "export checkpoint(s) to a verified bundle or engine"),
    Command("info", "sdk.commands.info", "cpu", "print a bundle's manifest"),
    Command("doctor", "sdk.commands.doctor", "cpu", "check this machine: GPU, CUDA, TensorRT, onnxruntime providers"),
    Command("analyze", "sdk.commands.analyze", "cpu", "analyse posts with a bundle"),
    Command("triton", "sdk.commands.triton", "cpu", "write a Triton Inference Server model repository from a bundle"),
    Command("serve", "sdk.commands.serve", "cpu,serve", "serve a bundle over HTTP (micro-batched, sheds load)"),
    Command("benchmark", "training.commands.benchmark", "cpu",
            "measure a bundle's latency and throughput (--compare: vs torch eager)"),
)

# Top-level modules of optional dependencies -> the extra that provides them.
_EXTRA_OF = {
    "torch": "train", "transformers": "train", "safetensors": "train", "yaml": "train",
    "onnx": "export", "onnxscript": "export", "onnxruntime": "cpu",
}


def _load(cmd: Command):
    try:
        return importlib.import_module(cmd.module)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top in _EXTRA_OF:
            raise MissingExtraError(top, _EXTRA_OF[top], f"needed by `sydes {cmd.name}`") from e
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="sydes", description="SyDES Edge: multimodal sentiment, emotion "
                                     "and desire recognition, from training to edge engines.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    from sdk import __version__

    parser.add_argument("--version", action="version", version=f"sydes-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    by_name = {c.name: c for c in COMMANDS}
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.name == chosen:
            try:
                module = _load(cmd)
            except MissingExtraError as e:
                print(f"sydes {cmd.name}: {e}", file=sys.stderr)
                return 2
            module.add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    assert module is not None and by_name[args.command]  # parse_args only accepts listed commands
    try:
        return int(module.run(args) or 0)
    except MissingExtraError as e:
        print(f"sydes {args.command}: {e}", file=sys.stderr)
        return 2
    except SydesError as e:
        print(f"sydes {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sydes {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
