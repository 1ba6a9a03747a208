"""The result of a SynBench evaluation (:class:`SynBenchResult`), with JSON round trip and plot."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from certify.synbench.curves import (
    SCORE_THRESHOLDS,
    ReferenceCurve,
    expected_bound_curve,
    reference_curve,
    synbench_score,
)

_FORMAT = "certify.synbench/1"


@dataclass(frozen=True)
class SynBenchResult:
    """Per-separation accuracy / normalised margin of the eps-robust Bayes probes of one encoder.

    ``accuracy[i][k]`` and ``margin[i][k]`` belong to ``eps[i]`` and ``separations[k]``; ``gamma`` is
    the ridge parameter of each robust classifier, ``mu_norm[k]`` the feature-space ``||mu~||`` (on the
    retained eigenspace), ``rank[k]`` the number of covariance directions kept. The remaining fields
    echo the inputs. A margin is 0.0 where no test point was classified correctly (then the accuracy
    is 0 and the point contributes nothing to ``E``).
    """

    name: str
    input_shape: tuple[int, ...]
    layer: str | None
    eps: tuple[float, ...]
    separations: tuple[float, ...]
    a_grid: tuple[float, ...]
    n_train: int
    n_test: int
    seed: int
    batch_size: int
    pixel_mapping: dict
    eig_tol: float
    shrinkage: float
    flatten: bool
    feature_dim: int
    accuracy: tuple[tuple[float, ...], ...]
    margin: tuple[tuple[float, ...], ...]
    gamma: tuple[tuple[float, ...], ...]
    mu_norm: tuple[float, ...]
    rank: tuple[int, ...]
    time_s: float
    reference: ReferenceCurve = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "reference", reference_curve(self.separations, self.a_grid))

    # -- curves and scores ---------------------------------------------------------------------
    def _eps_index(self, eps: float) -> int:
        for i, e in enumerate(self.eps):
            if abs(e - float(eps)) <= 1e-12:
                return i
        raise ValueError(f"eps={eps!r} was not evaluated; available: {list(self.eps)}")

    def expected_bound(self, eps: float | None = 0.0) -> np.ndarray:
        """``E(a_t)`` on ``a_grid`` for the representation at ``eps`` (``eps=None``: the raw-data curve)."""
        if eps is None:
            return np.asarray(self.reference.expected_bound)
        i = self._eps_index(eps)
        return expected_bound_curve(self.accuracy[i], self.margin[i], self.a_grid)

    def score(self, eps: float = 0.0, a_t: float = 0.7) -> float:
        """SynBench score ``sum_{a >= a_t} E_rep(a) / sum_{a >= a_t} E_raw(a)`` at this ``eps``."""
        return synbench_score(self.expected_bound(eps), self.reference.expected_bound, self.a_grid, a_t)

    def valid_thresholds(self, thresholds: Sequence[float] = SCORE_THRESHOLDS) -> tuple[float, ...]:
        """The thresholds at which the score is defined: inside ``a_grid`` with a non-zero raw curve above."""
        raw = np.asarray(self.reference.expected_bound)
        grid = np.asarray(self.a_grid)
        return tuple(float(a) for a in thresholds
                     if grid[0] - 1e-12 <= a <= grid[-1] + 1e-12 and raw[grid >= a - 1e-12].sum() > 0)

    def scores(self, thresholds: Sequence[float] | None = None) -> dict[float, dict[float, float]]:
        """``{eps: {a_t: score}}`` for every evaluated eps; default thresholds: the official ones
        (:data:`SCORE_THRESHOLDS`) that lie inside this result's grid."""
        ths = self.valid_thresholds() if thresholds is None else tuple(float(a) for a in thresholds)
        return {e: {a: self.score(e, a) for a in ths} for e in self.eps}

    def _default_a_t(self) -> float:
        valid = self.valid_thresholds((0.7,)) or self.valid_thresholds(self.a_grid)
        if not valid:
            raise ValueError("no threshold of a_grid has a non-zero raw-data curve above it")
        return valid[0]

    def best_eps(self, a_t: float = 0.7) -> float:
        """The evaluated eps with the highest score at ``a_t`` (SynBench's recommendation for robust probing;
        ties go to the smaller eps)."""
        vals = [self.score(e, a_t) for e in self.eps]
        best = max(vals)
        return min(e for e, v in zip(self.eps, vals) if v == best)

    # -- presentation --------------------------------------------------------------------------
    def summary(self, thresholds: Sequence[float] | None = None) -> str:
        ths = self.valid_thresholds() if thresholds is None else tuple(float(a) for a in thresholds)
        a_rec = self._default_a_t()
        lines = [f"SynBench: {self.name}  (input {self.input_shape}, layer {self.layer or 'output'}, "
                 f"{self.feature_dim} features)",
                 f"  {len(self.separations)} separations in [{self.separations[0]:g}, {self.separations[-1]:g}], "
                 f"n_train={self.n_train}, n_test={self.n_test}, seed={self.seed}, "
                 f"pixel mapping {self.pixel_mapping['name']}, {self.time_s:.1f} s",
                 "  score(eps, a_T) = area under E_rep / area under E_raw for a_t >= a_T:",
                 "  " + "eps".rjust(6) + "".join(f"{a:>7.2f}" for a in ths)]
        for e in self.eps:
            lines.append("  " + f"{e:6.3g}" + "".join(f"{self.score(e, a):7.3f}" for a in ths))
        lines.append(f"  recommended eps (best score at a_T={a_rec:g}): {self.best_eps(a_rec):g}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = {"format": _FORMAT}
        for f in fields(self):
            if f.name == "reference":
                continue
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = json.loads(json.dumps(v))  # nested tuples -> lists
            d[f.name] = v
        d["scores"] = {str(e): {str(a): s for a, s in row.items()} for e, row in self.scores().items()}
        d["raw"] = self.reference.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SynBenchResult":
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a SynBench result (format {d.get('format')!r}, expected {_FORMAT!r})")
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "reference":
                continue
            if f.name not in d:
                raise ValueError(f"SynBench result is missing the field {f.name!r}")
            v = d[f.name]
            if f.name in ("accuracy", "margin", "gamma"):
                v = tuple(tuple(float(x) for x in row) for row in v)
            elif f.name in ("input_shape", "rank"):
                v = tuple(int(x) for x in v)
            elif f.name in ("eps", "separations", "a_grid", "mu_norm"):
                v = tuple(float(x) for x in v)
            kw[f.name] = v
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (``inf`` gammas of trivial classifiers are written as ``Infinity``)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> "SynBenchResult":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, path: str | Path) -> Path:
        """PNG: left, ``E(a_t)`` of the raw data and of the representation per eps; right, accuracy vs s."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 4.2), dpi=110)
        ax, ax2 = fig.subplots(1, 2)
        grid = np.asarray(self.a_grid)
        ax.plot(grid, self.reference.expected_bound, color="crimson", lw=2, label="raw data (Bayes)")
        ax2.plot(self.separations, self.reference.accuracy, color="crimson", lw=2, label="raw data: Phi(s)")
        for i, e in enumerate(self.eps):
            a_rec = self._default_a_t()
            ax.plot(grid, self.expected_bound(e),
                    label=f"representation, eps={e:g} (score@{a_rec:g} {self.score(e, a_rec):.3f})")
            ax2.plot(self.separations, self.accuracy[i], ".-", label=f"representation, eps={e:g}")
        ax.set_xlabel("threshold accuracy $a_t$")
        ax.set_ylabel("expected normalised margin $E(a_t)$")
        ax.set_title(f"SynBench: {self.name}")
        ax.grid(True, ls="-.", alpha=0.5)
        ax.legend(fontsize=8)
        ax2.set_xlabel("separation s = ||mu||")
        ax2.set_ylabel("test accuracy")
        ax2.grid(True, ls="-.", alpha=0.5)
        ax2.legend(fontsize=8)
        fig.tight_layout()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, format="png")
        return p
