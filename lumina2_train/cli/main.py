"""`python -m lumina2_train <command>`: demo, train, scan, convert, bench, make-tiny-models, comfy-e2e.

Each command lives in its own module with `add_arguments(parser)` and `run(args) -> int`; this file only
dispatches, and imports a command's module only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lumina2_train.cli.demo", "run the whole pipeline on the bundled demo data with tiny models"),
    "train": ("lumina2_train.cli.train", "train from a TOML/JSON run config against local weights"),
    "scan": ("lumina2_train.data.scan_command", "report what a dataset folder holds, without loading a model"),
    "make-tiny-models": ("lumina2_train.cli.tiny_models", "write tiny random Lumina2 or Z-Image models"),
    "convert": ("lumina2_train.cli.convert", "rewrite a LoRA file as comfyui, diffusers or kohya (safe readers)"),
    "bench": ("lumina2_train.bench.command", "time our training step against the reference step (CUDA)"),
    "comfy-e2e": ("lumina2_train.comfyui.e2e", "train the example workflow on a real ComfyUI server, tiny models"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lumina2_train", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    from ..errors import Lumina2TrainError

    log = logging.getLogger("lumina2_train")
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except Lumina2TrainError as e:
        log.error("error: %s", e)
        return 2
    except KeyboardInterrupt:  # the run has already said what it kept (the resumable checkpoint, if any)
        log.error("stopped by Ctrl-C. A training run continues from its checkpoint with: python -m lumina2_train "
                  "train CONFIG --resume RUN_FOLDER (docs/cli.md)")
        return INTERRUPTED


INTERRUPTED = 130  # the shell's status for a process stopped by SIGINT (128 + 2)


if __name__ == "__main__":
    sys.exit(main())
