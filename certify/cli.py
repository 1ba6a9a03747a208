"""The ``certify`` command line.

Each sub-command lives in its own module under :mod:`certify.commands` and provides
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Adding a command is a
new module plus one line in :data:`COMMANDS`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

# command name -> module under certify.commands (order = order in --help)
COMMANDS = {
    "demo": "demo",
    "smooth": "smooth",
    "semantic": "semantic",
    "synbench": "synbench",
    "report": "report",
    "train": "train",
    "study": "study",
    "transfer": "transfer",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certify",
        description="Certified robustness for trained PyTorch classifiers: randomized smoothing, "
        "semantic perturbation verification and SynBench reference bounds.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"certify.commands.{module_name}")
        except ModuleNotFoundError as exc:  # a command whose module is not present yet
            if exc.name != f"certify.commands.{module_name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        logging.getLogger("certify").debug("command failed", exc_info=True)
        parser.exit(2, f"certify {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; finished rows are saved (re-run with --resume)\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
