"""Resumable certification of a dataset with a smoothed classifier.

:func:`certify_dataset` certifies the examples ``start, start + skip, ...`` (at most ``max_examples``)
of a dataset and, with ``out=DIR``, keeps a run directory:

* ``run.json``: every setting that determines the rows (sigma, n_select, n_estimate, alpha, seed,
  batch_size, first_order, num_classes, checkpoint, dataset, fingerprints of the model weights and of
  the dataset) plus the example selection and library versions; written before the first row;
* ``rows.tsv``: one line per example (:mod:`certify.reports` format), appended, flushed and fsync'ed
  as soon as the example is done, so a killed run loses at most the example in flight;
* at the end ``summary.json``, ``report.md``, ``certified_accuracy.png`` and ``samples_used.png`` (ECDF of
  the estimation samples per example), rendered from rows.tsv, so they cover every row in the directory.

Resuming (``resume=True``, the default) re-reads run.json and refuses (ValueError naming each
differing setting) when the settings differ, so rows from different settings never mix; a truncated
last line is cut off; examples already in rows.tsv are skipped. Each example's noise is seeded by
:func:`example_seed` ``(seed, idx)``, independent of the order or the other examples, so a resumed
run writes the same rows as an uninterrupted one (up to the ``time`` column).

Example::

    >>> import certify
    >>> from certify.data import load_dataset
    >>> smooth = certify.Smooth(certify.models.pretrained("fmnist_cnn_sigma0.25"), 10, 0.25)
    >>> report = certify.certify_dataset(smooth, load_dataset("fmnist"), out="runs/x", n_select=100,
    ...                                  n_estimate=10_000, alpha=0.001, skip=100)      # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from certify._jsonio import atomic_write_json, atomic_write_text
from certify._modes import eval_mode
from certify._progress import progress
from certify.reports import ROW_COLUMNS, RadiusReport, row_from_certificate
from certify.rundir import (
    ROWS_FILE,
    RUN_FILE,
    dataset_fingerprint,
    model_fingerprint,
    open_run,
    terminate_as_interrupt,
    versions,
)
from certify.smoothing import SAMPLE_CHUNK

logger = logging.getLogger(__name__)

__all__ = [
    "certify_dataset",
    "certify_one",
    "example_seed",
    "load_run",
    "render_run",
    "select_indices",
    "terminate_as_interrupt",
    "model_fingerprint",
    "dataset_fingerprint",
    "ROWS_FILE",
    "RUN_FILE",
]

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PLOT_FILE = "certified_accuracy.png"
SAMPLES_PLOT_FILE = "samples_used.png"
PER_CLASS_PLOT_FILE = "per_class.png"
#: run.json keys that must agree between a run and its resumption (they determine the rows)
MATCH_KEYS = ("sigma", "n_select", "n_estimate", "alpha", "seed", "batch_size", "first_order", "num_classes",
              "checkpoint", "model_fingerprint", "dataset", "dataset_fingerprint", "seed_scheme", "sound",
              "device_type", "sequential", "target_radius", "radius_tol")
SEED_SCHEME = f"numpy.SeedSequence([seed, idx]) -> uint64 >> 1; noise streams in chunks of {SAMPLE_CHUNK}"


def example_seed(seed: int, idx: int) -> int:
    """The noise seed of example ``idx`` in a run with ``seed``.

    ``numpy.random.SeedSequence([seed, idx])`` hashed to a 63-bit integer: deterministic across
    platforms and numpy versions, independent of which other examples are certified.

    >>> example_seed(0, 0) == example_seed(0, 0), example_seed(0, 0) != example_seed(0, 1)
    (True, True)
    """
    if seed < 0 or idx < 0:
        raise ValueError(f"seed and idx must be >= 0, got seed={seed}, idx={idx}")
    state = np.random.SeedSequence([int(seed), int(idx)]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def select_indices(n: int, *, start: int = 0, skip: int = 1, max_examples: int | None = None) -> list[int]:
    """Indices ``start, start + skip, ...`` below n, at most ``max_examples`` of them."""
    for name, value, minimum in (("start", start, 0), ("skip", skip, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, (int, np.integer))
                                     or max_examples < 1):
        raise ValueError(f"max_examples must be an int >= 1 or None, got {max_examples!r}")
    if start >= n:
        raise ValueError(f"start must be < the dataset size {n}, got {start}")
    idx = list(range(int(start), n, int(skip)))
    return idx if max_examples is None else idx[: int(max_examples)]


def load_run(run_dir: str | os.PathLike, **metadata: Any) -> RadiusReport:
    """The :class:`RadiusReport` of a run directory (rows.tsv + the settings in run.json).

    ``metadata`` overrides report fields (e.g. ``name=``). Rows are sorted by idx.
    """
    run_dir = Path(run_dir)
    rows = run_dir / ROWS_FILE
    if not rows.is_file():
        raise FileNotFoundError(f"{run_dir} is not a certify run directory: no {ROWS_FILE}")
    settings: dict[str, Any] = {}
    run_json = run_dir / RUN_FILE
    if run_json.is_file():
        settings = json.loads(run_json.read_text())
    report = RadiusReport.from_tsv(rows, format="certify")
    frame = report.rows.sort_values("idx", kind="stable").reset_index(drop=True)
    meta = _report_meta(settings)
    meta.update(metadata)
    return RadiusReport(frame, **meta)


def _report_meta(settings: dict) -> dict:
    meta = {k: settings.get(k) for k in ("sigma", "n_select", "n_estimate", "alpha", "seed", "dataset",
                                         "num_classes")}
    meta["model"] = settings.get("checkpoint")
    meta["first_order"] = settings.get("first_order")
    shape = settings.get("input_shape")
    meta["input_shape"] = tuple(shape) if shape else None
    meta["extra"] = {k: settings[k] for k in ("batch_size", "start", "skip", "max_examples", "versions",
                                             "model_fingerprint", "dataset_fingerprint", "split", "sequential",
                                             "target_radius", "radius_tol") if k in settings}
    meta["source"] = "certify"
    return {k: v for k, v in meta.items() if v is not None}


def render_run(run_dir: str | os.PathLike, *, others: Sequence[RadiusReport] = (),
               labels: Sequence[str] | None = None) -> RadiusReport:
    """(Re-)write summary.json, report.md and certified_accuracy.png of a run from its rows.tsv."""
    run_dir = Path(run_dir)
    report = load_run(run_dir)
    if len(report) == 0:
        raise ValueError(f"{run_dir}/{ROWS_FILE} has no rows yet")
    atomic_write_json(run_dir / SUMMARY_FILE, report.summary())
    atomic_write_text(run_dir / REPORT_FILE, report.to_markdown())
    report.plot(run_dir / PLOT_FILE, others=others, labels=labels)
    report.plot_per_class(run_dir / PER_CLASS_PLOT_FILE)
    if "n_used" in report.rows.columns:
        report.plot_samples(run_dir / SAMPLES_PLOT_FILE)
    return report


def certify_dataset(smooth: Any, dataset: Any, *, out: str | os.PathLike | None = None, resume: bool = True,
                    n_select: int, n_estimate: int, alpha: float, batch_size: int = 1000, seed: int = 0,
                    first_order: bool = False, skip: int = 1, max_examples: int | None = None, start: int = 0,
                    verbose: bool = True, checkpoint: str | None = None, dataset_name: str | None = None,
                    overwrite: bool = False, render: bool = True,
                    record: Mapping[str, Any] | None = None, device: str | torch.device | None = None,
                    workers: int | None = None, ray_address: str | None = None,
                    model_source: Any = None, sequential: bool = False,
                    target_radius: float | None = None, radius_tol: float = 0.01,
                    sample_chunks: bool = False) -> RadiusReport:
    """Certify examples of ``dataset`` with ``smooth.certify`` and collect a :class:`RadiusReport`.

    Args:
        smooth: a :class:`certify.smoothing.Smooth` (anything with ``certify``, ``sigma``, ``num_classes``).
        dataset: indexable, ``len`` and ``dataset[i] -> (x, label)`` (e.g. :class:`certify.data.ImageDataset`).
        out: run directory (see module docstring); None keeps everything in memory.
        resume: continue a run in ``out`` (settings must match). With ``resume=False`` an existing
            run is an error unless ``overwrite=True``, which deletes its rows first.
        n_select, n_estimate, alpha, batch_size, seed, first_order, sequential, target_radius, radius_tol:
            passed to ``smooth.certify``
            (the seed of example idx is :func:`example_seed` ``(seed, idx)``).
        skip, max_examples, start: which examples (:func:`select_indices`); may change on resume.
        verbose: tqdm progress bar (examples done, rate, ETA; off when not a TTY).
        checkpoint, dataset_name: names recorded in run.json (default: the model's
            ``checkpoint_name`` / the dataset's ``name``).
        render: write summary.json, report.md and the plot at the end.
        record: extra facts for run.json that do not determine the rows (command line, checkpoint SHA-256,
            class mapping, ...); run.json also gets ``n_rows``, the rows in the directory after this call.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a ``torch.device`` (:func:`certify.devices.resolve_device`)
            where the model runs and the noise is drawn; default: ``smooth``'s device. The noise stream depends
            on the device type, which run.json records (a run resumes only on the same type).
        workers: certify on this many Ray actors (:mod:`certify.distributed`; needs ``pip install ray``);
            None (default) certifies in this process and never imports Ray. The rows are the same either way.
        ray_address: the Ray cluster to use (``host:port`` of ``ray start --head``, or ``"auto"``); None
            starts a local Ray instance for the run (only with ``workers``).
        model_source: a :class:`certify.distributed.ModelSource` each worker loads the model from; default:
            the model object itself, pickled by Ray (its class must be importable on the workers).
        sample_chunks: with ``workers``, also split each example's n_estimate samples into chunks of
            :data:`certify.smoothing.SAMPLE_CHUNK` sampled as separate tasks (several workers on one example; the
            driver sums the counts before the Clopper-Pearson bound). Zeroth-order fixed-n certificates only.
            The rows are the same as without it (every stream is seeded chunk by chunk either way); their
            ``time`` is the sum of the chunks' times.

    Returns:
        The report of every row in ``out/rows.tsv`` (sorted by idx), or of this call's rows when
        ``out`` is None.

    Raises:
        ValueError: bad settings, resume with different settings, rows of another run in ``out``,
            ``workers`` without Ray installed, an unreachable ``ray_address``, a model the workers cannot load.
    """
    from certify.smoothing import _validate  # the one place budgets are validated

    v = _validate(alpha=alpha, seed=seed, n_select=n_select, n_estimate=n_estimate, batch_size=batch_size,
                  target_radius=target_radius, radius_tol=radius_tol)
    for name, flag in (("first_order", first_order), ("sequential", sequential), ("resume", resume),
                       ("verbose", verbose), ("overwrite", overwrite), ("render", render),
                       ("sample_chunks", sample_chunks)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if not hasattr(smooth, "certify"):
        raise TypeError(f"smooth must have a certify method (certify.Smooth), got {type(smooth).__name__}")
    parallel = None
    if workers is not None or ray_address is not None or model_source is not None:
        from certify.distributed import check_parallel

        parallel = check_parallel(workers, ray_address, model_source)
    if sample_chunks:
        if parallel is None:
            raise ValueError("sample_chunks: only used with workers= (chunks of one example go to several Ray "
                             "workers)")
        if first_order or sequential:
            raise ValueError("sample_chunks: only for zeroth-order fixed-n certificates (first_order=False, "
                             "sequential=False): first-order sums and sequential stopping need one example's "
                             "samples in one process")
        parallel["sample_chunks"] = True
    smooth, device_type = _on_device(smooth, device, local=parallel is None or ray_address is None)
    try:
        n_total = len(dataset)
    except TypeError:
        raise TypeError(f"dataset must support len() and indexing, got {type(dataset).__name__}") from None
    indices = select_indices(n_total, start=start, skip=skip, max_examples=max_examples)
    _check_labels(dataset, indices, int(smooth.num_classes))
    model = getattr(smooth, "model", None)
    x0, _ = dataset[indices[0]]
    settings = {
        "sigma": float(smooth.sigma),
        "n_select": v["n_select"],
        "n_estimate": v["n_estimate"],
        "alpha": v["alpha"],
        "seed": v["seed"],
        "batch_size": v["batch_size"],
        "first_order": first_order,
        "num_classes": int(smooth.num_classes),
        "checkpoint": checkpoint if checkpoint is not None else getattr(model, "checkpoint_name", None),
        "model_fingerprint": model_fingerprint(model),
        "dataset": dataset_name if dataset_name is not None else getattr(dataset, "name", type(dataset).__name__),
        "dataset_fingerprint": dataset_fingerprint(dataset),
        "dataset_size": n_total,
        "input_shape": list(torch.as_tensor(x0).shape),
        "seed_scheme": SEED_SCHEME,
        **({"sound": True} if getattr(smooth, "sound", False) else {}),
        "device_type": device_type,
        "start": int(start),
        "skip": int(skip),
        "max_examples": max_examples,
        "workers": workers,
        "ray_address": ray_address,
        **({"sample_chunks": True} if sample_chunks else {}),
        "versions": versions(),
        **{k: v for k, v in (record or {}).items() if k not in MATCH_KEYS},
    }
    if sequential:  # absent for fixed-n runs, so their run.json (and resumption) is unchanged
        settings.update(sequential=True, target_radius=v.get("target_radius"), radius_tol=v["radius_tol"])
    if out is None:
        rows = _certify_rows(smooth, dataset, indices, settings, writer=None, verbose=verbose, parallel=parallel)
        return RadiusReport(rows if rows else [], **_report_meta(settings))

    with open_run(out, settings=settings, match_keys=MATCH_KEYS, resume=resume, overwrite=overwrite,
                  artifacts=(SUMMARY_FILE, REPORT_FILE, PLOT_FILE, PER_CLASS_PLOT_FILE, SAMPLES_PLOT_FILE)) as run:
        done = run.done_ints("idx")
        todo = [i for i in indices if i not in done]
        _certify_rows(smooth, dataset, todo, settings, writer=run, verbose=verbose,
                      already=len(indices) - len(todo), parallel=parallel)
        atomic_write_json(run.path / RUN_FILE, {**run.settings, "n_rows": len(done | set(todo))})
    if render:
        return render_run(out)
    return load_run(out)


def _check_labels(dataset: Any, indices: Sequence[int], num_classes: int) -> None:
    """Every selected label must lie in [0, num_classes): an out-of-range label can never be counted correct."""
    y = getattr(dataset, "y", None)
    labels = y[list(indices)].tolist() if isinstance(y, torch.Tensor) else [int(dataset[i][1]) for i in indices]
    bad = [(i, lab) for i, lab in zip(indices, labels) if not 0 <= int(lab) < num_classes]
    if bad:
        raise ValueError(f"labels must lie in [0, {num_classes}) for num_classes={num_classes}; example {bad[0][0]} "
                         f"has label {bad[0][1]} ({len(bad)} such examples)")


def _sequential_kwargs(settings: dict) -> dict:
    if not settings.get("sequential"):
        return {}
    return {"sequential": True, "target_radius": settings.get("target_radius"), "radius_tol": settings["radius_tol"]}


def _on_device(smooth: Any, device: Any, *, local: bool) -> tuple[Any, str]:
    """``smooth`` moved to ``device`` (a new Smooth when it changes) and the device type recorded in run.json.

    With a remote Ray cluster (``local=False``) a CUDA device need not exist on the driver: the workers check.
    """
    from certify.devices import resolve_device

    if device is None:
        return smooth, str(getattr(getattr(smooth, "device", None), "type", "cpu"))
    if not local and isinstance(device, str) and device.strip().lower() == "cuda":
        return smooth, "cuda"
    dev = resolve_device(device)
    current = getattr(smooth, "device", None)
    if current is not None and torch.device(current) == dev:
        return smooth, dev.type
    from certify.smoothing import Smooth

    if not isinstance(smooth, Smooth):
        raise TypeError(f"device= needs smooth to be a certify.Smooth, got {type(smooth).__name__}")
    return Smooth(smooth.model, smooth.num_classes, smooth.sigma, input_range=smooth.input_range, sound=smooth.sound,
                  device=dev), dev.type


def base_prediction(smooth: Any, x: Any) -> int | None:
    """The base classifier's prediction on the clean input (the ``base_predict`` column of the per-class
    hidden-cost report); None when ``smooth`` is not a :class:`certify.Smooth`."""
    from certify.smoothing import Smooth

    if not isinstance(smooth, Smooth):
        return None
    xp = smooth._prepare(x).unsqueeze(0).to(smooth.dtype)
    with eval_mode(smooth.model), torch.no_grad():
        return int(smooth.model(xp).argmax(dim=1)[0])


def _row(idx: int, label: int, cert: Any, elapsed: float, base_predict: int | None) -> dict:
    """A certificate's rows.tsv row, the ``ROW_COLUMNS`` first."""
    row = row_from_certificate(idx, int(label), cert, elapsed, base_predict=base_predict)
    return {**{c: row[c] for c in ROW_COLUMNS}, **{k: v for k, v in row.items() if k not in ROW_COLUMNS}}


def certify_one(smooth: Any, idx: int, x: Any, label: int, settings: dict) -> dict:
    """The rows.tsv row of example ``idx`` (the one computation shared by the in-process and Ray paths)."""
    t0 = time.perf_counter()
    cert = smooth.certify(x, n_select=settings["n_select"], n_estimate=settings["n_estimate"],
                          alpha=settings["alpha"], batch_size=settings["batch_size"],
                          seed=example_seed(settings["seed"], idx), first_order=settings["first_order"],
                          **_sequential_kwargs(settings))
    return _row(idx, label, cert, time.perf_counter() - t0, base_prediction(smooth, x))


def row_from_chunks(smooth: Any, idx: int, x: Any, label: int, settings: dict, parts: Sequence[dict]) -> dict:
    """The rows.tsv row of example ``idx`` from its chunks (:meth:`certify.smoothing.Smooth.sample_chunk`, in
    chunk order; chunk 0 carries the selection counts and ``base_predict``): the same row as
    :func:`certify_one` (the ``time`` column is the sum of the chunks' times)."""
    counts = np.sum([part["counts"] for part in parts], axis=0)
    elapsed = float(sum(part["time_s"] for part in parts))
    cert = smooth.certificate_from_counts(x, counts_select=parts[0]["counts_select"], counts=counts,
                                          n_select=settings["n_select"], n_estimate=settings["n_estimate"],
                                          alpha=settings["alpha"], batch_size=settings["batch_size"],
                                          seed=example_seed(settings["seed"], idx), time_s=elapsed)
    return _row(idx, label, cert, elapsed, parts[0].get("base_predict"))


def certify_chunk(smooth: Any, idx: int, x: Any, chunk: int, settings: dict) -> dict:
    """Chunk ``chunk`` of example ``idx`` (:meth:`certify.smoothing.Smooth.sample_chunk`; chunk 0 also gets the
    clean ``base_predict``), to be combined by :func:`row_from_chunks`."""
    part = smooth.sample_chunk(x, chunk=chunk, n_select=settings["n_select"], n_estimate=settings["n_estimate"],
                               batch_size=settings["batch_size"], seed=example_seed(settings["seed"], idx))
    if chunk == 0:
        part["base_predict"] = base_prediction(smooth, x)
    return part


def _certify_rows(smooth, dataset, indices, settings, *, writer, verbose, already: int = 0,
                  parallel: dict | None = None) -> list[dict]:
    rows: list[dict] = []
    correct = 0
    logger.info("certifying %d examples (%d already done), sigma=%g, n_estimate=%d, first_order=%s%s",
                len(indices), already, settings["sigma"], settings["n_estimate"], settings["first_order"],
                f" on {parallel['workers']} Ray workers" if parallel else "")
    with progress(total=len(indices) + already, initial=already, unit="img", desc="certify",
                  enabled=verbose) as bar:

        files = getattr(dataset, "files", ())

        def emit(row: dict) -> None:
            nonlocal correct
            if files:
                row["file"] = files[int(row["idx"])]
            if writer is not None:
                writer.append(row)
            rows.append(row)
            correct += bool(row["correct"])
            bar.update(1)
            bar.set_postfix(acc=f"{correct / len(rows):.2f}", refresh=False)

        if parallel is not None and indices:
            from certify.distributed import certify_rows_on_ray

            certify_rows_on_ray(model=smooth.model, source=parallel["source"], dataset=dataset, indices=indices,
                                settings=settings, emit=emit, workers=parallel["workers"],
                                ray_address=parallel["ray_address"], device=settings["device_type"],
                                smooth_options={"input_range": getattr(smooth, "input_range", None),
                                                "sound": bool(getattr(smooth, "sound", False))},
                                chunks=smooth if parallel.get("sample_chunks") else None)
        else:
            for idx in indices:
                x, label = dataset[idx]
                emit(certify_one(smooth, idx, x, int(label), settings))
    return rows
