"""The stages of the study on one model, each a function ``(ctx, spec) -> typed result`` run through
:meth:`StudyContext.stage` (cached by settings): clean accuracy, attacks on the base classifier, SynBench,
linear probing, randomized smoothing, the SynBench comparison and the smoothed-classifier attack with its
consistency check. The semantic stages are in :mod:`certify.study.semantic_stage`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from certify.rundir import ResumeMismatchError
from certify.study.checks import smoothing_consistency
from certify.study.config import ModelSpec, example_indices
from certify.study.context import StudyContext
from certify.study.results import (
    AttackRow,
    AttacksResult,
    CleanResult,
    CompareSummary,
    ProbeSummary,
    SmoothAttackStage,
    SmoothingCheck,
    SmoothingSummary,
    SynbenchSummary,
)

logger = logging.getLogger("certify.study")

__all__ = ["run_clean", "run_attacks", "run_synbench", "run_probe", "run_smoothing", "run_compare",
           "run_smooth_attack", "smoothing_kwargs"]

_CLEAN_BATCH = 1000


# ------------------------------------------------------------------------------------------- base classifier
def run_clean(ctx: StudyContext, spec: ModelSpec) -> CleanResult:
    """Clean accuracy on ``n_clean`` evenly spaced test images (None: the whole test split)."""
    model = ctx.models[spec.name]
    n = len(ctx.test) if ctx.config.n_clean is None else min(ctx.config.n_clean, len(ctx.test))
    idx = example_indices(len(ctx.test), n)

    def compute() -> CleanResult:
        x, y = ctx.on_device(ctx.test.x[idx]), ctx.on_device(ctx.test.y[idx])
        correct = 0
        with torch.no_grad():
            for s in range(0, len(idx), _CLEAN_BATCH):
                correct += int((model(x[s:s + _CLEAN_BATCH]).argmax(1) == y[s:s + _CLEAN_BATCH]).sum())
        return CleanResult(n=len(idx), accuracy=correct / len(idx))

    return ctx.stage(spec.name, "clean", {"n": n}, compute)


def run_attacks(ctx: StudyContext, spec: ModelSpec) -> AttacksResult:
    """FGSM / PGD robust accuracy (an upper bound) of the base classifier on ``n_attack`` test images."""
    from certify.attacks import robust_accuracy

    c = ctx.config
    model = ctx.models[spec.name]
    idx = example_indices(len(ctx.test), c.n_attack)
    settings = {"n": len(idx), "attacks": c.attack_settings(), "steps": c.pgd_steps, "restarts": c.pgd_restarts,
                "batch_size": c.attack_batch_size, "seed": c.seed}

    def compute() -> AttacksResult:
        x, y = ctx.test.x[idx], ctx.test.y[idx]
        rows = []
        for a in c.attack_settings():
            kw: dict[str, Any] = dict(attack=a["attack"], eps=a["eps"], norm=a["norm"], batch_size=c.attack_batch_size,
                                      seed=c.seed, verbose=ctx.verbose, device=ctx.device)
            if a["attack"] == "pgd":
                kw.update(steps=c.pgd_steps, restarts=c.pgd_restarts)
            r = robust_accuracy(model, x, y, **kw)
            rows.append(AttackRow(**a, n=r.n, clean_accuracy=r.clean_accuracy, robust_accuracy=r.robust_accuracy,
                                  num_success=r.num_success, steps=r.steps, step_size=r.step_size,
                                  restarts=r.restarts, time_s=r.time_s))
        return AttacksResult(n=len(idx), idx_skip=ctx.skip(len(idx)), rows=tuple(rows))

    return ctx.stage(spec.name, "attacks", settings, compute)


# ------------------------------------------------------------------------------------------- SynBench, probes
def run_synbench(ctx: StudyContext, spec: ModelSpec) -> SynbenchSummary:
    """The SynBench score of the penultimate representation (:func:`certify.synbench.evaluate`)."""
    from certify import synbench as sb

    c = ctx.config
    model = ctx.models[spec.name]
    seps = c.synbench_separations or sb.DEFAULT_SEPARATIONS
    settings = {"eps": c.synbench_eps, "separations": seps, "n_train": c.synbench_n_train,
                "n_test": c.synbench_n_test, "seed": c.seed, "layer": "penultimate"}
    path = ctx.out / "synbench" / f"{spec.name}.json"

    def compute() -> SynbenchSummary:
        res = sb.evaluate(model, ctx.test.input_shape, c.synbench_eps, n_train=c.synbench_n_train,
                          n_test=c.synbench_n_test, separations=seps, seed=c.seed, layer="penultimate",
                          name=spec.name, verbose=ctx.verbose, device=ctx.device)
        res.save(path)
        return SynbenchSummary(scores={str(e): res.score(e, c.a_t) for e in res.eps}, a_t=c.a_t,
                               best_eps=res.best_eps(c.a_t), feature_dim=res.feature_dim,
                               n_separations=len(res.separations), n_train=res.n_train, n_test=res.n_test,
                               file=str(path))

    return ctx.stage(spec.name, "synbench", settings, compute)


def run_probe(ctx: StudyContext, spec: ModelSpec) -> ProbeSummary:
    """eps-robust linear probing of the penultimate representation (:func:`certify.synbench.robust_probe`)."""
    from certify import synbench as sb

    c = ctx.config
    model = ctx.models[spec.name]
    tr_idx = example_indices(len(ctx.train), c.probe_n_train)
    te_idx = example_indices(len(ctx.test), c.probe_n_test)
    settings = {"eps": c.probe_eps, "n_train": len(tr_idx), "n_test": len(te_idx), "max_iter": c.probe_max_iter,
                "seed": c.seed, "layer": "penultimate"}

    def compute() -> ProbeSummary:
        res = sb.robust_probe(model, ctx.train.subset(tr_idx), ctx.test.subset(te_idx), c.probe_eps,
                              layer="penultimate", max_iter=c.probe_max_iter, seed=c.seed, name=spec.name,
                              verbose=ctx.verbose, device=ctx.device)
        return ProbeSummary.from_dict({**res.to_dict(),
                                       "linear_probe_accuracy": res.clean_accuracy[list(res.eps).index(0.0)],
                                       "robust_at_own_eps": list(res.robust_at_own_eps())})

    return ctx.stage(spec.name, "probe", settings, compute)


# ------------------------------------------------------------------------------------------- smoothing
def smoothing_kwargs(ctx: StudyContext) -> dict[str, Any]:
    """The keyword arguments of :func:`certify.runs.certify_dataset` (besides the classifier and data)."""
    c = ctx.config
    return dict(n_select=c.n_select, n_estimate=c.n_estimate, alpha=c.alpha, batch_size=c.smooth_batch_size,
                seed=c.seed, first_order=c.first_order, skip=ctx.skip(c.n_certify), max_examples=c.n_certify)


def _smooth(ctx: StudyContext, spec: ModelSpec) -> Any:
    from certify.smoothing import Smooth

    return Smooth(ctx.models[spec.name], num_classes=ctx.test.num_classes, sigma=spec.smooth_sigma,
                  device=ctx.device)


def _restrict_rows(report: Any, indices: Sequence[int]) -> Any:
    """The report's rows whose idx is in ``indices`` (ValueError if any is missing), same settings."""
    from certify.reports import RadiusReport

    frame = report.to_frame()
    keep = frame["idx"].isin([int(i) for i in indices])
    missing = sorted(set(int(i) for i in indices) - set(int(i) for i in frame["idx"][keep]))
    if missing:
        raise ValueError(f"the smoothing run is missing examples {missing[:10]}")
    if bool(keep.all()):
        return report
    meta = report.metadata()
    extra = meta.pop("extra", {})
    return RadiusReport(frame[keep].reset_index(drop=True), **meta, extra=extra)


def _smoothing_summary(report: Any, radii: dict[str, tuple[float, ...]], path: Path) -> SmoothingSummary:
    s = report.summary(radii)
    return SmoothingSummary.from_dict({
        "n": s["n_examples"], "sigma": report.sigma, "clean_accuracy": s["clean_accuracy"],
        "abstain_rate": s["abstain_rate"], "acr": s["acr"], "mean_time_s": s["mean_time_s"],
        "first_order": bool(report.first_order), "rows_file": str(path),
        "norms": {k: v for k, v in s["norms"].items() if k in ("l2", "l1", "linf")},
        "idx": [int(i) for i in report.to_frame()["idx"].tolist()]})


def _certify(ctx: StudyContext, spec: ModelSpec, folder: Path) -> Any:
    """Certify into ``folder`` (resuming its rows); a folder of other settings or another model is restarted."""
    from certify.runs import certify_dataset

    kw = smoothing_kwargs(ctx)
    try:
        return certify_dataset(_smooth(ctx, spec), ctx.test, out=folder, resume=True, render=False,
                               verbose=ctx.verbose, **kw)
    except ResumeMismatchError as exc:
        logger.info("%s: %s; starting the smoothing run afresh", spec.name, exc)
    return certify_dataset(_smooth(ctx, spec), ctx.test, out=folder, resume=False, overwrite=True, render=False,
                           verbose=ctx.verbose, **kw)


def run_smoothing(ctx: StudyContext, spec: ModelSpec) -> SmoothingSummary:
    """Randomized-smoothing certification of ``n_certify`` test images (rows in ``smoothing/<model>/``)."""
    folder = ctx.out / "smoothing" / spec.name
    settings = {**smoothing_kwargs(ctx), "sigma": spec.smooth_sigma, "radii": ctx.config.radii()}

    def compute() -> SmoothingSummary:
        # the run folder may hold rows of an earlier, larger selection: keep exactly this one's
        report = _restrict_rows(_certify(ctx, spec, folder), example_indices(len(ctx.test), ctx.config.n_certify))
        ctx.reports[spec.name] = report
        return _smoothing_summary(report, ctx.config.radii(), report.to_tsv(folder / "report.tsv"))

    res = ctx.stage(spec.name, "smoothing", settings, compute)
    if spec.name not in ctx.reports:
        from certify.reports import RadiusReport

        ctx.reports[spec.name] = RadiusReport.from_tsv(res.rows_file)
    return res


def run_compare(ctx: StudyContext, spec: ModelSpec) -> CompareSummary:
    """:func:`certify.synbench.compare` of the certified l2 curve with the Gaussian-mixture reference."""
    from certify import synbench as sb

    report = ctx.reports[spec.name]
    plot = ctx.out / "plots" / f"compare_{spec.name}.png"
    settings = {"mixture_sigma": ctx.config.mixture_sigma, "report": ctx.get(spec.name, "smoothing").to_dict()}

    def compute() -> CompareSummary:
        try:
            cmp = sb.compare(report, sigma=ctx.config.mixture_sigma, name=spec.name)
        except ValueError as exc:   # e.g. smoothed clean accuracy <= 0.5: no matching binary mixture
            return CompareSummary(skipped=str(exc))
        cmp.plot(plot)
        d = {k: v for k, v in cmp.to_dict().items() if k not in ("radii", "reference", "certified")}
        return CompareSummary.from_dict({**d, "plot": str(plot)})

    return ctx.stage(spec.name, "compare", settings, compute)


def _check_smoothing(spec: ModelSpec, report: Any, idx: Sequence[int], attack: dict) -> SmoothingCheck:
    chk = smoothing_consistency(report, attack, radius=attack["eps"], idx=idx, norm="l2")
    check = SmoothingCheck.from_dict({**chk, "attack_time_s": attack["time_s"],
                                      "clean_accuracy_predict": attack["clean_accuracy"]})
    if not check.ok:
        logger.error("CONSISTENCY VIOLATION (%s, smoothing, l2 r=%g): %d certified examples were flipped by the "
                     "attack (alpha allows %d): idx %s -- this is a bug in a certificate or an attack",
                     spec.name, check.radius, check.violations, check.allowed, check.violating_idx)
    return check


def run_smooth_attack(ctx: StudyContext, spec: ModelSpec) -> SmoothAttackStage:
    """SmoothAdv PGD judged by PREDICT on the first ``n_smooth_attack`` smoothing examples, and the check
    that no certified example is flipped inside its certified l2 ball (recomputed on every run)."""
    import dataclasses

    from certify.attacks import smoothed_robust_accuracy

    c = ctx.config
    report = ctx.reports[spec.name]
    idx = [int(i) for i in report.to_frame()["idx"].tolist()[: c.n_smooth_attack]]
    settings = {"idx": idx, "radii": c.smooth_attack_radii, "steps": c.smooth_attack_steps,
                "n_noise": c.smooth_attack_noise, "n_predict": c.n_predict, "alpha": c.alpha, "seed": c.seed,
                "sigma": spec.smooth_sigma, "norm": "l2", "format": 2}

    def compute() -> SmoothAttackStage:
        smooth = _smooth(ctx, spec)
        x, y = ctx.test.x[idx], ctx.test.y[idx]
        attacks = [smoothed_robust_accuracy(smooth, x, y, eps=r, norm="l2", steps=c.smooth_attack_steps,
                                            n_noise=c.smooth_attack_noise, n_predict=c.n_predict, alpha=c.alpha,
                                            batch_size=c.smooth_batch_size, seed=c.seed,
                                            verbose=ctx.verbose).to_dict()
                   for r in c.smooth_attack_radii]
        return SmoothAttackStage(idx=tuple(idx), attacks=tuple(attacks))

    res = ctx.stage(spec.name, "smooth_attack", settings, compute)
    checks = tuple(_check_smoothing(spec, report, res.idx, dict(att)) for att in res.attacks)
    res = dataclasses.replace(res, checks=checks)
    ctx.record(spec.name, "smooth_attack", res)
    return res
