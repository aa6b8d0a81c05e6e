"""The ``prism`` command: one entry point, one module per subcommand.

Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only
when their subcommand runs, so ``prism check-config`` does not pay for pandas.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

#: subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "check-config": ("prism.config.cli", "validate a PRISM YAML configuration"),
    "cell": ("prism.cell.main", "run an exception-path cell on an interface"),
    "cell-state": ("prism.cell.main_state", "print a running cell's state table"),
    "demo": ("mininet_topos.demo", "run the failover demo in Mininet"),
    "trace": ("prism.trace.cli", "turn pcap/pcapng captures and Argus binetflow files into flow records"),
    "train": ("models.train_cli", "train the state prediction model on flow records"),
    "evaluate": ("models.evaluate_cli", "compare replication policies on flow records with a model"),
    "simulate": ("models.simulate_cli", "simulate policies, cells and failures on flow records or a generated population"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="prism",
        description="PRISM: predictive replication of flow state with packet mirroring.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        # Arguments are added lazily in main() for the chosen command only.
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the subcommand named in ``argv``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints usage or help and exits
        return 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    sub_parser = argparse.ArgumentParser(
        prog=f"prism {argv[0]}", description=SUBCOMMANDS[argv[0]][1]
    )
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
