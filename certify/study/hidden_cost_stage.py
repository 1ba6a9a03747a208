"""The hidden-cost stage of the study (Mohapatra et al., "Hidden Cost of Randomized Smoothing", AISTATS 2021):
accuracy and disparity per class of one model's smoothed classifier against sigma
(:func:`certify.hidden_cost.sigma_sweep`; sigma 0 is the base classifier), on the models of
``config.hidden_cost_models``."""
from __future__ import annotations

import logging
from typing import Any

from certify.study.config import ModelSpec, example_indices
from certify.study.context import StudyContext
from certify.study.results import HiddenCostResult, SigmaRow

logger = logging.getLogger("certify.study")

__all__ = ["run_hidden_cost", "hidden_cost_settings", "from_sweep"]


def hidden_cost_settings(ctx: StudyContext) -> dict[str, Any]:
    """What the stage's result depends on besides the model (its cache key)."""
    c = ctx.config
    n_estimate = c.hidden_cost_n_estimate or c.n_estimate
    return {"n": min(c.n_hidden_cost, len(ctx.test)), "sigmas": c.hidden_cost_sigmas, "n_estimate": n_estimate,
            "alpha": c.alpha, "batch_size": c.smooth_batch_size, "seed": c.seed}


def from_sweep(sweep: Any, *, idx_skip: int) -> HiddenCostResult:
    """The typed stage result of a one-model :class:`certify.hidden_cost.SigmaSweep`."""
    if len(sweep.models) != 1:
        raise ValueError(f"expected a sweep of one model, got {len(sweep.models)}")
    rows = tuple(SigmaRow(sigma=float(s), accuracy=sweep.overall[0][k], abstain_rate=sweep.abstain_rate[0][k],
                          disparity=sweep.disparity[0][k], changed_fraction=sweep.changed_fraction[0][k],
                          class_accuracy=tuple(sweep.accuracy[0][k]), vanished=tuple(sweep.vanished[0][k]))
                 for k, s in enumerate(sweep.sigmas))
    return HiddenCostResult.from_dict({
        "n": sweep.n_examples, "idx_skip": idx_skip, "n_estimate": sweep.n, "alpha": sweep.alpha, "seed": sweep.seed,
        "classes": list(sweep.classes), "class_counts": list(sweep.class_counts),
        "rows": [r.to_dict() for r in rows], "time_s": sweep.time_s})


def run_hidden_cost(ctx: StudyContext, spec: ModelSpec) -> HiddenCostResult | None:
    """The sigma sweep of ``spec`` on ``n_hidden_cost`` evenly spaced test images (None: the model is not in
    ``config.hidden_cost_models``). Every example uses the same noise seed at every sigma (common random
    numbers), so the rows differ by sigma, not by sampling stream."""
    from certify.hidden_cost import sigma_sweep

    if spec.name not in ctx.config.models_for("hidden_cost"):
        return None
    settings = hidden_cost_settings(ctx)
    idx = example_indices(len(ctx.test), settings["n"])

    def compute() -> HiddenCostResult:
        sweep = sigma_sweep({spec.name: ctx.models[spec.name]}, ctx.test.x[idx], ctx.test.y[idx],
                            num_classes=ctx.test.num_classes, sigmas=settings["sigmas"], n=settings["n_estimate"],
                            alpha=settings["alpha"], batch_size=settings["batch_size"], seed=settings["seed"],
                            device=ctx.device)
        return from_sweep(sweep, idx_skip=ctx.skip(len(idx)))

    res = ctx.stage(spec.name, "hidden_cost", settings, compute)
    for row in res.rows:
        if row.vanished:
            logger.info("%s: at sigma %g the smoothed classifier predicts none of classes %s that the base "
                        "classifier predicts on these examples", spec.name, row.sigma, list(row.vanished))
    return res
