"""Radius formulas: known values, monotonicity, continuity, and brute-force LP checks of the worst cases."""
import math

import numpy as np
import pytest
from scipy.optimize import linprog
from scipy.special import ndtr, owens_t
from scipy.stats import norm

from estimators.confidence import clopper_pearson_lower
from estimators.radius import (
    channel_radius_first_order,
    cohen_radius,
    gradient_norm_threshold,
    l1_radius_first_order,
    l2_radius_first_order,
    linf_radius_first_order,
    max_radius,
    radius_two_component,
    scan_radius,
    slab_endpoints,
    worst_case_probability_two_component,
)


def _phi(x):
    return np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi)


# ------------------------------------------------------------------------------------------------ zeroth order
def test_cohen_known_values():
    assert cohen_radius(0.9, 0.5) == pytest.approx(0.5 * 1.2815515655446004, rel=1e-12)
    assert cohen_radius(0.5, 1.0) == 0.0
    assert cohen_radius(0.3, 1.0) == 0.0
    assert cohen_radius(0.0, 1.0) == 0.0
    out = cohen_radius(np.array([0.2, 0.5, 0.8413447460685429]), 2.0)
    np.testing.assert_allclose(out, [0.0, 0.0, 2.0], atol=1e-9)


def test_max_radius_equals_all_agree_certificate():
    for n, alpha, sigma in [(100, 0.001, 0.25), (100_000, 0.001, 0.5), (10, 0.1, 1.0), (1, 0.4, 1.0)]:
        expected = sigma * norm.ppf(alpha ** (1 / n)) if alpha ** (1 / n) > 0.5 else 0.0
        assert max_radius(n, alpha, sigma) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        p = clopper_pearson_lower(n, n, alpha)
        assert max_radius(n, alpha, sigma) == pytest.approx(cohen_radius(p, sigma), rel=1e-9, abs=1e-12)
    assert max_radius(2, 0.2, 1.0) == 0.0  # alpha^(1/n) < 1/2


@pytest.mark.parametrize("call,exc,word", [
    (lambda: cohen_radius(1.0, 1.0), ValueError, "p_lower"),
    (lambda: cohen_radius(-0.1, 1.0), ValueError, "p_lower"),
    (lambda: cohen_radius(float("nan"), 1.0), ValueError, "p_lower"),
    (lambda: cohen_radius(0.9, 0.0), ValueError, "sigma"),
    (lambda: cohen_radius(0.9, -1.0), ValueError, "sigma"),
    (lambda: cohen_radius(0.9, float("inf")), ValueError, "sigma"),
    (lambda: cohen_radius(True, 1.0), TypeError, "p_lower"),
    (lambda: cohen_radius(0.9, True), TypeError, "sigma"),
    (lambda: max_radius(0, 0.1, 1.0), ValueError, "n"),
    (lambda: max_radius(10.0, 0.1, 1.0), TypeError, "n"),
    (lambda: max_radius(10, 1.0, 1.0), ValueError, "alpha"),
    (lambda: l2_radius_first_order(1.0, 0.1), ValueError, "p"),
    (lambda: l2_radius_first_order(0.9, -0.1), ValueError, "m"),
    (lambda: l2_radius_first_order(0.9, float("nan")), ValueError, "m"),
    (lambda: l2_radius_first_order("0.9", 0.1), TypeError, "p"),
    (lambda: radius_two_component(0.9, -1.0, 0.1), ValueError, "m_parallel"),
    (lambda: radius_two_component(0.9, 0.1, -0.1), ValueError, "m_orthogonal"),
    (lambda: radius_two_component(0.9, 0.1, float("inf")), ValueError, "m_orthogonal"),
    (lambda: radius_two_component(1.5, 0.1, 0.1), ValueError, "p"),
    (lambda: l1_radius_first_order(0.9, linf_upper=0.1, l2_upper=0.1, l2_lower=0.0, dim=0), ValueError, "dim"),
    (lambda: scan_radius(0.9, 0.1, 0.1, 0.0, 0.5), ValueError, "k_max"),
    (lambda: channel_radius_first_order(0.9, in_upper=-1, out_lower=0, l2_upper=0.1, l2_lower=0), ValueError,
     "in_upper"),
])
def test_bad_inputs(call, exc, word):
    with pytest.raises(exc, match=word):
        call()


# ------------------------------------------------------------------------------------------------ l2 first order
def test_l2_first_order_reduces_to_cohen_at_threshold():
    for p in (0.51, 0.7, 0.9, 0.999, 1 - 1e-9):
        thr = gradient_norm_threshold(p)
        assert l2_radius_first_order(p, thr) == pytest.approx(norm.ppf(p), rel=1e-12)
        assert l2_radius_first_order(p, 10 * thr) == pytest.approx(norm.ppf(p), rel=1e-12)
        assert l2_radius_first_order(p, math.inf) == pytest.approx(norm.ppf(p), rel=1e-12)
        # continuity at the switch point
        below = l2_radius_first_order(p, thr * (1 - 1e-9))
        assert abs(below - norm.ppf(p)) < 1e-6 * max(1.0, norm.ppf(p))
    assert l2_radius_first_order(0.5, 0.0) == 0.0
    assert l2_radius_first_order(0.2, 0.1) == 0.0


def test_l2_first_order_zero_gradient_closed_form():
    # m = 0: symmetric slab |<z,u>| <= Phi^-1((1+p)/2); R solves Phi(z1 - R) - Phi(-z1 - R) = 1/2
    for p in (0.6, 0.9, 0.99):
        z1 = norm.ppf((1 + p) / 2)
        z2, z1_got = slab_endpoints(p, 0.0)
        assert z1_got == pytest.approx(z1, abs=1e-10) and z2 == pytest.approx(-z1, abs=1e-10)
        r = l2_radius_first_order(p, 0.0)
        assert norm.cdf(z1 - r) - norm.cdf(-z1 - r) == pytest.approx(0.5, abs=1e-12)
    assert l2_radius_first_order(0.9, 0.0) == pytest.approx(1.6436, abs=1e-4)


def test_slab_satisfies_constraints():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0.5001, 0.9999)
        m = rng.uniform(0, 0.999) * gradient_norm_threshold(p)
        z2, z1 = slab_endpoints(p, m)
        assert norm.cdf(z1) - norm.cdf(z2) == pytest.approx(p, abs=1e-12)
        assert _phi(z1) - _phi(z2) == pytest.approx(m, abs=1e-10)
        assert _phi(z1) - _phi(z2) >= m - 1e-15  # conservative side
        r = l2_radius_first_order(p, m)
        assert norm.cdf(z1 - r) - norm.cdf(z2 - r) == pytest.approx(0.5, abs=1e-10)
        assert norm.cdf(z1 - r) - norm.cdf(z2 - r) >= 0.5 - 1e-14  # up to rounding of the two formulas


def test_l2_first_order_monotone_and_above_cohen():
    ps = np.linspace(0.501, 0.9995, 60)
    ms = np.linspace(0.0, 0.4, 81)
    P, M = np.meshgrid(ps, ms, indexing="ij")
    R = l2_radius_first_order(P, M)
    assert np.all(np.isfinite(R))
    assert np.all(R >= norm.ppf(P) - 1e-12)  # first order >= zeroth order for the same p
    assert np.all(np.diff(R, axis=0) >= -1e-12)  # non-decreasing in p
    assert np.all(np.diff(R, axis=1) <= 1e-12)  # non-increasing in m (increasing as m decreases)


def test_l2_first_order_extremes_never_nan():
    for p in (0.5 + 1e-15, 0.5 + 1e-9, 1 - 1e-15, 1 - 1e-12):
        for m in (0.0, 1e-300, 1e-12, 1e-3, 0.3, 1e300):
            r = l2_radius_first_order(p, m)
            assert math.isfinite(r) and r >= 0.0
            assert r >= norm.ppf(p) - 1e-9


def _lp_1d(p, m, r, n_cells=3000, lim=9.0):
    """Brute force: min over cell-constant h of E[h(z + r)] s.t. E h >= p, E h z >= -m (1-D grid LP)."""
    e = np.linspace(-lim, lim, n_cells + 1)
    e[0], e[-1] = -np.inf, np.inf
    mass = ndtr(e[1:]) - ndtr(e[:-1])
    mom = _phi(e[:-1]) - _phi(e[1:])
    obj = ndtr(e[1:] - r) - ndtr(e[:-1] - r)
    res = linprog(obj, A_ub=-np.stack([mass, mom]), b_ub=-np.array([p, -m]), bounds=(0, 1), method="highs")
    assert res.status == 0
    return res.fun


@pytest.mark.parametrize("p,frac", [(0.7, 0.3), (0.9, 0.5), (0.9, 0.95), (0.99, 0.1)])
def test_slab_is_the_lp_worst_case(p, frac):
    m = frac * gradient_norm_threshold(p)
    z2, z1 = slab_endpoints(p, m)
    R = l2_radius_first_order(p, m)
    for r in (0.3 * R, R, 1.3 * R):
        slab_value = norm.cdf(z1 - r) - norm.cdf(z2 - r)
        lp = _lp_1d(p, m, r)
        # the grid LP is a restriction (>= true minimum) and must not beat the slab by more than grid error
        assert lp >= slab_value - 2e-4
        assert lp <= slab_value + 2e-3
    # radius is nearly tight: slightly beyond it the brute-force worst case falls below 1/2
    assert _lp_1d(p, m, R * 1.02) < 0.5


# ------------------------------------------------------------------------------------------------ two components
def _lp_2d(p, a, b, r, n=120, lim=7.0):
    e = np.linspace(-lim, lim, n + 1)
    e[0], e[-1] = -np.inf, np.inf
    px = ndtr(e[1:]) - ndtr(e[:-1])
    mx = _phi(e[:-1]) - _phi(e[1:])
    rx = ndtr(e[1:] - r) - ndtr(e[:-1] - r)
    W, MX, MY, OBJ = (np.outer(px, px).ravel(), np.outer(mx, px).ravel(), np.outer(px, mx).ravel(),
                      np.outer(rx, px).ravel())
    res = linprog(OBJ, A_ub=-np.stack([W, MX, -MY]), b_ub=-np.array([p, -a, b]), bounds=(0, 1), method="highs")
    assert res.status == 0
    return res.fun


@pytest.mark.parametrize("p,fa,fb,r", [(0.9, 0.3, 0.6, 1.8), (0.7, 0.2, 0.8, 0.9), (0.99, 0.8, 0.3, 2.5)])
def test_two_component_dual_is_a_lower_bound_and_tight(p, fa, fb, r):
    thr = gradient_norm_threshold(p)
    a, b = fa * thr, fb * thr
    dual = worst_case_probability_two_component(p, a, b, r)
    lp = _lp_2d(p, a, b, r)
    assert dual <= lp + 1e-9  # sound: never above the brute-force worst case (which is >= the true minimum)
    assert lp - dual < 2e-3  # and nearly tight (grid discretisation error)


def test_two_component_reduces_to_slab_and_dominates_it():
    for p, a in [(0.9, 0.05), (0.7, 0.2), (0.99, 0.001)]:
        assert radius_two_component(p, a, 0.0) == pytest.approx(l2_radius_first_order(p, a), rel=1e-14)
        prev = l2_radius_first_order(p, a)
        thr = gradient_norm_threshold(p)
        for fb in (0.05, 0.3, 0.6, 0.9):  # non-decreasing in the orthogonal lower bound
            r = radius_two_component(p, a, fb * thr)
            assert r >= prev * (1 - 2e-4)
            prev = r
    # non-increasing in the parallel bound
    rs = [radius_two_component(0.8, fa * gradient_norm_threshold(0.8), 0.4 * gradient_norm_threshold(0.8))
          for fa in (0.05, 0.2, 0.5, 1.0)]
    assert all(r2 <= r1 * (1 + 2e-4) for r1, r2 in zip(rs, rs[1:]))


@pytest.mark.parametrize("p", [0.6, 0.9, 0.999])
@pytest.mark.parametrize("c", [1.0, 0.8, 0.4])
def test_two_component_never_exceeds_linear_classifier_radius(p, c):
    # a half-space classifier with unit normal w, direction u: <w,u> = c. Its exact gradient gives parallel
    # c * thr and orthogonal sqrt(1 - c^2) * thr; the true distance along u is Phi^-1(p) / c.
    thr = gradient_norm_threshold(p)
    r = radius_two_component(p, c * thr, math.sqrt(1 - c * c) * thr)
    assert r <= norm.ppf(p) / c + 1e-9
    assert r >= l2_radius_first_order(p, c * thr) - 1e-12


def test_two_component_radius_is_nearly_tight_against_lp():
    p, a, b = 0.9, 0.05, 0.1
    r = radius_two_component(p, a, b)
    assert worst_case_probability_two_component(p, a, b, r * 0.999) > 0.5
    assert _lp_2d(p, a, b, r * 1.02) < 0.5


# ------------------------------------------------------------------------------------------------ l1 / linf / channel
def test_scan_is_a_rigorous_lower_bound_of_the_infimum():
    # b = 0 everywhere (l2_lower = 0): R2 is the slab, so a dense brute-force grid is cheap
    p, a_unit, M = 0.85, 0.02, 0.2
    k_max = 30.0
    got = scan_radius(p, a_unit, M, 0.0, k_max, rtol=1e-3)
    ks = np.geomspace(1, k_max, 4000)
    dense = ks * l2_radius_first_order(p, np.minimum(ks * a_unit, M))
    assert got <= dense.min() + 1e-12
    assert got >= dense.min() * (1 - 2e-3)


def test_scan_with_orthogonal_bound_lower_than_dense_grid():
    p, a_unit, M, L = 0.8, 0.04, 0.25, 0.2
    got = scan_radius(p, a_unit, M, L, 10.0)
    ks = np.geomspace(1, 10.0, 25)
    vals = [k * radius_two_component(p, min(k * a_unit, M), math.sqrt(max(0, L * L - min(k * a_unit, M) ** 2)))
            for k in ks]
    assert got <= min(vals) * (1 + 1e-4)
    assert got >= min(vals) * (1 - 5e-3)


def test_norm_radii_relations():
    p, A, M, L, D = 0.9, 0.02, 0.15, 0.1, 784
    r2 = l2_radius_first_order(p, M)
    r1 = l1_radius_first_order(p, linf_upper=A, l2_upper=M, l2_lower=L, dim=D)
    rinf = linf_radius_first_order(p, l1_scaled_upper=0.05, l2_upper=M, l2_lower=L, dim=D)
    assert r1 >= r2 and rinf >= r2 / math.sqrt(D)
    assert r1 > 1.1 * r2  # the small l_inf gradient bound helps l1
    # dim = 1: all norms coincide
    r1d = l1_radius_first_order(p, linf_upper=M, l2_upper=M, l2_lower=0.0, dim=1)
    rinf1 = linf_radius_first_order(p, l1_scaled_upper=M, l2_upper=M, l2_lower=0.0, dim=1)
    assert r1d == pytest.approx(r2) and rinf1 == pytest.approx(r2)
    # channel: no out-of-channel information -> slab with the in-channel bound
    rc = channel_radius_first_order(p, in_upper=0.05, out_lower=0.0, l2_upper=M, l2_lower=0.0)
    assert rc == pytest.approx(l2_radius_first_order(p, 0.05), rel=1e-12)
    rc2 = channel_radius_first_order(p, in_upper=0.05, out_lower=0.1, l2_upper=M, l2_lower=0.0)
    assert rc2 > rc
    # abstention region
    assert l1_radius_first_order(0.4, linf_upper=A, l2_upper=M, l2_lower=L, dim=D) == 0.0


# ------------------------------------------------------------------------------------------------ review regressions
def test_two_component_survives_an_underflowing_multiplier():
    # found by fuzzing: the radius search probes r ~ 39 where the optimal l1 underflows to 5e-324, and
    # math.log(l1 / r) raised "math domain error" out of radius_two_component
    from estimators.radius import _roots_in_range

    assert all(math.isfinite(x) for x in _roots_in_range(39.37395491440794, 0.0, 5e-324))
    p, a, b = 0.6349183927504001, 0.07293246134161296, 0.3758965247706273
    r = radius_two_component(p, a, b)
    assert math.isfinite(r) and r >= l2_radius_first_order(p, a)


def _exact_slab_radius(mp, p, m):
    """Slab radius for the float inputs (p, m), in 50-digit arithmetic (bisections, no float rounding)."""
    with mp.workdps(50):
        p, m = mp.mpf(p), mp.mpf(m)
        q = 1 - p

        def z1_of(z2):
            return -mp.sqrt(2) * mp.erfinv(2 * (q - mp.ncdf(z2)) - 1)

        lo, hi = mp.mpf(-60), mp.sqrt(2) * mp.erfinv(2 * q - 1)
        for _ in range(170):  # phi(z2) - phi(z1(z2)) is increasing; solve = -m
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mp.npdf(mid) - mp.npdf(z1_of(mid)) <= -m else (lo, mid)
        z2, z1 = lo, z1_of(lo)
        lo, hi = mp.mpf(0), z1
        for _ in range(170):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mp.ncdf(z1 - mid) - mp.ncdf(z2 - mid) > 0.5 else (lo, mid)
        return lo


@pytest.mark.parametrize("p,m", [(0.5000000437002887, 2.2053635853500189e-10),
                                 (0.5000000004861461, 0.07670038224113339),
                                 (0.5000000000864493, 0.11107652692468692)])
def test_slab_radius_never_exceeds_the_exact_root_near_one_half(p, m):
    # near p = 1/2 the slab value is flat in r, and float rounding of Phi(z1 - r) - Phi(z2 - r) - 1/2 let the
    # bisection accept r slightly beyond the exact root (by up to 4e-8 relative); found against 50-digit mpmath
    mp = pytest.importorskip("mpmath")
    got = l2_radius_first_order(p, m)
    exact = _exact_slab_radius(mp, p, m)
    assert got <= exact
    assert got >= float(exact) * (1 - 1e-6) - 1e-13  # still tight: the rounding margin costs ~2e-15 / slope


def _exact_dual(mp, r, lam, p, a, b):
    """The two-component dual function D(lam) in 30-digit arithmetic (mpmath quadrature split at the roots of
    s(x) = exp(r x - r^2/2) - l0 - l1 x, at its minimiser (where J bends when s stays just above 0) and on a
    0.5-spaced grid; the mass beyond |x| = 14 is far below the tolerance used here)."""
    with mp.workdps(30):
        r, l0, l1, l2 = (mp.mpf(v) for v in (r, *lam))

        def s(x):
            return mp.exp(r * x - r * r / 2) - l0 - l1 * x

        def f(x):
            t = s(x) / l2
            return mp.npdf(x) * (l2 * t * mp.ncdf(-t) - l2 * mp.npdf(t))

        x_min = (mp.log(l1 / r) + r * r / 2) / r if l1 > 0 else mp.mpf(-14)
        pts = [mp.mpf(v) / 2 for v in range(-28, 29)]
        if -14 < x_min < 14:
            pts += [x_min + k * mp.sqrt(l2 / (r * l1)) for k in (-10, -3, -1, 0, 1, 3, 10)]
        for lo, hi in ((mp.mpf(-14), x_min), (x_min, mp.mpf(14))):
            if lo < hi and s(lo) * s(hi) < 0:
                positive_lo = s(lo) > 0
                for _ in range(110):
                    mid = (lo + hi) / 2
                    lo, hi = (mid, hi) if (s(mid) > 0) == positive_lo else (lo, mid)
                width = l2 / abs(r * mp.exp(r * lo - r * r / 2) - l1)
                pts += [lo - 10 * width, lo - width, lo, lo + width, lo + 10 * width]
        pts = sorted({x for x in pts if -14 <= x <= 14})
        return l0 * mp.mpf(p) - l1 * mp.mpf(a) + l2 * mp.mpf(b) + mp.quad(f, pts)


def test_certified_dual_value_accounts_for_float_rounding():
    # multipliers met by the radius search at p ~ 1 - 4e-11 with an orthogonal bound near its cap: the dual is a
    # small difference of ~1e9-sized terms; plain float64 evaluation overshot the exact dual by 1.5e-7
    # (0.50000024 "certified" vs 0.50000009 exact)
    mp = pytest.importorskip("mpmath")
    from estimators.radius import _certified_dual_value

    r, p, a, b = 6.584973039059399, 0.9999999999559027, 9.222283249186896e-12, 2.9223657013008536e-10
    lam = np.array([1303739935.7987552, 197704088.1784179, 292.23657013008534])
    exact = _exact_dual(mp, r, lam, p, a, b)
    got = _certified_dual_value(r, lam, p, a, b)
    assert got <= exact
    assert got >= float(exact) - 1e-3  # the rounding allowance is proportionate
    # ordinary multipliers: the allowance is negligible
    lam = np.array([1.0, 0.5, 0.1])
    exact = _exact_dual(mp, 1.0, lam, 0.9, 0.05, 0.1)
    got = _certified_dual_value(1.0, lam, 0.9, 0.05, 0.1)
    assert float(exact) - 1e-10 <= got <= exact  # the proven bound is refined to a 1e-10 gap by default


# Multipliers where J(s(x)) has a narrow dip (s stays within ~l2 of 0 near its minimiser, placed in the largest
# gap between the nodes of both Gauss-Legendre rules on a base panel): the 20- and 40-point rules agree on a
# value above the exact dual, so "10 x their difference" padding certified up to 2.5e-7 too much.
ADVERSARIAL_MULTIPLIERS = [  # (r, p, a, b, (l0, l1, l2))
    (1.0, 0.8, 0.1, 0.05, (0.41833176187467813, 1.1436293900602437, 1e-4)),
    (1.0, 0.8, 0.1, 0.05, (0.41830176187467816, 1.1436293900602437, 1e-4)),
    (1.0, 0.8, 0.1, 0.05, (0.1934802837905536, 1.4416569607513128, 1e-5)),
    (2.0, 0.8, 0.1, 0.05, (0.0654316229094114, 0.047909615289734225, 1e-5)),
    (2.0, 0.8, 0.1, 0.05, (0.08634816717128624, 0.07613352434912238, 1e-5)),
]


@pytest.mark.parametrize("r, p, a, b, lam", ADVERSARIAL_MULTIPLIERS)
def test_certified_dual_is_below_the_exact_dual_where_gauss_legendre_misses_a_dip(r, p, a, b, lam):
    import mpmath as mp

    from estimators.radius import _GL_FAST, _certified_dual_value, _dual_terms, _nodes

    lam = np.array(lam)
    exact = float(_exact_dual(mp, r, lam, p, a, b))
    # the former estimate: min of the two rules, padded by 10x their difference
    d20 = _dual_terms(r, lam, p, a, b, *_nodes(r, lam, _GL_FAST), need_hess=False)[0]
    d40 = _dual_terms(r, lam, p, a, b, *_nodes(r, lam, np.polynomial.legendre.leggauss(40)), need_hess=False)[0]
    assert min(d20, d40) - 10 * abs(d20 - d40) > exact + 1e-9  # the trap is real
    got = _certified_dual_value(r, lam, p, a, b)
    assert got <= exact
    assert got >= exact - 1e-9


def test_certified_dual_is_a_lower_bound_for_random_multipliers():
    import mpmath as mp

    from estimators.radius import _certified_dual_value

    rng = np.random.default_rng(5)
    for _ in range(6):
        p = rng.uniform(0.55, 0.999)
        thr = gradient_norm_threshold(p)
        a, b, r = rng.uniform(0, 1) * thr, rng.uniform(0, 0.95) * thr, rng.uniform(0.1, 4.0)
        lam = np.array([10 ** rng.uniform(-2, 1.5), 10 ** rng.uniform(-3, 1.5), 10 ** rng.uniform(-6, 0)])
        exact = float(_exact_dual(mp, r, lam, p, a, b))
        got = _certified_dual_value(r, lam, p, a, b)
        assert exact - 1e-9 <= got <= exact


def test_two_component_docstring_example():
    assert radius_two_component(0.9, 0.05, 0.1) == pytest.approx(1.629, abs=1e-3)
    assert l2_radius_first_order(0.9, 0.05) == pytest.approx(1.5119, abs=1e-4)


# ------------------------------------------------------------------------------------------------ 3-class oracle
def _phi2(h, k, rho):
    """P(X <= h, Y <= k) for a standard bivariate normal with correlation rho, |rho| < 1 (Owen's T, vectorised)."""
    h, k = np.broadcast_arrays(np.asarray(h, float), np.asarray(k, float))
    sr = math.sqrt(1.0 - rho * rho)
    with np.errstate(divide="ignore", invalid="ignore"):
        ah = np.where(h != 0, (k - rho * h) / (h * sr), np.copysign(np.inf, k - rho * h))
        ak = np.where(k != 0, (h - rho * k) / (k * sr), np.copysign(np.inf, h - rho * k))
    beta = np.where((h * k > 0) | ((h * k == 0) & (h + k >= 0)), 0.0, 0.5)
    out = 0.5 * ndtr(h) + 0.5 * ndtr(k) - owens_t(h, ah) - owens_t(k, ak) - beta
    return np.where((h == 0) & (k == 0), 0.25 + math.asin(rho) / (2 * math.pi), out)


def _min_wedge_probability(m, d, rho, r, norm, mask=None, n_theta=400):
    """min of P(f(x + delta + z) = label) over the ball ||delta||_norm <= r (delta supported on ``mask``) for a
    3-class linear f with margin vectors d[j] = w_label - w_j and margins m[j] (sigma = 1).

    The probability is Phi2(m_0'/|d_0|, m_1'/|d_1|; rho), increasing in both margins, so its minimum over the
    convex 2-D image of the ball lies on the image's lower-left boundary: the support points for the weights
    (cos t, sin t), t in [0, pi/2], and the segments between consecutive ones (flat faces of l1 / l_inf balls).
    Every point evaluated is in the ball, so a value <= 1/2 is a genuine counterexample."""
    s = [np.linalg.norm(dj) for dj in d]
    keep = np.ones(d[0].size, bool) if mask is None else mask
    pts = []
    for t in np.linspace(0.0, math.pi / 2, n_theta):
        c = np.where(keep, math.cos(t) * d[0] / s[0] + math.sin(t) * d[1] / s[1], 0.0)
        if norm == "l2":
            delta = -r * c / np.linalg.norm(c)
        elif norm == "linf":
            delta = -r * np.sign(c)
        else:
            i = int(np.argmax(np.abs(c)))
            delta = np.zeros_like(c)
            delta[i] = -r * np.sign(c[i])
        pts.append([(m[0] + d[0] @ delta) / s[0], (m[1] + d[1] @ delta) / s[1]])
    pts = np.array(pts)
    fr = np.linspace(0.0, 1.0, 9)[:, None, None]
    cand = (pts[:-1][None] + fr * (pts[1:] - pts[:-1])[None]).reshape(-1, 2)
    return float(np.min(_phi2(cand[:, 0], cand[:, 1], rho)))


@pytest.mark.parametrize("seed", [*range(4), *[pytest.param(s, marks=pytest.mark.slow) for s in range(4, 80)]])
def test_exact_inputs_three_class_linear_oracle(seed):
    """Deterministic oracle for a classifier that is NOT a half-space: a 3-class linear model (wedge-shaped
    region, pA = bivariate normal CDF). With the exact pA and exact gradient norms as inputs, no certified l2 /
    l1 / l_inf / channel ball may contain a point where pA <= 1/2 (any violation is a bug in the radius formulas,
    not bad luck). Also checks the radii are not vacuous. (Review attack: 211 such certificates, 0 violations.)"""
    rng = np.random.default_rng(seed)
    C, H = (3, 1 + seed % 2) if seed % 3 else (1, 2)
    D = C * H * H
    while True:
        W = rng.standard_normal((3, D))
        d = [W[0] - W[1], W[0] - W[2]]
        s = [np.linalg.norm(dj) for dj in d]
        rho = float(d[0] @ d[1] / (s[0] * s[1]))
        a = rng.uniform(0.2, 3.0, 2)
        p = float(_phi2(a[0], a[1], rho))
        if abs(rho) < 0.95 and p > 0.55:
            break
    m = [a[0] * s[0], a[1] * s[1]]
    sr = math.sqrt(1 - rho * rho)
    G = (_phi(a[0]) * ndtr((a[1] - rho * a[0]) / sr) * d[0] / s[0]
         + _phi(a[1]) * ndtr((a[0] - rho * a[1]) / sr) * d[1] / s[1])  # sigma * grad pA, sigma = 1
    M = L = float(np.linalg.norm(G))
    radii = {("l2", None): l2_radius_first_order(p, M),
             ("l1", None): l1_radius_first_order(p, linf_upper=float(np.abs(G).max()), l2_upper=M, l2_lower=L, dim=D),
             ("linf", None): linf_radius_first_order(p, l1_scaled_upper=float(np.abs(G).sum()) / math.sqrt(D),
                                                     l2_upper=M, l2_lower=L, dim=D)}
    if C == 3:
        Gc = G.reshape(3, -1)
        for k in range(3):
            mask = np.zeros(D, bool)
            mask[k * H * H:(k + 1) * H * H] = True
            radii[("l2", k)] = channel_radius_first_order(
                p, in_upper=float(np.linalg.norm(Gc[k])), out_lower=float(np.linalg.norm(np.delete(Gc, k, 0))),
                l2_upper=M, l2_lower=L)
    for (norm_, k), r in radii.items():
        mask = None
        if k is not None:
            mask = np.zeros(D, bool)
            mask[k * H * H:(k + 1) * H * H] = True
        assert r >= norm.ppf(p) / (math.sqrt(D) if norm_ == "linf" else 1.0) - 1e-12
        assert _min_wedge_probability(m, d, rho, r * (1 - 1e-9), norm_, mask) > 0.5, (norm_, k, r)
    # not vacuous: the l2 radius is close to the exact worst case over the ball
    assert _min_wedge_probability(m, d, rho, radii[("l2", None)] * 1.25, "l2") < 0.5


def test_dual_integral_bound_rejects_bad_multipliers_and_brackets_the_integral():
    from estimators.dual_quadrature import dual_integral_lower_bound

    for bad in ((0.0, 1.0, 0.5, 0.1), (1.0, -1.0, 0.5, 0.1), (1.0, 1.0, -0.5, 0.1), (1.0, 1.0, 0.5, 0.0)):
        with pytest.raises(ValueError, match="l2 > 0"):
            dual_integral_lower_bound(*bad, [])
    # the roots only place the first breaks: wrong roots cost refinement, never validity
    good, gap = dual_integral_lower_bound(1.0, 1.0, 0.5, 0.1, [-1.7993524190701786, 0.8564229418290272])
    wrong, _ = dual_integral_lower_bound(1.0, 1.0, 0.5, 0.1, [3.0])
    exact = -0.231657616743798528725673050956  # 30-digit mpmath
    assert good <= exact and wrong <= exact and exact - good <= gap + 1e-12
