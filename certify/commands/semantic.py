"""``certify semantic``: verify semantic perturbations (hue, rotation, ...) over a dataset.

Examples::

    certify semantic --pretrained fmnist_cnn --perturbation brightness,contrast,rotation --max 20 --out runs/sem
    certify semantic --pretrained color_cnn --data color-fmnist --perturbation hue,saturation,lightness \\
        --max-param hue=30,saturation=0.2 --out runs/sem_color
    certify semantic --checkpoint model.pt --arch fmnist_cnn --data fmnist --perturbation rotation \\
        --max-param 10 --fill 0 --method alpha-crown --out runs/rot
    certify semantic --pretrained fmnist_cnn --perturbation brightness --max-param 0.2 --max 10000 \
        --image-batch 32 --out runs/b

Writes ``rows.tsv`` (one row per example, family and parameter; appended and fsync'ed as it goes),
``run.json`` (settings), ``summary.json``, ``report.md``, ``semantic_accuracy.png`` (certified /
attack-free accuracy vs parameter range), ``semantic_ranges.png`` (histogram of the certified ranges) and
``semantic_examples.png`` (one image under its certified extremes per family). A run in ``--out`` is
resumed by default (same settings required; ``--max`` may grow); ``--no-resume --overwrite`` starts over;
a second run on the same ``--out`` while one is working in it stops with an error.
"""
from __future__ import annotations

import argparse
import json
import logging

from certify.commands import _common
from certify.commands._common import add_model_arguments, add_run_arguments, nonnegative_int, positive_int
from certify.devices import add_device_argument, device_from_args
from certify.distributed import ModelSource, add_workers_arguments, workers_from_args

logger = logging.getLogger(__name__)

HELP = "semantic perturbation verification (auto_LiRPA over semantic layers): certified vs attack ranges"


def _max_param(text: str):
    """'0.1' (every family [-0.1, 0.1]), 'lo:hi', or 'hue=30,rotation=-5:10,brightness_contrast=0.1:0.2'."""
    def one(value: str):
        value = value.strip()
        if ":" in value:
            parts = value.split(":")
            if len(parts) != 2:
                raise argparse.ArgumentTypeError(f"expected lo:hi, got {value!r}")
            return (float(parts[0]), float(parts[1]))
        return float(value)

    try:
        if "=" not in text:
            return one(text)
        out = {}
        for item in text.split(","):
            if not item.strip():
                continue
            name, _, value = item.partition("=")
            v = one(value)
            out[name.strip().lower()] = v
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad --max-param {text!r}: expected R, lo:hi or name=R[,name=lo:hi]") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", default=None,
                        help="dataset name or path (default: the pretrained model's dataset, else fashion-mnist)")
    parser.add_argument("--split", default="test", choices=("test", "train"), help="dataset split (default test)")
    parser.add_argument("--perturbation", default="brightness,contrast,rotation",
                        help="comma-separated families (semantic_layers.available()); "
                             "default brightness,contrast,rotation")
    parser.add_argument("--method", default="crown", choices=["crown", "alpha-crown", "ibp"])
    parser.add_argument("--baseline", default=None, choices=["linf-box", "linf-ball"],
                        help="bound the change as an l-inf pixel perturbation instead (naive baseline)")
    parser.add_argument("--max-param", type=_max_param, default=None,
                        help="requested range: R (= [-R, R]), lo:hi, or per family name=R,name=lo:hi "
                             "(default: each family's default range). For brightness_contrast, R1:R2 means "
                             "[-R1, R1] x [-R2, R2]. Write a negative start as --max-param=-5:10")
    parser.add_argument("--skip", type=positive_int, default=1, help="take every SKIP-th example (default 1)")
    parser.add_argument("--n-splits", type=positive_int, default=None,
                        help="initial sub-intervals per range (default 8; 32 for rotation)")
    parser.add_argument("--max-refine", type=nonnegative_int, default=None,
                        help="bisection levels of a failing sub-interval (default 4; 6 for rotation)")
    parser.add_argument("--attack-grid", type=positive_int, default=201,
                        help="parameter grid of the flip search (201)")
    parser.add_argument("--attack-steps", type=nonnegative_int, default=20,
                        help="gradient / bisection steps of the flip search")
    parser.add_argument("--no-attack", action="store_true", help="skip the flip search")
    parser.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=32,
                        help="parameter boxes per bound call (32)")
    parser.add_argument("--image-batch", type=positive_int, default=1,
                        help="images verified together in shared bound calls, for the families that allow it "
                             "(brightness; one parameter, method crown, no baseline); e.g. 32 for a test-set "
                             "run (default 1: one image at a time)")
    parser.add_argument("--pivot", default=None,
                        help="contrast / brightness_contrast pivot: 0.5 (default, Semantify-NN), 'mean' "
                             "(torchvision adjust_contrast) or 0 (pivot 0)")
    parser.add_argument("--fill", default=None,
                        help="rotation fill: 'none' (default, zero padding) or a number in [0, 1] "
                             "(torchvision's masked fill; 0 is RandomRotation's default)")
    add_run_arguments(parser)
    add_device_argument(parser)
    add_workers_arguments(parser)


def _family_options(name: str, args) -> dict:
    """--pivot / --fill as keyword options of the families that take them."""
    opts: dict = {}
    if args.pivot is not None and name in ("contrast", "brightness_contrast"):
        text = str(args.pivot).strip().lower()
        if text == "mean":
            opts["pivot"] = "mean"
        else:
            try:
                opts["pivot"] = float(text)
            except ValueError:
                raise ValueError(f"--pivot must be a number in [0, 1] or 'mean'; got {args.pivot!r}") from None
    if args.fill is not None and name == "rotation":
        text = str(args.fill).strip().lower()
        if text != "none":
            try:
                opts["fill"] = float(text)
            except ValueError:
                raise ValueError(f"--fill must be 'none' or a number in [0, 1]; got {args.fill!r}") from None
    return opts


def run(args) -> int:
    import semantic_layers
    from certify.semantic import semantic_report

    _common.check_resume_flags(args)
    workers, ray_address = workers_from_args(args)
    device = device_from_args(args, remote=ray_address is not None)
    names = [n.strip().lower() for n in args.perturbation.split(",") if n.strip()]
    if not names:
        raise ValueError("--perturbation needs at least one family name; available: "
                         f"{semantic_layers.available()}")
    perturbations = [semantic_layers.get(n, **_family_options(n, args)) for n in names]
    for flag, families in (("pivot", ("contrast", "brightness_contrast")), ("fill", ("rotation",))):
        if getattr(args, flag) is not None and not set(families) & set(names):
            raise ValueError(f"--{flag} applies to {', '.join(families)}, which --perturbation does not list")
    loaded = _common.load_model(args)
    dataset = _common.load_data(args.data or loaded.info.get("dataset") or "fashion-mnist", args.split)
    _common.check_model_and_data(loaded.model, dataset, num_classes=args.num_classes)
    out = _common.check_out(args.out or _common.default_out("semantic", loaded))
    report = semantic_report(
        loaded.model, dataset, perturbations, out=out, method=args.method, max_param=args.max_param,
        max_examples=args.max_examples, skip=args.skip, resume=args.resume, overwrite=args.overwrite,
        n_splits=args.n_splits, max_refine=args.max_refine, attack=not args.no_attack, attack_grid=args.attack_grid,
        attack_steps=args.attack_steps, batch_size=args.batch_size, seed=args.seed, baseline=args.baseline,
        verbose=not args.quiet, workers=workers, ray_address=ray_address, device=device,
        image_batch=args.image_batch,
        model_source=ModelSource.from_args(args) if workers else None)
    _common.add_to_run_json(out, _common.run_record(args, loaded, dataset))
    summary = report.summary()
    print(report.to_markdown())
    print(f"rows, summary and plots written to {out}")
    logger.debug("summary: %s", json.dumps(summary, default=str))
    _common.set_summary(args, {"out": str(out), **summary})
    return 0
