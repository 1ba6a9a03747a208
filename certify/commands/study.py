"""``certify study``: all four parts of the toolkit on a family of Fashion-MNIST models.

Examples::

    certify study --out runs/study --quick        # the CI-sized study (make test-slow-quick runs it)
    certify study --out runs/study                # the full study
    certify study --out runs/study                # again: resumes, skipping finished stages

Writes ``report.md`` (tables with units and sample counts, the hidden cost of smoothing (accuracy and
disparity per class against sigma), robustness transfer to a fresh linear probe, consistency checks, time per
stage, and a "Reproduce" section), ``results.json``, ``plots/*.png`` and per-stage caches under ``--out``.
Exit status 0 when every proof-vs-attack consistency check passed, 3 when a check found a violation
(a certificate contradicted by an attack: a bug), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import logging

from certify.commands._common import check_out, set_summary
from certify.devices import add_device_argument, device_from_args

logger = logging.getLogger(__name__)

HELP = "the four parts together on a family of Fashion-MNIST models: tables, plots, consistency checks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/study",
                        help="output directory (default runs/study; an existing one is resumed)")
    parser.add_argument("--quick", action="store_true",
                        help="the CI-sized study: fewer examples and samples, the 4 trained models on 6,000 "
                             "images for one epoch")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random step (default 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, normally the number of cores)")
    add_device_argument(parser)


def run(args) -> int:
    import torch

    from certify.study import run_study

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    device = device_from_args(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    check_out(args.out)
    res = run_study(args.out, quick=args.quick, seed=args.seed, verbose=not args.quiet, device=device)
    corr = (res.correlation or {}).get("main") or {}
    print(f"study {res.config.name}: {len(res.config.models)} models in {res.wall_time_s:.0f} s "
          f"(compute {res.timings['compute_time_s']:.0f} s)")
    if corr:
        print(f"SynBench score vs linear-probe accuracy: Spearman rho {corr.get('spearman_rho', float('nan')):.3f}, "
              f"p {corr.get('p_value', float('nan')):.3g}, n {corr.get('n')}")
    print(f"consistency checks: {res.consistency['status']} ({res.consistency['checks']} checks, "
          f"{res.consistency['violations']} violations)")
    for problem in res.consistency["problems"]:
        print(f"  VIOLATION: {problem}")
    print(f"report: {res.report}\nresults: {res.results}")
    set_summary(args, {"name": res.config.name, "models": list(res.config.models), "wall_time_s": res.wall_time_s,
                       "correlation": res.correlation, "consistency": res.consistency, "report": str(res.report),
                       "results": str(res.results)})
    return 3 if res.consistency["violations"] else 0
