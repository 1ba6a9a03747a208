"""Semantic perturbation verification (Semantify-NN with auto_LiRPA) and its reports.

:func:`verify_semantic` proves that every parameter ``theta`` of a semantic perturbation (hue shift,
brightness, rotation, ... from :mod:`semantic_layers`) in an interval keeps a classifier's label,
and searches for the nearest parameter that flips it:

* kind ``"layer"`` families: the network ``theta -> image -> logits`` (``perturbation``'s exact
  Linear/ReLU layer composed with the model) is bounded with auto_LiRPA over boxes of theta, with the
  margin specification ``C = e_label - e_j`` (all ``j != label``). The parameter range is split into
  sub-intervals bounded as batch rows of one call; a sub-interval that fails is bisected (up to
  ``max_refine`` times) before giving up. Two speed-ups keep the bound exactly as tight as plain
  CROWN/alpha-CROWN on the composed network while making it several times faster: the model alone
  is first bounded over the sound per-pixel box of each sub-interval (``perturbation.pixel_bounds``)
  - sub-intervals this already verifies are done; for the others the semantic layer is rebuilt on
  the union of their sub-intervals (ReLUs that are linear there are folded away) and the model's
  intermediate bounds are passed to the composed bound as reference bounds (neurons they prove
  stable are not re-bounded); the larger of the two margin lower bounds is used.
* kind ``"box"`` families (rotation): the model is bounded over the per-pixel box of each
  sub-interval (sound bounds of the interpolated pixel values).

Guarantee: ``certified = (lo, hi)`` means every ``theta`` in ``[lo, hi]`` gives an image whose
predicted class is ``label`` - each sub-interval's margin lower bounds all exceed ``margin_tol``
(default 1e-4 logits, which absorbs float32 rounding in auto_LiRPA and the <= ~1e-6 per-pixel
difference between a family's float32 layer and its ``apply``). ``attack`` holds the nearest
flipping parameters found (each one checked with ``perturbation.apply`` + ``model``), so the true
robust range lies between ``certified`` and ``attack``; ``tightness`` is their width ratio.

Two-parameter families (brightness_contrast) certify the largest box ``s * requested_range``
(uniform scale s in [0, 1]) whose grid cells all verify; ``certified`` then holds the per-parameter
ranges of that box.

Naive baseline (``baseline="linf-box"`` / ``"linf-ball"``): bound the same parameter change as an
l-inf pixel perturbation - the per-pixel envelope of each sub-interval, or the l-inf ball around x
whose radius is the largest pixel change over the sub-interval - to show what the exact semantic
layer gains.

Example::

    import certify, semantic_layers
    model = certify.models.pretrained("fmnist_cnn")
    x, y = certify.data.load_dataset("fmnist")[0]
    res = certify.verify_semantic(model, x, int(y), semantic_layers.get("brightness"), method="crown")
    res.certified, res.attack, res.tightness

:func:`semantic_report` runs this over a dataset in a locked, resumable run directory
(:mod:`certify.rundir`) and returns a :class:`SemanticReport` (certified accuracy vs parameter range,
tightness, plots).

Modules: :mod:`.inputs` (argument checks, ranges), :mod:`.bounds` (margin bounds over parameter boxes),
:mod:`.splitting` (adaptive splitting), :mod:`.attack` (nearest-flip search), :mod:`.certificate`,
:mod:`.verify` (``verify_semantic``), :mod:`.report` (rows, summaries), :mod:`.plots`, :mod:`.run`
(``semantic_report``).
"""
from __future__ import annotations

from .certificate import SemanticCertificate
from .inputs import BASELINES, METHODS, resolve_range
from .report import ROW_COLUMNS, SemanticReport, rows_from_certificate
from .run import semantic_report
from .verify import verify_semantic

# the name this function had before the package split (benchmarks and tests import it)
_resolve_range = resolve_range

__all__ = ["SemanticCertificate", "SemanticReport", "verify_semantic", "semantic_report", "METHODS",
           "BASELINES", "ROW_COLUMNS", "rows_from_certificate", "resolve_range"]
