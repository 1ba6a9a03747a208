"""The study's Markdown report (``report.md``), one function per section, and :func:`headline_table`, the
compact summary of a ``results.json`` (the README's table). Every section reads the typed stage results."""
from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from certify.study.config import StudyConfig
from certify.study.reproduce import reproduce_lines
from certify.study.results import (
    STAGES,
    ConsistencySummary,
    Correlation,
    ModelStages,
    RankCorrelation,
    SemanticFamily,
    StageTime,
)

__all__ = ["ReportView", "render_report", "headline_table"]


@dataclass(frozen=True)
class ReportView:
    """Everything the report shows: the configuration, the typed results so far and the run's facts."""

    config: StudyConfig
    stages: Mapping[str, ModelStages]
    timings: Mapping[str, Mapping[str, StageTime]]
    correlation: Correlation | None
    consistency: ConsistencySummary
    out: Path
    n_test: int
    n_train: int
    smoothing_kwargs: Mapping[str, Any]
    plots: tuple[Path, ...]
    wall_time_s: float
    status: str
    invocations: tuple[Mapping[str, Any], ...]

    @property
    def names(self) -> list[str]:
        return self.config.model_names

    @property
    def compute_time_s(self) -> float:
        return sum(t.time_s for m in self.timings.values() for t in m.values())


# ------------------------------------------------------------------------------------------- formatting
def _f(v: Any, fmt: str = ".3f") -> str:
    if v is None:
        return "-"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return format(x, fmt) if math.isfinite(x) else "-"


def _radius_label(norm: str, r: float) -> str:
    return f"{r * 255:g}/255" if norm == "linf" and r > 0 else f"{r:g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _range(r: Sequence[float | None] | None) -> str:
    return f"[{_f(r[0], '.3g')}, {_f(r[1], '.3g')}]" if r else "-"


def _pair(a: Any, b: Any, fmt: str = ".3f") -> str:
    return f"{_f(a, fmt)} / {_f(b, fmt)}"


def _family_units(stages: Mapping[str, ModelStages], family: str) -> str:
    """The parameter units of a semantic family as its perturbation states them (recorded in the rows)."""
    for st in stages.values():
        fam = st.semantic.families.get(family) if st.semantic else None
        if fam is not None and fam.units:
            return fam.units
    return ""


# ------------------------------------------------------------------------------------------- correlation text
def _power_note(corr: RankCorrelation) -> str:
    crit = corr.critical_rho_5pct
    if crit is None or not math.isfinite(float(crit)):
        return f"no rank correlation reaches p < 0.05 with n = {corr.n}"
    return f"|rho| >= {float(crit):.2f} is needed for p < 0.05"


def _p_text(corr: RankCorrelation) -> str:
    text = f"p = {_f(corr.p_value, '.2g')}"
    if corr.p_value_exact is not None:
        text += f" (exact permutation p = {_f(corr.p_value_exact, '.2g')})"
    return text


def _correlation_reading(corr: RankCorrelation) -> str:
    """One honest sentence on what the correlation says about SynBench's claim (positive association)."""
    rho = corr.spearman_rho
    p = corr.p_value_exact if corr.p_value_exact is not None else corr.p_value
    if rho is None or p is None or not (math.isfinite(float(rho)) and math.isfinite(float(p))):
        return "The correlation is undefined here."
    if float(p) >= 0.05:
        return ("Not significant at the 5% level: with this few models the result neither supports nor refutes "
                "the SynBench paper's claim that the score predicts linear-probe accuracy.")
    if float(rho) > 0:
        return ("Significant and positive at the 5% level: on this family, models with a higher SynBench score "
                "had higher linear-probe accuracy, in line with the SynBench paper's claim.")
    return ("Significant and NEGATIVE at the 5% level: on this family, models with a higher SynBench score had "
            "LOWER linear-probe accuracy, the opposite of the SynBench paper's claim. The family is not a random "
            "sample of encoders (one architecture, one training set, very different training budgets), so this "
            "is a statement about these models, not a refutation.")


# ------------------------------------------------------------------------------------------- headline table
def _headline_cells(name: str, st: ModelStages, c: StudyConfig, k_l2: int, mid: Mapping[str, int]) -> list[str]:
    eps_inf = max(c.attack_eps_linf)
    att = st.attacks.find("pgd", "linf", eps_inf) if st.attacks else None
    sm = st.smoothing
    l2 = sm.norms.get("l2") if sm else None
    z, f1 = (l2.zeroth, l2.first) if l2 else (None, None)
    cells = [name, _f(st.clean.accuracy if st.clean else None), _f(att.robust_accuracy) if att else "-",
             f"{_f(sm.clean_accuracy)} ({_f(sm.sigma, 'g')})" if sm else "-",
             f"{_f(z.certified_accuracy[k_l2]) if z else '-'} / {_f(f1.certified_accuracy[k_l2]) if f1 else '-'}",
             _f((f1 or z).acr if (f1 or z) else None, ".3f")]
    families = st.semantic.families if st.semantic else {}
    for p in c.perturbations:
        fam = families.get(p)
        cells.append(_pair(fam.certified_accuracy[mid[p]], fam.attack_robust_accuracy[mid[p]], ".2f") if fam else "-")
    cells += [_f(st.synbench.score(0.0) if st.synbench else None),
              _f(st.probe.linear_probe_accuracy if st.probe else None)]
    return cells


def _headline(c: StudyConfig, stages: Mapping[str, ModelStages], correlation: Correlation | None,
              consistency: ConsistencySummary | None, timing: Mapping[str, Any]) -> str:
    l2 = list(c.radii_l2)
    r_l2 = 0.5 if 0.5 in l2 else l2[min(1, len(l2) - 1)]
    mid = {p: len(c.semantic_levels[p]) // 2 for p in c.perturbations}
    header = (["model", "clean acc", f"PGD l-inf {max(c.attack_eps_linf) * 255:g}/255", "smoothed acc (sigma)",
               f"cert. l2 r={r_l2:g} (0th / 1st)", "ACR l2 (1st)"]
              + [f"{p} +-{c.semantic_levels[p][mid[p]]:g} cert / attack" for p in c.perturbations]
              + ["SynBench score", "linear probe acc"])
    rows = [_headline_cells(n, stages.get(n, ModelStages()), c, l2.index(r_l2), mid) for n in c.model_names]
    lines = _table(header, rows)
    n_att = next((st.attacks.n for st in stages.values() if st.attacks), "-")
    units = "; ".join(f"{p} in {u}" for p in c.perturbations if (u := _family_units(stages, p)))
    lines += ["", f"Sample counts: clean accuracy on the whole test split; attacks on {n_att} test images; "
              f"smoothing on {c.n_certify} (n_select {c.n_select}, n_estimate {c.n_estimate}, alpha {c.alpha}); "
              f"semantic on {c.n_semantic} per family; SynBench {c.synbench_n_train} + {c.synbench_n_test} samples "
              f"per separation; probes on {c.probe_n_train} / {c.probe_n_test} images. Radii and eps in pixel units "
              f"([0, 1] scale)" + (f"; semantic parameters: {units}." if units else ".")]
    if correlation is not None:
        m = correlation.main
        lines.append(f"SynBench score vs linear-probe accuracy: Spearman rho = {_f(m.spearman_rho, '.2f')}, "
                     f"{_p_text(m)}, n = {m.n} models (little power: {_power_note(m)}). {_correlation_reading(m)}")
    cons = consistency or ConsistencySummary(checks=0, violations=0, problems=(), status="not run")
    lines.append("Consistency checks (no attack succeeds inside a certified set, same examples and classifier): "
                 f"{cons.status}, {cons.checks} checks, {cons.violations} violations.")
    lines.append(f"Time: {_f(timing.get('compute_time_s'), '.0f')} s of stage compute time "
                 f"({timing.get('threads')} torch threads); wall time of the last invocation "
                 f"{_f(timing.get('wall_time_s'), '.0f')} s.")
    return "\n".join(lines) + "\n"


def headline_table(results: Mapping[str, Any] | str | os.PathLike) -> str:
    """A compact Markdown summary (one row per model, then correlation, checks and time) of a study's
    ``results.json`` (a path or the loaded dict); the README's "What the toolkit finds" table.

    Columns: clean test accuracy; PGD l-inf robust accuracy at the largest l-inf eps; smoothed clean
    accuracy and certified l2 accuracy at r = 0.5 (zeroth / first order) and ACR (first order);
    semantic certified / attack accuracy at the middle level of each family; SynBench score (eps 0)
    and linear-probe accuracy.
    """
    if not isinstance(results, Mapping):
        results = json.loads(Path(results).read_text())
    config = StudyConfig.from_dict(results["config"])
    models = results.get("models") or {}
    stages = {n: ModelStages.from_dict(models.get(n) or {}) for n in config.model_names}
    corr = results.get("correlation") or {}
    cons = results.get("consistency")
    return _headline(config, stages, Correlation.from_dict(corr) if corr.get("main") else None,
                     ConsistencySummary.from_dict(cons) if cons else None, results.get("timings") or {})


# ------------------------------------------------------------------------------------------- sections
def _intro(v: ReportView) -> list[str]:
    c = v.config
    runs = v.invocations
    history = (f" Invocations of this study folder so far: {len(runs)}, "
               f"{sum(h['wall_time_s'] for h in runs):.0f} s of wall time in all (invocations.json)."
               if len(runs) > 1 else "")
    return [f"# certify study: {c.name}", "",
            f"Status: **{v.status}**. Dataset {c.dataset} (test split {v.n_test} images), architecture `{c.arch}`, "
            f"seed {c.seed}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.machine()}.",
            f"Wall time of this invocation: {v.wall_time_s:.0f} s; compute time of all stages (as measured when "
            f"each was computed, cached ones included): {v.compute_time_s:.0f} s." + history, "",
            "All perturbation sizes are in pixel units on the [0, 1] scale (normalisation lives inside the models), "
            "so an l-inf eps of 0.1 is 25.5/255. Every accuracy is a fraction of the stated number of test images "
            "(n), chosen as evenly spaced test indices 0, skip, 2 skip, ... ."]


def _summary(v: ReportView) -> list[str]:
    timing = {"compute_time_s": v.compute_time_s, "wall_time_s": v.wall_time_s, "threads": torch.get_num_threads()}
    return ["## Summary", "", _headline(v.config, v.stages, v.correlation, v.consistency, timing).rstrip("\n")]


def _model_source(spec: Any, st: ModelStages) -> str:
    if spec.source == "pretrained":
        return f"zoo `{spec.pretrained}`"
    how = f"trained here ({spec.augment}"
    if spec.augment == "noise":
        how += f", sigma {spec.sigma:g}"
    if spec.augment in ("fgsm", "pgd"):
        how += f", eps {spec.eps:g}, adv fraction {spec.adv_fraction:g}"
    if spec.init:
        how += f", init `{spec.init}`"
    images = st.info.train_images if st.info and st.info.train_images is not None else "?"
    return how + f", {spec.epochs} epoch(s) on {images} images)"


def _models(v: ReportView) -> list[str]:
    rows = []
    for m in v.config.models:
        st = v.stages[m.name]
        t = v.timings.get(m.name, {}).get("model")
        rows.append([m.name, m.description, _model_source(m, st),
                     _f(t.time_s if t else None, ".0f") if m.source == "train" else "-",
                     _f(st.clean.accuracy if st.clean else None), st.clean.n if st.clean else "-"])
    return ["## Models", ""] + _table(["model", "description", "source", "train time (s)", "clean test accuracy",
                                       "n"], rows)


def _attacks(v: ReportView) -> list[str]:
    c = v.config
    lines = ["## Empirical robust accuracy of the base classifiers (attacks)", ""]
    first = next((v.stages[n].attacks for n in v.names if v.stages[n].attacks), None)
    if first is None:
        return lines + ["(not run yet)"]
    pgd = next((r for r in first.rows if r.attack == "pgd" and r.step_size), None)
    step = f"step {pgd.step_size * pgd.steps / pgd.eps:g} eps/steps, " if pgd else ""
    lines += [f"n = {first.n} test images. Robust accuracy = fraction classified correctly and not flipped by the "
              "attack (verified by re-running the model on the returned input): an upper bound on the true robust "
              f"accuracy. PGD: {c.pgd_steps} steps, {step}{c.pgd_restarts} random start(s); FGSM: one "
              f"signed-gradient step. Attack seed {c.seed}.", ""]
    header = ["model", "clean"] + [f"{a['attack'].upper()} {a['norm']} {_radius_label(a['norm'], a['eps'])}"
                                   for a in c.attack_settings()]
    rows = []
    for n in v.names:
        a = v.stages[n].attacks
        rows.append([n, _f(a.rows[0].clean_accuracy)] + [_f(r.robust_accuracy) for r in a.rows] if a
                    else [n] + ["-"] * (len(header) - 1))
    return lines + _table(header, rows)


def _smoothing_table(v: ReportView, norm: str, grid: Sequence[float]) -> list[str]:
    header = ["model", "sigma", "smoothed clean acc"] + [f"r={_radius_label(norm, r)}" for r in grid] + ["ACR"]
    rows = []
    for n in v.names:
        s = v.stages[n].smoothing
        e = s.norms.get(norm) if s else None
        if e is None:
            continue
        z, f1 = e.zeroth, e.first
        cells = [_pair(z.certified_accuracy[k] if z else None, f1.certified_accuracy[k] if f1 else None)
                 for k in range(len(grid))]
        rows.append([n, _f(s.sigma, "g"), _f(s.clean_accuracy)] + cells
                    + [_pair(z.acr if z else None, f1.acr if f1 else None, ".4f")])
    return ["", f"### {norm}", ""] + _table(header, rows) if rows else []


def _smoothing(v: ReportView) -> list[str]:
    c = v.config
    lines = ["## Randomized smoothing: certified accuracy (zeroth order / first order)", ""]
    if not any(v.stages[n].smoothing for n in v.names):
        return lines + ["(not run yet)"]
    lines.append(f"n = {c.n_certify} test images (every {v.smoothing_kwargs['skip']}th), n_select = {c.n_select}, "
                 f"n_estimate = {c.n_estimate}, alpha = {c.alpha} (each certificate, all its bounds together, fails "
                 f"with probability <= alpha), seed {c.seed}. The smoothing sigma of each model is in the table. "
                 "Certified accuracy at r = fraction of all n examples that are correct, not abstained and "
                 "certified at radius >= r. Entries: zeroth order (Cohen et al. 2019; other norms by norm "
                 "inclusion) / first order (Mohapatra et al. 2020), both from the same first-order certificate, "
                 "whose p_lower uses half of alpha (the other half pays for the gradient bounds), so the zeroth-"
                 "order column is slightly below a pure zeroth-order run. ACR = average certified radius "
                 "(pixel units).")
    for norm, grid in c.radii().items():
        lines += _smoothing_table(v, norm, grid)
    return lines


def _semantic_row(name: str, s: SemanticFamily) -> list[str]:
    cells = [_pair(a, b) for a, b in zip(s.certified_accuracy, s.attack_robust_accuracy)]
    return [name] + cells + [_range(s.mean_certified_range), _range(s.mean_attack_range), _f(s.mean_gap, ".3g"),
                             _f(s.time_per_example_s, ".2f")]


def _semantic(v: ReportView) -> list[str]:
    c = v.config
    lines = ["## Semantic perturbations: certified range vs attack", ""]
    if not any(v.stages[n].semantic for n in v.names):
        return lines + ["(not run yet)"]
    lines.append(f"n = {c.n_semantic} test images per model and family. Certified range = the largest interval "
                 f"around 0 proven (auto_LiRPA, method {c.semantic_method}) to keep the label; attack range = the "
                 "interval between the nearest flips a dense grid + gradient search + bisection found (the end of "
                 "the searched range on a side without a flip). Certified / attack accuracy at t = fraction of all "
                 "n examples that are correct and whose range covers [-t, t]. Mean ranges and the gap (attack end - "
                 "certified end, averaged over both sides) are over the correctly classified examples.")
    for p in c.perturbations:
        header = (["model"] + [f"t={t:g}: cert / attack" for t in c.semantic_levels[p]]
                  + ["mean certified range", "mean attack range", "gap", "time/example (s)"])
        rows = [_semantic_row(n, v.stages[n].semantic.families[p]) for n in v.names
                if v.stages[n].semantic and p in v.stages[n].semantic.families]
        if rows:
            lines += ["", f"### {p} ({_family_units(v.stages, p)}; searched up to +-{c.semantic_max_param[p]:g})", ""]
            lines += _table(header, rows)
    return lines


def _synbench_row(name: str, st: ModelStages, eps_cols: Sequence[float]) -> list[str]:
    b, p, cm = st.synbench, st.probe, st.compare
    rob = p.robust_at(0.2) if p else None
    if cm is None:
        gap, mg = "-", "-"
    elif cm.skipped is not None:
        gap, mg = "n/a", "n/a"
    else:
        gap, mg = _f(cm.gap_area, ".3f"), f"{_f(cm.max_gap)} ({_f(cm.radius_at_max_gap, '.2f')})"
    return ([name] + [_f(b.score(e)) if b else "-" for e in eps_cols]
            + [_f(b.best_eps, "g") if b else "-", _f(p.linear_probe_accuracy) if p else "-",
               _f(rob) if rob is not None else "-", gap, mg])


def _synbench_text(v: ReportView) -> str:
    c = v.config
    b = next(st.synbench for st in v.stages.values() if st.synbench)
    p = next((st.probe for st in v.stages.values() if st.probe), None)
    probe = (f"Linear probing on {c.dataset}: {p.n_train} train / {p.n_test} test images, full-batch L-BFGS "
             "logistic probe; the robust probe is trained and evaluated at feature-space radius 0.2 x (mean half "
             "distance between class means). " if p else "")
    return (f"SynBench (Ko et al. 2024): {b.n_separations} separations, {b.n_train} + {b.n_test} synthetic samples "
            f"each, seed {c.seed}; score = area under the representation's expected-margin curve / the raw data's "
            f"for a_t >= a_T = {c.a_t} (1 = as good as the raw input). The eps columns use the eps-robust Bayes "
            "linear probe (feature-space l2 budget eps x ||mu~||). " + probe
            + f"Comparison: certified l2 accuracy vs the Gaussian mixture with the same clean accuracy and noise "
              f"sigma {c.mixture_sigma:g} pixel units (gap area = integral of reference - certified over r, pixel "
              "units x accuracy; positive = the model certifies less).")


def _synbench(v: ReportView) -> list[str]:
    c = v.config
    lines = ["## SynBench and linear probing of the penultimate representation", ""]
    if not any(v.stages[n].synbench for n in v.names):
        return lines + ["(not run yet)"]
    header = (["model"] + [f"SynBench score eps={e:g}" for e in c.synbench_eps]
              + ["recommended eps", "linear-probe acc", "robust probe acc (eps 0.2)", "compare gap area",
                 "max gap (at r)"])
    lines += [_synbench_text(v)] + _table(header, [_synbench_row(n, v.stages[n], c.synbench_eps) for n in v.names])
    skipped = [f"{n}: {v.stages[n].compare.skipped}" for n in v.names
               if v.stages[n].compare and v.stages[n].compare.skipped is not None]
    return lines + (["", "Comparison not applicable: " + "; ".join(skipped)] if skipped else [])


def _correlation(v: ReportView) -> list[str]:
    c = v.config
    lines = ["## Rank correlation: SynBench score vs linear-probe accuracy", ""]
    if v.correlation is None:
        return lines + ["(needs SynBench and probe results for at least 3 models)"]
    m, r = v.correlation.main, v.correlation.robust
    lines.append(f"Spearman rho = {_f(m.spearman_rho)}, two-sided {_p_text(m)}, n = {m.n} models (SynBench score "
                 f"at eps 0, a_T = {c.a_t}, vs clean linear-probe accuracy on {c.dataset}).")
    if r is not None:
        lines.append(f"Robust variant: SynBench score at eps 0.2 vs the eps-0.2 robust probe's robust accuracy: "
                     f"rho = {_f(r.spearman_rho)}, {_p_text(r)}, n = {r.n}.")
    return lines + ["", f"Read with care: with only {m.n} models the test has little power ({_power_note(m)}), and "
                        f"the models share one architecture and one training set. {_correlation_reading(m)} "
                        "Reported as measured, not tuned."]


def _hidden_cost_rows(name: str, hc: Any) -> list[list[Any]]:
    return [[name, _f(r.sigma, "g"), _f(r.accuracy), _f(r.abstain_rate), _f(r.disparity), _f(r.changed_fraction)]
            + [_f(a, ".2f") for a in r.class_accuracy] + [", ".join(str(k) for k in r.vanished) or "-"]
            for r in hc.rows]


def _hidden_cost(v: ReportView) -> list[str]:
    lines = ["## Hidden cost of smoothing: accuracy and disparity per class against sigma", ""]
    swept = [(n, v.stages[n].hidden_cost) for n in v.names if v.stages[n].hidden_cost]
    if not swept:
        return lines + ["(not run yet)" if v.config.models_for("hidden_cost") else "(no model selected)"]
    hc = swept[0][1]
    counts = ", ".join(f"{c}: {k}" for c, k in zip(hc.classes, hc.class_counts))
    lines.append(f"n = {hc.n} test images (every {hc.idx_skip}th; per class {counts}), the smoothed classifier's "
                 f"PREDICT with {hc.n_estimate} noise samples at alpha = {hc.alpha} (an abstention counts as an "
                 "error), one noise seed per example shared by every sigma, seed "
                 f"{hc.seed}; sigma 0 is the base classifier. Disparity = max - min class accuracy; 'differs' = "
                 "fraction whose smoothed output (abstention included) differs from the base prediction; "
                 "'vanished' = classes the base classifier predicts on some example and the smoothed classifier on "
                 "none (Mohapatra et al. 2021: regions thinner than the noise scale vanish). Class accuracies rest "
                 "on the per-class counts above.")
    header = (["model", "sigma", "accuracy", "abstain", "disparity", "differs"] + [f"class {c}" for c in hc.classes]
              + ["vanished"])
    return lines + [""] + _table(header, [row for n, h in swept for row in _hidden_cost_rows(n, h)])


def _transfer_row(name: str, st: Any, r: Any) -> list[Any]:
    return [name, _radius_label("linf", r.eps), r.n, _f(st.probe_train_accuracy), _f(r.clean_accuracy),
            f"{_f(r.certified_logit)} / {_f(r.certified_pairwise)} / {_f(r.certified_box)}",
            _f(r.pgd_robust_accuracy), _f(r.mean_clean_loss), _pair(r.mean_loss_bound, r.mean_loss_bound_box),
            _f(r.median_feature_deviation, ".3g"), _f(r.head_spectral_norm, ".3g")]


def _transfer(v: ReportView) -> list[str]:
    lines = ["## Robustness transfer from the representation to a fresh linear probe", ""]
    done = [(n, v.stages[n].transfer) for n in v.names if v.stages[n].transfer]
    if not done:
        return lines + ["(not run yet)" if v.config.models_for("transfer") else "(no model selected)"]
    st = done[0][1]
    lines.append(f"Nern et al. 2023: a fresh multinomial logistic probe is fitted on each model's penultimate "
                 f"features of {st.probe_n_train} training images; auto_LiRPA ({st.method}) bounds the features over "
                 f"the l-inf ball of radius eps (clipped to [0, 1]) around n = {st.n} test images, and the probe is "
                 "certified from that box. Certified fraction (of all n) per criterion: logit (each logit moves by at "
                 "most ||w_i|| Delta) / pairwise (||w_y - w_j|| Delta) / box (exact over the feature box), Delta = "
                 "certified l2 bound on the feature deviation (median column). Loss bound = mean certified upper "
                 "bound on the cross-entropy over the ball: Lipschitz (CE + sqrt(2) ||W||_2 Delta, the paper's "
                 f"task-independent form) / box. PGD ({st.pgd_steps} steps, {st.pgd_restarts} start(s)) on the "
                 "composed model gives an upper bound on robust accuracy on the same examples.")
    header = ["model", "l-inf eps", "n", "probe train acc", "probe test acc", "certified logit / pairwise / box",
              "PGD robust acc", "mean CE (clean)", "loss bound Lipschitz / box", "median Delta", "spectral norm of W"]
    return lines + [""] + _table(header, [_transfer_row(n, t, r) for n, t in done for r in t.rows])


def _transfer_checks(v: ReportView) -> list[str]:
    rows = [[n, _radius_label("linf", r.eps), r.n, _f(r.certified_box), _f(r.pgd_robust_accuracy), r.violations,
             "ok" if r.ok else "**VIOLATION**"]
            for n in v.names if v.stages[n].transfer for r in v.stages[n].transfer.rows]
    if not rows:
        return []
    return ["", "Transfer: a violation is an example certified by the box criterion that PGD on the composed model "
            "(encoder + fresh probe) misclassifies inside the l-inf ball. The certificate is deterministic: any "
            "violation is a bug.", ""] + _table(["model", "l-inf eps", "n", "certified (box)", "PGD robust acc",
                                                 "violations", "status"], rows)


def _smoothing_checks(v: ReportView) -> list[str]:
    c = v.config
    rows = [[n, f"{chk.norm} r={chk.radius:g}", chk.n, _f(chk.certified_accuracy), _f(chk.robust_accuracy),
             chk.abstain_on_certified, chk.violations, chk.allowed, "ok" if chk.ok else "**VIOLATION**"]
            for n in v.names if v.stages[n].smooth_attack for chk in v.stages[n].smooth_attack.checks]
    if not rows:
        return []
    return ["", f"Smoothing: SmoothAdv PGD (Salman et al. 2019; {c.smooth_attack_steps} steps, "
            f"{c.smooth_attack_noise} noise draws) on the base model, judged by PREDICT (n = {c.n_predict}, alpha = "
            f"{c.alpha}) on fresh noise; a violation is an example certified at r on which PREDICT returns another "
            "label inside the r-ball (or on the clean input). Up to 'allowed' violations are explained by alpha "
            "(Binomial(n, 2 alpha) tail at 0.1%). Certified accuracy <= robust accuracy must hold up to the "
            "'abstain' column (PREDICT abstentions are not attack successes but count against robust accuracy).",
            ""] + _table(["model", "radius", "n", "certified acc", "PREDICT robust acc", "abstain (certified)",
                          "violations", "allowed", "status"], rows)


def _semantic_check_row(name: str, st: ModelStages, family: str) -> list[Any] | None:
    fam = st.semantic.families.get(family) if st.semantic else None
    if fam is None:
        return None
    g = st.semantic_grid.families.get(family) if st.semantic_grid else None
    ok = fam.ok and not (g and g.flips)
    return [name, family, fam.n, fam.violations, g.flips if g else "-", g.checked if g else "-",
            "yes" if fam.certified_le_attack else "NO", "ok" if ok else "**VIOLATION**"]


def _semantic_checks(v: ReportView) -> list[str]:
    rows = [row for n in v.names for p in v.config.perturbations
            if (row := _semantic_check_row(n, v.stages[n], p)) is not None]
    if not rows:
        return []
    return ["", f"Semantic: a violation is a flip (from the report's attack, or from an independent "
            f"{v.config.semantic_grid}-point grid over each certified range evaluated here with "
            "`perturbation.apply`) inside a certified range. Semantic certificates are deterministic: any violation "
            "is a bug.", ""] + _table(["model", "family", "n", "attack flips inside certified",
                                       "grid flips inside certified", "grid points checked",
                                       "certified acc <= attack acc at every t", "status"], rows)


def _consistency(v: ReportView) -> list[str]:
    cons = v.consistency
    return (["## Consistency checks: proofs vs attacks on the same examples", "",
             f"Overall: **{cons.status}** ({cons.checks} checks, {cons.violations} violations beyond the alpha "
             "allowance)."] + _smoothing_checks(v) + _semantic_checks(v) + _transfer_checks(v))


def _timings(v: ReportView) -> list[str]:
    rows = []
    for n in v.names:
        t = v.timings.get(n, {})
        cells = [_f(t[s].time_s, ".1f") + (" c" if t[s].cached else "") if s in t else "-" for s in STAGES]
        rows.append([n] + cells + [_f(sum(x.time_s for x in t.values()), ".0f")])
    return (["## Time per stage (seconds; c = cached from an earlier run, time as measured then)", ""]
            + _table(["model"] + list(STAGES) + ["total"], rows))


def _plots(v: ReportView) -> list[str]:
    if not v.plots:
        return []
    return ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in v.plots if p.parent.name == "plots"]


_SECTIONS = (_intro, _summary, _models, _attacks, _smoothing, _hidden_cost, _semantic, _synbench, _correlation,
             _transfer, _consistency, _timings, _plots)


def render_report(v: ReportView) -> str:
    """The whole report.md: every section whose results exist (others say "not run yet"), then Reproduce."""
    lines: list[str] = []
    for section in _SECTIONS:
        part = section(v)
        if part:
            lines += part + [""]
    lines += ["## Reproduce", ""] + reproduce_lines(v.config, out=v.out, n_test=v.n_test, n_train=v.n_train,
                                                   smoothing_kwargs=v.smoothing_kwargs)
    return "\n".join(lines) + "\n"
