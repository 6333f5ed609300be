"""The command line: `python -m lumina2_train <command>` (main.py dispatches; one module per command)."""

from .main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
