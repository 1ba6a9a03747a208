"""``certify predict``: the smoothed classifier's prediction with abstention (PREDICT of Cohen et al.) over a dataset.

Example::

    certify predict --pretrained fmnist_cnn_sigma0.25 --N 1000 --max 100 --skip 100 --out runs/predict
    certify predict --checkpoint model.pt --arch net.py:Net --data my.npz --sigma 0.25 --N 10000

Writes a resumable run directory (:mod:`certify.rundir`): ``run.json`` (settings, command line, checkpoint
SHA-256, versions), ``rows.tsv`` with Cohen's columns ``idx label predict correct time`` (``predict`` is -1
when the prediction abstains) plus ``abstained`` and ``p_value`` (and ``file`` for an image folder), and
``summary.json`` (accuracy and abstention rate). Each example's noise is seeded by
:func:`certify.runs.example_seed` ``(seed, idx)``, so a resumed run writes the same rows.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from certify.commands._common import (
    add_model_arguments,
    add_run_arguments,
    add_smoothing_data_arguments,
    nonnegative_int,
    positive_int,
    prepare_smoothing,
    probability,
    set_summary,
)
from certify.devices import add_device_argument, device_from_args

HELP = "predict with a Gaussian-smoothed classifier over a dataset, abstaining when unsure (Cohen et al.)"

#: run.json keys that must agree between a run and its resumption (they determine the rows)
MATCH_KEYS = ("sigma", "n", "alpha", "seed", "batch_size", "num_classes", "checkpoint", "model_fingerprint",
              "dataset", "dataset_fingerprint", "seed_scheme", "device_type")
SUMMARY_FILE = "summary.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_smoothing_data_arguments(p)
    p.add_argument("--n", "--N", dest="n", type=positive_int, default=10_000, metavar="N",
                   help="noise samples per example (default 10,000)")
    p.add_argument("--alpha", type=probability, default=0.001,
                   help="bound on the probability of returning a wrong (non-abstaining) prediction (default 0.001)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=1000, metavar="B",
                   help="noisy images per forward pass (default 1000)")
    p.add_argument("--start", type=nonnegative_int, default=0, help="first example index (default 0)")
    p.add_argument("--skip", type=positive_int, default=1, help="take every SKIP-th example (default 1)")
    add_run_arguments(p, seed_help="base seed; example idx uses a seed derived from (seed, idx) (default 0)")
    add_device_argument(p)


def summarize(rows: list[dict[str, str]], settings: dict[str, Any]) -> dict[str, Any]:
    """Accuracy (abstentions count as wrong), abstention rate and accuracy of the non-abstained predictions."""
    n = len(rows)
    correct = sum(int(r["correct"]) for r in rows)
    abstained = sum(int(r["abstained"]) for r in rows)
    answered = n - abstained
    return {
        "n_examples": n,
        "accuracy": correct / n if n else float("nan"),
        "abstain_rate": abstained / n if n else float("nan"),
        "accuracy_when_answered": correct / answered if answered else float("nan"),
        "mean_time_s": sum(float(r["time"]) for r in rows) / n if n else float("nan"),
        **{k: settings.get(k) for k in ("sigma", "n", "alpha", "seed", "num_classes", "checkpoint", "dataset")},
    }


def _predict_rows(smooth, dataset, todo: list[int], settings: dict[str, Any], run, *, verbose: bool,
                  already: int) -> None:
    from certify._progress import progress
    from certify.runs import example_seed

    files = getattr(dataset, "files", ())
    with progress(total=len(todo) + already, initial=already, unit="img", desc="predict", enabled=verbose) as bar:
        for idx in todo:
            x, label = dataset[idx]
            t0 = time.perf_counter()
            pred = smooth.predict(x, n=settings["n"], alpha=settings["alpha"], batch_size=settings["batch_size"],
                                  seed=example_seed(settings["seed"], idx))
            row = {"idx": idx, "label": int(label), "predict": -1 if pred.abstained else pred.label,
                   "correct": (not pred.abstained) and pred.label == int(label), "time": time.perf_counter() - t0,
                   "abstained": pred.abstained, "p_value": pred.p_value}
            if files:
                row["file"] = files[idx]
            run.append(row)
            bar.update(1)


def run(args: argparse.Namespace) -> int:
    from certify._jsonio import atomic_write_json
    from certify.rundir import (
        dataset_fingerprint,
        model_fingerprint,
        open_run,
        read_rows_file,
        terminate_as_interrupt,
    )
    from certify.runs import SEED_SCHEME, select_indices
    from certify.smoothing import Smooth

    device = device_from_args(args)
    job = prepare_smoothing(args, "predict")
    dataset, out = job["dataset"], job["out"]
    indices = select_indices(len(dataset), start=args.start, skip=args.skip, max_examples=args.max_examples)
    smooth = Smooth(job["loaded"].model, num_classes=job["num_classes"], sigma=job["sigma"], device=device)
    settings = {
        "sigma": job["sigma"], "n": args.n, "alpha": args.alpha, "seed": args.seed, "batch_size": args.batch_size,
        "num_classes": job["num_classes"], "checkpoint": job["loaded"].name,
        "model_fingerprint": model_fingerprint(job["loaded"].model), "dataset": dataset.name,
        "dataset_fingerprint": dataset_fingerprint(dataset), "seed_scheme": SEED_SCHEME, "device_type": device.type,
        "start": args.start, "skip": args.skip, "max_examples": args.max_examples, **job["record"],
    }
    with terminate_as_interrupt(), open_run(out, settings=settings, match_keys=MATCH_KEYS, resume=args.resume,
                                            overwrite=args.overwrite, artifacts=(SUMMARY_FILE,)) as rd:
        done = rd.done_ints("idx")
        todo = [i for i in indices if i not in done]
        _predict_rows(smooth, dataset, todo, rd.settings, rd, verbose=not args.quiet,
                      already=len(indices) - len(todo))
        rows = read_rows_file(rd.rows_path)[2] if rd.rows_path.is_file() else []
        atomic_write_json(out / "run.json", {**rd.settings, "n_rows": len(rows)})
    summary = summarize(rows, settings)
    atomic_write_json(out / SUMMARY_FILE, summary)
    print(f"{summary['n_examples']} examples: accuracy {summary['accuracy']:.3f}, abstain rate "
          f"{summary['abstain_rate']:.3f}, {summary['mean_time_s']:.2f} s/example (sigma {job['sigma']:g}, "
          f"N {args.n:,}, alpha {args.alpha:g})\nwrote {out}/rows.tsv, run.json, summary.json")
    set_summary(args, {"out": str(out), **summary})
    return 0
