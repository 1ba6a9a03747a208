"""``certify study``: the four parts of the toolkit on one family of models, with consistency checks.

For a family of Fashion-MNIST classifiers (clean; Gaussian-noise trained at sigma 0.12 / 0.25 / 0.5;
FGSM- and PGD-trained; a clean zoo model fine-tuned with 30% adversarial data) the study computes

* clean test accuracy (the whole test split);
* empirical robust accuracy of the base classifier under FGSM / PGD (:mod:`certify.attacks`);
* randomized-smoothing certified accuracy at fixed radii and the average certified radius (ACR),
  zeroth order (Cohen et al. 2019) vs first order (Mohapatra et al. 2020), per norm
  (:func:`certify.runs.certify_dataset`);
* semantic certified ranges for brightness, contrast and rotation next to the nearest flip an attack
  finds (:func:`certify.semantic.semantic_report`);
* the SynBench score of the penultimate representation at eps 0 and 0.2 (:func:`certify.synbench.evaluate`)
  and eps-robust linear probing on Fashion-MNIST (:func:`certify.synbench.robust_probe`);
* :func:`certify.synbench.compare` of every smoothing report with the Gaussian-mixture reference;
* the hidden cost of smoothing (Mohapatra et al. 2021): accuracy and disparity per class against sigma
  (0, 0.12, 0.25, 0.5) on the models of ``hidden_cost_models`` (:func:`certify.hidden_cost.sigma_sweep`);
* robustness transfer (Nern et al. 2023): a fresh linear probe on the encoder of each model of
  ``transfer_models``, certified over l-inf balls from the encoder's auto_LiRPA feature box
  (:func:`certify.transfer.transfer_bounds`), with certified fractions and loss bounds;
* the Spearman rank correlation between SynBench score and linear-probe accuracy across the models
  (SynBench's central claim), with its p-value and the number of models;
* consistency checks that tie proofs to attacks on the same examples and the same classifier: no
  attack succeeds inside a certified set, so certified accuracy never exceeds the matching empirical
  robust accuracy (smoothing: a PREDICT flip of the smoothed classifier within the certified radius,
  allowing for alpha; semantic: a flipping parameter inside the certified range, from the report's
  attack *and* from an independent dense grid run here; transfer: PGD on the composed encoder + probe
  never breaks a certified example).

Outputs under ``out``: ``report.md`` (tables with units and sample counts, a "Reproduce" section),
``results.json`` (every number, the configuration and the measured time of every stage),
``plots/*.png``, and the caches that make the study resumable (:mod:`certify.study.cache`):
``models/<name>.pt``, ``cache/<model>/<stage>.json``, and the resumable runners' own folders
``smoothing/<model>/`` and ``semantic/<model>/`` (rows are appended as they finish).

Modules: :mod:`~certify.study.config` (what to compute), :mod:`~certify.study.results` (typed stage results),
:mod:`~certify.study.checks` (proof-vs-attack checks, rank correlation), :mod:`~certify.study.cache`,
:mod:`~certify.study.context`, :mod:`~certify.study.models`, :mod:`~certify.study.stages`,
:mod:`~certify.study.semantic_stage`, :mod:`~certify.study.hidden_cost_stage`,
:mod:`~certify.study.transfer_stage`, :mod:`~certify.study.report` / :mod:`~certify.study.reproduce` (Markdown),
:mod:`~certify.study.plots` and :mod:`~certify.study.driver` (:func:`run_study`).

Example::

    >>> from certify.study import run_study
    >>> res = run_study("runs/study-quick", quick=True)              # doctest: +SKIP
    >>> res.stages["clean"].smoothing.acr, res.consistency["violations"]  # doctest: +SKIP
"""
from __future__ import annotations

from certify.rundir import model_fingerprint
from certify.study.checks import _allowed_failures as _allowed_failures  # noqa: F401 (tests)
from certify.study.checks import grid_check_semantic, rank_correlation, semantic_consistency, smoothing_consistency
from certify.study.config import AUGMENTS, SOURCES, ModelSpec, StudyConfig, example_indices, full_config, quick_config
from certify.study.driver import _Run as _Run  # noqa: F401 (tests interrupt a run through it)
from certify.study.driver import run_study
from certify.study.report import headline_table
from certify.study.results import HiddenCostResult, ModelStages, StudyResult, TransferStage

__all__ = [
    "ModelSpec",
    "StudyConfig",
    "StudyResult",
    "ModelStages",
    "HiddenCostResult",
    "TransferStage",
    "quick_config",
    "full_config",
    "run_study",
    "smoothing_consistency",
    "semantic_consistency",
    "grid_check_semantic",
    "rank_correlation",
    "headline_table",
    "example_indices",
    "model_fingerprint",
    "SOURCES",
    "AUGMENTS",
]
