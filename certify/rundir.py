"""The run-directory layer shared by every long-running command (``smooth``, ``semantic``, ``study``).

A run directory holds

* ``run.json``: the settings that determine the rows, written (atomically) before the first row;
* ``rows.tsv``: one TSV line per finished unit of work (an example, an example x family, ...), preceded by
  optional ``#`` comment lines and a header; every row is appended, flushed and fsync'ed as soon as it is
  done, so a killed run loses at most the row in flight;
* a ``.lock`` file with the owner's pid while a process works in it: a second process gets a clear error
  instead of interleaving rows; a lock left by a dead process is removed;
* rendered files (``summary.json``, ``report.md``, plots) that the owner of the run writes at the end.

Opening a directory that already holds rows resumes it by default: ``run.json`` is compared with the new
settings on ``match_keys`` (:class:`ResumeMismatchError` names every difference), a torn last line of
``rows.tsv`` is cut off, and the caller skips the keys already done (:meth:`RunDir.done`). Without resume an
existing run is an error unless ``overwrite=True``, which deletes its rows and rendered files first.

Example::

    >>> with open_run("runs/x", settings={"seed": 0}) as run:        # doctest: +SKIP
    ...     for idx in range(10):
    ...         if (idx,) not in run.done("idx"):
    ...             run.append({"idx": idx, "value": idx ** 2})
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from certify._jsonio import atomic_write_json, jsonable

logger = logging.getLogger(__name__)

__all__ = [
    "RunDir",
    "open_run",
    "ResumeMismatchError",
    "RunDirBusyError",
    "model_fingerprint",
    "dataset_fingerprint",
    "file_sha256",
    "versions",
    "format_value",
    "terminate_as_interrupt",
    "ROWS_FILE",
    "RUN_FILE",
    "LOCK_FILE",
]

ROWS_FILE = "rows.tsv"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"


class ResumeMismatchError(ValueError):
    """A run directory was written with settings that differ from the ones asked for now."""

    def __init__(self, path: Path, differences: Sequence[str]):
        self.path = Path(path)
        self.differences = tuple(differences)
        super().__init__(f"cannot resume: {self.path} was written with different settings "
                         f"({'; '.join(self.differences)}). Use another output directory, or start over with "
                         "resume=False, overwrite=True (CLI: --no-resume --overwrite).")


class RunDirBusyError(ValueError):
    """Another live process holds the run directory's lock."""


# ------------------------------------------------------------------------------------------------ fingerprints
def _update_tensor(h: Any, t: Any) -> None:
    t = t.detach().cpu().contiguous()
    h.update(str(tuple(t.shape)).encode())
    h.update(str(t.dtype).encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: Any) -> str | None:
    """First 16 hex digits of the SHA-256 of a module's state_dict (names, shapes, dtypes, bytes).

    The one fingerprint used in every run.json; None for callables that are not ``nn.Module``. Works for
    0-dim buffers and every dtype.
    """
    if not isinstance(model, torch.nn.Module):
        return None
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        if isinstance(tensor, torch.Tensor):
            _update_tensor(h, tensor)
        else:  # extra state objects
            h.update(repr(tensor).encode())
    return h.hexdigest()[:16]


def dataset_fingerprint(dataset: Any) -> str | None:
    """SHA-256 (16 hex digits) of a dataset's ``x`` and ``y`` tensors when it has them, else None."""
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        return None
    h = hashlib.sha256()
    _update_tensor(h, x)
    _update_tensor(h, y)
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """Full SHA-256 hex digest of a file's bytes (e.g. a checkpoint, recorded in run.json)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that determine the numbers (recorded in run.json)."""
    import certify

    out = {"certify": certify.__version__, "torch": torch.__version__, "numpy": np.__version__}
    from importlib.metadata import PackageNotFoundError, version

    try:
        out["auto_LiRPA"] = version("auto_LiRPA")
    except PackageNotFoundError:  # installed separately (--no-deps); recorded when present
        pass
    return out


# ------------------------------------------------------------------------------------------------ TSV values
def format_value(value: Any) -> str:
    """One TSV cell: booleans 0/1, ints, floats exactly (``repr``, ``nan``), None as ``NA``, text without tabs."""
    if value is None or type(value).__name__ == "NAType":
        return "NA"
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else repr(float(value))
    text = str(value)
    if "\t" in text or "\n" in text:
        raise ValueError(f"TSV values cannot contain tabs or newlines: {text!r}")
    return text


# ------------------------------------------------------------------------------------------------ lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) still answers kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
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
                raise RunDirBusyError(f"out directory {out} is in use by another certify run (pid {pid}); wait "
                                      f"for it or remove {lock} if that process is gone") from None
            if pid == os.getpid():
                raise RunDirBusyError(f"out directory {out} is already open in this process") from None
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


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (so cleanup runs); main thread only."""
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


# ------------------------------------------------------------------------------------------------ rows file
def _repair(path: Path) -> int:
    """Cut a torn last line off ``path`` (a run killed mid-write); returns the bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return 0
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    logger.warning("%s: removed a torn last line (%d bytes) left by an interrupted run", path, size - keep)
    return size - keep


def read_rows_file(path: str | os.PathLike) -> tuple[list[str], list[str] | None, list[dict[str, str]]]:
    """(comment lines, header columns or None, rows as str dicts) of a rows file; a torn last line is ignored."""
    comments: list[str] = []
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            text = line.rstrip("\n")
            if header is None:
                if text.startswith("#"):
                    comments.append(text)
                    continue
                header = text.split("\t")
                continue
            if not text:
                continue
            cells = text.split("\t")
            if len(cells) != len(header):
                raise ValueError(f"{path}: a row has {len(cells)} cells, the header {len(header)}: {text[:80]!r}")
            rows.append(dict(zip(header, cells)))
    return comments, header, rows


def _same(a: Any, b: Any) -> bool:
    a, b = jsonable(a), jsonable(b)
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and float(a) == float(b)
    return a == b


def settings_differences(saved: Mapping[str, Any], now: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """``"key: saved X != now Y"`` for every key on which two settings dicts differ (JSON-normalised)."""
    return [f"{k}: saved {jsonable(saved.get(k))!r} != now {jsonable(now.get(k))!r}"
            for k in keys if not _same(saved.get(k), now.get(k))]


@dataclass
class RunDir:
    """An open, locked run directory (made by :func:`open_run`); rows are appended with :meth:`append`."""

    path: Path
    settings: dict[str, Any]
    resumed: bool
    columns: list[str] | None = None
    preamble: tuple[str, ...] = ()
    existing: list[dict[str, str]] = field(default_factory=list)
    _file: Any = field(default=None, repr=False)

    @property
    def rows_path(self) -> Path:
        return self.path / ROWS_FILE

    def done(self, *keys: str) -> set[tuple[str, ...]]:
        """The key tuples (as strings) of the rows already in the file, e.g. ``run.done("idx")``."""
        return {tuple(r[k] for k in keys) for r in self.existing}

    def done_ints(self, key: str = "idx") -> set[int]:
        """The integer values of column ``key`` in the rows already in the file."""
        return {int(r[key]) for r in self.existing}

    def rewrite(self, rows: Sequence[Mapping[str, str]]) -> None:
        """Replace the rows file by ``rows`` (e.g. to drop an incomplete group of rows), atomically."""
        if self.columns is None:
            raise ValueError("rewrite needs a rows file with a header")
        text = "".join(line + "\n" for line in self.preamble) + "\t".join(self.columns) + "\n"
        text += "".join("\t".join(r[c] for c in self.columns) + "\n" for r in rows)
        self._close()
        tmp = self.rows_path.with_name(f".{ROWS_FILE}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.rows_path)
        self.existing = [dict(r) for r in rows]

    def append(self, *rows: Mapping[str, Any]) -> None:
        """Append rows (one write, then flush + fsync). The first row ever fixes the columns (header)."""
        if not rows:
            return
        if self._file is None:
            self._file = open(self.rows_path, "a")
        text = ""
        if self.columns is None:
            self.columns = list(rows[0])
            text += "".join(line + "\n" for line in self.preamble) + "\t".join(self.columns) + "\n"
        for row in rows:
            extra = [k for k in row if k not in self.columns]
            missing = [c for c in self.columns if c not in row]
            if extra or missing:
                raise ValueError(f"row {dict(list(row.items())[:1])} does not match the rows file's columns "
                                 f"{self.columns} (extra {extra}, missing {missing})")
            text += "\t".join(format_value(row[c]) for c in self.columns) + "\n"
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _start_over(out: Path, artifacts: Sequence[str]) -> None:
    logger.warning("overwriting the run in %s", out)
    for name in (ROWS_FILE, RUN_FILE, *artifacts):
        target = out / name
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _prepare_dir(path: str | os.PathLike) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a directory; {out} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"out directory {out} cannot be created: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"out directory {out} is not writable")
    return out


@contextlib.contextmanager
def open_run(path: str | os.PathLike, *, settings: Mapping[str, Any], match_keys: Iterable[str] | None = None,
             resume: bool = True, overwrite: bool = False, preamble: Sequence[str] = (),
             artifacts: Sequence[str] = ()) -> Iterator[RunDir]:
    """Open (create, lock, check, repair) the run directory ``path`` for appending rows.

    Args:
        settings: JSON-able settings of this run; written to run.json (atomically, NaN as null).
        match_keys: the settings that determine the rows and must agree when resuming (default: all keys
            of ``settings``); other keys (e.g. how many examples) may change and run.json records the new ones.
        resume: continue a run that already has rows (after the settings check). With ``resume=False``
            existing rows are an error unless ``overwrite=True``.
        overwrite: with ``resume=False``, delete the rows, run.json and ``artifacts`` (rendered files) first.
        preamble: comment lines (each starting with ``#``) written before the header of a new rows file.

    Raises:
        ResumeMismatchError: resuming with different settings. RunDirBusyError: another live process holds
        the lock. ValueError: ``path`` is a file or not writable, rows exist and neither resume nor overwrite,
        rows without run.json.
    """
    for line in preamble:
        if not line.startswith("#") or "\n" in line:
            raise ValueError(f"preamble lines must start with '#' and hold no newline, got {line!r}")
    out = _prepare_dir(path)
    settings = dict(jsonable(dict(settings)))
    keys = list(settings) if match_keys is None else list(match_keys)
    with _lock(out):
        rows_path, run_json = out / ROWS_FILE, out / RUN_FILE
        existing = rows_path.is_file() and rows_path.stat().st_size > 0
        if existing and not resume:
            if not overwrite:
                raise ValueError(f"{out} already holds a run ({rows_path}); resume it (the default; CLI: drop "
                                 "--no-resume) or pass overwrite=True (CLI: --overwrite) to delete its rows")
            _start_over(out, artifacts)
            existing = False
        run = RunDir(path=out, settings=settings, resumed=False, preamble=tuple(preamble))
        if existing:
            if not run_json.is_file():
                raise ValueError(f"{rows_path} exists but {run_json} does not: not a run of this tool; choose "
                                 "another output directory")
            saved = json.loads(run_json.read_text())
            diffs = settings_differences(saved, settings, keys)
            if diffs:
                raise ResumeMismatchError(run_json, diffs)
            if saved.get("versions") != settings.get("versions") and "versions" in settings:
                logger.warning("resuming a run started with versions %s under %s", saved.get("versions"),
                               settings.get("versions"))
            _repair(rows_path)
            comments, header, rows = read_rows_file(rows_path)
            if header is None:  # killed while writing the header
                rows_path.unlink()
            else:
                run.columns, run.preamble, run.existing, run.resumed = header, tuple(comments), rows, True
                logger.info("resuming %s: %d rows already done", out, len(rows))
        elif rows_path.exists():
            rows_path.unlink()
        atomic_write_json(run_json, settings)
        try:
            yield run
        finally:
            run._close()
