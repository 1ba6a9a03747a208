"""Geometric perturbations: :class:`Rotation` (bilinear interpolation, zero padding or torchvision's masked fill)."""
from __future__ import annotations

import math
from typing import Any

import torch

from .base import SemanticPerturbation
from .registry import register

__all__ = ["Rotation", "bilinear_zero"]


def bilinear_zero(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation of ``x`` (B,C,H,W) at source points (``xs`` column, ``ys`` row; pixel
    centres at integer coordinates), treating everything outside the image as 0.

    ``xs``/``ys``: (B, ...) -> returns (B, C, ...).  Same values as ``torch.nn.functional.grid_sample``
    with ``mode="bilinear", padding_mode="zeros", align_corners=False`` (written out so that it is an
    independent implementation); differentiable in the coordinates.
    """
    B, C, H, W = x.shape
    shape = xs.shape[1:]
    xs = xs.reshape(B, -1)
    ys = ys.reshape(B, -1)
    x0 = torch.floor(xs)
    y0 = torch.floor(ys)
    fx = xs - x0
    fy = ys - y0
    flat = x.reshape(B, C, H * W)
    out = torch.zeros(B, C, xs.shape[1], dtype=x.dtype, device=x.device)
    for dy in (0, 1):
        for dx in (0, 1):
            xi = x0 + dx
            yi = y0 + dy
            valid = (xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1)
            idx = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).long()
            v = torch.gather(flat, 2, idx.unsqueeze(1).expand(B, C, -1))
            wgt = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy)
            out = out + torch.where(valid.unsqueeze(1), v * wgt.unsqueeze(1), torch.zeros_like(v))
    return out.reshape(B, C, *shape)


def _offsets(H: int, W: int, dtype: torch.dtype, device: Any = None) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    cx = (W - 1) / 2.0
    cy = (H - 1) / 2.0
    xo = torch.arange(W, dtype=dtype, device=device) - cx
    yo = torch.arange(H, dtype=dtype, device=device) - cy
    return xo, yo, cx, cy


@register
class Rotation(SemanticPerturbation):
    """Rotation by ``angle`` degrees counter-clockwise about the image centre, bilinear interpolation.

    Convention (torchvision's): output pixel (row i, column j) takes the bilinear interpolation ``I`` of the
    input at ``xs = cx + cos(a)(j - cx) - sin(a)(i - cy)``, ``ys = cy + sin(a)(j - cx) + cos(a)(i - cy)``
    with ``cx = (W-1)/2``, ``cy = (H-1)/2`` (the image centre; pixel centres at integer coordinates),
    reading zeros outside the image.  ``fill`` (keyword) selects the reference function:

    * ``fill=None`` (default): ``I`` itself (zero padding), which equals
      ``torchvision.transforms.functional.rotate(x, angle, interpolation=BILINEAR)`` (its ``fill=None``);
    * ``fill=c`` (a number in [0, 1], e.g. ``0.0``, the default of torchvision's ``RandomRotation``):
      ``I * M + c (1 - M)`` with ``M`` the bilinear interpolation of an all-ones image (the coverage
      mask), which equals ``rotate(x, angle, interpolation=BILINEAR, fill=c)``.  It differs from
      ``fill=None`` only where the source point is within one pixel of the image border.

    Kind ``"box"``: no exact layer.  :meth:`pixel_bounds` is sound: for an angle interval every source
    point moves on a circular arc; the interval is cut into sub-arcs of length <= ``max_arc_px``
    pixels (and <= 90 degrees), each sub-arc is covered by the bounding box of its chord widened by
    the sagitta ``rho (1 - cos(delta/2))``, and since the zero-padded bilinear interpolant is bilinear
    (``a + b u + c v + d u v``) on every unit cell, its extremes over a box are attained at the box
    corners or where the box crosses grid lines, which are all evaluated.  With a ``fill``, ``I`` and
    ``M`` are bounded this way over the same boxes and combined by interval arithmetic
    (``I >= 0`` and ``0 <= M <= 1``, so ``I M`` lies in ``[I_lo M_lo, I_hi M_hi]``; the result, a convex
    combination of ``I`` and ``c``, also lies in ``[min(I_lo, c), max(I_hi, c)]``), exact wherever ``M = 1``.
    Smaller ``max_arc_px`` gives tighter, slower bounds.  The bounds hold for the exact (real-arithmetic)
    rotation; a float32 :meth:`apply` may differ from it by ~1e-5 (rounding of the source coordinates).
    """

    name = "rotation"
    param_names = ("angle",)
    units = "degrees"
    requires_channels = None
    kind = "box"
    DOMAIN = (-180.0, 180.0)
    DEFAULT_RANGE = (-15.0, 15.0)

    def __init__(self, *, domain: Any = None, default_range: Any = None, max_arc_px: float = 0.25,
                 fill: float | None = None):
        super().__init__(domain=domain, default_range=default_range)
        if isinstance(max_arc_px, bool) or not isinstance(max_arc_px, (int, float)) or \
                not (0.01 <= float(max_arc_px) <= 4.0):
            raise ValueError(f"max_arc_px must be a number in [0.01, 4] (pixels); got {max_arc_px!r}")
        if fill is not None and (isinstance(fill, bool) or not isinstance(fill, (int, float))
                                 or not 0.0 <= float(fill) <= 1.0):
            raise ValueError(f"fill must be None (zero padding) or a number in [0, 1]; got {fill!r}")
        self.max_arc_px = float(max_arc_px)
        self.fill = None if fill is None else float(fill)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["max_arc_px"] = self.max_arc_px
        d["fill"] = self.fill
        return d

    def __repr__(self) -> str:
        return (f"Rotation(domain={self.domain!r}, default_range={self.default_range!r}, "
                f"max_arc_px={self.max_arc_px!r}, fill={self.fill!r})")

    def __hash__(self) -> int:
        return hash((super().__hash__(), self.max_arc_px, self.fill))

    def _apply(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        a = theta[:, 0] * (math.pi / 180.0)
        cos = torch.cos(a).reshape(B, 1, 1)
        sin = torch.sin(a).reshape(B, 1, 1)
        xo, yo, cx, cy = _offsets(H, W, x.dtype, x.device)
        xo = xo.reshape(1, 1, W)
        yo = yo.reshape(1, H, 1)
        xs = cos * xo - sin * yo + cx
        ys = sin * xo + cos * yo + cy
        if self.fill is None:
            return bilinear_zero(x, xs, ys)
        both = bilinear_zero(torch.cat([x, torch.ones_like(x[:, :1])], dim=1), xs, ys)
        mask = both[:, -1:]
        return both[:, :-1] * mask + self.fill * (1.0 - mask)

    def _bounds(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        C, H, W = x.shape
        f64 = torch.float64
        xo, yo, cx, cy = _offsets(H, W, f64, x.device)
        X = xo.reshape(1, W).expand(H, W).reshape(-1)        # (P,)
        Y = yo.reshape(H, 1).expand(H, W).reshape(-1)
        rho = torch.sqrt(X * X + Y * Y)
        rho_max = float(rho.max())
        P = H * W
        img = x.unsqueeze(0)
        if self.fill is not None:          # last channel: the coverage mask M
            img = torch.cat([img, torch.ones_like(img[:, :1])], dim=1)
            C += 1
        S = lo.shape[0]
        # the sub-intervals of every row (arc <= max_arc_px at the outermost pixel, <= 90 degrees), bounded
        # together in chunks; each row's bounds are the extremes over its own sub-intervals
        starts, ends, owner = [], [], []
        for s in range(S):
            a0 = math.radians(float(lo[s, 0]))
            a1 = math.radians(float(hi[s, 0]))
            width = a1 - a0
            n_sub = max(1, math.ceil(width / (math.pi / 2)), math.ceil(rho_max * width / self.max_arc_px))
            edges = a0 + width * torch.arange(n_sub + 1, dtype=f64, device=x.device) / n_sub
            edges[0], edges[-1] = a0, a1
            starts.append(edges[:-1])
            ends.append(edges[1:])
            owner.append(torch.full((n_sub,), s, dtype=torch.long, device=x.device))
        all_a, all_b, all_s = torch.cat(starts).reshape(-1, 1), torch.cat(ends).reshape(-1, 1), torch.cat(owner)
        lower = torch.full((S, C, P), math.inf, dtype=f64, device=x.device)
        upper = torch.full((S, C, P), -math.inf, dtype=f64, device=x.device)
        chunk = max(1, 250_000 // (P * max(1, C)))
        for c0 in range(0, all_s.numel(), chunk):
            ea, eb, rows = all_a[c0:c0 + chunk], all_b[c0:c0 + chunk], all_s[c0:c0 + chunk]
            n = ea.shape[0]
            xa = torch.cos(ea) * X - torch.sin(ea) * Y + cx
            ya = torch.sin(ea) * X + torch.cos(ea) * Y + cy
            xb = torch.cos(eb) * X - torch.sin(eb) * Y + cx
            yb = torch.sin(eb) * X + torch.cos(eb) * Y + cy
            sag = rho * (1.0 - torch.cos((eb - ea) / 2.0)) + 1e-9          # (n, P)
            u0 = torch.minimum(xa, xb) - sag
            u1 = torch.maximum(xa, xb) + sag
            v0 = torch.minimum(ya, yb) - sag
            v1 = torch.maximum(ya, yb) + sag
            us = self._grid_coords(u0, u1)                                 # (n, P, G)
            vs = self._grid_coords(v0, v1)
            G1, G2 = us.shape[-1], vs.shape[-1]
            U = us.unsqueeze(-1).expand(n, P, G1, G2).reshape(1, -1)
            V = vs.unsqueeze(-2).expand(n, P, G1, G2).reshape(1, -1)
            vals = bilinear_zero(img, U, V).reshape(C, n, P, G1 * G2)
            idx = rows.reshape(n, 1, 1).expand(n, C, P)
            lower.scatter_reduce_(0, idx, vals.amin(dim=3).transpose(0, 1), reduce="amin")
            upper.scatter_reduce_(0, idx, vals.amax(dim=3).transpose(0, 1), reduce="amax")
        lower = lower.reshape(S, C, H, W)
        upper = upper.reshape(S, C, H, W)
        if self.fill is None:
            return lower, upper
        # I in [lo, hi] with I >= 0, M in [m_lo, m_hi] within [0, 1]: I M + c (1 - M)
        m_lo, m_hi = lower[:, -1:].clamp(0.0, 1.0), upper[:, -1:].clamp(0.0, 1.0)
        i_lo, i_hi = lower[:, :-1].clamp_min(0.0), upper[:, :-1]
        lower = i_lo * m_lo + self.fill * (1.0 - m_hi)
        upper = i_hi * m_hi + self.fill * (1.0 - m_lo)
        # a convex combination of I and c lies between min(I, c) and max(I, c)
        return torch.maximum(lower, i_lo.clamp_max(self.fill)), torch.minimum(upper, i_hi.clamp_min(self.fill))

    @staticmethod
    def _grid_coords(c0: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
        """Box ends plus every integer (grid line) in [c0, c1]: (..., 2 + m) with m = floor(max side) + 1."""
        m = int(math.floor(float((c1 - c0).max()))) + 1
        base = torch.floor(c0).unsqueeze(-1) + 1.0 + torch.arange(m, dtype=c0.dtype, device=c0.device)
        inner = torch.minimum(torch.maximum(base, c0.unsqueeze(-1)), c1.unsqueeze(-1))
        return torch.cat([c0.unsqueeze(-1), c1.unsqueeze(-1), inner], dim=-1)
