"""The SynBench protocol (:func:`evaluate`); see the package docstring."""
from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from certify._checks import check_int
from certify._progress import track
from certify.synbench._args import _float_tuple, _input_shape
from certify.synbench.curves import DEFAULT_A_GRID, DEFAULT_SEPARATIONS
from certify.synbench.features import FeatureExtractor, _device, _encode_split
from certify.synbench.mixture import PixelMapping, _pixel_mapping
from certify.synbench.result import SynBenchResult
from estimators import gaussian_mixture as gm

logger = logging.getLogger(__name__)


def evaluate(encoder: nn.Module, input_shape: Sequence[int], eps: Sequence[float] = (0.0,), *,
             n_train: int = 2048, n_test: int = 2048, separations: Sequence[float] = DEFAULT_SEPARATIONS,
             a_grid: Sequence[float] = DEFAULT_A_GRID, batch_size: int = 512, seed: int = 0,
             layer: str | None = None, flatten: bool = False,
             pixel_mapping: str | PixelMapping = "official", eig_tol: float = 1e-6, shrinkage: float = 0.0,
             device: str | torch.device | None = None, name: str | None = None,
             verbose: bool = True) -> SynBenchResult:
    """Run SynBench on an encoder (see the module docstring for the protocol).

    Args:
        encoder: an ``nn.Module`` mapping ``(B, *input_shape)`` to features ``(B, F)`` (or use ``layer``).
            It is moved to ``device`` when one is given; it runs in eval mode without gradients (its mode is
            restored afterwards).
        input_shape: the encoder's input shape without the batch axis, e.g. ``(1, 28, 28)``.
        eps: relative l2 budgets in [0, 1): the feature-space budget is ``eps * ||mu~||``.
        n_train, n_test: synthetic samples per separation for fitting / testing (official: 2048 each).
        separations: increasing ``s = ||mu|| > 0`` values (official 0.1..4.9 step 0.1).
        a_grid: increasing threshold accuracies in (0.5, 1] (official: 100 points in [0.6, 1]).
        batch_size: encoder batch size (does not change the result).
        seed: all synthetic data derive from it (see :func:`sample_mixture`).
        layer, flatten: where features come from (see :class:`FeatureExtractor`).
        pixel_mapping: a :data:`PIXEL_MAPPINGS` name or a :class:`PixelMapping`.
        eig_tol: covariance eigenvalues ``<= eig_tol * largest`` are dropped (the probe works on the
            numerically supported eigenspace; a near-singular covariance is therefore stable).
        shrinkage: optional covariance shrinkage towards ``tr(Sigma)/p I``, in [0, 1].
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (:func:`certify.devices.resolve_device`): where the encoder
            runs (it is moved there); default: where its parameters are.
        name: label used in summaries/plots (default: the encoder's class name).
        verbose: tqdm progress bar (only on a TTY) and INFO logs.

    Returns:
        :class:`SynBenchResult`; ``result.score(eps, a_t)`` is the SynBench score.

    Example:
        >>> enc = torch.nn.Flatten()
        >>> res = evaluate(enc, (1, 4, 4), (0.0,), n_train=512, n_test=512, verbose=False)
        >>> 0.85 < res.score(0.0, 0.7) < 1.15
        True
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    shape = _input_shape(input_shape)
    eps_t = _float_tuple("eps", eps, low=0.0, low_open=False, high=1.0, high_open=True, increasing=False)
    seps = _float_tuple("separations", separations, low=0.0, low_open=True, high=math.inf,
                        high_open=True, increasing=True)
    grid = _float_tuple("a_grid", a_grid, low=0.5, low_open=True, high=1.0, high_open=False, increasing=True)
    n_train = check_int("n_train", n_train, 8)
    n_test = check_int("n_test", n_test, 1)
    batch_size = check_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    mapping = _pixel_mapping(pixel_mapping)
    if mapping.mean is not None and len(mapping.mean) != shape[0]:
        raise ValueError(f"pixel_mapping {mapping.name!r} normalises {len(mapping.mean)} channels but "
                         f"input_shape {shape} has {shape[0]}")
    # validate the covariance options once, up front
    gm.covariance_spectrum(np.eye(1), eig_tol=eig_tol, shrinkage=shrinkage)
    dev = _device(encoder, device)
    dtype = next((p.dtype for p in encoder.parameters() if p.is_floating_point()), torch.float32)
    label = name or type(encoder).__name__

    acc = np.zeros((len(eps_t), len(seps)))
    mar = np.zeros((len(eps_t), len(seps)))
    gam = np.zeros((len(eps_t), len(seps)))
    mu_norm = np.zeros(len(seps))
    rank = np.zeros(len(seps), dtype=int)
    feature_dim = -1
    t0 = time.perf_counter()
    with FeatureExtractor(encoder, layer=layer, flatten=flatten) as fx:
        for k in track(range(len(seps)), total=len(seps), enabled=verbose, desc="SynBench separations"):
            s = seps[k]
            h_tr, y_tr = _encode_split(fx, s, shape, n_train, int(seed), 0, mapping, batch_size, dev, dtype)
            h_te, y_te = _encode_split(fx, s, shape, n_test, int(seed), 1, mapping, batch_size, dev, dtype)
            feature_dim = h_tr.shape[1]
            try:
                m_pos, m_neg, cov = gm.pooled_moments(h_tr, y_tr)
                spec = gm.covariance_spectrum(cov, eig_tol=eig_tol, shrinkage=shrinkage)
            except ValueError as exc:
                raise ValueError(f"separation s={s:g}: cannot fit the Gaussian model of the features ({exc})") from None
            mu_t = 0.5 * (m_pos - m_neg)
            center = 0.5 * (m_pos + m_neg)
            mn = float(np.linalg.norm(spec.vectors.T @ mu_t))
            if mn == 0.0:
                raise ValueError(f"separation s={s:g}: the class means of the features coincide on the "
                                 "supported eigenspace; the representation carries no class signal")
            mu_norm[k] = mn
            rank[k] = spec.rank
            family = gm.robust_bayes_family(mu_t, spec, [e * mn for e in eps_t])
            centred = h_te - center
            for i, clf in enumerate(family):
                gam[i, k] = clf.gamma
                if clf.trivial:  # cannot happen for eps < 1, kept for safety of the formulas
                    acc[i, k], mar[i, k] = 0.0, 0.0
                    continue
                margin = centred @ clf.w
                correct = ((margin > 0) & (y_te > 0)) | ((margin < 0) & (y_te < 0))
                acc[i, k] = float(correct.mean())
                scale = float(clf.w @ mu_t)
                mar[i, k] = float(np.abs(margin[correct]).mean() / scale) if correct.any() else 0.0
            logger.debug("s=%.2f acc=%s rank=%d", s, acc[:, k], spec.rank)
    elapsed = time.perf_counter() - t0
    result = SynBenchResult(
        name=label, input_shape=shape, layer=layer, eps=eps_t, separations=seps, a_grid=grid,
        n_train=n_train, n_test=n_test, seed=int(seed), batch_size=batch_size,
        pixel_mapping=mapping.to_dict(), eig_tol=float(eig_tol), shrinkage=float(shrinkage),
        flatten=bool(flatten), feature_dim=int(feature_dim),
        accuracy=tuple(tuple(map(float, r)) for r in acc), margin=tuple(tuple(map(float, r)) for r in mar),
        gamma=tuple(tuple(map(float, r)) for r in gam), mu_norm=tuple(map(float, mu_norm)),
        rank=tuple(int(r) for r in rank), time_s=float(elapsed))
    if verbose:
        logger.info("SynBench %s: score(eps=%g, a_t=0.7) = %.4f in %.1f s", label, eps_t[0],
                    result.score(eps_t[0], 0.7), elapsed)
    return result
