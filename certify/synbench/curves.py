"""Grids, the closed-form raw-data reference curve and the SynBench score."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
from scipy import stats

from certify.synbench._args import _float_tuple
from estimators import gaussian_mixture as gm

#: separations ``s = ||mu||`` of the official protocol: 0.1, 0.2, ..., 4.9
DEFAULT_SEPARATIONS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 50))
#: a coarser grid for quick looks (CLI ``--quick``): 0.2, 0.4, ..., 4.8
QUICK_SEPARATIONS: tuple[float, ...] = tuple(round(0.2 * k, 1) for k in range(1, 25))
#: threshold-accuracy grid of the official code: 100 points from 0.6 to 1.0
DEFAULT_A_GRID: tuple[float, ...] = tuple(float(a) for a in np.linspace(0.6, 1.0, 100))
#: thresholds a_T the official script reports
SCORE_THRESHOLDS: tuple[float, ...] = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)


def expected_bound_curve(accuracy, margin, a_grid=DEFAULT_A_GRID) -> np.ndarray:
    """``E(a_t) = (1/S) sum_s margin(s) * 1[accuracy(s) > a_t]`` for every ``a_t`` in ``a_grid``.

    ``accuracy`` and ``margin`` are per-separation arrays of equal length ``S``; the comparison is
    strict, as in the official code.
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    mar = np.asarray(margin, dtype=np.float64)
    grid = np.asarray(a_grid, dtype=np.float64)
    if acc.ndim != 1 or acc.shape != mar.shape or acc.size == 0:
        raise ValueError(f"accuracy and margin must be non-empty 1-D arrays of equal length, got "
                         f"{acc.shape} and {mar.shape}")
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError("a_grid must be a non-empty 1-D array")
    if not (np.all(np.isfinite(acc)) and np.all(np.isfinite(mar)) and np.all(np.isfinite(grid))):
        raise ValueError("accuracy, margin and a_grid must be finite")
    return (mar[None, :] * (acc[None, :] > grid[:, None])).sum(axis=1) / acc.size


def synbench_score(e_rep, e_raw, a_grid, a_t: float) -> float:
    """``sum_{a >= a_t} E_rep(a) / sum_{a >= a_t} E_raw(a)`` over the grid (the SynBench score)."""
    grid = np.asarray(a_grid, dtype=np.float64)
    a = float(a_t)
    if not math.isfinite(a) or a < grid[0] - 1e-12 or a > grid[-1] + 1e-12:
        raise ValueError(f"a_t must lie in the threshold grid [{grid[0]:g}, {grid[-1]:g}], got {a_t!r}")
    sel = grid >= a - 1e-12
    den = float(np.asarray(e_raw, dtype=np.float64)[sel].sum())
    if den <= 0:
        raise ValueError(f"the raw-data curve is 0 above a_t={a_t:g} (no separation has Phi(s) > a_t); "
                         "choose a smaller a_t or larger separations")
    return float(np.asarray(e_rep, dtype=np.float64)[sel].sum() / den)


@dataclass(frozen=True)
class ReferenceCurve:
    """Closed-form raw-data curve: per separation ``accuracy = Phi(s)``, ``margin = B(Phi(s))``; and
    ``expected_bound`` ``E_raw(a_t)`` on ``a_grid``."""

    separations: tuple[float, ...]
    accuracy: tuple[float, ...]
    margin: tuple[float, ...]
    a_grid: tuple[float, ...]
    expected_bound: tuple[float, ...]

    def to_dict(self) -> dict:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}


def reference_curve(separations: Sequence[float] = DEFAULT_SEPARATIONS,
                    a_grid: Sequence[float] = DEFAULT_A_GRID) -> ReferenceCurve:
    """SynBench's theoretical raw-data robustness-accuracy curve (no sampling).

    For ``x ~ N(y mu, I)`` with ``||mu|| = s`` the Bayes classifier (also the eps-robust one, since
    the covariance is isotropic) has accuracy ``Phi(s)`` and expected normalised margin over correct
    points ``B(Phi(s)) = 1 + phi(s) / (Phi(s) s)``.

    Example:
        >>> ref = reference_curve()
        >>> round(ref.accuracy[9], 4), round(ref.margin[9], 4)      # s = 1.0
        (0.8413, 1.2876)
    """
    seps = _float_tuple("separations", separations, low=0.0, low_open=True, high=math.inf,
                        high_open=True, increasing=True)
    grid = _float_tuple("a_grid", a_grid, low=0.5, low_open=True, high=1.0, high_open=False,
                        increasing=True)
    s = np.asarray(seps)
    acc = stats.norm.cdf(s)
    mar = np.asarray(gm.margin_from_separation(s), dtype=np.float64).reshape(-1)
    e = expected_bound_curve(acc, mar, grid)
    return ReferenceCurve(separations=seps, accuracy=tuple(map(float, acc)), margin=tuple(map(float, mar)),
                          a_grid=grid, expected_bound=tuple(map(float, e)))
