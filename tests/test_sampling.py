"""Batched Gaussian sampling: counts, first-order half sums, determinism, batching and bad input."""
import numpy as np
import pytest
import torch

from estimators.sampling import derive_seeds, make_generator, sample_noise


class Recorder:
    """A classifier that records every batch it sees: class = (sum of the input > 0) + (first entry > 1)."""

    def __init__(self, num_classes=3):
        self.batches = []
        self.num_classes = num_classes

    def __call__(self, batch):
        self.batches.append(batch.detach().clone())
        flat = batch.reshape(batch.shape[0], -1)
        cls = (flat.sum(1) > 0).long() + (flat[:, 0] > 1).long()
        return torch.nn.functional.one_hot(cls, self.num_classes).float()


def test_counts_and_half_sums_match_a_direct_computation():
    x = torch.tensor([[0.3, -0.2], [0.1, 0.05]])  # any shape: (2, 2)
    sigma, n, bs = 0.7, 53, 7  # odd batch size: batches start at odd indices too
    rec = Recorder()
    st = sample_noise(rec, x, sigma=sigma, n=n, num_classes=3, batch_size=bs, seed=5, target=1)
    assert all(b.shape[0] <= bs for b in rec.batches)  # memory bounded by batch_size
    inputs = torch.cat(rec.batches)
    assert inputs.shape == (n, 2, 2)
    z = ((inputs - x) / sigma).reshape(n, -1).double()
    preds = rec(inputs).argmax(1)
    counts = torch.bincount(preds, minlength=3).numpy()
    np.testing.assert_array_equal(st.counts, counts)
    assert st.counts.sum() == n
    w = (preds == 1).double() - 0.5
    idx = torch.arange(n)
    for h in (0, 1):
        sel = idx % 2 == h
        expected = (w[sel, None] * z[sel]).sum(0).numpy()
        np.testing.assert_allclose(st.half_sums[h], expected, atol=1e-4)
        assert st.half_hits[h] == int((preds[sel] == 1).sum())
    assert st.half_n == (27, 26)
    m1, m2 = st.half_means
    np.testing.assert_allclose(m1, st.half_sums[0] / 27)
    assert st.input_shape == (2, 2) and st.target == 1


def test_noise_is_standard_normal():
    x = torch.zeros(16)
    rec = Recorder()
    sample_noise(rec, x, sigma=2.0, n=4000, num_classes=3, batch_size=1000, seed=0)
    z = torch.cat(rec.batches).flatten() / 2.0
    assert abs(float(z.mean())) < 5 / np.sqrt(z.numel())
    assert abs(float(z.var()) - 1.0) < 0.02


def test_determinism():
    x = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))
    kw = dict(sigma=0.5, n=300, num_classes=4, batch_size=64, target=2)
    a = sample_noise(model, x, seed=11, **kw)
    b = sample_noise(model, x, seed=11, **kw)
    c = sample_noise(model, x, seed=12, **kw)
    d = sample_noise(model, x, generator=make_generator(11, "cpu"), **kw)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.half_sums, b.half_sums)
    np.testing.assert_array_equal(a.half_sums, d.half_sums)
    assert not np.array_equal(a.half_sums, c.half_sums)


def test_derive_seeds_stable_and_distinct():
    s = derive_seeds(0, 3)
    assert s == derive_seeds(0, 3) and len(set(s)) == 3 and all(0 <= v < 2**63 for v in s)
    assert derive_seeds(1, 3) != s


def test_zeroth_order_has_no_sums():
    st = sample_noise(Recorder(), torch.zeros(3), sigma=1.0, n=10, num_classes=3, batch_size=4, seed=0)
    assert st.half_sums is None
    with pytest.raises(ValueError, match="first-order"):
        _ = st.half_means


@pytest.mark.parametrize("out,word", [
    (lambda b: torch.zeros(b.shape[0], 4), "num_classes"),
    (lambda b: torch.zeros(b.shape[0]), "num_classes"),
    (lambda b: torch.zeros(b.shape[0] + 1, 3), "num_classes"),
    (lambda b: (torch.zeros(b.shape[0], 3),), "tuple"),
    (lambda b: torch.full((b.shape[0], 3), float("nan")), "non-finite"),
])
def test_bad_model_output(out, word):
    with pytest.raises(ValueError, match=word):
        sample_noise(out, torch.zeros(5), sigma=1.0, n=10, num_classes=3, batch_size=4, seed=0)


@pytest.mark.parametrize("kw,exc,word", [
    (dict(sigma=0.0), ValueError, "sigma"),
    (dict(sigma=float("nan")), ValueError, "sigma"),
    (dict(sigma=True), ValueError, "sigma"),
    (dict(n=0), ValueError, "n"),
    (dict(n=10.0), TypeError, "n"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=True), TypeError, "batch_size"),
    (dict(num_classes=1), ValueError, "num_classes"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=None), ValueError, "seed or generator"),
    (dict(generator=torch.Generator()), ValueError, "seed or generator"),
    (dict(target=3), ValueError, "target"),
    (dict(target=0, n=1), ValueError, "n >= 2"),
])
def test_bad_arguments(kw, exc, word):
    args = dict(sigma=1.0, n=10, num_classes=3, batch_size=4, seed=0)
    args.update(kw)
    with pytest.raises(exc, match=word):
        sample_noise(Recorder(), torch.zeros(5), **args)


def test_bad_x_and_classifier():
    with pytest.raises(TypeError, match="x"):
        sample_noise(Recorder(), np.zeros(5), sigma=1.0, n=10, num_classes=3, batch_size=4, seed=0)
    with pytest.raises(TypeError, match="floating"):
        sample_noise(Recorder(), torch.zeros(5, dtype=torch.long), sigma=1.0, n=10, num_classes=3, batch_size=4,
                     seed=0)
    with pytest.raises(TypeError, match="callable"):
        sample_noise(3, torch.zeros(5), sigma=1.0, n=10, num_classes=3, batch_size=4, seed=0)
