"""The nearest-flip search: dense parameter grid, sign-gradient steps on theta, bisection.

Every returned flip was checked with ``perturbation.apply`` + the model (a real counterexample). Parameter grids
and steps are tensors on the image's device.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

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


def attack_1d(model, perturbation, x, label, lo, hi, *, grid: int, steps: int, batch: int):
    """Nearest flips below and above 0 in [lo, hi]: dense grid, sign-gradient steps, bisection.

    Returns (flip_lo | None, flip_hi | None); every returned value was checked to flip."""
    dev = x.device
    thetas = torch.unique(torch.cat([torch.linspace(lo, hi, grid, dtype=torch.float64, device=dev),
                                     torch.zeros(1, dtype=torch.float64, device=dev)]))
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
                mid_t = torch.tensor([[mid * sign]], dtype=torch.float64, device=dev)
                _, pr = _margin_batch(model, perturbation, x, mid_t, label, batch)
                if int(pr[0]) != label:
                    b = mid
                else:
                    a = mid
            best = b
        result[sign] = None if best is None else best * sign
    return result[-1], result[1]


def _scale_of(theta: torch.Tensor, ranges: tuple) -> torch.Tensor:
    """Smallest s with theta in the box s * ranges (per row)."""
    s = torch.zeros(theta.shape[0], dtype=torch.float64, device=theta.device)
    for i, (lo_i, hi_i) in enumerate(ranges):
        t = theta[:, i]
        pos = torch.where(t > 0, t / hi_i if hi_i > 0 else torch.full_like(t, math.inf), torch.zeros_like(t))
        neg = torch.where(t < 0, t / lo_i if lo_i < 0 else torch.full_like(t, math.inf), torch.zeros_like(t))
        s = torch.maximum(s, torch.maximum(pos, neg))
    return s


def attack_2d(model, perturbation, x, label, ranges, *, grid: int, steps: int, batch: int):
    """Smallest-scale flip in the box ``ranges``: grid, sign-gradient steps, bisection along the ray."""
    g = max(3, int(math.ceil(math.sqrt(grid))))
    dev = x.device
    axes = [torch.unique(torch.cat([torch.linspace(a, b, g, dtype=torch.float64, device=dev),
                                    torch.zeros(1, dtype=torch.float64, device=dev)]))
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
            lo_b = torch.tensor([a for a, _ in ranges], dtype=torch.float64, device=dev)
            hi_b = torch.tensor([b for _, b in ranges], dtype=torch.float64, device=dev)
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
