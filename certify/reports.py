"""Certified-radius reports: per-example rows, certified accuracy curves, tables, files and plots.

A :class:`RadiusReport` holds one row per certified example plus the settings of the run that
produced them. Row columns (``ROW_COLUMNS``):

=============  ===========================================================================
``idx``        index of the example in its dataset
``label``      true label
``predict``    class chosen by CERTIFY (the top class of the selection samples; kept even when
               the certificate abstains). ``<NA>`` when unknown (abstained rows of Cohen et
               al.'s logs, which write ``-1``)
``abstained``  bool: the smoothed classifier abstained (never encoded as -1 in memory)
``p_lower``    lower confidence bound on the top-class probability (NaN when unknown)
``radius``     zeroth-order (Cohen et al. 2019) l2 radius in pixel units; 0 when abstained
``correct``    bool: not abstained and ``predict == label``
``time``       seconds spent on the example
=============  ===========================================================================

Optional ``base_predict``: the base classifier's prediction on the clean input (``<NA>`` when unknown).
It feeds the per-class diagnostics of :meth:`RadiusReport.per_class` (Mohapatra et al., "Hidden Cost
of Randomized Smoothing", AISTATS 2021); rows files without it are read as before.

Rows of sequential certificates (``Smooth.certify(sequential=True)``) also have ``n_used``, the estimation
samples drawn before sampling stopped (at most ``n_estimate``; fixed-n rows omit it: they all used
``n_estimate``); reports then show samples used (mean, median, max) and :meth:`RadiusReport.plot_samples`
draws their ECDF.

First-order runs (Mohapatra et al. 2020) add ``radius_l2``, ``radius_l1``, ``radius_linf`` and
``radius_channel_<k>`` (l2 radius of perturbations confined to colour channel k).

Certified accuracy at radius r (norm N) is the fraction of ALL rows that are correct, not
abstained and have an N-radius >= r (Cohen et al.'s definition, so abstentions and errors count
against it). The average certified radius (ACR) gives correct non-abstained rows their radius and
every other row 0.

Zeroth-order radii for other norms follow from the l2 radius R by norm inclusion (a perturbation
with ||d||_1 <= R or one confined to a channel with l2 norm <= R has ||d||_2 <= R; one with
||d||_inf <= R / sqrt(D) has ||d||_2 <= R, D = number of input values): l1 -> R, channel_k -> R,
linf -> R / sqrt(D) (needs ``input_shape``).

Files: :meth:`RadiusReport.to_tsv` / :meth:`RadiusReport.from_tsv` read and write

* our format (the columns above, a first comment line ``# certify.RadiusReport {json}`` holding
  the settings, booleans as 0/1, floats written exactly with ``repr``);
* Cohen et al.'s published format ``idx label predict radius correct time`` (locuslab/smoothing),
  where ``predict == -1`` means abstained;
* Mohapatra et al.'s higher-order format (JeetMo/HigherOrderCertification ``certify.py``), columns
  ``idx label count predict radiusR [radiusG radiusB] radius_L1 [radius_LInf] radius_L2
  radius_cohen correct time`` with time as ``H:MM:SS.ffffff``. Mapping: ``radius_cohen`` ->
  ``radius`` (zeroth-order l2), ``radius_L2`` -> ``radius_l2``, ``radius_L1`` -> ``radius_l1``,
  ``radius_LInf`` -> ``radius_linf``, ``count`` -> ``count`` (top-class count out of N, kept as an
  extra column), ``predict == -1`` -> abstained, time -> seconds. The per-channel columns
  ``radiusR/G/B`` are kept as the extra columns ``hoc_radiusR/G/B`` and are NOT mapped to
  ``radius_channel_<k>``: in the published logs they are 0.0 on every row (that code path did not
  compute them), so reading them as channel certificates would report a meaningless 0 curve.
  ``p_lower`` is unknown in both published formats (NaN).

Example::

    >>> from certify.reports import RadiusReport
    >>> rep = RadiusReport([
    ...     dict(idx=0, label=1, predict=1, abstained=False, p_lower=0.9, radius=0.32, correct=True, time=1.0),
    ...     dict(idx=1, label=2, predict=0, abstained=True, p_lower=0.4, radius=0.0, correct=False, time=1.0),
    ... ], sigma=0.25)
    >>> rep.certified_accuracy([0.0, 0.5]).tolist(), rep.acr
    ([0.5, 0.0], 0.16)
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from certify._jsonio import jsonable
from certify.report_rows import (
    _FIRST_ORDER_RE,
    COHEN_COLUMNS,
    ROW_COLUMNS,
    _detect_format,
    _from_cohen,
    _from_hoc,
    _normalise_frame,
    format_tsv_row,
    parse_time,
    tsv_header,
)

logger = logging.getLogger(__name__)

__all__ = [
    "RadiusReport",
    "ROW_COLUMNS",
    "DEFAULT_RADII",
    "row_from_certificate",
    "format_tsv_row",
    "tsv_header",
    "parse_time",
]

_META_MARK = "# certify.RadiusReport "
_NORM_RE = re.compile(r"^(l2|l1|linf|channel_\d+)$")
ORDERS = ("best", "zeroth", "first")
FORMATS = ("auto", "certify", "cohen", "hoc")

#: default radius grids of :meth:`RadiusReport.summary` / :meth:`RadiusReport.to_markdown`, per norm
#: (pixel units; channel norms use the l2 grid)
DEFAULT_RADII: dict[str, tuple[float, ...]] = {
    "l2": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0),
    "l1": (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
    "linf": (0.0, 0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255),
}
_META_FIELDS = ("name", "sigma", "n_select", "n_estimate", "alpha", "seed", "model", "dataset",
                "first_order", "input_shape", "num_classes", "source")


def _norm_key(norm: str) -> str:
    if not isinstance(norm, str):
        raise TypeError(f"norm must be a string such as 'l2', 'l1', 'linf', 'channel_0', got {type(norm).__name__}")
    key = norm.strip().lower()
    if not _NORM_RE.match(key):
        raise ValueError(f"norm must be one of 'l2', 'l1', 'linf', 'channel_<k>', got {norm!r}")
    return key


def row_from_certificate(idx: int, label: int, cert: Any, time_s: float | None = None, *,
                         base_predict: int | None = None) -> dict:
    """One report row from a :class:`certify.smoothing.SmoothingCertificate`.

    ``base_predict`` (optional): the base classifier's clean prediction, written to the ``base_predict`` column.

    ``correct`` is ``not cert.abstained and cert.label == label``. For first-order certificates the
    ``radius_<norm>`` columns come from ``cert.radii`` (0.0 for an abstained certificate whose
    ``radii`` is empty). ``time_s`` defaults to ``cert.time_s``.
    """
    abstained = bool(cert.abstained)
    predict = int(cert.label)
    radius = float(cert.radius)
    if abstained and radius != 0.0:
        raise ValueError(f"an abstained certificate must have radius 0, got {radius}")
    row = {
        "idx": int(idx),
        "label": int(label),
        "predict": predict,
        "abstained": abstained,
        "p_lower": float(cert.p_lower),
        "radius": radius,
        "correct": (not abstained) and predict == int(label),
        "time": float(cert.time_s if time_s is None else time_s),
    }
    if base_predict is not None:
        if isinstance(base_predict, bool) or not isinstance(base_predict, (int, np.integer)) or base_predict < 0:
            raise ValueError(f"base_predict must be a class index >= 0 or None, got {base_predict!r}")
        row["base_predict"] = int(base_predict)
    if bool(getattr(cert, "sequential", False)):  # fixed-n rows keep their columns (n_used would be n_estimate)
        row["n_used"] = int(cert.n_used)
    if bool(getattr(cert, "first_order", False)):
        radii = dict(cert.radii or {})
        if not radii and not abstained:
            raise ValueError("a first-order certificate that did not abstain has no radii")
        if not radii:  # abstained: every radius is 0
            radii = {"l2": 0.0, "l1": 0.0, "linf": 0.0}
            shape = getattr(cert, "input_shape", None)
            if shape is not None and len(shape) == 3:
                radii.update({f"channel_{k}": 0.0 for k in range(int(shape[0]))})
        for key in _sorted_norms(radii):
            row[f"radius_{key}"] = 0.0 if abstained else float(radii[key])
    return row


def _sorted_norms(norms: Iterable[str]) -> list[str]:
    def rank(n: str) -> tuple:
        fixed = {"l2": 0, "l1": 1, "linf": 2}
        if n in fixed:
            return (fixed[n], 0)
        return (3, int(n.split("_")[1]))
    return sorted(norms, key=rank)


@dataclass(frozen=True, eq=False)
class RadiusReport:
    """Per-example certification rows plus the settings that produced them.

    Build it from a list of row dicts or a DataFrame (see the module docstring for columns), or
    with :meth:`from_tsv`. The rows are validated and normalised on construction (abstained rows
    must have radius 0 and cannot be correct; radii are finite and >= 0) and are not meant to be
    modified afterwards: :meth:`to_frame` returns a copy.

    Attributes:
        rows: the rows (a pandas DataFrame sorted as given).
        name: label used in plots and tables (defaults to model and sigma).
        sigma, n_select, n_estimate, alpha, seed: the smoothing settings (None when unknown).
        model, dataset: checkpoint / architecture name and dataset name.
        first_order: whether first-order radius columns are present (inferred when None).
        input_shape: (C, H, W) of one input; needed for zeroth-order l-inf radii.
        num_classes: number of classes of the base classifier.
        source: "certify", "cohen" or "hoc" (where the rows came from).
        extra: any other settings (batch size, versions, ...), echoed by :meth:`to_dict`.
    """

    rows: Any
    name: str | None = None
    sigma: float | None = None
    n_select: int | None = None
    n_estimate: int | None = None
    alpha: float | None = None
    seed: int | None = None
    model: str | None = None
    dataset: str | None = None
    first_order: bool | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    source: str = "certify"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frame = _normalise_frame(self.rows)
        has_first = any(_FIRST_ORDER_RE.match(c) for c in frame.columns)
        if self.first_order is None:
            object.__setattr__(self, "first_order", has_first)
        elif bool(self.first_order) and not has_first and len(frame):
            raise ValueError("first_order=True but the rows have no radius_<norm> columns")
        else:
            object.__setattr__(self, "first_order", bool(self.first_order) and has_first)
        if self.sigma is not None:
            sigma = float(self.sigma)
            if not (sigma > 0 and math.isfinite(sigma)):
                raise ValueError(f"sigma must be a finite number > 0, got {self.sigma!r}")
            object.__setattr__(self, "sigma", sigma)
        if self.alpha is not None and not (0 < float(self.alpha) < 1):
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if self.input_shape is not None:
            shape = tuple(int(s) for s in self.input_shape)
            if not shape or any(s <= 0 for s in shape):
                raise ValueError(f"input_shape must be positive sizes, got {self.input_shape!r}")
            object.__setattr__(self, "input_shape", shape)
        if self.source not in ("certify", "cohen", "hoc"):
            raise ValueError(f"source must be 'certify', 'cohen' or 'hoc', got {self.source!r}")
        object.__setattr__(self, "rows", frame)
        object.__setattr__(self, "extra", dict(self.extra))

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        head = (f"RadiusReport(name={self.label_text()!r}, n={len(self)}, sigma={self.sigma}, "
                f"first_order={self.first_order}")
        if len(self) == 0:
            return head + ")"
        return head + f", clean_accuracy={self.clean_accuracy:.3f}, acr={self.acr:.3f})"

    def metadata(self) -> dict:
        """The settings (everything except the rows) as a JSON-ready dict."""
        meta = {k: jsonable(getattr(self, k)) for k in _META_FIELDS}
        meta["extra"] = jsonable(dict(self.extra))
        return meta

    def to_dict(self) -> dict:
        """Settings plus rows (list of dicts; ``predict`` None when unknown)."""
        rows = []
        for rec in self.rows.to_dict(orient="records"):
            rows.append({k: (None if v is pd.NA else jsonable(v.item() if hasattr(v, "item") else v))
                         for k, v in rec.items()})
        return {**self.metadata(), "rows": rows}

    def to_frame(self) -> pd.DataFrame:
        """A copy of the rows as a DataFrame."""
        return self.rows.copy()

    def label_text(self) -> str:
        """Label for plots and tables: ``name``, else model and sigma, else 'report'."""
        if self.name:
            return str(self.name)
        parts = []
        if self.model:
            parts.append(str(self.model))
        if self.sigma is not None:
            parts.append(f"sigma={self.sigma:g}")
        return " ".join(parts) if parts else "report"

    @property
    def norms(self) -> list[str]:
        """Norms with first-order radius columns (``[]`` for zeroth-order reports)."""
        return _sorted_norms(m.group(1) for c in self.rows.columns if (m := _FIRST_ORDER_RE.match(c)))

    def shown_norms(self) -> list[str]:
        """Norms shown in summaries and plots: :attr:`norms` without a lone ``channel_0`` (a one-channel
        input's channel ball is the l2 ball, so that column repeats ``radius_l2``)."""
        norms = self.norms
        channels = [n for n in norms if n.startswith("channel_")]
        if channels == ["channel_0"]:
            norms = [n for n in norms if n != "channel_0"]
        return norms

    # ------------------------------------------------------------------ statistics
    def radii_for(self, norm: str = "l2", order: str = "best") -> np.ndarray:
        """Per-row certified radius (pixel units) for ``norm``; 0 for abstained rows.

        ``order``: "zeroth" = implied by Cohen's l2 radius (module docstring), "first" = the
        first-order column (ValueError if absent), "best" = first-order column when present, else
        zeroth. First-order radii are never smaller than the zeroth-order ones (a property of the
        certifier), so "best" is the strongest certificate the row carries.
        """
        key = _norm_key(norm)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        column = f"radius_{key}"
        if order == "first" or (order == "best" and self.first_order and column in self.rows.columns):
            if column not in self.rows.columns:
                have = self.norms
                raise ValueError(f"order='first' needs column {column!r}; this report has first-order norms {have}"
                                 if have else "order='first' needs first-order radii; this report has none")
            return self.rows[column].to_numpy(dtype=float)
        if order == "best" and self.first_order and key not in self.norms:
            raise ValueError(f"norm {norm!r} not in this report's first-order norms {self.norms}")
        radius = self.rows["radius"].to_numpy(dtype=float)
        if key == "linf":
            if self.input_shape is None:
                raise ValueError("zeroth-order linf radii need input_shape (R_inf = R_2 / sqrt(D)); "
                                 "pass input_shape=(C, H, W) to the report")
            return radius / math.sqrt(float(np.prod(self.input_shape)))
        if key.startswith("channel_") and self.input_shape is not None and len(self.input_shape) == 3:
            k = int(key.split("_")[1])
            if k >= self.input_shape[0]:
                raise ValueError(f"norm {norm!r} needs channel < {self.input_shape[0]}")
        return radius

    def _certified_mask(self) -> np.ndarray:
        return self.rows["correct"].to_numpy(dtype=bool) & ~self.rows["abstained"].to_numpy(dtype=bool)

    def certified_accuracy(self, radii: float | Sequence[float], norm: str = "l2", order: str = "best"):
        """Fraction of rows that are correct, not abstained and certified at radius >= r.

        Args:
            radii: one radius (returns a float) or a sequence (returns a numpy array), pixel units.
            norm: "l2", "l1", "linf" or "channel_<k>".
            order: "best" (default), "zeroth" or "first"; see :meth:`radii_for`.
        """
        scalar = np.ndim(radii) == 0
        r = np.atleast_1d(np.asarray(radii, dtype=float))
        if r.ndim != 1 or not np.all(np.isfinite(r)) or np.any(r < 0):
            raise ValueError(f"radii must be finite numbers >= 0, got {radii!r}")
        n = len(self.rows)
        if n == 0:
            raise ValueError("certified accuracy of an empty report is undefined")
        values = np.sort(self.radii_for(norm, order)[self._certified_mask()])
        counts = len(values) - np.searchsorted(values, r, side="left")  # number with radius >= r
        acc = counts / n
        return float(acc[0]) if scalar else acc

    def average_certified_radius(self, norm: str = "l2", order: str = "best") -> float:
        """Mean over rows of the radius of correct non-abstained rows (0 for the others)."""
        if len(self.rows) == 0:
            raise ValueError("ACR of an empty report is undefined")
        return float(np.where(self._certified_mask(), self.radii_for(norm, order), 0.0).mean())

    @property
    def acr(self) -> float:
        """Average certified l2 radius (order "best": first-order radii when the report has them)."""
        return self.average_certified_radius("l2", "best")

    @property
    def clean_accuracy(self) -> float:
        """Accuracy of the smoothed classifier's CERTIFY predictions (an abstention counts as wrong)."""
        if len(self.rows) == 0:
            raise ValueError("accuracy of an empty report is undefined")
        return float(self._certified_mask().mean())

    @property
    def abstain_rate(self) -> float:
        """Fraction of rows on which the smoothed classifier abstained."""
        if len(self.rows) == 0:
            raise ValueError("abstain rate of an empty report is undefined")
        return float(self.rows["abstained"].to_numpy(dtype=bool).mean())

    # ------------------------------------------------------------------ per class (hidden cost of smoothing)
    def per_class(self, radii: Sequence[float] | None = None, norm: str = "l2", order: str = "best") -> dict:
        """Per-class diagnostics of the smoothed classifier (Mohapatra et al., AISTATS 2021), JSON-ready.

        For every class ``c`` (``0 .. num_classes - 1`` when known, else every class that occurs as a label
        or prediction), over the rows labelled ``c``: ``n``, ``base_accuracy`` (base classifier's clean
        prediction == label; None without a ``base_predict`` column), ``smoothed_accuracy`` (correct and not
        abstained), ``abstain_rate``, ``certified_accuracy`` at ``radii`` (default :data:`DEFAULT_RADII` of
        ``norm``) and ``acr``, and ``changed_fraction``: the fraction of rows with a known base prediction
        whose smoothed output differs from it (an abstention counts as different). Values of a class with
        no rows are None.

        Also: ``disparity`` = max - min over classes with rows of the smoothed accuracy (``"smoothed"``), the
        base accuracy (``"base"``) and the certified accuracy at each radius (``"certified"``);
        ``changed_fraction`` over all rows; ``vanished_classes``: classes that occur as a label or base
        prediction but that the smoothed classifier predicts (without abstaining) on no row, the footprint
        of a decision region that smoothing removed. With few rows per class these are estimates; the
        certified columns keep the report's 1 - alpha guarantee per row.
        """
        key = _norm_key(norm)
        grid = tuple(float(r) for r in (DEFAULT_RADII.get(key, DEFAULT_RADII["l2"]) if radii is None else radii))
        if len(self.rows) == 0:
            raise ValueError("per-class statistics of an empty report are undefined")
        label = self.rows["label"].to_numpy(dtype=np.int64)
        abstained = self.rows["abstained"].to_numpy(dtype=bool)
        ok = self._certified_mask()
        pred = self.rows["predict"].fillna(-1).to_numpy(dtype=np.int64)
        has_base = "base_predict" in self.rows.columns
        base = self.rows["base_predict"].fillna(-1).to_numpy(dtype=np.int64) if has_base else np.full(len(label), -1)
        known = base >= 0
        r = np.where(ok, self.radii_for(key, order), 0.0)
        smoothed_classes = set(pred[~abstained & (pred >= 0)].tolist())
        occurring = set(label.tolist()) | set(base[known].tolist())
        declared = set(range(int(self.num_classes))) if self.num_classes else set()
        classes = sorted(occurring | smoothed_classes | declared)
        per = []
        for c in classes:
            m = label == c
            n = int(m.sum())
            mk = m & known
            entry: dict[str, Any] = {"class": int(c), "n": n}
            if n == 0:
                entry.update(base_accuracy=None, smoothed_accuracy=None, abstain_rate=None,
                             certified_accuracy=[None] * len(grid), acr=None, changed_fraction=None)
            else:
                entry.update(
                    base_accuracy=float((base[mk] == c).mean()) if mk.any() else None,
                    smoothed_accuracy=float(ok[m].mean()), abstain_rate=float(abstained[m].mean()),
                    certified_accuracy=[float((ok[m] & (r[m] >= g)).mean()) for g in grid],
                    acr=float(r[m].mean()),
                    changed_fraction=float((abstained[mk] | (pred[mk] != base[mk])).mean()) if mk.any() else None)
            per.append(entry)

        def spread(values: list) -> float | None:
            vals = [v for v in values if v is not None]
            return float(max(vals) - min(vals)) if vals else None

        live = [e for e in per if e["n"] > 0]
        changed = float((abstained[known] | (pred[known] != base[known])).mean()) if known.any() else None
        return {
            "norm": key, "order": order, "radii": list(grid), "has_base_predict": bool(has_base and known.any()),
            "classes": per,
            "disparity": {"smoothed": spread([e["smoothed_accuracy"] for e in live]),
                          "base": spread([e["base_accuracy"] for e in live]),
                          "certified": [spread([e["certified_accuracy"][i] for e in live]) for i in range(len(grid))]},
            "changed_fraction": changed,
            "vanished_classes": sorted(int(c) for c in occurring - smoothed_classes),
        }

    def per_class_markdown(self, radii: Sequence[float] | None = None, norm: str = "l2") -> str:
        """The :meth:`per_class` table as Markdown (a section of :meth:`to_markdown`)."""
        pc = self.per_class(radii, norm)

        def f(v: Any, fmt: str = ".3f") -> str:
            return "-" if v is None else format(v, fmt)

        grid = pc["radii"]
        lines = ["## Per class (hidden cost of smoothing)", "",
                 "| class | n | base acc | smoothed acc | abstain | "
                 + " | ".join(f"cert r={g:g}" for g in grid) + " | ACR | differs from base |",
                 "|---|" + "---|" * (len(grid) + 6)]
        for e in pc["classes"]:
            lines.append(f"| {e['class']} | {e['n']} | {f(e['base_accuracy'])} | {f(e['smoothed_accuracy'])} | "
                         f"{f(e['abstain_rate'])} | " + " | ".join(f(v) for v in e["certified_accuracy"])
                         + f" | {f(e['acr'], '.4f')} | {f(e['changed_fraction'])} |")
        d = pc["disparity"]
        lines += ["", f"- disparity (max - min class accuracy): smoothed {f(d['smoothed'])}, base {f(d['base'])}, "
                      f"certified at r={grid[0]:g} {f(d['certified'][0])}",
                  f"- fraction of examples whose smoothed prediction differs from the base prediction "
                  f"(abstentions included): {f(pc['changed_fraction'])}"]
        if pc["vanished_classes"]:
            lines.append(f"- **vanished classes** (labels or base predictions never predicted by the smoothed "
                         f"classifier): {pc['vanished_classes']}")
        return "\n".join(lines) + "\n"

    def plot_per_class(self, path: str | os.PathLike, *, radius: float | None = None, norm: str = "l2",
                       dpi: int = 120) -> Path:
        """Bar chart per class: base accuracy, smoothed accuracy and certified accuracy at ``radius``
        (default: the second radius of the default grid), with the disparity in the title."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        key = _norm_key(norm)
        grid = DEFAULT_RADII.get(key, DEFAULT_RADII["l2"])
        rad = float(grid[1] if radius is None else radius)
        pc = self.per_class((rad,), key)
        classes = [e for e in pc["classes"] if e["n"] > 0]
        x = np.arange(len(classes))
        fig = Figure(figsize=(max(5.0, 0.6 * len(classes) + 2), 3.6))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        series = [("base", [e["base_accuracy"] for e in classes]),
                  ("smoothed", [e["smoothed_accuracy"] for e in classes]),
                  (f"certified r={rad:g}", [e["certified_accuracy"][0] for e in classes])]
        for k, (lab, vals) in enumerate(series):
            ax.bar(x + (k - 1) * 0.27, [np.nan if v is None else v for v in vals], width=0.27, label=lab)
        ax.set_xticks(x)
        ax.set_xticklabels([str(e["class"]) + (" (vanished)" if e["class"] in pc["vanished_classes"] else "")
                            for e in classes], fontsize=7, rotation=30)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy")
        d = pc["disparity"]["smoothed"]
        ax.set_title(f"{self.label_text()}: per-class accuracy (smoothed disparity {'-' if d is None else f'{d:.3f}'})",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        return path

    def _curve_norms(self) -> list[tuple[str, list[str]]]:
        """(norm, orders) pairs that summaries and plots show."""
        if not self.first_order:
            return [("l2", ["zeroth"])]
        out = []
        for norm in self.shown_norms():
            orders = ["zeroth", "first"]
            if norm == "linf" and self.input_shape is None:
                orders = ["first"]
            out.append((norm, orders))
        return out

    def summary(self, radii: Mapping[str, Sequence[float]] | None = None) -> dict:
        """JSON-ready summary: settings, clean accuracy, abstain rate, ACR and certified accuracy tables.

        ``radii`` overrides the grid per norm (default :data:`DEFAULT_RADII`; channel norms use l2's).
        ``norms[norm][order]`` holds ``certified_accuracy`` (list aligned with ``norms[norm]["radii"]``)
        and ``acr``.
        """
        grids = dict(DEFAULT_RADII)
        if radii:
            grids.update({_norm_key(k): tuple(float(x) for x in v) for k, v in radii.items()})
        norms: dict[str, Any] = {}
        for norm, orders in self._curve_norms():
            grid = grids.get(norm, grids["l2"])
            entry: dict[str, Any] = {"radii": [float(x) for x in grid]}
            for order in orders:
                entry[order] = {
                    "certified_accuracy": [float(v) for v in self.certified_accuracy(grid, norm, order)],
                    "acr": self.average_certified_radius(norm, order),
                }
            norms[norm] = entry
        times = self.rows["time"].to_numpy(dtype=float)
        return {
            **self.metadata(),
            "n_examples": len(self.rows),
            "clean_accuracy": self.clean_accuracy,
            "abstain_rate": self.abstain_rate,
            "acr": self.acr,
            "mean_time_s": float(np.nanmean(times)) if len(times) else float("nan"),
            **({"samples_used": self.samples_used()} if "n_used" in self.rows.columns else {}),
            "norms": norms,
            "per_class": self.per_class(grids["l2"], "l2") if len(self.rows) else None,
        }

    def samples_used(self) -> dict:
        """Estimation samples per example (``n_used`` column): mean, median, max, min and total."""
        if "n_used" not in self.rows.columns:
            raise ValueError("the rows have no n_used column (written by certify since sequential certificates)")
        v = self.rows["n_used"].to_numpy(dtype=float)
        if not len(v):
            return {"mean": float("nan"), "median": float("nan"), "max": 0, "min": 0, "total": 0}
        return {"mean": float(v.mean()), "median": float(np.median(v)), "max": int(v.max()), "min": int(v.min()),
                "total": int(v.sum())}

    # ------------------------------------------------------------------ text output
    def to_markdown(self, radii: Mapping[str, Sequence[float]] | None = None) -> str:
        """A Markdown report: settings, headline numbers and certified accuracy tables per norm."""
        s = self.summary(radii)
        lines = [f"# Certified radii: {self.label_text()}", ""]
        settings = [(k, s[k]) for k in ("model", "dataset", "sigma", "n_select", "n_estimate", "alpha", "seed",
                                         "first_order", "input_shape", "source") if s.get(k) is not None]
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in settings]
        lines += ["", f"- examples: {s['n_examples']}",
                  f"- clean accuracy of the smoothed classifier: {s['clean_accuracy']:.3f}",
                  f"- abstain rate: {s['abstain_rate']:.3f}",
                  f"- average certified l2 radius (ACR): {s['acr']:.4f}",
                  f"- mean time per example: {s['mean_time_s']:.2f} s"]
        if "samples_used" in s:
            u = s["samples_used"]
            lines.append(f"- estimation samples per example: mean {u['mean']:,.0f}, median {u['median']:,.0f}, "
                         f"max {u['max']:,}" + (f" (n_estimate {s['n_estimate']:,})" if s.get("n_estimate") else ""))
        lines.append("")
        lines.append("Certified accuracy = fraction of all examples that are correct, not abstained and "
                     "certified at radius >= r (pixel units, inputs in [0, 1]).")
        if self.first_order:
            lines.append("Zeroth order = what the certificate's Cohen l2 radius (same p_lower) implies for the norm "
                         "(l1: R, channel: R, l-inf: R / sqrt(D)); first order = the first-order radius. Both hold "
                         "together with probability >= 1 - alpha.")
        for norm, entry in s["norms"].items():
            grid = entry["radii"]
            fmt = (lambda r: f"{r * 255:g}/255") if norm == "linf" else (lambda r: f"{r:g}")
            lines += ["", f"## {norm}", "",
                      "| order | " + " | ".join(f"r={fmt(r)}" for r in grid) + " | ACR |",
                      "|---|" + "---|" * (len(grid) + 1)]
            for order in ("zeroth", "first"):
                if order in entry:
                    accs = " | ".join(f"{a:.3f}" for a in entry[order]["certified_accuracy"])
                    lines.append(f"| {order} | {accs} | {entry[order]['acr']:.4f} |")
        if s["n_examples"]:
            lines += ["", self.per_class_markdown(s["norms"].get("l2", {}).get("radii")).rstrip("\n")]
        return "\n".join(lines) + "\n"

    def to_tsv(self, path: str | os.PathLike, *, format: str = "certify") -> Path:
        """Write the rows. ``format="certify"`` (ours, with a settings comment line, exact floats) or
        ``"cohen"`` (``idx label predict radius correct time``, predict -1 when abstained)."""
        if format not in ("certify", "cohen"):
            raise ValueError(f"format must be 'certify' or 'cohen', got {format!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        if format == "certify":
            buf.write(_META_MARK + json.dumps(self.metadata(), sort_keys=True) + "\n")
            columns = list(self.rows.columns)
            buf.write(tsv_header(columns))
            for rec in self.rows.to_dict(orient="records"):
                buf.write(format_tsv_row(rec, columns))
        else:
            buf.write(tsv_header(COHEN_COLUMNS))
            for rec in self.rows.to_dict(orient="records"):
                out = dict(rec)
                if rec["abstained"]:
                    out["predict"] = -1
                elif rec["predict"] is pd.NA:
                    raise ValueError(f"row idx={rec['idx']} has no prediction; cannot write Cohen's format")
                buf.write(format_tsv_row(out, COHEN_COLUMNS))
        path.write_text(buf.getvalue())
        return path

    @classmethod
    def from_tsv(cls, path: str | os.PathLike, *, format: str = "auto", **metadata: Any) -> "RadiusReport":
        """Read rows written by :meth:`to_tsv`, a run's ``rows.tsv``, or a published log.

        ``format``: "auto" (from the header), "certify", "cohen" or "hoc" (see the module
        docstring for the column mapping). ``metadata`` (sigma=..., input_shape=..., name=...)
        overrides the settings stored in the file. A truncated last line (a run killed while
        writing) is ignored with a warning.
        """
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such rows file: {path}")
        text = path.read_text()
        meta: dict[str, Any] = {}
        lines = text.splitlines(keepends=True)
        while lines and lines[0].startswith("#"):
            first = lines.pop(0)
            if first.startswith(_META_MARK):
                meta = json.loads(first[len(_META_MARK):])
        if not lines:
            raise ValueError(f"{path}: no header line")
        if not lines[-1].endswith("\n") and len(lines) > 1:
            logger.warning("%s: ignoring a truncated last line %r", path, lines[-1][:60])
            lines = lines[:-1]
        header = lines[0].rstrip("\n").split("\t")
        fmt = format if format != "auto" else _detect_format(header, path)
        frame = pd.read_csv(io.StringIO("".join(lines)), sep="\t", dtype=str, keep_default_na=False)
        if fmt == "certify":
            missing = [c for c in ROW_COLUMNS if c not in frame.columns]
            if missing:
                raise ValueError(f"{path}: not a certify rows file, missing columns {missing}")
            frame = frame.replace({"NA": None})
        elif fmt == "cohen":
            frame = _from_cohen(frame, path)
        else:
            frame = _from_hoc(frame, path)
        settings = {k: meta[k] for k in _META_FIELDS if k in meta and meta[k] is not None}
        if "extra" in meta:
            settings["extra"] = meta["extra"]
        settings["source"] = settings.get("source", "certify") if fmt == "certify" else fmt
        if "name" not in settings and fmt != "certify":
            settings["name"] = path.stem
        settings.update(metadata)
        return cls(frame, **settings)

    # ------------------------------------------------------------------ plots
    def plot(self, path: str | os.PathLike, others: Sequence["RadiusReport"] = (),
             labels: Sequence[str] | None = None, *, title: str | None = None, dpi: int = 120) -> Path:
        """Certified accuracy vs radius as a PNG.

        Zeroth-order reports: one axis, one curve per report (``self`` then ``others``), e.g. to
        compare noise levels. When any report is first-order: one panel per norm, each report drawn
        with its zeroth-order curve (dashed) and first-order curve (solid).
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        reports = [self, *others]
        for r in reports:
            if not isinstance(r, RadiusReport):
                raise TypeError(f"others must be RadiusReport objects, got {type(r).__name__}")
        if labels is None:
            labels = [r.label_text() for r in reports]
        labels = list(labels)
        if len(labels) != len(reports):
            raise ValueError(f"labels must have one entry per report ({len(reports)}), got {len(labels)}")
        first = [r for r in reports if r.first_order]
        if first:
            panel_norms = _sorted_norms({n for r in first for n in r.shown_norms()})
        else:
            panel_norms = ["l2"]
        ncols = min(len(panel_norms), 3)
        nrows = math.ceil(len(panel_norms) / ncols)
        fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows))
        FigureCanvasAgg(fig)
        colours = [f"C{i % 10}" for i in range(len(reports))]
        for p, norm in enumerate(panel_norms):
            ax = fig.add_subplot(nrows, ncols, p + 1)
            curves = []
            for rep, lab, col in zip(reports, labels, colours):
                for order in ("zeroth", "first"):
                    if order == "first" and norm not in rep.norms:
                        continue
                    if order == "zeroth" and norm == "linf" and rep.input_shape is None:
                        continue
                    style = "--" if (order == "zeroth" and first) else "-"
                    name = f"{lab} ({order} order)" if first else lab
                    curves.append((rep.radii_for(norm, order)[rep._certified_mask()], len(rep), name, style, col))
            top = max([c[0].max() if len(c[0]) else 0.0 for c in curves] + [1e-12])
            grid = np.linspace(0.0, top * 1.05, 400)
            for values, n, name, style, col in curves:
                v = np.sort(values)
                acc = (len(v) - np.searchsorted(v, grid, side="left")) / n
                ax.plot(grid, acc, style, color=col, label=name, lw=1.6)
            ax.set_xlabel(f"{norm} radius (pixel units)")
            ax.set_ylabel("certified accuracy")
            ax.set_ylim(0.0, 1.02)
            ax.set_xlim(0.0, grid[-1])
            ax.grid(alpha=0.3)
            ax.set_title(norm)
            ax.legend(fontsize=7, loc="lower left")
        if title or len(panel_norms) > 1:
            fig.suptitle(title or f"Certified accuracy: {self.label_text()}")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        return path


    def plot_samples(self, path: str | os.PathLike, *, dpi: int = 120) -> Path:
        """ECDF of the estimation samples used per example (``n_used``, log x axis) as a PNG."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        used = self.samples_used()
        v = np.sort(self.rows["n_used"].to_numpy(dtype=float))
        fig = Figure(figsize=(4.6, 3.6))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.step(v, np.arange(1, len(v) + 1) / max(len(v), 1), where="post", lw=1.6)
        ax.set_xscale("log")
        ax.set_xlabel("estimation samples used per example")
        ax.set_ylabel("fraction of examples")
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{self.label_text()}: mean {used['mean']:,.0f}, median {used['median']:,.0f}", fontsize=9)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        return path
