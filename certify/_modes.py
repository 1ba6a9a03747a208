"""Small shared helper: run a classifier in eval mode and restore every submodule's mode afterwards."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put every submodule of ``model`` in eval mode; restore each one's previous mode on exit.

    A callable that is not an ``nn.Module`` (e.g. a plain function) is left alone.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    if not any(training for _, training in modes):  # already in eval mode: nothing to switch or restore
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.train(mode)
