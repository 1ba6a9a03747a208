"""Floating-point sound Gaussian smoothing noise on the 1/255 input grid (Voracek & Hein, ICLR 2023).

Why. With float noise the model sees fl(x + sigma z), and a base classifier may read the rounding pattern of
that sum: its smoothed class probabilities are then not those of a Gaussian convolution, and the radius
sigma Phi^-1(pA) can be false (Voracek & Hein, "Sound randomized smoothing in floating-point arithmetic",
ICLR 2023: a certified radius of 1.26 with an adversarial example at distance 0.8).

Construction (their remedy). Inputs are quantised: x = u / L with integers u in [0, L] (L = 255 levels).
The noisy input is v / L with the integer

    v = clip(u + j, -M, L + M),   P(j = k) ~= P(round(L sigma z) = k),  z ~ N(0, 1),  k in [-(L + M), L + M]

(the two extreme values of j carry the whole tails). j is drawn from ONE uniform random integer U in
[0, 2^62) per coordinate by comparing U with integer thresholds T_i = round(2^62 Phi((i + 1/2) / (L sigma)))
computed in 50-digit arithmetic (mpmath): P(j = k) is then exactly (T_k - T_{k-1}) / 2^62, a rational number
within 1/2^62 of the ideal rounded-Gaussian mass at each cumulative threshold. The model receives
fl(v / L) (v converted to float32 exactly, one correctly rounded division): a deterministic function of the
integer vector v, so whatever the classifier does with floating-point bits, it is a fixed function h(v).

Guarantee. Let f~(y) = h(clip(round(L y), -M, L + M)) for real y in R^D (a fixed base classifier on R^D).
For x = u / L on the grid, round(L (x + sigma z)) = u + round(L sigma z), so the ideal distribution of v is the
distribution of f~'s argument under exact Gaussian noise: p_c(x) = P(f~(x + sigma z) = c), z ~ N(0, I_D),
is a Gaussian smoothing in exact arithmetic and Cohen et al.'s theorem applies to it for every x' in R^D;
for grid points x' it is exactly the class probability that this sampler estimates. The sampled distribution
differs from the ideal one by at most ``total_variation(noise, D)`` = D K / 2^62 in total variation
(K = number of thresholds; each of the K rounded thresholds is off by < 1 unit of 2^-62), so a lower bound
on the sampled class probability minus that amount is a lower bound on p_c(x). Assumption (the paper's only
one): the random integers are fair, i.e. torch's generator supplies independent uniform 64-bit words
(``torch.randint`` over a power-of-two range 2^62 takes one 64-bit word modulo 2^62: exactly uniform).

>>> noise = lattice_noise(0.25)
>>> u = grid_indices(torch.tensor([0.0, 128 / 255, 1.0]))      # tensor([0, 128, 255])
>>> v = sample_lattice(u, 4, noise, torch.Generator().manual_seed(0))   # (4, 3) integers
>>> lattice_input(v, noise, torch.float32)                      # fl(v / 255)
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "GRID_LEVELS",
    "THRESHOLD_BITS",
    "GRID_TOLERANCE",
    "LatticeNoise",
    "lattice_noise",
    "grid_indices",
    "sample_lattice",
    "lattice_input",
    "lattice_work_buffers",
    "LatticeSource",
    "total_variation",
]

GRID_LEVELS = 255
"""Input levels L: the grid is {0, 1/L, ..., 1}."""

THRESHOLD_BITS = 62
"""Random integers are uniform on [0, 2^62)."""

GRID_TOLERANCE = 1e-4
"""An input coordinate x is read as the grid point round(L x) / L when |L x - round(L x)| <= this."""

_TABLE_BITS = 18  # the top bits of U index a table of atoms; buckets that straddle a threshold use binary search
_STRADDLE = -(2 ** 31)
_TAIL_SIGMAS = 8.0  # clip margin M = ceil(8 L sigma): the clipped region has Gaussian mass < 1e-15 per side


@dataclass(frozen=True)
class LatticeNoise:
    """The integer noise distribution for one (sigma, levels); build it with :func:`lattice_noise`.

    ``thresholds[i]`` (i = 0 .. K-1, int64, non-decreasing) = round(2^62 Phi((i - J + 1/2) / (levels sigma)));
    a uniform U in [0, 2^62) gives j = #{i : thresholds[i] <= U} - J, so j in [-J, J] with J = levels + margin.
    The noisy integer input is clipped to [-margin, levels + margin].
    """

    sigma: float
    levels: int
    margin: int
    offset: int
    thresholds: np.ndarray = field(repr=False, compare=False)
    _device_tables: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def low(self) -> int:
        return -self.margin

    @property
    def high(self) -> int:
        return self.levels + self.margin

    def tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(thresholds, j of each top-bits bucket) as tensors on ``device``; buckets that straddle a threshold
        hold ``_STRADDLE`` (their j needs the binary search)."""
        key = str(torch.device(device))
        if key not in self._device_tables:
            thr = torch.from_numpy(self.thresholds.copy())
            starts = torch.arange(2 ** _TABLE_BITS, dtype=torch.int64) << (THRESHOLD_BITS - _TABLE_BITS)
            ends = starts + ((1 << (THRESHOLD_BITS - _TABLE_BITS)) - 1)
            atom_start = torch.searchsorted(thr, starts, right=True)
            atom_end = torch.searchsorted(thr, ends, right=True)
            table = (atom_start - self.offset).to(torch.int32)
            table[atom_start != atom_end] = _STRADDLE
            self._device_tables[key] = (thr.to(device), table.to(device))
        return self._device_tables[key]

    @property
    def tv_per_coordinate(self) -> float:
        """Total-variation distance of one sampled coordinate from the ideal clipped rounded Gaussian (bound)."""
        return float(len(self.thresholds)) / float(2 ** THRESHOLD_BITS)


def _check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"sigma must be a positive finite number, got {type(sigma).__name__}")
    s = float(sigma)
    if not (math.isfinite(s) and s > 0.0):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    if s * GRID_LEVELS * _TAIL_SIGMAS > 1e6:
        raise ValueError(f"sigma must be <= {1e6 / (GRID_LEVELS * _TAIL_SIGMAS):g} for lattice noise, got {s!r}")
    return s


def lattice_noise(sigma: float, *, levels: int = GRID_LEVELS) -> LatticeNoise:
    """The exact integer noise of Voracek & Hein for noise level ``sigma`` (input units, inputs in [0, 1]).

    Thresholds are computed once per (sigma, levels) in 50-digit arithmetic (cached). Guarantee: each stored
    threshold differs from 2^62 times the exact Gaussian CDF value by less than 1 (round to nearest; the
    50-digit error is below 1e-30 units), hence :attr:`LatticeNoise.tv_per_coordinate`.

    Example: ``lattice_noise(0.25).margin == 510`` (8 sigma in grid units).
    """
    s = _check_sigma(sigma)
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or not (1 <= levels <= 65535):
        raise ValueError(f"levels must be an int in [1, 65535], got {levels!r}")
    return _lattice_noise(s, int(levels))


@functools.lru_cache(maxsize=16)
def _lattice_noise(sigma: float, levels: int) -> LatticeNoise:
    import mpmath

    margin = int(math.ceil(_TAIL_SIGMAS * levels * sigma))
    offset = levels + margin
    scale = 2 ** THRESHOLD_BITS
    with mpmath.workdps(50):
        s = mpmath.mpf(levels) * mpmath.mpf(sigma)
        thr = [int(mpmath.nint(mpmath.ncdf((mpmath.mpf(k) + mpmath.mpf(0.5)) / s) * scale))
               for k in range(-offset, offset)]
    arr = np.asarray(thr, dtype=np.int64)
    if np.any(np.diff(arr) < 0) or arr[0] < 0 or arr[-1] > scale:
        raise ArithmeticError("lattice thresholds are not monotone")  # cannot happen for a CDF
    arr.setflags(write=False)
    return LatticeNoise(sigma=sigma, levels=levels, margin=margin, offset=offset, thresholds=arr)


def grid_indices(x: torch.Tensor, *, levels: int = GRID_LEVELS) -> torch.Tensor:
    """Integer grid coordinates u = round(levels x) (int64, same shape and device) of an input on the grid.

    Raises ValueError naming the worst coordinate when x is not within ``GRID_TOLERANCE / levels`` of the grid
    {0, 1/levels, ..., 1} (e.g. a normalised image, or one in [0, 255]).
    """
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    scaled = x.detach().to(torch.float64) * levels
    u = torch.round(scaled)
    dev = (scaled - u).abs()
    if bool((u < 0).any()) or bool((u > levels).any()):
        raise ValueError(f"x must lie in [0, 1] on the 1/{levels} grid for sound smoothing; got values in "
                         f"[{float(x.min()):g}, {float(x.max()):g}] (normalise inside the model, not the input)")
    worst = float(dev.max())
    if worst > GRID_TOLERANCE:
        i = int(dev.flatten().argmax())
        raise ValueError(f"x must lie on the 1/{levels} grid for sound smoothing (k/{levels}, k = 0..{levels}); "
                         f"coordinate {i} is {float(x.flatten()[i])!r}, {worst:.3g} grid steps from the grid")
    return u.to(torch.int64)


def sample_lattice(u: torch.Tensor, n: int, noise: LatticeNoise, generator: torch.Generator, *,
                   out: torch.Tensor | None = None, work: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """n noisy integer inputs v = clip(u + j, -margin, levels + margin), shape (n, *u.shape), int32.

    One uniform 62-bit integer per coordinate from ``generator`` (on u's device); j from a table indexed by
    its top 18 bits, or by binary search in the thresholds when that bucket straddles a threshold (the same
    j either way: the table only caches the search). Deterministic for a given generator state; on CPU the
    rows do not depend on how n is split into calls. ``out`` (int32, (n, *u.shape)) and ``work`` (from
    :func:`lattice_work_buffers`) are optional buffers to reuse.
    """
    thr, table = noise.tables(u.device)
    m = n * u.numel()
    draws, bucket, j = work if work is not None else lattice_work_buffers(m, u.device)
    draws, bucket, j = draws[:m], bucket[:m], j[:m]
    torch.randint(0, 2 ** THRESHOLD_BITS, (m,), generator=generator, device=u.device, dtype=torch.int64, out=draws)
    torch.bitwise_right_shift(draws, THRESHOLD_BITS - _TABLE_BITS, out=bucket)
    torch.index_select(table, 0, bucket, out=j)
    near = (j == _STRADDLE).nonzero(as_tuple=True)[0]
    if near.numel():
        j[near] = (torch.searchsorted(thr, draws[near], right=True) - noise.offset).to(torch.int32)
    if out is None:
        out = torch.empty((n, *u.shape), dtype=torch.int32, device=u.device)
    torch.add(j.view(n, *u.shape), u.to(torch.int32), out=out)
    return out.clamp_(noise.low, noise.high)


def lattice_work_buffers(size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scratch buffers for :func:`sample_lattice` of up to ``size`` coordinates (draws, buckets, j)."""
    return (torch.empty(size, dtype=torch.int64, device=device), torch.empty(size, dtype=torch.int64, device=device),
            torch.empty(size, dtype=torch.int32, device=device))


class LatticeSource:
    """``noise_source`` for :func:`estimators.sampling.sample_noise`: batches of model inputs fl(v / levels)
    (cast to ``dtype``) for the grid point with integer coordinates ``u``.

    Two output buffers alternate, so the batch returned by one call stays intact while the next call (which
    ``sample_noise`` may run ahead in its helper thread) fills the other; calls must not overlap each other."""

    def __init__(self, u: torch.Tensor, noise: LatticeNoise, dtype: torch.dtype, batch_size: int):
        self.u, self.noise, self.dtype = u, noise, dtype
        self.work = lattice_work_buffers(batch_size * u.numel(), u.device)
        self.v = [torch.empty((batch_size, *u.shape), dtype=torch.int32, device=u.device) for _ in range(2)]
        self.y = [torch.empty((batch_size, *u.shape), dtype=torch.float32, device=u.device) for _ in range(2)]
        self._calls = 0

    def __call__(self, b: int, generator: torch.Generator) -> torch.Tensor:
        k = self._calls % 2
        self._calls += 1
        v = sample_lattice(self.u, b, self.noise, generator, out=self.v[k][:b], work=self.work)
        return lattice_input(v, self.noise, self.dtype, out=self.y[k][:b])


def lattice_input(v: torch.Tensor, noise: LatticeNoise, dtype: torch.dtype, *,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """The model input fl(v / levels): v converted exactly to float32 (|v| < 2^24), one correctly rounded
    division, then cast to ``dtype`` (a deterministic function of v for every dtype)."""
    y = v.to(torch.float32) if out is None else out.copy_(v)
    y = y.div_(float(noise.levels))
    return y if dtype == torch.float32 else y.to(dtype)


def total_variation(noise: LatticeNoise, dim: int) -> float:
    """Bound on the total-variation distance between the sampled and the ideal noise for a D-dim input.

    Coordinates are independent, so the bound is D times :attr:`LatticeNoise.tv_per_coordinate`; every
    class probability of the sampled smoothed classifier is within this of the ideal one. Example:
    ``total_variation(lattice_noise(0.25), 784) ~= 3.9e-13``.
    """
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    return float(dim) * noise.tv_per_coordinate
