"""Smooth.certify(sequential=True): linear-classifier oracle under optional stopping, stop rules, bad input.

A linear base classifier's smoothed radius is exact: for f(x) = 1{x_0 > 0} and x = (d, 0, ...), pA = Phi(d / sigma)
and g is constant on the open ball of radius d, nothing larger. Sequential certification checks its stop rule
after every segment of the schedule and stops at the first crossing; over many seeded runs at alpha = 0.05 the
violations (radius > d, "certified at r" with d < r, "unreachable" with d > r) must be consistent with a rate
<= alpha (one-sided binomial test at level 1e-3).
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from certify.smoothing import Smooth, SmoothingCertificate
from estimators.sequential import check_schedule

RUNS, ALPHA, SIGMA = 200, 0.05, 1.0


def linear(batch: torch.Tensor) -> torch.Tensor:
    s = batch.reshape(batch.shape[0], -1)[:, 0]
    return torch.stack([-s, s], dim=1)


def _point(d: float, dim: int = 2) -> torch.Tensor:
    x = torch.zeros(dim)
    x[0] = d
    return x


def _within_budget(failures: int, runs: int, alpha: float) -> bool:
    return stats.binomtest(failures, runs, alpha, alternative="greater").pvalue > 1e-3


def _run(x, n_estimate: int = 2000, **kw) -> list[SmoothingCertificate]:
    smooth = Smooth(linear, num_classes=2, sigma=SIGMA, input_range=None)
    return [smooth.certify(x, n_select=10, n_estimate=n_estimate, alpha=ALPHA, batch_size=500, seed=i,
                           sequential=True, **kw) for i in range(RUNS)]


def test_radius_mode_never_exceeds_the_exact_radius_beyond_alpha():
    d = 0.8416  # pA = 0.8
    certs = _run(_point(d), n_estimate=1000, radius_tol=0.01)
    violations = sum(c.radius > d for c in certs)
    assert _within_budget(violations, RUNS, ALPHA)
    assert all(c.n_used in check_schedule(1000).tolist() for c in certs)
    assert all(sum(c.counts) == c.n_used for c in certs)
    assert np.mean([c.radius for c in certs]) > 0.3  # it does certify something


def test_decision_mode_lower_side():
    d, r = 0.80, 0.8416  # true distance just below r: "certified at r" is a violation
    certs = _run(_point(d), target_radius=r)
    violations = sum((not c.abstained) and c.radius >= r for c in certs)
    assert _within_budget(violations, RUNS, ALPHA)
    assert all(c.stop_reason in ("certified", "unreachable", "out_of_budget") for c in certs)


def test_decision_mode_upper_side():
    d, r = 0.90, 0.8416  # true distance above r: "unreachable" (upper bound below Phi(r / sigma)) is a violation
    certs = _run(_point(d), target_radius=r)
    wrong = [c for c in certs if c.stop_reason == "unreachable"]
    assert _within_budget(len(wrong), RUNS, ALPHA)


def test_easy_decisions_stop_early_and_echo_settings():
    smooth = Smooth(linear, num_classes=2, sigma=0.25, input_range=None)
    far = smooth.certify(_point(2.0), n_select=10, n_estimate=100_000, alpha=0.001, seed=0, sequential=True,
                         target_radius=0.25)
    assert far.stop_reason == "certified" and far.radius >= 0.25 and far.n_used == 100
    assert far.sequential and far.target_radius == 0.25 and far.radius_tol == 0.01
    d = far.to_dict()
    assert d["n_used"] == 100 and d["stop_reason"] == "certified"
    near = smooth.certify(_point(0.01), n_select=10, n_estimate=100_000, alpha=0.001, seed=0, sequential=True,
                          target_radius=0.25)
    assert near.stop_reason == "unreachable" and near.n_used <= 200 and near.radius < 0.25
    # radius mode: ten equally likely classes -> p_upper < 1/2 at the first check -> no radius can be certified
    ten = Smooth(lambda b: b.reshape(b.shape[0], -1), num_classes=10, sigma=1.0, input_range=None)
    hopeless = ten.certify(torch.zeros(10), n_select=10, n_estimate=100_000, alpha=0.001, seed=0, sequential=True)
    assert hopeless.abstained and hopeless.n_used == 100 and hopeless.stop_reason == "converged"


def test_fixed_mode_records_n_used():
    smooth = Smooth(linear, num_classes=2, sigma=0.25, input_range=None)
    cert = smooth.certify(_point(0.3), n_select=10, n_estimate=300, alpha=0.001, seed=0)
    assert cert.n_used == 300 and not cert.sequential and cert.stop_reason == "fixed" and cert.target_radius is None


def test_sequential_radius_is_sound_and_below_fixed_budget():
    # a sequential certificate can never report more than the cap of its own last-check bound at n_estimate:
    # level alpha / 2 + alpha / (2 J) there (half of alpha is kept for the last check)
    smooth = Smooth(linear, num_classes=2, sigma=0.25, input_range=None)
    c = smooth.certify(_point(5.0), n_select=10, n_estimate=1000, alpha=0.001, seed=0, sequential=True)
    n_checks = len(check_schedule(1000))
    assert c.n_used == 1000 and c.stop_reason == "exhausted"
    assert c.p_lower == pytest.approx((0.0005 + 0.0005 / n_checks) ** (1 / 1000), rel=1e-12)
    fixed = smooth.certify(_point(5.0), n_select=10, n_estimate=1000, alpha=0.001, seed=0)
    assert c.p_lower < fixed.p_lower


def test_small_n_estimate_is_one_segment():
    smooth = Smooth(linear, num_classes=2, sigma=0.25, input_range=None)
    c = smooth.certify(_point(1.0), n_select=10, n_estimate=20, alpha=0.001, batch_size=1000, seed=0,
                       sequential=True)
    assert c.n_used == 20


def test_batch_size_does_not_change_the_result():
    # the check counts are fixed; each segment has its own seed (16 pixels: torch's normal_ stream is then the
    # same however a segment is cut into batches)
    smooth = Smooth(linear, num_classes=2, sigma=0.5, input_range=None)
    x = _point(0.6, 16).reshape(1, 4, 4)
    certs = [smooth.certify(x, n_select=10, n_estimate=5000, alpha=0.001, batch_size=bs, seed=3, sequential=True)
             for bs in (16, 100, 5000)]
    assert len({(c.n_used, c.counts, c.p_lower) for c in certs}) == 1


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.5", True, [0.5]])
def test_bad_target_radius(bad):
    smooth = Smooth(linear, num_classes=2, sigma=0.25, input_range=None)
    with pytest.raises(ValueError, match=r"target_radius must be a finite number >= 0"):
        smooth.certify(_point(1.0), n_select=10, n_estimate=100, alpha=0.01, sequential=True, target_radius=bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "0.01", None])
def test_bad_radius_tol(bad):
    smooth = Smooth(linear, num_classes=2, sigma=0.25, input_range=None)
    with pytest.raises(ValueError, match=r"radius_tol must be a finite number > 0"):
        smooth.certify(_point(1.0), n_select=10, n_estimate=100, alpha=0.01, sequential=True, radius_tol=bad)


def test_first_order_with_sequential_is_refused():
    smooth = Smooth(linear, num_classes=2, sigma=0.25, input_range=None)
    with pytest.raises(ValueError, match="first_order=True cannot be combined with sequential=True"):
        smooth.certify(_point(1.0), n_select=10, n_estimate=100, alpha=0.01, sequential=True, first_order=True)


def test_target_radius_needs_sequential_and_sequential_is_a_bool():
    smooth = Smooth(linear, num_classes=2, sigma=0.25, input_range=None)
    with pytest.raises(ValueError, match="target_radius"):
        smooth.certify(_point(1.0), n_select=10, n_estimate=100, alpha=0.01, target_radius=0.5)
    with pytest.raises(TypeError, match="sequential"):
        smooth.certify(_point(1.0), n_select=10, n_estimate=100, alpha=0.01, sequential=1)
    assert math.isfinite(smooth.certify(_point(1.0), n_select=10, n_estimate=100, alpha=0.01, sequential=True,
                                        target_radius=0).radius)


def test_sequential_with_sound_lattice_noise():
    from estimators.lattice import total_variation
    from estimators.sequential import scheduled_clopper_pearson

    smooth = Smooth(linear, num_classes=2, sigma=0.25, sound=True)
    x = torch.full((4,), 200 / 255)
    c = smooth.certify(x, n_select=10, n_estimate=1000, alpha=0.001, seed=0, sequential=True, target_radius=0.25)
    k = c.counts[c.label]
    cs_lower, _ = scheduled_clopper_pearson(k, c.n_used, 0.001, n_checks=len(check_schedule(1000)), final_share=0.5,
                                            final=c.n_used == 1000)
    assert c.sound and c.p_lower == pytest.approx(cs_lower - total_variation(smooth.lattice, 4), abs=1e-15)
