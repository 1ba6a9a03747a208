"""High-confidence bounds on norms of the smoothed classifier's gradient, from Monte Carlo half-sample means.

Setting (Mohapatra et al. 2020, "Higher-Order Certification for Randomized Smoothing", Sec. 5). With
h(z) = 1{f(x + sigma z) = cA} and z ~ N(0, I_D), the gradient of pA in *sigma units* is

    G = sigma * grad_x pA(x) = E[h(z) z] = E[v],   v = z (h(z) - 1/2)        (Stein's lemma; E[z / 2] = 0)

so v is an unbiased sample of G; the control variate -z/2 halves the magnitude of every sample
(|v_i| = |z_i| / 2). The samples are split into two independent halves with means m1 (n1 samples) and
m2 (n2 samples); m = (n1 m1 + n2 m2) / (n1 + n2) is the pooled mean.

Sub-Gaussian constant. For every unit vector u, <u, v> = zeta * s with zeta = <u, z> ~ N(0, 1) and
s in {-1/2, +1/2} an arbitrary (possibly randomised) function of z. Such a variable minus its mean is
sub-Gaussian with variance proxy c = 1/4 + 3/sqrt(8 pi e) ~= 0.6130 (the constant of Mohapatra et al. 2020,
also used in their official code JeetMo/HigherOrderCertification). We checked it: for fixed lambda the centred
log-MGF is concave in q(a) = P(s = +1/2 | |zeta| = a), so its maximisers are exactly the points satisfying the
first-order (KKT) conditions; for lambda > 0 the derivative in q(a) is proportional to
2 sinh(lambda a / 2) / E[exp(lambda zeta s)] - lambda a, convex in a >= 0 and zero at a = 0, so it changes sign at
most once and the maximiser is a threshold rule s = sign(|zeta| - t)/2 (t = 0 and t = inf included; lambda < 0 is
the mirror image s -> -s). A numerical sweep over t and lambda gives a largest proxy of ~0.402 <= c
(tests/test_gradient.py repeats this check; the proof sketch is in docs/subgaussian.md). Hence m1 - G, m2 - G,
m - G are sub-Gaussian *vectors* with proxy c/n1, c/n2, c/n: P(<u, m - G> >= t) <= exp(-n t^2 / (2c)) for every
fixed unit u.

Upper bounds on a norm ||G|| need only ONE fixed direction: u* = the dual-norm maximiser of G (deterministic
because G is), and <u*, m> <= ||u*||_dual ||m||. So no union bound over coordinates or sign vectors is needed
for the l_inf and l1 upper bounds (the paper's union bounds over 2D coordinates/signs and 2^D sign vectors are
valid but looser by a factor ~sqrt(log D) and ~sqrt(D) inside the square root).

Every function takes its own failure probability ``delta``; a certificate combining several bounds must give
each its share of alpha (estimators.confidence.split_alpha) so that the union bound holds.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

__all__ = [
    "SUBGAUSSIAN_VARIANCE_PROXY",
    "MAX_GRADIENT_NORM",
    "mean_deviation",
    "l2_norm_upper",
    "l2_norm_lower",
    "linf_norm_upper",
    "l1_norm_scaled_upper",
    "channel_norm_bounds",
    "GradientBounds",
    "gradient_bounds",
    "gradient_bound_names",
]

SUBGAUSSIAN_VARIANCE_PROXY = 0.25 + 3.0 / math.sqrt(8.0 * math.pi * math.e)
"""Variance proxy c of <u, z (1{f} - 1/2)> for unit u (Mohapatra et al. 2020); see the module docstring."""

MAX_GRADIENT_NORM = 1.0 / math.sqrt(2.0 * math.pi)
"""Deterministic cap: ||E[h z]||_2 <= phi(Phi^-1(E h)) <= 1/sqrt(2 pi) for every h with values in [0, 1]."""


# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------
def _vec(m, name: str) -> np.ndarray:
    try:
        arr = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(m).__name__}") from exc
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr.ravel()


def _count(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name} must be a positive int, got {n}")
    return int(n)


def _delta(delta, name: str = "delta") -> float:
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, 1), got {type(delta).__name__}")
    delta = float(delta)
    if not (0.0 < delta < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {delta!r}")
    return delta


def _pair(m1, m2, n1, n2):
    a = _vec(m1, "m1")
    b = _vec(m2, "m2")
    if a.shape != b.shape:
        raise ValueError(f"m1 and m2 must have the same size, got {a.size} and {b.size}")
    return a, b, _count(n1, "n1"), _count(n2, "n2")


# ----------------------------------------------------------------------------------------------------------
# bounds
# ----------------------------------------------------------------------------------------------------------
def mean_deviation(n: int, delta: float, proxy: float = SUBGAUSSIAN_VARIANCE_PROXY) -> float:
    """One-sided deviation t = sqrt(2 c log(1/delta) / n) of a mean of n i.i.d. c-sub-Gaussian samples.

    Guarantee: for any fixed unit direction u, P(<u, mean - E v> >= t) <= delta (and the same for <= -t).
    """
    n = _count(n, "n")
    delta = _delta(delta)
    return math.sqrt(2.0 * proxy * math.log(1.0 / delta) / n)


def _l2_terms(a: np.ndarray, b: np.ndarray, n1: int, n2: int, delta: float):
    inner = float(np.dot(a, b))
    norm2 = float(np.linalg.norm(b))
    tau1 = mean_deviation(n1, delta / 2.0)
    tau2 = mean_deviation(n2, delta / 2.0)
    return inner, norm2, tau1, tau2


def _l2_upper(a, b, n1, n2, delta) -> float:
    inner, norm2, tau1, tau2 = _l2_terms(a, b, n1, n2, delta)
    k = inner + norm2 * tau1
    y = 0.5 * (tau2 + math.sqrt(tau2 * tau2 + 4.0 * max(k, 0.0)))
    return min(y, MAX_GRADIENT_NORM)


def _l2_lower(a, b, n1, n2, delta) -> float:
    inner, norm2, tau1, tau2 = _l2_terms(a, b, n1, n2, delta)
    k = inner - norm2 * tau1
    if k <= 0.0:
        return 0.0
    return min(0.5 * (-tau2 + math.sqrt(tau2 * tau2 + 4.0 * k)), MAX_GRADIENT_NORM)


def l2_norm_upper(m1, m2, n1: int, n2: int, delta: float) -> float:
    """Upper confidence bound on ||G||_2 from the unbiased half-sample estimate <m1, m2> (sigma units).

    Guarantee: P(||G||_2 <= bound) >= 1 - delta. Proof (delta split in two halves): conditionally on m2,
    <m1 - G, m2> >= -||m2|| tau1 except with probability delta/2, so <G, m2> <= <m1, m2> + ||m2|| tau1;
    and <G, m2 - G> >= -||G|| tau2 except with probability delta/2, so ||G||^2 <= <G, m2> + ||G|| tau2.
    Hence y = ||G|| solves y^2 - tau2 y - (<m1, m2> + ||m2|| tau1) <= 0, giving
    y <= (tau2 + sqrt(tau2^2 + 4 (<m1,m2> + ||m2|| tau1))) / 2, with tau_i = sqrt(2 c log(2/delta) / n_i).
    Capped at 1/sqrt(2 pi) (deterministic). E<m1, m2> = ||G||^2 exactly, unlike the biased ||m||^2.

    Example: ``l2_norm_upper(np.zeros(10), np.zeros(10), 500, 500, 0.01) ~= 0.114``.
    """
    a, b, n1, n2 = _pair(m1, m2, n1, n2)
    return _l2_upper(a, b, n1, n2, _delta(delta))


def l2_norm_lower(m1, m2, n1: int, n2: int, delta: float) -> float:
    """Lower confidence bound on ||G||_2 from <m1, m2> (sigma units); 0 when nothing can be said.

    Guarantee: P(||G||_2 >= bound) >= 1 - delta. Mirror of :func:`l2_norm_upper`: except with probability
    delta/2 each, <G, m2> >= <m1, m2> - ||m2|| tau1 and ||G||^2 >= <G, m2> - ||G|| tau2, so
    y^2 + tau2 y >= <m1, m2> - ||m2|| tau1 =: K and y >= (-tau2 + sqrt(tau2^2 + 4K)) / 2 when K > 0.
    """
    a, b, n1, n2 = _pair(m1, m2, n1, n2)
    return _l2_lower(a, b, n1, n2, _delta(delta))


def linf_norm_upper(m, n: int, delta: float) -> float:
    """Upper confidence bound on ||G||_inf from the pooled mean m of n samples (sigma units).

    Guarantee: P(||G||_inf <= ||m||_inf + sqrt(2 c log(1/delta) / n)) >= 1 - delta. Proof: let i*, s* be the
    (fixed, unknown) coordinate and sign with ||G||_inf = s* G_i*; then s* m_i* >= s* G_i* - t except with
    probability delta, and ||m||_inf >= s* m_i*. (The paper uses a union bound over D coordinates x 2 signs,
    i.e. log(2D/delta); one fixed direction suffices for an upper bound.) Capped at 1/sqrt(2 pi).
    """
    v = _vec(m, "m")
    t = mean_deviation(_count(n, "n"), _delta(delta))
    return min(float(np.max(np.abs(v))) + t, MAX_GRADIENT_NORM)


def l1_norm_scaled_upper(m, n: int, delta: float) -> float:
    """Upper confidence bound on ||G||_1 / sqrt(D) from the pooled mean m of n samples (sigma units).

    Guarantee: P(||G||_1 / sqrt(D) <= ||m||_1 / sqrt(D) + sqrt(2 c log(1/delta) / n)) >= 1 - delta. Proof: the
    unit vector u* = sign(G) / sqrt(D) is fixed, <u*, G> = ||G||_1 / sqrt(D), <u*, m> >= <u*, G> - t except with
    probability delta, and <u*, m> <= ||m||_1 / sqrt(D). (The paper's union over the 2^D sign vectors, with
    deviation sqrt(2 c (D log 2 + log(1/delta)) / n), is valid but much looser.) Capped at 1/sqrt(2 pi) since
    ||G||_1 / sqrt(D) <= ||G||_2.
    """
    v = _vec(m, "m")
    t = mean_deviation(_count(n, "n"), _delta(delta))
    return min(float(np.sum(np.abs(v))) / math.sqrt(v.size) + t, MAX_GRADIENT_NORM)


def _channel_view(arr: np.ndarray, channels: int) -> np.ndarray:
    if arr.size % channels != 0:
        raise ValueError(f"the gradient size {arr.size} is not divisible by channels={channels}")
    return arr.reshape(channels, -1)


def channel_norm_bounds(m1, m2, n1: int, n2: int, channels: int, channel: int, *,
                        delta_in: float, delta_out: float) -> tuple[float, float]:
    """(upper bound on ||G_k||_2, lower bound on ||G_{-k}||_2) for channel k of a (C, ...) input.

    ``m1``, ``m2`` are flattened in channel-major order (C, H, W). G_k is the gradient restricted to channel k,
    G_{-k} to the other channels. Guarantees: P(||G_k||_2 <= upper) >= 1 - delta_in and
    P(||G_{-k}||_2 >= lower) >= 1 - delta_out, by :func:`l2_norm_upper` / :func:`l2_norm_lower` applied to the
    coordinate subsets (a projection of a sub-Gaussian vector is sub-Gaussian with the same proxy).
    With one channel the out-of-channel part is empty and the lower bound is 0.
    """
    a, b, n1, n2 = _pair(m1, m2, n1, n2)
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if isinstance(channel, bool) or not isinstance(channel, numbers.Integral) or not 0 <= channel < channels:
        raise ValueError(f"channel must be an int in [0, {channels}), got {channel!r}")
    d_in, d_out = _delta(delta_in, "delta_in"), _delta(delta_out, "delta_out")
    a2, b2 = _channel_view(a, channels), _channel_view(b, channels)
    upper = _l2_upper(a2[channel], b2[channel], n1, n2, d_in)
    if channels == 1:
        return upper, 0.0
    mask = np.arange(channels) != channel
    lower = _l2_lower(a2[mask].ravel(), b2[mask].ravel(), n1, n2, d_out)
    return upper, lower


# ----------------------------------------------------------------------------------------------------------
# all bounds of one certificate
# ----------------------------------------------------------------------------------------------------------
def gradient_bound_names(channels: int) -> list[str]:
    """Names of the failure-probability shares used by :func:`gradient_bounds` for an input with ``channels``."""
    names = ["grad_l2_upper", "grad_l2_lower", "grad_linf_upper", "grad_l1_upper"]
    if channels > 1:
        for k in range(channels):
            names += [f"grad_channel_{k}_in_upper", f"grad_channel_{k}_out_lower"]
    return names


@dataclass(frozen=True)
class GradientBounds:
    """Simultaneous confidence bounds on the sigma-unit gradient G = sigma grad pA (see module docstring).

    Each field holds with probability >= 1 - deltas[its share name]; all hold together with probability
    >= 1 - sum(deltas.values()) (union bound). ``l2_estimate`` = sqrt(max(0, <m1, m2>)) is the point estimate
    (no guarantee). ``channel_in_upper[k]`` bounds ||G_k||_2, ``channel_out_lower[k]`` bounds ||G_{-k}||_2 from
    below (empty tuples for one-channel input).
    """

    l2_upper: float
    l2_lower: float
    linf_upper: float
    l1_scaled_upper: float
    channel_in_upper: tuple[float, ...]
    channel_out_lower: tuple[float, ...]
    l2_estimate: float
    dim: int
    channels: int
    n1: int
    n2: int
    deltas: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "l2_upper": self.l2_upper,
            "l2_lower": self.l2_lower,
            "linf_upper": self.linf_upper,
            "l1_scaled_upper": self.l1_scaled_upper,
            "channel_in_upper": list(self.channel_in_upper),
            "channel_out_lower": list(self.channel_out_lower),
            "l2_estimate": self.l2_estimate,
            "dim": self.dim,
            "channels": self.channels,
            "n1": self.n1,
            "n2": self.n2,
            "deltas": dict(self.deltas),
        }


def gradient_bounds(m1, m2, n1: int, n2: int, *, channels: int, deltas: Mapping[str, float]) -> GradientBounds:
    """All gradient bounds used by a first-order certificate, each with its own failure probability.

    ``deltas`` must contain every name of ``gradient_bound_names(channels)`` (extra names are ignored).
    ``m1``, ``m2``: half-sample means of v = z (1{f = cA} - 1/2), flattened channel-major.
    """
    a, b, n1, n2 = _pair(m1, m2, n1, n2)
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    names = gradient_bound_names(channels)
    missing = [nm for nm in names if nm not in deltas]
    if missing:
        raise ValueError(f"deltas is missing failure probabilities for {missing}")
    d = {nm: _delta(deltas[nm], f"deltas[{nm!r}]") for nm in names}
    n = n1 + n2
    pooled = (n1 * a + n2 * b) / n
    in_upper: list[float] = []
    out_lower: list[float] = []
    if channels > 1:
        for k in range(channels):
            u, lo = channel_norm_bounds(a, b, n1, n2, channels, k, delta_in=d[f"grad_channel_{k}_in_upper"],
                                        delta_out=d[f"grad_channel_{k}_out_lower"])
            in_upper.append(u)
            out_lower.append(lo)
    return GradientBounds(
        l2_upper=_l2_upper(a, b, n1, n2, d["grad_l2_upper"]),
        l2_lower=_l2_lower(a, b, n1, n2, d["grad_l2_lower"]),
        linf_upper=linf_norm_upper(pooled, n, d["grad_linf_upper"]),
        l1_scaled_upper=l1_norm_scaled_upper(pooled, n, d["grad_l1_upper"]),
        channel_in_upper=tuple(in_upper),
        channel_out_lower=tuple(out_lower),
        l2_estimate=math.sqrt(max(0.0, float(np.dot(a, b)))),
        dim=int(a.size),
        channels=int(channels),
        n1=n1,
        n2=n2,
        deltas=d,
    )
