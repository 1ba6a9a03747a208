"""Per-class margin bounds reused across nested boxes, and batched verification of several images.

* ``_Bounder.class_margins``: every per-class lower bound lies below the true margins sampled in its box
  (both ends + interior points, the family's own ``apply``); classes a containing box already proved are not
  bounded again (rows with nothing left are skipped) and known bounds never decrease.
* Certificates of the splitting that reuses the bounds of the piece a sub-interval was cut from are sound:
  a dense grid of the REFERENCE function (torchvision ``rotate``) inside the certified range never flips.

Failure budget: zero (deterministic seeds; tolerance 1e-4 logits = margin_tol, covering float32).
"""
from __future__ import annotations

import math

import torch
from torch import nn

import semantic_layers
from certify.semantic import verify_semantic
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
    cls = b.class_margins(lo, hi)
    assert cls.shape == (5, 3) and b.n_bounded == 5
    g = torch.Generator().manual_seed(2)
    for s in range(5):
        th = torch.cat([lo[s:s + 1], hi[s:s + 1], lo[s] + torch.rand(20, 1, generator=g, dtype=torch.float64)
                        * (hi[s] - lo[s])])
        true = _class_margins_at(model, p, x, label, th)
        assert (true.min(dim=0).values >= cls[s] - TOL).all(), (s, true.min(dim=0).values, cls[s])
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
