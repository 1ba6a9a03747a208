"""The driver: :func:`run_study` runs the stages of every model in a fixed order through a :class:`_Run`
and writes report.md, results.json and the plots (also after an interruption, marked as such)."""
from __future__ import annotations

import logging
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Mapping

import torch

from certify._checks import check_bool, check_int
from certify._jsonio import atomic_write_json, atomic_write_text
from certify.devices import resolve_device
from certify.study import hidden_cost_stage, semantic_stage, stages, transfer_stage
from certify.study import models as _models
from certify.study.cache import loadavg, record_invocation
from certify.study.checks import consistency_summary, rank_correlation
from certify.study.config import StudyConfig, full_config, quick_config
from certify.study.context import StudyContext
from certify.study.plots import plot_certified, plot_hidden_cost, plot_semantic, plot_synbench
from certify.study.report import ReportView, render_report
from certify.study.results import Correlation, ModelStages, RankCorrelation, StudyResult

logger = logging.getLogger("certify.study")

__all__ = ["run_study"]


class _Run(StudyContext):
    """One :func:`run_study` invocation: the context plus one method per stage (``run_<stage>(spec)``)."""

    load_model = _models.load_model
    run_clean = stages.run_clean
    run_attacks = stages.run_attacks
    run_synbench = stages.run_synbench
    run_probe = stages.run_probe
    run_smoothing = stages.run_smoothing
    run_compare = stages.run_compare
    run_smooth_attack = stages.run_smooth_attack
    run_hidden_cost = hidden_cost_stage.run_hidden_cost
    run_transfer = transfer_stage.run_transfer
    run_semantic = semantic_stage.run_semantic
    run_semantic_grid = semantic_stage.run_semantic_grid

    def __init__(self, out: Path, config: StudyConfig, verbose: bool, device: torch.device | None = None):
        super().__init__(out, config, verbose, device)
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        # unique even for two invocations of one process within the same second (a fully cached re-run)
        self.invocation_id = f"{self.started}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.t0 = time.perf_counter()


def _rank(x: list[float], y: list[float], names: list[str], xname: str, yname: str) -> RankCorrelation:
    return RankCorrelation.from_dict({**rank_correlation(x, y, names), "x": xname, "y": yname})


def correlation_of(results: Mapping[str, ModelStages]) -> Correlation | None:
    """Spearman correlation of SynBench score (eps 0) and linear-probe accuracy across the models with both
    (None with fewer than 3), and of the eps-0.2 score with the eps-0.2 robust probe when every model has both."""
    pairs = [(n, st.synbench, st.probe) for n, st in results.items() if st.synbench and st.probe]
    if len(pairs) < 3:
        return None
    names = [n for n, _, _ in pairs]
    score = [b.score(0.0) for _, b, _ in pairs]
    acc = [p.linear_probe_accuracy for _, _, p in pairs]
    robust = [(b.score(0.2), p.robust_at(0.2)) for _, b, p in pairs]
    main = _rank(score, acc, names, "synbench_score_eps0", "linear_probe_accuracy")
    rob = None
    if all(s is not None and a is not None for s, a in robust):
        rob = _rank([s for s, _ in robust], [a for _, a in robust], names, "synbench_score_eps0.2",
                    "robust_probe_accuracy_eps0.2")
    return Correlation(main=main, scores=tuple(score), probe_accuracy=tuple(acc), robust=rob)


def _plots(run: _Run, results: Mapping[str, ModelStages], correlation: Correlation | None) -> list[Path]:
    folder = run.out / "plots"
    made = [plot_certified(run.config, run.reports, folder / "certified_accuracy.png"),
            plot_synbench(run.config, results, correlation, folder / "synbench_vs_probe.png"),
            plot_semantic(run.config, results, folder / "semantic_ranges.png"),
            plot_hidden_cost(run.config, results, folder / "hidden_cost_disparity.png")]
    return [Path(p) for p in made if p is not None]


def _timings(run: _Run, wall: float, history: list[dict]) -> dict:
    per_model = {n: {s: t.to_dict() for s, t in ts.items()} for n, ts in run.timings.items()}
    return {"per_model": per_model, "wall_time_s": wall, "invocations": history,
            "total_wall_time_s": sum(h["wall_time_s"] for h in history),
            "compute_time_s": sum(t.time_s for m in run.timings.values() for t in m.values()),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}


def _finish(run: _Run, status: str, *, plots_too: bool = True) -> StudyResult:
    """Write report.md and results.json (and, with ``plots_too``, the plots) from what is done so far."""
    out = run.out
    results = run.stages()
    correlation = correlation_of(results)
    consistency = consistency_summary(results)
    plots = _plots(run, results, correlation) if plots_too else []
    plots += sorted((out / "plots").glob("compare_*.png"))
    wall = time.perf_counter() - run.t0
    computed = sum(1 for m in run.timings.values() for t in m.values() if not t.cached)
    history = record_invocation(out, {"id": run.invocation_id, "started": run.started, "wall_time_s": float(wall),
                                      "stages_computed": computed, "status": status,
                                      "load_average_at_finish": loadavg()})
    view = ReportView(config=run.config, stages=results, timings=run.timings, correlation=correlation,
                      consistency=consistency, out=out, n_test=len(run.test), n_train=len(run.train),
                      smoothing_kwargs=stages.smoothing_kwargs(run), plots=tuple(plots), wall_time_s=wall,
                      status=status, invocations=tuple(history))
    report = atomic_write_text(out / "report.md", render_report(view))
    result = StudyResult(out=out, config=run.config, stages=results,
                         models={n: st.to_dict() for n, st in results.items()},
                         correlation=correlation.to_dict() if correlation else {},
                         consistency=consistency.to_dict(), timings=_timings(run, wall, history), report=report,
                         results=out / "results.json", plots=tuple(plots), wall_time_s=wall)
    d = result.to_dict()
    d["status"] = status
    d["environment"] = {"torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
                        "cpu_count": os.cpu_count(), "load_average_at_finish": loadavg()}
    atomic_write_json(out / "results.json", d)
    return result


def _config(quick: bool, seed: int, config: StudyConfig | None) -> StudyConfig:
    if config is None:
        check_bool("quick", quick)
        seed = check_int("seed", seed, 0)
        return quick_config(seed) if quick else full_config(seed)
    if not isinstance(config, StudyConfig):
        raise TypeError(f"config must be a StudyConfig or None, got {type(config).__name__}")
    return config


#: (status of the partial report written before the phase, or None; the phase's stages in order)
_PHASES = ((None, ("load_model",)),
           (None, ("run_clean", "run_attacks")),
           (None, ("run_synbench", "run_probe")),
           ("partial: smoothing and semantic stages pending", ("run_smoothing", "run_compare", "run_smooth_attack")),
           ("partial: hidden-cost, transfer and semantic stages pending", ("run_hidden_cost", "run_transfer")),
           ("partial: semantic stages pending", ("run_semantic", "run_semantic_grid")))


def _run_phases(run: _Run) -> None:
    """Every phase over every model (a phase's stages run model by model), with partial reports between."""
    for pending, methods in _PHASES:
        if pending is not None:
            _finish(run, pending, plots_too=False)
        for spec in run.config.models:
            for method in methods:
                getattr(run, method)(spec)


def run_study(out: str | os.PathLike, *, quick: bool = False, seed: int = 0, verbose: bool = True,
              config: StudyConfig | None = None, device: str | torch.device | None = None) -> StudyResult:
    """Run (or resume) the study into ``out`` and write report.md, results.json and plots.

    Args:
        out: output folder (created; an existing one is resumed: finished stages are skipped).
        quick: use :func:`quick_config` instead of :func:`full_config` (ignored when ``config`` is given).
        seed: seed of every random step (ignored when ``config`` is given; set ``config.seed``).
        verbose: progress bars (on a TTY) and INFO logs.
        config: a custom :class:`StudyConfig` (tests use tiny ones on the digits data).
        device: where every model is trained, attacked, smoothed, bounded and probed: ``"cpu"``, ``"cuda"``,
            ``"auto"`` or a ``torch.device`` (:func:`certify.devices.resolve_device`); None (default): the CPU,
            where models are loaded. Stage caches are keyed by settings, not by device: a finished stage is
            reused on any device (smoothing noise, and so its certificates, differ between device types).

    Returns:
        :class:`StudyResult`. Consistency violations (a certificate contradicted by an attack beyond the
        alpha allowance) are logged as errors and reported in report.md / results.json
        (``result.consistency["violations"]``); they never stop the study.
    """
    dev = resolve_device(device)
    config = _config(quick, seed, config)
    check_bool("verbose", verbose)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", config.to_dict())
    run = _Run(out, config, verbose, dev)
    logger.info("study %r into %s: %d models", config.name, out, len(config.models))
    try:
        _run_phases(run)
    except BaseException:
        try:
            _finish(run, "interrupted (re-run the same command to resume)")
        except Exception:  # noqa: BLE001 - the original error matters more
            logger.exception("could not write the partial report")
        raise
    result = _finish(run, "complete")
    if result.consistency["violations"]:
        logger.error("study finished with %d consistency VIOLATIONS: %s", result.consistency["violations"],
                     "; ".join(result.consistency["problems"]))
    logger.info("study written to %s (report.md, results.json, plots/) in %.0f s", out, result.wall_time_s)
    return result

