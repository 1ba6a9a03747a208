import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from estimators.confidence import (
    AlphaBudget,
    binomial_test_pvalue,
    check_alpha,
    clopper_pearson_lower,
    clopper_pearson_upper,
    split_alpha,
)


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (73, 100), (999, 1000), (1000, 1000),
                                 (12345, 100000), (99990, 100000)])
@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.3])
def test_clopper_pearson_matches_statsmodels(k, n, alpha):
    lo_ref, hi_ref = proportion_confint(k, n, alpha=2 * alpha, method="beta")
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(lo_ref, abs=1e-12)
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(hi_ref, abs=1e-12)


def test_clopper_pearson_equals_scipy_beta_quantiles_bit_for_bit():
    """The bounds call scipy.special.betaincinv directly; they must equal scipy.stats.beta's quantiles exactly
    (the function stats.beta.ppf evaluates), so that no certificate changes by even one ulp."""
    rng = np.random.default_rng(0)
    n = rng.integers(1, 2_000_000, 20_000)
    k = rng.integers(0, n + 1)
    for alpha in (0.001, 0.05, 1e-6, 0.0005 / 3):
        pos, lt = k > 0, k < n
        lower = np.asarray(clopper_pearson_lower(k, n, alpha))
        upper = np.asarray(clopper_pearson_upper(k, n, alpha))
        assert np.array_equal(lower[pos], stats.beta.ppf(alpha, k[pos], n[pos] - k[pos] + 1))
        assert np.array_equal(upper[lt], stats.beta.ppf(1 - alpha, k[lt] + 1, n[lt] - k[lt]))
        assert np.all(lower[~pos] == 0.0) and np.all(upper[~lt] == 1.0)


def test_clopper_pearson_all_agree_closed_form():
    # all n samples agree: lower bound = alpha^(1/n) exactly
    for n in (1, 10, 100, 100_000):
        assert clopper_pearson_lower(n, n, 0.001) == pytest.approx(0.001 ** (1 / n), rel=1e-12)
        assert clopper_pearson_upper(0, n, 0.001) == pytest.approx(1 - 0.001 ** (1 / n), rel=1e-9)


def test_clopper_pearson_vectorised_and_mirror():
    k = np.array([0, 3, 50, 100])
    lo = clopper_pearson_lower(k, 100, 0.01)
    hi = clopper_pearson_upper(k, 100, 0.01)
    assert lo.shape == (4,) and hi.shape == (4,)
    assert np.all(lo < k / 100 + 1e-15) and np.all(hi > k / 100 - 1e-15)
    np.testing.assert_allclose(hi, 1 - clopper_pearson_lower(100 - k, 100, 0.01), atol=1e-12)
    assert isinstance(clopper_pearson_lower(3, 10, 0.1), float)


def test_clopper_pearson_coverage_exact():
    # exact coverage computation over all outcomes: P(lower > p) <= alpha for many p
    n, alpha = 60, 0.05
    ks = np.arange(n + 1)
    lo = clopper_pearson_lower(ks, n, alpha)
    hi = clopper_pearson_upper(ks, n, alpha)
    for p in np.linspace(0.01, 0.99, 197):
        pmf = stats.binom.pmf(ks, n, p)
        assert pmf[lo > p].sum() <= alpha + 1e-12
        assert pmf[hi < p].sum() <= alpha + 1e-12


@pytest.mark.parametrize("bad,exc", [((-1, 10), ValueError), ((11, 10), ValueError), ((3, 0), ValueError),
                                     ((2.5, 10), ValueError), ((True, 10), TypeError), (("3", 10), TypeError)])
def test_clopper_pearson_bad_counts(bad, exc):
    with pytest.raises(exc):
        clopper_pearson_lower(bad[0], bad[1], 0.01)


@pytest.mark.parametrize("alpha,exc", [(0.0, ValueError), (1.0, ValueError), (-0.1, ValueError),
                                       (float("nan"), ValueError), (True, TypeError), ("0.1", TypeError)])
def test_bad_alpha(alpha, exc):
    with pytest.raises(exc, match="alpha"):
        clopper_pearson_lower(3, 10, alpha)
    with pytest.raises(exc, match="alpha"):
        check_alpha(alpha)


def test_binomial_pvalue_known_values():
    assert binomial_test_pvalue(8, 10) == pytest.approx(0.109375)
    assert binomial_test_pvalue(5, 10) == 1.0  # tie
    assert binomial_test_pvalue(50, 50) == pytest.approx(2 * 0.5 ** 50)
    assert binomial_test_pvalue(3, 10, 0.3) == pytest.approx(stats.binomtest(3, 10, 0.3).pvalue)
    with pytest.raises(TypeError):
        binomial_test_pvalue(3.0, 10)
    with pytest.raises(ValueError):
        binomial_test_pvalue(11, 10)
    with pytest.raises(ValueError):
        binomial_test_pvalue(1, 10, 1.5)


def test_split_alpha_sums_to_at_most_alpha():
    shares = split_alpha(0.001, {"p_lower": 1, "gradient": 1})
    assert shares == {"p_lower": 0.0005, "gradient": 0.0005}
    for alpha in (0.1, 1e-3, 0.3333333, 1e-9):
        for k in (1, 3, 7, 11, 13):
            w = {f"b{i}": 1.0 + (i % 3) for i in range(k)}
            s = split_alpha(alpha, w)
            assert math.fsum(s.values()) <= alpha
            assert sum(s.values()) <= alpha
            assert math.fsum(s.values()) == pytest.approx(alpha, rel=1e-12)
    with pytest.raises(ValueError):
        split_alpha(0.1, {})
    with pytest.raises(ValueError):
        split_alpha(0.1, {"a": 0.0})
    with pytest.raises(ValueError):
        split_alpha(0.1, {"a": float("nan")})


def test_alpha_budget():
    b = AlphaBudget.split(0.01, {"p_lower": 2, "g": 1, "h": 1})
    assert b["p_lower"] == pytest.approx(0.005)
    assert "g" in b and b.used <= 0.01
    assert b.to_dict() == b.shares
    with pytest.raises(ValueError, match="union bound"):
        AlphaBudget(total=0.01, shares={"a": 0.006, "b": 0.006})
    with pytest.raises(ValueError):
        AlphaBudget(total=0.01, shares={"a": 0.0})
