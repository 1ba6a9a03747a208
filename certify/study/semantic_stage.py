"""The semantic stages of the study on one model: certified ranges next to the nearest flips an attack finds
(:func:`certify.semantic.semantic_report`), the study's consistency reading of them, and an independent dense
grid over every certified range (:func:`certify.study.grid_check_semantic`)."""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from certify._jsonio import digest
from certify.rundir import ResumeMismatchError
from certify.study.checks import grid_check_semantic, semantic_consistency
from certify.study.config import ModelSpec
from certify.study.context import StudyContext
from certify.study.results import GridFamily, SemanticFamily, SemanticGrid, SemanticRaw, SemanticStage

logger = logging.getLogger("certify.study")

__all__ = ["run_semantic", "run_semantic_grid", "semantic_kwargs"]


def semantic_kwargs(ctx: StudyContext) -> dict[str, Any]:
    """The keyword arguments of :func:`certify.semantic.semantic_report` (besides model, data, families)."""
    c = ctx.config
    return dict(method=c.semantic_method, max_param=dict(c.semantic_max_param), max_examples=c.n_semantic,
                skip=ctx.skip(c.n_semantic), seed=c.seed, **c.semantic_kwargs)


def _none_if_nan(v: Any) -> float | None:
    return None if v is None or math.isnan(float(v)) else float(v)


def _report(ctx: StudyContext, spec: ModelSpec) -> Any:
    """The semantic report of ``spec``, resuming ``semantic/<model>/``; a run there with other settings or
    another model is started afresh."""
    import semantic_layers
    from certify.semantic import semantic_report

    folder = ctx.out / "semantic" / spec.name
    perts = [semantic_layers.get(p) for p in ctx.config.perturbations]
    kw = dict(semantic_kwargs(ctx), out=folder, plots=False, verbose=ctx.verbose, device=ctx.device)
    try:
        return semantic_report(ctx.models[spec.name], ctx.test, perts, resume=True, **kw)
    except ResumeMismatchError as exc:
        logger.info("%s: %s; starting the semantic run afresh", spec.name, exc)
    return semantic_report(ctx.models[spec.name], ctx.test, perts, resume=False, overwrite=True, **kw)


def _raw(rep: Any, family: str, levels: tuple[float, ...]) -> SemanticRaw:
    rows = [r for r in rep.rows if r["perturbation"] == family]
    return SemanticRaw(
        units=rows[0]["units"] if rows else "",
        time_per_example_s=float(np.mean([float(r["time"]) for r in rows])) if rows else None,
        # the report's own accuracy at the study's levels, to cross-check the study's reading
        report_certified_accuracy=tuple(rep.certified_accuracy(family, levels).tolist()),
        report_attack_accuracy=tuple(rep.attack_accuracy(family, levels).tolist()),
        # idx, correct, certified lo/hi, nearest flip lo/hi (None: none found), searched range lo/hi
        examples=tuple((int(r["idx"]), bool(r["correct"]), float(r["certified_lo"]), float(r["certified_hi"]),
                        _none_if_nan(r["attack_lo"]), _none_if_nan(r["attack_hi"]), float(r["range_lo"]),
                        float(r["range_hi"])) for r in rows))


def _family(spec: ModelSpec, family: str, raw: SemanticRaw, levels: tuple[float, ...]) -> SemanticFamily:
    chk = semantic_consistency([{"idx": e[0], "correct": e[1], "certified": (e[2], e[3]), "attack": (e[4], e[5]),
                                 "range": (e[6], e[7])} for e in raw.examples], levels=levels)
    fam = SemanticFamily.from_dict({**chk, **{f.name: getattr(raw, f.name) for f in dataclasses.fields(raw)}})
    if not fam.ok:
        logger.error("CONSISTENCY VIOLATION (%s, semantic %s): flips inside certified ranges at idx %s -- this is "
                     "a bug in a certificate or in the attack", spec.name, family, fam.violating_idx)
    return fam


def run_semantic(ctx: StudyContext, spec: ModelSpec) -> SemanticStage:
    """Semantic certified ranges vs attack for every family on ``n_semantic`` test images, with the checks."""
    c = ctx.config
    folder = ctx.out / "semantic" / spec.name
    settings = {**semantic_kwargs(ctx), "perturbations": c.perturbations, "format": 2}

    def compute() -> SemanticStage:
        rep = _report(ctx, spec)
        return SemanticStage(raw={p: _raw(rep, p, c.semantic_levels[p]) for p in c.perturbations},
                             rows_file=str(folder / "rows.tsv"), idx=tuple(sorted({int(r["idx"]) for r in rep.rows})))

    res = ctx.stage(spec.name, "semantic", settings, compute)
    families = {p: _family(spec, p, raw, c.semantic_levels[p]) for p, raw in res.raw.items()}
    res = dataclasses.replace(res, families=families)
    ctx.record(spec.name, "semantic", res)
    return res


def _grid_family(ctx: StudyContext, spec: ModelSpec, rows: list[dict], family: str) -> GridFamily:
    import semantic_layers

    pert = semantic_layers.get(family)
    model = ctx.models[spec.name]
    flips, checked, examples, bad = 0, 0, 0, []
    for r in rows:
        if r["perturbation"] != family or not r["correct"]:
            continue
        lo, hi = float(r["certified_lo"]), float(r["certified_hi"])
        if hi <= lo:
            continue
        g = grid_check_semantic(model, ctx.test.x[int(r["idx"])], int(r["label"]), pert, (lo, hi),
                                points=ctx.config.semantic_grid, device=ctx.device)
        examples += 1
        checked += g["checked"]
        flips += len(g["flips"])
        if g["flips"]:
            bad.append({"idx": int(r["idx"]), "certified": [lo, hi], "flips": g["flips"][:5]})
    return GridFamily(examples=examples, checked=checked, flips=flips, bad=tuple(bad))


def run_semantic_grid(ctx: StudyContext, spec: ModelSpec) -> SemanticGrid:
    """The independent grid check of every certified semantic range (after :func:`run_semantic`)."""
    from certify.semantic import SemanticReport

    sem = ctx.get(spec.name, "semantic")
    settings = {"points": ctx.config.semantic_grid, "semantic": digest({p: r.to_dict() for p, r in sem.raw.items()})}

    def compute() -> SemanticGrid:
        rows = SemanticReport.from_tsv(sem.rows_file).rows
        return SemanticGrid({p: _grid_family(ctx, spec, rows, p) for p in ctx.config.perturbations})

    grid = ctx.stage(spec.name, "semantic_grid", settings, compute)
    for p, g in grid.families.items():
        if g.flips:
            logger.error("CONSISTENCY VIOLATION (%s, semantic %s): the independent grid found %d flips inside "
                         "certified ranges: %s", spec.name, p, g.flips, g.bad[:3])
    return grid
