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
import re
from pathlib import Path
from typing import Any

HELP = "certify a dataset with a Gaussian-smoothed classifier (Cohen et al.; optional first-order radii)"


# ------------------------------------------------------------------ argument types (shared with demo)
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not (0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def add_budget_arguments(p: argparse.ArgumentParser, *, n_estimate: int) -> None:
    """--n-select, --n-estimate, --alpha, --batch-size, --seed, --resume, --overwrite (smooth and demo)."""
    p.add_argument("--n-select", type=positive_int, default=100, metavar="N",
                   help="noise samples to select the top class (default 100)")
    p.add_argument("--n-estimate", type=positive_int, default=n_estimate, metavar="N",
                   help=f"noise samples to bound its probability (default {n_estimate:,})")
    p.add_argument("--alpha", type=probability, default=0.001,
                   help="failure probability of each certificate (default 0.001)")
    p.add_argument("--batch-size", type=positive_int, default=1000, metavar="B",
                   help="noisy images per forward pass (default 1000)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="base seed; example idx uses a seed "
                   "derived from (seed, idx) (default 0)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue the run in --out, skipping finished examples (default: on)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --no-resume: delete the rows already in --out and start over")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH",
                     help="model file: a state_dict (needs --arch), TorchScript or torch.export file")
    src.add_argument("--pretrained", metavar="NAME",
                     help="a checkpoint shipped with certify (e.g. fmnist_cnn_sigma0.25); it names its own "
                          "architecture and gives the --data and --sigma defaults")
    p.add_argument("--arch", metavar="NAME|FILE.py:CLASS",
                   help="architecture of a state_dict checkpoint: a zoo name or path/to/file.py:ClassName")
    p.add_argument("--trust", action="store_true",
                   help="allow loading a pickled full module (runs code from the file: trusted files only)")
    p.add_argument("--data", metavar="NAME|PATH",
                   help="dataset: fashion-mnist (fmnist), digits, color-fmnist, a .npz file or an image folder")
    p.add_argument("--split", choices=("test", "train"), default="test", help="dataset split (default test)")
    p.add_argument("--sigma", type=positive_float, help="noise level (pixel units, inputs in [0, 1])")
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
    p.add_argument("--start", type=nonnegative_int, default=0, help="first example index (default 0)")
    p.add_argument("--skip", type=positive_int, default=1, help="certify every SKIP-th example (default 1)")
    p.add_argument("--max", dest="max_examples", type=positive_int, default=None, metavar="N",
                   help="certify at most N examples (default: all selected)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes of the model (default: the dataset's)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run directory (default runs/smooth_<model>_sigma<S>)")


def _load_model(args: argparse.Namespace) -> tuple[Any, str, dict]:
    from certify import models
    from certify.checkpoints import UnsafeCheckpointError, load_checkpoint

    if args.pretrained is not None:
        if args.arch is not None:
            raise ValueError("--arch: not used with --pretrained (the shipped checkpoint names its architecture)")
        try:
            info = models.pretrained_info(args.pretrained)
            model = models.pretrained(args.pretrained)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--pretrained: {exc}") from None
        return model, args.pretrained, info
    path = Path(args.checkpoint)
    if not path.is_file():
        raise ValueError(f"--checkpoint: file not found: {path}")
    try:
        model = load_checkpoint(path, arch=args.arch, trust=args.trust)
    except UnsafeCheckpointError as exc:
        raise ValueError(f"--checkpoint: {exc}") from None
    except ValueError as exc:  # missing/unknown arch, or a state_dict that does not fit it
        raise ValueError(f"--checkpoint/--arch: {exc}") from None
    except (FileNotFoundError, TypeError, ImportError, AttributeError) as exc:  # the --arch file/class
        raise ValueError(f"--arch: {exc}") from None
    return model, str(path), {}


def _load_data(name: str, split: str):
    from certify.data import load_dataset

    try:
        return load_dataset(name, split=split)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise ValueError(f"--data: {exc}") from None


def check_num_classes(model: Any, x, num_classes: int) -> None:
    """Run the model on one example: its output must have ``num_classes`` logits."""
    import torch

    with torch.no_grad():
        logits = model(torch.as_tensor(x).unsqueeze(0))
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"--num-classes: the model outputs shape {tuple(logits.shape)} for one input, expected "
                         f"(1, {num_classes})")


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


def run(args: argparse.Namespace) -> int:
    from certify.runs import certify_dataset, terminate_as_interrupt
    from certify.smoothing import Smooth

    model, model_name, info = _load_model(args)
    data = args.data if args.data is not None else info.get("dataset")
    if data is None:
        raise ValueError("--data: required with --checkpoint (a dataset name or path)")
    sigma = args.sigma
    if sigma is None:
        if info.get("sigma", 0.0) and float(info["sigma"]) > 0:
            sigma = float(info["sigma"])
        else:
            raise ValueError("--sigma: required (the noise level to certify at, e.g. 0.25)")
    dataset = _load_data(data, args.split)
    num_classes = args.num_classes if args.num_classes is not None else len(dataset.classes)
    if num_classes < 2:
        raise ValueError(f"--num-classes: must be >= 2, got {num_classes}")
    if args.start >= len(dataset):
        raise ValueError(f"--start: must be < the dataset size {len(dataset)}, got {args.start}")
    check_num_classes(model, dataset[args.start][0], num_classes)
    if not args.sequential and (args.target_radius is not None or args.radius_tol != 0.01):
        raise ValueError("--target-radius/--radius-tol: only with --sequential")
    if args.sequential and args.first_order:
        raise ValueError("--first-order: cannot be combined with --sequential (the gradient bounds are fixed-n "
                         "bounds, not valid under optional stopping)")
    if args.overwrite and args.resume:
        raise ValueError("--overwrite: only with --no-resume (it deletes the rows already in --out)")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_name).stem)
    out = Path(args.out) if args.out else Path("runs") / f"smooth_{stem}_sigma{sigma:g}"
    smooth = Smooth(model, num_classes=num_classes, sigma=sigma)
    with terminate_as_interrupt():
        report = certify_dataset(
            smooth, dataset, out=out, resume=args.resume, overwrite=args.overwrite, n_select=args.n_select,
            n_estimate=args.n_estimate, alpha=args.alpha, batch_size=args.batch_size, seed=args.seed,
            first_order=args.first_order, start=args.start, skip=args.skip, max_examples=args.max_examples,
            verbose=not args.quiet, checkpoint=model_name, dataset_name=dataset.name,
            sequential=args.sequential, target_radius=args.target_radius, radius_tol=args.radius_tol)
    print_report(report, out)
    return 0
