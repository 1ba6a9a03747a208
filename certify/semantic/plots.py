"""Plots of a :class:`~certify.semantic.report.SemanticReport`: accuracy vs range, certified-range histogram,
example images under their certified extremes (matplotlib, Agg backend)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .report import SemanticReport, _isnan


def _figure_path(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(self: SemanticReport, path: str | os.PathLike, *, points: int = 101) -> Path:
    """Certified accuracy (solid) and attack-free accuracy (dashed) vs parameter range, one
    panel per family/parameter (x in the family's units)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = self.families()
    if not fams:
        raise ValueError("no rows to plot")
    n = len(fams)
    cols = min(3, n)
    nrows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, (pert, param) in zip(axes.flat, fams):
        rows = [r for r in self.rows if r["perturbation"] == pert and r["param"] == param]
        mag = max(max(abs(float(r["range_lo"])), abs(float(r["range_hi"]))) for r in rows)
        rs = np.linspace(0, mag, points)
        ax.plot(rs, self.certified_accuracy(pert, rs, param=param), label=f"certified ({rows[0]['method']})")
        ax.plot(rs, self.attack_accuracy(pert, rs, param=param), "--", label="no flip found (attack)")
        ax.set_title(pert if param == pert else f"{pert}: {param}")
        ax.set_xlabel(f"|{param}| ({rows[0]['units']})")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return _figure_path(fig, path)


def plot_histogram(self: SemanticReport, path: str | os.PathLike, *, bins: int = 20) -> Path:
    """Histogram of the certified range ends (lower end below 0, upper end above 0) over the correctly classified
    examples, one panel per family/parameter; the requested range is marked."""
    plt = _pyplot()
    fams = self.families()
    if not fams:
        raise ValueError("no rows to plot")
    cols = min(3, len(fams))
    nrows = int(math.ceil(len(fams) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, (pert, param) in zip(axes.flat, fams):
        rows = [r for r in self.rows if r["perturbation"] == pert and r["param"] == param and r["correct"]]
        lo = [float(r["certified_lo"]) for r in rows]
        hi = [float(r["certified_hi"]) for r in rows]
        if rows:
            edges = np.linspace(float(rows[0]["range_lo"]), float(rows[0]["range_hi"]), bins + 1)
            ax.hist([lo, hi], bins=edges, label=["certified lower end", "certified upper end"], stacked=True)
            ax.axvline(float(rows[0]["range_lo"]), color="k", lw=0.8, ls=":")
            ax.axvline(float(rows[0]["range_hi"]), color="k", lw=0.8, ls=":")
        ax.set_title(f"{pert if param == pert else pert + ': ' + param} (n = {len(rows)} correct)")
        ax.set_xlabel(f"{param} ({rows[0]['units'] if rows else ''})")
        ax.set_ylabel("examples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(fams):]:
        ax.axis("off")
    return _figure_path(fig, path)


def picture_grid(self: SemanticReport, path: str | os.PathLike, dataset: Any,
                 perturbations: Sequence[Any]) -> Path:
    """One image per family under its certified extremes: [apply(lo), original, apply(hi)]
    (and the nearest flips found, when any), for the first correct example of each family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {p.name: p for p in perturbations}
    fams = [f for f in self.families() if f[0] in by_name]
    if not fams:
        raise ValueError("none of the report's families is among perturbations")
    shown: list[tuple[str, Any, list]] = []
    done = set()
    for pert, _param in fams:
        if pert in done:
            continue
        rows_all = [r for r in self.rows if r["perturbation"] == pert]
        p = by_name[pert]
        k = len(p.param_names)
        correct = [r for r in rows_all if r["correct"]]
        if not correct:
            continue
        idx = int(correct[0]["idx"])
        rows = [r for r in rows_all if int(r["idx"]) == idx]
        x, _ = dataset[idx]
        cert_lo = [float(r["certified_lo"]) for r in rows]
        cert_hi = [float(r["certified_hi"]) for r in rows]
        panels = [("certified lo", cert_lo), ("original", [0.0] * k), ("certified hi", cert_hi)]
        if k == 1:
            if not _isnan(rows[0]["attack_lo"]):
                panels.insert(0, ("flip", [float(rows[0]["attack_lo"])]))
            if not _isnan(rows[0]["attack_hi"]):
                panels.append(("flip", [float(rows[0]["attack_hi"])]))
        images = []
        for title, theta in panels:
            th = torch.tensor([theta], dtype=torch.float64, device=x.device)
            img = p.apply(x.float(), th.float())[0]
            unit = str(rows[0]["units"]).split(" ")[0]
            caption = f"{title}\n" + ", ".join(f"{t:.3g}" for t in theta) + (f" {unit}" if k == 1 else "")
            images.append((caption, img))
        shown.append((f"{pert} (idx {idx})", p, images))
        done.add(pert)
    ncols = max(len(s[2]) for s in shown)
    fig, axes = plt.subplots(len(shown), ncols, figsize=(1.9 * ncols, 2.2 * len(shown)), squeeze=False)
    for row_axes, (title, _, images) in zip(axes, shown):
        for ax in row_axes:
            ax.axis("off")
        for ax, (sub, img) in zip(row_axes, images):
            arr = img.detach().clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(arr[..., 0] if arr.shape[2] == 1 else arr, cmap="gray" if arr.shape[2] == 1 else None,
                      vmin=0, vmax=1)
            ax.set_title(sub, fontsize=7)
        row_axes[0].text(-0.15, 0.5, title, rotation=90, va="center", ha="right", fontsize=8,
                         transform=row_axes[0].transAxes)
    return _figure_path(fig, path)
