"""Consistency checks that tie proofs to attacks on the same examples and the same classifier, and the
rank correlation of SynBench score with linear-probe accuracy.

Pure functions (dict in, dict out) so they can be tested against hand-made reports and attacks;
:func:`consistency_summary` adds them up over a study's typed stage results.
"""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from certify._modes import eval_mode
from certify.devices import place_module, resolve_device
from certify.study.results import ConsistencySummary, ModelStages

__all__ = ["smoothing_consistency", "semantic_consistency", "grid_check_semantic", "rank_correlation",
           "consistency_summary"]


def _allowed_failures(n: int, p: float, level: float = 1e-3) -> int:
    """Smallest k with P(Binomial(n, p) > k) <= level: failures the stated alpha can explain."""
    from scipy import stats

    if n <= 0 or p <= 0:
        return 0
    k = 0
    while stats.binom.sf(k, n, min(p, 1.0)) > level:
        k += 1
    return k


def smoothing_consistency(report: Any, attack: Any, *, radius: float, idx: Sequence[int] | None = None,
                          norm: str = "l2", level: float = 1e-3) -> dict:
    """Check a smoothing certificate against a PREDICT-verified attack on the same examples.

    ``report`` is a :class:`certify.reports.RadiusReport` whose rows include every attacked example;
    ``attack`` is the result of :func:`certify.attacks.smoothed_robust_accuracy` (or its ``to_dict()``) at
    ``eps = radius`` in ``norm`` on those examples with the same smoothed classifier; ``idx`` lists the report ``idx``
    of each attacked example in the attack's order (None: the report's first ``attack.n`` rows).

    A *violation* is an example certified at ``radius`` (correct, not abstained, radius >= r) on
    which the attack nevertheless made PREDICT return a different, non-abstained label inside the
    ball (``success``), or on which PREDICT on the clean input returned a different non-abstained
    label. Each certificate fails with probability <= alpha and each PREDICT call errs with
    probability <= alpha, so up to ``allowed`` violations (the Binomial(n, 2 alpha) count exceeded
    with probability <= ``level``) are attributed to sampling; more is a bug.

    Returns a dict: certified_accuracy, robust_accuracy (attack-based upper bound: abstentions count
    as not robust), abstain_on_certified (certified examples where PREDICT abstained, which explain
    certified > robust without any flip), violations, allowed, ok, and per-example violating indices.
    """
    if isinstance(attack, Mapping):
        attack = SimpleNamespace(**attack)
    rows = report.to_frame()
    idx_attack = [int(i) for i in idx] if idx is not None else []
    n = int(attack.n)
    if idx is not None:
        if len(idx_attack) != n:
            raise ValueError("attack index list does not match the attack's example count")
        by_idx = {int(i): k for k, i in enumerate(rows["idx"].tolist())}
        missing = [i for i in idx_attack if i not in by_idx]
        if missing:
            raise ValueError(f"attacked examples {missing[:5]} are not rows of the report")
        order = [by_idx[i] for i in idx_attack]
    else:
        if len(rows) < n:
            raise ValueError(f"report has {len(rows)} rows but the attack ran on {n} examples")
        order = list(range(n))
    radii = np.asarray(report.radii_for(norm, "best"), dtype=float)[order]
    correct = rows["correct"].to_numpy(dtype=bool)[order] & ~rows["abstained"].to_numpy(dtype=bool)[order]
    labels = rows["label"].to_numpy()[order]
    certified = correct & (radii >= radius)
    success = np.asarray(attack.success, dtype=bool)
    adv_abst = np.asarray(attack.abstain, dtype=bool)
    clean_label = list(attack.clean_label)
    clean_abst = np.asarray(attack.clean_abstained, dtype=bool)
    clean_wrong = np.array([(not a) and (lab is not None) and int(lab) != int(y)
                            for lab, a, y in zip(clean_label, clean_abst, labels)], dtype=bool)
    viol = certified & (success | clean_wrong)
    abstain_cert = certified & ~viol & (adv_abst | clean_abst)
    allowed = _allowed_failures(n, 2.0 * float(attack.alpha), level)
    cert_acc = float(certified.mean()) if n else float("nan")
    rob_acc = float(attack.robust_accuracy)
    violations = int(viol.sum())
    viol_idx = [int(rows["idx"].to_numpy()[o]) for o, v in zip(order, viol) if v]
    return {
        "norm": norm, "radius": float(radius), "n": n, "alpha_predict": float(attack.alpha),
        "certified_accuracy": cert_acc, "robust_accuracy": rob_acc,
        "attack_success_rate": float(attack.success_rate), "attack_abstain_rate": float(attack.abstain_rate),
        "abstain_on_certified": int(abstain_cert.sum()),
        "certified_le_robust": bool(cert_acc <= rob_acc + 1e-12),
        "certified_le_robust_plus_abstain": bool(cert_acc <= rob_acc + abstain_cert.sum() / max(n, 1) + 1e-12),
        "violations": violations, "violating_idx": viol_idx, "allowed": int(allowed),
        "ok": bool(violations <= allowed),
    }


def semantic_consistency(rows: Sequence[Mapping[str, Any]], *, levels: Sequence[float]) -> dict:
    """Certified range vs attack for one perturbation family on the same examples.

    ``rows``: one dict per example with ``correct`` (clean prediction == label), ``certified``
    ``(lo, hi)`` (every parameter in the closed interval is proven to keep the label), ``attack``
    ``(lo, hi)``: the nearest flipping parameters found below / above 0 (either side None or NaN when
    the search found no flip), and optionally ``range`` ``(lo, hi)``, the searched range. A violation
    is a flip inside the certified interval (``attack_lo >= certified_lo`` or ``attack_hi <=
    certified_hi``). Semantic certificates are deterministic (no alpha), so any violation is a bug.

    Returns, over ALL n examples, certified / attack-free accuracy at every level ``t`` (correct and
    certified on ``[-t, t]`` / no flip found on ``[-t, t]``); over the correct examples, the mean
    certified range, the mean attack range (the nearest flip on each side, or the end of the searched
    range where none was found; without ``range`` such sides are left out) and the mean gap per side
    (attack end - certified end, same convention); the violations.
    """
    n = len(rows)
    levels = [float(t) for t in levels]
    cert_at = {t: 0 for t in levels}
    att_at = {t: 0 for t in levels}
    viol, viol_idx = 0, []
    c_lo, c_hi, a_lo, a_hi, gaps = [], [], [], [], []
    flips = [0, 0]
    for k, r in enumerate(rows):
        if not r.get("correct"):
            continue
        clo, chi = (float(v) for v in r["certified"])
        att = r.get("attack") or (None, None)
        rng = r.get("range")
        alo = -math.inf if att[0] is None or _isnan(att[0]) else float(att[0])
        ahi = math.inf if att[1] is None or _isnan(att[1]) else float(att[1])
        flips[0] += math.isfinite(alo)
        flips[1] += math.isfinite(ahi)
        c_lo.append(clo)
        c_hi.append(chi)
        end_lo = alo if math.isfinite(alo) else (float(rng[0]) if rng else None)
        end_hi = ahi if math.isfinite(ahi) else (float(rng[1]) if rng else None)
        if end_lo is not None:
            a_lo.append(end_lo)
            gaps.append(clo - end_lo)
        if end_hi is not None:
            a_hi.append(end_hi)
            gaps.append(end_hi - chi)
        for t in levels:
            cert_at[t] += (clo <= -t and chi >= t)
            att_at[t] += (alo < -t and ahi > t)
        if alo >= clo or ahi <= chi:
            viol += 1
            viol_idx.append(r.get("idx", k))

    def mean(v):
        return float(np.mean(v)) if v else float("nan")

    out = {
        "n": n, "n_correct": len(c_lo), "levels": levels,
        "certified_accuracy": [cert_at[t] / n if n else float("nan") for t in levels],
        "attack_robust_accuracy": [att_at[t] / n if n else float("nan") for t in levels],
        "mean_certified_range": [mean(c_lo), mean(c_hi)] if c_lo else None,
        "mean_attack_range": [mean(a_lo), mean(a_hi)] if (a_lo or a_hi) else None,
        "flips_found": flips,
        "mean_gap": mean(gaps),
        "violations": viol, "violating_idx": viol_idx,
    }
    out["certified_le_attack"] = all(c <= a + 1e-12 for c, a in zip(out["certified_accuracy"],
                                                                      out["attack_robust_accuracy"]))
    out["ok"] = viol == 0 and out["certified_le_attack"]
    return out


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def grid_check_semantic(model: nn.Module, x: torch.Tensor, label: int, perturbation: Any,
                        certified: tuple[float, float], *, points: int = 201,
                        batch_size: int = 256, device: str | torch.device | None = None) -> dict:
    """Independent check of one semantic certificate: evaluate the model on ``points`` evenly spaced
    parameters covering the certified range (both ends included) with ``perturbation.apply`` and
    report any parameter whose image is not classified as ``label``.

    ``device``: where the model (moved there), the image and the parameters are (None: the model's device).

    Returns ``{"checked": k, "flips": [theta, ...]}`` (any flip contradicts the certificate).
    """
    dev = place_module(model, resolve_device(device))
    x = x.to(dev)
    lo, hi = float(certified[0]), float(certified[1])
    thetas = torch.linspace(lo, hi, points, dtype=torch.float64, device=dev)
    thetas = torch.unique(torch.cat([thetas, torch.zeros(1, dtype=torch.float64, device=dev)]))
    flips: list[float] = []
    with eval_mode(model), torch.no_grad():
        for s in range(0, thetas.numel(), batch_size):
            th64 = thetas[s:s + batch_size]
            th = th64.to(x.dtype)
            # rounding to x's dtype must not leave the certified range: step such values toward 0
            out_of_range = (th.double() > hi) | (th.double() < lo)
            th = torch.where(out_of_range, torch.nextafter(th, torch.zeros_like(th)), th)
            imgs = perturbation.apply(x.unsqueeze(0).expand(th.numel(), *x.shape).contiguous()
                                      if x.dim() == 3 else x, th)
            pred = model(imgs).argmax(dim=1)
            bad = (pred != int(label)).nonzero().flatten()
            flips.extend(float(thetas[s + int(b)]) for b in bad)
    return {"checked": int(thetas.numel()), "flips": flips}


def rank_correlation(x: Sequence[float], y: Sequence[float], names: Sequence[str] | None = None) -> dict:
    """Spearman's rho of ``x`` and ``y`` (scipy.stats.spearmanr), its two-sided p-value and n.

    ``p_value`` is scipy's (t approximation); for n <= 8 ``p_value_exact`` is the exact permutation
    p-value (all n! orderings). With few models (n ~ 7) the test has little power: |rho| must exceed
    ~0.79 for p < 0.05.
    """
    from scipy import stats

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be 1-D sequences of the same length")
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    out: dict[str, Any] = {"n": n, "names": list(names) if names is not None else None}
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        out.update(spearman_rho=float("nan"), p_value=float("nan"),
                   note="undefined: fewer than 3 models or a constant variable")
        return out
    res = stats.spearmanr(x[ok], y[ok])
    rho = float(getattr(res, "statistic", getattr(res, "correlation", np.nan)))
    out.update(spearman_rho=rho, p_value=float(res.pvalue))
    if n <= 8:
        # exact two-sided permutation p-value: all n! orderings of y against x (scipy's is a t approximation)
        rx, ry = stats.rankdata(x[ok]), stats.rankdata(y[ok])
        ref = abs(float(np.corrcoef(rx, ry)[0, 1]))
        hits = total = 0
        for perm in itertools.permutations(ry):
            total += 1
            hits += abs(float(np.corrcoef(rx, perm)[0, 1])) >= ref - 1e-12
        out["p_value_exact"] = hits / total
    # smallest |rho| that is significant at 5% for this n (two-sided, exact permutation null for small n)
    out["critical_rho_5pct"] = _critical_rho(n)
    return out


def _critical_rho(n: int, level: float = 0.05) -> float:
    """Smallest |rho| with scipy's p-value <= level for n distinct ranks (by scanning rank vectors)."""
    from scipy import stats

    if n < 4:
        return float("nan")
    # p-value is monotone in |rho|; scan rho = 1 - 6 d / (n (n^2 - 1)) for even d
    denom = n * (n * n - 1)
    best = float("nan")
    for d in range(0, n * (n * n - 1) // 3 + 1, 2):
        rho = 1 - 6 * d / denom
        if rho <= 0:
            break
        t = rho * math.sqrt((n - 2) / max(1e-300, 1 - rho * rho)) if rho < 1 else math.inf
        p = 2 * stats.t.sf(abs(t), n - 2)
        if p <= level:
            best = rho
        else:
            break
    return float(best)




def consistency_summary(stages: Mapping[str, ModelStages]) -> ConsistencySummary:
    """Every proof-vs-attack check of a study added up: one per smoothing radius, one per semantic family and one
    per transfer radius of each model; ``violations`` counts the failures beyond the alpha allowance (semantic
    and transfer certificates are deterministic: any flip)."""
    checks = violations = 0
    problems: list[str] = []
    for name, st in stages.items():
        for row in st.transfer.rows if st.transfer else ():
            checks += 1
            if not row.ok:
                violations += row.violations
                problems.append(f"{name} transfer l-inf eps={row.eps:g}: PGD broke {row.violations} certified "
                                "examples")
        for chk in st.smooth_attack.checks if st.smooth_attack else ():
            checks += 1
            if not chk.ok:
                violations += chk.violations - chk.allowed
                problems.append(f"{name} smoothing l2 r={chk.radius:g}: {chk.violations} > {chk.allowed}")
        families = st.semantic.families if st.semantic else {}
        grids = st.semantic_grid.families if st.semantic_grid else {}
        for p, fam in families.items():
            checks += 1
            grid_flips = grids[p].flips if p in grids else 0
            bad = fam.violations + grid_flips
            if bad or not fam.certified_le_attack:
                violations += max(bad, 1)
                problems.append(f"{name} {p}: {fam.violations} attack flips, {grid_flips} grid flips "
                                "inside certified ranges")
    status = "not run" if checks == 0 else "all passed" if violations == 0 else "VIOLATIONS FOUND"
    return ConsistencySummary(checks=checks, violations=violations, problems=tuple(problems), status=status)
