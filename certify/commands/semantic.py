"""``certify semantic``: verify semantic perturbations (hue, rotation, ...) over a dataset.

Examples::

    certify semantic --pretrained fmnist_cnn --perturbation brightness,contrast,rotation --max 20 --out runs/sem
    certify semantic --pretrained color_cnn --data color-fmnist --perturbation hue,saturation,lightness \\
        --max-param hue=30,saturation=0.2 --out runs/sem_color
    certify semantic --checkpoint model.pt --arch fmnist_cnn --data fmnist --perturbation rotation \\
        --max-param 10 --fill 0 --method alpha-crown --out runs/rot
    certify semantic --pretrained fmnist_cnn --perturbation brightness --max-param 0.2 --max 10000 --out runs/b

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

from certify.distributed import add_workers_arguments, workers_from_args

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
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="model file (state_dict for --arch, or TorchScript / torch.export)")
    src.add_argument("--pretrained", metavar="NAME",
                     help="a shipped zoo checkpoint (certify.models.available_pretrained())")
    parser.add_argument("--arch", help="architecture of --checkpoint: a zoo name or path/to/file.py:ClassName")
    parser.add_argument("--trust", action="store_true", help="allow unpickling arbitrary objects from --checkpoint")
    parser.add_argument("--data", default=None,
                        help="dataset name or path (default: the pretrained model's dataset, else fashion-mnist)")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
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
    parser.add_argument("--max", dest="max_examples", type=int, default=None, help="certify at most N examples")
    parser.add_argument("--skip", type=int, default=1, help="take every SKIP-th example (default 1)")
    parser.add_argument("--n-splits", type=int, default=8, help="initial sub-intervals per range (default 8)")
    parser.add_argument("--max-refine", type=int, default=4, help="bisections of a failing sub-interval (default 4)")
    parser.add_argument("--attack-grid", type=int, default=1001, help="parameter grid of the flip search (1001)")
    parser.add_argument("--attack-steps", type=int, default=20, help="gradient / bisection steps of the flip search")
    parser.add_argument("--no-attack", action="store_true", help="skip the flip search")
    parser.add_argument("--batch-size", type=int, default=32, help="parameter boxes per bound call (32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pivot", default=None,
                        help="contrast / brightness_contrast pivot: 0.5 (default, Semantify-NN), 'mean' "
                             "(torchvision adjust_contrast) or 0 (pivot 0)")
    parser.add_argument("--fill", default=None,
                        help="rotation fill: 'none' (default, zero padding) or a number in [0, 1] "
                             "(torchvision's masked fill; 0 is RandomRotation's default)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue the run in --out, skipping finished examples (default: on; settings "
                             "must match)")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --no-resume: delete the rows already in --out and start over")
    add_workers_arguments(parser)


def _load_model(args):
    from certify import models

    if args.pretrained:
        model = models.pretrained(args.pretrained)
        info = dict(models.pretrained_info(args.pretrained))
        return model, info
    from certify.checkpoints import load_checkpoint

    return load_checkpoint(args.checkpoint, arch=args.arch, trust=args.trust), {}


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
    from certify import data
    from certify.semantic import semantic_report

    names = [n.strip().lower() for n in args.perturbation.split(",") if n.strip()]
    if not names:
        raise ValueError("--perturbation needs at least one family name; available: "
                         f"{semantic_layers.available()}")
    perturbations = [semantic_layers.get(n, **_family_options(n, args)) for n in names]
    for flag, families in (("pivot", ("contrast", "brightness_contrast")), ("fill", ("rotation",))):
        if getattr(args, flag) is not None and not set(families) & set(names):
            raise ValueError(f"--{flag} applies to {', '.join(families)}, which --perturbation does not list")
    if args.overwrite and args.resume:
        raise ValueError("--overwrite: only with --no-resume (it deletes the rows already in --out)")
    workers, ray_address = workers_from_args(args)
    model, info = _load_model(args)
    source = None
    if workers is not None:
        from certify.distributed import ModelSource

        source = ModelSource(pretrained=args.pretrained, checkpoint=args.checkpoint, arch=args.arch, trust=args.trust)
    dataset_name = args.data or info.get("dataset") or "fashion-mnist"
    dataset = data.load_dataset(dataset_name, split=args.split)
    report = semantic_report(
        model, dataset, perturbations, out=args.out, method=args.method, max_param=args.max_param,
        max_examples=args.max_examples, skip=args.skip, resume=args.resume, overwrite=args.overwrite,
        n_splits=args.n_splits,
        max_refine=args.max_refine, attack=not args.no_attack, attack_grid=args.attack_grid,
        attack_steps=args.attack_steps, batch_size=args.batch_size, seed=args.seed, baseline=args.baseline,
        verbose=not getattr(args, "quiet", False), workers=workers, ray_address=ray_address, model_source=source)
    summary = report.summary()
    if not getattr(args, "quiet", False):
        print(report.to_markdown())
        print(f"rows, summary and plots written to {args.out}")
    logger.debug("summary: %s", json.dumps(summary, default=str))
    return 0
