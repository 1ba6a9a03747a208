"""Semantic perturbation verification (Semantify-NN with auto_LiRPA) and its reports.

:func:`verify_semantic` proves that every parameter ``theta`` of a semantic perturbation (hue shift,
brightness, rotation, ... from :mod:`semantic_layers`) in an interval keeps a classifier's label,
and searches for the nearest parameter that flips it:

* kind ``"layer"`` families: the network ``theta -> image -> logits`` (``perturbation``'s exact
  Linear/ReLU layer composed with the model) is bounded with auto_LiRPA over boxes of theta, with the
  margin specification ``C = e_label - e_j`` (all ``j != label``). The parameter range is split into
  sub-intervals bounded as batch rows of one call; a sub-interval that fails is bisected (up to
  ``max_refine`` times) before giving up. Two speed-ups keep the bound exactly as tight as plain
  CROWN/alpha-CROWN on the composed network while making it several times faster: the model alone
  is first bounded over the sound per-pixel box of each sub-interval (``perturbation.pixel_bounds``)
  - sub-intervals this already verifies are done; for the others the semantic layer is rebuilt on
  the union of their sub-intervals (ReLUs that are linear there are folded away) and the model's
  intermediate bounds are passed to the composed bound as reference bounds (neurons they prove
  stable are not re-bounded); the larger of the two margin lower bounds is used.
* kind ``"box"`` families (rotation): the model is bounded over the per-pixel box of each
  sub-interval (sound bounds of the interpolated pixel values).

Guarantee: ``certified = (lo, hi)`` means every ``theta`` in ``[lo, hi]`` gives an image whose
predicted class is ``label`` - each sub-interval's margin lower bounds all exceed ``margin_tol``
(default 1e-4 logits, which absorbs float32 rounding in auto_LiRPA and the <= ~1e-6 per-pixel
difference between a family's float32 layer and its ``apply``). ``attack`` holds the nearest
flipping parameters found (each one checked with ``perturbation.apply`` + ``model``), so the true
robust range lies between ``certified`` and ``attack``; ``tightness`` is their width ratio.

Two-parameter families (brightness_contrast) certify the largest box ``s * requested_range``
(uniform scale s in [0, 1]) whose grid cells all verify; ``certified`` then holds the per-parameter
ranges of that box.

Naive baseline (``baseline="linf-box"`` / ``"linf-ball"``): bound the same parameter change as an
l-inf pixel perturbation - the per-pixel envelope of each sub-interval, or the l-inf ball around x
whose radius is the largest pixel change over the sub-interval - to show what the exact semantic
layer gains.

Example::

    import certify, semantic_layers
    model = certify.models.pretrained("fmnist_cnn")
    x, y = certify.data.load_dataset("fmnist")[0]
    res = certify.verify_semantic(model, x, int(y), semantic_layers.get("brightness"), method="crown")
    res.certified, res.attack, res.tightness

:func:`semantic_report` runs this over a dataset (resumable ``rows.tsv``) and returns a
:class:`SemanticReport` (certified accuracy vs parameter range, tightness, plots).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import lirpa

logger = logging.getLogger(__name__)

METHODS = ("ibp", "crown", "alpha-crown")
BASELINES = ("linf-box", "linf-ball")

__all__ = ["SemanticCertificate", "SemanticReport", "verify_semantic", "semantic_report", "METHODS",
           "BASELINES", "ROW_COLUMNS"]


# ==============================================================================================
# validation
# ==============================================================================================
def _check_method(method: Any) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {METHODS}; got {type(method).__name__}")
    m = method.lower()
    if m not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    return m


def _check_baseline(baseline: Any) -> str | None:
    if baseline is None:
        return None
    if not isinstance(baseline, str) or baseline.lower() not in BASELINES:
        raise ValueError(f"baseline must be None or one of {BASELINES}; got {baseline!r}")
    return baseline.lower()


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    return int(value)


def _check_perturbation(perturbation: Any) -> None:
    needed = ("name", "param_names", "kind", "apply", "pixel_bounds", "validate_range", "check_input",
              "default_range", "domain")
    missing = [a for a in needed if not hasattr(perturbation, a)]
    if missing:
        raise TypeError(f"perturbation must be a semantic_layers.SemanticPerturbation (missing {missing}); "
                        f"got {type(perturbation).__name__}")
    if perturbation.kind not in ("layer", "box"):
        raise TypeError(f"perturbation.kind must be 'layer' or 'box'; got {perturbation.kind!r}")


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")


def _image(perturbation: Any, x: Any) -> torch.Tensor:
    """Validate one image (C,H,W) (or (1,C,H,W)) in [0,1]; return float32 (C,H,W)."""
    xb = perturbation.check_input(x)
    if xb.shape[0] != 1:
        raise ValueError(f"x must be one image (C,H,W); got shape {tuple(x.shape)}")
    return xb[0].detach().float()


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x.unsqueeze(0) if x.dim() == 3 else x)
    if out.dim() != 2:
        raise ValueError(f"model must return logits of shape (B, num_classes); got {tuple(out.shape)}")
    return out


def _resolve_range(perturbation: Any, max_param: Any) -> tuple[tuple[float, float], ...]:
    """Requested parameter box as k (lo, hi) pairs; every pair contains 0.

    ``max_param``: None (the family's default range), a number r (``[-r, r]`` for every parameter),
    a (lo, hi) pair (k = 1) or k pairs (k = 2), or a mapping ``{family name: any of these}``.
    """
    k = len(perturbation.param_names)
    if isinstance(max_param, Mapping):
        if perturbation.name not in max_param:
            raise ValueError(f"max_param has no entry for perturbation {perturbation.name!r}; "
                             f"keys: {sorted(max_param)}")
        max_param = max_param[perturbation.name]
    if max_param is None:
        rng = perturbation.default_range
        pairs = (tuple(rng),) if k == 1 else tuple(tuple(r) for r in rng)
    elif isinstance(max_param, bool):
        raise TypeError("max_param must be a number, a (lo, hi) pair or None; got a bool")
    elif isinstance(max_param, (int, float, np.integer, np.floating)):
        r = float(max_param)
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"max_param must be a positive finite number; got {max_param!r}")
        pairs = ((-r, r),) * k
    else:
        try:
            seq = [v for v in max_param]
        except TypeError:
            raise TypeError(f"max_param must be None, a number, a (lo, hi) pair or a mapping; "
                            f"got {max_param!r}") from None
        if k == 1 and len(seq) == 2 and all(isinstance(v, (int, float, np.integer, np.floating)) for v in seq):
            pairs = ((float(seq[0]), float(seq[1])),)
        elif len(seq) == k and all(isinstance(v, (tuple, list)) and len(v) == 2 for v in seq):
            pairs = tuple((float(a), float(b)) for a, b in seq)
        elif k == 2 and len(seq) == 2 and all(isinstance(v, (int, float, np.integer, np.floating)) for v in seq):
            pairs = tuple((-float(v), float(v)) for v in seq)
        else:
            raise ValueError(f"max_param for {perturbation.name!r} (k={k}) must be a number, "
                             f"{'a (lo, hi) pair' if k == 1 else 'k (lo, hi) pairs or k numbers'}; got {max_param!r}")
    pairs = tuple((float(a), float(b)) for a, b in pairs)
    for (a, b), name in zip(pairs, perturbation.param_names):
        if not (a <= 0.0 <= b):
            raise ValueError(f"the range of {name!r} must contain 0 (theta = 0 is the identity); got {(a, b)}")
    lo = [a for a, _ in pairs]
    hi = [b for _, b in pairs]
    perturbation.validate_range(lo if k > 1 else lo[0], hi if k > 1 else hi[0])
    return pairs


# ==============================================================================================
# the certificate
# ==============================================================================================
@dataclasses.dataclass(frozen=True)
class SemanticCertificate:
    """Result of :func:`verify_semantic` (echoes its inputs).

    Parameter ranges have the shape of ``requested``: ``(lo, hi)`` for one parameter,
    ``((lo1, hi1), (lo2, hi2))`` for two.

    * ``certified``: every parameter in it provably keeps ``label`` (largest contiguous interval
      around 0 whose sub-intervals all verify; for k = 2 the box ``certified_scale * requested``).
      ``(0.0, 0.0)`` (or zero pairs) when nothing beyond theta = 0 verifies, or when the clean
      image is misclassified (``clean_correct`` False; then nothing is certified, not even 0).
    * ``attack``: k = 1: ``(lo, hi)`` nearest flipping parameters found below / above 0 (None on
      a side where the search found no flip); k = 2: the per-parameter ranges of the box
      ``attack_scale * requested`` whose boundary holds the flip ``attack_theta`` (None if none).
    * ``tightness``: certified width / attack width over the sides where a flip was found (k = 2:
      certified_scale / attack_scale); None if no flip was found. 1.0 = the proof is as good as
      the attack.
    * ``pieces``: every parameter box that was bounded: ``(lo, hi, min margin lower bound,
      verified)`` with lo/hi tuples of k floats.
    """

    perturbation: str
    param_names: tuple[str, ...]
    units: str
    kind: str
    method: str
    baseline: str | None
    label: int
    predicted: int
    clean_correct: bool
    requested: tuple
    certified: tuple
    certified_scale: float | None
    attack: tuple | None
    attack_theta: tuple | None
    attack_scale: float | None
    tightness: float | None
    n_splits: int
    n_refined: int
    max_refine: int
    margin_tol: float
    pieces: tuple = dataclasses.field(repr=False)
    time_s: float = 0.0
    attack_time_s: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def certified_ranges(self) -> tuple[tuple[float, float], ...]:
        """k (lo, hi) certified pairs (also for k = 1)."""
        return (tuple(self.certified),) if self.n_params == 1 else tuple(tuple(c) for c in self.certified)

    def attack_ranges(self) -> tuple[tuple[float | None, float | None], ...]:
        """k (lo, hi) attack pairs; None entries where no flip was found."""
        if self.attack is None:
            return ((None, None),) * self.n_params
        return (tuple(self.attack),) if self.n_params == 1 else tuple(tuple(a) for a in self.attack)

    def requested_ranges(self) -> tuple[tuple[float, float], ...]:
        return (tuple(self.requested),) if self.n_params == 1 else tuple(tuple(r) for r in self.requested)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


# ==============================================================================================
# bounding parameter boxes
# ==============================================================================================
class _Bounder:
    """Margin lower bounds of ``model`` over parameter boxes of one perturbation of one image."""

    def __init__(self, model: nn.Module, x: torch.Tensor, label: int, num_classes: int, perturbation: Any,
                 *, method: str, baseline: str | None, batch_size: int, alpha_iterations: int,
                 margin_tol: float, model_net: lirpa.BoundedNet | None = None):
        self.model = model
        self.x = x
        self.label = label
        self.num_classes = num_classes
        self.p = perturbation
        self.method = method
        self.baseline = baseline
        self.batch_size = batch_size
        self.alpha_iterations = alpha_iterations
        self.margin_tol = margin_tol
        self.model_net = model_net
        self._spec: dict[str, torch.Tensor] | None = None
        self.n_bounded = 0

    # the model alone (pixel boxes)
    def _model_bounded(self) -> lirpa.BoundedNet:
        if self.model_net is None:
            self.model_net = lirpa.bounded_module(self.model, self.x.unsqueeze(0))
        return self.model_net

    def _layer(self, lo: torch.Tensor, hi: torch.Tensor) -> nn.Module:
        """The exact theta -> image network of the family on the box [lo, hi] (k values each).

        Built from the family's ReLU expansion restricted to the box (units linear there are
        folded), which is exact on the box and much smaller than ``perturbation.layer(x)``."""
        from semantic_layers.base import build_relu_layer

        if self._spec is None:
            dlo, dhi = self.p.domain_tensors()
            self._spec = self.p._layer_spec(self.x.double(), dlo, dhi)
        return build_relu_layer(**self._spec, domain_lo=lo.double(), domain_hi=hi.double(),
                                image_shape=tuple(self.x.shape), dtype=torch.float32)

    def _pixel_box(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pl, pu = self.p.pixel_bounds(self.x, lo.double(), hi.double())
        pl, pu = pl.float(), pu.float()
        if self.baseline == "linf-ball":
            eps = torch.maximum(pu - self.x, self.x - pl).flatten(1).amax(dim=1).clamp_min(0)
            eps = eps.view(-1, 1, 1, 1)
            pl = (self.x - eps).clamp(0, 1)
            pu = (self.x + eps).clamp(0, 1)
            # clamping to [0, 1] is sound: apply() returns images in [0, 1]
            pl = torch.minimum(pl, self.x.expand_as(pl))
            pu = torch.maximum(pu, self.x.expand_as(pu))
        return pl, pu

    def margins(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """(S,) lower bounds of min_j (logit_label - logit_j) over each box ``lo[s] <= theta <= hi[s]``."""
        out = []
        for s0 in range(0, lo.shape[0], self.batch_size):
            out.append(self._margins_chunk(lo[s0:s0 + self.batch_size], hi[s0:s0 + self.batch_size]))
        self.n_bounded += lo.shape[0]
        return torch.cat(out)

    def _margins_chunk(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        S = lo.shape[0]
        C = lirpa.margin_spec(torch.full((S,), self.label, dtype=torch.long), self.num_classes)
        pl, pu = self._pixel_box(lo, hi)
        composed = self.baseline is None and self.p.kind == "layer"
        # the model over the pixel box: the certificate itself for "box" families and baselines;
        # for "layer" families a cheap CROWN pass whose intermediate bounds speed up the composed one
        box_method = ("ibp" if self.method == "ibp" else "crown") if composed else self.method
        mnet = self._model_bounded()
        box = lirpa.compute_bounds(mnet, x_lower=pl, x_upper=pu, method=box_method, C=C,
                                   alpha_iterations=self.alpha_iterations, bound_upper=False)
        best = box.lower.min(dim=1).values
        todo = best <= self.margin_tol        # rows the pixel box alone does not verify
        if composed and todo.any():
            rows = todo.nonzero().flatten()
            model_refs = None
            if box_method != "ibp":
                model_refs = [None if r is None else (r[0][rows], r[1][rows]) for r in lirpa.relu_input_bounds(mnet)]
            lo_t, hi_t = lo[rows], hi[rows]
            union_lo, union_hi = lo_t.min(dim=0).values, hi_t.max(dim=0).values
            net = nn.Sequential(self._layer(union_lo, union_hi), self.model).eval()
            cnet = lirpa.bounded_module(net, lo_t.float())
            reference = self._align(cnet, mnet, model_refs)
            comp = lirpa.compute_bounds(cnet, x_lower=lo_t.float(), x_upper=hi_t.float(), method=self.method,
                                        C=C[rows], alpha_iterations=self.alpha_iterations, reference=reference,
                                        bound_upper=False)
            best = best.clone()
            best[rows] = torch.maximum(best[rows], comp.lower.min(dim=1).values)
        return best

    @staticmethod
    def _align(cnet: lirpa.BoundedNet, mnet: lirpa.BoundedNet, model_refs: Any) -> Any:
        """Reference bounds for the composed network: the model's ReLU inputs are the suffix of its
        ReLU inputs. Returns None (plain bounding, slower but equally sound) if the graphs differ."""
        if model_refs is None:
            return None
        comp, mod = lirpa.relu_inputs(cnet), lirpa.relu_inputs(mnet)
        n = len(mod)
        if n == 0 or len(comp) < n or comp[len(comp) - n:] != mod:
            logger.debug("semantic: model graph not found as a suffix of the composed graph; "
                         "bounding without reference bounds")
            return None
        return [None] * (len(comp) - n) + list(model_refs)


# ==============================================================================================
# adaptive splitting
# ==============================================================================================
def _certify_1d(bounder: _Bounder, lo: float, hi: float, *, n_splits: int, max_refine: int,
                tol: float, pieces: list) -> tuple[float, float, int]:
    """Largest [c_lo, c_hi] around 0 inside [lo, hi] whose pieces verify; returns (c_lo, c_hi, n_refined)."""
    total = hi - lo
    ends = {}
    n_refined = 0
    for sign, end in ((-1, lo), (1, hi)):
        if end == 0.0:
            ends[sign] = 0.0
            continue
        n_side = max(1, int(round(n_splits * abs(end) / total))) if total > 0 else 1
        edges = torch.linspace(0.0, end, n_side + 1, dtype=torch.float64).tolist()
        edges[-1] = end
        side = [[edges[i], edges[i + 1], 0, None] for i in range(n_side)]   # inner, outer, depth, lb
        _bound_side(bounder, side, pieces)
        certified_to = end
        while True:
            first = next((i for i, p in enumerate(side) if p[3] <= tol), None)
            if first is None:
                break
            inner, outer, depth, _ = side[first]
            if depth >= max_refine:
                certified_to = inner
                break
            # two bisection levels per round (4 sub-intervals in one call: a call costs much more
            # than a row), one when only one level is left
            levels = min(2, max_refine - depth)
            cuts = torch.linspace(inner, outer, 2 ** levels + 1, dtype=torch.float64).tolist()
            cuts[0], cuts[-1] = inner, outer
            subs = [[a, b, depth + levels, None] for a, b in zip(cuts[:-1], cuts[1:])]
            _bound_side(bounder, subs, pieces)
            n_refined += 1
            side[first:first + 1] = subs
        ends[sign] = certified_to
    return ends[-1], ends[1], n_refined


def _bound_side(bounder: _Bounder, side: list, pieces: list) -> None:
    lo = torch.tensor([[min(p[0], p[1])] for p in side], dtype=torch.float64)
    hi = torch.tensor([[max(p[0], p[1])] for p in side], dtype=torch.float64)
    lb = bounder.margins(lo, hi)
    for p, a, b, v in zip(side, lo[:, 0].tolist(), hi[:, 0].tolist(), lb.tolist()):
        p[3] = float(v)
        pieces.append(((a,), (b,), float(v)))


def _certify_2d(bounder: _Bounder, ranges: tuple, *, n_splits: int, max_refine: int, tol: float,
                pieces: list) -> tuple[float, int]:
    """Largest scale s such that every cell of the box s * ranges verifies.

    The box is grown ring by ring (annuli between scales j/m, m = n_splits // 2, each cut into grid
    cells); a failing cell is quartered up to ``max_refine`` times; a ring that still fails is split
    radially in two (up to ``max_refine`` times) so the certified scale is resolved to
    1 / (m 2^max_refine)."""
    m = max(1, n_splits // 2)
    levels = [j / m for j in range(m + 1)]
    n_refined = 0

    def segments(i: int, sa: float, sb: float) -> tuple[list, list]:
        lo_i, hi_i = ranges[i]
        outer = []
        if lo_i < 0:
            outer.append((sb * lo_i, sa * lo_i))
        if hi_i > 0:
            outer.append((sa * hi_i, sb * hi_i))
        if not outer:                       # degenerate axis: always 0
            return [(0.0, 0.0)], []
        if sa == 0:
            return [], outer
        pts = sorted({0.0, sa * lo_i, sa * hi_i} | {lv * lo_i for lv in levels if lv < sa}
                     | {lv * hi_i for lv in levels if lv < sa})
        inner = [(a, b) for a, b in zip(pts[:-1], pts[1:]) if b > a] or [(0.0, 0.0)]
        return inner, outer

    def annulus(sa: float, sb: float) -> list:
        (in1, out1), (in2, out2) = segments(0, sa, sb), segments(1, sa, sb)
        cells = []
        for s1 in in1 + out1:
            for s2 in in2 + out2:
                if s1 in out1 or s2 in out2:
                    cells.append(((s1[0], s2[0]), (s1[1], s2[1])))
        return cells

    def verified(sa: float, sb: float) -> bool:
        nonlocal n_refined
        cells = annulus(sa, sb)
        lb = _bound_cells(bounder, cells, pieces)
        failing = [c for c, v in zip(cells, lb) if v <= tol]
        depth = 0
        while failing and depth < max_refine:
            depth += 1
            n_refined += len(failing)
            subs = [q for c in failing for q in _quarter(*c)]
            sub_lb = _bound_cells(bounder, subs, pieces)
            failing = [c for c, v in zip(subs, sub_lb) if v <= tol]
        return not failing

    certified = 0.0
    queue = [(levels[j - 1], levels[j], 0) for j in range(1, m + 1)]
    while queue:
        sa, sb, depth = queue.pop(0)
        if verified(sa, sb):
            certified = sb
            continue
        if depth >= max_refine:
            break
        mid = (sa + sb) / 2
        n_refined += 1
        queue = [(sa, mid, depth + 1), (mid, sb, depth + 1)]
    return certified, n_refined


def _quarter(lo: tuple, hi: tuple) -> list[tuple[tuple, tuple]]:
    splits = []
    for a, b in zip(lo, hi):
        mid = (a + b) / 2
        splits.append([(a, mid), (mid, b)] if b > a else [(a, b)])
    return [((s1[0], s2[0]), (s1[1], s2[1])) for s1 in splits[0] for s2 in splits[1]]


def _bound_cells(bounder: _Bounder, cells: list, pieces: list) -> list[float]:
    lo = torch.tensor([c[0] for c in cells], dtype=torch.float64)
    hi = torch.tensor([c[1] for c in cells], dtype=torch.float64)
    lb = bounder.margins(lo, hi).tolist()
    for (a, b), v in zip(cells, lb):
        pieces.append((tuple(a), tuple(b), float(v)))
    return lb


# ==============================================================================================
# attacks
# ==============================================================================================
# the gradient refinement of the flip search: starting points (lowest-margin grid parameters
# before the nearest grid flip) and at most this many sign-gradient steps from them
_GRAD_STARTS = 2
_GRAD_STEPS = 10


def _margin_batch(model: nn.Module, perturbation: Any, x: torch.Tensor, theta: torch.Tensor,
                  label: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(margins, predictions) for parameter rows theta (N, k): margin = logit_label - max other."""
    margins, preds = [], []
    with torch.no_grad():
        for s in range(0, theta.shape[0], batch):
            logits = model(perturbation.apply(x, theta[s:s + batch].to(x.dtype)))
            other = logits.clone()
            other[:, label] = -float("inf")
            margins.append(logits[:, label] - other.max(dim=1).values)
            preds.append(logits.argmax(dim=1))
    return torch.cat(margins), torch.cat(preds)


def _grad_margin(model: nn.Module, perturbation: Any, x: torch.Tensor, theta: torch.Tensor,
                 label: int) -> tuple[torch.Tensor, torch.Tensor]:
    th = theta.detach().to(x.dtype).requires_grad_(True)
    with torch.enable_grad():
        logits = model(perturbation.apply(x, th))
        other = logits.clone()
        other[:, label] = -float("inf")
        margin = logits[:, label] - other.max(dim=1).values
        (g,) = torch.autograd.grad(margin.sum(), th)
    return margin.detach(), g.detach().to(theta.dtype)


def _attack_1d(model, perturbation, x, label, lo, hi, *, grid: int, steps: int, batch: int):
    """Nearest flips below and above 0 in [lo, hi]: dense grid, sign-gradient steps, bisection.

    Returns (flip_lo | None, flip_hi | None); every returned value was checked to flip."""
    thetas = torch.unique(torch.cat([torch.linspace(lo, hi, grid, dtype=torch.float64),
                                     torch.zeros(1, dtype=torch.float64)]))
    margins, preds = _margin_batch(model, perturbation, x, thetas.unsqueeze(1), label, batch)
    flips = preds != label
    result = {}
    for sign in (-1, 1):
        side = (thetas * sign) > 0
        if not side.any():
            result[sign] = None
            continue
        t_side = thetas[side] * sign                     # magnitudes, increasing away from 0
        order = torch.argsort(t_side)
        t_side, f_side, m_side = t_side[order], flips[side][order], margins[side][order]
        best = float(t_side[f_side][0]) if f_side.any() else None
        limit = best if best is not None else float(t_side[-1])
        # sign-gradient descent on the margin from the lowest-margin grid points before the flip
        inside = t_side < limit if best is not None else torch.ones_like(f_side)
        if steps > 0 and inside.any():
            cand = t_side[inside][torch.argsort(m_side[inside])[:_GRAD_STARTS]]
            step = (abs(hi - lo) / max(grid - 1, 1)) * 2.0
            t = cand.clone()
            n_grad = min(steps, _GRAD_STEPS)
            for it in range(n_grad):
                mg, g = _grad_margin(model, perturbation, x, (t * sign).unsqueeze(1), label)
                flipped = mg <= 0
                if flipped.any():
                    # confirm with the argmax (margin <= 0 may be a tie)
                    _, pr = _margin_batch(model, perturbation, x, (t[flipped] * sign).unsqueeze(1), label, batch)
                    real = t[flipped][pr != label]
                    if real.numel() and (best is None or float(real.min()) < best):
                        best = float(real.min())
                        limit = best
                t = (t - step * (1 - it / n_grad) * torch.sign(g[:, 0] * sign)).clamp(0.0, limit)
        if best is not None and steps > 0:
            # bisection between the nearest non-flipping grid magnitude and the flip
            safe = t_side[t_side < best]
            a, b = (float(safe.max()) if safe.numel() else 0.0), best
            for _ in range(steps):
                mid = (a + b) / 2
                _, pr = _margin_batch(model, perturbation, x, torch.tensor([[mid * sign]], dtype=torch.float64),
                                      label, batch)
                if int(pr[0]) != label:
                    b = mid
                else:
                    a = mid
            best = b
        result[sign] = None if best is None else best * sign
    return result[-1], result[1]


def _scale_of(theta: torch.Tensor, ranges: tuple) -> torch.Tensor:
    """Smallest s with theta in the box s * ranges (per row)."""
    s = torch.zeros(theta.shape[0], dtype=torch.float64)
    for i, (lo_i, hi_i) in enumerate(ranges):
        t = theta[:, i]
        pos = torch.where(t > 0, t / hi_i if hi_i > 0 else torch.full_like(t, math.inf), torch.zeros_like(t))
        neg = torch.where(t < 0, t / lo_i if lo_i < 0 else torch.full_like(t, math.inf), torch.zeros_like(t))
        s = torch.maximum(s, torch.maximum(pos, neg))
    return s


def _attack_2d(model, perturbation, x, label, ranges, *, grid: int, steps: int, batch: int):
    """Smallest-scale flip in the box ``ranges``: grid, sign-gradient steps, bisection along the ray."""
    g = max(3, int(math.ceil(math.sqrt(grid))))
    axes = [torch.unique(torch.cat([torch.linspace(a, b, g, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]))
            for a, b in ranges]
    thetas = torch.cartesian_prod(*axes)
    margins, preds = _margin_batch(model, perturbation, x, thetas, label, batch)
    flips = preds != label
    scales = _scale_of(thetas, ranges)
    best_s, best_t = math.inf, None
    if flips.any():
        i = int(torch.argmin(torch.where(flips, scales, torch.full_like(scales, math.inf))))
        best_s, best_t = float(scales[i]), thetas[i].clone()
    if steps > 0:
        lim = best_s if best_t is not None else 1.0
        ok = scales < lim
        if ok.any():
            t = thetas[ok][torch.argsort(margins[ok])[:_GRAD_STARTS]].clone()
            lo_b = torch.tensor([a for a, _ in ranges], dtype=torch.float64)
            hi_b = torch.tensor([b for _, b in ranges], dtype=torch.float64)
            step = (hi_b - lo_b) / max(g - 1, 1) * 2.0
            n_grad = min(steps, _GRAD_STEPS)
            for it in range(n_grad):
                mg, gr = _grad_margin(model, perturbation, x, t, label)
                if (mg <= 0).any():
                    _, pr = _margin_batch(model, perturbation, x, t[mg <= 0], label, batch)
                    real = t[mg <= 0][pr != label]
                    if real.numel():
                        sc = _scale_of(real, ranges)
                        j = int(torch.argmin(sc))
                        if float(sc[j]) < best_s:
                            best_s, best_t = float(sc[j]), real[j].clone()
                lim_s = best_s if best_t is not None else 1.0
                t = t - step * (1 - it / n_grad) * torch.sign(gr)
                t = torch.max(torch.min(t, hi_b * lim_s), lo_b * lim_s)
    if best_t is not None and steps > 0:
        a, b = 0.0, 1.0          # fractions along the ray 0 -> best_t; b flips
        for _ in range(steps):
            mid = (a + b) / 2
            _, pr = _margin_batch(model, perturbation, x, (best_t * mid).unsqueeze(0), label, batch)
            if int(pr[0]) != label:
                b = mid
            else:
                a = mid
        best_t = best_t * b
        best_s = float(_scale_of(best_t.unsqueeze(0), ranges)[0])
    return (None, None) if best_t is None else (best_s, tuple(float(v) for v in best_t))


# ==============================================================================================
# verify_semantic
# ==============================================================================================
def verify_semantic(model: nn.Module, x: torch.Tensor, label: int, perturbation: Any, *,
                    method: str = "crown", max_param: Any = None, n_splits: int = 8,
                    max_refine: int = 4, attack: bool = True, attack_grid: int = 1001,
                    attack_steps: int = 20, batch_size: int = 32, seed: int = 0,
                    baseline: str | None = None, margin_tol: float = 1e-4,
                    alpha_iterations: int = 20, _model_net: lirpa.BoundedNet | None = None
                    ) -> SemanticCertificate:
    """Certify that ``perturbation`` with any parameter in the certified range keeps ``label``.

    Args:
        model: classifier on [0,1] images (any batch size), logits (B, K). Bounded in eval mode.
        x: one image (C,H,W) in [0,1] (colour families need C = 3).
        label: the class to certify, in [0, K).
        perturbation: a :class:`semantic_layers.SemanticPerturbation`.
        method: "crown" (default), "alpha-crown" (tighter, 10-100x slower) or "ibp" (fast, loose).
        max_param: requested range: None = the family's ``default_range``; r = ``[-r, r]``;
            ``(lo, hi)``; for two parameters ``((lo1, hi1), (lo2, hi2))`` or ``(r1, r2)``; or a
            mapping ``{family name: any of these}``. Must contain 0 and lie in the family's domain.
        n_splits: initial sub-intervals over the whole range (split between the two sides of 0 in
            proportion to their length); two parameters: grid cells per axis (n_splits // 2 rings).
        max_refine: how many times a failing sub-interval (cell) is bisected (quartered) before the
            certified range stops at it (one parameter: a round splits it into 4 = two bisection
            levels at once).
        attack, attack_grid, attack_steps: nearest-flip search: ``attack_grid`` evenly spaced
            parameters (k = 2: a sqrt(attack_grid)-per-axis grid), then sign-gradient steps on
            theta (min(attack_steps, 10), from the 2 lowest-margin grid points before the nearest
            flip) and ``attack_steps`` bisection steps between the flip and the last safe point.
        batch_size: parameter boxes per bound call (and images per attack batch = 8x).
        seed: recorded; the search is deterministic (grids, gradients, bisection).
        baseline: None (semantic verification) or "linf-box" / "linf-ball" (naive l-inf baselines;
            see the module docstring).
        margin_tol: a box verifies when every margin lower bound exceeds this (logits).
        alpha_iterations: optimisation steps of "alpha-crown".

    Returns:
        :class:`SemanticCertificate`.
    """
    t0 = time.perf_counter()
    _check_model(model)
    _check_perturbation(perturbation)
    m = _check_method(method)
    base = _check_baseline(baseline)
    n_splits = _check_int("n_splits", n_splits, 1)
    max_refine = _check_int("max_refine", max_refine, 0)
    attack_grid = _check_int("attack_grid", attack_grid, 3)
    attack_steps = _check_int("attack_steps", attack_steps, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    alpha_iterations = _check_int("alpha_iterations", alpha_iterations, 1)
    seed = _check_int("seed", seed, 0)
    if not isinstance(attack, bool):
        raise TypeError(f"attack must be a bool; got {attack!r}")
    if isinstance(margin_tol, bool) or not isinstance(margin_tol, (int, float)) or not (0 <= margin_tol < math.inf):
        raise ValueError(f"margin_tol must be a finite number >= 0; got {margin_tol!r}")
    img = _image(perturbation, x)
    ranges = _resolve_range(perturbation, max_param)
    k = len(ranges)
    was_training = model.training
    model.eval()
    try:
        logits = _logits(model, img)
        num_classes = int(logits.shape[1])
        if isinstance(label, bool) or not isinstance(label, (int, np.integer, torch.Tensor)):
            raise TypeError(f"label must be an int; got {type(label).__name__}")
        label = int(label)
        if not 0 <= label < num_classes:
            raise ValueError(f"label must be in [0, {num_classes - 1}] (the model has {num_classes} classes); "
                             f"got {label}")
        if num_classes < 2:
            raise ValueError("the model must have at least 2 classes")
        predicted = int(logits.argmax(dim=1)[0])
        clean_correct = predicted == label
        pieces: list = []
        n_refined = 0
        cert_scale = None
        bounder = _Bounder(model, img, label, num_classes, perturbation, method=m, baseline=base,
                           batch_size=batch_size, alpha_iterations=alpha_iterations,
                           margin_tol=float(margin_tol), model_net=_model_net)
        if not clean_correct:
            certified = (0.0, 0.0) if k == 1 else ((0.0, 0.0),) * k
            cert_scale = 0.0 if k == 2 else None
        elif k == 1:
            c_lo, c_hi, n_refined = _certify_1d(bounder, ranges[0][0], ranges[0][1], n_splits=n_splits,
                                                max_refine=max_refine, tol=float(margin_tol), pieces=pieces)
            certified = (float(c_lo), float(c_hi))
        else:
            cert_scale, n_refined = _certify_2d(bounder, ranges, n_splits=n_splits, max_refine=max_refine,
                                                tol=float(margin_tol), pieces=pieces)
            certified = tuple((cert_scale * a, cert_scale * b) for a, b in ranges)
        t_attack = time.perf_counter()
        att = att_theta = att_scale = None
        if not clean_correct:
            att = (0.0, 0.0) if k == 1 else tuple((0.0, 0.0) for _ in ranges)
            att_theta = (0.0, 0.0) if k == 1 else (0.0,) * k
            att_scale = 0.0 if k == 2 else None
        elif attack and k == 1:
            a_lo, a_hi = _attack_1d(model, perturbation, img, label, ranges[0][0], ranges[0][1],
                                    grid=attack_grid, steps=attack_steps, batch=8 * batch_size)
            att = (a_lo, a_hi)
            att_theta = (a_lo, a_hi)
        elif attack:
            s, point = _attack_2d(model, perturbation, img, label, ranges, grid=attack_grid,
                                  steps=attack_steps, batch=8 * batch_size)
            if point is not None:
                att_scale = s
                att = tuple((s * a, s * b) for a, b in ranges)
                att_theta = point
        attack_time = time.perf_counter() - t_attack
    finally:
        model.train(was_training)
    tightness = _tightness(k, certified, att, cert_scale, att_scale) if clean_correct else None
    tol = float(margin_tol)
    return SemanticCertificate(
        perturbation=perturbation.name, param_names=tuple(perturbation.param_names),
        units=str(getattr(perturbation, "units", "")), kind=perturbation.kind, method=m, baseline=base,
        label=label, predicted=predicted, clean_correct=clean_correct,
        requested=ranges[0] if k == 1 else ranges, certified=certified, certified_scale=cert_scale,
        attack=att, attack_theta=att_theta, attack_scale=att_scale, tightness=tightness,
        n_splits=len(pieces), n_refined=n_refined, max_refine=max_refine, margin_tol=tol,
        pieces=tuple((p[0], p[1], p[2], p[2] > tol) for p in pieces),
        time_s=time.perf_counter() - t0, attack_time_s=attack_time, seed=seed)


def _tightness(k, certified, att, cert_scale, att_scale) -> float | None:
    if att is None:
        return None
    if k == 2:
        return None if not att_scale else float(cert_scale / att_scale)
    num = den = 0.0
    if att[0] is not None:
        num += -certified[0]
        den += -att[0]
    if att[1] is not None:
        num += certified[1]
        den += att[1]
    return float(num / den) if den > 0 else None


# ==============================================================================================
# reports
# ==============================================================================================
ROW_COLUMNS = ("idx", "label", "predict", "correct", "perturbation", "param", "units", "method",
               "range_lo", "range_hi", "certified_lo", "certified_hi", "attack_lo", "attack_hi",
               "tightness", "n_splits", "time")


def rows_from_certificate(idx: int, cert: SemanticCertificate) -> list[dict[str, Any]]:
    """One row per parameter (two for a two-parameter family); missing attack sides are NaN."""
    rows = []
    for name, req, cer, att in zip(cert.param_names, cert.requested_ranges(), cert.certified_ranges(),
                                   cert.attack_ranges()):
        rows.append({
            "idx": int(idx), "label": cert.label, "predict": cert.predicted, "correct": cert.clean_correct,
            "perturbation": cert.perturbation, "param": name, "units": cert.units.replace("\t", " "),
            "method": cert.method if cert.baseline is None else f"{cert.method}+{cert.baseline}",
            "range_lo": float(req[0]), "range_hi": float(req[1]),
            "certified_lo": float(cer[0]), "certified_hi": float(cer[1]),
            "attack_lo": float("nan") if att[0] is None else float(att[0]),
            "attack_hi": float("nan") if att[1] is None else float(att[1]),
            "tightness": float("nan") if cert.tightness is None else float(cert.tightness),
            "n_splits": int(cert.n_splits), "time": float(cert.time_s),
        })
    return rows


@dataclasses.dataclass(frozen=True, eq=False)
class SemanticReport:
    """Rows of a semantic verification run (one per example, family and parameter) + settings.

    Columns: :data:`ROW_COLUMNS`. ``certified_lo/hi``: the certified range; ``attack_lo/hi``: the
    nearest flips found (NaN where none was found: the attack-free range then extends to
    ``range_lo/hi``); ``correct``: clean prediction == label (incorrect rows certify nothing).

    Certified accuracy at range r = fraction of ALL rows of a family/parameter that are correct and
    whose certified range contains ``[max(-r, range_lo), min(r, range_hi)]``.
    """

    rows: tuple
    settings: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        rows = tuple(dict(r) for r in self.rows)
        for i, r in enumerate(rows):
            missing = [c for c in ROW_COLUMNS if c not in r]
            if missing:
                raise ValueError(f"row {i} is missing columns {missing}")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "settings", dict(self.settings))

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict:
        return {"rows": _jsonable(list(self.rows)), "settings": _jsonable(self.settings)}

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame(list(self.rows), columns=list(ROW_COLUMNS))
        return frame

    def families(self) -> list[tuple[str, str]]:
        """(perturbation, param) pairs in order of appearance."""
        seen: dict[tuple[str, str], None] = {}
        for r in self.rows:
            seen[(str(r["perturbation"]), str(r["param"]))] = None
        return list(seen)

    def _select(self, perturbation: str, param: str | None) -> list[dict]:
        fams = [f for f in self.families() if f[0] == perturbation and (param is None or f[1] == param)]
        if not fams:
            raise ValueError(f"no rows for perturbation {perturbation!r}"
                             + (f" / param {param!r}" if param else "") + f"; have {self.families()}")
        if param is None and len(fams) > 1:
            raise ValueError(f"perturbation {perturbation!r} has parameters {[f[1] for f in fams]}; pass param=")
        p = fams[0][1]
        return [r for r in self.rows if r["perturbation"] == perturbation and r["param"] == p]

    @staticmethod
    def _covers(lo: float, hi: float, r: float, range_lo: float, range_hi: float) -> bool:
        need_lo, need_hi = max(-r, range_lo), min(r, range_hi)
        return lo <= need_lo + 1e-12 and hi >= need_hi - 1e-12

    def certified_accuracy(self, perturbation: str, ranges: float | Sequence[float], *,
                           param: str | None = None) -> np.ndarray:
        """Fraction of examples correct and certified on [-r, r] (clipped to the requested range)."""
        rows = self._select(perturbation, param)
        rs = np.atleast_1d(np.asarray(ranges, dtype=float))
        if (rs < 0).any() or not np.isfinite(rs).all():
            raise ValueError(f"ranges must be finite and >= 0; got {ranges!r}")
        out = [np.mean([bool(r["correct"]) and self._covers(float(r["certified_lo"]), float(r["certified_hi"]), t,
                                                               float(r["range_lo"]), float(r["range_hi"]))
                        for r in rows]) for t in rs]
        return np.asarray(out, dtype=float)

    def attack_accuracy(self, perturbation: str, ranges: float | Sequence[float], *,
                        param: str | None = None) -> np.ndarray:
        """Fraction correct with no flip found on [-r, r] (an upper bound on robust accuracy)."""
        rows = self._select(perturbation, param)
        rs = np.atleast_1d(np.asarray(ranges, dtype=float))
        out = []
        for t in rs:
            ok = []
            for r in rows:
                a_lo = float(r["attack_lo"]) if not _isnan(r["attack_lo"]) else -math.inf
                a_hi = float(r["attack_hi"]) if not _isnan(r["attack_hi"]) else math.inf
                need_lo, need_hi = max(-t, float(r["range_lo"])), min(t, float(r["range_hi"]))
                ok.append(bool(r["correct"]) and a_lo < need_lo and a_hi > need_hi)
            out.append(np.mean(ok))
        return np.asarray(out, dtype=float)

    def summary(self, levels: Mapping[str, Sequence[float]] | None = None) -> dict:
        """Per family/parameter: n, clean accuracy, mean certified range and width, mean attack
        range (sides with a flip), mean tightness (over rows where defined), certified and attack
        accuracy at ``levels`` (default: 25/50/75/100% of the largest requested magnitude), time."""
        out = {}
        for pert, param in self.families():
            rows = [r for r in self.rows if r["perturbation"] == pert and r["param"] == param]
            key = pert if sum(1 for f in self.families() if f[0] == pert) == 1 else f"{pert}/{param}"
            mag = max(max(abs(float(r["range_lo"])), abs(float(r["range_hi"]))) for r in rows)
            lv = list((levels or {}).get(key, (levels or {}).get(pert, [mag * f for f in (0.25, 0.5, 0.75, 1.0)])))
            correct = [r for r in rows if r["correct"]]
            tight = [float(r["tightness"]) for r in correct if not _isnan(r["tightness"])]
            widths = [float(r["certified_hi"]) - float(r["certified_lo"]) for r in correct]
            out[key] = {
                "perturbation": pert, "param": param, "units": rows[0]["units"], "method": rows[0]["method"],
                "n": len(rows), "clean_accuracy": float(np.mean([bool(r["correct"]) for r in rows])),
                "mean_certified_lo": _mean([float(r["certified_lo"]) for r in correct]),
                "mean_certified_hi": _mean([float(r["certified_hi"]) for r in correct]),
                "mean_certified_width": _mean(widths),
                "mean_attack_lo": _mean([float(r["attack_lo"]) for r in correct if not _isnan(r["attack_lo"])]),
                "mean_attack_hi": _mean([float(r["attack_hi"]) for r in correct if not _isnan(r["attack_hi"])]),
                "flip_found_fraction": _mean([float(not (_isnan(r["attack_lo"]) and _isnan(r["attack_hi"])))
                                              for r in correct]),
                "mean_tightness": _mean(tight), "n_tightness": len(tight),
                "levels": [float(v) for v in lv],
                "certified_accuracy": self.certified_accuracy(pert, lv, param=param).tolist() if lv else [],
                "attack_accuracy": self.attack_accuracy(pert, lv, param=param).tolist() if lv else [],
                "mean_time_s": _mean([float(r["time"]) for r in rows]),
            }
        return out

    def to_markdown(self, levels: Mapping[str, Sequence[float]] | None = None) -> str:
        s = self.summary(levels)
        lines = ["| family | units | n | clean acc | mean certified | mean attack | tightness | s/example |",
                 "|---|---|---|---|---|---|---|---|"]
        for key, v in s.items():
            lines.append(f"| {key} | {v['units']} | {v['n']} | {v['clean_accuracy']:.3f} | "
                         f"[{v['mean_certified_lo']:.4g}, {v['mean_certified_hi']:.4g}] | "
                         f"[{v['mean_attack_lo']:.4g}, {v['mean_attack_hi']:.4g}] | "
                         f"{v['mean_tightness']:.3f} ({v['n_tightness']}) | {v['mean_time_s']:.2f} |")
        lines += ["", "Certified accuracy (attack-free accuracy) at each range:", ""]
        for key, v in s.items():
            cells = ", ".join(f"{lv:.4g}: {c:.3f} ({a:.3f})" for lv, c, a in
                              zip(v["levels"], v["certified_accuracy"], v["attack_accuracy"]))
            lines.append(f"- {key}: {cells}")
        return "\n".join(lines) + "\n"

    def to_tsv(self, path: str | os.PathLike) -> Path:
        """Write ``# certify.SemanticReport {settings json}`` then the rows (floats exact)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write("# certify.SemanticReport " + json.dumps(_jsonable(self.settings), sort_keys=True) + "\n")
            f.write("\t".join(ROW_COLUMNS) + "\n")
            for r in self.rows:
                f.write(_format_row(r))
        return path

    @classmethod
    def from_tsv(cls, path: str | os.PathLike) -> "SemanticReport":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no semantic rows file at {path}")
        settings: dict = {}
        rows = []
        with open(path) as f:
            lines = f.read().splitlines()
        i = 0
        if lines and lines[0].startswith("#"):
            head = lines[0][1:].strip()
            if head.startswith("certify.SemanticReport"):
                settings = json.loads(head[len("certify.SemanticReport"):].strip() or "{}")
            i = 1
        if i >= len(lines):
            return cls((), settings)
        header = lines[i].split("\t")
        missing = [c for c in ROW_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path} is not a semantic rows file (missing columns {missing})")
        for n, line in enumerate(lines[i + 1:], start=i + 2):
            if not line.strip():
                continue
            vals = line.split("\t")
            if len(vals) != len(header):
                raise ValueError(f"{path}:{n}: expected {len(header)} fields, got {len(vals)}")
            rows.append(_parse_row(dict(zip(header, vals))))
        return cls(tuple(rows), settings)

    def plot(self, path: str | os.PathLike, *, points: int = 101) -> Path:
        """Certified accuracy (solid) and attack-free accuracy (dashed) vs parameter range, one
        panel per family/parameter (x in the family's units)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fams = self.families()
        if not fams:
            raise ValueError("no rows to plot")
        n = len(fams)
        cols = min(3, n)
        nrows = int(math.ceil(n / cols))
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
        for ax, (pert, param) in zip(axes.flat, fams):
            rows = [r for r in self.rows if r["perturbation"] == pert and r["param"] == param]
            mag = max(max(abs(float(r["range_lo"])), abs(float(r["range_hi"]))) for r in rows)
            rs = np.linspace(0, mag, points)
            ax.plot(rs, self.certified_accuracy(pert, rs, param=param), label=f"certified ({rows[0]['method']})")
            ax.plot(rs, self.attack_accuracy(pert, rs, param=param), "--", label="no flip found (attack)")
            ax.set_title(pert if param == pert else f"{pert}: {param}")
            ax.set_xlabel(f"|{param}| ({rows[0]['units']})")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def picture_grid(self, path: str | os.PathLike, dataset: Any, perturbations: Sequence[Any]) -> Path:
        """One image per family under its certified extremes: [apply(lo), original, apply(hi)]
        (and the nearest flips found, when any), for the first correct example of each family."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        by_name = {p.name: p for p in perturbations}
        fams = [f for f in self.families() if f[0] in by_name]
        if not fams:
            raise ValueError("none of the report's families is among perturbations")
        shown: list[tuple[str, Any, list]] = []
        done = set()
        for pert, param in fams:
            if pert in done:
                continue
            rows_all = [r for r in self.rows if r["perturbation"] == pert]
            p = by_name[pert]
            k = len(p.param_names)
            correct = [r for r in rows_all if r["correct"]]
            if not correct:
                continue
            idx = int(correct[0]["idx"])
            rows = [r for r in rows_all if int(r["idx"]) == idx]
            x, _ = dataset[idx]
            cert_lo = [float(r["certified_lo"]) for r in rows]
            cert_hi = [float(r["certified_hi"]) for r in rows]
            panels = [("certified lo", cert_lo), ("original", [0.0] * k), ("certified hi", cert_hi)]
            if k == 1:
                if not _isnan(rows[0]["attack_lo"]):
                    panels.insert(0, ("flip", [float(rows[0]["attack_lo"])]))
                if not _isnan(rows[0]["attack_hi"]):
                    panels.append(("flip", [float(rows[0]["attack_hi"])]))
            images = []
            for title, theta in panels:
                th = torch.tensor([theta], dtype=torch.float64)
                img = p.apply(x.float(), th.float())[0]
                unit = str(rows[0]["units"]).split(" ")[0]
                caption = f"{title}\n" + ", ".join(f"{t:.3g}" for t in theta) + (f" {unit}" if k == 1 else "")
                images.append((caption, img))
            shown.append((f"{pert} (idx {idx})", p, images))
            done.add(pert)
        ncols = max(len(s[2]) for s in shown)
        fig, axes = plt.subplots(len(shown), ncols, figsize=(1.9 * ncols, 2.2 * len(shown)), squeeze=False)
        for row_axes, (title, _, images) in zip(axes, shown):
            for ax in row_axes:
                ax.axis("off")
            for ax, (sub, img) in zip(row_axes, images):
                arr = img.detach().clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(arr[..., 0] if arr.shape[2] == 1 else arr, cmap="gray" if arr.shape[2] == 1 else None,
                          vmin=0, vmax=1)
                ax.set_title(sub, fontsize=7)
            row_axes[0].text(-0.15, 0.5, title, rotation=90, va="center", ha="right", fontsize=8,
                             transform=row_axes[0].transAxes)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _format_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else repr(float(v))
    text = str(v)
    if "\t" in text or "\n" in text:
        raise ValueError(f"TSV values cannot contain tabs or newlines: {text!r}")
    return text


def _format_row(r: Mapping[str, Any]) -> str:
    return "\t".join(_format_value(r[c]) for c in ROW_COLUMNS) + "\n"


_INT_COLS = ("idx", "label", "predict", "n_splits")
_FLOAT_COLS = ("range_lo", "range_hi", "certified_lo", "certified_hi", "attack_lo", "attack_hi", "tightness", "time")


def _parse_row(raw: Mapping[str, str]) -> dict[str, Any]:
    r: dict[str, Any] = dict(raw)
    for c in _INT_COLS:
        r[c] = int(raw[c])
    for c in _FLOAT_COLS:
        r[c] = float(raw[c])
    r["correct"] = raw["correct"].strip() in ("1", "True", "true")
    return r


# ==============================================================================================
# semantic_report
# ==============================================================================================
def _model_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _progress(iterable: Any, total: int, verbose: bool, desc: str):
    from certify._progress import track  # tqdm on a terminal, periodic log lines elsewhere

    return track(iterable, desc=desc, total=total, enabled=verbose)


def semantic_report(model: nn.Module, dataset: Any, perturbations: Sequence[Any], *, out: str | os.PathLike,
                    method: str = "crown", max_param: Any = None, max_examples: int | None = None,
                    skip: int = 1, resume: bool = True, n_splits: int = 8, max_refine: int = 4,
                    attack: bool = True, attack_grid: int = 1001, attack_steps: int = 20,
                    batch_size: int = 32, seed: int = 0, baseline: str | None = None,
                    margin_tol: float = 1e-4, alpha_iterations: int = 20, plots: bool = True,
                    verbose: bool = True) -> SemanticReport:
    """Run :func:`verify_semantic` on dataset examples 0, skip, 2 skip, ... for every perturbation.

    Rows (:data:`ROW_COLUMNS`) are appended to ``out/rows.tsv`` and flushed as they are produced;
    with ``resume=True`` finished (idx, perturbation) pairs are skipped (the settings in
    ``out/run.json`` must match, else ValueError). ``resume=False`` starts the folder afresh. At the
    end writes ``summary.json``, ``report.md`` and (``plots``) ``semantic_accuracy.png`` and
    ``semantic_examples.png``. Returns the :class:`SemanticReport` of all rows.

    ``max_param`` as in :func:`verify_semantic` (a mapping gives each family its own range).
    ``dataset``: anything with ``len`` and ``ds[i] -> (x, y)`` (e.g. :func:`certify.data.load_dataset`).
    """
    _check_model(model)
    m = _check_method(method)
    base = _check_baseline(baseline)
    if isinstance(perturbations, (str, bytes)) or not isinstance(perturbations, Sequence) or not perturbations:
        raise TypeError("perturbations must be a non-empty sequence of SemanticPerturbation objects")
    for p in perturbations:
        _check_perturbation(p)
    names = [p.name for p in perturbations]
    if len(set(names)) != len(names):
        raise ValueError(f"perturbations must have distinct names; got {names}")
    skip = _check_int("skip", skip, 1)
    if max_examples is not None:
        max_examples = _check_int("max_examples", max_examples, 1)
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError("dataset must support len() and ds[i] -> (x, y)")
    ranges = {p.name: _resolve_range(p, max_param) for p in perturbations}
    indices = list(range(0, len(dataset), skip))
    if max_examples is not None:
        indices = indices[:max_examples]
    settings = {
        "method": m, "baseline": base, "perturbations": names,
        "ranges": {n: [list(r) for r in ranges[n]] for n in names},
        "n_splits": n_splits, "max_refine": max_refine, "attack": attack, "attack_grid": attack_grid,
        "attack_steps": attack_steps, "seed": seed, "margin_tol": margin_tol,
        "alpha_iterations": alpha_iterations, "skip": skip, "max_examples": max_examples,
        "dataset": str(getattr(dataset, "name", type(dataset).__name__)), "dataset_size": len(dataset),
        "model": _model_fingerprint(model),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_json, rows_path = out / "run.json", out / "rows.tsv"
    done: set[tuple[int, str]] = set()
    if resume and run_json.exists():
        old = json.loads(run_json.read_text())
        diff = sorted(k for k in set(old) | set(settings) if _jsonable(old.get(k)) != _jsonable(settings.get(k)))
        if diff:
            raise ValueError(f"cannot resume {out}: settings differ from the saved run in {diff} "
                             f"(use a new --out or resume=False)")
        if rows_path.exists():
            old_rows = SemanticReport.from_tsv(rows_path).rows
            n_params = {p.name: len(p.param_names) for p in perturbations}
            count: dict[tuple[int, str], int] = {}
            for r in old_rows:
                key = (int(r["idx"]), str(r["perturbation"]))
                count[key] = count.get(key, 0) + 1
            done = {key for key, c in count.items() if c == n_params.get(key[1], -1)}
            keep = [r for r in old_rows if (int(r["idx"]), str(r["perturbation"])) in done]
            if len(keep) != len(old_rows):      # an interrupted write: drop incomplete examples
                logger.warning("%s: dropping %d rows of incomplete examples", rows_path, len(old_rows) - len(keep))
                with open(rows_path, "w") as f:
                    f.write("# certify.SemanticReport " + json.dumps(_jsonable(settings), sort_keys=True) + "\n")
                    f.write("\t".join(ROW_COLUMNS) + "\n")
                    for r in keep:
                        f.write(_format_row(r))
    elif rows_path.exists():
        logger.warning("starting %s afresh: previous rows are overwritten", out)
    if not done and not (resume and rows_path.exists() and run_json.exists()):
        run_json.write_text(json.dumps(_jsonable(settings), indent=2, sort_keys=True) + "\n")
        with open(rows_path, "w") as f:
            f.write("# certify.SemanticReport " + json.dumps(_jsonable(settings), sort_keys=True) + "\n")
            f.write("\t".join(ROW_COLUMNS) + "\n")
    todo = [(i, p) for i in indices for p in perturbations if (i, p.name) not in done]
    logger.info("semantic report: %d examples x %d families, %d to do (%d done)", len(indices),
                len(perturbations), len(todo), len(done))
    model_net = None
    with open(rows_path, "a") as f:
        for i, p in _progress(todo, len(todo), verbose, "semantic"):
            x, y = dataset[i]
            if model_net is None:
                model_net = lirpa.bounded_module(model, x.float().unsqueeze(0))
            cert = verify_semantic(model, x, int(y), p, method=m, max_param=ranges[p.name] if len(ranges[p.name]) > 1
                                   else ranges[p.name][0], n_splits=n_splits, max_refine=max_refine,
                                   attack=attack, attack_grid=attack_grid, attack_steps=attack_steps,
                                   batch_size=batch_size, seed=seed, baseline=base, margin_tol=margin_tol,
                                   alpha_iterations=alpha_iterations, _model_net=model_net)
            for r in rows_from_certificate(i, cert):
                f.write(_format_row(r))
            f.flush()
    report = SemanticReport.from_tsv(rows_path)
    report = SemanticReport(report.rows, settings)
    (out / "summary.json").write_text(json.dumps(_jsonable(report.summary()), indent=2, allow_nan=True) + "\n")
    (out / "report.md").write_text(f"# Semantic verification ({m}{'' if base is None else ', baseline ' + base})\n\n"
                                   + report.to_markdown())
    if plots and len(report):
        report.plot(out / "semantic_accuracy.png")
        report.picture_grid(out / "semantic_examples.png", dataset, perturbations)
    return report
