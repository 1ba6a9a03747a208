"""Argument checks shared by every module of :mod:`certify` (one wording for one mistake).

Each check returns the normalised value or raises ``TypeError`` (wrong type) / ``ValueError`` (right type,
outside the accepted range); the message names the argument and the accepted values, so the CLI can show it
as a one-line error. :mod:`estimators` keeps its own copy (:mod:`estimators._checks`) to stay independent.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

__all__ = ["check_int", "check_float", "check_bool", "check_choice", "check_probability", "check_float_tuple"]


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (bools are not ints here).

    >>> check_int("n", 3, 1)
    3
    """
    if minimum is not None and maximum is not None:
        accepted = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        accepted = f"an integer >= {minimum}"
    elif maximum is not None:
        accepted = f"an integer <= {maximum}"
    else:
        accepted = "an integer"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__} {value!r}")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ValueError(f"{name} must be {accepted}, got {v}")
    return v


def check_float(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the interval (closed unless ``low_open``/``high_open``).

    >>> check_float("sigma", 0.25, low=0.0, low_open=True)
    0.25
    """
    interval = _interval(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number in {interval}, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return v


def check_probability(name: str, value: Any) -> float:
    """A probability strictly inside (0, 1), e.g. a failure budget ``alpha``."""
    return check_float(name, value, low=0.0, high=1.0, low_open=True, high_open=True)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (numpy bools accepted)."""
    if type(value).__name__ == "bool_":
        return bool(value)
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` lower-cased if it is one of ``choices`` (a string enum at the boundary)."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value.lower()


def check_float_tuple(name: str, values: Any, **interval: Any) -> tuple[float, ...]:
    """A non-string sequence of numbers, each checked by :func:`check_float` with ``interval``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__} {values!r}")
    return tuple(check_float(f"{name}[{i}]", v, **interval) for i, v in enumerate(values))
