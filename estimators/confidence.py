"""Confidence bounds for binomial proportions, binomial tests and failure-probability budgets.

Everything here is a pure function of counts; no sampling happens in this module.

* :func:`clopper_pearson_lower` / :func:`clopper_pearson_upper`: exact one-sided Clopper-Pearson bounds
  (Clopper & Pearson 1934), as used by CERTIFY in Cohen, Rosenfeld & Kolter (2019).
* :func:`binomial_test_pvalue`: exact two-sided binomial test (``scipy.stats.binomtest``), as used by PREDICT.
* :func:`split_alpha` / :class:`AlphaBudget`: an explicit union-bound budget: a total failure probability
  ``alpha`` divided into named shares that sum to at most ``alpha``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from scipy import special, stats

from estimators._checks import check_alpha

__all__ = [
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "binomial_test_pvalue",
    "split_alpha",
    "AlphaBudget",
    "check_alpha",
]


def _counts(k, n, alpha):
    """Validate and broadcast (k, n, alpha) for the Clopper-Pearson bounds."""
    k_arr = np.asarray(k)
    n_arr = np.asarray(n)
    for name, arr in (("k", k_arr), ("n", n_arr)):
        if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"{name} must be an integer count (or array of counts), got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise ValueError(f"{name} must hold whole numbers, got {arr!r}")
    k_arr = k_arr.astype(np.int64)
    n_arr = n_arr.astype(np.int64)
    if np.any(n_arr < 1):
        raise ValueError(f"n must be >= 1, got {n!r}")
    if np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError(f"k must satisfy 0 <= k <= n, got k={k!r}, n={n!r}")
    alpha = check_alpha(alpha)
    k_b, n_b = np.broadcast_arrays(k_arr, n_arr)
    return k_b, n_b, alpha


def _maybe_scalar(out: np.ndarray, *inputs):
    if all(np.ndim(v) == 0 for v in inputs):
        return float(out)
    return out


def clopper_pearson_lower(k, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    Guarantee: if ``k ~ Binomial(n, p)`` then ``P(clopper_pearson_lower(k, n, alpha) <= p) >= 1 - alpha``
    for every p (exact, not asymptotic). Equals
    ``statsmodels.stats.proportion.proportion_confint(k, n, alpha=2*alpha, method="beta")[0]``,
    i.e. the ``alpha`` quantile of Beta(k, n - k + 1); 0 when k = 0.

    Vectorised over ``k`` and ``n`` (numpy broadcasting); returns a float for scalar input.

    Example: ``clopper_pearson_lower(100, 100, 0.001) == 0.001 ** (1 / 100)`` (all samples agree).
    """
    k_b, n_b, alpha = _counts(k, n, alpha)
    out = np.zeros(k_b.shape, dtype=np.float64)
    pos = k_b > 0
    if np.any(pos):
        # the alpha quantile of Beta(k, n - k + 1): special.betaincinv is the C routine behind stats.beta.ppf
        # (equal to it bit for bit, tests/test_confidence.py) without its per-call argument handling
        out[pos] = special.betaincinv(k_b[pos], n_b[pos] - k_b[pos] + 1, alpha)
    return _maybe_scalar(out, k, n)


def clopper_pearson_upper(k, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound on a binomial proportion.

    Guarantee: ``P(clopper_pearson_upper(k, n, alpha) >= p) >= 1 - alpha`` for every p. It is the
    ``1 - alpha`` quantile of Beta(k + 1, n - k); 1 when k = n. Mirror image of
    :func:`clopper_pearson_lower`: ``upper(k, n) == 1 - lower(n - k, n)``.
    """
    k_b, n_b, alpha = _counts(k, n, alpha)
    out = np.ones(k_b.shape, dtype=np.float64)
    lt = k_b < n_b
    if np.any(lt):
        out[lt] = special.betaincinv(k_b[lt] + 1, n_b[lt] - k_b[lt], 1.0 - alpha)
    return _maybe_scalar(out, k, n)


def binomial_test_pvalue(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test p-value of ``k`` successes in ``n`` trials against success rate ``p``.

    Uses ``scipy.stats.binomtest(k, n, p).pvalue`` (``binom_test`` no longer exists in scipy).
    PREDICT (Cohen et al. 2019, following Hung & Fithian 2019) abstains when the test of the top-two counts
    ``binomial_test_pvalue(n_A, n_A + n_B, 0.5)`` exceeds alpha. Ties give p-value 1.

    Example: ``binomial_test_pvalue(8, 10) == 0.109375``.
    """
    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must satisfy 0 <= k <= n, got k={k}, n={n}")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (0.0 <= float(p) <= 1.0):
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return float(stats.binomtest(int(k), int(n), float(p)).pvalue)


def split_alpha(alpha: float, weights: Mapping[str, float]) -> dict[str, float]:
    """Split a total failure probability ``alpha`` into named shares proportional to ``weights``.

    Guarantee used by every certificate: if each event i fails with probability at most ``shares[i]``,
    the union bound gives a total failure probability of at most ``sum(shares.values()) <= alpha``.
    The returned shares are rounded *down* if needed so that their sum (exact, or naive left to right in
    floating point) never exceeds alpha.

    Example: ``split_alpha(0.001, {"p_lower": 1, "gradient": 1}) == {"p_lower": 0.0005, "gradient": 0.0005}``.
    """
    alpha = check_alpha(alpha)
    if not isinstance(weights, Mapping) or len(weights) == 0:
        raise ValueError("weights must be a non-empty mapping name -> positive weight")
    w: dict[str, float] = {}
    for name, value in weights.items():
        if not isinstance(name, str):
            raise TypeError(f"weights keys must be str, got {type(name).__name__}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (float(value) > 0.0) \
                or not math.isfinite(float(value)):
            raise ValueError(f"weights[{name!r}] must be a positive finite number, got {value!r}")
        w[name] = float(value)
    total = math.fsum(w.values())
    shares = {name: alpha * value / total for name, value in w.items()}
    # Guard against rounding pushing the sum above alpha.
    while max(math.fsum(shares.values()), sum(shares.values())) > alpha:
        shares = {name: math.nextafter(s, 0.0) for name, s in shares.items()}
    return shares


@dataclass(frozen=True)
class AlphaBudget:
    """A named union-bound budget: ``shares[name]`` is the failure probability allotted to one bound.

    ``AlphaBudget.split(alpha, weights)`` builds one with :func:`split_alpha`; construction checks that the
    shares are in (0, 1) and sum to at most ``total``. ``budget[name]`` returns a share; ``to_dict()`` gives a
    plain dict (recorded in certificates as ``alpha_split``).
    """

    total: float
    shares: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        check_alpha(self.total, "total")
        for name, s in self.shares.items():
            check_alpha(s, f"shares[{name!r}]")
        if math.fsum(self.shares.values()) > self.total:
            raise ValueError(
                f"shares sum to {math.fsum(self.shares.values())!r} > total {self.total!r}; the union bound would fail")
        object.__setattr__(self, "shares", dict(self.shares))

    @classmethod
    def split(cls, alpha: float, weights: Mapping[str, float]) -> "AlphaBudget":
        return cls(total=float(alpha), shares=split_alpha(alpha, weights))

    def __getitem__(self, name: str) -> float:
        return self.shares[name]

    def __contains__(self, name: object) -> bool:
        return name in self.shares

    @property
    def used(self) -> float:
        return math.fsum(self.shares.values())

    def to_dict(self) -> dict[str, float]:
        return dict(self.shares)
