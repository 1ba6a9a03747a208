"""Contrastive pretraining: the NT-Xent loss against its definition, views, training, bad input."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from certify import contrastive as cl
from certify import models


def _nt_xent_loops(z1, z2, t):
    u = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).double()
    n = u.shape[0]
    b = n // 2
    total = 0.0
    for i in range(n):
        p = (i + b) % n
        den = sum(math.exp(float(u[i] @ u[j]) / t) for j in range(n) if j != i)
        total += -math.log(math.exp(float(u[i] @ u[p]) / t) / den)
    return total / n


def test_nt_xent_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for t in (0.1, 0.5, 2.0):
        assert float(cl.nt_xent(z1, z2, temperature=t)) == pytest.approx(_nt_xent_loops(z1, z2, t), rel=1e-5)
    same = torch.ones(4, 2)
    assert float(cl.nt_xent(same, same)) == pytest.approx(math.log(7), rel=1e-6)


def test_random_views_are_reproducible_and_in_range():
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    a = cl.random_views(x, torch.Generator().manual_seed(3))
    b = cl.random_views(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(a, x)
    plain = cl.random_views(x, torch.Generator().manual_seed(3), max_shift=0, flip=False, jitter=0.0, cutout=0)
    assert torch.equal(plain, x)


@pytest.mark.parametrize("mode,eps", [("simclr", 0.0), ("adversarial", 0.1)])
def test_training_lowers_the_loss_and_is_reproducible(mode, eps):
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x[:32] *= 0.2          # two visually distinct groups
    state = None
    results = []
    for _ in range(2):
        enc = models.build("digits_mlp", seed=0)
        rng_before = torch.random.get_rng_state()
        res = cl.train_contrastive(enc, x, steps=40, mode=mode, eps=eps, batch_size=16, lr=3e-3, pgd_steps=2,
                                   seed=5)
        assert torch.equal(torch.random.get_rng_state(), rng_before)      # global RNG untouched
        results.append(res)
        if state is None:
            state = {k: v.clone() for k, v in enc.state_dict().items()}
        else:
            assert all(torch.equal(state[k], v) for k, v in enc.state_dict().items())
    res = results[0]
    assert res.losses == results[1].losses and len(res.losses) == 40
    start, end = sum(res.losses[:5]) / 5, res.final_loss
    assert end < start
    assert res.feature_dim == 32 and res.to_dict()["mode"] == mode
    # the classifier head after the feature layer is not trained
    fresh = models.build("digits_mlp", seed=0)
    assert torch.equal(fresh.fc3.weight, results[1].model.fc3.weight)


def test_bad_input():
    x = torch.rand(32, 1, 8, 8)
    enc = models.build("digits_mlp", seed=0)
    with pytest.raises(ValueError, match="mode"):
        cl.train_contrastive(enc, x, steps=1, mode="byol")
    with pytest.raises(ValueError, match="eps"):
        cl.train_contrastive(enc, x, steps=1, mode="adversarial", eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        cl.train_contrastive(enc, x, steps=1, mode="simclr", eps=0.1)
    with pytest.raises(ValueError, match="steps"):
        cl.train_contrastive(enc, x, steps=0)
    with pytest.raises(TypeError, match="steps"):
        cl.train_contrastive(enc, x, steps=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        cl.train_contrastive(enc, x, steps=1, batch_size=64)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cl.train_contrastive(enc, x * 3, steps=1, batch_size=16)
    with pytest.raises(TypeError):
        cl.train_contrastive("enc", x, steps=1)
    with pytest.raises(ValueError, match="temperature"):
        cl.nt_xent(torch.ones(2, 2), torch.ones(2, 2), temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        cl.nt_xent(torch.ones(2, 2), torch.ones(3, 2))
    with pytest.raises(TypeError):
        cl.train_contrastive(nn.Flatten(), [1, 2], steps=1)
