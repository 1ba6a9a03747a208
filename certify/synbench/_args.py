"""Argument validation shared by the SynBench modules."""
from __future__ import annotations

import numpy as np
import torch


def _float_tuple(name: str, values, *, low: float, low_open: bool, high: float, high_open: bool,
                 increasing: bool) -> tuple[float, ...]:
    if isinstance(values, (int, float, np.floating, np.integer)) and not isinstance(values, bool):
        values = (values,)
    if isinstance(values, (str, bytes)) or values is None:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}")
    try:
        arr = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got {values!r}")
    lo_ok = arr > low if low_open else arr >= low
    hi_ok = arr < high if high_open else arr <= high
    if not np.all(np.isfinite(arr)) or not np.all(lo_ok & hi_ok):
        rng = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {rng}, got {values!r}")
    if increasing and np.any(np.diff(arr) <= 0):
        raise ValueError(f"{name} must be strictly increasing, got {values!r}")
    if not increasing and len(set(arr.tolist())) != arr.size:
        raise ValueError(f"{name} must not contain duplicates, got {values!r}")
    return tuple(float(v) for v in arr)


def _input_shape(value) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) == 0:
        raise TypeError(f"input_shape must be a tuple of positive ints such as (C, H, W), got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"input_shape must be a tuple of positive ints such as (C, H, W), got {value!r}")
    return tuple(int(v) for v in value)
