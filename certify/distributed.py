"""Certification of a dataset on Ray workers (``certify_dataset`` / ``semantic_report`` with ``workers=N``).

The work is embarrassingly parallel over examples: each example's certificate depends only on the model, the
example and its seed :func:`certify.runs.example_seed` ``(seed, idx)``. So

* one Ray actor per worker loads the model once (from a :class:`ModelSource` - a shipped checkpoint name or a
  checkpoint file + architecture that every worker loads itself - or, for a model given as an object, the
  module pickled by Ray) and certifies the examples it is sent, with the same code as the in-process path
  (:func:`certify.runs.certify_one`), one torch thread per worker (``num_cpus=1``; with a CUDA device each
  actor also requests one GPU);
* the driver streams the results back and alone appends them to ``rows.tsv`` through :mod:`certify.rundir`
  (same lock, fsync and resume); rows are written in example order, so ``rows.tsv`` is identical (apart from
  the ``time`` column) for any number of workers and for the in-process path;
* a worker process that dies (killed, out of memory) is restarted by Ray and its examples are certified again
  (the seed makes the retry give the same row), so no row is lost or duplicated; Ctrl-C / SIGTERM on the driver
  kills the actors (and shuts down a Ray instance it started) and leaves a run that resume completes.

The same machinery runs any "job" (:func:`run_on_ray`): :class:`SmoothingJob` (one unit = one example) and
:class:`certify.semantic.run.SemanticJob` (one unit = one example x perturbation family).

Ray is imported only here and only when ``workers`` is given; it is an optional dependency
(``pip install 'certify-toolkit[ray]'``). Without ``ray_address`` a local Ray instance is started (and stopped
at the end); with one, the driver connects to that cluster (``ray start --head`` / ``ray start --address``).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from certify._checks import check_int
from certify.allocator import MALLOC_ENV

logger = logging.getLogger(__name__)

__all__ = ["ModelSource", "SmoothingJob", "ChunkUnit", "RAY_INSTALL", "import_ray", "check_workers", "run_on_ray",
           "certify_rows_on_ray", "worker_runtime_env", "add_workers_arguments", "workers_from_args",
           "check_parallel"]

RAY_INSTALL = "pip install 'certify-toolkit[ray]' (or: pip install ray)"
#: tasks queued per actor (one running, one waiting) so that workers never idle between examples
TASKS_PER_WORKER = 2
#: how often one example is tried when its worker dies (Ray also retries inside an actor restart)
MAX_ATTEMPTS = 4
#: seconds to wait for a TCP connection to a --ray-address before giving up
CONNECT_TIMEOUT_S = 10.0
#: seconds to wait for every worker to load the model (a cluster without free CPUs/GPUs never starts them)
STARTUP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ModelSource:
    """Where every worker loads the model from: a shipped checkpoint name, or a checkpoint file (+ architecture).

    The fields are the command line's model flags (``--pretrained``, ``--checkpoint``, ``--arch``,
    ``--arch-kwargs``, ``--trust``, ``--mean``/``--std``, ``--num-classes``); every worker loads the model with the
    commands' own loader, so it gets exactly the driver's model (the driver checks the weights' fingerprint).
    Paths are made absolute on the driver; on a multi-node cluster they must exist on every node.
    """

    pretrained: str | None = None
    checkpoint: str | None = None
    arch: str | None = None
    arch_kwargs: dict | None = None
    trust: bool = False
    mean: tuple | None = None
    std: tuple | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if (self.pretrained is None) == (self.checkpoint is None):
            raise ValueError("ModelSource needs exactly one of pretrained= or checkpoint=")
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(Path(self.checkpoint).expanduser().resolve()))
        if self.arch is not None and ":" in self.arch:
            file_part, _, name = self.arch.rpartition(":")
            if file_part.endswith(".py"):
                object.__setattr__(self, "arch", f"{Path(file_part).expanduser().resolve()}:{name}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ModelSource":
        """The model flags of a parsed command line (:func:`certify.commands._common.add_model_arguments`)."""
        def get(name: str) -> Any:
            return getattr(args, name, None)

        return cls(pretrained=get("pretrained"), checkpoint=get("checkpoint"), arch=get("arch"),
                   arch_kwargs=get("arch_kwargs"), trust=bool(get("trust")),
                   mean=None if get("mean") is None else tuple(get("mean")),
                   std=None if get("std") is None else tuple(get("std")), num_classes=get("num_classes"))

    def files(self) -> str:
        """The files a worker needs (for error messages)."""
        if self.pretrained is not None:
            return f"shipped checkpoint {self.pretrained!r}"
        arch_file = self.arch.rpartition(":")[0] if self.arch and ".py:" in self.arch else None
        return f"{self.checkpoint}" + (f" and {arch_file}" if arch_file else "")

    def load(self) -> Any:
        """The model, in eval mode, on the CPU (loaded as the commands load it)."""
        from certify.commands._common import load_model

        args = argparse.Namespace(pretrained=self.pretrained, checkpoint=self.checkpoint, arch=self.arch,
                                  arch_kwargs=None if self.arch_kwargs is None else dict(self.arch_kwargs),
                                  trust=self.trust, mean=None if self.mean is None else list(self.mean),
                                  std=None if self.std is None else list(self.std), num_classes=self.num_classes)
        return load_model(args).model


# ------------------------------------------------------------------------------------------------ arguments
def import_ray() -> Any:
    """The ``ray`` module, or a ValueError with the install command when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ValueError("workers (--workers): certifying on Ray workers needs the 'ray' package, which is not "
                         f"installed; install it with: {RAY_INSTALL}") from None
    return ray


def check_workers(workers: Any) -> int:
    """``workers`` as an int >= 1 (the number of Ray actors)."""
    return check_int("workers", workers, 1)


def check_parallel(workers: Any, ray_address: Any, model_source: Any) -> dict | None:
    """None for the in-process path, else ``{"workers", "ray_address", "source"}`` checked (library arguments)."""
    if workers is None:
        for name, value in (("ray_address", ray_address), ("model_source", model_source)):
            if value is not None:
                raise ValueError(f"{name} is only used with workers= (certification on Ray workers)")
        return None
    n = check_workers(workers)
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise ValueError(f"ray_address must be 'host:port', 'ray://host:port' or 'auto', got {ray_address!r}")
    if model_source is not None and not isinstance(model_source, ModelSource):
        raise TypeError(f"model_source must be a certify.distributed.ModelSource or None, "
                        f"got {type(model_source).__name__}")
    return {"workers": n, "ray_address": ray_address, "source": model_source}


def add_workers_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--workers N`` and ``--ray-address ADDR`` to a command's parser (checked by :func:`workers_from_args`)."""
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="certify on N Ray workers, one model copy each (needs: pip install ray); default: "
                             "in this process, without Ray")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="with --workers: the Ray cluster to use (host:port printed by 'ray start --head', or "
                             "auto); default: a local Ray instance for this run")


def workers_from_args(args: argparse.Namespace) -> tuple[int | None, str | None]:
    """(workers, ray_address) of parsed arguments, checked; ValueErrors name the flag."""
    workers, address = getattr(args, "workers", None), getattr(args, "ray_address", None)
    if workers is None:
        if address is not None:
            raise ValueError("--ray-address: only used with --workers N")
        return None, None
    if workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {workers}")
    if address is not None:
        try:
            _host_port(address)
        except ValueError as exc:
            raise ValueError(f"--ray-address: {exc}") from None
    import_ray()
    return workers, address


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` / ``ray://host:port``; None for ``auto`` / ``local``."""
    text = address.strip()
    if text in ("auto", "local"):
        return None
    for prefix in ("ray://", "http://", "https://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"ray_address must be 'host:port', 'ray://host:port' or 'auto', got {address!r}")
    return host.strip("[]"), int(port)


def _check_reachable(address: str, timeout: float) -> None:
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise ValueError(f"ray_address {address!r}: no Ray cluster reachable at {target[0]}:{target[1]} "
                         f"({reason} after at most {timeout:g} s); start one with 'ray start --head' or check "
                         "the address") from None


# ------------------------------------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class SmoothingJob:
    """The work of :func:`certify.runs.certify_dataset`: one unit = one example index, one row per unit."""

    num_classes: int
    sigma: float
    device: str
    settings: dict
    smooth_options: dict = field(default_factory=dict)

    def prepare(self, model: Any) -> Any:
        """Per worker, once: the :class:`~certify.smoothing.Smooth` around the loaded model (same options)."""
        import certify.runs  # noqa: F401 - imported now, not during the first example
        from certify.smoothing import Smooth

        # an actor reserves one CPU (num_cpus=1): no noise helper thread competing with the other workers
        options = {"noise_thread": False if self.device == "cpu" else None, **self.smooth_options}
        return Smooth(model, self.num_classes, self.sigma, device=self.device, **options)

    def run(self, state: Any, unit: Any, x: Any, label: int) -> list[dict]:
        from certify.runs import certify_chunk, certify_one

        if isinstance(unit, ChunkUnit):  # a partial result, combined by the driver (certify_rows_on_ray)
            return [certify_chunk(state, unit.idx, x, unit.chunk, self.settings)]
        return [certify_one(state, unit, x, label, self.settings)]


class ChunkUnit(NamedTuple):
    """One task of ``sample_chunks``: chunk ``chunk`` of ``chunks`` of example ``idx``'s estimation samples."""

    idx: int
    chunk: int
    chunks: int


# ------------------------------------------------------------------------------------------------ the actor
class _CertifyWorker:
    """One Ray actor: loads the model once, prepares the job's state (e.g. a Smooth) and runs one unit per call."""

    def __init__(self, payload: Any, job: Any, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.error: str | None = None
        self.missing_module: str | None = None
        self.job, self.state = job, None
        self.fingerprint: str | None = None
        try:
            model = self._load(payload)
            from certify.rundir import model_fingerprint

            self.fingerprint = model_fingerprint(model)
            self.state = job.prepare(model)
        except Exception as exc:  # noqa: BLE001 - reported to the driver by ready(), which raises a clear error
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.missing_module = getattr(exc, "name", None) if isinstance(exc, ImportError) else None

    @staticmethod
    def _load(payload: Any) -> Any:
        if isinstance(payload, ModelSource):
            return payload.load()
        import pickle

        return pickle.loads(payload)

    def ready(self) -> tuple[str | None, str | None, str | None, int]:
        """(error or None, the module a failed import missed, fingerprint of the loaded model, pid)."""
        return self.error, self.missing_module, self.fingerprint, os.getpid()

    def work(self, unit: Any, x: Any, label: int) -> list[dict]:
        if self.state is None:
            raise RuntimeError(f"this worker could not load the model: {self.error}")
        return self.job.run(self.state, unit, x, label)


# ------------------------------------------------------------------------------------------------ driver
def worker_runtime_env() -> dict:
    """Ship the driver's own certify / estimators / semantic_layers packages to the workers."""
    import certify
    import estimators

    modules = [certify, estimators]
    try:
        import semantic_layers

        modules.append(semantic_layers)
    except ImportError:  # pragma: no cover - part of this distribution
        pass
    # glibc malloc keeps freed memory in the workers (certify.allocator: without it a worker can run several times
    # slower, faulting every batch's buffers in again)
    return {"py_modules": modules, "env_vars": dict(MALLOC_ENV)}


def _connect(ray: Any, address: str | None, workers: int) -> bool:
    """Initialise Ray (unless the caller already did); True when this call started it (and must shut it down)."""
    if address is not None:
        _check_reachable(address, CONNECT_TIMEOUT_S)
    if ray.is_initialized():
        if address is not None:
            logger.warning("Ray is already initialised in this process; using that instance, not %s", address)
        return False
    options = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                   runtime_env=worker_runtime_env())
    with _keep_sigterm_handler():
        if address is None:
            ray.init(num_cpus=max(workers, os.cpu_count() or 1), **options)
            return True
        try:
            ray.init(address=address, **options)
        except ConnectionError as exc:
            raise ValueError(f"ray_address {address!r}: cannot connect to a Ray cluster: {exc}") from None
    return True


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Restore the Python SIGTERM handler after ``ray.init`` (Ray's own aborts the process without cleanup)."""
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:  # pragma: no cover - not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _model_error(error: str, missing: str | None, payload: Any, model: Any) -> str:
    if isinstance(payload, ModelSource):
        return f"the Ray workers cannot load the model from {payload.files()}: {error}"
    module = sys.modules.get(type(model).__module__)
    where = getattr(module, "__file__", None) or type(model).__module__
    if missing is not None:
        return (f"the Ray workers cannot import the model's code {where} (module {missing!r} is not importable "
                "on the workers); install it on every node or pass a ModelSource / --checkpoint with --arch")
    return f"the Ray workers cannot load the model (class {type(model).__qualname__} from {where}): {error}"


def _start_workers(ray: Any, *, payload: Any, job: Any, model: Any, workers: int, device: str,
                   fingerprint: str | None) -> list:
    actor_cls = ray.remote(_CertifyWorker).options(
        num_cpus=1, num_gpus=1 if device == "cuda" else 0, max_restarts=MAX_ATTEMPTS, max_task_retries=MAX_ATTEMPTS)
    # the payload goes with each actor's creation task (Ray keeps it for restarts)
    actors = [actor_cls.remote(payload, job, 1) for _ in range(workers)]
    try:
        answers = ray.get([a.ready.remote() for a in actors], timeout=STARTUP_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        need = "1 CPU and 1 GPU" if device == "cuda" else "1 CPU"
        raise ValueError(f"workers: the Ray cluster did not start {workers} workers within {STARTUP_TIMEOUT_S:g} s "
                         f"(each needs {need}; cluster resources: {ray.cluster_resources()})") from None
    for error, missing, fp, _pid in answers:
        if error is not None:
            raise ValueError(_model_error(error, missing, payload, model))
        if fingerprint is not None and fp != fingerprint:
            raise ValueError(f"the Ray workers loaded a different model (weights fingerprint {fp}, the driver's "
                             f"{fingerprint}); make sure every node sees the same checkpoint file")
    logger.info("%d Ray workers ready (pids %s)", workers, [a[3] for a in answers])
    return actors


def _task_error(exc: Exception, unit: Any) -> Exception:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, (ValueError, TypeError)):
        return type(cause)(f"{_unit_text(unit)}: {cause}")
    return RuntimeError(f"a Ray worker failed on {_unit_text(unit)}: {str(exc).splitlines()[0]}")


def _unit_text(unit: Any) -> str:
    if isinstance(unit, ChunkUnit):
        return f"example {unit.idx} (sample chunk {unit.chunk + 1} of {unit.chunks})"
    return f"example {unit}" if isinstance(unit, int) else f"example {unit[0]} ({', '.join(map(str, unit[1:]))})"


def _stream(ray: Any, actors: list, units: list, example: Callable[[Any], int], dataset: Any,
            emit: Callable[[dict], None]) -> None:
    """Send the units to the actors, collect their rows and ``emit`` them in the order of ``units``."""
    todo = deque(range(len(units)))
    inflight: dict[Any, tuple[int, int, int]] = {}  # ref -> (unit position, actor number, attempt)
    buffer: dict[int, list[dict]] = {}
    position = 0

    def submit(actor: int, pos: int, attempt: int) -> None:
        x, label = dataset[example(units[pos])]
        x = _own_copy(x)
        inflight[actors[actor].work.remote(units[pos], x, int(label))] = (pos, actor, attempt)

    for _ in range(TASKS_PER_WORKER):
        for a in range(len(actors)):
            if todo:
                submit(a, todo.popleft(), 1)
    while inflight:
        (ref,), _ = ray.wait(list(inflight), num_returns=1)
        pos, actor, attempt = inflight.pop(ref)
        try:
            rows = ray.get(ref)
        except ray.exceptions.RayActorError:
            if attempt >= MAX_ATTEMPTS:
                raise RuntimeError(f"{_unit_text(units[pos])}: its Ray worker died {attempt} times") from None
            logger.warning("a Ray worker died while working on %s; retrying it (attempt %d)", units[pos],
                           attempt + 1)
            submit(actor, pos, attempt + 1)
            continue
        except ray.exceptions.RayTaskError as exc:
            raise _task_error(exc, units[pos]) from None
        buffer[pos] = rows
        while position in buffer:
            for row in buffer.pop(position):
                emit(row)
            position += 1
        if todo:
            submit(actor, todo.popleft(), 1)


def _own_copy(x: Any) -> Any:
    """A tensor with its own storage: a view (``dataset.x[i]``) would be pickled with the whole dataset's storage."""
    import torch

    return x.clone() if isinstance(x, torch.Tensor) else x


def run_on_ray(*, model: Any, source: ModelSource | None, job: Any, units: list, example: Callable[[Any], int],
               dataset: Any, emit: Callable[[dict], None], workers: int, ray_address: str | None,
               device: str = "cpu") -> dict[str, float]:
    """Run ``job`` over ``units`` on ``workers`` Ray actors; ``emit(row)`` for every row, in the order of ``units``.

    ``job`` is picklable with ``prepare(model) -> state`` (once per worker) and ``run(state, unit, x, label) ->
    list of rows``; ``example(unit)`` is the dataset index whose ``(x, label)`` the unit needs. The model
    reaches the workers through ``source`` or, when None, pickled by Ray. ``device`` is ``"cpu"`` or
    ``"cuda"`` (each actor then requests a GPU). The actors are killed at the end, also on errors and
    KeyboardInterrupt, and a Ray instance started here is shut down. Returns ``{"startup_s", "certify_s",
    "units"}``: the seconds to connect and load the model on every worker, and from the first task to the last row.
    """
    ray = import_ray()
    if source is None:
        import ray.cloudpickle as cloudpickle

        payload: Any = cloudpickle.dumps(model)
    else:
        payload = source
    t0 = time.perf_counter()
    started = _connect(ray, ray_address, workers)
    actors: list = []
    try:
        if device == "cuda" and ray.cluster_resources().get("GPU", 0) < 1:
            raise ValueError("device 'cuda': the Ray cluster has no GPU; use device cpu")
        from certify.rundir import model_fingerprint

        actors = _start_workers(ray, payload=payload, job=job, model=model, workers=workers, device=device,
                                fingerprint=model_fingerprint(model))
        startup = time.perf_counter() - t0
        logger.info("Ray start-up took %.1f s", startup)
        t1 = time.perf_counter()
        _stream(ray, actors, units, example, dataset, emit)
        return {"startup_s": startup, "certify_s": time.perf_counter() - t1, "units": float(len(units))}
    finally:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - an actor that is already gone needs no kill
                pass
        if started:
            ray.shutdown()


def certify_rows_on_ray(*, model: Any, source: ModelSource | None, dataset: Any, indices: list[int],
                        settings: dict, emit: Callable[[dict], None], workers: int, ray_address: str | None,
                        device: str, smooth_options: dict | None = None, chunks: Any = None) -> dict[str, float]:
    """Certify ``indices`` of ``dataset`` with a smoothed classifier on Ray workers (:func:`run_on_ray`).

    ``settings`` are those of :func:`certify.runs.certify_dataset` (sigma, n_select, n_estimate, alpha, seed,
    batch_size, first_order, num_classes); every row is :func:`certify.runs.certify_one`'s. ``smooth_options``:
    keyword arguments of the workers' :class:`~certify.smoothing.Smooth` (``input_range``, ``sound``).
    ``chunks``: the driver's :class:`~certify.smoothing.Smooth` to split every example into its
    ``Smooth.n_chunks(n_estimate)`` sample chunks (one task each, :class:`ChunkUnit`); the driver sums an
    example's chunk counts and computes its row (:func:`certify.runs.row_from_chunks`), identical to the
    unchunked row. None: one task per example.
    """
    job = SmoothingJob(num_classes=int(settings["num_classes"]), sigma=float(settings["sigma"]), device=device,
                       settings=dict(settings), smooth_options=dict(smooth_options or {}))
    if chunks is None:
        return run_on_ray(model=model, source=source, job=job, units=list(indices), example=int, dataset=dataset,
                          emit=emit, workers=workers, ray_address=ray_address, device=device)
    from certify.runs import row_from_chunks

    count = chunks.n_chunks(int(settings["n_estimate"]))
    units = [ChunkUnit(int(i), k, count) for i in indices for k in range(count)]
    parts: list[dict] = []
    order = iter(indices)

    def combine(part: dict) -> None:  # parts arrive in unit order: an example's chunks one after another
        if part["chunk"] != len(parts):
            raise RuntimeError(f"sample chunk {part['chunk']} arrived as part {len(parts)} of an example")
        parts.append(part)
        if len(parts) == count:
            idx = int(next(order))
            x, label = dataset[idx]
            emit(row_from_chunks(chunks, idx, x, int(label), settings, list(parts)))
            parts.clear()

    logger.info("sample chunks: %d per example (%d tasks)", count, len(units))
    return run_on_ray(model=model, source=source, job=job, units=units, example=lambda u: u.idx, dataset=dataset,
                      emit=combine, workers=workers, ray_address=ray_address, device=device)
