"""``certify smooth``: randomized-smoothing certificates for a dataset, written to a resumable run directory.

Example::

    certify smooth --pretrained fmnist_cnn_sigma0.25 --max 100 --skip 100 --first-order --out runs/fmnist
    certify smooth --checkpoint model.pt --arch fmnist_cnn --data fmnist --sigma 0.25 --out runs/mine
    certify smooth --pretrained fmnist_cnn_sigma0.25 --sequential --target-radius 0.5 --n-estimate 100000

The run directory gets run.json (settings), rows.tsv (one row per example, written as it goes),
summary.json, report.md and certified_accuracy.png. Interrupt it (Ctrl-C / SIGTERM) and run the same
command again to continue: finished rows are kept and the final rows are the same as an
uninterrupted run's.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from certify.commands._common import (  # noqa: F401 - the argparse types, re-exported for old imports
    add_model_arguments,
    add_run_arguments,
    add_smoothing_data_arguments,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
)
from certify.devices import add_device_argument, device_from_args
from certify.distributed import ModelSource, add_workers_arguments, workers_from_args

HELP = "certify a dataset with a Gaussian-smoothed classifier (Cohen et al.; optional first-order radii)"


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def add_budget_arguments(p: argparse.ArgumentParser, *, n_estimate: int) -> None:
    """--n-select (--N0), --n-estimate (--N), --alpha, --batch-size (--batch): the Cohen et al. names too."""
    p.add_argument("--n-select", "--N0", dest="n_select", type=positive_int, default=100, metavar="N",
                   help="noise samples to select the top class (default 100)")
    p.add_argument("--n-estimate", "--N", dest="n_estimate", type=positive_int, default=n_estimate, metavar="N",
                   help=f"noise samples to bound its probability (default {n_estimate:,})")
    p.add_argument("--alpha", type=probability, default=0.001,
                   help="failure probability of each certificate (default 0.001)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=1000, metavar="B",
                   help="noisy images per forward pass (default 1000)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_smoothing_data_arguments(p)
    add_budget_arguments(p, n_estimate=10_000)
    p.add_argument("--first-order", action="store_true",
                   help="also certify l2/l1/l-inf/per-channel radii with first-order information")
    p.add_argument("--sequential", action="store_true",
                   help="anytime-valid sequential sampling: --n-estimate becomes the maximum and sampling stops "
                        "once the decision at --target-radius (or, without it, the radius) is settled")
    p.add_argument("--target-radius", type=nonnegative_float, default=None, metavar="R",
                   help="with --sequential: only decide whether the l2 radius R (pixel units) is certified")
    p.add_argument("--radius-tol", type=positive_float, default=0.01, metavar="T",
                   help="with --sequential and no --target-radius: stop once the radius can grow by at most "
                        "T * sigma (default 0.01)")
    p.add_argument("--sound", action="store_true",
                   help="floating-point sound noise (Voracek & Hein 2023): inputs on the 1/255 grid, noise drawn "
                        "exactly on that lattice; zeroth order only")
    p.add_argument("--start", type=nonnegative_int, default=0, help="first example index (default 0)")
    p.add_argument("--skip", type=positive_int, default=1, help="certify every SKIP-th example (default 1)")
    add_run_arguments(p, seed_help="base seed; example idx uses a seed derived from (seed, idx) (default 0)")
    add_device_argument(p)
    add_workers_arguments(p)
    from certify.smoothing import SAMPLE_CHUNK

    p.add_argument("--sample-chunks", action="store_true",
                   help=f"with --workers: also split each example's --n-estimate samples into chunks of "
                        f"{SAMPLE_CHUNK:,} "
                        "certified by different workers (zeroth order, fixed n; same rows as without it)")


def print_report(report, out: Path | None, *, examples: int | None = None) -> None:
    """The short table the smooth and demo commands print."""
    s = report.summary()
    print(f"\n{report.label_text()}: {s['n_examples']} examples, clean accuracy {s['clean_accuracy']:.3f}, "
          f"abstain rate {s['abstain_rate']:.3f}, ACR (l2) {s['acr']:.4f}, {s['mean_time_s']:.2f} s/example")
    for norm, entry in s["norms"].items():
        grid = entry["radii"]
        fmt = (lambda r: f"{r * 255:g}/255") if norm == "linf" else (lambda r: f"{r:g}")
        print(f"  certified accuracy at {norm + ' radius':<18}" + "  ".join(f"{fmt(r):>7}" for r in grid))
        for order in ("zeroth", "first"):
            if order in entry:
                accs = entry[order]["certified_accuracy"]
                print(f"    {order + ' order':<38}" + "  ".join(f"{a:7.3f}" for a in accs))
    if "samples_used" in s:
        u = s["samples_used"]
        print(f"  estimation samples per example: mean {u['mean']:,.0f}, median {u['median']:,.0f}, max {u['max']:,}")
    if out is not None:
        print(f"wrote {out}/rows.tsv, run.json, summary.json, report.md, certified_accuracy.png, samples_used.png")


def _check_sound(args: argparse.Namespace, dataset) -> None:
    import torch

    from estimators.lattice import grid_indices

    if args.first_order:
        raise ValueError("--sound: not available with --first-order (first-order bounds need continuous noise)")
    try:
        grid_indices(torch.as_tensor(dataset[args.start][0]).to(torch.float32))
    except ValueError as exc:
        raise ValueError(f"--sound: {exc}") from None


def _check_sequential(args: argparse.Namespace) -> None:
    if not args.sequential and (args.target_radius is not None or args.radius_tol != 0.01):
        raise ValueError("--target-radius/--radius-tol: only with --sequential")
    if args.sequential and args.first_order:
        raise ValueError("--first-order: cannot be combined with --sequential (the gradient bounds are fixed-n "
                         "bounds, not valid under optional stopping)")


def _check_chunks(args: argparse.Namespace) -> None:
    if not getattr(args, "sample_chunks", False):
        return
    if args.workers is None:
        raise ValueError("--sample-chunks: only with --workers N (chunks of one example go to several workers)")
    if args.first_order or args.sequential:
        raise ValueError("--sample-chunks: only for zeroth-order fixed-n certificates, not with "
                         f"{'--first-order' if args.first_order else '--sequential'}")


def run(args: argparse.Namespace) -> int:
    from certify.commands._common import prepare_smoothing, set_summary
    from certify.runs import certify_dataset, terminate_as_interrupt
    from certify.smoothing import Smooth

    _check_sequential(args)
    _check_chunks(args)
    workers, ray_address = workers_from_args(args)
    device = device_from_args(args, remote=ray_address is not None)
    job = prepare_smoothing(args, "smooth")
    out = job["out"]
    if args.sound:
        _check_sound(args, job["dataset"])
    smooth = Smooth(job["loaded"].model, num_classes=job["num_classes"], sigma=job["sigma"], sound=args.sound,
                    device=None if ray_address else device)
    with terminate_as_interrupt():
        report = certify_dataset(
            smooth, job["dataset"], out=out, resume=args.resume, overwrite=args.overwrite, n_select=args.n_select,
            n_estimate=args.n_estimate, alpha=args.alpha, batch_size=args.batch_size, seed=args.seed,
            first_order=args.first_order, start=args.start, skip=args.skip, max_examples=args.max_examples,
            verbose=not args.quiet, checkpoint=job["loaded"].name, dataset_name=job["dataset"].name,
            record=job["record"], device=device, workers=workers, ray_address=ray_address,
            model_source=ModelSource.from_args(args) if workers else None, sequential=args.sequential,
            target_radius=args.target_radius, radius_tol=args.radius_tol, sample_chunks=args.sample_chunks)
    print_report(report, out)
    set_summary(args, {"out": str(out), **report.summary()})
    return 0
