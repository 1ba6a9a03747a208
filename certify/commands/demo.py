"""``certify demo``: certify Fashion-MNIST test images with the shipped noise-trained CNN.

Uses the checkpoint ``fmnist_cnn_sigma0.25`` (trained with Gaussian noise, sigma 0.25), certifies
``--n`` test images (every ``--skip``-th) at sigma 0.25 with zeroth- and first-order radii, and writes
the run directory (rows.tsv, run.json, summary.json, report.md, certified_accuracy.png). About one to
two minutes on two CPU cores with the defaults; re-running continues / re-renders the same run.
"""
from __future__ import annotations

import argparse

from certify.commands._common import (
    add_run_arguments,
    check_model_and_data,
    check_out,
    check_resume_flags,
    positive_int,
    run_record,
    set_summary,
)
from certify.commands.smooth import add_budget_arguments, print_report
from certify.devices import add_device_argument, device_from_args

HELP = "certify a few Fashion-MNIST test images with the shipped smoothed CNN and write a report"

CHECKPOINT = "fmnist_cnn_sigma0.25"
SIGMA = 0.25


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", "--max", dest="n", type=positive_int, default=30, help="number of test images (default 30)")
    p.add_argument("--skip", type=positive_int, default=333, help="certify every SKIP-th test image (default 333)")
    add_budget_arguments(p, n_estimate=10_000)
    add_run_arguments(p, max_examples=False)
    p.set_defaults(out="runs/demo")
    p.add_argument("--first-order", action=argparse.BooleanOptionalAction, default=True,
                   help="also certify l2/l1/l-inf radii with first-order information (default: on)")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from certify import models
    from certify.data import load_dataset
    from certify.rundir import file_sha256
    from certify.runs import certify_dataset, terminate_as_interrupt
    from certify.smoothing import Smooth

    check_resume_flags(args)
    device = device_from_args(args)
    out = check_out(args.out)
    model = models.pretrained(CHECKPOINT)
    info = models.pretrained_info(CHECKPOINT)
    dataset = load_dataset(info["dataset"], split="test")
    num_classes = check_model_and_data(model, dataset)
    print(f"certify demo: {CHECKPOINT} (test accuracy {info.get('test_accuracy', float('nan')):.3f}), sigma {SIGMA}, "
          f"{args.n} Fashion-MNIST test images (every {args.skip}th), n_estimate {args.n_estimate:,}, "
          f"alpha {args.alpha}, first order {'on' if args.first_order else 'off'}")
    smooth = Smooth(model, num_classes=num_classes, sigma=SIGMA, device=device)
    with terminate_as_interrupt():
        report = certify_dataset(
            smooth, dataset, out=out, resume=args.resume, overwrite=args.overwrite, n_select=args.n_select,
            n_estimate=args.n_estimate, alpha=args.alpha, batch_size=args.batch_size, seed=args.seed,
            first_order=args.first_order, skip=args.skip, max_examples=args.n, verbose=not args.quiet,
            checkpoint=CHECKPOINT, dataset_name=dataset.name,
            record={**run_record(args), "arch": info.get("arch"),
                    "checkpoint_sha256": file_sha256(models.ZOO_DIR / f"{CHECKPOINT}.pt")})
    frame = report.to_frame()
    cols = ["idx", "label", "predict", "abstained", "radius"] + [c for c in ("radius_l2", "radius_l1", "radius_linf")
                                                                  if c in frame.columns]
    print(frame[cols].head(10).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if len(frame) > 10:
        print(f"... ({len(frame) - 10} more rows in {out / 'rows.tsv'})")
    print_report(report, out)
    print(f"report: {out / 'report.md'}   plot: {out / 'certified_accuracy.png'}")
    set_summary(args, {"out": str(out), **report.summary()})
    return 0
