"""SynBench: probe a representation with synthetic Gaussian data and compare it with theory.

Ko, Chen, Mohapatra, Das, Daniel: "SynBench: Task-Agnostic Benchmarking of Pretrained
Representations using Synthetic Data" (arXiv 2210.02989, 2022) / "What Would Gauss Say About
Representations? Probing Pretrained Image Models using Synthetic Gaussian Benchmarks" (ICML 2024);
official code ``IBM/synbench`` (``evaluate_synbench.py``).

Protocol (:func:`evaluate`)
---------------------------
For each separation ``s`` (default 0.1, 0.2, ..., 4.9):

1. Draw ``y`` uniform in {-1, +1} and ``x | y ~ N(y mu, I)`` with ``mu = s/sqrt(d) * 1`` in the
   encoder's input space (``d = prod(input_shape)``), ``n_train`` + ``n_test`` samples, then apply a
   :class:`PixelMapping` (the official code adds 0.5 and applies the ImageNet normalisation its
   timm encoders expect; the zoo models here normalise inside the model, so the default
   ``"official"`` mapping is the 0.5 offset alone, without clipping; ``"imagenet"`` reproduces the
   full official pipeline). The raw data's Bayes accuracy is ``Phi(s)``.
2. Encode; fit the class means ``m+, m-`` and the pooled within-class covariance ``Sigma`` of the
   training features; ``mu~ = (m+ - m-)/2``, centre ``c = (m+ + m-)/2``.
3. For each ``eps`` (relative: the l2 budget in feature space is ``eps * ||mu~||``) form the
   eps-robust Bayes linear classifier ``w = (Sigma + gamma I)^-1 mu~`` (closed form + 1-D root
   finding, :func:`estimators.gaussian_mixture.robust_bayes_linear`) and record, on the test
   features, its accuracy and the mean *normalised margin* ``|w^T (h - c)| / (w^T mu~)`` over
   correctly classified points (the official ``bound``; for the raw data and ``eps = 0`` its
   expectation is ``B(Phi(s)) = 1 + phi(s)/(Phi(s) s)``).
4. ``E(a_t) = mean_s margin(s) * 1[accuracy(s) > a_t]`` on the grid ``a_t`` = 100 points in
   [0.6, 1.0]; ``score(eps, a_T) = sum_{a_t >= a_T} E_rep(a_t) / sum_{a_t >= a_T} E_raw(a_t)``, the
   raw curve using the closed forms ``accuracy = Phi(s)``, ``margin = B(Phi(s))``.

Differences from the official script (all deliberate, none changes what is estimated):
the robust classifier comes from exact root finding instead of an SCS cone solve; the covariance
is restricted to eigenvalues above ``eig_tol`` *relative* to the largest (official: absolute 1e-6),
which makes the score invariant to rescaling the features; margins are averaged over all correct
test points (official: mean of per-batch means over full batches of 256); each ``(seed, s, split)``
draws its data from its own seeded ``torch.Generator`` in fixed chunks, so results do not depend on
``batch_size`` or on which other separations are evaluated.

Reading the score: an invertible linear encoder preserves the Gaussian mixture (LDA is
affine-invariant), so its score is 1 up to sampling error; projecting to fewer dimensions or
otherwise losing signal makes it smaller; > 1 means the representation's margins are larger than
those of the raw data at the same accuracy levels.
"""
from __future__ import annotations

from certify.synbench.compare import SynBenchComparison, compare
from certify.synbench.curves import (
    DEFAULT_A_GRID,
    DEFAULT_SEPARATIONS,
    QUICK_SEPARATIONS,
    SCORE_THRESHOLDS,
    ReferenceCurve,
    expected_bound_curve,
    reference_curve,
    synbench_score,
)
from certify.synbench.evaluate import evaluate
from certify.synbench.features import FeatureExtractor, extract_features
from certify.synbench.features import _device as _device  # noqa: F401  (used by tests/test_devices.py)
from certify.synbench.mixture import PIXEL_MAPPINGS, PixelMapping, sample_mixture
from certify.synbench.probe import RobustProbeResult, robust_probe
from certify.synbench.result import SynBenchResult

__all__ = [
    "DEFAULT_SEPARATIONS",
    "QUICK_SEPARATIONS",
    "DEFAULT_A_GRID",
    "SCORE_THRESHOLDS",
    "PixelMapping",
    "PIXEL_MAPPINGS",
    "ReferenceCurve",
    "reference_curve",
    "expected_bound_curve",
    "synbench_score",
    "sample_mixture",
    "FeatureExtractor",
    "extract_features",
    "SynBenchResult",
    "evaluate",
    "RobustProbeResult",
    "robust_probe",
    "SynBenchComparison",
    "compare",
]
