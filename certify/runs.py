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

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from certify.reports import ROW_COLUMNS, RadiusReport, format_tsv_row, row_from_certificate, tsv_header

logger = logging.getLogger(__name__)

__all__ = [
    "certify_dataset",
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

ROWS_FILE = "rows.tsv"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PLOT_FILE = "certified_accuracy.png"
SAMPLES_PLOT_FILE = "samples_used.png"
LOCK_FILE = ".lock"
#: run.json keys that must agree between a run and its resumption (they determine the rows)
MATCH_KEYS = ("sigma", "n_select", "n_estimate", "alpha", "seed", "batch_size", "first_order", "num_classes",
              "checkpoint", "model_fingerprint", "dataset", "dataset_fingerprint", "seed_scheme",
              "sequential", "target_radius", "radius_tol")
SEED_SCHEME = "numpy.SeedSequence([seed, idx]) -> uint64 >> 1"


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


def _sha256_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(str(tuple(t.shape)).encode())
    h.update(str(t.dtype).encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def model_fingerprint(model: Any) -> str | None:
    """sha256 of a module's state_dict (names, shapes, dtypes, bytes); None for non-modules."""
    if not isinstance(model, torch.nn.Module):
        return None
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        _sha256_tensor(h, tensor)
    return h.hexdigest()[:16]


def dataset_fingerprint(dataset: Any) -> str | None:
    """sha256 of a dataset's ``x`` and ``y`` tensors when it has them (:class:`certify.data.ImageDataset`)."""
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        return None
    h = hashlib.sha256()
    _sha256_tensor(h, x)
    _sha256_tensor(h, y)
    return h.hexdigest()[:16]


def _versions() -> dict[str, str]:
    import certify

    return {"certify": certify.__version__, "torch": torch.__version__, "numpy": np.__version__}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (so cleanup runs) - main thread only."""
    try:
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):  # noqa: ARG001
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _run_lock(out: Path) -> Iterator[None]:
    lock = out / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid > 0 and pid != os.getpid() and _pid_alive(pid):
                raise ValueError(f"out directory {out} is in use by another certify run (pid {pid}); "
                                 f"wait for it or remove {lock} if that process is gone") from None
            logger.warning("removing stale lock %s (pid %s)", lock, pid)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) still answers kill(pid, 0)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _repair_rows(path: Path) -> int:
    """Cut a truncated last line off rows.tsv (a run killed mid-write); returns the bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    logger.warning("%s: removed a truncated last line (%d bytes) left by an interrupted run", path, size - keep)
    return size - keep


def _read_header(path: Path) -> list[str] | None:
    with open(path) as f:
        first = f.readline()
    if not first.endswith("\n"):
        return None
    return first.rstrip("\n").split("\t")


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
    _write_json(run_dir / SUMMARY_FILE, report.summary())
    (run_dir / REPORT_FILE).write_text(report.to_markdown())
    report.plot(run_dir / PLOT_FILE, others=others, labels=labels)
    if "n_used" in report.rows.columns:
        report.plot_samples(run_dir / SAMPLES_PLOT_FILE)
    return report


def _check_settings(saved: dict, now: dict, run_json: Path) -> None:
    diffs = []
    for key in MATCH_KEYS:
        a, b = saved.get(key), now.get(key)
        if isinstance(a, float) or isinstance(b, float):
            same = a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=0, abs_tol=0)
        else:
            same = a == b
        if not same:
            diffs.append(f"{key}: saved {a!r} != now {b!r}")
    if diffs:
        raise ValueError(f"cannot resume: {run_json} was written with different settings ({'; '.join(diffs)}). "
                         "Use another output directory, or resume=False with overwrite=True "
                         "(CLI: --no-resume --overwrite) to start over.")
    if saved.get("versions") != now.get("versions"):
        logger.warning("resuming a run started with versions %s under %s", saved.get("versions"), now.get("versions"))


def certify_dataset(smooth: Any, dataset: Any, *, out: str | os.PathLike | None = None, resume: bool = True,
                    n_select: int, n_estimate: int, alpha: float, batch_size: int = 1000, seed: int = 0,
                    first_order: bool = False, skip: int = 1, max_examples: int | None = None, start: int = 0,
                    verbose: bool = True, checkpoint: str | None = None, dataset_name: str | None = None,
                    overwrite: bool = False, render: bool = True, sequential: bool = False,
                    target_radius: float | None = None, radius_tol: float = 0.01) -> RadiusReport:
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

    Returns:
        The report of every row in ``out/rows.tsv`` (sorted by idx), or of this call's rows when
        ``out`` is None.

    Raises:
        ValueError: bad settings, resume with different settings, rows of another run in ``out``.
    """
    from certify.smoothing import _validate  # the one place budgets are validated

    v = _validate(alpha=alpha, seed=seed, n_select=n_select, n_estimate=n_estimate, batch_size=batch_size,
                  target_radius=target_radius, radius_tol=radius_tol)
    for name, flag in (("first_order", first_order), ("sequential", sequential), ("resume", resume),
                       ("verbose", verbose), ("overwrite", overwrite), ("render", render)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if not hasattr(smooth, "certify"):
        raise TypeError(f"smooth must have a certify method (certify.Smooth), got {type(smooth).__name__}")
    try:
        n_total = len(dataset)
    except TypeError:
        raise TypeError(f"dataset must support len() and indexing, got {type(dataset).__name__}") from None
    indices = select_indices(n_total, start=start, skip=skip, max_examples=max_examples)
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
        "start": int(start),
        "skip": int(skip),
        "max_examples": max_examples,
        "versions": _versions(),
    }
    if sequential:  # absent for fixed-n runs, so their run.json (and resumption) is unchanged
        settings.update(sequential=True, target_radius=v.get("target_radius"), radius_tol=v["radius_tol"])
    if out is None:
        rows = _certify_rows(smooth, dataset, indices, settings, writer=None, verbose=verbose)
        return RadiusReport(rows if rows else [], **_report_meta(settings))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _run_lock(out):
        rows_path, run_json = out / ROWS_FILE, out / RUN_FILE
        done: set[int] = set()
        existing = rows_path.is_file() and rows_path.stat().st_size > 0
        if existing and not resume:
            if not overwrite:
                raise ValueError(f"{out} already holds a run ({rows_path}); pass resume=True to continue it or "
                                 "overwrite=True to delete its rows and start over (CLI: --resume / --overwrite)")
            logger.warning("overwriting the run in %s", out)
            for name in (ROWS_FILE, SUMMARY_FILE, REPORT_FILE, PLOT_FILE):
                (out / name).unlink(missing_ok=True)
            existing = False
        if existing:
            if not run_json.is_file():
                raise ValueError(f"{rows_path} exists but {run_json} does not: not a run of this tool; "
                                 "choose another output directory")
            _check_settings(json.loads(run_json.read_text()), settings, run_json)
            _repair_rows(rows_path)
            header = _read_header(rows_path)
            if header is None:  # killed while writing the header
                rows_path.unlink()
            else:
                previous = RadiusReport.from_tsv(rows_path, format="certify")
                done = set(int(i) for i in previous.rows["idx"])
                logger.info("resuming %s: %d rows already done", out, len(done))
        _write_json(run_json, settings)
        todo = [i for i in indices if i not in done]
        with open(rows_path, "a") as f:
            writer = _RowWriter(f, _read_header(rows_path) if rows_path.stat().st_size else None)
            _certify_rows(smooth, dataset, todo, settings, writer=writer, verbose=verbose,
                          already=len(indices) - len(todo))
        if render:
            return render_run(out)
        return load_run(out)


class _RowWriter:
    """Appends rows to an open rows.tsv: header first (columns fixed by the first row), flush + fsync each."""

    def __init__(self, f, header: list[str] | None):
        self.f = f
        self.columns = header

    def write(self, row: dict) -> None:
        if self.columns is None:
            self.columns = list(ROW_COLUMNS) + [k for k in row if k not in ROW_COLUMNS]
            self.f.write(tsv_header(self.columns))
        extra = [k for k in row if k not in self.columns]
        if extra:
            raise ValueError(f"row idx={row['idx']} has columns {extra} that the rows file lacks ({self.columns})")
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"row idx={row['idx']} lacks columns {missing} of the rows file")
        self.f.write(format_tsv_row(row, self.columns))
        self.f.flush()
        os.fsync(self.f.fileno())


def _sequential_kwargs(settings: dict) -> dict:
    if not settings.get("sequential"):
        return {}
    return {"sequential": True, "target_radius": settings.get("target_radius"), "radius_tol": settings["radius_tol"]}


def _certify_rows(smooth, dataset, indices, settings, *, writer, verbose, already: int = 0) -> list[dict]:
    from tqdm.auto import tqdm

    rows: list[dict] = []
    correct = 0
    logger.info("certifying %d examples (%d already done), sigma=%g, n_estimate=%d, first_order=%s",
                len(indices), already, settings["sigma"], settings["n_estimate"], settings["first_order"])
    bar = tqdm(total=len(indices) + already, initial=already, unit="img", desc="certify",
               disable=None if verbose else True, dynamic_ncols=True)
    try:
        for idx in indices:
            x, label = dataset[idx]
            label = int(label)
            t0 = time.perf_counter()
            cert = smooth.certify(x, n_select=settings["n_select"], n_estimate=settings["n_estimate"],
                                  alpha=settings["alpha"], batch_size=settings["batch_size"],
                                  seed=example_seed(settings["seed"], idx), first_order=settings["first_order"],
                                  **_sequential_kwargs(settings))
            row = row_from_certificate(idx, label, cert, time.perf_counter() - t0)
            if writer is not None:
                writer.write(row)
            rows.append(row)
            correct += bool(row["correct"])
            bar.update(1)
            bar.set_postfix(acc=f"{correct / len(rows):.2f}", refresh=False)
    finally:
        bar.close()
    return rows
