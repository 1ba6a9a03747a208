"""Soundness of certify.lirpa (auto_LiRPA 0.3 + compat shims) on every operator the project uses.

Each case builds a small random network, draws random input boxes (one wide, one narrow) and checks,
for IBP, CROWN, alpha-CROWN (and CROWN-IBP, forward+backward where auto_LiRPA supports it), that no
sample of the box - ALL corners when the box has <= 10 dimensions, otherwise 600 random corners -
plus uniform interior points (>= 1,000 samples per box) plus projected-gradient points pushing every
specification to its min and max leaves the computed ``[lower, upper]``. (Checked by mutation: shrinking
every bound by 2% of its width is caught in every case.)
Failure budget: zero violations beyond a 1e-5 relative float32 tolerance. Seeds are fixed.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from certify import lirpa

TOL = 1e-5
N_SAMPLES = 1000
ALPHA_IT = 5


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def box_samples(lo: torch.Tensor, hi: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Corners (all of them if dim <= 10, else 600 random) + uniform points; >= N_SAMPLES rows."""
    shape = lo.shape
    d = lo.numel()
    lo_f, hi_f = lo.reshape(-1), hi.reshape(-1)
    if d <= 10:
        bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))
    else:
        bits = torch.randint(0, 2, (600, d), generator=gen).float()
    corners = lo_f + bits * (hi_f - lo_f)
    n_uniform = max(N_SAMPLES - corners.shape[0], 400)
    u = torch.rand(n_uniform, d, generator=gen)
    inner = lo_f + u * (hi_f - lo_f)
    return torch.cat([corners, inner, ((lo_f + hi_f) / 2).unsqueeze(0)]).reshape(-1, *shape)


def box_attack(model, lo, hi, n_specs, C, gen, restarts=4, steps=40):
    """Points of the box that push every spec value towards its min and max (projected sign
    gradient from random starts): samples near the true extremes, so loose sampling cannot hide
    a bound that is slightly too tight."""
    d = lo.numel()
    rows = 2 * n_specs * restarts
    u = torch.rand(rows, d, generator=gen)
    lo_f, hi_f = lo.reshape(-1), hi.reshape(-1)
    x = (lo_f + u * (hi_f - lo_f)).reshape(rows, *lo.shape)
    spec = torch.arange(rows) % n_specs
    sign = torch.where(torch.arange(rows) // (n_specs * restarts) == 0, -1.0, 1.0)
    width = (hi - lo).unsqueeze(0)
    for t in range(steps):
        x = x.detach().requires_grad_(True)
        out = model(x)
        vals = out if C is None else out @ C.T
        obj = (vals.gather(1, spec.unsqueeze(1)).squeeze(1) * sign).sum()
        (g,) = torch.autograd.grad(obj, x)
        step = width * (0.25 * (1 - t / steps) + 0.01)
        x = torch.max(torch.min(x + step * g.sign(), hi.unsqueeze(0)), lo.unsqueeze(0))
    return x.detach()


def check_contains(model, bounds: lirpa.Bounds, lo, hi, C, gen, label=""):
    """Every sampled spec value lies in [lower - tol, upper + tol]."""
    assert bounds.lower.shape == bounds.upper.shape
    assert (bounds.lower <= bounds.upper + TOL).all()
    n_checked = 0
    with torch.no_grad():
        for b in range(lo.shape[0]):
            n_specs = bounds.lower.shape[1]
            with torch.enable_grad():
                attacked = box_attack(model, lo[b], hi[b], n_specs, None if C is None else C[b], gen)
            xs = torch.cat([box_samples(lo[b], hi[b], gen), attacked])
            out = model(xs)
            vals = out if C is None else out @ C[b].T
            tol = TOL * max(1.0, float(bounds.lower[b].abs().max()), float(bounds.upper[b].abs().max()))
            below = (vals < bounds.lower[b] - tol).sum().item()
            above = (vals > bounds.upper[b] + tol).sum().item()
            assert below == 0 and above == 0, (
                f"{label}: {below} samples below / {above} above the bounds of box {b}; "
                f"worst gap {float((bounds.lower[b] - vals).max()):.3g} / {float((vals - bounds.upper[b]).max()):.3g}")
            n_checked += xs.shape[0]
    assert n_checked >= N_SAMPLES * lo.shape[0]


def random_boxes(shape, n_boxes, gen, eps=0.2, lo=-1.0, hi=1.0):
    """Random boxes; the last one is 20x narrower (nearly linear regime: bounds close to tight)."""
    center = lo + (hi - lo) * torch.rand(n_boxes, *shape, generator=gen)
    radius = eps * torch.rand(n_boxes, *shape, generator=gen)
    if n_boxes > 1:
        radius[-1] /= 20
    return center - radius, center + radius


# --------------------------------------------------------------------------------------------
# networks built from every operator the project relies on
# --------------------------------------------------------------------------------------------
class ClipMax(nn.Module):
    """ReLU rewrites: clip(z, 0, 1) = relu(z) - relu(z - 1); max(a, b) = b + relu(a - b)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(5, 8), nn.Linear(5, 8), nn.Linear(16, 3)

    def forward(self, x):
        za, zb = self.a(x), self.b(x)
        clip = torch.relu(za) - torch.relu(za - 1.0)
        mx = zb + torch.relu(za - zb)
        return self.out(torch.cat([clip, mx], dim=1))


class SinCos(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(4, 6), nn.Linear(12, 3)

    def forward(self, x):
        y = self.inp(x)
        return self.out(torch.cat([torch.sin(y), torch.cos(y)], dim=1))


class CatSliceConst(nn.Module):
    """Slicing, cat, multiplication / division by constants."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 6), nn.Linear(9, 3)

    def forward(self, x):
        y = torch.relu(self.l1(x))
        parts = [y[:, :3] * 2.5, y[:, 3:] / 3.0, x[:, 1:4] * -0.5]
        return self.l2(torch.cat(parts, dim=1))


class Product(nn.Module):
    """Product of two perturbed tensors."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.a(x) * torch.relu(self.b(x)))


class ViewNet(nn.Module):
    """Linear -> view as an image -> conv -> flatten via view."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 2 * 4 * 4)
        self.conv = nn.Conv2d(2, 3, 3)
        self.out = nn.Linear(3 * 2 * 2, 4)

    def forward(self, x):
        h = torch.relu(self.inp(x)).view(x.shape[0], 2, 4, 4)
        h = torch.relu(self.conv(h))
        return self.out(h.view(h.shape[0], -1))


def small_cnn(channels=1, side=6, classes=5):
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * ((side + 1) // 2) ** 2, 16), nn.ReLU(), nn.Linear(16, classes))


def bn_net():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 4))
    bn = net[1]
    g = torch.Generator().manual_seed(1)
    bn.running_mean.copy_(torch.randn(4, generator=g) * 0.3)
    bn.running_var.copy_(0.5 + torch.rand(4, generator=g))
    bn.weight.data.copy_(torch.randn(4, generator=g))
    bn.bias.data.copy_(torch.randn(4, generator=g) * 0.2)
    return net


def maxpool_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 4))


class SemanticStyle(nn.Module):
    """Semantify-NN-style layer: theta (k) -> flat nn.Linear(k, 2D) -> ReLU -> Linear(2D, D) -> view.

    Computes clip(x0 * (1 + a) + b, 0, 1) per pixel (brightness/contrast) exactly with ReLUs, then a
    small CNN classifies the image.
    """

    def __init__(self, k, side=6):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        x0 = torch.rand(side * side, generator=g)
        d = side * side
        self.side = side
        self.lin1 = nn.Linear(k, 2 * d)
        w = torch.zeros(2 * d, k)
        w[:, 0] = torch.cat([x0, x0])            # contrast a: x0 * a
        if k == 2:
            w[:, 1] = 1.0                         # brightness b
        self.lin1.weight.data.copy_(w)
        self.lin1.bias.data.copy_(torch.cat([x0, x0 - 1.0]))
        self.lin2 = nn.Linear(2 * d, d)
        self.lin2.weight.data.copy_(torch.cat([torch.eye(d), -torch.eye(d)], dim=1))
        self.lin2.bias.data.zero_()
        torch.manual_seed(4)
        self.cnn = small_cnn(1, side, 4)

    def forward(self, theta):
        img = self.lin2(torch.relu(self.lin1(theta))).view(theta.shape[0], 1, self.side, self.side)
        return self.cnn(img)


def mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


class SumNet(nn.Module):
    """Sum over a dimension (ReduceSum) feeding a ReLU layer."""

    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Linear(5, 8), nn.Linear(9, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.out(torch.cat([h, h.sum(dim=1, keepdim=True) - x.sum(dim=1, keepdim=True)], dim=1))


class ScalarNormalised(nn.Module):
    """Normalisation inside forward with 0-dim buffers, padded convs, MaxPool, Dropout (eval), reshape."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.286))
        self.register_buffer("std", torch.tensor(0.353))
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.5))
        self.fc = nn.Sequential(nn.Linear(6 * 2 * 2, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 5))

    def forward(self, x):
        h = self.features((x - self.mean) / self.std)
        return self.fc(h.reshape(h.shape[0], -1))


def lenet_like():
    """LeNet-5-style: conv-pool-conv-pool-fc-fc (small)."""
    return nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 5, padding=2),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 3 * 3, 20), nn.ReLU(),
                         nn.Linear(20, 5))


class Normalize(nn.Module):
    """A user ``Normalize`` module: per-channel buffers viewed as (C, 1, 1)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        return (x - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)


def channel_normalised():
    net = nn.Sequential(Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]), nn.Conv2d(3, 4, 3, padding=1),
                        nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2), nn.Dropout2d(0.2), nn.Flatten(),
                        nn.Linear(4 * 3 * 3, 4))
    bn = net[2]
    g = torch.Generator().manual_seed(2)
    bn.running_mean.copy_(torch.randn(4, generator=g) * 0.3)
    bn.running_var.copy_(0.5 + torch.rand(4, generator=g))
    return net


def torchvision_normalised():
    import torchvision.transforms as T
    return nn.Sequential(T.Normalize([0.2860], [0.3530]), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 4))


# name -> (builder, input shape, box half-width, methods beyond ibp/crown/alpha-crown, conv_mode)
# ("auto" picks matrix mode for "view": a ReLU output reshaped into an image for a convolution)
CASES = {
    "mlp": (mlp, (6,), 0.3, ("crown-ibp", "forward+backward"), "auto"),
    "cnn": (small_cnn, (1, 6, 6), 0.1, ("crown-ibp",), "patches"),
    "cnn-matrix": (small_cnn, (1, 6, 6), 0.1, (), "matrix"),
    "batchnorm-avgpool": (bn_net, (1, 6, 6), 0.1, ("crown-ibp",), "patches"),
    "maxpool": (maxpool_net, (1, 6, 6), 0.1, ("forward+backward", "crown-ibp"), "patches"),
    "view": (ViewNet, (6,), 0.3, ("crown-ibp",), "auto"),
    "clip-max-rewrites": (ClipMax, (5,), 0.4, ("crown-ibp",), "auto"),
    "sin-cos": (SinCos, (4,), 0.3, ("crown-ibp",), "auto"),
    "cat-slice-const": (CatSliceConst, (6,), 0.3, ("crown-ibp",), "auto"),
    "product": (Product, (4,), 0.3, ("crown-ibp",), "auto"),
    "semantic-1param": (lambda: SemanticStyle(1), (1,), 0.3, ("crown-ibp", "forward+backward"), "auto"),
    "semantic-2param": (lambda: SemanticStyle(2), (2,), 0.3, ("crown-ibp", "forward+backward"), "auto"),
    "reduce-sum": (SumNet, (5,), 0.3, ("crown-ibp",), "auto"),
    "normalise-0dim-buffers": (ScalarNormalised, (1, 8, 8), 0.1, ("crown-ibp",), "auto"),
    "lenet-maxpool": (lenet_like, (1, 12, 12), 0.05, ("crown-ibp", "forward+backward"), "patches"),
    "normalise-module-per-channel": (channel_normalised, (3, 6, 6), 0.1, ("crown-ibp",), "auto"),
    "normalise-torchvision": (torchvision_normalised, (1, 6, 6), 0.1, ("crown-ibp",), "auto"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bounds_contain_samples(case):
    builder, shape, eps, extra, conv_mode = CASES[case]
    torch.manual_seed(sum(map(ord, case)))
    model = builder().eval()
    gen = torch.Generator().manual_seed(7)
    lo, hi = random_boxes(shape, 2, gen, eps=eps)
    with torch.no_grad():
        n_out = model(lo).shape[1]
    labels = torch.randint(0, n_out, (2,), generator=gen)
    C = lirpa.margin_spec(labels, n_out)
    bounded = lirpa.bounded_module(model, lo, conv_mode=conv_mode)
    for method in ("ibp", "crown", "alpha-crown") + extra:
        for spec in (None, C):
            b = lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method=method, C=spec,
                                     alpha_iterations=ALPHA_IT)
            assert b.method == method
            assert b.lower.shape == (2, n_out if spec is None else n_out - 1)
            check_contains(model, b, lo, hi, spec, gen, label=f"{case}/{method}/{'C' if spec is not None else 'raw'}")


def test_point_box_is_exact():
    """A zero-width box gives lower == upper == f(x) (up to float32)."""
    torch.manual_seed(0)
    model = small_cnn().eval()
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
    for method in ("ibp", "crown"):
        b = lirpa.bound_model(model, x, x, method=method)
        assert torch.allclose(b.lower, y, atol=1e-5) and torch.allclose(b.upper, y, atol=1e-5)


def test_alpha_crown_tightens_crown():
    """alpha-CROWN is never looser than CROWN and, on an MLP with many unstable ReLUs, strictly
    tighter. (Regression test for the clamp-gradient shim: without it alpha never moves.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    gen = torch.Generator().manual_seed(1)
    lo, hi = random_boxes((10,), 2, gen, eps=0.3)
    C = lirpa.margin_spec(torch.tensor([0, 1]), 4)
    bounded = lirpa.bounded_module(model, lo)
    crown = lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method="crown", C=C)
    alpha = lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method="alpha-crown", C=C,
                                 alpha_iterations=10)
    assert (alpha.lower >= crown.lower - 1e-5).all() and (alpha.upper <= crown.upper + 1e-5).all()
    assert float((alpha.lower - crown.lower).sum()) > 1e-3
    check_contains(model, alpha, lo, hi, C, gen, "alpha-crown mlp")


def test_alpha_crown_mostly_unstable_layer():
    """Regression (shim): alpha-CROWN on a layer with > 90% unstable ReLUs crashed in auto_LiRPA 0.3."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    gen = torch.Generator().manual_seed(3)
    lo, hi = -3 * torch.ones(2, 4), 3 * torch.ones(2, 4)
    bounded = lirpa.bounded_module(model, lo)
    b = lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method="alpha-crown", alpha_iterations=3)
    check_contains(model, b, lo, hi, None, gen, "alpha-crown unstable")


def test_batch_size_changes_and_state_reset():
    """One wrapper serves boxes of different batch sizes and methods in any order (MaxPool too)."""
    torch.manual_seed(1)
    model = maxpool_net().eval()
    gen = torch.Generator().manual_seed(2)
    lo, hi = random_boxes((1, 6, 6), 3, gen, eps=0.1)
    bounded = lirpa.bounded_module(model, lo[:1])
    C3 = lirpa.margin_spec(torch.tensor([0, 1, 2]), 4)
    ref = lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method="crown", C=C3)
    for method, n, spec in [("alpha-crown", 3, C3), ("alpha-crown", 1, None), ("crown", 2, None),
                            ("alpha-crown", 2, C3[:2]), ("crown", 3, C3),
                            ("forward+backward", 3, C3), ("forward+backward", 2, None)]:
        b = lirpa.compute_bounds(bounded, x_lower=lo[:n], x_upper=hi[:n], method=method, C=spec,
                                 alpha_iterations=3)
        check_contains(model, b, lo[:n], hi[:n], spec, gen, f"{method}/{n}")
    again = lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method="crown", C=C3)
    assert torch.allclose(ref.lower, again.lower) and torch.allclose(ref.upper, again.upper)


def test_train_mode_model_is_bounded_in_eval_mode():
    model = bn_net()
    model.train()
    gen = torch.Generator().manual_seed(5)
    lo, hi = random_boxes((1, 6, 6), 1, gen, eps=0.1)
    b = lirpa.bound_model(model, lo, hi, method="crown")
    assert model.training  # restored
    model.eval()
    check_contains(model, b, lo, hi, None, gen, "bn train->eval")


@pytest.mark.parametrize("name", ["fmnist_cnn", "color_cnn", "digits_mlp"])
def test_zoo_models(name):
    from certify import models

    assert name in models.available_pretrained()
    model = models.pretrained(name).eval()
    shape = {"fmnist_cnn": (1, 28, 28), "color_cnn": (3, 32, 32), "digits_mlp": (1, 8, 8)}[name]
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(1, *shape, generator=gen)
    lo, hi = (x - 0.005).clamp(0, 1), (x + 0.005).clamp(0, 1)
    with torch.no_grad():
        k = model(x).shape[1]
    C = lirpa.margin_spec(torch.tensor([1]), k)
    bounded = lirpa.bounded_module(model, lo)
    for method in ("ibp", "crown", "alpha-crown"):
        b = lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method=method, C=C, alpha_iterations=2)
        check_contains(model, b, lo, hi, C, gen, f"{name}/{method}")


def test_reference_and_intermediate_bounds():
    """Bounds of a sub-network over a box containing its inputs, passed as ``reference`` to the
    full network, give sound bounds at least as tight as plain CROWN; ``intermediate`` (fixed
    bounds) and alpha-CROWN on top of them are sound too."""
    torch.manual_seed(5)
    net = SemanticStyle(1).eval()
    gen = torch.Generator().manual_seed(6)
    lo = torch.tensor([[-0.4], [0.1], [-0.05]])
    hi = torch.tensor([[-0.1], [0.35], [0.05]])
    with torch.no_grad():    # pixel = clip(x0 (1 + a), 0, 1) is monotone in a: the ends give the box
        ends = torch.stack([net.lin2(torch.relu(net.lin1(t))) for t in (lo, hi)])
    pl = ends.min(0).values.view(-1, 1, 6, 6)
    pu = ends.max(0).values.view(-1, 1, 6, 6)
    C = lirpa.margin_spec(torch.tensor([0, 1, 2]), 4)
    sub = lirpa.bounded_module(net.cnn, pl)
    lirpa.compute_bounds(sub, x_lower=pl, x_upper=pu, method="crown", C=C)
    refs = lirpa.relu_input_bounds(sub)
    full = lirpa.bounded_module(net, lo)
    kinds = lirpa.relu_inputs(full)
    assert kinds[len(kinds) - len(refs):] == lirpa.relu_inputs(sub)
    reference = [None] * (len(kinds) - len(refs)) + list(refs)
    plain = lirpa.compute_bounds(full, x_lower=lo, x_upper=hi, method="crown", C=C)
    with_ref = lirpa.compute_bounds(full, x_lower=lo, x_upper=hi, method="crown", C=C, reference=reference)
    assert (with_ref.lower >= plain.lower - 1e-5).all()
    check_contains(net, with_ref, lo, hi, C, gen, "crown+reference")
    alpha = lirpa.compute_bounds(full, x_lower=lo, x_upper=hi, method="alpha-crown", C=C, reference=reference,
                                 alpha_iterations=5, bound_upper=False)
    assert torch.isinf(alpha.upper).all() and (alpha.lower >= with_ref.lower - 1e-5).all()
    check_contains(net, lirpa.Bounds(alpha.lower, with_ref.upper, "alpha"), lo, hi, C, gen, "alpha+reference")
    fixed = lirpa.relu_input_bounds(full)   # from the last (alpha) call on this network
    again = lirpa.compute_bounds(full, x_lower=lo, x_upper=hi, method="crown", C=C, intermediate=fixed)
    check_contains(net, again, lo, hi, C, gen, "crown+intermediate")
    with pytest.raises(ValueError, match="one entry per ReLU"):
        lirpa.compute_bounds(full, x_lower=lo, x_upper=hi, C=C, reference=refs[:1])
    with pytest.raises(ValueError, match="shape"):
        lirpa.compute_bounds(full, x_lower=lo[:2], x_upper=hi[:2], C=C[:2], reference=reference)


# --------------------------------------------------------------------------------------------
# the known unsound case of auto_LiRPA 0.3
# --------------------------------------------------------------------------------------------
class DuplicateGather(nn.Module):
    """y = x[:, [0, 0, 1]].sum(1): reads x0 twice, so y ranges over [-3, 3] on the box [-1, 1]^2."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.register_buffer("idx", torch.tensor([0, 0, 1]))

    def forward(self, x):
        y = torch.index_select(x, 1, self.idx) if self.how == "index_select" else x[:, self.idx]
        return (y * torch.ones(3)).sum(1, keepdim=True)


@pytest.mark.parametrize("how", ["index_select", "advanced-index"])
def test_known_unsound_duplicate_gather(how):
    """KNOWN BUG of auto_LiRPA 0.3: CROWN back-propagates through Gather (index_select, tensor
    indexing) with an overwriting scatter, so an input read twice contributes once. On the box
    [-1, 1]^2 the true range of x0 + x0 + x1 is [-3, 3] but raw CROWN returns [-2, 2].

    This test calls auto_LiRPA directly and asserts the bound IS unsound on this version; if a
    future auto_LiRPA fixes it, this test fails and the guard below can be relaxed. certify.lirpa
    refuses non-IBP methods on such graphs (IBP is correct)."""
    model = DuplicateGather(how).eval()
    lo, hi = -torch.ones(1, 2), torch.ones(1, 2)
    bounded = lirpa.bounded_module(model, lo)
    assert bounded.unsound_linear_ops
    lib = lirpa._lirpa()
    bx = lib.BoundedTensor(torch.zeros(1, 2), lib.PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi))
    with torch.no_grad():
        raw_lower, raw_upper = bounded.module.compute_bounds(x=(bx,), method="backward")
    true_min = float(model(lo))  # -3 at the corner (-1, -1)
    assert true_min == pytest.approx(-3.0)
    assert float(raw_lower) > true_min + 0.5 and float(raw_upper) < 3.0 - 0.5   # unsound
    with pytest.raises(ValueError, match="unsound"):
        lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method="crown")
    ibp = lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method="ibp")
    assert float(ibp.lower) <= -3.0 + 1e-6 and float(ibp.upper) >= 3.0 - 1e-6


def test_unique_index_gather_is_allowed_and_sound():
    class Pick(nn.Module):
        def forward(self, x):
            return torch.stack([x[:, 2] - x[:, 0], x[:, 1] * 2.0], dim=1)

    model = Pick()
    gen = torch.Generator().manual_seed(0)
    lo, hi = random_boxes((3,), 2, gen, eps=0.5)
    bounded = lirpa.bounded_module(model, lo)
    assert not bounded.unsound_linear_ops
    for method in ("ibp", "crown"):
        check_contains(model, lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method=method),
                       lo, hi, None, gen, f"pick/{method}")


# --------------------------------------------------------------------------------------------
# API, validation, shims
# --------------------------------------------------------------------------------------------
def test_margin_spec():
    C = lirpa.margin_spec(torch.tensor([2, 0]), 4)
    assert C.shape == (2, 3, 4)
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0], [3.0, 1.0, 0.0, 2.0]])
    margins = torch.einsum("bsk,bk->bs", C, logits)
    assert margins.tolist() == [[5.0, 4.0, 3.0], [2.0, 3.0, 1.0]]
    assert lirpa.other_classes(torch.tensor([2, 0]), 4).tolist() == [[0, 1, 3], [1, 2, 3]]
    assert lirpa.margin_spec(1, 3).shape == (1, 2, 3)
    with pytest.raises(ValueError, match="labels"):
        lirpa.margin_spec(torch.tensor([4]), 4)
    with pytest.raises(ValueError, match="num_classes"):
        lirpa.margin_spec(torch.tensor([0]), 1)
    with pytest.raises(TypeError, match="labels"):
        lirpa.margin_spec(torch.tensor([0.5]), 3)


def test_bad_input():
    model = mlp().eval()
    lo = torch.zeros(2, 6)
    bounded = lirpa.bounded_module(model, lo)
    hi = lo + 0.1
    with pytest.raises(ValueError, match="method"):
        lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method="deepPoly")
    with pytest.raises(TypeError, match="method"):
        lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method=3)
    with pytest.raises(ValueError, match="x_lower must be <= x_upper"):
        lirpa.compute_bounds(bounded, x_lower=hi, x_upper=lo)
    with pytest.raises(ValueError, match="finite"):
        lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi * float("nan"))
    with pytest.raises(ValueError, match="shape"):
        lirpa.compute_bounds(bounded, x_lower=lo[:, :5], x_upper=hi[:, :5])
    with pytest.raises(ValueError, match="same shape"):
        lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi[:1])
    with pytest.raises(TypeError, match="x_lower"):
        lirpa.compute_bounds(bounded, x_lower=lo.numpy(), x_upper=hi)
    with pytest.raises(ValueError, match="C must have shape"):
        lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, C=torch.ones(2, 3, 5))
    with pytest.raises(ValueError, match="alpha_iterations"):
        lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method="alpha-crown", alpha_iterations=0)
    with pytest.raises(ValueError, match="alpha_lr"):
        lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method="alpha-crown", alpha_lr=-1.0)
    with pytest.raises(ValueError, match="conv_mode"):
        lirpa.bounded_module(model, lo, conv_mode="dense")
    with pytest.raises(TypeError, match="model"):
        lirpa.bounded_module(lambda x: x, lo)
    with pytest.raises(TypeError, match="bounded"):
        lirpa.compute_bounds(model, x_lower=lo, x_upper=hi)


def test_prepared_copy_leaves_the_model_alone():
    """Bounding copies the model: its buffers, dropout layers and train flag are untouched."""
    model = ScalarNormalised().train()
    bounded = lirpa.bounded_module(model, torch.zeros(2, 1, 8, 8))
    assert model.training and "mean" in dict(model.named_buffers())
    assert isinstance(model.features[6], nn.Dropout)
    assert bounded.conv_mode == "matrix"     # constant ops on images are bounded in matrix mode
    with pytest.raises(ValueError, match="conv_mode='patches'"):
        lirpa.bounded_module(model, torch.zeros(2, 1, 8, 8), conv_mode="patches")


class _Tanh(nn.Module):
    def forward(self, x):
        return torch.tanh(x[:, :3])


class _Erf(nn.Module):
    def forward(self, x):
        return torch.erf(x[:, :3])


class _BatchLikeConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.1, 0.2, 0.3]))
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.conv(x - self.mean.view(1, -1, 1, 1)).flatten(1)


@pytest.mark.parametrize("model, shape, pattern", [
    (_Tanh(), (4,), r"unsupported operator\(s\) Tanh .*certify bounds only: .*ReLU"),
    (_Erf(), (4,), r"unsupported operator\(s\) onnx::Erf; certify bounds only: .*nn.MaxPool2d"),
    (_BatchLikeConstant(), (3, 5, 5), r"constant of shape \(1, 3, 1, 1\).*view\(-1, 1, 1\)"),
])
def test_unsupported_operator_gives_one_clear_error(model, shape, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        lirpa.bounded_module(model, torch.zeros(2, *shape))
    assert "\n" not in str(info.value)


def test_shims_are_idempotent_and_lazy():
    first = lirpa._lirpa()
    assert lirpa._lirpa() is first
    assert hasattr(torch._C.Node, "__getitem__")
    import inspect

    assert "remove_duplicate" in inspect.signature(first.BoundedModule._named_members).parameters
    # BoundedModule.named_parameters() (uses _named_members(remove_duplicate=...)) works
    bounded = lirpa.bounded_module(mlp().eval(), torch.zeros(1, 6))
    assert len(list(bounded.module.named_parameters())) > 0
    d = lirpa.Bounds(torch.zeros(1, 2), torch.ones(1, 2), "crown").to_dict()
    assert d == {"lower": [[0.0, 0.0]], "upper": [[1.0, 1.0]], "method": "crown"}
