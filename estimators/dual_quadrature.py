"""A proven lower bound on the one-dimensional integral in the two-component dual (estimators.radius).

For multipliers l0, l1 >= 0, l2 > 0 and r > 0 the dual function of the two-component LP contains

    I = E_x[ J(s(x)) ],   x ~ N(0, 1),   s(x) = exp(r x - r^2/2) - l0 - l1 x,
    J(s) = E_y[min(0, s + l2 y)] = s Phi(-s/l2) - l2 phi(s/l2)      (y ~ N(0, 1)).

:func:`dual_integral_lower_bound` returns a number that is <= I for EVERY such multiplier set, not an estimate.
The proof uses only these facts about the integrand class:

* s is convex in x, so on an interval [u, w] its maximum is max(s(u), s(w)) and its minimum is s at the
  clipped stationary point x* = (log(l1 / r) + r^2/2) / r (or an endpoint); call the range [s_lo, s_hi].
* J is non-decreasing (J' = Phi(-s/l2) in (0, 1)) and concave with |J''(s)| = phi(s/l2)/l2 <= K on the range,
  K = phi(d/l2)/l2 with d the distance from 0 to [s_lo, s_hi].
* Hence, for any s_c in the range and every x in [u, w] (monotone bound, Taylor bound with Lagrange remainder):
  J(s(x)) >= J(s_lo)  and  J(s(x)) >= J(s_c) + J'(s_c)(s(x) - s_c) - K/2 (s_hi - s_lo)^2 / 4 (s_c the midpoint).
  Integrated against phi both are closed form: the mass Phi(w) - Phi(u), and
  E[(s(x) - s_c) 1{u<x<w}] = [Phi(w - r) - Phi(u - r)] - (l0 + s_c)(Phi(w) - Phi(u)) - l1 (phi(u) - phi(w))
  (because exp(r x - r^2/2) phi(x) = phi(x - r)). The larger of the two is a lower bound on the piece.
  Concavity also gives an upper bound (the tangent line without the remainder, and J(s_hi) times the mass),
  used only to decide where to refine.
* |x| > X (X = 12): J(s) >= min(0, s) - l2 phi(0) and min(0, s) >= -l0 - l1 |x| there, so the tail is at least
  -(l0 + l2 phi(0)) P(|x| > X) - l1 E[|x| 1{|x| > X}].

The partition starts at fixed breaks refined around the roots of s (where J bends, on the scale l2 / |s'|) and
intervals are halved where the upper and lower bounds differ most, until the total gap is below ``tol``
(the bound is valid after any number of refinements; refinement only tightens it).

Floating point: the sums are exact (math.fsum); the returned value is lowered by a bound on every rounding
error: the s range is widened by 64 ulps of the magnitudes that form s; each Phi/phi value is taken to carry
4 ulps of its tail value (scipy's ndtr/exp are accurate to a few ulps), propagated by summation by parts
(sum_k c_k (F_{k+1} - F_k) moves by at most sum_k |dF_k| |c_k - c_{k-1}|); the coefficients J(s_c), J'(s_c)
and every product carry 16 ulps of their magnitudes.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["dual_integral_lower_bound", "X_MAX"]

X_MAX = 12.0
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_EPS = float(np.finfo(np.float64).eps)
_TAIL_MASS = 2.0 * float(special.ndtr(-X_MAX))
_TAIL_FIRST_MOMENT = 2.0 * math.exp(-0.5 * X_MAX * X_MAX) * _INV_SQRT_2PI
_BASE_BREAKS = (-X_MAX, -8.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0,
                5.0, 6.0, 8.0, X_MAX)
_ROOT_OFFSETS = (0.0, 0.125, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def _phi(x):
    return np.exp(-0.5 * np.square(x)) * _INV_SQRT_2PI


def _upper_tail(x):
    """P(N(0,1) > x), accurate (relative) for both signs."""
    return special.ndtr(-x)


def _mass(u, w):
    """Phi(w) - Phi(u) for u < w from the tail on the side away from 0 (no cancellation in the tails), and the
    absolute error bound of each endpoint value used."""
    neg = w <= 0.0
    fu = np.where(neg, special.ndtr(u), _upper_tail(u))
    fw = np.where(neg, special.ndtr(w), _upper_tail(w))
    m = np.where(neg, fw - fu, fu - fw)
    return m, (4.0 * _EPS * fu, 4.0 * _EPS * fw, neg)


def _s(r, l0, l1, x):
    arg = r * x - 0.5 * r * r
    e = np.exp(arg)
    return e - l0 - l1 * x, 64.0 * _EPS * (e * (np.abs(arg) + 2.0) + l0 + l1 * np.abs(x))


def _J(s, l2):
    t = s / l2
    return s * special.ndtr(-t) - l2 * _phi(t)


def _initial_edges(r, l0, l1, l2, roots):
    breaks = list(_BASE_BREAKS)
    x_star = None
    if l1 > 0.0:
        x_star = (math.log(l1) - math.log(r) + 0.5 * r * r) / r
        if -X_MAX < x_star < X_MAX:
            breaks.append(x_star)
    for root in roots:
        slope = abs(r * math.exp(r * root - 0.5 * r * r) - l1)
        width = min(max(l2 / max(slope, 1e-300), 1e-12), 4.0)
        for k in _ROOT_OFFSETS:
            breaks.append(root - k * width)
            breaks.append(root + k * width)
    edges = np.unique(np.clip(np.asarray(breaks, dtype=np.float64), -X_MAX, X_MAX))
    return edges, x_star


def _pieces(r, l0, l1, l2, u, w, x_star):
    """Per interval [u, w]: coefficients (c0, c1, c2) of the chord bound on (mass, shifted mass, phi
    difference), the lower bound (chord plus the proven part of the curvature correction), the refinement
    gap, the coefficient-rounding allowance and the edge errors of the three Phi/phi differences."""
    s_u, du = _s(r, l0, l1, u)
    s_w, dw = _s(r, l0, l1, w)
    s_lo, s_hi = np.minimum(s_u, s_w), np.maximum(s_u, s_w)
    ds = np.maximum(du, dw)
    if x_star is not None:
        inside = (u < x_star) & (x_star < w)
        if np.any(inside):
            s_st, d_st = _s(r, l0, l1, np.clip(x_star, u, w))
            s_lo = np.where(inside, np.minimum(s_lo, s_st), s_lo)
            ds = np.where(inside, np.maximum(ds, d_st), ds)
    s_lo, s_hi = s_lo - ds, s_hi + ds
    m, err_m = _mass(u, w)
    m1, err_m1 = _mass(u - r, w - r)
    p_u, p_w = _phi(u), _phi(w)
    dphi = p_u - p_w
    hw = 0.5 * (s_hi - s_lo)
    j_lo, j_hi = _J(s_lo, l2), _J(s_hi, l2)
    # chord of the concave J over [s_lo, s_hi]: below J there; its slope is in [0, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(hw > 0.0, (j_hi - j_lo) / (2.0 * hw), special.ndtr(-s_lo / l2))
    slope = np.clip(np.nan_to_num(slope, nan=0.0), 0.0, 1.0)
    c0 = j_lo - slope * (l0 + s_lo)
    c1 = slope
    c2 = -slope * l1
    chord = c0 * m + c1 * m1 + c2 * dphi
    # J - chord = -J''(xi)/2 (s - s_lo)(s_hi - s) >= k_min/2 (hw^2 - (s - s_c)^2), k_min = min |J''| on the range
    k_min = np.minimum(_phi(s_lo / l2), _phi(s_hi / l2)) / l2
    dist = np.maximum(np.maximum(s_lo, -s_hi), 0.0)
    k_max = _phi(dist / l2) / l2
    corr, corr_err = _curvature_correction(r, l0, l1, u, w, 0.5 * (s_lo + s_hi), hw, m, m1, err_m, err_m1,
                                           p_u, p_w)
    gain = 0.5 * k_min * corr
    gain_ok = np.maximum(gain - 0.5 * k_min * corr_err - 16.0 * _EPS * np.abs(gain), 0.0)
    lower = chord + gain_ok
    # upper bound (refinement only): J - chord <= k_max/2 (hw^2 - (s - s_c)^2), at most k_max/2 hw^2 per unit mass
    q_up = np.minimum(np.maximum(corr + corr_err, 0.0), hw * hw * m)
    gap = np.maximum(0.5 * k_max * q_up - gain_ok, 0.0)
    # rounding: J(s_lo), J(s_hi) to 8 ulps of |s| + l2 each (moves the chord by <= 2 of them), the slope
    # division, and the products
    dj = 8.0 * _EPS * (np.maximum(np.abs(s_lo), np.abs(s_hi)) + l2)
    coef_err = (2.0 * dj + 4.0 * _EPS * slope * 2.0 * hw) * m + 16.0 * _EPS * (
        np.abs(c0 * m) + np.abs(c1 * m1) + np.abs(c2 * dphi) + np.abs(slope * (l0 + s_lo) * m) + np.abs(lower))
    err_phi = (4.0 * _EPS * p_u, 4.0 * _EPS * p_w, np.zeros(u.shape, dtype=bool))
    return (c0, c1, c2), lower, gap, coef_err, (err_m, err_m1, err_phi)


def _curvature_correction(r, l0, l1, u, w, s_c, hw, m, m1, err_m, err_m1, p_u, p_w):
    """Q = E[(hw^2 - (s(x) - s_c)^2) 1{u < x < w}] >= 0 in closed form, and a bound on its rounding error.

    (s - s_c)^2 = e^2 - 2 e (A + l1 x) + (A + l1 x)^2 with e = exp(r x - r^2/2), A = l0 + s_c, and
    e^2 phi(x) = exp(r^2) phi(x - 2r), e phi(x) = phi(x - r). Where exp(r^2) overflows the correction is 0.
    """
    A = l0 + s_c
    if r * r > 700.0:
        return np.zeros_like(m), np.zeros_like(m)
    m2, err_m2 = _mass(u - 2.0 * r, w - 2.0 * r)
    g = math.exp(r * r)
    q_u, q_w = _phi(u - r), _phi(w - r)
    terms = (g * m2, -2.0 * A * m1, -2.0 * l1 * (r * m1 + q_u - q_w), A * A * m, 2.0 * A * l1 * (p_u - p_w),
             l1 * l1 * (m + u * p_u - w * p_w), -hw * hw * m)
    sq = -(terms[0] + terms[1] + terms[2] + terms[3] + terms[4] + terms[5] + terms[6])
    mag = sum(np.abs(t) for t in terms)
    mass_err = (g * (err_m2[0] + err_m2[1]) + 2.0 * np.abs(A) * (1.0 + l1 * r) * (err_m1[0] + err_m1[1])
                + (A * A + l1 * l1 + hw * hw) * (err_m[0] + err_m[1]))
    phi_err = 8.0 * _EPS * (2.0 * l1 * (q_u + q_w) + (2.0 * np.abs(A) * l1 + l1 * l1 * (np.abs(u) + np.abs(w)))
                            * (p_u + p_w))
    return sq, 32.0 * _EPS * mag + mass_err + phi_err


def _summation_by_parts_error(c, errs) -> float:
    """Bound on |sum_k c_k (dF_{k+1} - dF_k)| given |dF| at the left/right end of every interval. Neighbours
    that compute their shared edge the same way share its error, so only the coefficient jump propagates it;
    where the representation switches (lower vs upper tail) both sides count in full."""
    e_left, e_right, neg = errs
    c_prev = np.concatenate([[0.0], c[:-1]])
    e_prev = np.concatenate([[0.0], e_right[:-1]])
    switch = np.concatenate([[True], neg[1:] != neg[:-1]])
    shared = np.maximum(e_left, e_prev) * np.abs(c - c_prev)
    separate = e_left * np.abs(c) + e_prev * np.abs(c_prev)
    return float(np.sum(np.where(switch, separate, shared)) + e_right[-1] * abs(c[-1]))


def dual_integral_lower_bound(r: float, l0: float, l1: float, l2: float, roots, *, tol: float = 1e-12,
                              max_rounds: int = 60, max_intervals: int = 20000) -> tuple[float, float]:
    """(value, gap): a proven lower bound ``value`` on E[J(s(x))] (module docstring), including the |x| > 12
    tail and every floating-point rounding error, and ``gap`` = how much larger the integral can be (upper
    minus lower bound; <= tol once converged). ``roots``: approximate roots of s in [-12, 12] (only used to
    place the first breaks; any values keep the bound valid). Requires r > 0, l0, l1 >= 0, l2 > 0.

    Example: ``dual_integral_lower_bound(1.0, 1.0, 0.5, 0.1, [-1.80, 0.86])`` gives (-0.23165761677, ~4e-11):
    below the exact -0.2316576167438 (30-digit mpmath) by 2.5e-11.
    """
    if not (r > 0.0 and l0 >= 0.0 and l1 >= 0.0 and l2 > 0.0):
        raise ValueError(f"need r > 0, l0 >= 0, l1 >= 0, l2 > 0; got r={r!r}, l0={l0!r}, l1={l1!r}, l2={l2!r}")
    edges, x_star = _initial_edges(r, l0, l1, l2, roots)
    for _ in range(max_rounds):
        u, w = edges[:-1], edges[1:]
        coefs, lower, gap, coef_err, edge_errs = _pieces(r, l0, l1, l2, u, w, x_star)
        total_gap = float(gap.sum())
        n = len(u)
        if total_gap <= tol or n >= max_intervals:
            break
        split = gap > max(tol / (2.0 * n), 0.25 * total_gap / n)
        split &= (w - u) > 1e-14 * np.maximum(1.0, np.abs(u))
        if not np.any(split):
            break
        edges = np.unique(np.concatenate([edges, 0.5 * (u[split] + w[split])]))
    tail = (l0 + l2 * _INV_SQRT_2PI) * _TAIL_MASS + l1 * _TAIL_FIRST_MOMENT
    err = float(np.sum(coef_err)) + 8.0 * _EPS * tail
    for c, errs in zip(coefs, edge_errs):
        err += _summation_by_parts_error(c, errs)
    value = math.fsum([*lower.tolist(), -tail])
    err += 8.0 * _EPS * float(np.sum(np.abs(lower)))
    return value - err, total_gap
