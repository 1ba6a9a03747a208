"""Floating-point sound smoothing: the lattice sampler, a rounding-reading base classifier that breaks the
default (float) certificate but not the sound one, grid validation, half-precision models."""
import math

import numpy as np
import pytest
import torch
from conftest import needs_fmnist
from scipy import special, stats

from certify.smoothing import Smooth
from estimators.lattice import (
    GRID_LEVELS,
    THRESHOLD_BITS,
    grid_indices,
    lattice_input,
    lattice_noise,
    sample_lattice,
    total_variation,
)
from estimators.sampling import make_generator, sample_noise


# ------------------------------------------------------------------------------------------------ the sampler
def test_thresholds_are_the_rounded_gaussian_cdf():
    noise = lattice_noise(0.25)
    assert noise.margin == 510 and noise.offset == 765 and len(noise.thresholds) == 2 * 765
    k = np.arange(-noise.offset, noise.offset)
    ideal = special.ndtr((k + 0.5) / (GRID_LEVELS * 0.25)) * 2.0 ** THRESHOLD_BITS
    # float64 reference is accurate to ~1e-16 relative: the exact thresholds agree within that
    assert np.all(np.abs(noise.thresholds.astype(np.float64) - ideal) <= 4e-16 * 2.0 ** THRESHOLD_BITS + 1)
    assert np.all(np.diff(noise.thresholds) >= 0)
    assert total_variation(noise, 784) == pytest.approx(784 * 1530 / 2.0 ** 62)
    assert total_variation(noise, 784) < 1e-12
    assert lattice_noise(0.25) is lattice_noise(0.25)  # cached


def test_table_lookup_equals_binary_search_and_distribution_matches():
    noise = lattice_noise(0.5)
    u = torch.tensor([0, 17, 128, 255], dtype=torch.int64)
    v = sample_lattice(u, 50_000, noise, torch.Generator().manual_seed(1))
    ref_gen = torch.Generator().manual_seed(1)
    draws = torch.randint(0, 2 ** THRESHOLD_BITS, (50_000 * 4,), generator=ref_gen, dtype=torch.int64)
    j = torch.searchsorted(torch.from_numpy(noise.thresholds.copy()), draws, right=True) - noise.offset
    ref = (j.view(50_000, 4) + u).clamp(noise.low, noise.high)
    assert torch.equal(v.to(torch.int64), ref)
    # j = v - u (no clipping happens this close to the grid) is the rounded N(0, (255 sigma)^2)
    jj = (v - u.to(torch.int32)).flatten().numpy()
    edges = np.arange(-400, 401) + 0.5
    counts, _ = np.histogram(jj, bins=np.concatenate([[-np.inf], edges, [np.inf]]))
    probs = np.diff(np.concatenate([[0.0], special.ndtr(edges / (255 * 0.5)), [1.0]]))
    assert stats.chisquare(counts, probs * counts.sum()).pvalue > 1e-4  # fixed seed; fails only if biased


def test_same_rows_whatever_the_batch_size():
    noise = lattice_noise(0.25)
    u = torch.arange(0, 200, dtype=torch.int64)
    g = torch.Generator().manual_seed(3)
    parts = torch.cat([sample_lattice(u, 7, noise, g), sample_lattice(u, 13, noise, g)])
    whole = sample_lattice(u, 20, noise, torch.Generator().manual_seed(3))
    assert torch.equal(parts, whole)


def test_model_input_is_a_function_of_the_integer_lattice_point_only():
    # the same uniform draws at x and at x + 3/255 give model inputs fl((v + 3) / 255): bit-identical to the
    # input a noise draw v + 3 would give at x, so no float arithmetic with x reaches the model
    noise = lattice_noise(0.25)
    x = torch.tensor([0.0, 10 / 255, 100 / 255, 1.0])
    u = grid_indices(x)
    v = sample_lattice(u, 1000, noise, torch.Generator().manual_seed(0))
    v3 = sample_lattice(u + 3, 1000, noise, torch.Generator().manual_seed(0))
    assert torch.equal(v3, (v + 3).clamp(noise.low, noise.high))
    y = lattice_input(v3, noise, torch.float32)
    assert torch.equal(y, ((v + 3).clamp(noise.low, noise.high)).to(torch.float32) / 255.0)
    assert lattice_input(v, noise, torch.float16).dtype == torch.float16


@pytest.mark.parametrize("x, word", [
    (torch.tensor([0.5 / 255, 0.0]), "grid"),
    (torch.tensor([0.5, 0.5 + 1e-3]), "grid"),
    (torch.tensor([-0.4, 0.2]), "[0, 1]"),
    (torch.tensor([0.0, 2.0]), "[0, 1]"),
])
def test_off_grid_inputs_are_refused(x, word):
    with pytest.raises(ValueError, match=word):
        grid_indices(x)
    smooth = Smooth(torch.nn.Linear(2, 2), num_classes=2, sigma=0.25, sound=True)
    with pytest.raises(ValueError, match=word):
        smooth.certify(x, n_select=10, n_estimate=10, alpha=0.01)
    with pytest.raises(ValueError, match=word):
        smooth.predict(x, n=10, alpha=0.01)


def test_bad_sound_arguments():
    with pytest.raises(TypeError, match="sound"):
        Smooth(torch.nn.Linear(2, 2), num_classes=2, sigma=0.25, sound=1)
    smooth = Smooth(torch.nn.Linear(2, 2), num_classes=2, sigma=0.25, sound=True)
    with pytest.raises(ValueError, match="first_order"):
        smooth.certify(torch.zeros(2), n_select=10, n_estimate=10, alpha=0.01, first_order=True)
    with pytest.raises(ValueError, match="sigma"):
        lattice_noise(-1.0)
    with pytest.raises(ValueError, match="dim"):
        total_variation(lattice_noise(0.25), 0)
    with pytest.raises(ValueError, match="noise_source"):
        sample_noise(torch.nn.Linear(2, 2), torch.zeros(2), sigma=0.25, n=4, num_classes=2, batch_size=4, seed=0,
                     target=0, noise_source=lambda b, g: torch.zeros(b, 2))


# ------------------------------------------------------------------------------------------------ the attack
class RoundingReader(torch.nn.Module):
    """A base classifier that reads the floating-point rounding pattern of its input (Voracek & Hein's idea).

    A coordinate y passes when y = fl(s * w) for some float32 w (s = fl32(sigma)): true for every coordinate of
    the default noisy input at x = 0, where y = fl(0 + s z), but for only part of the floats elsewhere (z -> s z
    does not reach every float of a binade when s is not a power of two). Class 0 when >= 99% pass.
    """

    def __init__(self, sigma: float):
        super().__init__()
        self.register_buffer("s", torch.tensor(sigma, dtype=torch.float32))

    def forward(self, y):
        y = y.reshape(y.shape[0], -1).to(torch.float32)
        w = (y.double() / self.s.double()).float()
        passed = (w * self.s) == y
        up, down = w, w
        for _ in range(2):
            up = torch.nextafter(up, torch.full_like(up, math.inf))
            down = torch.nextafter(down, torch.full_like(down, -math.inf))
            passed |= ((up * self.s) == y) | ((down * self.s) == y)
        frac = passed.to(torch.float32).mean(dim=1)
        return torch.stack([frac - 0.99, 0.99 - frac], dim=1)


def test_rounding_reader_breaks_the_default_certificate_but_not_the_sound_one():
    sigma, dim = 0.3, 64
    model = RoundingReader(sigma)
    x = torch.zeros(dim)                      # on the grid
    x_adv = torch.full((dim,), 1 / 255)       # on the grid, at distance 8/255 ~= 0.031
    dist = float((x_adv - x).norm())

    default = Smooth(model, num_classes=2, sigma=sigma)
    cert = default.certify(x, n_select=100, n_estimate=2000, alpha=0.001, seed=0)
    assert not cert.abstained and cert.label == 0 and cert.radius > 20 * dist  # radius ~0.81
    pred = default.predict(x_adv, n=2000, alpha=0.001, seed=1)
    assert not pred.abstained and pred.label == 1  # the float smoothed classifier changed its mind inside
    assert pred.counts[1] > 1500                   # the radius: the default certificate is false

    sound = Smooth(model, num_classes=2, sigma=sigma, sound=True)
    cert_s = sound.certify(x, n_select=100, n_estimate=2000, alpha=0.001, seed=0)
    assert cert_s.sound and not cert_s.abstained and cert_s.radius > dist
    for point in (x_adv, torch.zeros(dim).index_fill_(0, torch.arange(8), 20 / 255)):  # both inside the radius
        assert float(point.norm()) < cert_s.radius
        pred_s = sound.predict(point, n=2000, alpha=0.001, seed=2)
        assert not pred_s.abstained and pred_s.label == cert_s.label


def test_sound_certificate_subtracts_the_total_variation():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    torch.manual_seed(0)
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    x = torch.full((1, 4, 4), 51 / 255)
    cert = Smooth(model, num_classes=3, sigma=0.25, sound=True).certify(x, n_select=10, n_estimate=100,
                                                                      alpha=0.01, seed=0)
    plain = Smooth(model, num_classes=3, sigma=0.25).certify(x, n_select=10, n_estimate=100, alpha=0.01, seed=0)
    assert cert.sound and not plain.sound and cert.counts[0] == plain.counts[0] == 100
    assert cert.p_lower == pytest.approx(plain.p_lower - total_variation(lattice_noise(0.25), 16), abs=1e-16)
    assert cert.p_lower < plain.p_lower
    assert cert.to_dict()["sound"] is True


# ------------------------------------------------------------------------------------------------ half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_gets_float32_noise_rounded_once(dtype):
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 2).to(dtype)

        def forward(self, y):
            seen.append(y.detach().clone())
            return self.lin(y).float()

    model = Probe()
    x = torch.linspace(0, 1, 8)
    smooth = Smooth(model, num_classes=2, sigma=0.25)
    assert smooth.noise_dtype == torch.float32
    cert = smooth.certify(x, n_select=16, n_estimate=64, alpha=0.01, batch_size=64, seed=0)
    assert cert.model_dtype == str(dtype).replace("torch.", "")
    assert all(b.dtype == dtype for b in seen)
    # the model input is the float32 sum x + sigma z of the float32 Gaussian stream, rounded once to dtype
    batches = []

    def record(b):
        batches.append(b.clone())
        return torch.zeros(b.shape[0], 2)

    sample_noise(record, x, sigma=0.25, n=64, num_classes=2, batch_size=64, seed=7)
    sample_noise(record, x, sigma=0.25, n=64, num_classes=2, batch_size=64, seed=7, input_dtype=dtype)
    sample_noise(record, x.to(dtype), sigma=0.25, n=64, num_classes=2, batch_size=64, seed=7)
    b32, b_half, b_from_half_x = batches
    assert b32.dtype == torch.float32 and b_half.dtype == dtype and b_from_half_x.dtype == dtype
    assert torch.equal(b_half, b32.to(dtype))
    # a half-precision x is upcast exactly and gets the same float32 noise stream
    z = torch.empty(64, 8).normal_(generator=make_generator(7, "cpu"))
    assert torch.equal(b32, torch.add(x, z, alpha=0.25))
    assert torch.equal(b_from_half_x, torch.add(x.to(dtype).to(torch.float32), z, alpha=0.25).to(dtype))
    # first-order sums of a half model still accumulate float32 noise
    cert_fo = smooth.certify(x, n_select=16, n_estimate=64, alpha=0.01, batch_size=64, seed=0, first_order=True)
    assert math.isfinite(cert_fo.radius)


def test_half_precision_model_with_sound_noise():
    model = torch.nn.Linear(8, 2).to(torch.float16)
    x = torch.tensor([k / 255 for k in (0, 3, 60, 128, 200, 250, 255, 7)])
    cert = Smooth(model, num_classes=2, sigma=0.25, sound=True).certify(x, n_select=16, n_estimate=64,
                                                                        alpha=0.01, seed=0)
    assert cert.sound and cert.model_dtype == "float16"


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_sound_rejects_off_grid_data_and_first_order(tmp_path, capsys):
    from certify import cli

    base = ["-q", "smooth", "--pretrained", "digits_mlp", "--sigma", "0.25", "--n-estimate", "50", "--max", "1",
            "--sound", "--out", str(tmp_path / "r")]
    for extra in ([], ["--first-order"]):
        with pytest.raises(SystemExit) as info:
            cli.main(base + extra)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "--sound" in err and ("grid" in err or "first-order" in err) and "Traceback" not in err
    assert not (tmp_path / "r" / "rows.tsv").exists()


@needs_fmnist
def test_cli_sound_run_records_the_setting(tmp_path, capsys):
    import json

    from certify import cli

    out = tmp_path / "s"
    assert cli.main(["-q", "smooth", "--pretrained", "fmnist_cnn_sigma0.25", "--n-estimate", "200", "--max", "2",
                     "--batch-size", "200", "--sound", "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["sound"] is True
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # resuming without --sound mixes settings: refused
        cli.main(["-q", "smooth", "--pretrained", "fmnist_cnn_sigma0.25", "--n-estimate", "200", "--max", "2",
                  "--batch-size", "200", "--out", str(out)])
    assert info.value.code == 2 and "sound" in capsys.readouterr().err


def test_sound_certificate_does_not_depend_on_the_batch_size():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.tensor([k / 255 for k in range(0, 240, 20)])
    smooth = Smooth(model, num_classes=3, sigma=0.5, sound=True)
    a = smooth.certify(x, n_select=30, n_estimate=500, alpha=0.01, batch_size=7, seed=3)
    b = smooth.certify(x, n_select=30, n_estimate=500, alpha=0.01, batch_size=1000, seed=3)
    assert a.counts == b.counts and a.counts_select == b.counts_select and a.radius == b.radius
