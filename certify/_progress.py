"""One progress helper: a tqdm bar on a terminal, periodic log lines with ETA elsewhere (nohup, CI, files).

>>> with progress(total=3, desc="certify", unit="img", enabled=False) as bar:
...     for _ in range(3):
...         bar.update(1)
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, Iterator

logger = logging.getLogger("certify.progress")

__all__ = ["progress", "track", "LOG_EVERY_S"]

#: off a terminal, one log line at least this often (seconds) while work is done
LOG_EVERY_S = 30.0


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class _LogBar:
    """The tqdm subset used by the toolkit (update, set_postfix, close), reporting through ``logging``."""

    def __init__(self, total: int | None, initial: int, desc: str, unit: str, every: float):
        self.total, self.n, self.desc, self.unit, self.every = total, initial, desc, unit, every
        self._start_n = initial
        self._t0 = self._last = time.monotonic()
        self._postfix = ""

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if now - self._last >= self.every or (self.total is not None and self.n >= self.total):
            self._last = now
            self._log(now)

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:  # noqa: ARG002 (tqdm signature)
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _log(self, now: float) -> None:
        done = self.n - self._start_n
        rate = done / max(now - self._t0, 1e-9)
        total = "?" if self.total is None else str(self.total)
        eta = ""
        if self.total is not None and rate > 0:
            eta = f", ETA {_fmt_duration((self.total - self.n) / rate)}"
        extra = f", {self._postfix}" if self._postfix else ""
        logger.info("%s: %d/%s %s done (%.3g %s/s%s%s)", self.desc, self.n, total, self.unit, rate, self.unit,
                    eta, extra)

    def close(self) -> None:
        return None


class _NullBar:
    n = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:  # noqa: ARG002
        return None

    def close(self) -> None:
        return None


@contextlib.contextmanager
def progress(*, total: int | None, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True,
             every: float = LOG_EVERY_S) -> Iterator[Any]:
    """A progress reporter with ``update(k)``, ``set_postfix(**kv)``.

    ``enabled=False`` reports nothing. On a terminal (stderr is a TTY) a tqdm bar; otherwise an INFO log
    line with done/total, rate and ETA at most every ``every`` seconds and at the end.
    """
    if not enabled:
        yield _NullBar()
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
    else:
        bar = _LogBar(total, initial, desc, unit, every)
    try:
        yield bar
    finally:
        bar.close()


def track(iterable: Any, *, total: int | None, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[Any]:
    """Yield the items of ``iterable``, counting each one as done when the next is asked for (see :func:`progress`)."""
    with progress(total=total, desc=desc, unit=unit, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)
