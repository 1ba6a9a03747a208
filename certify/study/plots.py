"""The study's plots (matplotlib, Agg, no global state): certified accuracy per norm, SynBench score vs
linear-probe accuracy, semantic certified vs attack accuracy per family, and the hidden cost of smoothing
(class-wise disparity and accuracy against sigma)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from certify.study.config import StudyConfig
from certify.study.results import Correlation, ModelStages, SemanticFamily

__all__ = ["plot_certified", "plot_synbench", "plot_semantic", "plot_hidden_cost"]

_NORMS = ("l2", "l1", "linf")


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _curves(reports: Mapping[str, Any], norm: str) -> tuple[list[tuple], float]:
    """(sorted certified radii, n, model, order, colour) of every model and order, and the largest radius."""
    curves, top = [], 1e-12
    for i, (name, rep) in enumerate(reports.items()):
        certified = rep.to_frame()["correct"].to_numpy(dtype=bool)
        for order in ("zeroth", "first"):
            try:
                radii = rep.radii_for(norm, order)
            except ValueError:      # no first-order column / no input shape for zeroth linf
                continue
            values = np.sort(radii[certified])
            top = max(top, float(values.max()) if values.size else 0.0)
            curves.append((values, len(rep), name, order, f"C{i % 10}"))
    return curves, top


def _certified_axis(ax: Any, c: StudyConfig, reports: Mapping[str, Any], norm: str) -> None:
    curves, top = _curves(reports, norm)
    scale = 255 if norm == "linf" else 1
    grid = np.linspace(0.0, top * 1.05, 400)
    with_first = {cv[2] for cv in curves if cv[3] == "first"}
    for values, total, name, order, col in curves:
        acc = (len(values) - np.searchsorted(values, grid, side="left")) / total
        label = f"{name} (sigma {c.model(name).smooth_sigma:g})" if order == "first" or name not in with_first else None
        ax.plot(grid * scale, acc, "--" if order == "zeroth" else "-", color=col, lw=1.5, label=label)
    ax.set_xlabel(f"{norm} radius ({'x 1/255, ' if norm == 'linf' else ''}pixel units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, grid[-1] * scale)
    ax.grid(alpha=0.3)
    ax.set_title(norm)


def plot_certified(c: StudyConfig, reports: Mapping[str, Any], path: Path) -> Path | None:
    """One axis per norm (l2, l1, linf), every model: zeroth order dashed, first order solid."""
    reports = {m.name: reports[m.name] for m in c.models if m.name in reports}
    if not reports:
        return None
    fig = _figure((15, 4.6))
    for j, norm in enumerate(_NORMS):
        ax = fig.add_subplot(1, len(_NORMS), j + 1)
        _certified_axis(ax, c, reports, norm)
        if j == len(_NORMS) - 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Certified accuracy of the smoothed models, n = {c.n_certify} test images "
                 "(dashed: zeroth order, solid: first order)", fontsize=10)
    return _save(fig, path, 110)


def plot_synbench(c: StudyConfig, stages: Mapping[str, ModelStages], correlation: Correlation | None,
                  path: Path) -> Path | None:
    """SynBench score (eps 0) vs linear-probe accuracy, one point per model."""
    pts = [(n, st.synbench.score(0.0), st.probe.linear_probe_accuracy) for n, st in stages.items()
           if st.synbench and st.probe]
    if not pts:
        return None
    fig = _figure((6.4, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    for i, (n, s, a) in enumerate(pts):
        ax.scatter([s], [a], color=f"C{i % 10}", s=40)
        ax.annotate(n, (s, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if correlation is not None:
        m = correlation.main
        rho, p = (float("nan") if v is None else float(v) for v in (m.spearman_rho, m.p_value))
        ax.set_title(f"SynBench score vs linear-probe accuracy: Spearman rho {rho:.2f}, p {p:.2g}, n {m.n}",
                     fontsize=9)
    ax.set_xlabel(f"SynBench score (eps 0, a_T {c.a_t:g}), penultimate features")
    ax.set_ylabel(f"linear-probe test accuracy ({c.dataset})")
    ax.grid(alpha=0.3)
    return _save(fig, path, 120)


def _semantic_curves(fam: SemanticFamily, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Certified and attack-free accuracy on [-t, t] over all examples (wrong ones count as neither)."""
    cert = np.array([[e.certified_lo, e.certified_hi] if e.correct else [0.0, -1.0] for e in fam.examples])
    att = np.array([[-np.inf if e.attack_lo is None else e.attack_lo, np.inf if e.attack_hi is None else e.attack_hi]
                    if e.correct else [0.0, 0.0] for e in fam.examples])
    return (((cert[:, :1] <= -t) & (cert[:, 1:] >= t)).mean(0), ((att[:, :1] < -t) & (att[:, 1:] > t)).mean(0))


def plot_semantic(c: StudyConfig, stages: Mapping[str, ModelStages], path: Path) -> Path | None:
    """Per family: certified accuracy (solid) and attack-free accuracy (dashed, an upper bound) vs the
    parameter magnitude t (fraction of all n examples correct and certified / flip-free on [-t, t])."""
    names = [n for n, st in stages.items() if st.semantic]
    if not names:
        return None
    fig = _figure((5.0 * len(c.perturbations) + 1.5, 4.2))
    for j, p in enumerate(c.perturbations):
        ax = fig.add_subplot(1, len(c.perturbations), j + 1)
        t = np.linspace(0.0, c.semantic_max_param[p], 301)
        units = ""
        for i, n in enumerate(names):
            fam = stages[n].semantic.families.get(p)
            if fam is None or not fam.examples:
                continue
            units = fam.units
            ca, aa = _semantic_curves(fam, t)
            ax.plot(t, ca, "-", color=f"C{i % 10}", lw=1.6, label=n)
            ax.plot(t, aa, "--", color=f"C{i % 10}", lw=1.0)
        ax.set_xlabel(f"|{p} parameter| <= t ({units})", fontsize=8)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{p}: certified (solid) vs attack (dashed)", fontsize=9)
        ax.grid(alpha=0.3)
        if j == len(c.perturbations) - 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Semantic perturbations, n = {c.n_semantic} test images per model", fontsize=10)
    return _save(fig, path, 110)


def plot_hidden_cost(c: StudyConfig, stages: Mapping[str, ModelStages], path: Path) -> Path | None:
    """Disparity (max - min class accuracy, left) and overall accuracy (right) of each swept model's smoothed
    classifier against sigma (sigma 0: the base classifier)."""
    swept = [(n, stages[n].hidden_cost) for n in c.model_names if n in stages and stages[n].hidden_cost]
    if not swept:
        return None
    fig = _figure((10.5, 4.2))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, (name, hc) in enumerate(swept):
        sig = [r.sigma for r in hc.rows]
        disp = [np.nan if r.disparity is None else r.disparity for r in hc.rows]
        left.plot(sig, disp, "o-", color=f"C{i % 10}", lw=1.6, label=name)
        right.plot(sig, [r.accuracy for r in hc.rows], "o-", color=f"C{i % 10}", lw=1.6, label=name)
    for ax, what in ((left, "disparity (max - min class accuracy)"), (right, "accuracy (abstain = error)")):
        ax.set_xlabel("smoothing sigma (pixel units; 0 = base classifier)")
        ax.set_ylabel(what)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    hc0 = swept[0][1]
    fig.suptitle(f"Hidden cost of smoothing: n = {hc0.n} test images, {hc0.n_estimate} noise samples per "
                 f"prediction, alpha {hc0.alpha:g}", fontsize=10)
    return _save(fig, path, 110)
