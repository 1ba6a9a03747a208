"""Certified radii of Gaussian randomized smoothing from zeroth- and first-order information.

Pure float64 functions; no sampling, no model. Units: :func:`cohen_radius` and :func:`max_radius` take
``sigma`` and return radii in input units. All first-order functions work in *sigma units*: gradients are
``sigma * grad_x pA(x) = E[1{f(x + sigma z) = cA} z]`` (z ~ N(0, I)) and radii are returned in units of sigma
(multiply by sigma to get input units).

Setting (Cohen et al. 2019; Mohapatra et al. 2020, "Higher-Order Certification for Randomized Smoothing").
Let h(z) = 1{f(x + sigma z) = cA}, pA(x + sigma r u) = E[h(z + r u)] for a unit direction u. Given a lower
bound p on pA(x) and bounds on the gradient g = E[h(z) z], the worst case over all h consistent with the
bounds is a linear program in h. For p > 1/2 and r >= 0:

* zeroth order (only ``E h >= p``): h = half-space, value Phi(Phi^-1(p) - r), radius Phi^-1(p) (Cohen);
* first order, l2 (``E h >= p`` and ``<E h z, u> >= -m``, m an upper bound on ||g||_2): the minimiser is a
  slab ``h = 1{z2 <= <z, u> <= z1}`` with Phi(z1) - Phi(z2) = p and phi(z1) - phi(z2) = m (so that
  E[h <z,u>] = phi(z2) - phi(z1) = -m), value Phi(z1 - r) - Phi(z2 - r) (generalised Neyman-Pearson lemma:
  any interval is the sublevel set {e^{r t} < line} of the convex e^{r t}; the chord's slope and intercept are
  the Lagrange multipliers and both are >= 0 because z2 < 0 < z1 when p > 1/2, which is exactly the sign
  needed for the *inequality* constraints). If m >= phi(Phi^-1(p)) Cohen's half-space satisfies the gradient
  constraint and the radius is Cohen's. The radius is R = sup{r : Phi(z1 - r) - Phi(z2 - r) > 1/2};
* two components (:func:`radius_two_component`): additionally a lower bound b on the magnitude of the
  gradient component orthogonal to u; the minimiser is 1{b' y < c + a' x - exp(r x - r^2/2)} in the plane
  (x = <z,u>, y = orthogonal coordinate); we bound its value from below with the *dual* function, which is a
  valid lower bound for any multipliers, so inaccurate optimisation can only cost tightness, never soundness.
  Numerics: the dual is a one-dimensional integral (the y-integral is closed form). Its certified value is a
  proven lower bound (:mod:`estimators.dual_quadrature`): on each interval of a refined partition of [-12, 12]
  the concave J is bounded below by its chord (plus a proven curvature term) and the Gaussian integrals are
  closed form; the |x| > 12 tail and all float64 rounding (large multipliers make the dual a small difference
  of large terms) are bounded explicitly. Composite Gauss-Legendre (20 points per interval) is used only to
  find the multipliers.
  The slab radius keeps a few-ulp margin above 1/2 for the same reason. Multipliers come from a damped
  Newton ascent on the concave dual; the radius from Newton steps in r on the dual *estimate* (Gauss-Legendre,
  cheap) that locate the root, then ONE proven lower bound at a point a tolerance below it, so only a
  certified r is ever reported (a search that certifies every iterate takes over if that bound fails or the
  multipliers grow huge). The l1 / l_inf scans start each search from the root interpolated between
  neighbouring k. (The paper's official code uses nested bisections with 1000-point Gauss-Hermite and no
  certified lower bound.) tests/test_radius.py checks the dual against a brute-force grid LP;
  tests/test_radius_reference.py checks the radii against the every-iterate-certified search.

Soundness of plugging bounds in: because the constraints are inequalities (E h >= p, <g,u> >= -m, orthogonal
part >= b), the true h is feasible whenever the statistical bounds hold, so the LP value (and the radius) for
(lower p, upper m, lower b) is a lower bound on the truth; the radius is monotone: non-decreasing in p and b,
non-increasing in m. The set {r >= 0 : worst value > 1/2} is an interval [0, R): the minimiser at each r is
a convex region, whose Gaussian measure under translation is log-concave (Prekopa), hence unimodal in r.

Norms other than l2 (input units after multiplying by sigma):

* l1: a direction u with ||u||_1 = k has |<g,u>| <= k ||g||_inf and the l1 ball of radius e reaches
  distance e / k along u, so R_l1 = inf_{1 <= k <= sqrt(D)} k R2(p, min(k A_inf, M), sqrt(L^2 - a^2)), with
  A_inf >= ||g||_inf, M >= ||g||_2 >= L. The infimum is taken rigorously over k (branch and bound using
  that R2 is non-increasing in k), not just at k = 1 (a coordinate axis, the paper's choice).
* l_inf: same with the bound on ||g||_1 / sqrt(D) in place of ||g||_inf, divided by sqrt(D).
* one colour channel: R2(p, min(M_k, M), max(L_out, sqrt(L^2 - a^2))) with M_k >= ||g_k||_2 (in-channel)
  and L_out <= ||g_{-k}||_2 (out of channel).
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Optional

import numpy as np
from scipy import special

from estimators._checks import check_positive
from estimators.dual_quadrature import dual_integral_lower_bound

__all__ = [
    "cohen_radius",
    "max_radius",
    "gradient_norm_threshold",
    "slab_endpoints",
    "l2_radius_first_order",
    "radius_two_component",
    "worst_case_probability_two_component",
    "scan_radius",
    "l1_radius_first_order",
    "linf_radius_first_order",
    "channel_radius_first_order",
]

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_INV_SQRT_2PI = 1.0 / _SQRT_2PI
_SQRT_HALF = math.sqrt(0.5)


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _phi(x):
    return np.exp(-0.5 * np.square(x)) * _INV_SQRT_2PI


def _Phi(x):
    return special.ndtr(x)


def _Phi_inv(p):
    return special.ndtri(p)


def _probability_array(p, name: str) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64) if not _is_bad_type(p) else None
    if arr is None:
        raise TypeError(f"{name} must be a real number or array of real numbers, got {type(p).__name__}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0.0) or np.any(arr >= 1.0):
        raise ValueError(f"{name} must be a probability in [0, 1) (1 would mean an infinite radius), got {p!r}")
    return arr


def _nonneg_array(m, name: str, allow_inf: bool = True) -> np.ndarray:
    if _is_bad_type(m):
        raise TypeError(f"{name} must be a real number or array of real numbers, got {type(m).__name__}")
    arr = np.asarray(m, dtype=np.float64)
    if np.any(np.isnan(arr)) or np.any(arr < 0.0) or (not allow_inf and np.any(np.isinf(arr))):
        raise ValueError(f"{name} must be a non-negative {'' if allow_inf else 'finite '}number, got {m!r}")
    return arr


def _is_bad_type(v) -> bool:
    if isinstance(v, bool):
        return True
    if isinstance(v, numbers.Real):
        return False
    if isinstance(v, (np.ndarray, list, tuple)):
        arr = np.asarray(v)
        return arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating))
    return True


def _out(arr: np.ndarray, *inputs):
    if all(np.ndim(v) == 0 for v in inputs):
        return float(arr)
    return arr


# ----------------------------------------------------------------------------------------------------------
# zeroth order
# ----------------------------------------------------------------------------------------------------------
def cohen_radius(p_lower, sigma: float):
    """Zeroth-order l2 radius ``sigma * Phi^-1(p_lower)`` (Cohen et al. 2019, Theorem 1), input units.

    Guarantee: if pA(x) >= p_lower > 1/2 then the smoothed classifier predicts cA on the open l2 ball of this
    radius. Returns 0.0 when ``p_lower <= 1/2`` (the caller abstains). ``p_lower`` must be in [0, 1);
    vectorised over ``p_lower``.

    Example: ``cohen_radius(0.9, 0.5) == 0.5 * 1.2815515655446004``.
    """
    sigma = check_positive("sigma", sigma)
    p = _probability_array(p_lower, "p_lower")
    out = np.where(p > 0.5, sigma * _Phi_inv(np.maximum(p, 0.5)), 0.0)
    return _out(out, p_lower)


def max_radius(n: int, alpha: float, sigma: float) -> float:
    """Largest radius a Clopper-Pearson CERTIFY can report with ``n`` samples: ``sigma * Phi^-1(alpha^(1/n))``.

    When all n samples vote for cA the one-sided lower bound is exactly alpha^(1/n). Input units.

    Example: ``max_radius(100_000, 0.001, 0.25) ~= 0.25 * 3.8``.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be a positive int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be a positive int, got {n}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    sigma = check_positive("sigma", sigma)
    log_p = math.log(float(alpha)) / int(n)
    q = -math.expm1(log_p)  # 1 - alpha^(1/n), accurate for large n
    if q >= 0.5:
        return 0.0
    return float(sigma * -_Phi_inv(q))


# ----------------------------------------------------------------------------------------------------------
# first order, l2: the slab
# ----------------------------------------------------------------------------------------------------------
def gradient_norm_threshold(p):
    """phi(Phi^-1(p)): the gradient norm (sigma units) of Cohen's worst-case half-space at probability p.

    It is also the largest possible ||E[h z]||_2 over all h with E h = p. A gradient bound ``m`` at or above
    this value adds no information and :func:`l2_radius_first_order` returns Cohen's radius.
    """
    arr = _probability_array(p, "p")
    return _out(_phi(_Phi_inv(arr)), p)


_Z_FAR = -40.0  # phi(-40) ~ 1e-349: numerically the half-space limit of the slab


def slab_endpoints(p, m):
    """Endpoints (z2, z1) of the worst-case slab for probability ``p`` and gradient bound ``m`` (sigma units).

    Solves Phi(z1) - Phi(z2) = p and phi(z1) - phi(z2) = m with z2 < z1 by bisection on z2 (the map
    z2 -> phi(z2) - phi(z1(z2)) is increasing: its derivative is phi(z2)(z1 - z2) > 0). Requires p > 1/2 and
    0 <= m < phi(Phi^-1(p)); for m >= phi(Phi^-1(p)) returns z2 = -inf, z1 = Phi^-1(p) (Cohen's half-space).
    The bisection keeps the side whose gradient is *at least* m, so rounding can only make the slab (and the
    radius) more conservative. Vectorised.
    """
    p_arr = _probability_array(p, "p")
    m_arr = _nonneg_array(m, "m")
    p_b, m_b = np.broadcast_arrays(p_arr, m_arr)
    if np.any(p_b <= 0.5):
        raise ValueError("slab_endpoints needs p > 1/2")
    z2, z1 = _slab_endpoints(p_b.astype(np.float64), m_b.astype(np.float64))
    return _out(z2, p, m), _out(z1, p, m)


def _z1_of_z2(q, z2):
    # z1 = Phi^-1(p + Phi(z2)) written with q = 1 - p for accuracy near p = 1
    return -_Phi_inv(np.maximum(q - _Phi(z2), 1e-300))


def _slab_endpoints(p: np.ndarray, m: np.ndarray):
    if p.size == 1:  # one slab (the radius searches): the same float operations on scalars, without array overhead
        z2_s, z1_s = _slab_endpoints_scalar(float(p.reshape(-1)[0]), float(m.reshape(-1)[0]))
        return np.full(p.shape, z2_s), np.full(p.shape, z1_s)
    q = 1.0 - p
    zc = _Phi_inv(p)  # Cohen's boundary
    thr = _phi(zc)
    cohen = m >= thr
    lo = np.full(p.shape, _Z_FAR)
    hi = -zc  # = Phi^-1(q): z1 -> inf there
    g_lo = _phi(lo) - _phi(_z1_of_z2(q, lo))
    cohen = cohen | (g_lo > -m)  # m within rounding of the threshold: half-space
    for _ in range(110):
        mid = 0.5 * (lo + hi)
        if not (~cohen & (mid > lo) & (mid < hi)).any():
            break  # float resolution reached (half-space rows are discarded): further steps cannot change lo
        g_mid = _phi(mid) - _phi(_z1_of_z2(q, mid))
        ok = g_mid <= -m  # gradient component at mid is <= -m: keep as conservative end
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    z2 = np.where(cohen, -np.inf, lo)
    z1 = np.where(cohen, zc, _z1_of_z2(q, lo))
    return z2, z1


def _phi_scalar(x: float) -> float:
    return math.exp(-0.5 * (x * x)) * _INV_SQRT_2PI


def _Phi_scalar(x: float) -> float:
    """Phi(x) for one float with math.erf / math.erfc (the formula of scipy's ndtr; a few ulps either way)."""
    t = x * _SQRT_HALF
    if abs(t) < _SQRT_HALF:
        return 0.5 + 0.5 * math.erf(t)
    y = 0.5 * math.erfc(abs(t))
    return 1.0 - y if t > 0.0 else y


def _z1_of_z2_scalar(q: float, z2: float) -> float:
    return -float(_Phi_inv(max(q - _Phi_scalar(z2), 1e-300)))


@functools.lru_cache(maxsize=512)
def _slab_endpoints_scalar(p: float, m: float) -> tuple[float, float]:
    """:func:`_slab_endpoints` for one (p, m), step for step (Phi and phi from the math module: the same values
    to a few ulps, without numpy's per-call cost; cached, as the radius searches ask for the same slab often)."""
    q = 1.0 - p
    zc = float(_Phi_inv(p))
    if m >= _phi_scalar(zc):
        return -math.inf, zc
    lo, hi = _Z_FAR, -zc
    if _phi_scalar(lo) - _phi_scalar(_z1_of_z2_scalar(q, lo)) > -m:
        return -math.inf, zc
    for _ in range(110):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if _phi_scalar(mid) - _phi_scalar(_z1_of_z2_scalar(q, mid)) <= -m:
            lo = mid
        else:
            hi = mid
    return lo, _z1_of_z2_scalar(q, lo)


@functools.lru_cache(maxsize=512)
def _slab_radius_scalar(p: float, m: float) -> float:
    """:func:`_slab_radius` for one (p, m), step for step (math-module erf / Phi; cached)."""
    z2, z1 = _slab_endpoints_scalar(p, m)
    lo = float(_Phi_inv(p))
    hi = z1 if math.isfinite(z2) else lo
    for _ in range(110):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if 0.5 * math.erf((z1 - mid) * _SQRT_HALF) - _Phi_scalar(z2 - mid) > _SLAB_ROUNDING:
            lo = mid
        else:
            hi = mid
    return lo


def _slab_value_minus_half(z2, z1, r):
    # Phi(z1 - r) - Phi(z2 - r) - 1/2, accurate near 1/2
    return 0.5 * special.erf((z1 - r) / math.sqrt(2.0)) - _Phi(z2 - r)


# Absolute rounding error of _slab_value_minus_half: erf and ndtr are accurate to a few ulps of values <= 1/2, and
# rounding the arguments z - r moves Phi(z - r) by at most eps * max_t |t| phi(t) < eps / 4 each. A bisection step
# counts as certified only when the computed value exceeds this, so float rounding cannot push the radius past
# the exact root (it mattered near p = 1/2, where the slab value is flat in r).
_SLAB_ROUNDING = 8.0 * float(np.finfo(np.float64).eps)


def _slab_radius(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Vectorised core of :func:`l2_radius_first_order` for p > 1/2 (sigma units)."""
    if p.size == 1:
        return np.full(p.shape, _slab_radius_scalar(float(p.reshape(-1)[0]), float(m.reshape(-1)[0])))
    z2, z1 = _slab_endpoints(p, m)
    zc = _Phi_inv(p)
    lo = zc.copy()  # Cohen's radius is always certified (the slab is feasible for the zeroth-order LP)
    hi = np.where(np.isfinite(z2), z1, zc)  # value at r = z1 is 1/2 - Phi(z2 - z1) < 1/2
    for _ in range(110):
        mid = 0.5 * (lo + hi)
        if not ((mid > lo) & (mid < hi)).any():
            break  # float resolution reached: further steps cannot change lo
        ok = _slab_value_minus_half(z2, z1, mid) > _SLAB_ROUNDING
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    return lo


def l2_radius_first_order(p, m):
    """First-order l2 radius in sigma units from pA >= p and ||sigma grad pA||_2 <= m (Mohapatra et al. 2020).

    Guarantee: if pA(x) >= p > 1/2 and the sigma-unit gradient norm is <= m, every x' with
    ||x' - x||_2 < sigma * R has pA(x') > 1/2. R = Phi^-1(p) (Cohen) when m >= phi(Phi^-1(p)); otherwise the
    worst case is the slab z2 <= <z,u> <= z1 of :func:`slab_endpoints` and R = sup{r : Phi(z1 - r) -
    Phi(z2 - r) > 1/2}. Returns 0 for p <= 1/2. Always >= Phi^-1(p); non-decreasing in p, non-increasing in m,
    continuous at m = phi(Phi^-1(p)). Vectorised (bisection to float64 resolution, conservative side kept).

    Example: ``l2_radius_first_order(0.9, 0.0) ~= 1.6436`` (vs Cohen's 1.2816): with zero gradient the worst
    case is the symmetric slab |<z,u>| <= Phi^-1(0.95).
    """
    p_arr = _probability_array(p, "p")
    m_arr = _nonneg_array(m, "m")
    p_b, m_b = np.broadcast_arrays(p_arr, m_arr)
    out = np.zeros(p_b.shape, dtype=np.float64)
    pos = p_b > 0.5
    if np.any(pos):
        out[pos] = _slab_radius(p_b[pos].astype(np.float64), m_b[pos].astype(np.float64))
    return _out(out, p, m)


# ----------------------------------------------------------------------------------------------------------
# two components: dual lower bound of the worst-case probability
# ----------------------------------------------------------------------------------------------------------
_X_MAX = 12.0  # quadrature range for x = <z, u>; the mass beyond is bounded explicitly (2 Phi(-12) ~ 4e-33)
_GL_FAST = np.polynomial.legendre.leggauss(20)
_BASE_BREAKS = (-_X_MAX, -8.0, -5.0, -3.0, -1.5, 0.0, 1.5, 3.0, 5.0, 8.0, _X_MAX)
_ROOT_OFFSETS = (0.0, 0.5, 1.5, 3.0, 6.0, 10.0, 16.0)
_TAIL_MASS = 2.0 * float(special.ndtr(-_X_MAX))
_TAIL_FIRST_MOMENT = 2.0 * float(_phi(_X_MAX))
_LAM2_MIN = 1e-12


def _newton_root(r: float, l0: float, l1: float, x: float) -> float:
    """Newton iteration for a root of the convex s(x) = exp(r x - r^2/2) - l0 - l1 x started where s(x) > 0
    on the outer side of that root: for a convex function the iterates then approach it monotonically.

    At most ``_NEWTON_STEPS`` steps. Rounding can make the iterates cycle among a few floats next to the root
    without meeting the step test; the iteration map is deterministic, so once an iterate repeats, the iterate
    after ``_NEWTON_STEPS`` steps is read off the cycle instead of stepping on."""
    seen = {x: 0}
    path = [x]
    for k in range(1, _NEWTON_STEPS + 1):
        e = math.exp(r * x - 0.5 * r * r)
        s = e - l0 - l1 * x
        ds = r * e - l1
        if ds == 0.0:
            break
        step = s / ds
        x -= step
        if abs(step) <= 1e-15 * max(1.0, abs(x)):
            break
        first = seen.setdefault(x, k)
        if first != k:  # x_k = x_first: the iterates repeat with period k - first from here on
            return path[first + (_NEWTON_STEPS - first) % (k - first)]
        path.append(x)
    return x


_NEWTON_STEPS = 200


def _roots_in_range(r: float, l0: float, l1: float) -> list[float]:
    """Roots inside [-X_MAX, X_MAX] of the convex s(x) = exp(r x - r^2/2) - l0 - l1 x (r > 0)."""
    def s(x):
        return math.exp(r * x - 0.5 * r * r) - l0 - l1 * x

    lo, hi = -_X_MAX, _X_MAX
    roots: list[float] = []
    if l1 > 0.0:
        x_min = (math.log(l1) - math.log(r) + 0.5 * r * r) / r  # l1 / r may underflow to 0
        if s(min(max(x_min, lo), hi)) >= 0.0:
            return roots
        if x_min > lo and s(lo) > 0.0:
            roots.append(_newton_root(r, l0, l1, lo))
        if x_min < hi and s(hi) > 0.0:
            roots.append(_newton_root(r, l0, l1, hi))
    elif l0 > 0.0:
        root = (math.log(l0) + 0.5 * r * r) / r
        if lo < root < hi:
            roots.append(root)
    return roots


def _nodes(r: float, lam, gl):
    """Composite Gauss-Legendre nodes/weights (weights include the N(0,1) density) refined at the roots of s."""
    l0, l1, l2 = lam
    breaks = list(_BASE_BREAKS)
    for root in _roots_in_range(r, l0, l1):
        slope = abs(r * math.exp(r * root - 0.5 * r * r) - l1)
        width = l2 / max(slope, 1e-300)
        width = min(max(width, 1e-9), 4.0)
        for k in _ROOT_OFFSETS:
            breaks.append(root - k * width)
            breaks.append(root + k * width)
    edges = np.unique(np.clip(np.asarray(breaks), -_X_MAX, _X_MAX))
    gx, gw = gl
    half = 0.5 * (edges[1:] - edges[:-1])
    mid = 0.5 * (edges[1:] + edges[:-1])
    x = (mid[:, None] + half[:, None] * gx[None, :]).ravel()
    w = (half[:, None] * gw[None, :]).ravel() * _phi(x)
    return x, w


def _dual_terms(r, lam, p, a, b, x, w, need_hess=True):
    """Dual function D(lam) of the two-component LP, its gradient and Hessian (quadrature on nodes x, w).

    LP:  min E[h(x, y) exp(r x - r^2/2)]  s.t.  E h >= p,  E[h x] >= -a,  E[-h y] >= b,  0 <= h <= 1,
    with (x, y) ~ N(0, I_2). For multipliers lam = (l0, l1, l2) >= 0 weak duality gives
    value >= D(lam) = l0 p - l1 a + l2 b + E_x[ J(s(x)) ],  s(x) = exp(r x - r^2/2) - l0 - l1 x,
    J(s) = E_y[min(0, s + l2 y)] = s Phi(-s/l2) - l2 phi(s/l2).
    The |x| > X_MAX tail is bounded below by -(l0 + l2 phi(0)) P(|x| > X) - l1 E[|x| 1{|x| > X}].
    """
    l0, l1, l2 = lam
    e = np.exp(r * x - 0.5 * r * r)
    s = e - l0 - l1 * x
    t = s / l2
    H = special.ndtr(-t)
    P = _phi(t)
    J = s * H - l2 * P
    tail = (l0 + l2 * _INV_SQRT_2PI) * _TAIL_MASS + l1 * _TAIL_FIRST_MOMENT
    D = l0 * p - l1 * a + l2 * b + float(np.dot(w, J)) - tail
    wH = w * H
    grad = np.array([p - wH.sum(), -a - float(np.dot(wH, x)), b - float(np.dot(w, P))])
    if not need_hess:
        return D, grad, None
    wP = w * P / l2
    v = np.stack([np.ones_like(x), x, t])
    hess = -(v * wP) @ v.T
    return D, grad, hess


def _initial_multipliers(r: float, p: float, a: float, b: float):
    """Multipliers of the slab solution for (p, a), with a small l2 sized to produce orthogonal moment ~b."""
    z2, z1 = _slab_endpoints(np.array([p]), np.array([a]))
    z2, z1 = float(z2[0]), float(z1[0])
    e1 = math.exp(r * z1 - 0.5 * r * r)
    if math.isfinite(z2):
        e2 = math.exp(r * z2 - 0.5 * r * r)
        l1 = (e1 - e2) / (z1 - z2)
        l0 = e1 - l1 * z1
        dens = _phi(z1) / max(abs(r * e1 - l1), 1e-12) + _phi(z2) / max(abs(r * e2 - l1), 1e-12)
    else:
        l1 = 0.0
        l0 = e1
        dens = _phi(z1) / max(r * e1, 1e-12)
    l2 = max(b / max(dens, 1e-12), 1e-6)
    return np.array([max(l0, 0.0), max(l1, 0.0), l2])


def _maximise_dual(r, p, a, b, lam0=None, max_iter=80):
    """Damped Newton ascent on the concave dual over lam >= 0; returns (multipliers, D, converged).

    l2 may shrink by at most a factor 10 per step (the Hessian degenerates as l2 -> 0), l0 and l1 are projected
    onto [0, inf) with an active set. Any multipliers give a valid bound, so stopping early is safe.
    """
    lam = _initial_multipliers(r, p, a, b) if lam0 is None else np.array(lam0, dtype=np.float64)
    lam[2] = max(lam[2], _LAM2_MIN)
    x, w = _nodes(r, lam, _GL_FAST)
    D, g, Hm = _dual_terms(r, lam, p, a, b, x, w)
    converged = False
    for _ in range(max_iter):
        free = np.ones(3, dtype=bool)
        for i in (0, 1):  # active bound: at zero and the ascent direction points outside
            if lam[i] <= 0.0 and g[i] <= 0.0:
                free[i] = False
        if np.max(np.abs(g[free])) < 1e-9:
            converged = True
            break
        Hf = Hm[np.ix_(free, free)]
        gf = g[free]
        scale = max(1e-300, float(np.max(np.abs(np.diag(Hf)))))
        try:
            step_f = np.linalg.solve(Hf - 1e-12 * scale * np.eye(int(free.sum())), -gf)
        except np.linalg.LinAlgError:
            step_f = gf / scale
        if not np.all(np.isfinite(step_f)) or float(np.dot(step_f, gf)) <= 0.0:
            step_f = gf / scale
        elif float(np.dot(step_f, gf)) <= 8.0 * _EPS * max(1.0, abs(D)):
            # the Newton model predicts a gain below the rounding of D: no step can be told apart from here
            converged = bool(np.max(np.abs(g[free])) < 1e-7)
            break
        accepted = False
        for direction in (step_f, gf / scale):
            step = np.zeros(3)
            step[free] = direction
            t = 1.0
            if step[2] < 0.0:  # l2 shrinks at most 10x per iteration
                t = min(t, 0.9 * lam[2] / -step[2])
            slope = float(np.dot(g, step))
            for _ls in range(20):
                cand = lam + t * step
                cand[0] = max(cand[0], 0.0)
                cand[1] = max(cand[1], 0.0)
                cand[2] = max(cand[2], _LAM2_MIN)
                xc, wc = _nodes(r, cand, _GL_FAST)
                Dc, gc, Hc = _dual_terms(r, cand, p, a, b, xc, wc)
                if np.isfinite(Dc) and Dc >= D + 1e-4 * t * slope and Dc >= D:
                    accepted = Dc > D or np.max(np.abs(gc)) < np.max(np.abs(g))
                    lam, D, g, Hm = cand, Dc, gc, Hc
                    break
                t *= 0.5
            if accepted:
                break
        if not accepted:
            # no ascent possible at working precision: converged if the constraints are (nearly) met
            converged = bool(np.max(np.abs(g[free])) < 1e-7)
            break
    return lam, D, converged


_EPS = float(np.finfo(np.float64).eps)


def _certified_dual_value(r, lam, p, a, b, tol: float = 1e-10):
    """Proven lower bound on the dual function D(lam) (every multiplier set lam >= 0 with l2 > 0, every r > 0).

    D(lam) = l0 p - l1 a + l2 b + E[J(s(x))]; the integral is bounded below by
    :func:`estimators.dual_quadrature.dual_integral_lower_bound` (chord bounds of the concave J on a refined
    partition, closed-form Gaussian integrals, explicit tail and rounding allowances; refined until its own
    upper and lower bounds are within ``tol``), and the three leading terms are summed exactly (math.fsum)
    and lowered by 8 ulps of their magnitudes. Returns -inf when the bound is not finite.
    """
    l0, l1, l2 = (float(v) for v in lam)
    if not (l0 >= 0.0 and l1 >= 0.0 and l2 > 0.0 and r > 0.0):
        return -math.inf
    integral, _ = dual_integral_lower_bound(r, l0, l1, l2, _roots_in_range(r, l0, l1), tol=tol)
    head = (l0 * p, -l1 * a, l2 * b)
    value = math.fsum([*head, integral]) - 8.0 * _EPS * sum(abs(v) for v in head)
    return value if math.isfinite(value) else -math.inf


def worst_case_probability_two_component(p: float, m_parallel: float, m_orthogonal: float, r: float) -> float:
    """Certified lower bound on pA at distance ``r`` (sigma units) along a direction u, two-component case.

    Guarantee: for every h: R^D -> [0,1] with E h >= p, <E[h z], u> >= -m_parallel and
    ||E[h z] - <E[h z], u> u||_2 >= m_orthogonal, E[h(z + r u)] >= the returned value. Computed as a proven
    lower bound on the dual function of the LP (weak duality) at multipliers found by Newton ascent: the
    integral is bounded rigorously (:mod:`estimators.dual_quadrature`, including float64 rounding), so any
    multipliers give a valid bound and inaccurate optimisation only costs tightness.
    """
    p = float(_probability_array(p, "p"))
    a = float(_nonneg_array(m_parallel, "m_parallel"))
    b = float(_nonneg_array(m_orthogonal, "m_orthogonal", allow_inf=False))
    r = float(_nonneg_array(r, "r", allow_inf=False))
    if r == 0.0:
        return p
    thr = float(_phi(_Phi_inv(p)))
    a = min(a, thr)  # |E[h z] . u| <= thr for every h with E h >= p > 1/2: larger bounds are redundant
    b = min(b, thr * (1.0 - 1e-9))
    lam, _, _ = _maximise_dual(r, p, a, b)
    return _certified_dual_value(r, lam, p, a, b)


# The estimate-driven search (:meth:`_TwoComponentSolver.radius`) hands over to the certified search once a
# multiplier exceeds this: there the dual is a small difference of huge terms, Newton ascent from a neighbour's
# multipliers can stall far from the optimum, and the estimate would undershoot the root badly.
_LAM_FAST_MAX = 1e4
_R_CAP = 50.0  # sigma units; radii are never searched beyond this (returning a smaller radius is always sound)


class _TwoComponentSolver:
    """Certified radius for one (p, a, b).

    :meth:`radius` finds the root in r of (dual value - 1/2) by Newton steps on the dual *estimate* (multipliers
    by Newton ascent, Gauss-Legendre quadrature: cheap, not a bound), then certifies ONE point a tolerance below
    that root with the proven lower bound of :func:`_certified_dual_value`. Only a certified point is returned;
    if the certification fails, :meth:`certified_search` (every iterate certified) takes over.
    """

    def __init__(self, p: float, a: float, b: float, start: Optional[tuple[float, np.ndarray]] = None):
        self.p, self.a, self.b = p, a, b
        # (r, multipliers) solved so far: Newton ascent starts from the nearest; ``start`` seeds it (a neighbour)
        self._lams: list[tuple[float, np.ndarray]] = [] if start is None else [start]
        self.root: Optional[tuple[float, np.ndarray]] = None  # (r, multipliers) where the estimate search ended

    def _multipliers(self, r: float) -> tuple[np.ndarray, float, bool]:
        """Multipliers at r by Newton ascent from those of the nearest r solved so far (else the slab's)."""
        lam0 = None
        if self._lams:
            lam0 = min(self._lams, key=lambda item: abs(item[0] - r))[1].copy()
        return _maximise_dual(r, self.p, self.a, self.b, lam0=lam0)

    def _certified(self, r: float, lam: np.ndarray, d_est: float) -> float:
        # the bound is valid at any tolerance; resolve it only as finely as the decision "> 1/2" needs
        tol = min(1e-6, max(1e-10, 1e-2 * abs(d_est - 0.5)))
        return _certified_dual_value(r, lam, self.p, self.a, self.b, tol=tol)

    def estimate(self, r: float) -> tuple[float, float, np.ndarray]:
        """(dual estimate at r, its derivative in r, the multipliers); not a certified value."""
        lam, d_est, converged = self._multipliers(r)
        if self._lams and not converged:  # retry from the slab multipliers; keep the larger dual
            lam_c, d_c, _ = _maximise_dual(r, self.p, self.a, self.b)
            if d_c > d_est:
                lam, d_est = lam_c, d_c
        self._lams.append((r, lam))
        return float(d_est), _dual_r_derivative(r, lam), lam

    def value(self, r: float) -> tuple[float, float]:
        """(certified lower bound on the worst-case pA at r, its derivative in r at the optimal multipliers)."""
        lam0_given = bool(self._lams)
        lam, d_est, converged = self._multipliers(r)
        d = self._certified(r, lam, d_est)
        if lam0_given and not converged:  # retry from the slab multipliers; keep the better bound
            lam_c, _, _ = _maximise_dual(r, self.p, self.a, self.b)
            d_c = self._certified(r, lam_c, d_est)
            if d_c > d:
                lam, d = lam_c, d_c
        self._lams.append((r, lam))
        return d, _dual_r_derivative(r, lam)

    def radius(self, r_start: float, rtol: float, r_guess: Optional[float] = None) -> float:
        """A certified r >= r_start within about ``rtol`` (relative) below the root of the dual value - 1/2.

        Newton steps on the estimate locate the root (safeguarded by a bracket), starting at ``r_guess`` when one
        above r_start is given (a neighbouring solution), else at r_start; the point one tolerance below the root
        is certified with the multipliers found at the root (any multipliers give a valid bound).
        """
        r = min(r_guess, _R_CAP) if r_guess is not None and r_guess > r_start else r_start
        lo, hi = r_start, math.inf  # r_start is certified by the caller; its estimate is not known yet
        lo_seen = False
        for _ in range(40):
            d, fp, lam = self.estimate(r)
            if not lam.max() < _LAM_FAST_MAX:
                return self.certified_search(r_start, rtol)
            f = d - 0.5
            if f > 0.0:
                lo, lo_seen = r, True
            elif r <= r_start:
                return r_start  # the estimate is <= 1/2 already at the certified start
            else:
                hi = r
            tol = rtol * max(r, 1e-2)
            step = -f / fp if fp < 0.0 and abs(f) < -fp * 1e300 else math.inf
            if abs(step) <= 0.05 * tol or hi - lo <= 0.05 * rtol * max(lo, 1e-2) or lo >= _R_CAP:
                break  # r is within a twentieth of the tolerance of the estimate's root
            r_new = r + step
            if r_new <= lo and not lo_seen:
                r_new = lo  # the root may lie below the guess's bracket: look at the certified start itself
            elif not (lo < r_new < hi):
                r_new = 0.5 * (lo + hi) if math.isfinite(hi) else max(lo * 1.25 + 0.05, lo + 1e-3)
            r = min(r_new, _R_CAP)
        else:
            return self.certified_search(r_start, rtol)
        self.root = (r, lam)
        root = min(max(r + (-f / fp if fp < 0.0 else 0.0), lo), hi)
        r_c = min(root - rtol * max(root, 1e-2), _R_CAP)
        if r_c <= r_start:
            return r_start
        # the estimate exceeds 1/2 by about |fp| (root - r_c) at r_c: resolve the bound to a quarter of that
        margin = -fp * (root - r_c) if fp < 0.0 else 0.0
        tol = max(1e-10, 0.25 * margin)
        if _certified_dual_value(r_c, lam, self.p, self.a, self.b, tol=tol) > 0.5:
            return r_c
        return self.certified_search(r_start, rtol)

    def certified_search(self, r_start: float, rtol: float) -> float:
        """Largest certified r found by Newton steps from the certified end, aimed slightly short of the
        predicted root; the bracket [lo, hi] (lo certified, hi not) is bisected when a step leaves it."""
        self._lams.clear()  # start from the slab multipliers, not from the estimates' multipliers
        lo = r_start  # certified by the caller
        d, fp_lo = self.value(lo)
        f_lo = d - 0.5
        if f_lo <= 0.0:
            return lo
        hi, f_hi = None, 0.0
        for _ in range(80):
            tol = rtol * max(lo, 1e-2)
            if hi is not None and hi - lo <= tol:
                break
            if fp_lo < 0.0:
                step = -f_lo / fp_lo
                if step <= tol:
                    break  # the root is predicted within tol of the certified end
                r_new = lo + max(step - 0.5 * tol, 0.5 * step)
            else:
                r_new = lo * 1.25 + 0.05
            if hi is not None:
                # secant through the bracket: undershoots when Newton overshoots (and vice versa); take the
                # smaller prediction so that iterates tend to land on the certified side
                r_sec = lo + f_lo * (hi - lo) / (f_lo - f_hi)
                r_new = min(r_new, r_sec - 0.5 * tol)
                if not (lo < r_new < hi):
                    r_new = 0.5 * (lo + hi)
            r_new = min(r_new, _R_CAP)
            d, fp = self.value(r_new)
            if d - 0.5 > 0.0:
                lo, f_lo, fp_lo = r_new, d - 0.5, fp
                if lo >= _R_CAP:
                    break
            else:
                hi, f_hi = r_new, d - 0.5
        return lo


def _dual_r_derivative(r: float, lam) -> float:
    """d/dr of the dual function at fixed multipliers (= derivative of the LP value at the optimum)."""
    x, w = _nodes(r, lam, _GL_FAST)
    l0, l1, l2 = lam
    e = np.exp(r * x - 0.5 * r * r)
    s = e - l0 - l1 * x
    H = special.ndtr(-s / l2)
    return float(np.dot(w, H * (x - r) * e))


def radius_two_component(p, m_parallel, m_orthogonal, *, rtol: float = 1e-4):
    """First-order radius (sigma units) along a direction u from a parallel bound and an orthogonal lower bound.

    Guarantee: if pA(x) >= p > 1/2, the gradient component along u satisfies <g, u> >= -m_parallel (in
    particular if |<g,u>| <= m_parallel) and the component orthogonal to u has norm >= m_orthogonal (g in
    sigma units), then pA(x + sigma r u) > 1/2 for all 0 <= r < R. Equals the slab radius
    ``l2_radius_first_order(p, m_parallel)`` when m_orthogonal = 0, and is never smaller than it (that value is
    certified first and the search only moves up). The root of the dual estimate is located to ``rtol`` / 20
    and the point ``rtol`` (relative) below it is returned once the dual lower bound of
    :func:`worst_case_probability_two_component` certifies it (else a search certifying every iterate to
    resolution ``rtol`` decides). ``m_orthogonal`` is capped just below phi(Phi^-1(p)) (no h can have a larger gradient;
    larger values are inconsistent bounds), and radii are not searched beyond 50.

    Example: ``radius_two_component(0.9, 0.05, 0.1) ~= 1.63`` vs ``l2_radius_first_order(0.9, 0.05) ~= 1.51``.
    """
    p_arr = _probability_array(p, "p")
    a_arr = _nonneg_array(m_parallel, "m_parallel")
    b_arr = _nonneg_array(m_orthogonal, "m_orthogonal", allow_inf=False)
    rtol = check_positive("rtol", rtol)
    p_b, a_b, b_b = np.broadcast_arrays(p_arr, a_arr, b_arr)
    out = np.zeros(p_b.shape, dtype=np.float64)
    for idx in np.ndindex(p_b.shape):
        out[idx] = _radius_two_component_scalar(float(p_b[idx]), float(a_b[idx]), float(b_b[idx]), rtol)
    return _out(out, p, m_parallel, m_orthogonal)


def _radius_two_component_scalar(p: float, a: float, b: float, rtol: float) -> float:
    return _radius_two_component_hinted(p, a, b, rtol)[0]


def _radius_two_component_hinted(p: float, a: float, b: float, rtol: float, hint=None):
    """(radius, (r, multipliers) near the root or None); ``hint`` = (r_guess, (r, multipliers)) of a neighbouring
    (a, b) only speeds the search up (the returned radius is certified whatever the hint)."""
    if p <= 0.5:
        return 0.0, None
    thr = float(_phi(_Phi_inv(p)))
    a = min(a, thr)  # above the threshold the parallel constraint is inactive for every h with E h = p
    r_slab = float(_slab_radius(np.array([p]), np.array([a]))[0])
    b = min(b, thr * (1.0 - 1e-9))
    if b <= 0.0:
        return r_slab, None
    r_guess, start = (None, None) if hint is None else hint
    solver = _TwoComponentSolver(p, a, b, start=start)
    return max(r_slab, solver.radius(r_slab, rtol, r_guess=r_guess)), solver.root


# ----------------------------------------------------------------------------------------------------------
# l1 / l_inf / channel radii
# ----------------------------------------------------------------------------------------------------------
def scan_radius(p, a_unit, l2_upper, l2_lower, k_max, *, rtol: float = 1e-3, max_evals: int = 40) -> float:
    """inf over k in [1, k_max] of k * R2(p, min(k a_unit, l2_upper), sqrt(max(0, l2_lower^2 - a^2))).

    This is the radius of a norm ball whose directions u are parametrised by k = (ball norm of u) / ||u||_2,
    when |<g, u>| <= k * a_unit (e.g. l1: k = ||u||_1, a_unit = bound on ||g||_inf). Sigma units.

    Rigorous: R2 is non-increasing in k (larger parallel bound, smaller orthogonal bound), so on [k_j, k_j+1]
    k R2(k) >= k_j R2(k_j+1); the returned value is min_j k_j R2(k_j+1) over an adaptively refined grid
    (branch and bound until within ``rtol`` of the best grid value). For k >= l2_upper / a_unit, R2 is
    constant and k R2 increases, so the search stops there.
    """
    p = float(_probability_array(p, "p"))
    a_unit = float(_nonneg_array(a_unit, "a_unit", allow_inf=False))
    M = float(_nonneg_array(l2_upper, "l2_upper"))
    L = float(_nonneg_array(l2_lower, "l2_lower", allow_inf=False))
    if isinstance(k_max, bool) or not isinstance(k_max, numbers.Real) or not (float(k_max) >= 1.0):
        raise ValueError(f"k_max must be a real number >= 1, got {k_max!r}")
    k_max = float(k_max)
    if p <= 0.5:
        return 0.0
    thr = float(_phi(_Phi_inv(p)))
    M = min(M, thr)
    cache: dict[float, float] = {}
    roots: dict[float, tuple[float, np.ndarray]] = {}  # k -> (r, multipliers) where its search ended

    def r2(k: float) -> float:
        if k not in cache:
            a = min(k * a_unit, M)
            b = math.sqrt(max(0.0, L * L - a * a))
            cache[k], root = _radius_two_component_hinted(p, a, b, 1e-4, _neighbour_hint(k, roots))
            if root is not None:
                roots[k] = root
        return cache[k]

    K = k_max if a_unit <= 0.0 else min(k_max, max(1.0, M / a_unit))
    r1 = r2(1.0)
    if a_unit <= 0.0 or K <= 1.0:
        return r1
    # every k has R2(k) >= R2(K) >= r_min, so k R2(k) >= k r_min >= r1 once k >= r1 / r_min: stop there
    r_min = float(_slab_radius(np.array([p]), np.array([M]))[0])
    k_hi = min(K, r1 / r_min) if r_min > 0.0 else K
    if k_hi <= 1.0:
        return r1
    tail_bound = k_hi * r_min if k_hi < K else math.inf  # covers k >= k_hi (when k_hi = K: last interval)
    ks = [1.0, k_hi]
    while True:
        lbs = [ks[j] * r2(ks[j + 1]) for j in range(len(ks) - 1)]
        j = int(np.argmin(lbs))
        best_val = min(k * r2(k) for k in ks)
        target = (1.0 - rtol) * best_val
        if lbs[j] >= target or len(cache) >= max_evals:
            return float(min(min(lbs), tail_bound))
        k_a, k_b = ks[j], ks[j + 1]
        # choose the split so that k_a R2(k_new) ~ target, with R2 interpolated linearly in k on [k_a, k_b]
        r_a, r_b = r2(k_a), r2(k_b)
        want = target / k_a
        if r_a > r_b and r_a > want:
            frac = (r_a - want) / (r_a - r_b)
            k_new = k_a + min(max(0.8 * frac, 0.02), 0.5) * (k_b - k_a)
        else:
            k_new = 0.5 * (k_a + k_b)
        ks.insert(j + 1, k_new)
        r2(k_new)


def _neighbour_hint(k: float, roots: dict[float, tuple[float, np.ndarray]]):
    """(r_guess, (r, multipliers)) for the search at k from the searches already done: r interpolated linearly
    between the nearest k on either side (else the nearest one's), multipliers of the nearest; None if none."""
    if not roots:
        return None
    below = [q for q in roots if q < k]
    above = [q for q in roots if q > k]
    near = min(roots, key=lambda q: abs(q - k))
    if below and above:
        k_a, k_b = max(below), min(above)
        r_a, r_b = roots[k_a][0], roots[k_b][0]
        guess = r_a + (r_b - r_a) * (k - k_a) / (k_b - k_a)
    else:
        guess = roots[near][0]
    return guess, roots[near]


def _dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    return int(dim)


def l1_radius_first_order(p, *, linf_upper, l2_upper, l2_lower, dim, rtol: float = 1e-3) -> float:
    """First-order l1 radius (sigma units) from pA >= p and sigma-unit gradient bounds.

    Guarantee: if pA(x) >= p > 1/2, ||g||_inf <= linf_upper, ||g||_2 <= l2_upper and ||g||_2 >= l2_lower,
    then every x' with ||x' - x||_1 < sigma R has pA(x') > 1/2. Computed by :func:`scan_radius` with
    k = ||u||_1 in [1, sqrt(dim)] (the coordinate axes, k = 1, are the paper's worst case; we take the
    infimum over all k). Never smaller than :func:`l2_radius_first_order(p, l2_upper)` (l1 ball inside l2 ball).
    """
    d = _dim(dim)
    r = scan_radius(p, linf_upper, l2_upper, l2_lower, math.sqrt(d), rtol=rtol)
    return max(r, float(l2_radius_first_order(p, l2_upper)))


def linf_radius_first_order(p, *, l1_scaled_upper, l2_upper, l2_lower, dim, rtol: float = 1e-3) -> float:
    """First-order l_inf radius (sigma units) from pA >= p and sigma-unit gradient bounds.

    ``l1_scaled_upper`` bounds ||g||_1 / sqrt(dim). Guarantee: every x' with ||x' - x||_inf < sigma R has
    pA(x') > 1/2. A direction u with t = sqrt(dim) ||u||_inf in [1, sqrt(dim)] has
    |<g,u>| <= ||g||_1 ||u||_inf = t l1_scaled_upper and the l_inf ball of radius e reaches e sqrt(dim) / t
    along u, so R = scan_radius(p, l1_scaled_upper, ...) / sqrt(dim) (the sign vectors, t = 1, are the paper's
    worst case). Never smaller than l2_radius_first_order(p, l2_upper) / sqrt(dim).
    """
    d = _dim(dim)
    r = scan_radius(p, l1_scaled_upper, l2_upper, l2_lower, math.sqrt(d), rtol=rtol)
    return max(r, float(l2_radius_first_order(p, l2_upper))) / math.sqrt(d)


def channel_radius_first_order(p, *, in_upper, out_lower, l2_upper, l2_lower) -> float:
    """First-order l2 radius (sigma units) for perturbations confined to one channel.

    Guarantee: if pA(x) >= p > 1/2, ||g_k||_2 <= in_upper (gradient restricted to the channel),
    ||g_{-k}||_2 >= out_lower (gradient outside it), l2_lower <= ||g||_2 <= l2_upper, then every x' that differs
    from x only in channel k with ||x' - x||_2 < sigma R has pA(x') > 1/2. For a direction u inside the
    channel, |<g,u>| <= a = min(in_upper, l2_upper) and the orthogonal part has norm
    >= max(out_lower, sqrt(l2_lower^2 - a^2)); R = radius_two_component(p, a, that).
    Never smaller than l2_radius_first_order(p, l2_upper).
    """
    a = min(float(_nonneg_array(in_upper, "in_upper")), float(_nonneg_array(l2_upper, "l2_upper")))
    out_lower = float(_nonneg_array(out_lower, "out_lower", allow_inf=False))
    L = float(_nonneg_array(l2_lower, "l2_lower", allow_inf=False))
    b = max(out_lower, math.sqrt(max(0.0, L * L - a * a)))
    r = float(radius_two_component(p, a, b))
    return max(r, float(l2_radius_first_order(p, l2_upper)))
