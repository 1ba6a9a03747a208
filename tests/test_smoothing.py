"""Smooth.predict / Smooth.certify: known values, closed-form oracles, a non-linear soundness check, bad input."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from certify.smoothing import Prediction, Smooth, SmoothingCertificate, max_radius
from estimators.confidence import binomial_test_pvalue, clopper_pearson_lower, clopper_pearson_upper


# ------------------------------------------------------------------------------------------------ helper models
class Constant(nn.Module):
    def __init__(self, label, num_classes):
        super().__init__()
        self.label, self.num_classes = label, num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.num_classes)
        out[:, self.label] = 1.0
        return out + 0 * self.dummy


class Alternating(nn.Module):
    """Votes 0, 1, 0, 1, ... within every batch: exact ties for even batch sizes."""

    def forward(self, x):
        return nn.functional.one_hot(torch.arange(x.shape[0]) % 2, 3).float()


class Linear2(nn.Module):
    """Two classes: 1 iff <w, x> + b > 0 (scores [0, w.x + b])."""

    def __init__(self, w, b):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64).flatten(), requires_grad=False)
        self.b = float(b)

    def forward(self, x):
        s = x.reshape(x.shape[0], -1).to(self.w.dtype) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)


# ------------------------------------------------------------------------------------------------ known values
def test_all_samples_agree_gives_the_cap():
    smooth = Smooth(Constant(2, 4), num_classes=4, sigma=0.25)
    x = torch.zeros(1, 5, 5)
    cert = smooth.certify(x, n_select=10, n_estimate=500, alpha=0.001, batch_size=128, seed=0)
    assert cert.label == 2 and not cert.abstained
    assert cert.p_lower == pytest.approx(0.001 ** (1 / 500), rel=1e-12)
    assert cert.radius == pytest.approx(max_radius(500, 0.001, 0.25), rel=1e-12)
    assert cert.counts == (0, 0, 500, 0) and cert.counts_select == (0, 0, 10, 0)
    assert cert.radii == {} and cert.alpha_split == {"p_lower": 0.001} and cert.gradient == {}


def test_ties_abstain():
    smooth = Smooth(Alternating(), num_classes=3, sigma=0.5)
    pred = smooth.predict(torch.zeros(4), n=100, alpha=0.5, batch_size=10)
    assert pred.abstained and pred.p_value == 1.0 and pred.counts == (50, 50, 0)
    cert = smooth.certify(torch.zeros(4), n_select=10, n_estimate=100, alpha=0.1, batch_size=10)
    assert cert.abstained and cert.radius == 0.0 and cert.label == 0
    cert1 = smooth.certify(torch.zeros(4), n_select=10, n_estimate=100, alpha=0.1, batch_size=10, first_order=True)
    assert cert1.abstained and set(cert1.radii.values()) == {0.0}
    assert set(cert1.radii) == {"l2", "l1", "linf", "channel_0"}


@pytest.mark.parametrize("n,alpha", [(5, 0.05), (5, 0.07), (6, 0.03), (6, 0.04), (10, 0.002), (10, 0.0021)])
def test_predict_abstains_exactly_as_the_binomial_test_says(n, alpha):
    smooth = Smooth(Constant(1, 3), num_classes=3, sigma=1.0)
    pred = smooth.predict(torch.zeros(2), n=n, alpha=alpha, batch_size=3)
    p = binomial_test_pvalue(n, n, 0.5)  # = 2 * 0.5**n
    assert pred.p_value == pytest.approx(p)
    assert pred.abstained == (p > alpha)
    assert pred.label == 1 and pred.counts == (0, n, 0)


def test_predict_mixed_counts_pvalue():
    torch.manual_seed(0)
    smooth = Smooth(Linear2([1.0, 0.0], 0.0), num_classes=2, sigma=1.0)
    pred = smooth.predict(torch.tensor([0.2, 0.0]), n=200, alpha=0.01, batch_size=64, seed=3)
    n1, n0 = pred.counts[1], pred.counts[0]
    assert pred.p_value == pytest.approx(stats.binomtest(max(n0, n1), n0 + n1, 0.5).pvalue)
    assert pred.abstained == (pred.p_value > 0.01)
    assert isinstance(pred, Prediction) and json.dumps(pred.to_dict())


def test_determinism_and_seed_effect():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    smooth = Smooth(model, num_classes=3, sigma=0.5)
    x = torch.rand(3, 2, 2)
    a = smooth.certify(x, n_select=20, n_estimate=400, alpha=0.01, batch_size=50, seed=7, first_order=True)
    b = smooth.certify(x, n_select=20, n_estimate=400, alpha=0.01, batch_size=50, seed=7, first_order=True)
    c = smooth.certify(x, n_select=20, n_estimate=400, alpha=0.01, batch_size=50, seed=8, first_order=True)
    da, db = a.to_dict(), b.to_dict()
    da.pop("time_s"), db.pop("time_s")
    assert da == db
    assert a.counts != c.counts or a.gradient != c.gradient
    p1 = smooth.predict(x, n=300, alpha=0.01, seed=1)
    p2 = smooth.predict(x, n=300, alpha=0.01, seed=1)
    assert p1.counts == p2.counts


def test_eval_mode_restored_and_used():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Dropout(0.9), nn.Linear(8, 3))
    model.train()
    model[2].eval()  # mixed modes must be restored exactly
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(m.training))
    smooth = Smooth(model, num_classes=3, sigma=0.1)
    smooth.certify(torch.zeros(4), n_select=5, n_estimate=10, alpha=0.1, batch_size=10)
    assert seen and not any(seen)
    assert model.training and model[1].training and not model[2].training


def test_input_shapes():
    model = Linear2(torch.ones(12), 0.5)
    smooth = Smooth(model, num_classes=2, sigma=0.5)
    for x in (torch.zeros(12), torch.zeros(3, 2, 2), torch.zeros(1, 3, 2, 2), np.zeros((3, 2, 2), np.float32)):
        cert = smooth.certify(x, n_select=10, n_estimate=100, alpha=0.01, batch_size=64, first_order=True)
        assert cert.input_shape in ((12,), (3, 2, 2))
        channels = 3 if len(cert.input_shape) == 3 else 1
        assert set(cert.radii) == {"l2", "l1", "linf"} | {f"channel_{k}" for k in range(channels)}
    with pytest.raises(ValueError, match="ONE example"):
        smooth.certify(torch.zeros(2, 3, 2, 2), n_select=10, n_estimate=100, alpha=0.01)
    with pytest.raises(ValueError, match="finite"):
        smooth.certify(torch.full((12,), float("nan")), n_select=10, n_estimate=100, alpha=0.01)
    with pytest.raises(ValueError, match="scalar"):
        smooth.predict(torch.tensor(1.0), n=10, alpha=0.01)
    with pytest.raises(TypeError, match="x"):
        smooth.predict([0.0] * 12, n=10, alpha=0.01)
    with pytest.raises(TypeError, match="x"):
        smooth.predict(torch.zeros(12, dtype=torch.bool), n=10, alpha=0.01)


def test_wrong_model_output_shape():
    smooth = Smooth(Linear2(torch.ones(4), 0.0), num_classes=3, sigma=0.5)  # model has 2 outputs
    with pytest.raises(ValueError, match="num_classes"):
        smooth.predict(torch.zeros(4), n=10, alpha=0.01)
    smooth = Smooth(nn.Linear(4, 3), num_classes=3, sigma=0.5)
    with pytest.raises(ValueError, match="shape"):
        smooth.predict(torch.zeros(5), n=10, alpha=0.01)  # the model itself rejects the input shape


def test_one_channel_channel_radius_equals_l2():
    torch.manual_seed(1)
    smooth = Smooth(Linear2(torch.randn(9), 2.0), num_classes=2, sigma=0.5)
    for x in (torch.zeros(1, 3, 3), torch.zeros(9)):
        cert = smooth.certify(x, n_select=20, n_estimate=2000, alpha=0.01, first_order=True)
        assert not cert.abstained and cert.radii["channel_0"] == cert.radii["l2"]


def test_first_order_budget_and_radius_semantics():
    torch.manual_seed(2)
    w = torch.randn(2, 2, 2)
    smooth = Smooth(Linear2(w, 1.5), num_classes=2, sigma=0.5)
    x = torch.zeros(2, 2, 2)
    cert = smooth.certify(x, n_select=20, n_estimate=4000, alpha=0.01, batch_size=500, first_order=True)
    split = cert.alpha_split
    assert math.fsum(split.values()) <= 0.01 and sum(split.values()) <= 0.01
    assert split["p_lower"] == pytest.approx(0.005)
    assert len(split) == 1 + 4 + 2 * 2
    n_a = cert.counts[cert.label]
    assert cert.p_lower == pytest.approx(clopper_pearson_lower(n_a, 4000, split["p_lower"]), rel=1e-12)
    assert cert.radius == pytest.approx(0.5 * stats.norm.ppf(cert.p_lower), rel=1e-12)
    D = 8
    assert cert.radii["l2"] >= cert.radius - 1e-12
    assert cert.radii["l1"] >= cert.radii["l2"] - 1e-12
    assert cert.radii["linf"] >= cert.radii["l2"] / math.sqrt(D) - 1e-12
    assert cert.radii["channel_0"] >= cert.radii["l2"] - 1e-12 and cert.radii["channel_1"] >= cert.radii["l2"] - 1e-12
    d = cert.to_dict()
    json.dumps(d)
    assert d["gradient"]["dim"] == 8 and d["first_order"] is True and d["input_shape"] == [2, 2, 2]
    assert isinstance(cert, SmoothingCertificate)


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(n_select=0), ValueError, "n_select"),
    (dict(n_select=10.0), TypeError, "n_select"),
    (dict(n_select=True), TypeError, "n_select"),
    (dict(n_estimate=-5), ValueError, "n_estimate"),
    (dict(n_estimate=1, first_order=True), ValueError, "n_estimate"),
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(alpha=1.0), ValueError, "alpha"),
    (dict(alpha=float("nan")), ValueError, "alpha"),
    (dict(alpha="0.1"), TypeError, "alpha"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=2.5), TypeError, "batch_size"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.0), TypeError, "seed"),
    (dict(first_order=1), TypeError, "first_order"),
])
def test_certify_bad_arguments(kwargs, exc, word):
    smooth = Smooth(Constant(0, 2), num_classes=2, sigma=0.5)
    args = dict(n_select=10, n_estimate=100, alpha=0.01)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        smooth.certify(torch.zeros(3), **args)


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(n=0), ValueError, "n"), (dict(n=5.0), TypeError, "n"), (dict(alpha=2.0), ValueError, "alpha"),
    (dict(batch_size=False), TypeError, "batch_size"), (dict(seed=-3), ValueError, "seed"),
])
def test_predict_bad_arguments(kwargs, exc, word):
    smooth = Smooth(Constant(0, 2), num_classes=2, sigma=0.5)
    args = dict(n=10, alpha=0.01)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        smooth.predict(torch.zeros(3), **args)


@pytest.mark.parametrize("args,exc,word", [
    ((Constant(0, 2), 2, 0.0), ValueError, "sigma"), ((Constant(0, 2), 2, -1.0), ValueError, "sigma"),
    ((Constant(0, 2), 2, float("inf")), ValueError, "sigma"), ((Constant(0, 2), 2, "0.5"), TypeError, "sigma"),
    ((Constant(0, 2), 1, 0.5), ValueError, "num_classes"), ((Constant(0, 2), 2.0, 0.5), TypeError, "num_classes"),
    ((Constant(0, 2), True, 0.5), TypeError, "num_classes"), (("model", 2, 0.5), TypeError, "model"),
])
def test_constructor_bad_arguments(args, exc, word):
    with pytest.raises(exc, match=word):
        Smooth(*args)


# ------------------------------------------------------------------------------------------------ closed-form oracle
def _linear_cases(shape, n_points, rng):
    """(model, x, exact radii) for half-space classifiers; pA = Phi(margin / (sigma ||w||)) in [0.6, 0.995]."""
    D = int(np.prod(shape))
    cases = []
    ws = [np.ones(D), np.arange(1.0, D + 1), rng.standard_normal(D), np.r_[5.0, 0.3 * np.ones(D - 1)],
          np.r_[0.2 * np.ones(D // 2), np.ones(D - D // 2)]]  # last: gradient concentrated in one channel
    for i in range(n_points):
        w = ws[i % len(ws)]
        w = w / np.linalg.norm(w)
        t = rng.uniform(0.25, 2.6)  # margin / (sigma ||w||)
        x = rng.uniform(-1, 1, D)
        b = 0.5 * t - w @ x  # sigma = 0.5, ||w|| = 1: w.x + b = sigma * t
        margin = w @ x + b
        exact = {"l2": margin, "l1": margin / np.abs(w).max(), "linf": margin / np.abs(w).sum()}
        if len(shape) == 3:
            wc = w.reshape(shape[0], -1)
            for k in range(shape[0]):
                exact[f"channel_{k}"] = margin / np.linalg.norm(wc[k])
        else:
            exact["channel_0"] = margin
        cases.append((Linear2(w, b), torch.tensor(x.reshape(shape), dtype=torch.float32), exact))
    return cases


def _fails(cert, exact, tol=1e-6):
    if cert.abstained:
        return False
    if cert.label != 1 or cert.radius > exact["l2"] + tol:
        return True
    return any(cert.radii[k] > exact[k] + tol for k in cert.radii)


@pytest.mark.parametrize("chunk", [None, 500], ids=["default-chunks", "chunks-of-500"])
def test_linear_oracle_certificates_hold_at_rate_alpha(chunk, monkeypatch):
    """Certified radius > exact radius must happen with frequency <= alpha (zeroth and first order).

    Allowance: with N certificates each failing with probability <= alpha, the number of failures exceeds
    binom.isf(1e-6, N, alpha) with probability < 1e-6. With chunks of 500 samples every estimation stream is
    drawn from 6 (zeroth order) or 20 (first order) independently seeded chunks.
    """
    if chunk is not None:
        import certify.smoothing

        monkeypatch.setattr(certify.smoothing, "SAMPLE_CHUNK", chunk)
    rng = np.random.default_rng(2024 if chunk is None else 77)
    alpha = 0.05
    cases = _linear_cases((6,), 80, rng) + _linear_cases((2, 1, 3), 60, rng)
    fails0 = fails1 = 0
    tight, gain_l1, near = [], [], []
    for i, (model, x, exact) in enumerate(cases):
        smooth = Smooth(model, num_classes=2, sigma=0.5, input_range=None)  # x in [-1, 1]: not pixels
        c0 = smooth.certify(x, n_select=30, n_estimate=3000, alpha=alpha, batch_size=1000, seed=i)
        c1 = smooth.certify(x, n_select=30, n_estimate=10_000, alpha=alpha, batch_size=2000, seed=10_000 + i,
                            first_order=True)
        fails0 += _fails(c0, exact)
        fails1 += _fails(c1, exact)
        if not c0.abstained:
            tight.append(c0.radius / exact["l2"])
        if not c1.abstained:
            gain_l1.append(c1.radii["l1"] / c1.radii["l2"])
            near.append(max(c1.radii[k] / exact[k] for k in c1.radii if k != "l2"))
    allowance = stats.binom.isf(1e-6, len(cases), alpha)
    assert fails0 <= allowance and fails1 <= allowance, (fails0, fails1, allowance)
    # not vacuous: zeroth-order radii are close to exact, the first-order radii beyond l2 are exercised
    # (l1 often well above l2) and come close to the exact radii (so inflated formulas would be caught)
    assert np.median(tight) > 0.8
    assert np.mean(np.array(gain_l1) > 1.05) > 0.25
    assert np.median(near) > 0.9


@pytest.mark.parametrize("shape,w,key", [
    ((6,), np.ones(6), "linf"),  # linf exact = margin / ||w||_1 = l2 radius / sqrt(D)
    ((6,), np.r_[5.0, 0.3 * np.ones(5)], "l1"),  # l1 exact = margin / ||w||_inf ~ l2 radius
    ((2, 1, 3), np.r_[0.05 * np.ones(3), np.ones(3)], "channel_1"),  # gradient almost all in channel 1
])
def test_linear_oracle_near_exact_radii(shape, w, key):
    """With alpha = 1e-6 (a correct certificate fails with probability <= 1e-6) the radius for ``key`` must be
    below the exact one, and close to it: a formula inflated by a few percent would fail here."""
    w = w / np.linalg.norm(w)
    t = 1.2815515655446004  # pA = 0.9 at x = 0
    smooth = Smooth(Linear2(w, 0.5 * t), num_classes=2, sigma=0.5)
    cert = smooth.certify(torch.zeros(shape), n_select=50, n_estimate=20_000, alpha=1e-6, batch_size=5000, seed=3,
                          first_order=True)
    margin = 0.5 * t
    wc = w.reshape(shape[0], -1) if len(shape) == 3 else w[None, :]
    exact = {"l2": margin, "l1": margin / np.abs(w).max(), "linf": margin / np.abs(w).sum(),
             "channel_1": margin / np.linalg.norm(wc[-1])}
    assert 0.85 * exact[key] < cert.radii[key] <= exact[key]
    assert 0.85 * exact["l2"] < cert.radii["l2"] <= exact["l2"]


def test_linear_oracle_radius_approaches_exact():
    w = np.array([0.6, -0.8, 0.0])
    model = Linear2(w, 0.5 * 1.2815515655446004)  # x = 0: pA = 0.9, exact radius 0.6408
    smooth = Smooth(model, num_classes=2, sigma=0.5)
    x = torch.zeros(3)
    exact = 0.5 * 1.2815515655446004
    small = smooth.certify(x, n_select=50, n_estimate=1000, alpha=0.001, batch_size=5000, seed=0).radius / exact
    big = smooth.certify(x, n_select=50, n_estimate=200_000, alpha=0.001, batch_size=20_000, seed=0).radius / exact
    assert small < big <= 1.0
    assert big > 0.98


def test_first_order_gradient_bounds_cover_linear_gradient():
    """Sigma-unit gradient of a half-space: phi(margin / (sigma ||w||)) w / ||w||; the bounds must contain it."""
    rng = np.random.default_rng(5)
    misses, total = 0, 0
    alpha = 0.1
    for i in range(15):
        w = rng.standard_normal(8)
        w /= np.linalg.norm(w)
        t = rng.uniform(0.3, 1.5)
        smooth = Smooth(Linear2(w, 0.5 * t), num_classes=2, sigma=0.5)
        cert = smooth.certify(torch.zeros(2, 2, 2), n_select=30, n_estimate=4000, alpha=alpha, seed=i,
                              first_order=True)
        if cert.abstained:
            continue
        g = stats.norm.pdf(t) * w
        gb = cert.gradient
        gc = g.reshape(2, -1)
        ok = (gb["l2_lower"] <= np.linalg.norm(g) <= gb["l2_upper"] and np.abs(g).max() <= gb["linf_upper"]
              and np.abs(g).sum() / math.sqrt(8) <= gb["l1_scaled_upper"]
              and all(np.linalg.norm(gc[k]) <= gb["channel_in_upper"][k] for k in range(2))
              and all(np.linalg.norm(gc[1 - k]) >= gb["channel_out_lower"][k] for k in range(2)))
        misses += not ok
        total += 1
    assert total >= 10
    assert misses <= stats.binom.isf(1e-6, total, alpha)


# ------------------------------------------------------------------------------------------------ non-linear check
def _pa_upper(model, x, label, sigma, n, gen):
    with torch.no_grad():
        z = torch.randn((n, *x.shape), generator=gen)
        pred = model(x + sigma * z).argmax(1)
    k = int((pred == label).sum())
    return clopper_pearson_upper(k, n, 1e-7)


def test_nonlinear_mlp_certificates_survive_sampling_and_attacks():
    """Random MLP: points just inside each certified ball (random sphere points, l1 vertices, l_inf corners,
    and a PGD-style search against a Monte Carlo smoothed surrogate) must keep pA > 1/2.

    A point counts as a violation only if the Clopper-Pearson upper bound (level 1e-7) of pA there is below
    1/2; a certificate fails if any of its points is a violation. Failures must stay within the binomial
    allowance for alpha (probability < 1e-6 of exceeding it when the code is right).
    """
    torch.manual_seed(0)
    D, K, sigma, alpha = 10, 3, 0.5, 0.05
    model = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, K))
    for p in model.parameters():
        p.data.mul_(2.0)
    smooth = Smooth(model, num_classes=K, sigma=sigma, input_range=None)  # Gaussian x: not pixels
    gen = torch.Generator().manual_seed(99)
    rng = np.random.default_rng(0)
    failures, certified = 0, 0
    for i in range(30):
        x = torch.randn(D, generator=gen)
        cert = smooth.certify(x, n_select=50, n_estimate=3000, alpha=alpha, batch_size=1000, seed=i,
                              first_order=True)
        if cert.abstained:
            continue
        certified += 1
        c = cert.label
        pts = []
        r2, r1, rinf = 0.999 * cert.radii["l2"], 0.999 * cert.radii["l1"], 0.999 * cert.radii["linf"]
        for _ in range(12):
            u = rng.standard_normal(D)
            pts.append(x + torch.tensor(r2 * u / np.linalg.norm(u), dtype=torch.float32))
            pts.append(x + torch.tensor(rinf * rng.choice([-1.0, 1.0], D), dtype=torch.float32))
        for j in range(D):
            for s in (-1.0, 1.0):
                e = torch.zeros(D)
                e[j] = s * r1
                pts.append(x + e)
        # PGD-style attack on a smoothed soft surrogate (common random numbers), projected on the l2 sphere
        z = torch.randn((512, D), generator=gen)
        delta = torch.zeros(D, requires_grad=True)
        for _ in range(25):
            loss = torch.softmax(model(x + delta + sigma * z) * 4.0, dim=1)[:, c].mean()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= 0.2 * r2 * grad / (grad.norm() + 1e-12)
                if delta.norm() > 0:
                    delta *= r2 / delta.norm()
        pts.append(x + delta.detach())
        bad = any(_pa_upper(model, p, c, sigma, 4000, gen) < 0.5 for p in pts)
        failures += bad
    assert certified >= 15
    assert failures <= stats.binom.isf(1e-6, certified, alpha)
