"""``prism check-config FILE``: validate a PRISM configuration and report every problem."""

from __future__ import annotations

import argparse
import sys

from prism.config.load import ConfigError, load_config

EXIT_OK = 0
EXIT_INVALID = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's arguments."""
    parser.add_argument("file", help="the YAML configuration to check")


def _plural(count: int, word: str) -> str:
    """``1 switch``, ``2 switches``, ``3 cells``."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word}es" if word.endswith(("s", "sh", "ch")) else f"{count} {word}s"


def run(args: argparse.Namespace) -> int:
    """Check ``args.file``; print ``OK: ...`` or each problem.

    Returns:
        0 if the configuration is valid (warnings allowed), 1 otherwise.
    """
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        errors = len(exc.errors)
        print(f"{args.file}: {_plural(errors, 'error')}", file=sys.stderr)
        return EXIT_INVALID
    for problem in config.warnings:
        print(problem, file=sys.stderr)
    print(f"OK: {_plural(len(config.switches), 'switch')}, {_plural(config.cell_count, 'cell')}")
    return EXIT_OK
