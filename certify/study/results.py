"""Typed results of the study's stages (frozen dataclasses) and of the whole study.

Each stage result has ``to_dict()`` (its entry of ``results.json`` and of the stage cache: plain JSON, NaN as
null) and ``from_dict()`` (read back from the cache or a results.json). Units: accuracies are fractions of the
stated ``n`` test images; radii, eps and sigma are in pixel units on the [0, 1] scale; times in seconds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, NamedTuple

from certify._jsonio import jsonable
from certify.study.cache import FORMAT
from certify.study.config import StudyConfig

__all__ = [
    "CleanResult", "AttackRow", "AttacksResult", "SynbenchSummary", "ProbeSummary", "CertifiedCurve",
    "NormCurves", "SmoothingSummary", "CompareSummary", "SmoothingCheck", "SmoothAttackStage", "SemanticExample",
    "SemanticRaw", "SemanticFamily", "SemanticStage", "GridFamily", "SemanticGrid", "SigmaRow", "HiddenCostResult",
    "TransferRow", "TransferStage", "ModelInfo", "StageTime",
    "ModelStages", "RankCorrelation", "Correlation", "ConsistencySummary", "StudyResult", "STAGES",
]

#: the stages of every model, in the order of the report's time table
STAGES = ("model", "clean", "attacks", "synbench", "probe", "smoothing", "smooth_attack", "hidden_cost", "transfer",
          "semantic", "semantic_grid", "compare")


def _freeze(value: Any) -> Any:
    """JSON lists as tuples (recursively), so records read from JSON are immutable like computed ones."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if hasattr(value, "_asdict"):        # NamedTuple rows are written as JSON lists
        return [_dump(v) for v in value]
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _dump(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Record:
    """Base of the typed results: ``to_dict`` / ``from_dict`` by field name.

    ``_NESTED`` maps a field to ``(kind, type)``: ``"one"`` (a record), ``"tuple"`` (a tuple of records)
    or ``"map"`` (a mapping name -> record). ``_OMIT_NONE`` lists fields left out of ``to_dict`` when None.
    """

    _NESTED: ClassVar[Mapping[str, tuple[str, Any]]] = {}
    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict:
        return jsonable({f.name: _dump(getattr(self, f.name)) for f in dataclasses.fields(self)
                         if not (f.name in self._OMIT_NONE and getattr(self, f.name) is None)})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            kw[f.name] = cls._load(f.name, d[f.name])
        return cls(**kw)

    @classmethod
    def _load(cls, name: str, value: Any) -> Any:
        nested = cls._NESTED.get(name)
        if nested is None or value is None:
            return value if isinstance(value, Mapping) else _freeze(value)
        kind, typ = nested
        if kind == "one":
            return typ.from_dict(value)
        if kind == "tuple":
            return tuple(typ.from_dict(v) for v in value)
        return {k: typ.from_dict(v) for k, v in value.items()}


# ------------------------------------------------------------------------------------------- base classifier
@dataclass(frozen=True)
class CleanResult(Record):
    """Clean accuracy of the base classifier on ``n`` evenly spaced test images."""

    n: int
    accuracy: float


@dataclass(frozen=True)
class AttackRow(Record):
    """One attack (:func:`certify.attacks.robust_accuracy`): robust accuracy is an upper bound."""

    attack: str
    norm: str
    eps: float
    n: int
    clean_accuracy: float
    robust_accuracy: float
    num_success: int
    steps: int
    step_size: float | None
    restarts: int
    time_s: float


@dataclass(frozen=True)
class AttacksResult(Record):
    n: int
    idx_skip: int
    rows: tuple[AttackRow, ...]
    _NESTED = {"rows": ("tuple", AttackRow)}

    def find(self, attack: str, norm: str, eps: float) -> AttackRow | None:
        return next((r for r in self.rows if r.attack == attack and r.norm == norm and r.eps == eps), None)


# ------------------------------------------------------------------------------------------- SynBench, probes
@dataclass(frozen=True)
class SynbenchSummary(Record):
    """SynBench scores (``scores[str(eps)]`` at ``a_t``) of the penultimate representation."""

    scores: Mapping[str, float]
    a_t: float
    best_eps: float | None
    feature_dim: int
    n_separations: int
    n_train: int
    n_test: int
    file: str

    def score(self, eps: float) -> float | None:
        return self.scores.get(str(float(eps)))


@dataclass(frozen=True)
class ProbeSummary(Record):
    """The fields of :class:`certify.synbench.RobustProbeResult` plus the clean linear-probe accuracy
    (probe trained at eps 0) and each probe's robust accuracy at its own eps."""

    name: str
    layer: str | None
    eps: tuple[float, ...]
    scale: float
    clean_accuracy: tuple[float, ...]
    robust_accuracy: tuple[tuple[float, ...], ...]
    train_clean_accuracy: tuple[float, ...]
    recommended_eps: float | None
    a_t: float
    num_classes: int
    n_train: int
    n_test: int
    feature_dim: int
    weight_decay: float
    seed: int
    converged: tuple[bool, ...]
    time_s: float
    eps_abs: tuple[float, ...]
    linear_probe_accuracy: float
    robust_at_own_eps: tuple[float, ...]

    def robust_at(self, eps: float) -> float | None:
        """Robust accuracy of the probe trained and evaluated at ``eps`` (None if not in the grid)."""
        grid = [round(e, 12) for e in self.eps]
        return self.robust_at_own_eps[grid.index(round(eps, 12))] if round(eps, 12) in grid else None


# ------------------------------------------------------------------------------------------- smoothing
@dataclass(frozen=True)
class CertifiedCurve(Record):
    certified_accuracy: tuple[float, ...]
    acr: float | None


@dataclass(frozen=True)
class NormCurves(Record):
    """Certified accuracy on the radius grid of one norm, zeroth and first order (absent: None)."""

    radii: tuple[float, ...]
    zeroth: CertifiedCurve | None = None
    first: CertifiedCurve | None = None
    _NESTED = {"zeroth": ("one", CertifiedCurve), "first": ("one", CertifiedCurve)}
    _OMIT_NONE = frozenset({"zeroth", "first"})


@dataclass(frozen=True)
class SmoothingSummary(Record):
    """A randomized-smoothing run (:func:`certify.runs.certify_dataset`) on ``n`` test images."""

    n: int
    sigma: float
    clean_accuracy: float
    abstain_rate: float
    acr: float | None
    mean_time_s: float | None
    first_order: bool
    norms: Mapping[str, NormCurves]
    rows_file: str
    idx: tuple[int, ...]
    _NESTED = {"norms": ("map", NormCurves)}


@dataclass(frozen=True)
class CompareSummary(Record):
    """:func:`certify.synbench.compare` of the smoothing report (``skipped``: why it does not apply)."""

    skipped: str | None = None
    name: str | None = None
    sigma: float | None = None
    clean_accuracy: float | None = None
    mu_norm: float | None = None
    norm: str | None = None
    gap_area: float | None = None
    gap_area_positive: float | None = None
    gap_area_negative: float | None = None
    max_gap: float | None = None
    radius_at_max_gap: float | None = None
    plot: str | None = None

    def to_dict(self) -> dict:
        if self.skipped is not None:
            return {"skipped": self.skipped}
        return {k: v for k, v in super().to_dict().items() if k != "skipped"}


@dataclass(frozen=True)
class SmoothingCheck(Record):
    """:func:`certify.study.smoothing_consistency` at one radius, plus the attack's time and PREDICT accuracy."""

    norm: str
    radius: float
    n: int
    alpha_predict: float
    certified_accuracy: float | None
    robust_accuracy: float
    attack_success_rate: float
    attack_abstain_rate: float
    abstain_on_certified: int
    certified_le_robust: bool
    certified_le_robust_plus_abstain: bool
    violations: int
    violating_idx: tuple[int, ...]
    allowed: int
    ok: bool
    attack_time_s: float | None = None
    clean_accuracy_predict: float | None = None


@dataclass(frozen=True)
class SmoothAttackStage(Record):
    """SmoothAdv PGD on the smoothed classifier at each radius (``attacks``: the per-example results of
    :func:`certify.attacks.smoothed_robust_accuracy` as dicts) and the checks against the certificates."""

    idx: tuple[int, ...]
    attacks: tuple[Mapping[str, Any], ...]
    checks: tuple[SmoothingCheck, ...] = ()
    _NESTED = {"checks": ("tuple", SmoothingCheck)}


# ------------------------------------------------------------------------------------------- semantic
class SemanticExample(NamedTuple):
    """One example of a semantic family: the nearest flips are None where the attack found none."""

    idx: int
    correct: bool
    certified_lo: float
    certified_hi: float
    attack_lo: float | None
    attack_hi: float | None
    range_lo: float
    range_hi: float


def _examples(rows: Any) -> tuple[SemanticExample, ...]:
    return tuple(SemanticExample(*r) for r in rows)


@dataclass(frozen=True)
class SemanticRaw(Record):
    """What the semantic stage caches per family: the rows and the semantic report's own accuracies."""

    units: str
    time_per_example_s: float | None
    report_certified_accuracy: tuple[float, ...]
    report_attack_accuracy: tuple[float, ...]
    examples: tuple[SemanticExample, ...]

    @classmethod
    def _load(cls, name: str, value: Any) -> Any:
        return _examples(value) if name == "examples" else super()._load(name, value)


@dataclass(frozen=True)
class SemanticFamily(Record):
    """:func:`certify.study.semantic_consistency` of one family plus the cached raw fields."""

    n: int
    n_correct: int
    levels: tuple[float, ...]
    certified_accuracy: tuple[float | None, ...]
    attack_robust_accuracy: tuple[float | None, ...]
    mean_certified_range: tuple[float | None, float | None] | None
    mean_attack_range: tuple[float | None, float | None] | None
    flips_found: tuple[int, int]
    mean_gap: float | None
    violations: int
    violating_idx: tuple[int, ...]
    certified_le_attack: bool
    ok: bool
    units: str = ""
    time_per_example_s: float | None = None
    report_certified_accuracy: tuple[float, ...] = ()
    report_attack_accuracy: tuple[float, ...] = ()
    examples: tuple[SemanticExample, ...] = ()

    @classmethod
    def _load(cls, name: str, value: Any) -> Any:
        return _examples(value) if name == "examples" else super()._load(name, value)


@dataclass(frozen=True)
class SemanticStage(Record):
    raw: Mapping[str, SemanticRaw]
    rows_file: str
    idx: tuple[int, ...]
    families: Mapping[str, SemanticFamily] = field(default_factory=dict)
    _NESTED = {"raw": ("map", SemanticRaw), "families": ("map", SemanticFamily)}


@dataclass(frozen=True)
class GridFamily(Record):
    """The independent grid over the certified ranges of one family: any flip is a violation."""

    examples: int
    checked: int
    flips: int
    bad: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class SemanticGrid(Record):
    """Per family a :class:`GridFamily`; in JSON a plain mapping family -> entry."""

    families: Mapping[str, GridFamily]

    def to_dict(self) -> dict:
        return {p: g.to_dict() for p, g in self.families.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SemanticGrid":
        return cls({p: GridFamily.from_dict(g) for p, g in d.items()})


# ------------------------------------------------------------------------------------------- hidden cost, transfer
@dataclass(frozen=True)
class SigmaRow(Record):
    """One sigma of the sweep (:func:`certify.hidden_cost.sigma_sweep`; sigma 0 is the base classifier).

    ``class_accuracy[c]``: accuracy on the examples of class ``c`` (None without any; an abstention is an
    error); ``disparity``: max - min class accuracy; ``changed_fraction``: fraction whose smoothed output
    (abstentions included) differs from the base prediction; ``vanished``: classes the base classifier
    predicts on some example and the smoothed classifier on none.
    """

    sigma: float
    accuracy: float
    abstain_rate: float
    disparity: float | None
    changed_fraction: float
    class_accuracy: tuple[float | None, ...]
    vanished: tuple[int, ...]


@dataclass(frozen=True)
class HiddenCostResult(Record):
    """Accuracy and disparity per class against sigma on ``n`` evenly spaced test images (``idx_skip`` apart),
    each prediction from ``n_estimate`` noise samples with abstention at ``alpha``."""

    n: int
    idx_skip: int
    n_estimate: int
    alpha: float
    seed: int
    classes: tuple[int, ...]
    class_counts: tuple[int, ...]
    rows: tuple[SigmaRow, ...]
    time_s: float
    _NESTED = {"rows": ("tuple", SigmaRow)}

    def row(self, sigma: float) -> SigmaRow | None:
        return next((r for r in self.rows if r.sigma == sigma), None)


@dataclass(frozen=True)
class TransferRow(Record):
    """:func:`certify.transfer.transfer_bounds` of the fresh probe at one l-inf radius ``eps``, and PGD on the
    composed model (encoder + probe) at the same radius on the same examples.

    Certified fractions (of all ``n``) per criterion (``logit`` <= ``pairwise`` <= ``box``); mean cross-entropy
    on the clean inputs and its certified upper bounds over the ball (``loss_bound``: the task-independent
    Lipschitz form, ``loss_bound_box``: interval form); ``pgd_robust_accuracy`` is an upper bound on the
    robust accuracy. A *violation* is an example certified by ``box`` that PGD broke (any is a bug: the
    certificate is deterministic); ``certified`` / ``pgd_robust`` are the per-example flags in ``idx`` order.
    """

    eps: float
    n: int
    clean_accuracy: float
    certified_logit: float
    certified_pairwise: float
    certified_box: float
    mean_clean_loss: float
    mean_loss_bound: float
    mean_loss_bound_box: float
    median_feature_deviation: float
    head_spectral_norm: float
    pgd_robust_accuracy: float
    certified: tuple[bool, ...]
    pgd_robust: tuple[bool, ...]
    violations: int
    violating_idx: tuple[int, ...]
    ok: bool
    bound_time_s: float
    attack_time_s: float


@dataclass(frozen=True)
class TransferStage(Record):
    """Robustness transfer (Nern et al. 2023) from a model's encoder to a fresh linear probe fitted on
    ``probe_n_train`` training images, certified with ``method`` feature bounds on ``n`` test images."""

    n: int
    idx: tuple[int, ...]
    method: str
    probe_n_train: int
    probe_train_accuracy: float
    probe_converged: bool
    feature_dim: int
    pgd_steps: int
    pgd_restarts: int
    rows: tuple[TransferRow, ...]
    _NESTED = {"rows": ("tuple", TransferRow)}


# ------------------------------------------------------------------------------------------- per model
@dataclass(frozen=True)
class ModelInfo(Record):
    """Where a model came from: a zoo checkpoint (``pretrained``) or trained here (``train_*``)."""

    source: str
    fingerprint: str | None
    spec: Mapping[str, Any]
    pretrained: str | None = None
    zoo_info: Mapping[str, Any] | None = None
    train_images: int | None = None
    train_result: Mapping[str, Any] | None = None
    checkpoint: str | None = None
    _OMIT_NONE = frozenset({"pretrained", "zoo_info", "train_images", "train_result", "checkpoint"})


@dataclass(frozen=True)
class StageTime(Record):
    """Seconds a stage took when it was computed, and whether this invocation read it from the cache."""

    time_s: float
    cached: bool


_STAGE_TYPES: dict[str, Any] = {
    "info": ModelInfo, "clean": CleanResult, "attacks": AttacksResult, "synbench": SynbenchSummary,
    "probe": ProbeSummary, "smoothing": SmoothingSummary, "compare": CompareSummary,
    "smooth_attack": SmoothAttackStage, "semantic": SemanticStage, "semantic_grid": SemanticGrid,
    "hidden_cost": HiddenCostResult, "transfer": TransferStage,
}


@dataclass(frozen=True)
class ModelStages(Record):
    """Every stage result of one model (None: not run yet)."""

    info: ModelInfo | None = None
    clean: CleanResult | None = None
    attacks: AttacksResult | None = None
    synbench: SynbenchSummary | None = None
    probe: ProbeSummary | None = None
    smoothing: SmoothingSummary | None = None
    compare: CompareSummary | None = None
    smooth_attack: SmoothAttackStage | None = None
    semantic: SemanticStage | None = None
    semantic_grid: SemanticGrid | None = None
    hidden_cost: HiddenCostResult | None = None
    transfer: TransferStage | None = None
    _NESTED = {name: ("one", typ) for name, typ in _STAGE_TYPES.items()}
    _OMIT_NONE = frozenset(_STAGE_TYPES)

    @staticmethod
    def stage_type(stage: str) -> Any:
        return _STAGE_TYPES[stage]


# ------------------------------------------------------------------------------------------- whole study
@dataclass(frozen=True)
class RankCorrelation(Record):
    """:func:`certify.study.rank_correlation` of two named per-model quantities ``x`` and ``y``."""

    n: int
    names: tuple[str, ...] | None
    spearman_rho: float | None
    p_value: float | None
    x: str = ""
    y: str = ""
    p_value_exact: float | None = None
    critical_rho_5pct: float | None = None
    note: str | None = None
    _OMIT_NONE = frozenset({"p_value_exact", "critical_rho_5pct", "note"})


@dataclass(frozen=True)
class Correlation(Record):
    """SynBench score vs linear-probe accuracy across the models (``robust``: the eps-0.2 variant)."""

    main: RankCorrelation
    scores: tuple[float, ...]
    probe_accuracy: tuple[float, ...]
    robust: RankCorrelation | None = None
    _NESTED = {"main": ("one", RankCorrelation), "robust": ("one", RankCorrelation)}
    _OMIT_NONE = frozenset({"robust"})


@dataclass(frozen=True)
class ConsistencySummary(Record):
    """All proof-vs-attack checks of a study: ``violations`` beyond the alpha allowance (0 unless a bug)."""

    checks: int
    violations: int
    problems: tuple[str, ...]
    status: str


@dataclass(frozen=True)
class StudyResult:
    """What :func:`certify.study.run_study` computed (every number is also in ``results.json``).

    Attributes:
        out: output folder. config: the :class:`~certify.study.StudyConfig`.
        stages: per model name, the typed :class:`ModelStages`.
        models: the same as plain JSON (``results.json``'s ``models``: per model a dict of stage dicts).
        correlation: Spearman rank correlation of SynBench score and linear-probe accuracy (JSON view of
            :class:`Correlation`; empty with fewer than 3 models). consistency: the proof-vs-attack checks
            (JSON view of :class:`ConsistencySummary`). timings: per model and stage ``{"time_s", "cached"}``
            plus totals. report, results: paths of report.md / results.json; plots: PNG paths.
    """

    out: Path
    config: StudyConfig
    stages: Mapping[str, ModelStages]
    models: Mapping[str, Mapping[str, Any]]
    correlation: Mapping[str, Any]
    consistency: Mapping[str, Any]
    timings: Mapping[str, Any]
    report: Path
    results: Path
    plots: tuple[Path, ...]
    wall_time_s: float

    def to_dict(self) -> dict:
        return jsonable({
            "format": FORMAT, "out": str(self.out), "config": self.config.to_dict(), "models": self.models,
            "correlation": self.correlation, "consistency": self.consistency, "timings": self.timings,
            "report": str(self.report), "results": str(self.results), "plots": [str(p) for p in self.plots],
            "wall_time_s": self.wall_time_s,
        })
