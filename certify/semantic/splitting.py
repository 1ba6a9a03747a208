"""Adaptive splitting of the parameter range: the largest interval (k = 1) or box scale (k = 2) around 0
whose pieces all verify, bisecting failing pieces up to ``max_refine`` times.

Piece edges are Python floats (computed on the CPU, so they are the same on every device); the boxes handed to
the bounder are tensors on its device."""
from __future__ import annotations

from typing import Generator

import torch

from .bounds import _Bounder


def certify_1d(bounder: _Bounder, lo: float, hi: float, *, n_splits: int, max_refine: int,
               tol: float, pieces: list) -> tuple[float, float, int]:
    """Largest [c_lo, c_hi] around 0 inside [lo, hi] whose pieces verify; returns (c_lo, c_hi, n_refined).

    Drives :func:`certify_1d_steps`, bounding each round's new pieces with ``bounder`` in one call (on its
    device; the splitting itself stays on the CPU)."""
    steps = certify_1d_steps(lo, hi, n_splits=n_splits, max_refine=max_refine, tol=tol, pieces=pieces)
    dev = bounder.device
    try:
        request = next(steps)
        while True:
            b_lo, b_hi, known = request
            per_class = bounder.class_margins(b_lo.to(dev), b_hi.to(dev), None if known is None else known.to(dev))
            request = steps.send(per_class.cpu())
    except StopIteration as done:
        return done.value


def certify_1d_steps(lo: float, hi: float, *, n_splits: int, max_refine: int, tol: float,
                     pieces: list) -> Generator[tuple, torch.Tensor, tuple[float, float, int]]:
    """The splitting of :func:`certify_1d` as a generator: yields ``(lo, hi, known)`` (the new pieces of a
    round: (S, 1) float64 boxes and the (S, K-1) per-class margin lower bounds of the pieces they were cut
    from, -inf where none), receives their (S, K-1) per-class margin lower bounds (``_Bounder.class_margins``)
    and returns (c_lo, c_hi, n_refined). Several images' generators can be driven in lockstep, their rounds
    bounded together.

    Both sides of 0 are bounded together: first ``n_splits`` pieces (shared between the sides in proportion
    to their length), then, round by round, the (up to two) failing pieces nearest to 0 on each side are cut
    into 4 each (two bisection levels; one when only one is left) and the new pieces of both sides are bounded
    in one call (a piece's bounds do not depend on the other pieces, so the result is that of cutting one
    piece at a time, up to float rounding), until every side is verified to its end or its first failing
    piece is ``max_refine`` levels deep."""
    total = hi - lo
    sides: dict[int, list] = {}
    for sign, end in ((-1, lo), (1, hi)):
        if end == 0.0:
            continue
        n_side = max(1, int(round(n_splits * abs(end) / total)))
        edges = torch.linspace(0.0, end, n_side + 1, dtype=torch.float64).tolist()
        edges[-1] = end
        # inner, outer, depth, min margin lower bound, per-class margin lower bounds (None: not bounded)
        sides[sign] = [[edges[i], edges[i + 1], 0, None, None] for i in range(n_side)]
    new = [q for side in sides.values() for q in side]
    ends = {-1: 0.0 if lo == 0.0 else lo, 1: 0.0 if hi == 0.0 else hi}
    open_sides = set(sides)
    n_refined = 0
    while new:
        request = _request(new)
        _record(new, request, (yield request), pieces)
        new = []
        for sign in sorted(open_sides):
            side = sides[sign]
            failing = [i for i, q in enumerate(side) if q[3] <= tol]
            if not failing:
                open_sides.discard(sign)
                continue
            if side[failing[0]][2] >= max_refine:
                ends[sign] = side[failing[0]][0]
                open_sides.discard(sign)
                continue
            # the failing pieces nearest to 0 (up to _REFINE_AHEAD, stopping at one that cannot be cut further)
            chosen = []
            for i in failing[:_REFINE_AHEAD]:
                if side[i][2] >= max_refine:
                    break
                chosen.append(i)
            for i in reversed(chosen):
                subs = _cut(side[i], max_refine)
                side[i:i + 1] = subs
                new += subs
                n_refined += 1
    return ends[-1], ends[1], n_refined


# failing pieces of one side cut per round, nearest to 0 first (more per round saves calls but bounds pieces
# beyond the first one that fails at full depth; with per-class bounds inherited from the cut piece, 2 is cheapest)
_REFINE_AHEAD = 2
# bisection levels per cut
_LEVELS = 2


def _cut(piece: list, max_refine: int) -> list:
    """A piece [inner, outer, depth, lb, class lbs] cut into 4 (two bisection levels; one when only one is left).

    The pieces lie inside the cut one, so they inherit its per-class margin lower bounds (sound there)."""
    inner, outer, depth, _, known = piece
    levels = min(_LEVELS, max_refine - depth)
    cuts = torch.linspace(inner, outer, 2 ** levels + 1, dtype=torch.float64).tolist()
    cuts[0], cuts[-1] = inner, outer
    return [[a, b, depth + levels, None, known] for a, b in zip(cuts[:-1], cuts[1:])]


def _request(side: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    lo = torch.tensor([[min(p[0], p[1])] for p in side], dtype=torch.float64, device="cpu")
    hi = torch.tensor([[max(p[0], p[1])] for p in side], dtype=torch.float64, device="cpu")
    if all(p[4] is None for p in side):
        return lo, hi, None
    k1 = next(p[4] for p in side if p[4] is not None).numel()
    known = torch.stack([torch.full((k1,), -float("inf"), device="cpu") if p[4] is None else p[4] for p in side])
    return lo, hi, known


def _record(side: list, request: tuple, per_class: torch.Tensor, pieces: list) -> None:
    lo, hi, _ = request
    lb = per_class.min(dim=1).values
    for p, a, b, v, cls in zip(side, lo[:, 0].tolist(), hi[:, 0].tolist(), lb.tolist(), per_class):
        p[3] = float(v)
        p[4] = cls
        pieces.append(((a,), (b,), float(v)))


def certify_2d(bounder: _Bounder, ranges: tuple, *, n_splits: int, max_refine: int, tol: float,
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
    lo = torch.tensor([c[0] for c in cells], dtype=torch.float64, device=bounder.device)
    hi = torch.tensor([c[1] for c in cells], dtype=torch.float64, device=bounder.device)
    lb = bounder.margins(lo, hi).tolist()
    for (a, b), v in zip(cells, lb):
        pieces.append((tuple(a), tuple(b), float(v)))
    return lb
