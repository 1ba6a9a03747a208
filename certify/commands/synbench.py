"""``certify synbench``: score a model's representation with SynBench (and optionally probe / compare).

Examples::

    certify synbench --pretrained fmnist_cnn --out runs/synbench            # penultimate features
    certify synbench --checkpoint model.pt --arch fmnist_cnn --layer output --eps 0,0.1,0.2 --out runs/sb
    certify synbench --pretrained fmnist_cnn --quick --probe-dataset fashion-mnist --out runs/sb
    certify synbench --pretrained fmnist_cnn --compare runs/smooth/rows.tsv --out runs/sb

Writes ``synbench.json`` (the full :class:`certify.synbench.SynBenchResult`), ``summary.txt``,
``synbench.png``; with ``--probe-dataset`` also ``probe.json``; with ``--compare`` also
``compare.json`` and ``compare.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from certify.devices import add_device_argument, device_from_args

logger = logging.getLogger(__name__)

HELP = "SynBench: score a representation against the Gaussian-mixture reference (robust probing, comparison)"

# input shapes of the datasets the zoo is trained on (used when --input-shape is not given)
_DATASET_SHAPES = {"fashion-mnist": (1, 28, 28), "fmnist": (1, 28, 28), "digits": (1, 8, 8),
                   "color-fmnist": (3, 32, 32)}
_ARCH_PREFIX_SHAPES = {"fmnist_": (1, 28, 28), "digits_": (1, 8, 8), "color_": (3, 32, 32)}


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W, got {text!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"expected positive C,H,W, got {text!r}")
    return shape


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="model file (state_dict for --arch, or TorchScript / torch.export)")
    src.add_argument("--pretrained", metavar="NAME", help="a shipped zoo checkpoint (certify.models.available_pretrained())")
    parser.add_argument("--arch", help="architecture of --checkpoint: a zoo name or path/to/file.py:ClassName")
    parser.add_argument("--trust", action="store_true", help="allow unpickling arbitrary objects from --checkpoint")
    parser.add_argument("--layer", default="penultimate",
                        help="features to score: 'penultimate' (input of the last Linear layer, default), "
                             "'output' (the model output) or a sub-module name")
    parser.add_argument("--flatten", action="store_true", help="flatten (B, C, H, W) layer outputs per example")
    parser.add_argument("--input-shape", type=_shape, help="C,H,W of the model input (default: from the zoo info)")
    parser.add_argument("--eps", type=_float_list, default=[0.0, 0.2],
                        help="relative robust budgets in [0, 1), comma-separated (default 0,0.2)")
    parser.add_argument("--a-t", type=float, default=0.7, help="threshold accuracy for the recommended eps (0.7)")
    parser.add_argument("--quick", action="store_true",
                        help="24 separations (0.2..4.8) and 512+512 samples instead of 49 and 2048+2048")
    parser.add_argument("--n-train", type=int, default=None, help="synthetic training samples per separation (2048)")
    parser.add_argument("--n-test", type=int, default=None, help="synthetic test samples per separation (2048)")
    parser.add_argument("--pixel-mapping", default="official", choices=["official", "imagenet", "none", "clip"],
                        help="map from Gaussian samples to model input (default official: x + 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=512)
    add_device_argument(parser)
    parser.add_argument("--probe-dataset", metavar="NAME",
                        help="also run eps-robust linear probing on this dataset (certify.data.load_dataset)")
    parser.add_argument("--probe-eps", type=_float_list, default=[0.0, 0.1, 0.2],
                        help="relative radii for robust probing (SynBench's recommended eps is added)")
    parser.add_argument("--probe-max", type=int, default=None, help="use at most this many training images")
    parser.add_argument("--compare", metavar="TSV", help="a radius report (rows.tsv or Cohen's log) to compare "
                                                         "with the Gaussian-mixture reference")
    parser.add_argument("--mixture-sigma", type=float, default=1.0,
                        help="noise scale of the comparison mixture in pixel units (default 1, SynBench's)")
    parser.add_argument("--out", required=True, help="output directory")


def _load_model(args) -> tuple[object, dict, str]:
    from certify import models

    if args.pretrained:
        model = models.pretrained(args.pretrained)
        info = dict(models.pretrained_info(args.pretrained))
        return model, info, args.pretrained
    from certify.checkpoints import load_checkpoint

    model = load_checkpoint(args.checkpoint, arch=args.arch, trust=args.trust)
    return model, {"arch": args.arch}, Path(args.checkpoint).stem


def _infer_shape(args, info: dict) -> tuple[int, ...]:
    if args.input_shape:
        return tuple(args.input_shape)
    if info.get("input_shape"):
        return tuple(int(v) for v in info["input_shape"])
    dataset = str(info.get("dataset", "")).lower()
    if dataset in _DATASET_SHAPES:
        return _DATASET_SHAPES[dataset]
    arch = str(info.get("arch") or "")
    for prefix, shape in _ARCH_PREFIX_SHAPES.items():
        if arch.startswith(prefix):
            return shape
    raise ValueError("cannot tell the model's input shape; pass --input-shape C,H,W")


def run(args) -> int:
    from certify import synbench as sb

    device = device_from_args(args)
    if args.checkpoint and not args.arch:
        logger.info("no --arch given: %s must be a TorchScript / torch.export file", args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, info, label = _load_model(args)
    shape = _infer_shape(args, info)
    layer = None if args.layer == "output" else args.layer
    verbose = not args.quiet
    n_default = 512 if args.quick else 2048
    result = sb.evaluate(
        model, shape, tuple(args.eps), n_train=args.n_train or n_default, n_test=args.n_test or n_default,
        separations=sb.QUICK_SEPARATIONS if args.quick else sb.DEFAULT_SEPARATIONS, batch_size=args.batch_size,
        seed=args.seed, layer=layer, flatten=args.flatten, pixel_mapping=args.pixel_mapping,
        device=device, name=label, verbose=verbose)
    result.save(out / "synbench.json")
    result.plot(out / "synbench.png")
    text = [result.summary(), f"  recommended eps at a_T={args.a_t:g}: {result.best_eps(args.a_t):g}"]

    if args.probe_dataset:
        from certify.data import load_dataset

        train = load_dataset(args.probe_dataset, split="train")
        test = load_dataset(args.probe_dataset, split="test")
        if args.probe_max is not None:
            if args.probe_max < 2:
                raise ValueError(f"--probe-max must be >= 2, got {args.probe_max}")
            train = train.subset(list(range(min(args.probe_max, len(train)))))
        probe = sb.robust_probe(model, train, test, tuple(args.probe_eps), synbench=result, a_t=args.a_t,
                                layer=layer, flatten=args.flatten, batch_size=args.batch_size, seed=args.seed,
                                device=device, name=label, verbose=verbose)
        (out / "probe.json").write_text(json.dumps(probe.to_dict(), indent=1))
        text.append(probe.summary())

    if args.compare:
        from certify.reports import RadiusReport

        report = RadiusReport.from_tsv(args.compare)
        cmp = sb.compare(report, sigma=args.mixture_sigma)
        cmp.save(out / "compare.json")
        cmp.plot(out / "compare.png")
        text.append(cmp.summary())

    summary = "\n".join(text)
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)
    print(f"wrote {out}/synbench.json, summary.txt, synbench.png"
          + (", probe.json" if args.probe_dataset else "") + (", compare.json, compare.png" if args.compare else ""))
    return 0
