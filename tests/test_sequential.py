"""estimators.sequential: known values, coverage under optional stopping (checked after every batch), bad input.

Coverage tests simulate many Bernoulli sequences (fixed seeds), check the bound after every batch and record a
failure when ANY check excludes the true p (what stopping at the first crossing would report). The failure count
must be consistent with a rate <= alpha (one-sided binomial test at level 1e-3). The same harness flags a naive
Clopper-Pearson bound re-checked after every batch, so it can fail.
"""
import numpy as np
import pytest
from scipy import stats

from estimators.confidence import clopper_pearson_lower
from estimators.sequential import (
    beta_binomial_cs,
    check_levels,
    check_schedule,
    scheduled_clopper_pearson,
    stop_decision,
)


# ------------------------------------------------------------------------------------------------ known values
def test_beta_binomial_all_successes_closed_form():
    # uniform prior, k = n: M_n(p) = 1 / ((n + 1) p^n), so lower = (alpha / (n + 1))^(1/n)
    lo, up = beta_binomial_cs(100, 100, 0.001)
    assert lo == pytest.approx((0.001 / 101) ** (1 / 100), rel=1e-9, abs=0) and lo <= (0.001 / 101) ** (1 / 100)
    assert up == 1.0
    lo0, up0 = beta_binomial_cs(0, 100, 0.001)
    assert lo0 == 0.0 and up0 == pytest.approx(1 - (0.001 / 101) ** (1 / 100), rel=1e-9)


def test_beta_binomial_symmetry_and_containment():
    k = np.array([0, 3, 50, 97, 100])
    lo, up = beta_binomial_cs(k, 100, 0.01)
    lo_m, up_m = beta_binomial_cs(100 - k, 100, 0.01)
    np.testing.assert_allclose(lo, 1 - up_m, atol=1e-12)
    np.testing.assert_allclose(up, 1 - lo_m, atol=1e-12)
    assert np.all(lo <= k / 100) and np.all(up >= k / 100)
    # an anytime bound is wider than the fixed-n exact bound at the same level
    assert np.all(lo[1:] < clopper_pearson_lower(k[1:], 100, 0.01))


def test_scheduled_clopper_pearson_is_cp_at_alpha_over_checks():
    lo, up = scheduled_clopper_pearson(100, 100, 0.01, n_checks=10)
    assert lo == pytest.approx(0.001 ** (1 / 100), rel=1e-12) and up == 1.0
    k = np.arange(0, 51)
    lo, up = scheduled_clopper_pearson(k, 50, 0.05, n_checks=5)
    np.testing.assert_allclose(lo, clopper_pearson_lower(k, 50, 0.01), rtol=1e-12)
    np.testing.assert_allclose(up, 1 - clopper_pearson_lower(50 - k, 50, 0.01), atol=1e-12)


def test_check_schedule():
    assert check_schedule(1000, first=100, growth=2.0).tolist() == [100, 200, 400, 800, 1000]
    assert check_schedule(50).tolist() == [50]
    s = check_schedule(100_000)
    assert s[0] == 100 and s[-1] == 100_000 and np.all(np.diff(s) > 0) and len(s) < 40


def test_stop_decision_rules():
    kw = dict(sigma=0.25, radius_tol=0.01)
    assert stop_decision(lower=0.9, upper=0.99, best_lower=0.999, target_radius=0.25, **kw) == "certified"
    # Phi(1) = 0.841: upper below it -> out of reach
    assert stop_decision(lower=0.6, upper=0.8, best_lower=0.999, target_radius=0.25, **kw) == "unreachable"
    assert stop_decision(lower=0.6, upper=0.9, best_lower=0.999, target_radius=0.25, **kw) is None
    assert stop_decision(lower=0.6, upper=0.9, best_lower=0.8, target_radius=0.25, **kw) == "out_of_budget"
    assert stop_decision(lower=0.4, upper=0.45, best_lower=0.9, target_radius=None, **kw) == "converged"
    assert stop_decision(lower=0.9, upper=0.99, best_lower=0.999, target_radius=None, **kw) is None
    assert stop_decision(lower=0.9, upper=0.9001, best_lower=0.999, target_radius=None, **kw) == "converged"


@pytest.mark.parametrize("bad, exc", [(0.0, ValueError), (1.0, ValueError), (float("nan"), ValueError),
                                      ("0.1", TypeError), (True, TypeError)])
def test_bad_alpha(bad, exc):
    with pytest.raises(exc, match="alpha"):
        beta_binomial_cs(1, 2, bad)
    with pytest.raises(exc, match="alpha"):
        scheduled_clopper_pearson(1, 2, bad, n_checks=3)


def test_bad_counts_and_options():
    with pytest.raises(ValueError, match="k must"):
        beta_binomial_cs(3, 2, 0.1)
    with pytest.raises(ValueError, match="n must"):
        scheduled_clopper_pearson(0, 0, 0.1, n_checks=1)
    with pytest.raises(TypeError, match="k must"):
        beta_binomial_cs(1.5, 2, 0.1)
    with pytest.raises(ValueError, match="n_checks"):
        scheduled_clopper_pearson(1, 2, 0.1, n_checks=0)
    with pytest.raises(ValueError, match="prior"):
        beta_binomial_cs(1, 2, 0.1, prior=(0.0, 1.0))
    with pytest.raises(ValueError, match="growth"):
        check_schedule(100, growth=1.0)
    with pytest.raises(ValueError, match="n_max"):
        check_schedule(0)


# ------------------------------------------------------------------------------------------------ optional stopping
RUNS, BATCH, N_MAX, ALPHA = 500, 20, 2000, 0.05


def _paths(p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative successes after every batch: (RUNS, N_MAX / BATCH) array, and the check counts."""
    rng = np.random.default_rng(seed)
    per_batch = rng.binomial(BATCH, p, size=(RUNS, N_MAX // BATCH))
    return np.cumsum(per_batch, axis=1), np.arange(1, N_MAX // BATCH + 1) * BATCH


def _within_budget(failures: int, runs: int, alpha: float) -> bool:
    """False when the failure count is significantly above alpha (one-sided binomial test at 1e-3)."""
    return stats.binomtest(failures, runs, alpha, alternative="greater").pvalue > 1e-3


@pytest.mark.parametrize("p, seed", [(0.5, 1), (0.9, 2), (0.99, 3)])
def test_coverage_under_optional_stopping(p, seed):
    k, n = _paths(p, seed)
    lo, up = beta_binomial_cs(k, n[None, :], ALPHA)
    assert _within_budget(int(np.any(lo > p, axis=1).sum()), RUNS, ALPHA)
    assert _within_budget(int(np.any(up < p, axis=1).sum()), RUNS, ALPHA)
    lo, up = scheduled_clopper_pearson(k, n[None, :], ALPHA, n_checks=n.size)
    assert _within_budget(int(np.any(lo > p, axis=1).sum()), RUNS, ALPHA)
    assert _within_budget(int(np.any(up < p, axis=1).sum()), RUNS, ALPHA)


def test_check_levels_sum_to_alpha_and_keep_the_final_share():
    assert check_levels(0.01, 4, final_share=0.5).tolist() == pytest.approx([0.00125, 0.00125, 0.00125, 0.00625])
    assert check_levels(0.01, 4).tolist() == pytest.approx([0.0025] * 4)
    assert check_levels(0.01, 1, final_share=0.5).tolist() == pytest.approx([0.01])
    for j in (1, 2, 31, 1000):
        assert check_levels(0.001, j, final_share=0.5).sum() == pytest.approx(0.001, rel=1e-12)
    lo_mid, _ = scheduled_clopper_pearson(100, 100, 0.01, n_checks=4, final_share=0.5)
    lo_end, _ = scheduled_clopper_pearson(100, 100, 0.01, n_checks=4, final_share=0.5, final=True)
    assert lo_mid == pytest.approx(0.00125 ** (1 / 100), rel=1e-12)
    assert lo_end == pytest.approx(0.00625 ** (1 / 100), rel=1e-12)
    for bad in (-0.1, 1.0, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="final_share"):
            check_levels(0.01, 4, final_share=bad)
    with pytest.raises(TypeError, match="final"):
        scheduled_clopper_pearson(1, 2, 0.1, n_checks=3, final=1)


@pytest.mark.parametrize("p, seed", [(0.5, 6), (0.99, 7)])
def test_coverage_with_half_of_alpha_on_the_last_check(p, seed):
    # the weighted union bound the sequential certificate uses: every check but the last at (alpha / 2) / J
    k, n = _paths(p, seed)
    kw = {"n_checks": n.size, "final_share": 0.5}
    lo, up = scheduled_clopper_pearson(k[:, :-1], n[None, :-1], ALPHA, **kw)
    lo_end, up_end = scheduled_clopper_pearson(k[:, -1], n[-1], ALPHA, **kw, final=True)
    assert _within_budget(int((np.any(lo > p, axis=1) | (lo_end > p)).sum()), RUNS, ALPHA)
    assert _within_budget(int((np.any(up < p, axis=1) | (up_end < p)).sum()), RUNS, ALPHA)


def test_harness_detects_a_naive_bound_rechecked_every_batch():
    # Clopper-Pearson at the full alpha after every batch is NOT a confidence sequence: the harness must flag it
    k, n = _paths(0.5, 4)
    naive = clopper_pearson_lower(k, np.broadcast_to(n, k.shape), ALPHA)
    assert not _within_budget(int(np.any(naive > 0.5, axis=1).sum()), RUNS, ALPHA)


def test_stopping_at_first_crossing_is_valid():
    # stop at the first check where lower >= 0.85 (a data-dependent time); the stopped bound must cover p = 0.84
    p = 0.84
    k, n = _paths(p, 5)
    lo, _ = scheduled_clopper_pearson(k, n[None, :], ALPHA, n_checks=n.size)
    crossed = lo >= 0.85
    stopped = np.where(crossed.any(axis=1), crossed.argmax(axis=1), n.size - 1)
    at_stop = lo[np.arange(RUNS), stopped]
    assert _within_budget(int((at_stop > p).sum()), RUNS, ALPHA)
