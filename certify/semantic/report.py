"""Rows and summaries of semantic verification runs: :data:`ROW_COLUMNS`, :func:`rows_from_certificate`,
:class:`SemanticReport` (certified / attack-free accuracy vs range, tightness, Markdown, TSV, plots)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from certify._jsonio import jsonable
from certify.rundir import format_value

from .certificate import SemanticCertificate

__all__ = ["ROW_COLUMNS", "rows_from_certificate", "SemanticReport", "PREAMBLE_TAG"]

# first line of a rows file: this tag, then the run's settings as JSON
PREAMBLE_TAG = "# certify.SemanticReport"


ROW_COLUMNS = ("idx", "label", "predict", "correct", "perturbation", "param", "units", "method",
               "range_lo", "range_hi", "certified_lo", "certified_hi", "attack_lo", "attack_hi",
               "tightness", "n_splits", "time")


def rows_from_certificate(idx: int, cert: SemanticCertificate) -> list[dict[str, Any]]:
    """One row per parameter (two for a two-parameter family); missing attack sides are NaN."""
    rows = []
    for name, req, cer, att in zip(cert.param_names, cert.requested_ranges(), cert.certified_ranges(),
                                   cert.attack_ranges()):
        rows.append({
            "idx": int(idx), "label": cert.label, "predict": cert.predicted, "correct": cert.clean_correct,
            "perturbation": cert.perturbation, "param": name, "units": cert.units.replace("\t", " "),
            "method": cert.method if cert.baseline is None else f"{cert.method}+{cert.baseline}",
            "range_lo": float(req[0]), "range_hi": float(req[1]),
            "certified_lo": float(cer[0]), "certified_hi": float(cer[1]),
            "attack_lo": float("nan") if att[0] is None else float(att[0]),
            "attack_hi": float("nan") if att[1] is None else float(att[1]),
            "tightness": float("nan") if cert.tightness is None else float(cert.tightness),
            "n_splits": int(cert.n_splits), "time": float(cert.time_s),
        })
    return rows


@dataclasses.dataclass(frozen=True, eq=False)
class SemanticReport:
    """Rows of a semantic verification run (one per example, family and parameter) + settings.

    Columns: :data:`ROW_COLUMNS`. ``certified_lo/hi``: the certified range; ``attack_lo/hi``: the
    nearest flips found (NaN where none was found: the attack-free range then extends to
    ``range_lo/hi``); ``correct``: clean prediction == label (incorrect rows certify nothing).

    Certified accuracy at range r = fraction of ALL rows of a family/parameter that are correct and
    whose certified range contains ``[max(-r, range_lo), min(r, range_hi)]``.
    """

    rows: tuple
    settings: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        rows = tuple(dict(r) for r in self.rows)
        for i, r in enumerate(rows):
            missing = [c for c in ROW_COLUMNS if c not in r]
            if missing:
                raise ValueError(f"row {i} is missing columns {missing}")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "settings", dict(self.settings))

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict:
        return {"rows": jsonable(list(self.rows)), "settings": jsonable(self.settings)}

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame(list(self.rows), columns=list(ROW_COLUMNS))
        return frame

    def families(self) -> list[tuple[str, str]]:
        """(perturbation, param) pairs in order of appearance."""
        seen: dict[tuple[str, str], None] = {}
        for r in self.rows:
            seen[(str(r["perturbation"]), str(r["param"]))] = None
        return list(seen)

    def _select(self, perturbation: str, param: str | None) -> list[dict]:
        fams = [f for f in self.families() if f[0] == perturbation and (param is None or f[1] == param)]
        if not fams:
            raise ValueError(f"no rows for perturbation {perturbation!r}"
                             + (f" / param {param!r}" if param else "") + f"; have {self.families()}")
        if param is None and len(fams) > 1:
            raise ValueError(f"perturbation {perturbation!r} has parameters {[f[1] for f in fams]}; pass param=")
        p = fams[0][1]
        return [r for r in self.rows if r["perturbation"] == perturbation and r["param"] == p]

    @staticmethod
    def _covers(lo: float, hi: float, r: float, range_lo: float, range_hi: float) -> bool:
        need_lo, need_hi = max(-r, range_lo), min(r, range_hi)
        return lo <= need_lo + 1e-12 and hi >= need_hi - 1e-12

    def certified_accuracy(self, perturbation: str, ranges: float | Sequence[float], *,
                           param: str | None = None) -> np.ndarray:
        """Fraction of examples correct and certified on [-r, r] (clipped to the requested range)."""
        rows = self._select(perturbation, param)
        rs = np.atleast_1d(np.asarray(ranges, dtype=float))
        if (rs < 0).any() or not np.isfinite(rs).all():
            raise ValueError(f"ranges must be finite and >= 0; got {ranges!r}")
        out = [np.mean([bool(r["correct"]) and self._covers(float(r["certified_lo"]), float(r["certified_hi"]), t,
                                                               float(r["range_lo"]), float(r["range_hi"]))
                        for r in rows]) for t in rs]
        return np.asarray(out, dtype=float)

    def attack_accuracy(self, perturbation: str, ranges: float | Sequence[float], *,
                        param: str | None = None) -> np.ndarray:
        """Fraction correct with no flip found on [-r, r] (an upper bound on robust accuracy)."""
        rows = self._select(perturbation, param)
        rs = np.atleast_1d(np.asarray(ranges, dtype=float))
        out = []
        for t in rs:
            ok = []
            for r in rows:
                a_lo = float(r["attack_lo"]) if not _isnan(r["attack_lo"]) else -math.inf
                a_hi = float(r["attack_hi"]) if not _isnan(r["attack_hi"]) else math.inf
                need_lo, need_hi = max(-t, float(r["range_lo"])), min(t, float(r["range_hi"]))
                ok.append(bool(r["correct"]) and a_lo < need_lo and a_hi > need_hi)
            out.append(np.mean(ok))
        return np.asarray(out, dtype=float)

    def summary(self, levels: Mapping[str, Sequence[float]] | None = None) -> dict:
        """Per family/parameter: n, clean accuracy, mean certified range and width, mean attack
        range (sides with a flip), mean tightness (over rows where defined), certified and attack
        accuracy at ``levels`` (default: 25/50/75/100% of the largest requested magnitude), time."""
        out = {}
        for pert, param in self.families():
            rows = [r for r in self.rows if r["perturbation"] == pert and r["param"] == param]
            key = pert if sum(1 for f in self.families() if f[0] == pert) == 1 else f"{pert}/{param}"
            mag = max(max(abs(float(r["range_lo"])), abs(float(r["range_hi"]))) for r in rows)
            lv = list((levels or {}).get(key, (levels or {}).get(pert, [mag * f for f in (0.25, 0.5, 0.75, 1.0)])))
            correct = [r for r in rows if r["correct"]]
            tight = [float(r["tightness"]) for r in correct if not _isnan(r["tightness"])]
            widths = [float(r["certified_hi"]) - float(r["certified_lo"]) for r in correct]
            out[key] = {
                "perturbation": pert, "param": param, "units": rows[0]["units"], "method": rows[0]["method"],
                "n": len(rows), "clean_accuracy": float(np.mean([bool(r["correct"]) for r in rows])),
                "mean_certified_lo": _mean([float(r["certified_lo"]) for r in correct]),
                "mean_certified_hi": _mean([float(r["certified_hi"]) for r in correct]),
                "mean_certified_width": _mean(widths),
                "mean_attack_lo": _mean([float(r["attack_lo"]) for r in correct if not _isnan(r["attack_lo"])]),
                "mean_attack_hi": _mean([float(r["attack_hi"]) for r in correct if not _isnan(r["attack_hi"])]),
                "flip_found_fraction": _mean([float(not (_isnan(r["attack_lo"]) and _isnan(r["attack_hi"])))
                                              for r in correct]),
                "mean_tightness": _mean(tight), "n_tightness": len(tight),
                "levels": [float(v) for v in lv],
                "certified_accuracy": self.certified_accuracy(pert, lv, param=param).tolist() if lv else [],
                "attack_accuracy": self.attack_accuracy(pert, lv, param=param).tolist() if lv else [],
                "mean_time_s": _mean([float(r["time"]) for r in rows]),
            }
        return out

    def to_markdown(self, levels: Mapping[str, Sequence[float]] | None = None) -> str:
        s = self.summary(levels)
        lines = ["| family | units | n | clean acc | mean certified | mean attack | tightness | s/example |",
                 "|---|---|---|---|---|---|---|---|"]
        for key, v in s.items():
            lines.append(f"| {key} | {v['units']} | {v['n']} | {v['clean_accuracy']:.3f} | "
                         f"[{v['mean_certified_lo']:.4g}, {v['mean_certified_hi']:.4g}] | "
                         f"[{v['mean_attack_lo']:.4g}, {v['mean_attack_hi']:.4g}] | "
                         f"{v['mean_tightness']:.3f} ({v['n_tightness']}) | {v['mean_time_s']:.2f} |")
        lines += ["", "Certified accuracy (attack-free accuracy) at each range:", ""]
        for key, v in s.items():
            cells = ", ".join(f"{lv:.4g}: {c:.3f} ({a:.3f})" for lv, c, a in
                              zip(v["levels"], v["certified_accuracy"], v["attack_accuracy"]))
            lines.append(f"- {key}: {cells}")
        return "\n".join(lines) + "\n"

    def to_tsv(self, path: str | os.PathLike) -> Path:
        """Write ``# certify.SemanticReport {settings json}`` then the rows (floats exact)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write("# certify.SemanticReport " + json.dumps(jsonable(self.settings), sort_keys=True) + "\n")
            f.write("\t".join(ROW_COLUMNS) + "\n")
            for r in self.rows:
                f.write(_format_row(r))
        return path

    @classmethod
    def from_tsv(cls, path: str | os.PathLike) -> "SemanticReport":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no semantic rows file at {path}")
        settings: dict = {}
        rows = []
        with open(path) as f:
            lines = f.read().splitlines()
        i = 0
        if lines and lines[0].startswith("#"):
            head = lines[0][1:].strip()
            if head.startswith("certify.SemanticReport"):
                settings = json.loads(head[len("certify.SemanticReport"):].strip() or "{}")
            i = 1
        if i >= len(lines):
            return cls((), settings)
        header = lines[i].split("\t")
        missing = [c for c in ROW_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path} is not a semantic rows file (missing columns {missing})")
        for n, line in enumerate(lines[i + 1:], start=i + 2):
            if not line.strip():
                continue
            vals = line.split("\t")
            if len(vals) != len(header):
                raise ValueError(f"{path}:{n}: expected {len(header)} fields, got {len(vals)}")
            rows.append(_parse_row(dict(zip(header, vals))))
        return cls(tuple(rows), settings)

    def plot(self, path: str | os.PathLike, *, points: int = 101) -> Path:
        """Certified accuracy (solid) and attack-free accuracy (dashed) vs parameter range, one panel per
        family/parameter (x in the family's units)."""
        from .plots import plot_accuracy

        return plot_accuracy(self, path, points=points)

    def plot_histogram(self, path: str | os.PathLike, *, bins: int = 20) -> Path:
        """Histogram of the certified ranges (lower and upper ends) of the correctly classified examples, one
        panel per family/parameter."""
        from .plots import plot_histogram

        return plot_histogram(self, path, bins=bins)

    def picture_grid(self, path: str | os.PathLike, dataset: Any, perturbations: Sequence[Any]) -> Path:
        """One image per family under its certified extremes: [apply(lo), original, apply(hi)] (and the nearest
        flips found, when any), for the first correct example of each family."""
        from .plots import picture_grid

        return picture_grid(self, path, dataset, perturbations)


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _format_row(r: Mapping[str, Any]) -> str:
    return "\t".join(format_value(r[c]) for c in ROW_COLUMNS) + "\n"


_INT_COLS = ("idx", "label", "predict", "n_splits")
_FLOAT_COLS = ("range_lo", "range_hi", "certified_lo", "certified_hi", "attack_lo", "attack_hi", "tightness", "time")


def _parse_row(raw: Mapping[str, str]) -> dict[str, Any]:
    r: dict[str, Any] = dict(raw)
    for c in _INT_COLS:
        r[c] = int(raw[c])
    for c in _FLOAT_COLS:
        r[c] = float(raw[c])
    r["correct"] = raw["correct"].strip() in ("1", "True", "true")
    return r
