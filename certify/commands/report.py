"""``certify report``: re-render a run's summary.json, report.md and plot from its rows.tsv.

With several runs (e.g. one per sigma), also draws them on one plot (``--plot``, default
``<first run>/comparison.png``) and prints a comparison table. A path may also be a rows file
(``.tsv``) in our format or a published log (Cohen et al. / Mohapatra et al.), read-only: it is never
rewritten; a single log gets its certified-accuracy plot at ``--plot`` (default ``<log>.png`` beside it).

    certify report data/certify/cifar10/resnet110/noise_0.25/test/sigma_0.25     # Cohen et al.'s log
"""
from __future__ import annotations

import argparse
from pathlib import Path

from certify.commands._common import check_out, set_summary

HELP = "re-render tables and plots of certification runs from their saved rows (and compare runs)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories (with rows.tsv) or rows/log .tsv files; several are overlaid")
    p.add_argument("--labels", nargs="+", default=None, metavar="LABEL", help="one plot label per run")
    p.add_argument("--plot", metavar="PATH", default=None,
                   help="comparison plot for several runs (default <first RUN_DIR>/comparison.png); for one log "
                        "file its plot (default <log>.png)")


def run(args: argparse.Namespace) -> int:
    from certify.reports import RadiusReport
    from certify.runs import render_run

    paths = [Path(p) for p in args.runs]
    if args.labels is not None and len(args.labels) != len(paths):
        raise ValueError(f"--labels: give one label per run ({len(paths)}), got {len(args.labels)}")
    for path in paths:
        if path.is_dir() and not (path / "rows.tsv").is_file():
            raise ValueError(f"RUN_DIR: {path} has no rows.tsv (not a certify run directory)")
        if not path.exists():
            raise ValueError(f"RUN_DIR: no such run directory or rows file: {path}")
    plot = _plot_path(args.plot, paths)
    if plot is not None:
        check_out(plot.parent, flag="--plot")
    reports = []
    for path in paths:
        if path.is_dir():
            reports.append(render_run(path))
            print(f"{path}: re-rendered summary.json, report.md, certified_accuracy.png ({len(reports[-1])} rows)")
        else:
            try:
                reports.append(RadiusReport.from_tsv(path))
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"RUN_DIR: {path} is not a rows file or a published log ({exc})") from None
    labels = args.labels or [r.label_text() for r in reports]
    if plot is not None:
        reports[0].plot(plot, others=reports[1:], labels=labels)
        print(f"{'comparison plot' if len(reports) > 1 else 'plot'}: {plot}")
    width = max(len(lab) for lab in labels)
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    print(f"{'run':<{width}}  {'n':>5}  {'clean':>6}  {'abstain':>7}  {'ACR':>7}  " +
          "  ".join(f"l2@{r:g}".rjust(7) for r in grid))
    for lab, rep in zip(labels, reports):
        accs = rep.certified_accuracy(grid, "l2", "zeroth")
        print(f"{lab:<{width}}  {len(rep):>5}  {rep.clean_accuracy:6.3f}  {rep.abstain_rate:7.3f}  "
              f"{rep.average_certified_radius('l2', 'zeroth'):7.4f}  " + "  ".join(f"{a:7.3f}" for a in accs))
    set_summary(args, {"plot": None if plot is None else str(plot),
                       "runs": [{"path": str(p), "label": lab, **rep.summary()}
                                for p, lab, rep in zip(paths, labels, reports)]})
    return 0


def _plot_path(plot: str | None, paths: list[Path]) -> Path | None:
    """--plot, else <first run dir>/comparison.png for several runs, <log>.png for one log file."""
    if plot is not None:
        return Path(plot)
    if len(paths) == 1:
        return None if paths[0].is_dir() else paths[0].with_name(paths[0].name + ".png")
    first_dir = next((p for p in paths if p.is_dir()), None)
    if first_dir is None:
        raise ValueError("--plot: required when no RUN_DIR is a directory")
    return first_dir / "comparison.png"
