"""Compare a certified-radius report with the Gaussian-mixture reference."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats

from certify._checks import check_int
from certify.synbench._args import _float_tuple


@dataclass(frozen=True)
class SynBenchComparison:
    """A report's certified-accuracy curve next to the Gaussian-mixture reference (see :func:`compare`).

    ``gap_area`` = ``integral (reference - certified) dr`` over ``radii`` (trapezoid rule, pixel
    units x accuracy); positive where the model certifies less than the reference.
    ``gap_area_positive`` / ``gap_area_negative`` split it by sign; ``max_gap`` is the largest
    ``reference - certified`` and ``radius_at_max_gap`` where it occurs.
    """

    name: str
    sigma: float
    clean_accuracy: float
    mu_norm: float
    norm: str
    radii: tuple[float, ...]
    reference: tuple[float, ...]
    certified: tuple[float, ...]
    gap_area: float
    gap_area_positive: float
    gap_area_negative: float
    max_gap: float
    radius_at_max_gap: float

    def summary(self) -> str:
        return "\n".join([
            f"SynBench reference vs certified accuracy: {self.name}",
            f"  Gaussian mixture N(+-mu, sigma^2 I), sigma = {self.sigma:g} (pixel units), Bayes accuracy = "
            f"clean accuracy {self.clean_accuracy:.4f} => ||mu|| = {self.mu_norm:.4g}",
            f"  reference(r) = Phi((||mu|| - r)/sigma) over r in [{self.radii[0]:g}, {self.radii[-1]:g}] ({self.norm})",
            f"  gap area (reference - certified) = {self.gap_area:.4g}  (+{self.gap_area_positive:.4g} / "
            f"-{self.gap_area_negative:.4g})",
            f"  largest gap {self.max_gap:.4f} at r = {self.radius_at_max_gap:.4g}",
        ])

    def to_dict(self) -> dict:
        return {f.name: json.loads(json.dumps(getattr(self, f.name))) for f in fields(self)}

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1))
        return p

    def plot(self, path: str | Path) -> Path:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 4.2), dpi=110)
        ax = fig.subplots()
        r = np.asarray(self.radii)
        ax.plot(r, self.reference, color="crimson", lw=2,
                label=f"Gaussian mixture, Bayes acc {self.clean_accuracy:.3f}, sigma={self.sigma:g}")
        ax.plot(r, self.certified, color="navy", lw=2, label=f"{self.name}: certified accuracy")
        ax.fill_between(r, self.certified, self.reference, color="grey", alpha=0.2,
                        label=f"gap area {self.gap_area:.3g}")
        ax.set_xlabel(f"{self.norm} radius (pixel units)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(True, ls="-.", alpha=0.5)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, format="png")
        return p


def _report_label(report) -> str:
    label = getattr(report, "label_text", None)
    return str(label()) if callable(label) else type(report).__name__


def compare(radius_report, *, sigma: float = 1.0, radii: Sequence[float] | None = None,
            clean_accuracy: float | None = None, norm: str = "l2", num_radii: int = 201,
            name: str | None = None) -> SynBenchComparison:
    """Compare a certified-accuracy curve with the best l2-robust accuracy of a matched Gaussian mixture.

    Reference: the symmetric mixture ``N(+-mu, sigma^2 I)`` whose Bayes accuracy ``Phi(||mu||/sigma)``
    equals the model's clean accuracy ``a``, i.e. ``||mu|| = sigma Phi^-1(a)``, and
    ``reference(r) = Phi((||mu|| - r)/sigma) = Phi(Phi^-1(a) - r/sigma)``. For ``r <= ||mu||`` this is
    the best l2-robust accuracy *any* classifier can have on that mixture (Bhagoji et al. 2019;
    Dobriban et al. 2020; see :func:`estimators.gaussian_mixture.l2_robust_accuracy`); it is also
    exactly the certified-accuracy curve randomized smoothing gives the mixture's Bayes classifier
    (a smoothed linear classifier is itself and Cohen's radius with exact ``p_A`` is the distance to
    its boundary). Beyond ``||mu||`` a balanced *binary* mixture's optimum is the constant
    classifier's 1/2, which has no multi-class analogue; the curve drawn there is the Bayes rule's.
    The reference is a yardstick, not a bound on the model: real data need not be Gaussian.

    Noise-scale convention (pixel units): ``sigma`` is the mixture's per-pixel noise standard
    deviation, default **1.0 pixel unit**, the scale of SynBench's own synthetic data: :func:`evaluate`
    draws ``x | y ~ N(y mu, I)`` and (with the default ``"official"`` mapping, a pure offset) feeds it
    to the model in [0, 1]-pixel units, so the reference is exactly SynBench's synthetic task at
    separation ``s = Phi^-1(a)``, and its radii are in the same pixel units as the report's.
    ``sigma`` is *not* the smoothing sigma; passing the smoothing sigma instead gives a different
    reading ("a task whose errors all come from isotropic noise at the smoothing scale"), which for
    typical models lies below their certified curves (e.g. Cohen et al.'s CIFAR-10 sigma=0.25 log).
    The reference depends on the radius only through ``r/sigma``: another sigma rescales the radius
    axis and nothing else.

    Args:
        radius_report: a :class:`certify.reports.RadiusReport` (anything with
            ``certified_accuracy(radii, norm=...)`` and ``clean_accuracy``).
        sigma: the mixture's noise scale in pixel units (> 0).
        radii: radius grid (>= 0, increasing); default ``num_radii`` points on
            ``[0, max(||mu||, largest finite radius in the report)]``.
        clean_accuracy: override the report's clean accuracy; must be in (0.5, 1) for a binary
            mixture to match it.
        norm: only ``"l2"`` (the mixture reference is an l2 statement).

    Example (Cohen et al.'s published CIFAR-10 log, sigma = 0.25: clean accuracy 0.748)::

        rep = RadiusReport.from_tsv("cohen_cifar10_resnet110_noise0.25_sigma0.25.tsv", sigma=0.25)
        cmp = compare(rep)                # mixture with unit pixel noise: ||mu|| = Phi^-1(0.748) = 0.668
        cmp.plot("compare.png"); print(cmp.summary())   # gap area 0.127 over r in [0, 0.98]
    """
    if norm != "l2":
        raise ValueError(f"norm must be 'l2' (the Gaussian-mixture reference is an l2 result), got {norm!r}")
    if not hasattr(radius_report, "certified_accuracy"):
        raise TypeError("radius_report must provide certified_accuracy(radii, norm=...) "
                        "(a certify.reports.RadiusReport)")
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise TypeError(f"sigma must be a number, got {sigma!r}") from None
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if clean_accuracy is None:
        clean_accuracy = radius_report.clean_accuracy
        if callable(clean_accuracy):
            clean_accuracy = clean_accuracy()
    a = float(clean_accuracy)
    if not (0.5 < a < 1.0):
        raise ValueError(f"clean_accuracy must be in (0.5, 1) for a symmetric binary Gaussian mixture to have it "
                         f"as Bayes accuracy, got {a!r}")
    mu_norm = sigma * float(stats.norm.ppf(a))
    if radii is None:
        num_radii = check_int("num_radii", num_radii, 2)
        r_max = mu_norm
        frame = getattr(radius_report, "to_frame", None)
        if callable(frame):
            col = frame()["radius"].to_numpy(dtype=np.float64)
            col = col[np.isfinite(col)]
            if col.size:
                r_max = max(r_max, float(col.max()))
        r = np.linspace(0.0, r_max, num_radii)
    else:
        r = np.asarray(_float_tuple("radii", radii, low=0.0, low_open=False, high=math.inf, high_open=True,
                                    increasing=True))
    ref = stats.norm.cdf((mu_norm - r) / sigma)
    cert = np.asarray(radius_report.certified_accuracy(r, norm=norm), dtype=np.float64).reshape(-1)
    if cert.shape != r.shape or not np.all(np.isfinite(cert)):
        raise ValueError("radius_report.certified_accuracy returned a curve of the wrong shape or non-finite values")
    diff = ref - cert
    trap = getattr(np, "trapezoid", None) or np.trapz
    pos, neg = np.maximum(diff, 0), np.maximum(-diff, 0)
    k = int(np.argmax(diff))
    return SynBenchComparison(
        name=name or _report_label(radius_report), sigma=sigma, clean_accuracy=a, mu_norm=mu_norm, norm=norm,
        radii=tuple(map(float, r)), reference=tuple(map(float, ref)), certified=tuple(map(float, cert)),
        gap_area=float(trap(diff, r)) if r.size > 1 else 0.0,
        gap_area_positive=float(trap(pos, r)) if r.size > 1 else 0.0,
        gap_area_negative=float(trap(neg, r)) if r.size > 1 else 0.0,
        max_gap=float(diff[k]), radius_at_max_gap=float(r[k]))
