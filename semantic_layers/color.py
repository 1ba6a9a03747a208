"""Colour perturbations (Semantify-NN, Mohapatra et al. 2020): hue, saturation, lightness, brightness, contrast.

All colour values are in [0,1].  Per pixel, with ``M = max(r,g,b)``, ``m = min(r,g,b)``, chroma
``C = M - m``:

* :class:`Hue` (degrees): HSV hue rotation with ``M`` and ``m`` fixed (torchvision ``adjust_hue`` with
  ``hue_factor = theta / 360``).  Channel ``n`` (R: 5, G: 3, B: 1) equals
  ``M - C * g((n + h + theta/60) mod 6)`` with ``h`` the hue in sextants and
  ``g(q) = clip(min(q, 4 - q), 0, 1)``, i.e. ``m + C * trapezoid``: piecewise linear in theta with kinks
  where ``h + theta/60`` is an integer.
* :class:`Saturation` (absolute HSL saturation shift): HSL lightness ``l = (M + m)/2`` and hue fixed,
  ``s = C / (1 - |2l - 1|)``, ``s' = clip(s + theta, 0, 1)``, ``c' = l + (c - l) * s'/s``; grey
  pixels (s = 0) are unchanged.
* :class:`Lightness` (absolute HSL lightness shift): ``l' = clip(l + theta, 0, 1)``,
  ``c' = l' + (c - l) * f(l')/f(l)`` with ``f(l) = 1 - |2l - 1|``; grey pixels (including f(l) = 0,
  i.e. black/white) become ``l'``.
* :class:`Brightness` (additive): ``clip(x + b, 0, 1)``, any channel count (the Semantify-NN formula).
* :class:`Contrast` (about a pivot ``p``): ``clip((1 + a)(x - p) + p, 0, 1)``, any channel count; ``pivot=0.5``
  (default, Semantify-NN), ``pivot="mean"`` (torchvision ``adjust_contrast``: the image's mean grey level)
  or ``pivot=0.0`` (torchvision ``adjust_brightness(x, 1 + a)``).
* :class:`BrightnessContrast` (two parameters, ``theta = (a, b)``): ``clip((1 + a)(x - p) + p + b, 0, 1)``,
  same pivots.

Reference functions (checked to <= 1e-5 by ``tests/test_semantic_layers.py``): hue - torchvision
``adjust_hue``; saturation, lightness - ``colorsys`` (rgb_to_hls / hls_to_rgb); brightness and the
pivot-0.5 contrasts - the Semantify-NN formulas; ``pivot="mean"`` - torchvision ``adjust_contrast``;
``pivot=0.0`` - torchvision ``adjust_brightness``.

Every family is kind ``"layer"``: :meth:`~semantic_layers.base.SemanticPerturbation.layer` returns an
exact ReLU network theta -> image (see ``build_relu_layer`` for the shape).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .base import PiecewiseLinear1D, SemanticPerturbation
from .registry import register

__all__ = ["Hue", "Saturation", "Lightness", "Brightness", "Contrast", "BrightnessContrast"]

_HUE_OFFSETS = (5, 3, 1)                 # channel n of R, G, B in f(n) = V - V S clip(min(k, 4-k), 0, 1)
_HUE_SLOPE_JUMP = {0: 1.0, 1: -1.0, 3: -1.0, 4: 1.0}   # jump of g' at q = 0,1,3,4 (mod 6)


def _minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    M = x.amax(dim=-3, keepdim=True)
    m = x.amin(dim=-3, keepdim=True)
    return M, m, M - m


def _hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (...,3,H,W) -> M, m, C, h (each (...,1,H,W)); h = hue in sextants, in [0, 6]; 0 for grey."""
    M, m, C = _minmax(x)
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    safe = torch.where(C > 0, C, torch.ones_like(C))
    hr = torch.remainder((g - b) / safe, 6.0)
    hg = (b - r) / safe + 2.0
    hb = (r - g) / safe + 4.0
    h = torch.where(M == r, hr, torch.where(M == g, hg, hb))
    return M, m, C, torch.where(C > 0, h, torch.zeros_like(h))


def _trapezoid(q: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.minimum(q, 4.0 - q), 0.0, 1.0)


def _hsl(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (...,3,H,W) -> l, s, f(l) = 1 - |2l - 1|, C (each (...,1,H,W)); s = 0 for grey pixels."""
    M, m, C = _minmax(x)
    l = (M + m) / 2  # noqa: E741
    f = 1.0 - torch.abs(2.0 * l - 1.0)
    s = torch.clamp(C / torch.where(C > 0, f, torch.ones_like(f)), 0.0, 1.0)   # clamp: rounding only
    return l, torch.where(C > 0, s, torch.zeros_like(s)), f, C


def _pixel_index(C: int, H: int, W: int) -> torch.Tensor:
    """(C, H*W) output indices o = c*H*W + p."""
    return torch.arange(C * H * W).reshape(C, H * W)


@register
class Hue(PiecewiseLinear1D):
    """Hue rotation by theta degrees (HSV; max and min of every pixel fixed); RGB images only.

    Reference: ``torchvision.transforms.functional.adjust_hue(x, theta / 360)``.  Periodic with period
    360; the default domain [-180, 180] covers every hue.  The layer has one hidden unit per pixel
    and kink of ``h + theta/60`` inside the domain: at most ``ceil(width/60)`` per chromatic pixel
    (6 for the full circle; pixels with equal hue share units; grey pixels need none).

    >>> import torch
    >>> Hue().apply(torch.tensor([[[1.0]], [[0.0]], [[0.0]]]), 120.0).flatten().tolist()  # red -> green
    [0.0, 1.0, 0.0]
    """

    name = "hue"
    param_names = ("hue",)
    units = "degrees"
    requires_channels = 3
    kind = "layer"
    DOMAIN = (-180.0, 180.0)
    DEFAULT_RANGE = (-45.0, 45.0)

    def _pointwise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, _, C, h = _hsv(x)
        n = torch.tensor(_HUE_OFFSETS, dtype=x.dtype, device=x.device).reshape(3, 1, 1)
        q0 = torch.remainder(n + h, 6.0)
        q = torch.remainder(n + h + t / 60.0, 6.0)
        return x - C * (_trapezoid(q) - _trapezoid(q0))

    def _breakpoints(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        _, _, _, h = _hsv(x)                                   # (1,H,W)
        n = int(math.floor(float((hi - lo).max()) / 60.0)) + 2
        u_lo = h + lo / 60.0                                  # (S,1,H,W)
        j = torch.arange(n, dtype=x.dtype, device=x.device).reshape(1, n, 1, 1, 1)
        k = torch.floor(u_lo).unsqueeze(1) + 1.0 + j          # (S,n,1,H,W) integers
        return 60.0 * (k - h)

    def _layer_spec(self, x: torch.Tensor, domain_lo: torch.Tensor, domain_hi: torch.Tensor) -> dict:
        Cc, H, W = x.shape
        P = H * W
        lo, hi = float(domain_lo[0]), float(domain_hi[0])
        _, _, C, h = _hsv(x)
        C, h = C.reshape(P), h.reshape(P)
        chrom = C > 0
        out_idx = _pixel_index(Cc, H, W)                      # (3, P)
        u_lo = h + lo / 60.0
        fl = torch.floor(u_lo)
        frac = u_lo - fl                                      # in [0,1), exact
        fl_i = fl.long()
        rows, cols, vals = [], [], []
        out_bias = torch.empty(Cc * P, dtype=torch.float64)
        # value and right-slope at theta = lo (derived from the same (fl, frac) as the kinks below)
        for ci, n in enumerate(_HUE_OFFSETS):
            sextant = torch.remainder(fl_i + n, 6)            # integer part of (n + u_lo) mod 6
            q_lo = sextant.double() + frac
            q0 = torch.remainder(n + h, 6.0)
            v_lo = x[ci].reshape(P) - C * (_trapezoid(q_lo) - _trapezoid(q0))
            out_bias[out_idx[ci]] = v_lo
            gprime = torch.where(sextant == 0, 1.0, torch.where(sextant == 3, -1.0, 0.0)).double()
            slope = -C * gprime / 60.0
            sel = chrom & (slope != 0)
            rows.append(out_idx[ci][sel])
            cols.append(torch.zeros(int(sel.sum()), dtype=torch.long))   # unit 0: relu(theta - lo)
            vals.append(slope[sel])
        # kinks strictly inside (lo, hi): h + theta/60 = integer kk
        n_k = int(math.floor((hi - lo) / 60.0)) + 2
        kk = fl_i[:, None] + 1 + torch.arange(n_k)[None, :]   # (P, n_k)
        t = 60.0 * (kk.double() - h[:, None])
        inside = chrom[:, None] & (kk.double() < u_lo[:, None] + (hi - lo) / 60.0) & (t < hi)
        pix, jj = torch.nonzero(inside, as_tuple=True)
        n_units = pix.numel()
        unit_w = torch.ones(1 + n_units, 1, dtype=torch.float64)
        unit_c = torch.cat([torch.tensor([-lo], dtype=torch.float64), -t[pix, jj]])
        unit_id = torch.arange(1, 1 + n_units)
        k_int = kk[pix, jj]
        for ci, n in enumerate(_HUE_OFFSETS):
            pos = torch.remainder(k_int + n, 6)
            jump = torch.zeros(n_units, dtype=torch.float64)
            for p_, dj in _HUE_SLOPE_JUMP.items():
                jump = torch.where(pos == p_, torch.tensor(dj, dtype=torch.float64), jump)
            val = -C[pix] * jump / 60.0
            sel = val != 0
            rows.append(out_idx[ci][pix[sel]])
            cols.append(unit_id[sel])
            vals.append(val[sel])
        return {"unit_w": unit_w, "unit_c": unit_c, "rows": torch.cat(rows), "cols": torch.cat(cols),
                "vals": torch.cat(vals), "out_bias": out_bias}


@register
class Saturation(PiecewiseLinear1D):
    """HSL saturation shift ``s' = clip(s + theta, 0, 1)`` with lightness and hue fixed; RGB only.

    ``c' = l + (c - l) s'/s``; grey pixels are unchanged.  Reference: ``colorsys`` (``rgb_to_hls``, shift
    ``s``, ``hls_to_rgb``) on every chromatic pixel (colorsys tints grey pixels with hue 0 instead).
    Layer: 2 hidden units per distinct saturation value (kinks at ``theta = -s`` and ``1 - s``); exact for
    every theta.
    """

    name = "saturation"
    param_names = ("saturation",)
    units = "HSL saturation (absolute shift, [0,1] scale)"
    requires_channels = 3
    kind = "layer"
    DOMAIN = (-1.0, 1.0)
    DEFAULT_RANGE = (-0.3, 0.3)

    def _pointwise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        l, s, _, C = _hsl(x)  # noqa: E741
        chrom = C > 0
        sp = torch.clamp(s + t, 0.0, 1.0)
        ratio = torch.where(chrom, sp / torch.where(chrom, s, torch.ones_like(s)), torch.ones_like(sp))
        return x + (x - l) * (ratio - 1.0)

    def _breakpoints(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        _, s, _, _ = _hsl(x)
        return torch.stack([-s, 1.0 - s], dim=0).unsqueeze(0).expand(lo.shape[0], -1, -1, -1, -1)

    def _layer_spec(self, x: torch.Tensor, domain_lo: torch.Tensor, domain_hi: torch.Tensor) -> dict:
        Cc, H, W = x.shape
        P = H * W
        l, s, _, C = (v.reshape(P) for v in _hsl(x))  # noqa: E741
        chrom = C > 0
        out_idx = _pixel_index(Cc, H, W)
        pix = torch.nonzero(chrom).reshape(-1)
        n = pix.numel()
        unit_w = torch.ones(2 * n, 1, dtype=torch.float64)
        unit_c = torch.cat([s[pix], s[pix] - 1.0])                     # relu(theta + s), relu(theta + s - 1)
        out_bias = x.reshape(Cc, P).clone()
        out_bias[:, pix] = l[pix]
        rows, cols, vals = [], [], []
        for ci in range(Cc):
            coef = (x[ci].reshape(P)[pix] - l[pix]) / s[pix]
            rows += [out_idx[ci][pix], out_idx[ci][pix]]
            cols += [torch.arange(n), torch.arange(n, 2 * n)]
            vals += [coef, -coef]
        return {"unit_w": unit_w, "unit_c": unit_c, "rows": torch.cat(rows), "cols": torch.cat(cols),
                "vals": torch.cat(vals), "out_bias": out_bias.reshape(-1)}


@register
class Lightness(PiecewiseLinear1D):
    """HSL lightness shift ``l' = clip(l + theta, 0, 1)`` with hue and saturation fixed; RGB only.

    ``c' = l' + (c - l) f(l')/f(l)``, ``f(l) = 1 - |2l - 1|``; grey pixels (f(l) = 0 included) become
    ``l'``.  Reference: ``colorsys`` (``rgb_to_hls``, shift ``l``, ``hls_to_rgb``).
    Layer: per pixel ``c' = (1+2d) relu(u) - 4d relu(u - 1/2) +
    (2d - 1) relu(u - 1)`` with ``u = l + theta`` and ``d = (c - l)/f(l)``: 3 units per distinct
    lightness value (shared by all pixels and channels with that lightness); exact for every theta.
    """

    name = "lightness"
    param_names = ("lightness",)
    units = "HSL lightness (absolute shift, [0,1] scale)"
    requires_channels = 3
    kind = "layer"
    DOMAIN = (-1.0, 1.0)
    DEFAULT_RANGE = (-0.2, 0.2)

    def _pointwise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        l, _, f, C = _hsl(x)  # noqa: E741
        chrom = C > 0
        lp = torch.clamp(l + t, 0.0, 1.0)
        fp = 1.0 - torch.abs(2.0 * lp - 1.0)
        ratio = torch.where(chrom, fp / torch.where(chrom, f, torch.ones_like(f)), torch.ones_like(fp))
        return x + (lp - l) + (x - l) * (ratio - 1.0)

    def _breakpoints(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        l, _, _, _ = _hsl(x)  # noqa: E741
        return torch.stack([-l, 0.5 - l, 1.0 - l], dim=0).unsqueeze(0).expand(lo.shape[0], -1, -1, -1, -1)

    def _layer_spec(self, x: torch.Tensor, domain_lo: torch.Tensor, domain_hi: torch.Tensor) -> dict:
        Cc, H, W = x.shape
        P = H * W
        l, _, f, C = (v.reshape(P) for v in _hsl(x))  # noqa: E741
        chrom = C > 0
        out_idx = _pixel_index(Cc, H, W)
        unit_w = torch.ones(3 * P, 1, dtype=torch.float64)
        unit_c = torch.cat([l, l - 0.5, l - 1.0])
        ar = torch.arange(P)
        rows, cols, vals = [], [], []
        for ci in range(Cc):
            d = torch.where(chrom, (x[ci].reshape(P) - l) / torch.where(chrom, f, torch.ones_like(f)),
                            torch.zeros_like(l))
            for u, coef in enumerate((1.0 + 2.0 * d, -4.0 * d, 2.0 * d - 1.0)):
                sel = coef != 0
                rows.append(out_idx[ci][sel])
                cols.append(ar[sel] + u * P)
                vals.append(coef[sel])
        return {"unit_w": unit_w, "unit_c": unit_c, "rows": torch.cat(rows), "cols": torch.cat(cols),
                "vals": torch.cat(vals), "out_bias": torch.zeros(Cc * P, dtype=torch.float64)}


@register
class Brightness(PiecewiseLinear1D):
    """Additive brightness ``clip(x + b, 0, 1)`` (the Semantify-NN formula); any channel count.

    Layer: ``relu(b + x) - relu(b + x - 1)`` per value; units are shared by every pixel with the same
    value (at most ~2 x #distinct values, e.g. <= 511 for 8-bit images); exact for every b.
    """

    name = "brightness"
    param_names = ("brightness",)
    units = "intensity (additive, [0,1] scale)"
    requires_channels = None
    kind = "layer"
    DOMAIN = (-1.0, 1.0)
    DEFAULT_RANGE = (-0.2, 0.2)

    def _pointwise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + t, 0.0, 1.0)

    def _breakpoints(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return torch.stack([-x, 1.0 - x], dim=0).unsqueeze(0).expand(lo.shape[0], -1, -1, -1, -1)

    def _layer_spec(self, x: torch.Tensor, domain_lo: torch.Tensor, domain_hi: torch.Tensor) -> dict:
        v = x.reshape(-1)
        O = v.numel()  # noqa: E741
        ar = torch.arange(O)
        return {"unit_w": torch.ones(2 * O, 1, dtype=torch.float64), "unit_c": torch.cat([v, v - 1.0]),
                "rows": torch.cat([ar, ar]), "cols": torch.cat([ar, ar + O]),
                "vals": torch.cat([torch.ones(O, dtype=torch.float64), -torch.ones(O, dtype=torch.float64)]),
                "out_bias": torch.zeros(O, dtype=torch.float64)}


_GREY_WEIGHTS = (0.2989, 0.587, 0.114)   # torchvision rgb_to_grayscale


def _check_pivot(pivot: Any) -> float | str:
    if isinstance(pivot, str):
        if pivot != "mean":
            raise ValueError(f"pivot must be a number in [0, 1] or 'mean'; got {pivot!r}")
        return "mean"
    if isinstance(pivot, bool) or not isinstance(pivot, (int, float)) or not 0.0 <= float(pivot) <= 1.0:
        raise ValueError(f"pivot must be a number in [0, 1] or 'mean'; got {pivot!r}")
    return float(pivot)


def _grey_mean(x: torch.Tensor) -> torch.Tensor:
    """torchvision ``adjust_contrast``'s pivot: mean of ``rgb_to_grayscale(x)`` (3 channels) or of ``x``
    (any other channel count) over (C,H,W); shape (...,1,1,1)."""
    if x.shape[-3] == 3:
        w = torch.tensor(_GREY_WEIGHTS, dtype=x.dtype, device=x.device).reshape(3, 1, 1)
        grey = (x * w).sum(dim=-3, keepdim=True)
        return grey.mean(dim=(-3, -2, -1), keepdim=True)
    return x.mean(dim=(-3, -2, -1), keepdim=True)


class _Pivoted:
    """Contrast about a pivot ``p``: ``x -> x + a (x - p)``; ``p`` a number or the grey mean of the image."""

    pivot: float | str
    domain: Any
    default_range: Any

    def __init__(self, *, domain: Any = None, default_range: Any = None, pivot: float | str = 0.5):
        super().__init__(domain=domain, default_range=default_range)  # type: ignore[call-arg]
        self.pivot = _check_pivot(pivot)

    def _pivot_of(self, x: torch.Tensor) -> torch.Tensor | float:
        return _grey_mean(x) if self.pivot == "mean" else float(self.pivot)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()  # type: ignore[misc]
        d["pivot"] = self.pivot
        return d

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(domain={self.domain!r}, default_range={self.default_range!r}, "
                f"pivot={self.pivot!r})")

    def __hash__(self) -> int:
        return hash((super().__hash__(), self.pivot))


@register
class Contrast(_Pivoted, PiecewiseLinear1D):
    """Contrast ``clip((1 + a)(x - p) + p, 0, 1)`` about a pivot ``p``; any channel count.

    ``pivot`` (keyword, default 0.5) selects the convention, each equal to a reference function:

    * ``0.5`` (default): Semantify-NN (Mohapatra et al., CVPR 2020), ``clip((1 + a)(x - 0.5) + 0.5, 0, 1)``;
    * ``"mean"``: ``torchvision.transforms.functional.adjust_contrast(x, 1 + a)``, whose pivot is the mean
      grey level of the image (``rgb_to_grayscale`` weights 0.2989/0.587/0.114 for 3 channels, the plain
      mean for 1 channel).  The mean is a constant of the image (it does not depend on ``a``), so every
      pixel is still affine in ``a`` and the bounds and the layer are exact;
    * ``0.0``: ``clip((1 + a) x, 0, 1)``, i.e. ``torchvision.transforms.functional.adjust_brightness(x, 1 + a)``;
    * any other number in [0, 1]: that fixed pivot.

    ``a = 0`` is the identity, ``a = -1`` gives the constant pivot image.  Every pixel is
    ``x + a (x - p)`` clipped, piecewise linear in ``a`` with kinks where it reaches 0 or 1.  Layer:
    ``relu((x - p) a + x) - relu((x - p) a + x - 1)``, units shared by equal values; exact on the domain.
    """

    name = "contrast"
    param_names = ("contrast",)
    units = "relative gain (x -> p + (1 + a)(x - p))"
    requires_channels = None
    kind = "layer"
    DOMAIN = (-1.0, 1.0)
    DEFAULT_RANGE = (-0.3, 0.3)

    def _pointwise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self._pivot_of(x)
        return torch.clamp(x + t * (x - p), 0.0, 1.0)

    def _breakpoints(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        d = x - self._pivot_of(x)
        nz = d != 0
        safe = torch.where(nz, d, torch.ones_like(d))
        at0 = torch.where(nz, -x / safe, torch.full_like(x, -1.0))
        at1 = torch.where(nz, (1.0 - x) / safe, torch.full_like(x, -1.0))
        return torch.stack([at0, at1], dim=0).unsqueeze(0).expand(lo.shape[0], -1, -1, -1, -1)

    def _layer_spec(self, x: torch.Tensor, domain_lo: torch.Tensor, domain_hi: torch.Tensor) -> dict:
        v = x.reshape(-1)
        d = (x - self._pivot_of(x)).reshape(-1)
        O = v.numel()  # noqa: E741
        ar = torch.arange(O)
        # relu(d a + x) - relu(d a + x - 1) = clip(x + a d, 0, 1)
        return {"unit_w": torch.cat([d, d])[:, None], "unit_c": torch.cat([v, v - 1.0]),
                "rows": torch.cat([ar, ar]), "cols": torch.cat([ar, ar + O]),
                "vals": torch.cat([torch.ones(O, dtype=torch.float64), -torch.ones(O, dtype=torch.float64)]),
                "out_bias": torch.zeros(O, dtype=torch.float64)}


@register
class BrightnessContrast(_Pivoted, SemanticPerturbation):
    """Joint contrast and brightness ``clip((1 + a)(x - p) + p + b, 0, 1)``, ``theta = (a, b)``; any channel count.

    ``pivot`` as for :class:`Contrast` (default 0.5: the Semantify-NN formula
    ``clip((1 + a)(x - 0.5) + 0.5 + b, 0, 1)``; ``"mean"``: torchvision ``adjust_contrast(x, 1 + a)`` followed
    by adding ``b`` before the clip; ``0.0``: ``clip((1 + a) x + b, 0, 1)``).  Layer:
    ``relu((x - p) a + b + x) - relu((x - p) a + b + x - 1)``, units shared by equal values; exact for every
    (a, b).  Bounds: ``x + a (x - p) + b`` is affine in (a, b), so its extremes over a box are at corners
    (``a`` at the end given by the sign of ``x - p``, ``b`` at its ends); clip is monotone.
    """

    name = "brightness_contrast"
    param_names = ("contrast", "brightness")
    units = "relative gain a, additive intensity b"
    requires_channels = None
    kind = "layer"
    DOMAIN = ((-1.0, 1.0), (-1.0, 1.0))
    DEFAULT_RANGE = ((-0.2, 0.2), (-0.2, 0.2))

    def _apply(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        a = theta[:, 0].reshape(-1, 1, 1, 1)
        b = theta[:, 1].reshape(-1, 1, 1, 1)
        return torch.clamp(x + a * (x - self._pivot_of(x)) + b, 0.0, 1.0)

    def _bounds(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = x - self._pivot_of(x)
        a_lo, a_hi = lo[:, 0].reshape(-1, 1, 1, 1), hi[:, 0].reshape(-1, 1, 1, 1)
        b_lo, b_hi = lo[:, 1].reshape(-1, 1, 1, 1), hi[:, 1].reshape(-1, 1, 1, 1)
        lower = torch.clamp(x + torch.minimum(a_lo * d, a_hi * d) + b_lo, 0.0, 1.0)
        upper = torch.clamp(x + torch.maximum(a_lo * d, a_hi * d) + b_hi, 0.0, 1.0)
        return lower, upper

    def _layer_spec(self, x: torch.Tensor, domain_lo: torch.Tensor, domain_hi: torch.Tensor) -> dict:
        v = x.reshape(-1)
        d = (x - self._pivot_of(x)).reshape(-1)
        O = v.numel()  # noqa: E741
        ar = torch.arange(O)
        w = torch.stack([d, torch.ones_like(v)], dim=1)
        return {"unit_w": torch.cat([w, w]), "unit_c": torch.cat([v, v - 1.0]),
                "rows": torch.cat([ar, ar]), "cols": torch.cat([ar, ar + O]),
                "vals": torch.cat([torch.ones(O, dtype=torch.float64), -torch.ones(O, dtype=torch.float64)]),
                "out_bias": torch.zeros(O, dtype=torch.float64)}
