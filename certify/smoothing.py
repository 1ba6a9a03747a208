"""Randomized smoothing: PREDICT and CERTIFY (Cohen et al. 2019) with optional first-order certificates
(Mohapatra et al. 2020).

The smoothed classifier is g(x) = argmax_c P(f(x + sigma z) = c), z ~ N(0, I), with noise added in input
(pixel) space; normalisation belongs inside ``model``. Radii are in input units.

>>> smooth = Smooth(model, num_classes=10, sigma=0.25)
>>> pred = smooth.predict(x, n=1000, alpha=0.001, batch_size=1000, seed=0)
>>> cert = smooth.certify(x, n_select=100, n_estimate=100_000, alpha=0.001, seed=0, first_order=True)
>>> cert.radius, cert.radii["l1"]

Guarantees (for a fixed input x, over the sampling randomness):

* ``predict``: P(label returned and label != g(x)) <= alpha (Hung & Fithian 2019 test of the top two counts).
* ``certify``: with probability >= 1 - alpha, either it abstains or g(x') = label for every x' with
  ||x' - x||_2 < radius. With ``first_order=True`` the SAME statement holds for every entry of ``radii``
  simultaneously (l2, l1, l_inf balls and per-channel l2 balls), because the failure probabilities of the
  pA lower bound and of every gradient bound add up to at most alpha (``alpha_split``).
* ``certify(sequential=True)``: the same statement, with n_estimate as a maximum and sampling stopped as soon as
  the decision (``target_radius``) or the radius (``radius_tol``) is settled: p_lower comes from a confidence
  sequence (:mod:`estimators.sequential`), valid at whatever data-dependent time sampling stops.

Floating point (``sound=True``, Voracek & Hein, ICLR 2023). By default the model sees fl(x + sigma z): the
statements above hold for the Gaussian noise of exact arithmetic, and a model that reads the rounding pattern
of the float sum can obtain false certificates. With ``sound=True`` inputs must lie on the 1/255 grid of
[0, 1]; the noise is drawn exactly on that lattice from random integers (:mod:`estimators.lattice`), the model
sees a deterministic function of an integer vector, and the certificate holds in exact arithmetic for the base
classifier x -> model(fl(clip(round(255 x)) / 255)) under Gaussian noise, for every x' with
||x' - x||_2 < radius (in particular every grid point); p_lower already subtracts the sampler's total-variation
bound (~1e-13). Zeroth order only.

Precision: noise is drawn and added in float32 (float64 for float64 models), never in float16/bfloat16; a
half-precision model receives round_to_its_dtype(x + sigma z) computed in float32, i.e. the certified base
classifier is y -> model(round(y)) (``SmoothingCertificate.model_dtype`` records the dtype).

The radius formulas live in :mod:`estimators.radius` and are re-exported here.
"""
from __future__ import annotations

import logging
import math
import numbers
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from certify._checks import check_int
from certify._modes import eval_mode as _eval_mode
from certify.devices import resolve_device
from estimators.confidence import AlphaBudget, binomial_test_pvalue, check_alpha, clopper_pearson_lower
from estimators.gradient import GradientBounds, gradient_bound_names, gradient_bounds
from estimators.lattice import LatticeSource, grid_indices, lattice_noise, total_variation
from estimators.radius import (
    channel_radius_first_order,
    cohen_radius,
    l1_radius_first_order,
    l2_radius_first_order,
    linf_radius_first_order,
    max_radius,
    radius_two_component,
    scan_radius,
)
from estimators.sampling import derive_seeds, sample_noise, sample_streams
from estimators.sequential import check_schedule, scheduled_clopper_pearson, stop_decision

__all__ = [
    "Smooth",
    "PIXEL_RANGE",
    "check_pixels",
    "Prediction",
    "SmoothingCertificate",
    "cohen_radius",
    "max_radius",
    "l2_radius_first_order",
    "radius_two_component",
    "l1_radius_first_order",
    "linf_radius_first_order",
    "channel_radius_first_order",
    "scan_radius",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """Result of :meth:`Smooth.predict`.

    ``label`` is the class with the most votes (lowest index among ties); it is the smoothed prediction only
    when ``abstained`` is False. ``p_value`` is the two-sided binomial test of the top two counts; the
    prediction abstains when it exceeds ``alpha``. ``counts`` has one entry per class (n samples).
    """

    label: int
    abstained: bool
    counts: tuple[int, ...]
    p_value: float
    n: int
    alpha: float
    seed: int
    sigma: float
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["counts"] = list(self.counts)
        return d


@dataclass(frozen=True)
class SmoothingCertificate:
    """Result of :meth:`Smooth.certify`.

    Fields:
      label: the class selected with n_select samples (lowest index among ties); certified only when
        ``abstained`` is False.
      abstained: True when p_lower <= 1/2 (nothing can be certified).
      p_lower: one-sided Clopper-Pearson lower bound on pA at level ``alpha_split["p_lower"]`` (sequential: at
        the level alpha_j of the check where sampling stopped; fails with probability <= alpha over all J checks).
      radius: zeroth-order l2 radius sigma * Phi^-1(p_lower) (Cohen); 0.0 when abstained. In a first-order
        certificate p_lower uses only part of alpha (``alpha_split["p_lower"]`` = alpha / 2), so this radius is
        somewhat smaller than a plain zeroth-order certificate at the same alpha; ``radii["l2"] >= radius``.
      radii: empty unless ``first_order``; then {"l2", "l1", "linf", "channel_0", ...}: each value is a valid
        radius (input units) for the whole 1 - alpha budget, and never smaller than what the zeroth-order bound
        implies for that norm under the same budget (l1 >= l2, linf >= l2 / sqrt(D), channel >= l2).
        All zeros when abstained.
      counts: class counts of the n_estimate estimation samples; counts_select: of the n_select samples.
      alpha_split: failure probability of each bound; values sum to <= alpha.
      gradient: the sigma-unit gradient bounds (GradientBounds.to_dict()) of a first-order certificate, else {}.
      input_shape: shape of the certified example; time_s: wall time of the whole call.
      n_used: estimation samples actually drawn (= n_estimate unless ``sequential``; ``counts`` sums to it).
      sequential, target_radius, radius_tol: echo of the sequential settings (None when not sequential).
      stop_reason: "fixed" (not sequential), or why sequential sampling stopped: "certified" (radius >=
        target_radius), "unreachable" (upper bound below Phi(r / sigma)), "out_of_budget" (even if
        all remaining samples voted for the label, r could not be certified), "converged" (the radius can
        grow by at most radius_tol * sigma) or "exhausted" (n_estimate samples drawn).
      sound: True when certified with lattice noise (``Smooth(..., sound=True)``; p_lower then already subtracts
        the sampler's total-variation bound); model_dtype: the dtype the model received (noise is always drawn
        and added in float32/float64 and the sum rounded once to this dtype).
    """

    label: int
    abstained: bool
    p_lower: float
    radius: float
    radii: dict[str, float]
    counts: tuple[int, ...]
    alpha_split: dict[str, float]
    sigma: float
    n_select: int
    n_estimate: int
    alpha: float
    seed: int
    time_s: float
    first_order: bool
    input_shape: tuple[int, ...]
    counts_select: tuple[int, ...] = ()
    gradient: dict[str, Any] = field(default_factory=dict)
    n_used: Optional[int] = None
    sequential: bool = False
    target_radius: Optional[float] = None
    radius_tol: Optional[float] = None
    stop_reason: str = "fixed"
    sound: bool = False
    model_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.n_used is None:
            object.__setattr__(self, "n_used", int(self.n_estimate))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["counts"] = list(self.counts)
        d["counts_select"] = list(self.counts_select)
        d["input_shape"] = list(self.input_shape)
        d["radii"] = dict(self.radii)
        d["alpha_split"] = dict(self.alpha_split)
        return d


# ----------------------------------------------------------------------------------------------------------
# validation (one place)
# ----------------------------------------------------------------------------------------------------------
def _real(value, name: str, accepted: str, ok) -> float:
    """A finite real number (not bool) satisfying ``ok``; otherwise ValueError naming ``accepted``, the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(float(value))
                                                                             and ok(float(value))):
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return float(value)


def _validate(*, sigma=None, alpha=None, seed=None, target_radius=None, radius_tol=None,
              **counts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if target_radius is not None:
        out["target_radius"] = _real(target_radius, "target_radius", "a finite number >= 0 (input units)",
                                     lambda v: v >= 0.0)
    if radius_tol is not None:
        out["radius_tol"] = _real(radius_tol, "radius_tol", "a finite number > 0 (sigma units)", lambda v: v > 0.0)
    if sigma is not None:
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
            raise TypeError(f"sigma must be a positive finite number, got {type(sigma).__name__}")
        if not (math.isfinite(float(sigma)) and float(sigma) > 0.0):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        out["sigma"] = float(sigma)
    if alpha is not None:
        out["alpha"] = check_alpha(alpha, "alpha")
    if seed is not None:
        out["seed"] = check_int("seed", seed, 0)
    for name, value in counts.items():
        minimum = 2 if name == "num_classes" else 1
        out[name] = check_int(name, value, minimum)
    return out


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    if isinstance(model, nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            if torch.is_floating_point(t):
                return t.device, t.dtype
        for t in list(model.parameters()) + list(model.buffers()):
            return t.device, torch.get_default_dtype()
    return torch.device("cpu"), torch.get_default_dtype()





#: the input range Smooth accepts by default: pixels in [0, 1], so sigma and radii are in pixel units
PIXEL_RANGE = (0.0, 1.0)
#: share of alpha a sequential certificate keeps for its last check (the cap n_estimate); see ``certify``
SEQUENTIAL_FINAL_SHARE = 0.5
#: samples per chunk of every noise stream (:func:`estimators.sampling.chunk_segments`): chunk k of a stream has
#: its own seed, so the chunks of one certificate can be sampled by different workers with identical results
SAMPLE_CHUNK = 10_000


def _check_input_range(input_range) -> tuple[float, float] | None:
    if input_range is None:
        return None
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise TypeError(f"input_range must be None or (low, high), got {input_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"input_range must be None or finite (low, high) with low < high, got {input_range!r}")
    return lo, hi


def check_pixels(x, input_range: tuple[float, float] | None = PIXEL_RANGE) -> None:
    """Refuse integer images and values outside ``input_range`` (None: no check).

    Smoothing noise and radii are in the units of ``x``; 0-255 pixels or normalised inputs ((x - mean) / std)
    would silently give radii in other units.
    """
    if input_range is None:
        return
    if isinstance(x, np.ndarray) and x.dtype.kind in "iuf":
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor) or x.dtype == torch.bool or x.is_complex():
        return  # _prepare names the accepted types
    lo, hi = input_range
    if not x.is_floating_point():
        raise TypeError(f"x has integer dtype {x.dtype}: pass float pixels in [{lo:g}, {hi:g}] (e.g. x.float() / 255)")
    finite = x[torch.isfinite(x)]
    if finite.numel() and (float(finite.min()) < lo or float(finite.max()) > hi):
        raise ValueError(
            f"x must hold pixel values in [{lo:g}, {hi:g}], got values in [{float(finite.min()):g}, "
            f"{float(finite.max()):g}]: divide 0-255 images by 255 and put normalisation ((x - mean) / std) inside "
            "the model (certify.models.Normalized), so sigma and radii are in pixel units; "
            "Smooth(..., input_range=None) turns the check off for inputs that are not images")


# ----------------------------------------------------------------------------------------------------------
# Smooth
# ----------------------------------------------------------------------------------------------------------
class Smooth:
    """A Gaussian-smoothed classifier around ``model`` (any callable/nn.Module mapping (B, *S) -> (B, K)).

    ``num_classes`` K >= 2, ``sigma`` > 0 is the noise standard deviation in input units. Sampling (the model's
    forward passes and the noise, drawn by a ``torch.Generator`` on that device) runs on ``device``:
    ``"cpu"``, ``"cuda"``, ``"auto"`` or a ``torch.device`` (:func:`certify.devices.resolve_device`); an
    ``nn.Module`` model is moved there (``model.to(device)``). With ``device=None`` it runs on the model's device
    (first parameter/buffer; CPU for parameter-free callables). The noise stream depends on the device type, so
    certificates are reproducible per device type. Noise is drawn in float32 (float64
    for float64 models) and the noisy input cast to the model's floating dtype (float16/bfloat16 models receive
    the float32 sum rounded once). ``sound=True``: floating-point sound lattice noise for inputs on the 1/255
    grid (see the module docstring; other inputs raise ValueError). The model is put in eval mode during
    sampling and every submodule's mode is restored afterwards.
    Inputs: ONE example of shape (C, H, W), a flat vector (D,), or any other shape of at most 3 axes that the
    model accepts (it receives batches (B, *shape)); a 4-D (1, C, H, W) input is squeezed to (C, H, W) and a 4-D
    batch of several examples is rejected. torch tensors or numpy arrays; converted to the noise dtype and the
    model's device; must be finite. Channels for per-channel radii: C = shape[0] for 3-D inputs, otherwise 1.
    ``input_range`` (default [0, 1], pixels): inputs outside it and integer dtypes are refused
    (:func:`check_pixels`); None for inputs that are not images in pixel units.
    ``noise_thread``: draw the next batch's noise in a helper thread while the model runs (``None``: on CPU when
    batches are large; results are identical either way). A process that owns one core (a Ray worker) sets False.
    """

    def __init__(self, model, num_classes: int, sigma: float, *,
                 input_range: tuple[float, float] | None = PIXEL_RANGE, sound: bool = False,
                 device: str | torch.device | None = None, noise_thread: bool | None = None):
        if not callable(model):
            raise TypeError(f"model must be a callable (e.g. torch.nn.Module), got {type(model).__name__}")
        if not isinstance(sound, bool):
            raise TypeError(f"sound must be a bool, got {type(sound).__name__}")
        if noise_thread is not None and not isinstance(noise_thread, bool):
            raise TypeError(f"noise_thread must be True, False or None, got {type(noise_thread).__name__}")
        v = _validate(sigma=sigma, num_classes=num_classes)
        dev = resolve_device(device)
        if dev is not None and isinstance(model, nn.Module):
            model.to(dev)
        self.model = model
        self.num_classes = v["num_classes"]
        self.sigma = v["sigma"]
        self.input_range = _check_input_range(input_range)
        self.sound = sound
        self.noise_thread = noise_thread
        self.device, self.dtype = _model_device_dtype(model)
        if dev is not None:
            self.device = dev
        self.noise_dtype = self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32
        self.lattice = lattice_noise(self.sigma) if sound else None

    def __repr__(self) -> str:
        return (f"Smooth(model={type(self.model).__name__}, num_classes={self.num_classes}, sigma={self.sigma}"
                f"{', sound=True' if self.sound else ''})")

    # -- input ----------------------------------------------------------------------------------------------
    def _prepare(self, x) -> torch.Tensor:
        check_pixels(x, self.input_range)
        if isinstance(x, np.ndarray):
            if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) or x.dtype == bool:
                raise TypeError(f"x must hold real numbers, got dtype {x.dtype}")
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor or numpy array, got {type(x).__name__}")
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"x must hold real numbers, got dtype {x.dtype}")
        if x.ndim == 0:
            raise ValueError("x must be one example with at least one dimension, got a scalar")
        if x.ndim == 4:
            if x.shape[0] != 1:
                raise ValueError("x must be ONE example (C, H, W) or (1, C, H, W); "
                                 f"got a batch of shape {tuple(x.shape)}")
            x = x[0]
        if x.ndim > 4:
            raise ValueError(f"x must be one example of shape (C, H, W) or (D,), got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError("x must not be empty")
        x = x.detach().to(device=self.device, dtype=self.noise_dtype).contiguous()
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x must be finite (no NaN or inf)")
        if self.sound:
            grid_indices(x)  # raises ValueError off the 1/255 grid
        return x

    @staticmethod
    def _channels(x: torch.Tensor) -> int:
        return int(x.shape[0]) if x.ndim == 3 else 1

    def _source(self, x, batch_size: int):
        return None if self.lattice is None else LatticeSource(grid_indices(x), self.lattice, self.dtype, batch_size)

    def _sample(self, x, *, n, batch_size, seed, target=None, first_chunk=0):
        return sample_noise(self.model, x, sigma=self.sigma, n=n, num_classes=self.num_classes,
                            batch_size=batch_size, seed=seed, target=target, input_dtype=self.dtype,
                            noise_source=self._source(x, min(batch_size, n)), overlap=self.noise_thread,
                            chunk_size=SAMPLE_CHUNK, first_chunk=first_chunk)

    def _sample_streams(self, x, streams, *, batch_size):
        """Counts of several (n, seed[, first_chunk]) streams in one pipelined pass (same counts as _sample)."""
        return sample_streams(self.model, x, sigma=self.sigma, streams=streams, num_classes=self.num_classes,
                              batch_size=batch_size, chunk_size=SAMPLE_CHUNK, input_dtype=self.dtype,
                              noise_source=self._source(x, min(batch_size, max(s[0] for s in streams))),
                              overlap=self.noise_thread)

    # -- PREDICT --------------------------------------------------------------------------------------------
    def predict(self, x, *, n: int, alpha: float, batch_size: int = 1000, seed: int = 0) -> Prediction:
        """Monte Carlo prediction of g(x) with abstention (PREDICT of Cohen et al. 2019).

        Draws n noisy samples; with n_A >= n_B the top two counts, abstains when the two-sided binomial test
        p-value of n_A out of n_A + n_B at 1/2 exceeds alpha. Guarantee: P(not abstained and label != g(x)) <=
        alpha. The noise stream is seeded by ``derive_seeds(seed, 1)[0]``. With ``sound=True`` the statement is
        about the smoothed classifier of the lattice sampler (within ~1e-13 of the ideal one in every class
        probability).
        """
        v = _validate(alpha=alpha, seed=seed, n=n, batch_size=batch_size)
        start = time.perf_counter()
        xt = self._prepare(x)
        with _eval_mode(self.model):
            stats = self._sample(xt, n=v["n"], batch_size=v["batch_size"], seed=derive_seeds(v["seed"], 1)[0])
        counts = stats.counts
        order = np.argsort(-counts, kind="stable")
        top, second = int(order[0]), int(order[1])
        n_a, n_b = int(counts[top]), int(counts[second])
        p_value = binomial_test_pvalue(n_a, n_a + n_b, 0.5)
        return Prediction(label=top, abstained=bool(p_value > v["alpha"]), counts=tuple(int(c) for c in counts),
                          p_value=p_value, n=v["n"], alpha=v["alpha"], seed=v["seed"], sigma=self.sigma,
                          time_s=time.perf_counter() - start)

    # -- CERTIFY --------------------------------------------------------------------------------------------
    def certify(self, x, *, n_select: int, n_estimate: int, alpha: float, batch_size: int = 1000, seed: int = 0,
                first_order: bool = False, sequential: bool = False, target_radius: Optional[float] = None,
                radius_tol: float = 0.01) -> SmoothingCertificate:
        """Certify the smoothed prediction at x (CERTIFY of Cohen et al. 2019; first order: Mohapatra et al.).

        Certificate: with probability >= 1 - alpha (over the sampling), either the result abstains or
        g(x') = label for every x' with ||x' - x||_2 < radius (and, with ``first_order``, for every ball in
        ``radii``). The same statement holds with ``sequential=True``, for any data-dependent stopping time.

        1. Select cA = argmax of the counts of n_select noisy samples (its own noise stream).
        2. Draw n_estimate fresh samples (another stream); with ``first_order`` the same pass accumulates the
           half-sample sums of z (1{f = cA} - 1/2).
        3. p_lower = Clopper-Pearson lower bound of n_A / n_estimate at level alpha (zeroth order) or
           alpha_split["p_lower"] = alpha / 2 (first order: the other half is split equally between the
           gradient bounds, see ``alpha_split``). With ``sound=True`` the lattice sampler's total-variation bound
           (:func:`estimators.lattice.total_variation`, ~1e-13) is subtracted. Abstain when p_lower <= 1/2; else
           radius = sigma Phi^-1(p_lower).
        4. First order: radii from (p_lower, gradient bounds) by :mod:`estimators.radius`; each is raised to at
           least the zeroth-order value for its norm.
        Seeds: the two streams use ``derive_seeds(seed, 2)``; each is cut into chunks of ``SAMPLE_CHUNK`` samples
        with their own seeds (:func:`estimators.sampling.chunk_segments`), so the chunks of one certificate can
        be sampled separately (:meth:`sample_chunk`, :meth:`certificate_from_counts`) with the same result.

        Sequential (``sequential=True``; Voracek 2024, Horvath et al. 2022): n_estimate is the MAXIMUM. Samples
        are drawn in segments ending at the fixed counts ``estimators.sequential.check_schedule(n_estimate)``
        (a geometric grid from 100; segment j has its own seed ``derive_seeds(estimate_seed, J)[j]`` and is
        drawn in batches of ``batch_size``); the check counts never depend on ``batch_size``. After each segment
        p_lower / p_upper are Clopper-Pearson bounds at the check's level alpha_j: alpha / (2 J) at the J - 1 earlier
        checks and alpha / 2 + alpha / (2 J) at the last one (``SEQUENTIAL_FINAL_SHARE`` = 1/2 of alpha kept for a run
        that reaches n_estimate, :func:`estimators.sequential.check_levels`); sum_j alpha_j = alpha (a union
        bound, :func:`estimators.sequential.scheduled_clopper_pearson`), so P(p_lower > pA at some check) <= alpha and
        the certificate above keeps its 1 - alpha guarantee wherever sampling stops. Stop rules
        (:func:`estimators.sequential.stop_decision`): with ``target_radius`` r (input units, >= 0) stop once
        radius >= r ("certified") or r is out of reach ("unreachable": p_upper < Phi(r / sigma);
        "out_of_budget": not even n_estimate samples all voting for cA would certify r); without it,
        stop once the radius can grow by at most ``radius_tol`` (sigma units, > 0) even if every remaining
        sample voted for cA, or once p_upper caps it within that tolerance ("converged"). ``n_used`` records
        the samples drawn. ``first_order=True`` is refused: its gradient bounds are fixed-n (half-sample)
        concentration bounds, not valid under optional stopping.
        """
        v = self._check_certify_args(n_select=n_select, n_estimate=n_estimate, alpha=alpha, batch_size=batch_size,
                                     seed=seed, first_order=first_order, sequential=sequential,
                                     target_radius=target_radius, radius_tol=radius_tol)
        start = time.perf_counter()
        xt = self._prepare(x)
        seed_select, seed_estimate = derive_seeds(v["seed"], 2)
        seq: dict[str, Any] = {}
        est = None
        n_used = v["n_estimate"]
        with _eval_mode(self.model):
            if not (sequential or first_order):  # both streams in one pass: no label needed before estimating
                sel, est = self._sample_streams(xt, [(v["n_select"], seed_select), (v["n_estimate"], seed_estimate)],
                                                batch_size=v["batch_size"])
                est_counts = est.counts
            else:
                sel = self._sample(xt, n=v["n_select"], batch_size=v["batch_size"], seed=seed_select)
                label = int(np.argmax(sel.counts))
                if sequential:
                    seq = self._estimate_sequential(xt, label, v, seed_estimate)
                    est_counts, n_used = seq.pop("counts"), seq["n_used"]
                else:  # first order: the half sums are taken for the selected label
                    est = self._sample(xt, n=v["n_estimate"], batch_size=v["batch_size"], seed=seed_estimate,
                                       target=label)
                    est_counts = est.counts
        return self._finish(xt, v, sel.counts, est_counts, n_used=n_used, est=est, seq=seq, start=start,
                            first_order=first_order, sequential=sequential)

    def _finish(self, xt: torch.Tensor, v: dict[str, Any], sel_counts, est_counts, *, n_used: int, est, seq: dict,
                start: float, first_order: bool, sequential: bool) -> SmoothingCertificate:
        """The certificate from the select / estimate counts (steps 3-4 of ``certify``)."""
        label = int(np.argmax(sel_counts))
        channels = self._channels(xt)
        dim = int(xt.numel())
        if first_order:
            names = gradient_bound_names(channels)
            budget = AlphaBudget.split(v["alpha"], {"p_lower": float(len(names)), **{nm: 1.0 for nm in names}})
        else:
            budget = AlphaBudget.split(v["alpha"], {"p_lower": 1.0})
        n_a = int(est_counts[label])
        if sequential:
            p_lower = float(seq.pop("p_lower"))
        else:
            p_lower = float(clopper_pearson_lower(n_a, v["n_estimate"], budget["p_lower"]))
        if self.lattice is not None:  # the ideal rounded-Gaussian probability is within the TV bound
            p_lower = max(0.0, p_lower - total_variation(self.lattice, int(xt.numel())))
        abstained = p_lower <= 0.5
        radius = 0.0 if abstained else float(cohen_radius(p_lower, self.sigma))
        radii: dict[str, float] = {}
        grad: dict[str, Any] = {}
        if first_order:
            keys = ["l2", "l1", "linf"] + [f"channel_{k}" for k in range(channels)]
            if abstained:
                radii = {k: 0.0 for k in keys}
            else:
                m1, m2 = est.half_means
                gb = gradient_bounds(m1, m2, est.half_n[0], est.half_n[1], channels=channels,
                                     deltas=budget.to_dict())
                grad = gb.to_dict()
                radii = _first_order_radii(p_lower, gb, self.sigma, dim, channels)
        return SmoothingCertificate(
            label=label, abstained=bool(abstained), p_lower=p_lower, radius=radius, radii=radii,
            counts=tuple(int(c) for c in est_counts), alpha_split=budget.to_dict(), sigma=self.sigma,
            n_select=v["n_select"], n_estimate=v["n_estimate"], alpha=v["alpha"], seed=v["seed"],
            time_s=time.perf_counter() - start, first_order=first_order, input_shape=tuple(xt.shape),
            counts_select=tuple(int(c) for c in sel_counts), gradient=grad, sound=self.sound,
            model_dtype=str(self.dtype).replace("torch.", ""), n_used=int(n_used),
            sequential=bool(sequential), target_radius=v.get("target_radius") if sequential else None,
            radius_tol=v["radius_tol"] if sequential else None, stop_reason=seq.get("stop_reason", "fixed"))

    # -- CERTIFY in chunks (several workers on one example) -------------------------------------------------
    @staticmethod
    def n_chunks(n_estimate: int) -> int:
        """How many chunks of ``SAMPLE_CHUNK`` samples the estimation stream of ``certify`` has."""
        return -(-check_int("n_estimate", n_estimate, 1) // SAMPLE_CHUNK)

    def sample_chunk(self, x, *, chunk: int, n_select: int, n_estimate: int, batch_size: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
        """Class counts of chunk ``chunk`` (0 <= chunk < ``n_chunks(n_estimate)``) of the estimation samples of
        ``certify(x, n_select=..., n_estimate=..., seed=seed)`` (zeroth order, fixed n), plus, for chunk 0, the
        counts of its n_select selection samples: ``{"chunk", "counts", "counts_select" (None unless chunk 0),
        "time_s"}``. Summing the chunks' counts and passing them to :meth:`certificate_from_counts` gives exactly
        ``certify``'s certificate (the noise of chunk k comes from its own seed, see ``SAMPLE_CHUNK``)."""
        v = _validate(seed=seed, n_select=n_select, n_estimate=n_estimate, batch_size=batch_size)
        total = self.n_chunks(v["n_estimate"])
        chunk = check_int("chunk", chunk, 0)
        if chunk >= total:
            raise ValueError(f"chunk must be in [0, {total}) for n_estimate={v['n_estimate']}, got {chunk}")
        start = time.perf_counter()
        xt = self._prepare(x)
        seed_select, seed_estimate = derive_seeds(v["seed"], 2)
        n_chunk = min(SAMPLE_CHUNK, v["n_estimate"] - chunk * SAMPLE_CHUNK)
        streams = [(n_chunk, seed_estimate, chunk)]
        if chunk == 0:
            streams.insert(0, (v["n_select"], seed_select, 0))
        with _eval_mode(self.model):
            stats = self._sample_streams(xt, streams, batch_size=v["batch_size"])
        return {"chunk": chunk, "counts": tuple(int(c) for c in stats[-1].counts),
                "counts_select": tuple(int(c) for c in stats[0].counts) if chunk == 0 else None,
                "time_s": time.perf_counter() - start}

    def certificate_from_counts(self, x, *, counts_select, counts, n_select: int, n_estimate: int, alpha: float,
                                batch_size: int = 1000, seed: int = 0,
                                time_s: Optional[float] = None) -> SmoothingCertificate:
        """The zeroth-order fixed-n certificate of ``certify`` from its counts: ``counts_select`` of the n_select
        selection samples and ``counts`` of the n_estimate estimation samples (e.g. summed over the chunks of
        :meth:`sample_chunk`). Identical to ``certify``'s result for the same counts (``time_s`` aside: default
        the time of this call). Counts that do not add up to n_select / n_estimate are refused."""
        v = self._check_certify_args(n_select=n_select, n_estimate=n_estimate, alpha=alpha, batch_size=batch_size,
                                     seed=seed, first_order=False, sequential=False, target_radius=None,
                                     radius_tol=0.01)
        sel = np.asarray(counts_select, dtype=np.int64)
        est = np.asarray(counts, dtype=np.int64)
        for name, arr, n in (("counts_select", sel, v["n_select"]), ("counts", est, v["n_estimate"])):
            if arr.shape != (self.num_classes,) or (arr < 0).any() or int(arr.sum()) != n:
                raise ValueError(f"{name} must be {self.num_classes} non-negative counts summing to {n}, got "
                                 f"{arr.tolist()}")
        start = time.perf_counter()
        cert = self._finish(self._prepare(x), v, sel, est, n_used=v["n_estimate"], est=None, seq={}, start=start,
                            first_order=False, sequential=False)
        return cert if time_s is None else replace(cert, time_s=float(time_s))

    def _check_certify_args(self, *, first_order, sequential, target_radius, radius_tol, **budgets) -> dict[str, Any]:
        for name, flag in (("first_order", first_order), ("sequential", sequential)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if first_order and self.sound:
            raise ValueError("first_order: not available with sound=True (the first-order bounds need the "
                             "continuous Gaussian noise); use first_order=False")
        v = _validate(target_radius=target_radius, radius_tol=radius_tol, **budgets)
        if radius_tol is None:
            raise ValueError("radius_tol must be a finite number > 0 (sigma units), got None")
        if target_radius is not None and not sequential:
            raise ValueError("target_radius: only used with sequential=True (it is the radius the sequential "
                             "test decides on); got sequential=False")
        if first_order and sequential:
            raise ValueError("first_order=True cannot be combined with sequential=True: the gradient bounds are "
                             "fixed-n concentration bounds and are not valid under optional stopping; use a fixed "
                             "n_estimate for first-order certificates")
        if first_order and v["n_estimate"] < 2:
            raise ValueError("first_order=True needs n_estimate >= 2 (two independent halves)")
        return v

    def _estimate_sequential(self, xt: torch.Tensor, label: int, v: dict[str, Any], seed: int) -> dict[str, Any]:
        """Draw estimation samples segment by segment along ``check_schedule(n_estimate)`` until a stop rule
        fires; returns counts, n_used, p_lower (Clopper-Pearson at the check's level of
        ``check_levels(alpha, J, final_share=SEQUENTIAL_FINAL_SHARE)``) and stop_reason."""
        n_max = v["n_estimate"]
        schedule = check_schedule(n_max)
        n_checks = len(schedule)
        seeds = derive_seeds(seed, n_checks)
        counts = np.zeros(self.num_classes, dtype=np.int64)
        done = 0
        reason = "exhausted"
        lower = 0.0
        levels = {"alpha": v["alpha"], "n_checks": n_checks, "final_share": SEQUENTIAL_FINAL_SHARE}
        for j, n_j in enumerate(schedule.tolist()):
            stats = self._sample(xt, n=n_j - done, batch_size=v["batch_size"], seed=seeds[j])
            counts += stats.counts
            done = n_j
            k = int(counts[label])
            lower, upper = scheduled_clopper_pearson(k, n_j, **levels, final=j == n_checks - 1)
            best_lower, _ = scheduled_clopper_pearson(k + n_max - n_j, n_max, **levels, final=True)
            stop = stop_decision(lower=lower, upper=upper, best_lower=best_lower, sigma=self.sigma,
                                 target_radius=v.get("target_radius"), radius_tol=v["radius_tol"])
            if stop is not None:
                reason = stop if (done < n_max or stop != "converged") else "exhausted"
                break
        return {"counts": counts, "n_used": done, "p_lower": lower, "stop_reason": reason}


def _first_order_radii(p: float, gb: GradientBounds, sigma: float, dim: int, channels: int) -> dict[str, float]:
    """Input-unit radii from p_lower and the gradient bounds; each at least its zeroth-order implication."""
    sqrt_d = math.sqrt(dim)
    r0 = float(l2_radius_first_order(p, math.inf))  # Cohen, sigma units
    r_l2 = max(float(l2_radius_first_order(p, gb.l2_upper)), r0)
    r_l1 = l1_radius_first_order(p, linf_upper=gb.linf_upper, l2_upper=gb.l2_upper, l2_lower=gb.l2_lower, dim=dim)
    r_linf = linf_radius_first_order(p, l1_scaled_upper=gb.l1_scaled_upper, l2_upper=gb.l2_upper,
                                     l2_lower=gb.l2_lower, dim=dim)
    radii = {
        "l2": sigma * r_l2,
        "l1": sigma * max(r_l1, r_l2),
        "linf": sigma * max(r_linf, r_l2 / sqrt_d),
    }
    if channels == 1:
        radii["channel_0"] = radii["l2"]  # the channel is the whole input
    else:
        for k in range(channels):
            r_k = channel_radius_first_order(p, in_upper=gb.channel_in_upper[k], out_lower=gb.channel_out_lower[k],
                                             l2_upper=gb.l2_upper, l2_lower=gb.l2_lower)
            radii[f"channel_{k}"] = sigma * max(r_k, r_l2)
    return radii
