"""eps-robust linear probing of a representation on a real dataset."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import nn

from certify._progress import track
from certify.synbench._args import _float_tuple
from certify.synbench.features import extract_features
from certify.synbench.result import SynBenchResult
from estimators import robust_linear as rl


@dataclass(frozen=True)
class RobustProbeResult:
    """Clean and robust accuracy of eps-robust linear probes trained on a real dataset's features.

    ``eps`` are relative budgets; the absolute feature-space radius is ``eps * scale`` with ``scale``
    the mean over class pairs of half the distance between class means of the training features
    (for two classes exactly SynBench's ``||mu~||``). ``clean_accuracy[i]`` is the test accuracy of
    the probe trained at ``eps[i]``; ``robust_accuracy[i][j]`` its exact test accuracy under
    feature-space l2 attacks of radius ``eps[j] * scale``. ``recommended_eps`` is SynBench's choice
    (the evaluated eps with the best score at ``a_t``) when a SynBench result was given.
    """

    name: str
    layer: str | None
    eps: tuple[float, ...]
    scale: float
    clean_accuracy: tuple[float, ...]
    robust_accuracy: tuple[tuple[float, ...], ...]
    train_clean_accuracy: tuple[float, ...]
    recommended_eps: float | None
    a_t: float
    num_classes: int
    n_train: int
    n_test: int
    feature_dim: int
    weight_decay: float
    seed: int
    converged: tuple[bool, ...]
    time_s: float

    @property
    def eps_abs(self) -> tuple[float, ...]:
        return tuple(e * self.scale for e in self.eps)

    def robust_at_own_eps(self) -> tuple[float, ...]:
        """Robust accuracy of each probe at the radius it was trained for."""
        return tuple(self.robust_accuracy[i][i] for i in range(len(self.eps)))

    def summary(self) -> str:
        head = "train eps".rjust(10) + "  clean" + "".join(f"  rob@{e:<5g}" for e in self.eps)
        lines = [f"eps-robust linear probing: {self.name} (layer {self.layer or 'output'}, {self.feature_dim} "
                 f"features, {self.num_classes} classes, {self.n_train} train / {self.n_test} test)",
                 f"  feature-space l2 radius = eps x {self.scale:.4g} (mean half distance between class means)",
                 "  " + head]
        for i, e in enumerate(self.eps):
            mark = " *" if self.recommended_eps is not None and abs(e - self.recommended_eps) < 1e-12 else "  "
            lines.append("  " + f"{e:>8g}{mark}" + f"  {self.clean_accuracy[i]:.3f}" +
                         "".join(f"  {r:9.3f}" for r in self.robust_accuracy[i]))
        if self.recommended_eps is not None:
            lines.append(f"  * SynBench-recommended eps (best score at a_T={self.a_t:g}): {self.recommended_eps:g}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = {f.name: json.loads(json.dumps(getattr(self, f.name))) for f in fields(self)}
        d["eps_abs"] = list(self.eps_abs)
        return d


def _dataset_xy(data, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    elif hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
    else:
        raise TypeError(f"{name} must be a dataset with tensors .x and .y (certify.data.ImageDataset) "
                        "or an (x, y) pair")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: x and y must be tensors")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0 or y.ndim != 1:
        raise ValueError(f"{name}: x (N, ...) and y (N,) must be non-empty with equal N, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return x, y.to(torch.int64)


def robust_probe(encoder: nn.Module, train, test, eps: Sequence[float] = (0.0, 0.1, 0.2), *,
                 synbench: SynBenchResult | None = None, a_t: float = 0.7, layer: str | None = None,
                 flatten: bool = False, batch_size: int = 512, weight_decay: float = 1e-4, max_iter: int = 2000,
                 seed: int = 0, device: str | torch.device | None = None, name: str | None = None,
                 verbose: bool = True) -> RobustProbeResult:
    """eps-robust linear probing of a frozen representation on a labelled dataset.

    Features are extracted once (as in :func:`evaluate`), then for every eps a linear probe is
    trained by feature-space adversarial training with the exact worst-case-margin loss of
    :mod:`estimators.robust_linear` (for two classes the closed-form inner maximum
    ``loss(y w^T h - eps' ||w||)``; for more classes its sound pairwise relaxation) and evaluated
    with exact robust accuracy. If ``synbench`` is given, its recommended eps
    (:meth:`SynBenchResult.best_eps` at ``a_t``) is added to ``eps`` and marked in the result.

    Args:
        train, test: :class:`certify.data.ImageDataset` (or ``(x, y)`` tensor pairs) with integer labels.
        eps: relative radii >= 0 (multiplied by the mean half distance between class means).
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    eps_t = list(_float_tuple("eps", eps, low=0.0, low_open=False, high=math.inf, high_open=True, increasing=False))
    recommended = None
    if synbench is not None:
        if not isinstance(synbench, SynBenchResult):
            raise TypeError("synbench must be a SynBenchResult")
        recommended = synbench.best_eps(a_t)
        if all(abs(recommended - e) > 1e-12 for e in eps_t):
            eps_t.append(recommended)
    eps_t = sorted(eps_t)
    x_tr, y_tr = _dataset_xy(train, "train")
    x_te, y_te = _dataset_xy(test, "test")
    t0 = time.perf_counter()
    h_tr = extract_features(encoder, x_tr, layer=layer, flatten=flatten, batch_size=batch_size, device=device,
                            verbose=verbose)
    h_te = extract_features(encoder, x_te, layer=layer, flatten=flatten, batch_size=batch_size, device=device,
                            verbose=verbose)
    classes = torch.unique(y_tr)
    if classes.numel() < 2:
        raise ValueError("train must contain at least two classes")
    num_classes = int(max(int(y_tr.max()), int(y_te.max())) + 1)
    means = torch.stack([h_tr[y_tr == c].mean(0) for c in classes])
    iu = torch.triu_indices(len(classes), len(classes), 1)
    scale = float((means[iu[0]] - means[iu[1]]).norm(dim=1).mean() / 2)
    if scale <= 0:
        raise ValueError("the class means of the training features coincide; cannot set a relative eps")
    clean, robust, train_clean, conv = [], [], [], []
    for e in track(eps_t, total=len(eps_t), enabled=verbose, desc="robust probes"):
        probe = rl.train_robust_probe(h_tr, y_tr, num_classes=num_classes, eps=e * scale,
                                      weight_decay=weight_decay, max_iter=max_iter, seed=seed)
        conv.append(probe.converged)
        train_clean.append(rl.probe_accuracy(probe, h_tr, y_tr, 0.0)[0])
        clean.append(rl.probe_accuracy(probe, h_te, y_te, 0.0)[0])
        robust.append(tuple(rl.probe_accuracy(probe, h_te, y_te, a * scale)[1] for a in eps_t))
    return RobustProbeResult(
        name=name or type(encoder).__name__, layer=layer, eps=tuple(eps_t), scale=scale,
        clean_accuracy=tuple(clean), robust_accuracy=tuple(robust), train_clean_accuracy=tuple(train_clean),
        recommended_eps=recommended, a_t=float(a_t), num_classes=num_classes, n_train=int(x_tr.shape[0]),
        n_test=int(x_te.shape[0]), feature_dim=int(h_tr.shape[1]), weight_decay=float(weight_decay),
        seed=int(seed), converged=tuple(conv), time_s=time.perf_counter() - t0)
