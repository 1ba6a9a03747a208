"""Tests for certify.attacks: feasibility, verified successes, exact minimal flips, smoothed attacks."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import binomtest
from scipy.stats import norm as normal
from torch import nn

from certify import attacks
from certify.attacks import (
    AttackResult,
    SmoothedAttackResult,
    fgsm,
    perturbation_norm,
    pgd,
    robust_accuracy,
    smooth_pgd,
    smoothed_robust_accuracy,
)


# --------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------
def linear_binary(w: torch.Tensor, b: float) -> nn.Module:
    """2-class model with logit difference z1 - z0 = w.x + b (class 1 iff w.x + b > 0)."""
    d = w.numel()
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-w / 2, w / 2]))
        model[1].bias.copy_(torch.tensor([-b / 2, b / 2]))
    return model.eval()


def points_at_distance(w: torch.Tensor, b: float, dist: float, n: int, seed: int, norm: str = "l2"):
    """n points in (0, 1)^D at exactly `dist` (in the dual-norm sense) from the hyperplane w.x + b = 0.

    For norm="l2" the distance is |w.x+b| / ||w||_2 (minimal l2 flip), for "linf" it is |w.x+b| / ||w||_1.
    Labels alternate between the two sides at random.
    """
    g = torch.Generator().manual_seed(seed)
    d = w.numel()
    z = 0.35 + 0.3 * torch.rand(n, d, generator=g, dtype=torch.float64)
    w64 = w.double()
    side = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).double()
    # moving x by t along u changes w.x by t * scale, with ||u|| = 1 in the attack norm
    u, scale = (w64 / w64.norm(), w64.norm()) if norm == "l2" else (w64.sign(), w64.abs().sum())
    margin = (z @ w64 + b) / scale  # current signed distance
    x = z - (margin - side * dist)[:, None] * u
    assert float(x.min()) > 0.05 and float(x.max()) < 0.95
    y = (side > 0).long()
    return x.float().view(n, 1, 4, d // 4), y


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These models are tiny: one intra-op thread is ~10x faster than two on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def linear16():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, generator=g) * 3
    b = -float((w * 0.5).sum())
    return linear_binary(w, b), w, b


@pytest.fixture(scope="module")
def digits_mlp():
    """A small MLP trained on sklearn digits with a fixed seed (about 1 s)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:1700]
    torch.manual_seed(0)  # parameter init only (the test process is single-purpose)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x[tr]), y[tr]).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, x[te], y[te]


def random_mlp(seed: int, d: int = 12, k: int = 4) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, k))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2)
    return model.eval()


class RefSmooth:
    """Reference smoothed classifier with Cohen et al.'s PREDICT (independent of certify.smoothing)."""

    def __init__(self, model: nn.Module, num_classes: int, sigma: float):
        self.model, self.num_classes, self.sigma = model, num_classes, sigma

    def predict(self, x, *, n, alpha, batch_size, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            noisy = x.unsqueeze(0) + self.sigma * torch.randn((n,) + tuple(x.shape), generator=g)
            counts = torch.bincount(self.model(noisy).argmax(1), minlength=self.num_classes)
        top2 = counts.topk(2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        abstained = binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha
        return type("Prediction", (), {"label": int(top2.indices[0]), "abstained": abstained})()


# --------------------------------------------------------------------------------------------------
# feasibility: eps-ball and [0, 1], for both norms and all attacks (property test over random cases)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_perturbation_inside_ball_and_box(norm):
    for trial in range(25):
        g = torch.Generator().manual_seed(100 + trial)
        model = random_mlp(trial)
        x = torch.rand(6, 1, 3, 4, generator=g)
        # saturate some pixels exactly at the box edges
        edge = torch.rand(x.shape, generator=g)
        x = torch.where(edge < 0.2, torch.zeros_like(x), torch.where(edge > 0.8, torch.ones_like(x), x))
        y = torch.randint(0, 4, (6,), generator=g)
        eps = float(torch.empty(1).uniform_(0.0, 1.0, generator=g)) * (0.3 if norm == "linf" else 3.0)
        if trial == 0:
            eps = 1e-7  # tiny radius: rounding must not push outside
        outs = [
            fgsm(model, x, y, eps=eps, norm=norm),
            pgd(model, x, y, eps=eps, norm=norm, steps=5, restarts=2, generator=g),
            pgd(model, x, y, eps=eps, norm=norm, steps=3, step_size=10 * eps, random_start=False),
            smooth_pgd(model, x, y, sigma=0.3, eps=eps, norm=norm, steps=3, n_noise=4, random_start=True,
                       generator=g),
        ]
        for x_adv in outs:
            assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
            assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
            assert bool((perturbation_norm(x_adv, x, norm) <= eps).all()), (trial, norm, eps)


def test_attacks_move_when_they_can(linear16):
    """Guard against the feasibility test passing vacuously: attacks do use most of the budget."""
    model, w, b = linear16
    x, y = points_at_distance(w, b, 0.3, 8, seed=1)
    for norm, eps in (("linf", 0.05), ("l2", 0.1)):
        for x_adv in (fgsm(model, x, y, eps=eps, norm=norm), pgd(model, x, y, eps=eps, norm=norm)):
            sizes = perturbation_norm(x_adv, x, norm)
            assert bool((sizes > 0.99 * eps).all())


# --------------------------------------------------------------------------------------------------
# exact minimal flips on a linear 2-class model
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_model_minimal_flip_is_exact(linear16, norm):
    model, w, b = linear16
    dist = 0.2 if norm == "l2" else 0.04
    x, y = points_at_distance(w, b, dist, 64, seed=7, norm=norm)
    # below the distance nothing in the ball flips the model: no success may ever be reported
    for f in (0.5, 0.99, 0.999):
        for rs in (False, True):
            res = robust_accuracy(model, x, y, eps=dist * f, norm=norm, steps=20, random_start=rs, verbose=False)
            assert res.clean_accuracy == 1.0
            assert res.num_success == 0 and res.robust_accuracy == 1.0
    # just above it, PGD (from x) finds the flip for every example
    for f in (1.001, 1.01):
        res = robust_accuracy(model, x, y, eps=dist * f, norm=norm, steps=10, random_start=False, verbose=False)
        assert all(res.success), f
        assert max(res.perturbation) <= dist * f
        assert min(res.perturbation) >= dist * (1 - 1e-5)  # a flip needs at least the exact distance
    # with random starts PGD converges toward the same point; 5% slack covers the off-axis start
    res = robust_accuracy(model, x, y, eps=dist * 1.05, norm=norm, steps=50, restarts=2, verbose=False)
    assert all(res.success)


# --------------------------------------------------------------------------------------------------
# successes are verified
# --------------------------------------------------------------------------------------------------
class LyingModel(nn.Module):
    """Claims every input is misclassified while gradients are on (as during the attack), but predicts
    the true class (always class 0 here) when run plainly. A correct evaluator reports no success."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        base = self.lin(x.flatten(1)) * 0.0
        if torch.is_grad_enabled():
            return base + torch.tensor([0.0, 5.0]) + x.flatten(1).sum(1, keepdim=True) * 0.0
        return base + torch.tensor([5.0, 0.0])


def test_success_requires_verified_flip():
    model = LyingModel()
    x = torch.full((5, 4), 0.5)
    y = torch.zeros(5, dtype=torch.int64)
    for attack in ("fgsm", "pgd"):
        res = robust_accuracy(model, x, y, attack=attack, eps=0.1, verbose=False)
        assert res.clean_accuracy == 1.0
        assert not any(res.success) and res.robust_accuracy == 1.0


def test_reported_successes_reverify(digits_mlp):
    model, x, y = digits_mlp
    res = robust_accuracy(model, x, y, eps=0.1, norm="linf", steps=10, keep_adversarial=True, verbose=False)
    assert 0 < res.num_success < len(y)
    with torch.no_grad():
        pred = model(res.adversarial).argmax(1)
    success = torch.tensor(res.success)
    assert bool((pred[success] != y[success]).all())
    assert bool((pred[~success & torch.tensor(res.clean_correct)] == y[~success & torch.tensor(res.clean_correct)])
                .all())
    assert bool((perturbation_norm(res.adversarial, x, "linf") <= 0.1).all())
    assert res.adv_label == tuple(int(v) for v in pred)


# --------------------------------------------------------------------------------------------------
# strength: PGD >= FGSM on a trained model
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.6)])
def test_pgd_at_least_as_strong_as_fgsm(digits_mlp, norm, eps):
    model, x, y = digits_mlp
    clean = robust_accuracy(model, x, y, attack="fgsm", eps=0.0, norm=norm, verbose=False)
    f = robust_accuracy(model, x, y, attack="fgsm", eps=eps, norm=norm, verbose=False)
    p = robust_accuracy(model, x, y, attack="pgd", eps=eps, norm=norm, steps=20, verbose=False)
    assert clean.clean_accuracy > 0.9
    assert f.clean_accuracy == p.clean_accuracy == clean.clean_accuracy
    assert p.robust_accuracy <= f.robust_accuracy
    assert f.robust_accuracy < clean.robust_accuracy  # the radius is large enough to matter
    assert p.robust_accuracy < f.robust_accuracy      # and PGD is strictly stronger here
    # larger radius never helps the model (PGD, same seed)
    p2 = robust_accuracy(model, x, y, attack="pgd", eps=2 * eps, norm=norm, steps=20, verbose=False)
    assert p2.robust_accuracy <= p.robust_accuracy


def test_margin_loss_attacks_a_saturated_model(linear16):
    """With huge logits the cross-entropy gradient underflows to 0 in float32; the margin loss still works."""
    model, w, b = linear16
    big = linear_binary(w * 1e4, b * 1e4)
    x, y = points_at_distance(w, b, 0.2, 16, seed=2)
    ce = robust_accuracy(big, x, y, eps=0.3, norm="l2", random_start=False, verbose=False)
    margin = robust_accuracy(big, x, y, eps=0.3, norm="l2", random_start=False, loss="margin", verbose=False)
    assert ce.num_success == 0 and max(ce.perturbation) == 0.0
    assert all(margin.success)


# --------------------------------------------------------------------------------------------------
# eps = 0, reproducibility, model state
# --------------------------------------------------------------------------------------------------
def test_eps_zero_changes_nothing(digits_mlp):
    model, x, y = digits_mlp
    x, y = x[:50], y[:50]
    for norm in ("linf", "l2"):
        assert torch.equal(fgsm(model, x, y, eps=0.0, norm=norm), x)
        assert torch.equal(pgd(model, x, y, eps=0, norm=norm, restarts=3), x)
        assert torch.equal(smooth_pgd(model, x, y, sigma=0.25, eps=0.0, norm=norm), x)
        for attack in ("fgsm", "pgd"):
            res = robust_accuracy(model, x, y, attack=attack, eps=0.0, norm=norm, verbose=False)
            assert res.num_success == 0 and res.robust_accuracy == res.clean_accuracy
            assert max(res.perturbation) == 0.0


def test_reproducible_with_generator(digits_mlp):
    model, x, y = digits_mlp
    x, y = x[:40], y[:40]
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        a = pgd(model, x, y, eps=eps, norm=norm, restarts=2, generator=torch.Generator().manual_seed(5))
        b = pgd(model, x, y, eps=eps, norm=norm, restarts=2, generator=torch.Generator().manual_seed(5))
        c = pgd(model, x, y, eps=eps, norm=norm, restarts=2, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        s1 = smooth_pgd(model, x, y, sigma=0.25, eps=eps, norm=norm, steps=3, n_noise=4,
                        generator=torch.Generator().manual_seed(1))
        s2 = smooth_pgd(model, x, y, sigma=0.25, eps=eps, norm=norm, steps=3, n_noise=4,
                        generator=torch.Generator().manual_seed(1))
        assert torch.equal(s1, s2)
    r1 = robust_accuracy(model, x, y, eps=0.1, seed=3, batch_size=16, verbose=False)
    r2 = robust_accuracy(model, x, y, eps=0.1, seed=3, batch_size=16, verbose=False)
    assert dataclasses.replace(r1, time_s=0.0) == dataclasses.replace(r2, time_s=0.0)


def test_global_rng_untouched(digits_mlp):
    model, x, y = digits_mlp
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pgd(model, x[:8], y[:8], eps=0.1, restarts=2)
    smooth_pgd(model, x[:2], y[:2], sigma=0.25, eps=0.3, steps=2, n_noise=4, random_start=True)
    assert torch.equal(torch.rand(3), expected)


class ModeRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training or self.drop.training)
        return self.drop(self.lin(x.flatten(1)))


def test_eval_mode_restored_and_no_param_grads():
    model = ModeRecorder().train()
    model.drop.eval()  # mixed modes must come back exactly as they were
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    fgsm(model, x, y, eps=0.1)
    pgd(model, x, y, eps=0.1, norm="l2", steps=3)
    smooth_pgd(model, x, y, sigma=0.2, eps=0.1, steps=2, n_noise=3)
    robust_accuracy(model, x, y, eps=0.1, steps=2, verbose=False)
    assert model.training and not model.drop.training
    assert model.seen and not any(model.seen)  # every forward pass of the attacks ran in eval mode
    assert all(p.grad is None for p in model.parameters())
    # also works when the caller disabled gradients
    with torch.no_grad():
        x_adv = pgd(model, x, y, eps=0.1, steps=3)
    assert not torch.equal(x_adv, x)


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(eps=-0.1), ValueError, "eps"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(eps=float("inf")), ValueError, "eps"),
    (dict(eps="0.1"), TypeError, "eps"),
    (dict(eps=0.1, norm="l3"), ValueError, "norm"),
    (dict(eps=0.1, norm=2), ValueError, "norm"),
    (dict(eps=0.1, steps=0), ValueError, "steps"),
    (dict(eps=0.1, steps=2.5), TypeError, "steps"),
    (dict(eps=0.1, steps=True), TypeError, "steps"),
    (dict(eps=0.1, step_size=0.0), ValueError, "step_size"),
    (dict(eps=0.1, restarts=0), ValueError, "restarts"),
    (dict(eps=0.1, restarts=2, random_start=False), ValueError, "restarts"),
    (dict(eps=0.1, random_start=1), TypeError, "random_start"),
    (dict(eps=0.1, generator=0), TypeError, "generator"),
    (dict(eps=0.1, loss="hinge"), ValueError, "loss"),
])
def test_pgd_bad_arguments(kwargs, exc, match):
    model = random_mlp(0)
    x, y = torch.rand(2, 12), torch.tensor([0, 1])
    with pytest.raises(exc, match=match):
        pgd(model, x, y, **kwargs)


@pytest.mark.parametrize("x,y,exc,match", [
    (torch.rand(2, 12) + 1.0, torch.tensor([0, 1]), ValueError, r"\[0, 1\]"),
    (-torch.rand(2, 12) - 0.1, torch.tensor([0, 1]), ValueError, r"\[0, 1\]"),
    (torch.full((2, 12), float("nan")), torch.tensor([0, 1]), ValueError, "NaN"),
    (torch.rand(12), torch.tensor([0]), ValueError, "shape"),
    (torch.rand(2, 12), torch.tensor([0, 1, 2]), ValueError, "y must have shape"),
    (torch.rand(2, 12), torch.tensor([0.0, 1.0]), TypeError, "integer"),
    (torch.rand(2, 12), torch.tensor([0, 7]), ValueError, "only 4 classes"),
    (torch.rand(2, 12), torch.tensor([0, -1]), ValueError, "non-negative"),
    (torch.randint(0, 2, (2, 12)), torch.tensor([0, 1]), TypeError, "floating"),
    (np.zeros((2, 12)), torch.tensor([0, 1]), TypeError, "x must be a torch.Tensor"),
])
def test_bad_inputs(x, y, exc, match):
    model = random_mlp(0)
    for fn in (lambda: fgsm(model, x, y, eps=0.1), lambda: pgd(model, x, y, eps=0.1),
               lambda: smooth_pgd(model, x, y, sigma=0.25, eps=0.1),
               lambda: robust_accuracy(model, x, y, eps=0.1, verbose=False)):
        with pytest.raises(exc, match=match):
            fn()


def test_bad_evaluator_arguments():
    model = random_mlp(0)
    x, y = torch.rand(2, 12), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="model"):
        pgd(lambda t: t, x, y, eps=0.1)
    with pytest.raises(ValueError, match="attack"):
        robust_accuracy(model, x, y, attack="cw", eps=0.1)
    with pytest.raises(ValueError, match="only apply to attack='pgd'"):
        robust_accuracy(model, x, y, attack="fgsm", eps=0.1, steps=5)
    with pytest.raises(ValueError, match="batch_size"):
        robust_accuracy(model, x, y, eps=0.1, batch_size=0)
    with pytest.raises(ValueError, match="sigma"):
        smooth_pgd(model, x, y, sigma=0.0, eps=0.1)
    with pytest.raises(ValueError, match="n_noise"):
        smooth_pgd(model, x, y, sigma=0.25, eps=0.1, n_noise=0)
    with pytest.raises(TypeError, match="smooth"):
        smoothed_robust_accuracy(model, x, y, eps=0.1)
    ref = RefSmooth(model, 4, 0.25)
    with pytest.raises(ValueError, match="alpha"):
        smoothed_robust_accuracy(ref, x, y, eps=0.1, alpha=1.5)
    with pytest.raises(ValueError, match="n_predict"):
        smoothed_robust_accuracy(ref, x, y, eps=0.1, n_predict=0)


def test_result_is_frozen_and_serialisable(digits_mlp):
    model, x, y = digits_mlp
    res = robust_accuracy(model, x[:20], y[:20], attack="fgsm", eps=0.05, verbose=False)
    assert isinstance(res, AttackResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.eps = 1.0
    d = json.loads(json.dumps(res.to_dict()))
    assert d["attack"] == "fgsm" and d["eps"] == 0.05 and d["steps"] is None and len(d["success"]) == 20
    assert all(isinstance(v, bool) for v in d["success"])
    assert res.robust_accuracy == sum(res.robust_correct) / 20


# --------------------------------------------------------------------------------------------------
# the smoothed attack
# --------------------------------------------------------------------------------------------------
def test_smoothed_gradient_matches_direct_autograd(digits_mlp):
    """The chunked log-space gradient equals autograd of -log(mean softmax_y) computed in one piece."""
    model, x, y = digits_mlp
    x, y = x[:3], y[:3]
    noise = 0.5 * torch.randn((7,) + tuple(x.shape), generator=torch.Generator().manual_seed(0))
    xr = x.clone().requires_grad_(True)
    probs = F.softmax(model((xr.unsqueeze(0) + noise).reshape(-1, *x.shape[1:])).double(), 1).view(7, 3, 10)
    direct = -torch.log(probs.mean(0).gather(1, y[:, None])[:, 0])
    (g_direct,) = torch.autograd.grad(direct.sum(), xr)
    for chunk in (1, 2, 7):
        loss, g = attacks._smoothed_loss_grad(model, x, y, noise, chunk)
        torch.testing.assert_close(loss, direct.detach(), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(g, g_direct.float(), rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def smoothed_linear(linear16):
    """Linear 2-class model: its smoothed classifier equals the model, and the exact l2 radius of the
    smoothed classifier at x is the distance |w.x + b| / ||w|| (= Cohen's radius sigma * Phi^-1(pA))."""
    model, w, b = linear16
    sigma, dist = 0.25, 0.25
    x, y = points_at_distance(w, b, dist, 24, seed=11)
    # sanity of the closed form: pA = Phi(dist / sigma) and Cohen's radius equals the distance
    assert math.isclose(sigma * normal.ppf(normal.cdf(dist / sigma)), dist, rel_tol=1e-9)
    return model, w, b, sigma, dist, x, y


def test_smooth_pgd_linear_exact(smoothed_linear):
    model, w, b, sigma, dist, x, y = smoothed_linear
    side = torch.where(y == 1, 1.0, -1.0)

    def signed_distance(x_adv):  # > 0: the smoothed classifier still predicts y
        return side * (x_adv.flatten(1).double() @ w.double() + b) / w.double().norm()

    for f in (0.5, 0.9, 0.99):
        x_adv = smooth_pgd(model, x, y, sigma=sigma, eps=f * dist, steps=10, n_noise=8,
                           generator=torch.Generator().manual_seed(0))
        assert bool((signed_distance(x_adv) > 0).all())
    for f in (1.02, 1.5):
        x_adv = smooth_pgd(model, x, y, sigma=sigma, eps=f * dist, steps=10, n_noise=8,
                           generator=torch.Generator().manual_seed(0))
        # the attack reaches the optimum: the far side of the boundary, at distance (f - 1) * dist
        torch.testing.assert_close(signed_distance(x_adv), torch.full((len(y),), -(f - 1) * dist,
                                                                      dtype=torch.float64), rtol=0, atol=1e-5)


def test_smoothed_robust_accuracy_linear(smoothed_linear):
    model, w, b, sigma, dist, x, y = smoothed_linear
    smooth = RefSmooth(model, 2, sigma)
    kw = dict(steps=10, n_noise=8, n_predict=1000, alpha=0.001, batch_size=1000, seed=0, verbose=False)
    below = smoothed_robust_accuracy(smooth, x, y, eps=0.5 * dist, **kw)
    assert isinstance(below, SmoothedAttackResult)
    assert below.clean_accuracy == 1.0
    # adversarial points stay >= 0.5 sigma on the right side: pA >= Phi(0.5) = 0.69, PREDICT is right
    assert not any(below.success) and not any(below.abstain) and below.robust_accuracy == 1.0
    above = smoothed_robust_accuracy(smooth, x, y, eps=1.5 * dist, **kw)
    # adversarial points are 0.5 sigma past the boundary: PREDICT returns the other label (p = 0.69)
    assert all(above.success) and above.robust_accuracy == 0.0 and above.success_rate == 1.0
    assert all(lbl == 1 - int(t) for lbl, t in zip(above.adv_label, y))
    assert max(above.perturbation) <= 1.5 * dist
    json.dumps(above.to_dict())
    # right at the boundary PREDICT sees p = 1/2: it abstains (reported as abstain, not success) or,
    # with probability <= alpha per example, returns one label
    at = smoothed_robust_accuracy(smooth, x, y, eps=dist * 1.0000001, **kw)
    assert sum(at.abstain) >= len(y) - 3 and sum(at.success) <= 3


def test_smoothed_robust_accuracy_with_certify_smooth(smoothed_linear):
    from certify import smoothing

    model, w, b, sigma, dist, x, y = smoothed_linear
    smooth = smoothing.Smooth(model, num_classes=2, sigma=sigma)
    kw = dict(steps=10, n_noise=8, n_predict=1000, alpha=0.001, batch_size=1000, seed=0, verbose=False)
    x, y = x[:8], y[:8]
    below = smoothed_robust_accuracy(smooth, x, y, eps=0.5 * dist, **kw)
    assert below.clean_accuracy == 1.0 and below.robust_accuracy == 1.0
    above = smoothed_robust_accuracy(smooth, x, y, eps=1.5 * dist, **kw)
    assert all(above.success)
