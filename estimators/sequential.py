"""Anytime-valid confidence sequences for a binomial proportion, and the stop rules of sequential smoothing.

A *confidence sequence* (CS) at level alpha for the success probability p of i.i.d. Bernoulli draws is a
sequence of intervals [lower_n, upper_n] with

    P_p(there is an n with p < lower_n or p > upper_n) <= alpha        for every p,

so, unlike a fixed-n confidence interval, it may be checked after every batch and sampling may stop at any
data-dependent time tau: P(p < lower_tau) <= alpha still holds (optional stopping). Two constructions:

* :func:`beta_binomial_cs`: Robbins' mixture martingale (Robbins 1970, "Statistical methods related to the law
  of the iterated logarithm"; the beta-binomial form in Howard, Ramdas, McAuliffe & Sekhon 2021,
  "Time-uniform, nonparametric, nonasymptotic confidence sequences"). For a Beta(a, b) prior,
  M_n(p) = B(a + k, b + n - k) / (B(a, b) p^k (1 - p)^(n - k)) is a non-negative martingale with mean 1 under p;
  Ville's inequality gives P(sup_n M_n(p) >= 1 / alpha) <= alpha, and the CS is {p : M_n(p) < 1 / alpha}
  (an interval: log M_n is convex in p and <= 0 at p = k / n). Valid at EVERY n, no horizon.
* :func:`scheduled_clopper_pearson`: exact Clopper-Pearson bounds at level alpha_j (:func:`check_levels`: alpha /
  n_checks each, or a share of alpha reserved for the last check), valid simultaneously over any set of at most
  ``n_checks`` sample counts fixed in advance (union bound, sum of alpha_j = alpha), e.g. the
  geometric schedule of :func:`check_schedule`. With a known maximum n (``n_estimate``) this is tighter than
  the mixture for the sample sizes of randomized smoothing (Voracek, NeurIPS 2024, studies confidence sequences
  for randomized smoothing); ``Smooth.certify(sequential=True)`` uses it. Between two checks the last
  checked bound is carried forward, which keeps it a CS for every n.

:func:`stop_decision` is the pure stop rule used by sequential certification (decision mode with a target
radius, or radius mode with a tolerance).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np
from scipy import special

__all__ = [
    "beta_binomial_cs",
    "scheduled_clopper_pearson",
    "check_levels",
    "check_schedule",
    "stop_decision",
    "STOP_REASONS",
]

STOP_REASONS = ("certified", "unreachable", "out_of_budget", "converged", "exhausted")


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number in (0, 1), got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return alpha


def _counts(k, n) -> tuple[np.ndarray, np.ndarray]:
    k_arr, n_arr = np.asarray(k), np.asarray(n)
    for name, arr in (("k", k_arr), ("n", n_arr)):
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            if not (np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr))
                    and np.all(arr == np.round(arr))):
                raise TypeError(f"{name} must be an integer count (or array of counts), got {arr!r}")
    k_b, n_b = np.broadcast_arrays(k_arr.astype(np.int64), n_arr.astype(np.int64))
    if np.any(n_b < 1):
        raise ValueError(f"n must be >= 1, got {n!r}")
    if np.any(k_b < 0) or np.any(k_b > n_b):
        raise ValueError(f"k must satisfy 0 <= k <= n, got k={k!r}, n={n!r}")
    return k_b, n_b


def _maybe_scalar(arr: np.ndarray, *inputs):
    if all(np.ndim(v) == 0 for v in inputs):
        return float(arr)
    return arr


# ----------------------------------------------------------------------------------------------------------
# Robbins' beta-binomial mixture
# ----------------------------------------------------------------------------------------------------------
def _log_mixture(p: np.ndarray, k: np.ndarray, n: np.ndarray, a: float, b: float) -> np.ndarray:
    """log M_n(p) for 0 < p < 1 (vectorised)."""
    log_marginal = special.betaln(a + k, b + n - k) - special.betaln(a, b)
    return log_marginal - special.xlogy(k, p) - special.xlog1py(n - k, -p)


# a point counts as outside the CS only when log M exceeds the threshold by this much (rounding of betaln and the
# logs is far smaller), so float error can only widen the interval
_LOG_MARGIN = 1e-9


def beta_binomial_cs(k, n, alpha: float, *, prior: tuple[float, float] = (1.0, 1.0)):
    """Robbins' beta-binomial mixture confidence sequence: (lower, upper) after k successes in n draws.

    Guarantee (Ville's inequality): if the draws are i.i.d. Bernoulli(p), then
    P(there is an n >= 1 with lower_n > p or upper_n < p) <= alpha, for every p and every prior; in particular
    P(there is an n with lower_n > p) <= alpha, so stopping at any data-dependent time is valid. The interval is
    {p : M_n(p) < 1 / alpha} with M_n(p) = B(a + k, b + n - k) / (B(a, b) p^k (1 - p)^(n - k)), ``prior`` =
    (a, b) > 0 (uniform by default). Endpoints by vectorised bisection (80 halvings), keeping the conservative
    side. lower = 0 when k = 0, upper = 1 when k = n.

    Vectorised over ``k`` and ``n`` (numpy broadcasting); floats for scalar input.

    Example: with all n draws successes and a uniform prior, lower = (alpha / (n + 1))^(1/n):
    ``beta_binomial_cs(100, 100, 0.001)[0] == (0.001 / 101) ** (1 / 100)`` (up to 1e-12).
    """
    alpha = _check_alpha(alpha)
    if (not isinstance(prior, tuple) or len(prior) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                       for v in prior)):
        raise ValueError(f"prior must be a tuple (a, b) of two positive finite numbers, got {prior!r}")
    a, b = float(prior[0]), float(prior[1])
    k_b, n_b = _counts(k, n)
    thr = math.log(1.0 / alpha) + _LOG_MARGIN
    p_hat = k_b / n_b
    # lower: log M is decreasing on (0, p_hat]; keep lo outside (log M >= thr), hi inside
    lo, hi = np.zeros(k_b.shape), p_hat.astype(np.float64)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        out = _log_mixture(np.maximum(mid, 1e-300), k_b, n_b, a, b) >= thr
        lo, hi = np.where(out, mid, lo), np.where(out, hi, mid)
    lower = np.where(k_b == 0, 0.0, lo)
    lo2, hi2 = p_hat.astype(np.float64), np.ones(k_b.shape)
    for _ in range(80):
        mid = 0.5 * (lo2 + hi2)
        out = _log_mixture(np.minimum(mid, 1.0 - 1e-16), k_b, n_b, a, b) >= thr
        lo2, hi2 = np.where(out, lo2, mid), np.where(out, mid, hi2)
    upper = np.where(k_b == n_b, 1.0, hi2)
    return _maybe_scalar(lower, k, n), _maybe_scalar(upper, k, n)


# ----------------------------------------------------------------------------------------------------------
# union bound over a fixed schedule
# ----------------------------------------------------------------------------------------------------------
def check_schedule(n_max: int, *, first: int = 100, growth: float = 1.25) -> np.ndarray:
    """Sample counts at which a sequential certificate checks its stop rule: a geometric grid ending at n_max.

    n_0 = min(first, n_max), n_{j+1} = max(n_j + 1, ceil(n_j * growth)), the last entry is exactly n_max.
    Depends only on (n_max, first, growth), never on a batch size or on the data, so a union bound over its
    ``len(schedule)`` entries is valid (:func:`scheduled_clopper_pearson`).

    Example: ``check_schedule(1000, first=100, growth=2.0).tolist() == [100, 200, 400, 800, 1000]``.
    """
    for name, v, lo in (("n_max", n_max, 1), ("first", first, 1)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if isinstance(growth, bool) or not isinstance(growth, numbers.Real) or not (math.isfinite(growth) and growth > 1):
        raise ValueError(f"growth must be a finite number > 1, got {growth!r}")
    out = [min(int(first), int(n_max))]
    while out[-1] < n_max:
        out.append(min(int(n_max), max(out[-1] + 1, int(math.ceil(out[-1] * float(growth))))))
    return np.asarray(out, dtype=np.int64)


def check_levels(alpha: float, n_checks: int, *, final_share: float = 0.0) -> np.ndarray:
    """Per-check levels alpha_0..alpha_{J-1} of a weighted union bound over J = ``n_checks`` fixed checks.

    alpha_j = (1 - final_share) alpha / J for every check, plus final_share alpha on the last one, so
    sum_j alpha_j = alpha exactly: bounds at level alpha_j at check j fail somewhere with probability <= alpha.
    ``final_share = 0`` is the equal split alpha / J; ``final_share = 0.5`` keeps half of alpha for the last
    check, so a sequential certificate that runs to its cap n_max loses little against a fixed-n certificate
    at alpha (its last bound is at level > alpha / 2 instead of alpha / J), for twice smaller levels at the
    earlier checks (a few more samples before an early stop).

    Example: ``check_levels(0.01, 4, final_share=0.5).tolist() == [0.00125, 0.00125, 0.00125, 0.00625]``.
    """
    alpha = _check_alpha(alpha)
    if isinstance(n_checks, bool) or not isinstance(n_checks, numbers.Integral) or n_checks < 1:
        raise ValueError(f"n_checks must be an int >= 1, got {n_checks!r}")
    if isinstance(final_share, bool) or not isinstance(final_share, numbers.Real) or not 0.0 <= final_share < 1.0:
        raise ValueError(f"final_share must be a number in [0, 1), got {final_share!r}")
    levels = np.full(int(n_checks), (1.0 - float(final_share)) * alpha / int(n_checks))
    levels[-1] += float(final_share) * alpha
    return levels


def scheduled_clopper_pearson(k, n, alpha: float, *, n_checks: int, final_share: float = 0.0,
                              final: bool = False):
    """Clopper-Pearson (lower, upper) at the level :func:`check_levels` gives a check: a CS over n_checks times.

    The level is alpha_j = (1 - final_share) alpha / n_checks at an intermediate check, and that plus
    final_share alpha at the last one (``final=True``); with the default ``final_share=0`` every check is at
    alpha / n_checks. Guarantee (union bound over the checks, sum of the levels = alpha): for ANY set S of at most
    ``n_checks`` sample counts fixed before sampling (e.g. :func:`check_schedule`, whose last entry is the one
    evaluated with ``final=True``), P(there is an n in S with lower_n > p) <= alpha and
    P(there is an n in S with upper_n < p) <= alpha, for every p. Hence stopping at the first check where a
    data-dependent rule fires is valid. Both sides together fail with probability <= 2 alpha (each side alone
    <= alpha). lower is the alpha_j quantile of Beta(k, n - k + 1) (0 when k = 0); upper the
    1 - alpha_j quantile of Beta(k + 1, n - k) (1 when k = n).

    Vectorised over ``k`` and ``n``; floats for scalar input.

    Example: ``scheduled_clopper_pearson(100, 100, 0.01, n_checks=10)[0] == 0.001 ** (1 / 100)``.
    """
    if not isinstance(final, bool):
        raise TypeError(f"final must be True or False, got {type(final).__name__}")
    levels = check_levels(alpha, n_checks, final_share=final_share)
    k_b, n_b = _counts(k, n)
    level = float(levels[-1] if final else levels[0])
    lower = np.zeros(k_b.shape)
    pos = k_b > 0
    if np.any(pos):  # Beta quantiles (special.betaincinv = stats.beta.ppf without its per-call overhead)
        lower[pos] = special.betaincinv(k_b[pos], n_b[pos] - k_b[pos] + 1, level)
    upper = np.ones(k_b.shape)
    lt = k_b < n_b
    if np.any(lt):
        upper[lt] = special.betaincinv(k_b[lt] + 1, n_b[lt] - k_b[lt], 1.0 - level)
    return _maybe_scalar(lower, k, n), _maybe_scalar(upper, k, n)


# ----------------------------------------------------------------------------------------------------------
# stop rule of sequential certification
# ----------------------------------------------------------------------------------------------------------
def _z(p: float) -> float:
    """Phi^-1(p) in sigma units, 0 for p <= 1/2 (no radius), inf for p >= 1."""
    if p <= 0.5:
        return 0.0
    if p >= 1.0:
        return math.inf
    return float(special.ndtri(p))


def stop_decision(*, lower: float, upper: float, best_lower: float, sigma: float,
                  target_radius: Optional[float], radius_tol: float) -> Optional[str]:
    """Whether a sequential certificate may stop: None (continue) or one of "certified", "unreachable",
    "out_of_budget", "converged".

    ``lower``/``upper``: the current confidence-sequence bounds on pA; ``best_lower``: the lower bound the
    last check (n = n_max) would give if every remaining sample voted for the top class (it caps the radius).
    Radii are sigma * Phi^-1(.) (Cohen), input units.

    * decision mode (``target_radius`` = r): "certified" when lower > 1/2 and sigma Phi^-1(lower) >= r;
      "unreachable" when upper < Phi(r / sigma) (or upper <= 1/2): r is out of reach unless the upper bound
      fails; "out_of_budget" when even best_lower (all remaining samples for the top class) cannot certify r.
    * radius mode (``target_radius`` None): "converged" when the radius can grow by at most
      ``radius_tol * sigma``: min(sigma Phi^-1(best_lower), sigma Phi^-1(upper)) - sigma Phi^-1(lower) <=
      radius_tol * sigma. The first term is a hard cap; the second holds whenever the upper bound does.

    Stopping never affects the certificate's validity (the bounds are a confidence sequence); this rule only
    trades samples for radius.

    Example: ``stop_decision(lower=0.9, upper=0.99, best_lower=0.999, sigma=0.25, target_radius=0.25,
    radius_tol=0.01) == "certified"`` (0.25 Phi^-1(0.9) = 0.32 >= 0.25).
    """
    z_lo, z_up, z_best = _z(lower), _z(upper), _z(best_lower)
    if target_radius is not None:
        need = float(target_radius) / sigma
        if lower > 0.5 and z_lo >= need:
            return "certified"
        if upper <= 0.5 or z_up < need:
            return "unreachable"
        if best_lower <= 0.5 or z_best < need:
            return "out_of_budget"
        return None
    if min(z_best, z_up) - z_lo <= radius_tol:
        return "converged"
    return None
