"""Argument checks of the :mod:`estimators` package (kept here so the package imports nothing from ``certify``).

Each check returns the normalised value or raises ``TypeError`` / ``ValueError`` naming the argument and the
accepted range.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_int", "check_positive", "check_alpha"]


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools are refused).

    >>> check_int("n", 10)
    10
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive real number, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return v


def check_alpha(alpha: Any, name: str = "alpha") -> float:
    """A failure probability: a real number strictly inside (0, 1), returned as float."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, 1), got {type(alpha).__name__}")
    a = float(alpha)
    if not (0.0 < a < 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in (0, 1), got {a!r}")
    return a
