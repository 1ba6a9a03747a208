"""The hidden cost of randomized smoothing: class regions that shrink or vanish as sigma grows.

Mohapatra, Ko, Weng, Chen, Liu, Daniel, "Hidden Cost of Randomized Smoothing" (AISTATS 2021): the
smoothed classifier ``g(x) = argmax_c P(f(x + sigma z) = c)`` shrinks the decision regions of the
base classifier ``f``; a region thinner than the noise scale vanishes from ``g`` altogether, and
noise augmentation does not necessarily bring it back. On data this shows up as class-wise accuracy
disparity that grows with sigma.

This module provides

* a closed-form oracle (:class:`SlabClassifier`, :func:`slab_probabilities`, :func:`vanishing_sigma`):
  a base classifier on R^d (d = 1 or 2) that predicts class 1 on the slab ``|x_0| <= w/2``, class 0
  left of it and class 2 right of it. Under ``N(0, sigma^2 I)`` noise only ``x_0`` matters and
  ``P(class 1 at x) = Phi((x_0 + w/2)/sigma) - Phi((x_0 - w/2)/sigma)``,
  ``P(class 0) = Phi((-w/2 - x_0)/sigma)``, ``P(class 2) = 1 - Phi((w/2 - x_0)/sigma)``.
  Class 1's probability is largest at ``x_0 = 0`` where the two others are equal, so ``g`` predicts
  class 1 somewhere iff ``2 Phi(w/(2 sigma)) - 1 > (1 - (2 Phi(w/(2 sigma)) - 1))/2``, i.e.
  ``sigma < w / (2 Phi^-1(2/3))`` (about ``1.161 w``): beyond that the slab's class has vanished;
* :func:`sigma_sweep`: accuracy and disparity per class of one or several models against sigma
  (the smoothed prediction of :meth:`certify.smoothing.Smooth.predict` with abstention; ``sigma = 0``
  is the base classifier itself), as a frozen :class:`SigmaSweep` with a Markdown table and a plot.

Example::

    >>> from certify.hidden_cost import vanishing_sigma
    >>> round(vanishing_sigma(1.0), 4)
    1.1609
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from certify._checks import check_float, check_float_tuple, check_int

logger = logging.getLogger(__name__)

__all__ = ["SlabClassifier", "slab_probabilities", "slab_smoothed_class", "vanishing_sigma", "SigmaSweep",
           "sigma_sweep", "DEFAULT_SIGMAS"]

#: the sigma grid of the study's sweep (0 = the base classifier)
DEFAULT_SIGMAS: tuple[float, ...] = (0.0, 0.12, 0.25, 0.5)


# ----------------------------------------------------------------------------------------------
# closed-form oracle
# ----------------------------------------------------------------------------------------------
def _check_width_sigma(width: float, sigma: float | None = None) -> None:
    check_float("width", width, low=0.0, low_open=True)
    if sigma is not None:
        check_float("sigma", sigma, low=0.0, low_open=True)


class SlabClassifier(nn.Module):
    """Base classifier on R^d: class 1 on ``|x_0| <= width/2``, class 0 for ``x_0 < -width/2``, class 2 beyond.

    Returns one-hot logits (B, 3) for inputs (B, d); only the first coordinate is read.
    """

    def __init__(self, width: float):
        super().__init__()
        _check_width_sigma(width)
        self.width = float(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x.reshape(x.shape[0], -1)[:, 0]
        h = self.width / 2
        cls = torch.where(x0 < -h, 0, torch.where(x0 > h, 2, 1))
        return torch.nn.functional.one_hot(cls, 3).to(x.dtype)


def slab_probabilities(x0, width: float, sigma: float) -> np.ndarray:
    """``(P(class 0), P(class 1), P(class 2))`` of :class:`SlabClassifier` under ``N(0, sigma^2 I)`` noise.

    Exact (Gaussian CDFs, see the module docstring); ``x0`` is the first coordinate (scalar or array);
    the result has shape ``x0.shape + (3,)`` and sums to 1.

    Example:
        >>> slab_probabilities(0.0, 1.0, 0.5).round(4).tolist()
        [0.1587, 0.6827, 0.1587]
    """
    _check_width_sigma(width, sigma)
    x = np.asarray(x0, dtype=np.float64)
    h = width / 2
    p0 = stats.norm.cdf((-h - x) / sigma)
    p2 = stats.norm.sf((h - x) / sigma)
    p1 = 1.0 - p0 - p2
    return np.stack([p0, p1, p2], axis=-1)


def slab_smoothed_class(x0, width: float, sigma: float) -> np.ndarray:
    """The smoothed classifier's class at ``x0`` (argmax of :func:`slab_probabilities`; ties to the lower class)."""
    return np.argmax(slab_probabilities(x0, width, sigma), axis=-1)


def vanishing_sigma(width: float) -> float:
    """The smallest sigma at which the slab's class vanishes from the smoothed classifier: ``w / (2 Phi^-1(2/3))``.

    For ``sigma`` below it the smoothed classifier predicts class 1 on an interval around 0 of
    positive length; at and above it, nowhere (units: those of ``width``).
    """
    _check_width_sigma(width)
    return float(width / (2.0 * stats.norm.ppf(2.0 / 3.0)))


# ----------------------------------------------------------------------------------------------
# sigma sweep on a model
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SigmaSweep:
    """Per-class accuracy of smoothed classifiers against sigma (see :func:`sigma_sweep`).

    Echoed inputs: ``models`` (names), ``sigmas``, ``classes``, ``n_examples``, ``n``, ``alpha``,
    ``seed``. ``accuracy[m][s][c]`` is model ``m``'s accuracy at ``sigmas[s]`` on the examples of class
    ``classes[c]`` (an abstention counts as an error; None for a class without examples);
    ``overall[m][s]`` the accuracy on all examples, ``abstain_rate[m][s]``, ``disparity[m][s]`` (max -
    min class accuracy), ``changed_fraction[m][s]`` (fraction whose smoothed output, abstentions
    included, differs from the base prediction), ``vanished[m][s]`` (classes the base classifier
    predicts on some example but the smoothed classifier on none).
    """

    models: tuple[str, ...]
    sigmas: tuple[float, ...]
    classes: tuple[int, ...]
    n_examples: int
    n: int
    alpha: float
    seed: int
    class_counts: tuple[int, ...]
    accuracy: tuple[tuple[tuple[float | None, ...], ...], ...]
    overall: tuple[tuple[float, ...], ...]
    abstain_rate: tuple[tuple[float, ...], ...]
    disparity: tuple[tuple[float, ...], ...]
    changed_fraction: tuple[tuple[float, ...], ...]
    vanished: tuple[tuple[tuple[int, ...], ...], ...]
    time_s: float = field(default=0.0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: json.loads(json.dumps(getattr(self, f.name))) for f in fields(self)}

    def to_markdown(self, class_names: Sequence[str] | None = None) -> str:
        names = [str(c) for c in self.classes] if class_names is None else [str(class_names[c]) for c in self.classes]
        lines = ["## Hidden cost of smoothing: accuracy per class against sigma", "",
                 f"{self.n_examples} examples, {self.n} noise samples per prediction, abstention at alpha = "
                 f"{self.alpha:g} (counts as an error); sigma = 0 is the base classifier.", "",
                 "| model | sigma | overall | abstain | disparity | differs from base | "
                 + " | ".join(names) + " | vanished |",
                 "|---|" + "---|" * (len(names) + 6)]
        for m, name in enumerate(self.models):
            for s, sigma in enumerate(self.sigmas):
                accs = " | ".join("-" if a is None else f"{a:.3f}" for a in self.accuracy[m][s])
                van = ", ".join(str(c) for c in self.vanished[m][s]) or "-"
                lines.append(f"| {name} | {sigma:g} | {self.overall[m][s]:.3f} | {self.abstain_rate[m][s]:.3f} | "
                             f"{self.disparity[m][s]:.3f} | {self.changed_fraction[m][s]:.3f} | {accs} | {van} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path, class_names: Sequence[str] | None = None, dpi: int = 120) -> Path:
        """One panel per model: accuracy per class against sigma (thin lines) and the disparity (thick)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        k = len(self.models)
        fig = Figure(figsize=(4.4 * k, 3.6))
        FigureCanvasAgg(fig)
        for m, name in enumerate(self.models):
            ax = fig.add_subplot(1, k, m + 1)
            for c, cls in enumerate(self.classes):
                ys = [np.nan if self.accuracy[m][s][c] is None else self.accuracy[m][s][c]
                      for s in range(len(self.sigmas))]
                label = str(cls) if class_names is None else str(class_names[cls])
                ax.plot(self.sigmas, ys, ".-", lw=1, label=label)
            ax.plot(self.sigmas, self.disparity[m], "k-", lw=2.5, label="disparity")
            ax.set_xlabel("sigma (pixel units)")
            ax.set_ylabel("accuracy per class")
            ax.set_ylim(0, 1.02)
            ax.set_title(name, fontsize=9)
            ax.grid(alpha=0.3)
            if m == k - 1:
                ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=dpi)
        return p


def _class_stats(pred: np.ndarray, abstained: np.ndarray, base: np.ndarray, y: np.ndarray,
                 classes: Sequence[int]) -> tuple[tuple, float, float, float, float, tuple[int, ...]]:
    ok = (~abstained) & (pred == y)
    per = tuple(float(ok[y == c].mean()) if (y == c).any() else None for c in classes)
    live = [a for a in per if a is not None]
    disparity = float(max(live) - min(live)) if live else float("nan")
    changed = float((abstained | (pred != base)).mean())
    predicted = set(pred[~abstained].tolist())
    vanished = tuple(sorted(int(c) for c in set(base.tolist()) - predicted))
    return per, float(ok.mean()), float(abstained.mean()), disparity, changed, vanished


def _check_sweep(models, x, y, num_classes, sigmas, seed) -> tuple[dict[str, nn.Module], tuple[float, ...]]:
    named = {"model": models} if isinstance(models, nn.Module) else dict(models)
    if not named or not all(isinstance(m, nn.Module) for m in named.values()):
        raise TypeError("models must be an nn.Module or a non-empty mapping of names to nn.Module")
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        raise TypeError("x must be a non-empty tensor of shape (N, ...)")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point():
        raise TypeError(f"y must be an integer tensor of shape ({x.shape[0]},)")
    check_int("num_classes", num_classes, 2)
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    sig = check_float_tuple("sigmas", sigmas, low=0.0)
    if not sig or len(set(sig)) != len(sig):
        raise ValueError(f"sigmas must be a non-empty sequence of distinct numbers >= 0, got {sigmas!r}")
    check_int("seed", seed, 0)
    return named, sig


def sigma_sweep(models: nn.Module | Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                num_classes: int, sigmas: Sequence[float] = DEFAULT_SIGMAS, n: int = 1000, alpha: float = 0.001,
                batch_size: int = 1000, seed: int = 0, input_range: tuple[float, float] | None = (0.0, 1.0),
                device: str | torch.device | None = None) -> SigmaSweep:
    """Accuracy and disparity per class of smoothed versions of ``models`` at every sigma in ``sigmas``.

    Args:
        models: one model or ``{name: model}`` (e.g. the same architecture trained with and without noise).
        x: (N, ...) inputs in pixel units; y: (N,) labels in ``0 .. num_classes - 1``.
        sigmas: noise levels >= 0 (0: the base classifier, no sampling).
        n, alpha, batch_size: :meth:`certify.smoothing.Smooth.predict` budget; abstentions count as errors.
        input_range: the inputs' valid range, checked by :class:`certify.smoothing.Smooth` (None: no check,
            for inputs that are not images such as the slab oracle's points).
        seed: example ``i`` uses the noise seed ``certify.runs.example_seed(seed, i)`` at every sigma and for
            every model (common random numbers: differences between sigmas and models are not sampling noise
            of different streams), independent of the other examples. On CPU the noise (hence every
            prediction) does not depend on ``batch_size`` (:mod:`estimators.sampling`).
        device: where the models run and the noise is drawn (``"cpu"``, ``"cuda"``, ``"auto"``, a ``torch.device``;
            :func:`certify.devices.resolve_device`); the models are moved there. None: each model's own device.

    Returns:
        :class:`SigmaSweep`. Each smoothed prediction that does not abstain equals ``g(x)`` except with
        probability at most ``alpha`` (Cohen et al.'s PREDICT); the per-class accuracies are empirical
        over the given examples.
    """
    from certify.devices import module_device, resolve_device
    from certify.runs import example_seed
    from certify.smoothing import Smooth

    dev = resolve_device(device)
    named, sig = _check_sweep(models, x, y, num_classes, sigmas, seed)
    t0 = time.perf_counter()
    yn = y.cpu().numpy().astype(np.int64)
    classes = tuple(range(num_classes))
    out: dict[str, list] = {k: [] for k in ("accuracy", "overall", "abstain", "disparity", "changed", "vanished")}
    for name, model in named.items():
        model.eval()
        if dev is not None:
            model.to(dev)
        on = module_device(model)
        with torch.no_grad():
            base = torch.cat([model(x[i:i + batch_size].to(on)).argmax(1) for i in range(0, x.shape[0], batch_size)])
        base_np = base.cpu().numpy().astype(np.int64)
        rows = {k: [] for k in out}
        for s in sig:
            if s == 0.0:
                pred, abst = base_np.copy(), np.zeros(len(yn), dtype=bool)
            else:
                smooth = Smooth(model, num_classes=num_classes, sigma=s, input_range=input_range, device=dev)
                preds = [smooth.predict(x[i], n=n, alpha=alpha, batch_size=batch_size, seed=example_seed(seed, i))
                         for i in range(x.shape[0])]
                pred = np.array([p.label for p in preds], dtype=np.int64)
                abst = np.array([p.abstained for p in preds], dtype=bool)
            per, overall, abstain, disparity, changed, vanished = _class_stats(pred, abst, base_np, yn, classes)
            for k, v in zip(("accuracy", "overall", "abstain", "disparity", "changed", "vanished"),
                            (per, overall, abstain, disparity, changed, vanished)):
                rows[k].append(v)
            logger.info("%s sigma=%g: accuracy %.3f, disparity %.3f, vanished %s", name, s, overall, disparity,
                        list(vanished))
        for k in out:
            out[k].append(tuple(rows[k]))
    return SigmaSweep(models=tuple(named), sigmas=sig, classes=classes, n_examples=int(x.shape[0]), n=int(n),
                      alpha=float(alpha), seed=seed, class_counts=tuple(int((yn == c).sum()) for c in classes),
                      accuracy=tuple(out["accuracy"]), overall=tuple(out["overall"]),
                      abstain_rate=tuple(out["abstain"]), disparity=tuple(out["disparity"]),
                      changed_fraction=tuple(out["changed"]), vanished=tuple(out["vanished"]),
                      time_s=round(time.perf_counter() - t0, 3))
