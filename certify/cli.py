"""The ``certify`` command line.

Each sub-command lives in its own module under :mod:`certify.commands` and provides
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Adding a command is a
new module plus one line in :data:`COMMANDS`. Every command also gets the shared flags of
:func:`certify.commands._common.add_shared_flags` (``--json``, ``--quiet``); with ``--json`` the summary
a command hands to :func:`~certify.commands._common.set_summary` is printed as one strict JSON object on
stdout and everything else the command prints goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from typing import Sequence

from certify.allocator import keep_freed_memory
from certify.commands._common import add_shared_flags

# command name -> module under certify.commands (order = order in --help)
COMMANDS = {
    "demo": "demo",
    "smooth": "smooth",
    "predict": "predict",
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
        module = importlib.import_module(f"certify.commands.{module_name}")  # a broken command is an error
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        add_shared_flags(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from certify._jsonio import dumps

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    level = logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    keep_freed_memory()  # glibc malloc keeps freed batch buffers (certify.allocator): only speed changes
    stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
            code = int(args._run(args) or 0)
        if args.json:
            stdout.write(dumps(getattr(args, "summary", {}), indent=None) + "\n")
            stdout.flush()
        return code
    except (ValueError, TypeError, OSError) as exc:  # bad input (OSError: files, e.g. permissions)
        logging.getLogger("certify").debug("command failed", exc_info=True)
        text = " ".join(str(exc).split()) or type(exc).__name__
        parser.exit(2, f"certify {args.command}: error: {text}\n")
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; finished rows are saved (re-run with --resume)\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
