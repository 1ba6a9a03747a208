"""Per-class margin bounds reused across nested boxes, and batched verification of several images.

* ``_Bounder.class_margins``: every per-class lower bound lies below the true margins sampled in its box
  (both ends + interior points, the family's own ``apply``); classes a containing box already proved are not
  bounded again (rows with nothing left are skipped) and known bounds never decrease.
* Certificates of the splitting that reuses the bounds of the piece a sub-interval was cut from are sound:
  a dense grid of the REFERENCE function (torchvision ``rotate``) inside the certified range never flips.
* ``verify_semantic_batch``: the certified ranges of an image are the same alone and in a batch of
  several; a dense grid of the reference function ``clip(x + b, 0, 1)`` inside them never flips, every
  bounded box's margin lower bound lies below the sampled margins, every reported flip flips and matches
  the one-image search (``attack_1d``) to 1e-6; ``semantic_report(image_batch=N)`` writes the same certified
  ranges as ``image_batch=1``. Bad input: clear errors.

Failure budget: zero (deterministic seeds; tolerance 1e-4 logits = margin_tol, covering float32).
"""
from __future__ import annotations

import math

import pytest
import torch
from test_semantic import TinyDataset  # the tiny in-memory dataset of the semantic tests
from torch import nn

import semantic_layers
from certify import lirpa
from certify.semantic import SemanticReport, semantic_report, verify_semantic
from certify.semantic.attack import attack_1d
from certify.semantic.batch import batchable, verify_semantic_batch
from certify.semantic.bounds import _Bounder, _needed_columns

TOL = 1e-4


def _pool_model(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 16, 16), nn.ReLU(), nn.Linear(16, classes)).eval()


def _image(seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _class_margins_at(model, p, x, label, theta):
    with torch.no_grad():
        z = model(p.apply(x, theta.float()))
    others = [j for j in range(z.shape[1]) if j != label]
    return z[:, label:label + 1] - z[:, others]


def test_needed_columns_pads_by_repetition():
    need = torch.tensor([[True, False, True], [False, True, False]])
    cols = _needed_columns(need)
    assert cols.tolist() == [[0, 2], [1, 1]]


def test_class_margins_sound_and_reuse_known_bounds():
    model, x = _pool_model(), _image()
    p = semantic_layers.get("rotation")
    label = int(model(x[None]).argmax())
    b = _Bounder(model, x, label, 4, p, method="crown", baseline=None, batch_size=4, alpha_iterations=5,
                 margin_tol=TOL)
    lo = torch.tensor([[-2.0], [0.0], [5.0], [-10.0], [1.0]], dtype=torch.float64)
    hi = lo + torch.tensor([[2.0], [0.5], [0.25], [4.0], [0.125]], dtype=torch.float64)
    probed = b.class_margins(lo, hi)            # first the hardest class; the rest only where it verifies
    assert probed.shape == (5, 3) and b.n_bounded >= 5
    cls = b.class_margins(lo, hi, torch.full((5, 3), -math.inf))      # every class of every row
    g = torch.Generator().manual_seed(2)
    for s in range(5):
        th = torch.cat([lo[s:s + 1], hi[s:s + 1], lo[s] + torch.rand(20, 1, generator=g, dtype=torch.float64)
                        * (hi[s] - lo[s])])
        true = _class_margins_at(model, p, x, label, th).min(dim=0).values
        for bound in (probed[s], cls[s]):
            assert (true >= bound - TOL).all(), (s, true, bound)
        assert (probed[s].min() > TOL) == (cls[s].min() > TOL)       # the same rows verify
    # known bounds of containing boxes: classes proven there are not re-bounded; nothing decreases
    known = torch.full((5, 3), -math.inf)
    known[0] = 1.0                          # everything proven: row 0 is not bounded at all
    known[1, 0] = 50.0                      # one class proven, by a large margin
    before = b.n_bounded
    again = b.class_margins(lo, hi, known)
    assert b.n_bounded - before == 4
    assert again[0].tolist() == [1.0, 1.0, 1.0]
    assert float(again[1, 0]) == 50.0
    assert (again[1:] >= torch.minimum(cls[1:], known[1:].clamp_min(-1e9)) - 1e-6).all()
    assert torch.allclose(again[2:], cls[2:], atol=1e-5)        # same boxes, same classes: same bounds


def test_rotation_certificates_sound_against_torchvision():
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    model, p = _pool_model(), semantic_layers.get("rotation")
    for seed in (1, 2, 3):
        x = _image(seed)
        label = int(model(x[None]).argmax())
        cert = verify_semantic(model, x, label, p, max_param=30.0, attack=False)
        lo, hi = cert.certified
        assert hi > lo
        thetas = torch.linspace(lo, hi, 301).tolist()
        imgs = torch.stack([TF.rotate(x, t, interpolation=InterpolationMode.BILINEAR) for t in thetas])
        with torch.no_grad():
            flips = int((model(imgs).argmax(dim=1) != label).sum())
        assert flips == 0, (seed, cert.certified)




def _batch_case(n: int = 6):
    """A small MaxPool CNN and n images (grey levels spread over [0, 1] with exact zeros, as in Fashion-MNIST)
    labelled with the model's predictions; the bias of class 0 is lowered to the mean of its lead over class 3,
    so the two classes nearly tie and a brightness change flips some labels."""
    model = _pool_model()
    g = torch.Generator().manual_seed(7)
    xs = torch.rand(n, 1, 8, 8, generator=g) * (torch.rand(n, 1, 8, 8, generator=g) > 0.3)
    with torch.no_grad():
        z = model(xs)
        model[-1].bias[0] -= (z[:, 0] - z[:, 3]).mean()
        labels = model(xs).argmax(dim=1)
    return model, xs, labels.tolist()


def test_batchable_families():
    assert batchable(semantic_layers.get("brightness"), (1, 8, 8))
    assert batchable(semantic_layers.get("brightness"), (3, 8, 8))
    assert batchable(semantic_layers.get("rotation"), (1, 8, 8))
    for name in ("contrast", "brightness_contrast"):
        assert not batchable(semantic_layers.get(name), (1, 8, 8)), name


def test_batch_equals_alone_and_is_sound():
    model, xs, labels = _batch_case()
    p = semantic_layers.get("brightness")
    kw = dict(max_param=1.0, n_splits=8, max_refine=3, attack_grid=201, attack_steps=10)
    together = verify_semantic_batch(model, xs, labels, p, **kw)
    alone = [verify_semantic_batch(model, xs[i:i + 1], labels[i:i + 1], p, **kw)[0] for i in range(len(labels))]
    assert [c.certified for c in together] == [c.certified for c in alone]
    assert any(c.certified[1] > c.certified[0] for c in together), "nothing certified on the fixture"
    assert any(a is not None for c in together for a in c.attack), "no flip on the fixture"
    g = torch.Generator().manual_seed(3)
    for x, y, cert in zip(xs, labels, together):
        lo, hi = cert.certified
        b = torch.linspace(lo, hi, 1001)
        with torch.no_grad():
            assert int((model((x[None] + b.view(-1, 1, 1, 1)).clamp(0, 1)).argmax(1) != y).sum()) == 0
        for (plo,), (phi,), lb, verified in cert.pieces:
            th = torch.cat([torch.tensor([plo, phi]), plo + torch.rand(10, generator=g, dtype=torch.float64)
                            * (phi - plo)])
            m = _class_margins_at(model, p, x, y, th.unsqueeze(1)).min(dim=1).values
            assert float(m.min()) >= lb - TOL and verified == (lb > TOL)
        single = attack_1d(model, p, x, y, -1.0, 1.0, grid=201, steps=10, batch=256)
        for a, s in zip(cert.attack, single):
            assert (a is None) == (s is None)
            if a is not None:
                assert abs(a - s) < 1e-6
                with torch.no_grad():
                    assert int(model(p.apply(x, torch.tensor([[a]])).float()).argmax()) != y
        assert cert.attack[0] is None or cert.attack[0] < lo
        assert cert.attack[1] is None or cert.attack[1] > hi


def test_report_image_batch_same_rows(tmp_path):
    model, xs, labels = _batch_case(5)
    ys = torch.tensor(labels)
    ys[3] = (ys[3] + 1) % 4                       # one misclassified example
    ds = TinyDataset(xs, ys)
    perts = [semantic_layers.get("brightness"), semantic_layers.get("rotation")]
    kw = dict(max_param={"brightness": 1.0, "rotation": 5.0}, n_splits=4, max_refine=2, attack_grid=51,
              attack_steps=4, plots=False, verbose=False)
    one = semantic_report(model, ds, perts, out=tmp_path / "one", **kw)
    many = semantic_report(model, ds, perts, out=tmp_path / "many", image_batch=3, **kw)
    key = ("idx", "perturbation", "correct", "certified_lo", "certified_hi", "n_splits")
    assert [tuple(r[k] for k in key) for r in one.rows] == [tuple(r[k] for k in key) for r in many.rows]
    assert many.settings["image_batch"] == 3 and "image_batch" not in one.settings


def test_batch_bad_input(tmp_path):
    model, xs, labels = _batch_case(2)
    with pytest.raises(ValueError, match="cannot be verified in batches"):
        verify_semantic_batch(model, xs, labels, semantic_layers.get("contrast"))
    with pytest.raises(ValueError, match="same, non-zero length"):
        verify_semantic_batch(model, xs, labels[:1], semantic_layers.get("brightness"))
    with pytest.raises(ValueError, match="batch of images"):
        verify_semantic_batch(model, xs[0], labels[:1], semantic_layers.get("brightness"))
    with pytest.raises(ValueError, match="image_batch"):
        semantic_report(model, TinyDataset(xs, torch.tensor(labels)), [semantic_layers.get("brightness")],
                        out=tmp_path / "r", image_batch=0, verbose=False)
    assert not (tmp_path / "r").exists()
    net = lirpa.bounded_module(nn.Sequential(nn.Linear(3, 2)), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="constants must have per-row shapes"):
        lirpa.compute_bounds(net, x_lower=torch.zeros(1, 3), x_upper=torch.ones(1, 3), constants=(torch.zeros(1, 2),))


def test_rotation_batch_equals_alone_and_verify_semantic():
    """Kind "box": the batched rows are the pixel boxes of verify_semantic's splitting: the same ranges."""
    model, xs, labels = _batch_case(3)
    p = semantic_layers.get("rotation")
    kw = dict(max_param=20.0, n_splits=8, max_refine=3, attack=False)
    together = verify_semantic_batch(model, xs, labels, p, **kw)
    direct = [verify_semantic(model, x, y, p, **kw) for x, y in zip(xs, labels)]
    assert [c.certified for c in together] == [c.certified for c in direct]
    assert any(c.certified != (0.0, 0.0) for c in together)


def test_cli_image_batch(tmp_path, capsys):
    from certify import cli

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        cli.main(["-q", "semantic", "--pretrained", "fmnist_cnn", "--image-batch", "0", "--out", str(out)])
    assert info.value.code == 2
    assert "--image-batch" in capsys.readouterr().err
    assert not out.exists()
    cli.main(["-q", "semantic", "--pretrained", "fmnist_cnn", "--perturbation", "brightness", "--max-param", "0.1",
              "--max", "3", "--n-splits", "2", "--max-refine", "1", "--attack-grid", "11", "--image-batch", "3",
              "--out", str(out)])
    rows = SemanticReport.from_tsv(out / "rows.tsv").rows
    assert len(rows) == 3 and SemanticReport.from_tsv(out / "rows.tsv").settings["image_batch"] == 3
