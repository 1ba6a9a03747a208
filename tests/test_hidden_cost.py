"""Hidden cost of smoothing: closed-form slab oracle, per-class report rows, the sigma sweep, bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from certify import hidden_cost as hc
from certify.reports import RadiusReport, row_from_certificate
from certify.smoothing import Smooth

W = 1.0
V = hc.vanishing_sigma(W)          # 1.1609 for w = 1


def test_closed_form_and_vanishing_threshold():
    assert V == pytest.approx(1.0 / (2 * stats.norm.ppf(2 / 3)))
    p = hc.slab_probabilities(np.linspace(-3, 3, 61), W, 0.7)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
    # Monte Carlo check of the formula itself (200k draws, 5 sd)
    g = np.random.default_rng(0)
    x0 = 0.3
    z = x0 + 0.7 * g.standard_normal(200_000)
    emp = [np.mean(z < -0.5), np.mean(np.abs(z) <= 0.5), np.mean(z > 0.5)]
    np.testing.assert_allclose(emp, hc.slab_probabilities(x0, W, 0.7), atol=5 * 0.5 / math.sqrt(200_000))
    grid = np.linspace(-2, 2, 4001)
    assert (hc.slab_smoothed_class(grid, W, 0.95 * V) == 1).any()
    assert not (hc.slab_smoothed_class(grid, W, 1.05 * V) == 1).any()
    # the smoothed slab region shrinks with sigma
    widths = [np.mean(hc.slab_smoothed_class(grid, W, s) == 1) for s in (0.2, 0.5, 0.9, 1.1)]
    assert all(a > b for a, b in zip(widths, widths[1:]))


@pytest.mark.parametrize("sigma", [0.3 * V, 0.8 * V, 1.3 * V])
def test_toolkit_smoothed_prediction_matches_the_closed_form(sigma):
    # the toolkit's PREDICT on the 2-D slab classifier: counts match the Gaussian-CDF probabilities
    # (5 binomial sd, n = 4000) and every non-abstained label is the closed-form argmax; where the top
    # two closed-form probabilities differ by > 0.1 it must not abstain. Failure budget: alpha = 1e-4 per
    # prediction (fixed seeds make the test deterministic).
    smooth = Smooth(hc.SlabClassifier(W), num_classes=3, sigma=sigma, input_range=None)
    n = 4000
    for k, x0 in enumerate(np.linspace(-1.5, 1.5, 13)):
        pred = smooth.predict(torch.tensor([x0, 0.7]), n=n, alpha=1e-4, seed=k)
        p = hc.slab_probabilities(x0, W, sigma)
        np.testing.assert_allclose(np.array(pred.counts) / n, p, atol=5 * 0.5 / math.sqrt(n))
        top2 = np.sort(p)[-2:]
        if not pred.abstained:
            assert pred.label == int(np.argmax(p))
        if top2[1] - top2[0] > 0.1:
            assert not pred.abstained


def _slab_report(sigma: float) -> RadiusReport:
    base = hc.SlabClassifier(W)
    smooth = Smooth(base, num_classes=3, sigma=sigma, input_range=None)
    rows = []
    for i, x0 in enumerate(np.linspace(-1.2, 1.2, 13)):
        x = torch.tensor([x0, 0.0])
        label = int(base(x[None]).argmax(1))
        cert = smooth.certify(x, n_select=64, n_estimate=2000, alpha=0.001, seed=i)
        rows.append(row_from_certificate(i, label, cert, base_predict=label))
    return RadiusReport(rows, sigma=sigma, num_classes=3, name=f"slab sigma={sigma:.2f}")


def test_report_flags_the_vanished_class(tmp_path):
    small, large = _slab_report(0.3 * V), _slab_report(1.5 * V)
    pc_small, pc_large = small.per_class(), large.per_class()
    assert pc_small["vanished_classes"] == [] and pc_large["vanished_classes"] == [1]
    c1 = pc_large["classes"][1]
    assert c1["n"] >= 3 and c1["base_accuracy"] == 1.0 and c1["smoothed_accuracy"] == 0.0
    assert c1["changed_fraction"] == 1.0 and c1["acr"] == 0.0
    assert pc_large["disparity"]["smoothed"] >= 0.9 and pc_large["disparity"]["base"] == 0.0
    assert pc_small["classes"][1]["smoothed_accuracy"] > 0
    md = large.to_markdown()
    assert "vanished classes" in md and "Per class" in md
    assert large.summary()["per_class"]["vanished_classes"] == [1]
    json.dumps(large.summary())
    # rows files keep the column; files without it still load (base accuracy unknown)
    back = RadiusReport.from_tsv(large.to_tsv(tmp_path / "rows.tsv"))
    assert back.per_class() == pc_large
    old = RadiusReport(large.to_frame().drop(columns=["base_predict"]), num_classes=3)
    pc_old = old.per_class()
    assert pc_old["has_base_predict"] is False and pc_old["classes"][1]["base_accuracy"] is None
    assert pc_old["vanished_classes"] == [1]           # a label class the smoothed classifier never predicts
    assert large.plot_per_class(tmp_path / "pc.png").stat().st_size > 0


def test_per_class_numbers_on_a_hand_made_report():
    rows = [  # idx, label, predict, abstained, radius, correct, base
        (0, 0, 0, False, 0.5, True, 0), (1, 0, 1, False, 0.2, False, 0), (2, 0, 0, True, 0.0, False, 0),
        (3, 1, 1, False, 1.0, True, 1), (4, 1, 1, False, 0.1, True, 0), (5, 2, 2, False, 0.3, True, None)]
    rep = RadiusReport([dict(idx=i, label=lab, predict=p, abstained=a, p_lower=0.9, radius=r, correct=c, time=0.1,
                             base_predict=b) for i, lab, p, a, r, c, b in rows])
    pc = rep.per_class(radii=(0.0, 0.25))
    c0, c1, c2 = pc["classes"]
    assert (c0["n"], c0["base_accuracy"], c0["smoothed_accuracy"], c0["abstain_rate"]) == (3, 1.0, 1 / 3, 1 / 3)
    assert c0["certified_accuracy"] == [1 / 3, 1 / 3] and c0["acr"] == pytest.approx(0.5 / 3)
    assert c0["changed_fraction"] == pytest.approx(2 / 3)
    assert (c1["base_accuracy"], c1["smoothed_accuracy"], c1["certified_accuracy"]) == (0.5, 1.0, [1.0, 0.5])
    assert c1["changed_fraction"] == 0.5 and c2["base_accuracy"] is None and c2["changed_fraction"] is None
    assert pc["disparity"]["smoothed"] == pytest.approx(2 / 3) and pc["disparity"]["base"] == 0.5
    assert pc["changed_fraction"] == pytest.approx(3 / 5) and pc["vanished_classes"] == []


def test_sigma_sweep_on_the_slab(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.linspace(-1.2, 1.2, 25), torch.randn(25, generator=g)], dim=1)
    base = hc.SlabClassifier(W)
    y = base(x).argmax(1)
    sw = hc.sigma_sweep({"slab": base}, x, y, num_classes=3, sigmas=(0.0, 0.3 * V, 1.5 * V), n=500, alpha=0.001,
                        input_range=None)
    assert sw.overall[0][0] == 1.0 and sw.disparity[0][0] == 0.0 and sw.vanished[0][0] == ()
    assert sw.accuracy[0][2][1] == 0.0 and 1 in sw.vanished[0][2]
    assert sw.disparity[0][2] >= sw.disparity[0][1]
    assert sw == hc.sigma_sweep({"slab": base}, x, y, num_classes=3, sigmas=(0.0, 0.3 * V, 1.5 * V), n=500,
                                alpha=0.001, input_range=None)
    assert "vanished" in sw.to_markdown() and sw.plot(tmp_path / "sw.png").stat().st_size > 0
    json.dumps(sw.to_dict())


def test_bad_input():
    with pytest.raises(ValueError, match="width"):
        hc.SlabClassifier(0.0)
    with pytest.raises(ValueError, match="sigma"):
        hc.slab_probabilities(0.0, 1.0, -1.0)
    with pytest.raises(ValueError, match="width"):
        hc.vanishing_sigma(float("nan"))
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    base = hc.SlabClassifier(W)
    with pytest.raises(ValueError, match="sigmas"):
        hc.sigma_sweep(base, x, y, num_classes=3, sigmas=(0.1, -0.2))
    with pytest.raises(ValueError, match="sigmas"):
        hc.sigma_sweep(base, x, y, num_classes=3, sigmas=(0.1, 0.1))
    with pytest.raises(TypeError, match="y must"):
        hc.sigma_sweep(base, x, y.float(), num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        hc.sigma_sweep(base, x, y, num_classes=1)
    with pytest.raises(TypeError, match="models"):
        hc.sigma_sweep({}, x, y, num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        hc.sigma_sweep(base, x, y + 5, num_classes=3)
    smooth = Smooth(base, num_classes=3, sigma=0.5, input_range=None)
    cert = smooth.certify(torch.zeros(2), n_select=10, n_estimate=50, alpha=0.01)
    with pytest.raises(ValueError, match="base_predict"):
        row_from_certificate(0, 1, cert, base_predict=-1)
    row = row_from_certificate(0, 1, cert, base_predict=1)
    with pytest.raises(ValueError, match="base_predict"):
        RadiusReport([dict(row, base_predict="x")])
