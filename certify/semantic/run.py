"""``semantic_report``: :func:`~certify.semantic.verify.verify_semantic` over a dataset, in a run directory.

The run directory is :mod:`certify.rundir`'s: ``run.json`` (settings), ``rows.tsv`` (appended, flushed and
fsync'ed per example and family), a lock (a second process on the same directory gets
:class:`~certify.rundir.RunDirBusyError`), resume by default (settings checked, :class:`ResumeMismatchError`
on a difference; a torn last line is repaired) and no silent overwrite (``resume=False`` on a directory with
rows is an error unless ``overwrite=True``).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from certify import lirpa
from certify._checks import check_bool, check_float, check_int
from certify._jsonio import atomic_write_json, atomic_write_text, jsonable
from certify._progress import progress
from certify.devices import module_device, resolve_device
from certify.rundir import dataset_fingerprint, model_fingerprint, open_run

from .batch import run_batched
from .inputs import check_baseline, check_method, check_model, check_perturbation, resolve_range
from .report import PREAMBLE_TAG, SemanticReport, rows_from_certificate
from .verify import verify_semantic

logger = logging.getLogger(__name__)

__all__ = ["semantic_report", "SemanticJob"]

# rendered files of a run (deleted with its rows by overwrite=True)
ARTIFACTS = ("summary.json", "report.md", "semantic_accuracy.png", "semantic_ranges.png", "semantic_examples.png")


def _check_perturbations(perturbations: Any) -> list[Any]:
    if isinstance(perturbations, (str, bytes)) or not isinstance(perturbations, Sequence) or not perturbations:
        raise TypeError("perturbations must be a non-empty sequence of SemanticPerturbation objects")
    for p in perturbations:
        check_perturbation(p)
    names = [p.name for p in perturbations]
    if len(set(names)) != len(names):
        raise ValueError(f"perturbations must have distinct names; got {names}")
    return list(perturbations)


def _check_images(perturbations: Sequence[Any], dataset: Any) -> None:
    """Every family accepts the dataset's images (e.g. hue needs RGB): checked before anything is written."""
    x, _ = dataset[0]
    for p in perturbations:
        p.check_input(x)


def _settings(model: nn.Module, dataset: Any, perturbations: Sequence[Any], ranges: dict, opts: dict) -> dict:
    return {
        **opts,
        "perturbations": [p.name for p in perturbations],
        "conventions": {p.name: jsonable(p.to_dict()) for p in perturbations},
        "ranges": {name: [list(r) for r in rng] for name, rng in ranges.items()},
        "dataset": str(getattr(dataset, "name", type(dataset).__name__)), "dataset_size": len(dataset),
        "dataset_fingerprint": dataset_fingerprint(dataset),
        "model": model_fingerprint(model),
    }


def semantic_report(model: nn.Module, dataset: Any, perturbations: Sequence[Any], *, out: str | os.PathLike,
                    method: str = "crown", max_param: Any = None, max_examples: int | None = None,
                    skip: int = 1, resume: bool = True, overwrite: bool = False, n_splits: int | None = None,
                    max_refine: int | None = None, attack: bool = True, attack_grid: int = 201, attack_steps: int = 20,
                    batch_size: int = 32, seed: int = 0, baseline: str | None = None,
                    margin_tol: float = 1e-4, alpha_iterations: int = 20, plots: bool = True,
                    verbose: bool = True, workers: int | None = None, ray_address: str | None = None,
                    model_source: Any = None, device: str | torch.device | None = None,
                    image_batch: int = 1) -> SemanticReport:
    """Run :func:`verify_semantic` on dataset examples 0, skip, 2 skip, ... for every perturbation.

    Rows (:data:`ROW_COLUMNS`) are appended to ``out/rows.tsv`` as they are produced. ``resume=True``
    (default) continues a run in ``out``: finished (idx, perturbation) pairs are skipped; the settings must
    match those in ``out/run.json`` except ``max_examples`` (so a run can be extended), else
    :class:`certify.rundir.ResumeMismatchError`. ``resume=False`` on a directory with rows raises ValueError
    unless ``overwrite=True``, which deletes them first. A second process on the same ``out`` gets
    :class:`certify.rundir.RunDirBusyError`. Every argument is checked before anything is written.

    At the end writes ``summary.json``, ``report.md`` and (``plots``) ``semantic_accuracy.png`` (certified and
    attack-free accuracy vs range), ``semantic_ranges.png`` (histogram of the certified ranges) and
    ``semantic_examples.png``. Returns the :class:`SemanticReport` of all rows.

    ``max_param`` as in :func:`verify_semantic` (a mapping gives each family its own range).
    ``dataset``: anything with ``len`` and ``ds[i] -> (x, y)`` (e.g. :func:`certify.data.load_dataset`).

    ``workers=N`` verifies the (example, family) pairs on N Ray actors (:func:`certify.distributed.run_on_ray`;
    ``ray_address`` and ``model_source`` as in :func:`certify.runs.certify_dataset`); the driver alone writes
    the rows, in the same order, so ``rows.tsv`` is the same (apart from ``time``) as without workers.

    ``device`` as in :func:`verify_semantic` (``"cpu"``, ``"cuda"``, ``"auto"``, a ``torch.device``; None: the
    model's device). With workers every Ray actor runs there (with ``"cuda"`` each requests a GPU); with a remote
    ``ray_address`` the text ``"cuda"`` is checked by the workers, not on this machine.

    ``image_batch=N > 1`` (without workers, on the CPU) verifies N images at a time in shared bound calls
    (:func:`certify.semantic.batch.verify_semantic_batch`) for the families it supports (:func:`batchable`: one
    parameter, kind "box" (rotation) or a layer whose structure does not depend on the image, e.g. brightness;
    method "crown", no baseline); the other families are verified one image at a time as with
    ``image_batch=1``. Rows are written in the same order; the value is part of the run's settings.
    """
    check_model(model)
    remote_cuda = ray_address is not None and isinstance(device, str) and device.strip().lower() == "cuda"
    dev = None if remote_cuda else resolve_device(device)
    perturbations = _check_perturbations(perturbations)
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError("dataset must support len() and ds[i] -> (x, y)")
    if len(dataset) == 0:
        raise ValueError("dataset must hold at least one example")
    opts = {
        "method": check_method(method), "baseline": check_baseline(baseline),
        "n_splits": None if n_splits is None else check_int("n_splits", n_splits, 1),
        "max_refine": None if max_refine is None else check_int("max_refine", max_refine, 0),
        "attack": check_bool("attack", attack), "attack_grid": check_int("attack_grid", attack_grid, 3),
        "attack_steps": check_int("attack_steps", attack_steps, 0), "seed": check_int("seed", seed, 0),
        "margin_tol": check_float("margin_tol", margin_tol, low=0.0),
        "alpha_iterations": check_int("alpha_iterations", alpha_iterations, 1),
        "skip": check_int("skip", skip, 1),
        "max_examples": None if max_examples is None else check_int("max_examples", max_examples, 1),
    }
    if check_int("image_batch", image_batch, 1) > 1:
        opts["image_batch"] = image_batch
    batch_size = check_int("batch_size", batch_size, 1)
    parallel = None
    if workers is not None or ray_address is not None or model_source is not None:
        from certify.distributed import check_parallel

        parallel = check_parallel(workers, ray_address, model_source)
        if image_batch > 1:
            raise ValueError(f"image_batch must be 1 with workers (each worker verifies one image at a time); "
                             f"got {image_batch}")
    check_bool("resume", resume)
    check_bool("overwrite", overwrite)
    if overwrite and resume:
        raise ValueError("overwrite=True deletes the rows already in out: use it with resume=False")
    _check_images(perturbations, dataset)
    run_dev = dev if dev is not None else module_device(model)
    if image_batch > 1 and run_dev.type != "cpu":
        raise ValueError(f"image_batch > 1 runs on the CPU; got device {run_dev} (use device='cpu' or image_batch=1)")
    if dev is not None and parallel is None:
        model.to(dev)
    # the device of the rows: this process's, or (with workers) the type each actor runs on
    job_device = str(module_device(model)) if parallel is None else \
        ("cuda" if remote_cuda else (dev if dev is not None else module_device(model)).type)
    # unsupported operators fail here (with workers only this check runs on the driver, where the model is)
    model_net = lirpa.bounded_module(model, dataset[0][0].float().unsqueeze(0).to(module_device(model)))
    ranges = {p.name: resolve_range(p, max_param) for p in perturbations}
    indices = list(range(0, len(dataset), opts["skip"]))[:opts["max_examples"]]
    # the device type is part of the settings: a resumed run never mixes rows computed on different devices
    settings = {**_settings(model, dataset, perturbations, ranges, opts),
                "device_type": torch.device(job_device).type}
    n_params = {p.name: len(p.param_names) for p in perturbations}
    preamble = [f"{PREAMBLE_TAG} {json.dumps(jsonable(settings), sort_keys=True)}"]
    match = [k for k in settings if k != "max_examples"]
    with open_run(out, settings=settings, match_keys=match, resume=resume, overwrite=overwrite,
                  preamble=preamble, artifacts=ARTIFACTS) as run:
        done = _complete_groups(run, n_params)
        todo = [(i, p) for i in indices for p in perturbations if (i, p.name) not in done]
        logger.info("semantic report: %d examples x %d families, %d to do (%d done)", len(indices),
                    len(perturbations), len(todo), len(done))
        job = SemanticJob(perturbations={p.name: p for p in perturbations}, ranges=ranges, opts=opts,
                          batch_size=batch_size, example_input=dataset[0][0], device=job_device)
        units = [(i, p.name) for i, p in todo]
        with progress(total=len(todo), desc="semantic", unit="cert", enabled=verbose) as bar:
            if parallel is not None and units:
                from certify.distributed import run_on_ray

                done_rows: dict = {}

                def emit(row: dict) -> None:
                    run.append(row)
                    key = (int(row["idx"]), str(row["perturbation"]))
                    done_rows[key] = done_rows.get(key, 0) + 1
                    if done_rows[key] == n_params[key[1]]:
                        bar.update(1)

                run_on_ray(model=model, source=parallel["source"], job=job, units=units, example=lambda u: u[0],
                           dataset=dataset, emit=emit, workers=parallel["workers"],
                           ray_address=parallel["ray_address"], device=job_device)
            elif image_batch > 1:
                for rows in run_batched(job, model, model_net, dataset, units, image_batch):
                    run.append(*rows)
                    bar.update(1)
            else:
                state = (model, model_net)
                for unit in units:
                    x, y = dataset[unit[0]]
                    run.append(*job.run(state, unit, x, int(y)))
                    bar.update(1)
    wanted = set(indices)
    report = SemanticReport(tuple(r for r in SemanticReport.from_tsv(Path(out) / "rows.tsv").rows
                                  if int(r["idx"]) in wanted), settings)
    _render(report, Path(out), dataset, perturbations, plots)
    return report


@dataclass(frozen=True)
class SemanticJob:
    """One (example, family) pair per unit: :func:`verify_semantic` with the run's options, its rows.

    Used in-process and, pickled, by every Ray worker (:func:`certify.distributed.run_on_ray`), so both
    paths compute the same rows.
    """

    perturbations: dict
    ranges: dict
    opts: dict
    batch_size: int
    example_input: Any
    device: str = "cpu"

    def prepare(self, model: nn.Module) -> tuple[nn.Module, Any]:
        """Per worker, once: the model moved to ``device`` and its auto_LiRPA bounded module there."""
        dev = resolve_device(self.device)
        model.to(dev)
        return model, lirpa.bounded_module(model, self.example_input.float().unsqueeze(0).to(dev))

    def run(self, state: tuple[nn.Module, Any], unit: tuple[int, str], x: Any, label: int) -> list[dict]:
        model, model_net = state
        idx, name = unit
        rng, opts = self.ranges[name], self.opts
        cert = verify_semantic(model, x, int(label), self.perturbations[name], method=opts["method"],
                               max_param=rng if len(rng) > 1 else rng[0], n_splits=opts["n_splits"],
                               max_refine=opts["max_refine"], attack=opts["attack"],
                               attack_grid=opts["attack_grid"], attack_steps=opts["attack_steps"],
                               batch_size=self.batch_size, seed=opts["seed"], baseline=opts["baseline"],
                               margin_tol=opts["margin_tol"], alpha_iterations=opts["alpha_iterations"],
                               device=self.device, _model_net=model_net)
        return rows_from_certificate(idx, cert)


def _complete_groups(run: Any, n_params: dict[str, int]) -> set[tuple[int, str]]:
    """(idx, perturbation) pairs with all their rows; rows of incomplete pairs (a run killed between the two
    rows of a two-parameter family) are dropped from the file."""
    count: dict[tuple[int, str], int] = {}
    for r in run.existing:
        key = (int(r["idx"]), str(r["perturbation"]))
        count[key] = count.get(key, 0) + 1
    done = {key for key, c in count.items() if c == n_params.get(key[1], -1)}
    keep = [r for r in run.existing if (int(r["idx"]), str(r["perturbation"])) in done]
    if len(keep) != len(run.existing):
        logger.warning("%s: dropping %d rows of incomplete examples", run.rows_path, len(run.existing) - len(keep))
        run.rewrite(keep)
    return done


def _render(report: SemanticReport, out: Path, dataset: Any, perturbations: Sequence[Any], plots: bool) -> None:
    atomic_write_json(out / "summary.json", report.summary())
    method = report.settings.get("method")
    base = report.settings.get("baseline")
    atomic_write_text(out / "report.md", f"# Semantic verification ({method}"
                      f"{'' if base is None else ', baseline ' + str(base)})\n\n" + report.to_markdown())
    if plots and len(report):
        report.plot(out / "semantic_accuracy.png")
        report.plot_histogram(out / "semantic_ranges.png")
        report.picture_grid(out / "semantic_examples.png", dataset, perturbations)

