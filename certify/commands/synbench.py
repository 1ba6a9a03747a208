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

from certify.commands._common import (
    add_model_arguments,
    add_run_arguments,
    check_out,
    check_resume_flags,
    default_out,
    float_list,
    load_data,
    load_model,
    positive_float,
    positive_int,
    probability,
    run_record,
    set_summary,
    shape_arg,
)
from certify.devices import add_device_argument, device_from_args

logger = logging.getLogger(__name__)

HELP = "SynBench: score a representation against the Gaussian-mixture reference (robust probing, comparison)"

# input shapes of the datasets the zoo is trained on (used when --input-shape is not given)
_DATASET_SHAPES = {"fashion-mnist": (1, 28, 28), "fmnist": (1, 28, 28), "digits": (1, 8, 8),
                   "color-fmnist": (3, 32, 32)}
_ARCH_PREFIX_SHAPES = {"fmnist_": (1, 28, 28), "digits_": (1, 8, 8), "color_": (3, 32, 32)}
#: the smallest number of synthetic training samples per separation SynBench accepts
MIN_N_TRAIN = 8


#: run.json keys that must agree for a run to reuse the synbench.json already in --out
MATCH_KEYS = ("checkpoint", "model_fingerprint", "input_shape", "eps", "layer", "flatten", "n_train", "n_test",
              "separations", "pixel_mapping", "seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, num_classes=False)
    parser.add_argument("--layer", default="penultimate",
                        help="features to score: 'penultimate' (input of the last Linear layer, default), "
                             "'output' (the model output) or a sub-module name")
    parser.add_argument("--flatten", action="store_true", help="flatten (B, C, H, W) layer outputs per example")
    parser.add_argument("--input-shape", type=shape_arg, help="C,H,W of the model input (default: from the zoo info)")
    parser.add_argument("--eps", type=float_list, default=[0.0, 0.2],
                        help="relative robust budgets in [0, 1), comma-separated (default 0,0.2)")
    parser.add_argument("--a-t", type=probability, default=0.7,
                        help="threshold accuracy for the recommended eps, in (0, 1) (default 0.7)")
    parser.add_argument("--quick", action="store_true",
                        help="24 separations (0.2..4.8) and 512+512 samples instead of 49 and 2048+2048")
    parser.add_argument("--n-train", type=positive_int, default=None,
                        help=f"synthetic training samples per separation, >= {MIN_N_TRAIN} (default 2048, 512 with "
                             "--quick)")
    parser.add_argument("--n-test", type=positive_int, default=None,
                        help="synthetic test samples per separation (default 2048, 512 with --quick)")
    parser.add_argument("--pixel-mapping", default="official", choices=["official", "imagenet", "none", "clip"],
                        help="map from Gaussian samples to model input (default official: x + 0.5)")
    parser.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=512)
    add_device_argument(parser)
    parser.add_argument("--probe-dataset", metavar="NAME",
                        help="also run eps-robust linear probing on this dataset (certify.data.load_dataset)")
    parser.add_argument("--probe-eps", type=float_list, default=[0.0, 0.1, 0.2],
                        help="relative radii for robust probing (SynBench's recommended eps is added)")
    parser.add_argument("--probe-max", type=positive_int, default=None,
                        help="use at most this many training images (>= 2)")
    parser.add_argument("--compare", metavar="TSV", help="a radius report (rows.tsv or Cohen's log) to compare "
                                                         "with the Gaussian-mixture reference")
    parser.add_argument("--mixture-sigma", type=positive_float, default=1.0,
                        help="noise scale of the comparison mixture in pixel units (default 1, SynBench's)")
    add_run_arguments(parser, max_examples=False)


def _infer_shape(args, loaded) -> tuple[int, ...]:
    if args.input_shape:
        return tuple(args.input_shape)
    if getattr(loaded.model, "input_shape", None):
        return tuple(int(v) for v in loaded.model.input_shape)
    info = {"arch": loaded.arch, **loaded.info}
    if info.get("input_shape"):
        return tuple(int(v) for v in info["input_shape"])
    dataset = str(info.get("dataset", "")).lower()
    if dataset in _DATASET_SHAPES:
        return _DATASET_SHAPES[dataset]
    arch = str(info.get("arch") or "")
    for prefix, shape in _ARCH_PREFIX_SHAPES.items():
        if arch.startswith(prefix):
            return shape
    raise ValueError("--input-shape: required (cannot tell the model's input shape); pass C,H,W, e.g. 1,28,28")


def _check_encoder(model, shape: tuple[int, ...], layer: str | None, flatten: bool) -> None:
    """Run the features of two mid-grey inputs: the layer must exist and the model must take ``shape``."""
    import torch

    from certify import synbench as sb

    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(expected) != tuple(shape):
        raise ValueError(f"--input-shape {','.join(map(str, shape))}: the model takes {tuple(expected)}")
    try:
        sb.FeatureExtractor(model, layer=layer, flatten=flatten)._resolve(model, layer)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--layer: {exc}") from None
    try:
        sb.extract_features(model, torch.full((2, *shape), 0.5), layer=layer, flatten=flatten)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--layer/--flatten: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's model rejects the input shape
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ValueError(f"--input-shape {','.join(map(str, shape))}: the model cannot take inputs of this shape "
                         f"({type(exc).__name__}: {first})") from None


def _early_checks(args) -> None:
    """Everything that can be checked before the SynBench compute."""
    for flag, values in (("--eps", args.eps), ("--probe-eps", args.probe_eps)):
        bad = [v for v in values if not 0.0 <= v < 1.0]
        if bad:
            raise ValueError(f"{flag}: every value must lie in [0, 1), got {bad}")
    if args.n_train is not None and args.n_train < MIN_N_TRAIN:
        raise ValueError(f"--n-train: must be an integer >= {MIN_N_TRAIN}, got {args.n_train}")
    if args.probe_max is not None and args.probe_max < 2:
        raise ValueError(f"--probe-max: must be an integer >= 2, got {args.probe_max}")
    if args.probe_max is not None and not args.probe_dataset:
        raise ValueError("--probe-max: only with --probe-dataset")
    channels = {"imagenet": 3, "clip": 3}.get(args.pixel_mapping)
    if channels is not None and args.input_shape and args.input_shape[0] != channels:
        raise ValueError(f"--pixel-mapping {args.pixel_mapping}: normalises {channels} channels, --input-shape has "
                         f"{args.input_shape[0]}")


def _load_extras(args):
    """The probe datasets and the comparison report, loaded (and checked) before the compute."""
    train = test = report = None
    if args.probe_dataset:
        train = load_data(args.probe_dataset, "train", flag="--probe-dataset")
        test = load_data(args.probe_dataset, "test", flag="--probe-dataset")
        if args.probe_max is not None:
            train = train.subset(list(range(min(args.probe_max, len(train)))))
    if args.compare:
        from certify.reports import RadiusReport

        try:
            report = RadiusReport.from_tsv(args.compare)
        except (ValueError, TypeError, OSError) as exc:
            raise ValueError(f"--compare: {exc}") from None
    return train, test, report


def _settings(args, loaded, shape, layer) -> dict:
    from certify import synbench as sb
    from certify.rundir import model_fingerprint

    n_default = 512 if args.quick else 2048
    return {"checkpoint": loaded.name, "model_fingerprint": model_fingerprint(loaded.model), "input_shape": list(shape),
            "eps": list(args.eps), "layer": layer, "flatten": args.flatten,
            "n_train": n_default if args.n_train is None else args.n_train,
            "n_test": n_default if args.n_test is None else args.n_test,
            "separations": list(sb.QUICK_SEPARATIONS if args.quick else sb.DEFAULT_SEPARATIONS),
            "pixel_mapping": args.pixel_mapping, "seed": args.seed, "batch_size": args.batch_size}


def _reusable(args, settings: dict, out: Path) -> bool:
    """Whether ``out`` holds a SynBench result of the same settings to reuse (resume); refuses a mismatch."""
    from certify.rundir import ResumeMismatchError, settings_differences

    saved_path, run_json = out / "synbench.json", out / "run.json"
    if not (saved_path.is_file() and run_json.is_file()):
        return False
    if not args.resume:
        if not args.overwrite:
            raise ValueError(f"--no-resume: {out} already holds a SynBench result; drop --no-resume to reuse it or "
                             "add --overwrite to recompute it")
        return False
    diffs = settings_differences(json.loads(run_json.read_text()), settings, MATCH_KEYS)
    if diffs:
        raise ResumeMismatchError(run_json, diffs)
    return True


def _result(args, loaded, settings: dict, out: Path, reuse: bool):
    """SynBench of the model, or the one in ``out/synbench.json`` when ``reuse``."""
    from certify import synbench as sb

    if reuse:
        logger.info("reusing %s (same settings)", out / "synbench.json")
        return sb.SynBenchResult.load(out / "synbench.json")
    return sb.evaluate(
        loaded.model, tuple(settings["input_shape"]), tuple(args.eps), n_train=settings["n_train"],
        n_test=settings["n_test"], separations=tuple(settings["separations"]), batch_size=args.batch_size,
        seed=args.seed, layer=settings["layer"], flatten=args.flatten, pixel_mapping=args.pixel_mapping,
        device=device_from_args(args), name=loaded.stem, verbose=not args.quiet)


def run(args) -> int:
    from certify import synbench as sb
    from certify._jsonio import atomic_write_json, atomic_write_text
    from certify.rundir import open_run

    check_resume_flags(args)
    _early_checks(args)
    loaded = load_model(args)
    shape = _infer_shape(args, loaded)
    layer = None if args.layer == "output" else args.layer
    _check_encoder(loaded.model, shape, layer, args.flatten)
    train, test, report = _load_extras(args)
    out = check_out(args.out or default_out("synbench", loaded))
    settings = _settings(args, loaded, shape, layer)
    reuse = _reusable(args, settings, out)
    with open_run(out, settings={**settings, **run_record(args, loaded)}, match_keys=MATCH_KEYS) as rd:
        result = _result(args, loaded, settings, out, reuse)
        result.save(out / "synbench.json")
        result.plot(out / "synbench.png")
        text = [result.summary(), f"  recommended eps at a_T={args.a_t:g}: {result.best_eps(args.a_t):g}"]
        summary = {"out": str(out), "synbench": result.to_dict(), "recommended_eps": result.best_eps(args.a_t)}
        if train is not None:
            probe = sb.robust_probe(loaded.model, train, test, tuple(args.probe_eps), synbench=result, a_t=args.a_t,
                                    layer=layer, flatten=args.flatten, batch_size=args.batch_size, seed=args.seed,
                                    device=device_from_args(args), name=loaded.stem, verbose=not args.quiet)
            atomic_write_json(out / "probe.json", probe.to_dict())
            text.append(probe.summary())
            summary["probe"] = probe.to_dict()
        if report is not None:
            cmp = sb.compare(report, sigma=args.mixture_sigma)
            cmp.save(out / "compare.json")
            cmp.plot(out / "compare.png")
            text.append(cmp.summary())
            summary["compare"] = cmp.to_dict()
        atomic_write_text(rd.path / "summary.txt", "\n".join(text) + "\n")
    print("\n".join(text))
    print(f"wrote {out}/synbench.json, summary.txt, synbench.png, run.json"
          + (", probe.json" if train is not None else "") + (", compare.json, compare.png" if report else ""))
    set_summary(args, summary)
    return 0
