"""The result of one semantic verification: :class:`SemanticCertificate` and its tightness."""
from __future__ import annotations

import dataclasses
from typing import Any

from certify._jsonio import jsonable


@dataclasses.dataclass(frozen=True)
class SemanticCertificate:
    """Result of :func:`verify_semantic` (echoes its inputs).

    Parameter ranges have the shape of ``requested``: ``(lo, hi)`` for one parameter,
    ``((lo1, hi1), (lo2, hi2))`` for two.

    * ``certified``: every parameter in it provably keeps ``label`` (largest contiguous interval
      around 0 whose sub-intervals all verify; for k = 2 the box ``certified_scale * requested``).
      ``(0.0, 0.0)`` (or zero pairs) when nothing beyond theta = 0 verifies, or when the clean
      image is misclassified (``clean_correct`` False; then nothing is certified, not even 0).
    * ``attack``: k = 1: ``(lo, hi)`` nearest flipping parameters found below / above 0 (None on
      a side where the search found no flip); k = 2: the per-parameter ranges of the box
      ``attack_scale * requested`` whose boundary holds the flip ``attack_theta`` (None if none).
    * ``tightness``: certified width / attack width over the sides where a flip was found (k = 2:
      certified_scale / attack_scale); None if no flip was found. 1.0 = the proof is as good as
      the attack.
    * ``pieces``: every parameter box that was bounded: ``(lo, hi, min margin lower bound,
      verified)`` with lo/hi tuples of k floats.
    """

    perturbation: str
    param_names: tuple[str, ...]
    units: str
    kind: str
    method: str
    baseline: str | None
    label: int
    predicted: int
    clean_correct: bool
    requested: tuple
    certified: tuple
    certified_scale: float | None
    attack: tuple | None
    attack_theta: tuple | None
    attack_scale: float | None
    tightness: float | None
    n_splits: int
    n_refined: int
    max_refine: int
    margin_tol: float
    pieces: tuple = dataclasses.field(repr=False)
    time_s: float = 0.0
    attack_time_s: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def certified_ranges(self) -> tuple[tuple[float, float], ...]:
        """k (lo, hi) certified pairs (also for k = 1)."""
        return (tuple(self.certified),) if self.n_params == 1 else tuple(tuple(c) for c in self.certified)

    def attack_ranges(self) -> tuple[tuple[float | None, float | None], ...]:
        """k (lo, hi) attack pairs; None entries where no flip was found."""
        if self.attack is None:
            return ((None, None),) * self.n_params
        return (tuple(self.attack),) if self.n_params == 1 else tuple(tuple(a) for a in self.attack)

    def requested_ranges(self) -> tuple[tuple[float, float], ...]:
        return (tuple(self.requested),) if self.n_params == 1 else tuple(tuple(r) for r in self.requested)


def tightness_1d(certified: tuple[float, float], attack: tuple | None) -> float | None:
    """Certified width / attack width over the sides of 0 where a flip was found (1.0: the proof reaches the
    nearest flip found); None when no flip was found."""
    if attack is None:
        return None
    num = den = 0.0
    if attack[0] is not None:
        num += -certified[0]
        den += -attack[0]
    if attack[1] is not None:
        num += certified[1]
        den += attack[1]
    return float(num / den) if den > 0 else None
