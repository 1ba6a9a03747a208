"""Benchmark: sequential (anytime-valid) randomized smoothing against fixed-N CERTIFY in the same run.

For Fashion-MNIST test images (every ``--every``-th, ``--n-images`` of them), ``fmnist_cnn_sigma0.25``, sigma
0.25, alpha 0.001, each image is certified

* with a fixed budget ``N = --n-fixed`` (Cohen et al.'s CERTIFY, Clopper-Pearson at alpha);
* in decision mode, ``sequential=True, target_radius=r`` for each ``--radii`` r, with N as the maximum;
* in radius mode, ``sequential=True, radius_tol=t`` for each ``--radius-tols`` t, with N as the maximum.

All runs of an image use the same seed, so the top class is selected from the same samples. Reported per mode:
mean / median / max samples used and the ratio mean / N; for decision mode the agreement of "certified at r"
with the fixed-N decision, and for each disagreement whether the fixed-N decision is itself within sampling
noise: the fixed-N Clopper-Pearson interval [lower(alpha), upper(alpha)] contains Phi(r / sigma), or the fixed-N
lower bound is within one standard error of p_hat (sqrt(p_hat (1 - p_hat) / N)) of Phi(r / sigma) (a fixed-N
certificate always has lower >= Phi(r / sigma), so the interval test alone never counts it as noise);
for radius mode the ACR and its ratio to the fixed-N ACR. Goals from the issue: decisions agree on >= 99 %
with <= N / 10 samples on average (goal N / 20); radius mode ACR >= 0.98 x fixed with <= N / 5 samples.

    python benchmarks/bench_sequential.py                                   # the issue's setting: 500 images
    python benchmarks/bench_sequential.py --n-images 100 --every 100        # reduced
    python benchmarks/bench_sequential.py --radius-tols                      # decision mode only

Writes JSON (default benchmarks/results/bench_sequential.json), an ECDF plot of the samples per image
(bench_sequential.png next to it) and prints a table. Not part of the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import special


def _certify_all(args, smooth, data, indices, cache: Path) -> list[dict]:
    """Certify every image in every mode; rows are appended to ``cache`` (JSON lines) so an interrupted run resumes."""
    from certify.runs import SEED_SCHEME

    # rows of another seeding scheme (e.g. before chunked streams) are not reused
    settings = {**{k: v for k, v in vars(args).items() if k not in ("out", "threads")}, "seed_scheme": SEED_SCHEME}
    done: dict[int, dict] = {}
    if cache.exists():
        lines = cache.read_text().splitlines()
        if lines and json.loads(lines[0]) == settings:
            done = {r["idx"]: r for r in map(json.loads, lines[1:]) if r}
    if not done:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(settings) + "\n")
    rows = []
    t_start = time.perf_counter()
    for j, idx in enumerate(indices):
        if int(idx) in done:
            rows.append(done[int(idx)])
            continue
        x, label = data[idx]
        row: dict = {"idx": int(idx), "label": int(label)}
        common = dict(n_select=args.n_select, n_estimate=args.n_fixed, alpha=args.alpha,
                      batch_size=args.batch_size, seed=int(idx))
        t0 = time.perf_counter()
        fixed = smooth.certify(x, **common)
        row["fixed"] = _summ(fixed, label, time.perf_counter() - t0)
        for r in args.radii:
            t0 = time.perf_counter()
            c = smooth.certify(x, sequential=True, target_radius=r, **common)
            row[f"decision_{r:g}"] = _summ(c, label, time.perf_counter() - t0)
        for tol in args.radius_tols:
            t0 = time.perf_counter()
            c = smooth.certify(x, sequential=True, radius_tol=tol, **common)
            row[f"radius_tol_{tol:g}"] = _summ(c, label, time.perf_counter() - t0)
        rows.append(row)
        with cache.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if (j + 1) % 10 == 0 or j + 1 == len(indices):
            print(f"  {j + 1}/{len(indices)} images, {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return rows


def _summ(cert, label: int, seconds: float) -> dict:
    return {"predict": cert.label, "abstained": cert.abstained, "p_lower": cert.p_lower, "radius": cert.radius,
            "correct": (not cert.abstained) and cert.label == label, "n_used": cert.n_used,
            "k": int(cert.counts[cert.label]), "stop_reason": cert.stop_reason, "time_s": seconds}


def _usage(vals: np.ndarray, n_fixed: int) -> dict:
    return {"mean": float(vals.mean()), "median": float(np.median(vals)), "max": int(vals.max()),
            "min": int(vals.min()), "mean_over_fixed": float(vals.mean() / n_fixed)}


def _decision_stats(rows, key: str, r: float, args) -> dict:
    from estimators.confidence import clopper_pearson_lower, clopper_pearson_upper

    thr = float(special.ndtr(r / args.sigma))
    fixed_cert = np.array([x["fixed"]["correct"] and x["fixed"]["radius"] >= r for x in rows])
    seq_cert = np.array([x[key]["correct"] and x[key]["radius"] >= r for x in rows])
    used = np.array([x[key]["n_used"] for x in rows], dtype=float)
    disagreements = []
    for x, a, b in zip(rows, fixed_cert, seq_cert):
        if a != b:
            k = x["fixed"]["k"]
            lo = clopper_pearson_lower(k, args.n_fixed, args.alpha)
            up = clopper_pearson_upper(k, args.n_fixed, args.alpha)
            p_hat = k / args.n_fixed
            # the sampling noise of the fixed-N bound: one standard error of p_hat (a repeated fixed-N run moves
            # its lower bound by about this much, so a decision this close to the threshold can flip)
            se = float(np.sqrt(max(p_hat * (1.0 - p_hat), 1.0 / args.n_fixed) / args.n_fixed))
            gap = (x["fixed"]["p_lower"] - thr) / se
            disagreements.append({"idx": x["idx"], "fixed_certified": bool(a), "sequential_certified": bool(b),
                                  "fixed_p_lower": x["fixed"]["p_lower"], "fixed_p_hat": p_hat,
                                  "threshold": thr, "sequential_p_lower": x[key]["p_lower"],
                                  "sequential_n_used": x[key]["n_used"],
                                  "threshold_in_fixed_interval": bool(lo <= thr <= up),
                                  "fixed_lower_minus_threshold_in_se": gap,
                                  "fixed_within_noise": bool(lo <= thr <= up or abs(gap) <= 1.0)})
    return {"target_radius": r, "threshold_p": thr, "fixed_certified": int(fixed_cert.sum()),
            "sequential_certified": int(seq_cert.sum()), "agreement": float(np.mean(fixed_cert == seq_cert)),
            "samples": _usage(used, args.n_fixed),
            "stop_reasons": _count([x[key]["stop_reason"] for x in rows]),
            "disagreements": disagreements,
            "disagreements_all_within_noise": all(d["fixed_within_noise"] for d in disagreements),
            "time_ratio_vs_fixed": float(sum(x[key]["time_s"] for x in rows) / sum(x["fixed"]["time_s"] for x in rows))}


def _radius_stats(rows, key: str, args) -> dict:
    def acr(k):
        return float(np.mean([x[k]["radius"] if x[k]["correct"] else 0.0 for x in rows]))

    used = np.array([x[key]["n_used"] for x in rows], dtype=float)
    return {"acr": acr(key), "acr_fixed": acr("fixed"), "acr_ratio": acr(key) / max(acr("fixed"), 1e-12),
            "samples": _usage(used, args.n_fixed), "stop_reasons": _count([x[key]["stop_reason"] for x in rows]),
            "time_ratio_vs_fixed": float(sum(x[key]["time_s"] for x in rows) / sum(x["fixed"]["time_s"] for x in rows))}


def _radius_oracle(rows, args, acr_goal: float = 0.98) -> dict:
    """Fewest samples a procedure needs to reach ``acr_goal`` x the fixed-N ACR on these images, two ways.

    On an image whose n estimation samples all vote for the top class, no valid (1 - alpha) lower confidence bound
    can exceed alpha ** (1 / n): at any p_A below that value the all-top outcome has probability p_A ** n > alpha.
    Its certified radius is therefore at most sigma * Phi^-1(alpha ** (1 / n)), which grows with n. A procedure
    must spend enough on the images whose fixed-N samples were all top-class to lose at most (1 - acr_goal) x the
    fixed-N ACR, net of what it gains on the other images; the radius loss is convex in n, so spending the same n on
    each all-top image is optimal. ``min_mean_samples_over_fixed``: the other images get their fixed-N radius and no
    samples (a procedure that, like any Clopper-Pearson-based one with at most N samples, does not beat the fixed-N
    certificate on them on average). ``..._others_at_upper``: the other images get the radius of their fixed-N
    Clopper-Pearson UPPER bound at alpha (with probability >= 1 - alpha no valid certificate exceeds the true radius,
    which is below it): a bound no valid procedure can beat on these images, whatever its statistics.
    """
    from scipy import optimize

    from estimators.confidence import clopper_pearson_upper

    def radius(n: float) -> float:
        return float(args.sigma * special.ndtri(np.exp(np.log(args.alpha) / n)))

    fixed = [x["fixed"] for x in rows]
    acr_sum = float(sum(f["radius"] for f in fixed if f["correct"]))
    all_top = [f for f in fixed if f["correct"] and f["k"] == args.n_fixed]
    others = [f for f in fixed if f["correct"] and f["k"] < args.n_fixed]

    def samples(gain: float) -> float:
        """Mean samples / N when the other images add ``gain`` to the radius sum over their fixed-N radii."""
        budget = (1.0 - acr_goal) * acr_sum + gain
        if not all_top:
            return 0.0
        if len(all_top) * (radius(args.n_fixed) - radius(1.0)) <= budget:
            n_each = 1.0
        else:
            n_each = float(optimize.brentq(lambda n: len(all_top) * (radius(args.n_fixed) - radius(n)) - budget,
                                           1.0, float(args.n_fixed)))
        return len(all_top) * n_each / len(rows) / args.n_fixed

    upper = [float(clopper_pearson_upper(f["k"], args.n_fixed, args.alpha)) for f in others]
    gain = sum(max(0.0, args.sigma * float(special.ndtri(u)) - f["radius"]) for u, f in zip(upper, others))
    return {"acr_goal": acr_goal, "images_all_top": len(all_top), "images": len(rows),
            "min_mean_samples_over_fixed": samples(0.0),
            "others_upper_radius_gain": gain,
            "min_mean_samples_over_fixed_others_at_upper": samples(gain)}


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _plot(rows, keys, path: Path, n_fixed: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for key in keys:
        v = np.sort([x[key]["n_used"] for x in rows])
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=f"{key} (mean {v.mean():,.0f})")
    ax.axvline(n_fixed, color="k", ls="--", lw=1, label=f"fixed N = {n_fixed:,}")
    ax.set_xscale("log")
    ax.set_xlabel("estimation samples used per image")
    ax.set_ylabel("fraction of images")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Sequential certification, {len(rows)} Fashion-MNIST test images", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=500)
    p.add_argument("--every", type=int, default=20, help="use every EVERY-th test image (default 20)")
    p.add_argument("--n-fixed", type=int, default=100_000, help="fixed N, and the maximum of the sequential runs")
    p.add_argument("--n-select", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--model", default="fmnist_cnn_sigma0.25")
    p.add_argument("--radii", type=float, nargs="*", default=[0.25, 0.5],
                   help="decision-mode radii (none: decision mode skipped)")
    p.add_argument("--radius-tols", type=float, nargs="*", default=[0.01],
                   help="radius-mode tolerances (sigma units); give none to skip radius mode")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_sequential.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from certify import models
    from certify.data import load_dataset
    from certify.smoothing import Smooth

    model = models.pretrained(args.model)
    data = load_dataset("fashion-mnist", split="test")
    indices = list(range(0, len(data), args.every))[:args.n_images]
    smooth = Smooth(model, num_classes=10, sigma=args.sigma)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    rows = _certify_all(args, smooth, data, indices, Path(args.out).with_suffix(".rows.jsonl"))
    wall = time.perf_counter() - t0
    decision = {f"{r:g}": _decision_stats(rows, f"decision_{r:g}", r, args) for r in args.radii}
    radius = {f"{t:g}": _radius_stats(rows, f"radius_tol_{t:g}", args) for t in args.radius_tols}
    full = args.n_images == 500 and args.every == 20 and args.n_fixed == 100_000
    skipped = "" if args.radius_tols else "; radius mode skipped (--radius-tols with no values)"
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "issue_setting": full,
        "note": ("the issue's full setting" if full else
                 f"REDUCED run: {len(indices)} images (every {args.every}-th), fixed N = {args.n_fixed:,}; the issue "
                 "asks for 500 images (every 20th) at N = 100,000") + skipped,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "loadavg_start": list(load_start),
                    "loadavg_end": list(os.getloadavg())},
        "wall_s": wall,  # of this invocation (rows reused from the cache are not recomputed)
        # seconds spent certifying, summed over every image and mode (also for rows read from the cache)
        "certify_s": float(sum(v["time_s"] for row in rows for v in row.values() if isinstance(v, dict))),
        "n_images": len(indices),
        "decision": decision,
        "radius": radius,
        "radius_oracle": _radius_oracle(rows, args),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    keys = [f"decision_{r:g}" for r in args.radii] + [f"radius_tol_{t:g}" for t in args.radius_tols]
    _plot(rows, keys, out.with_suffix(".png"), args.n_fixed)

    print(f"\n{result['note']}; load {load_start[0]:.2f} -> {os.getloadavg()[0]:.2f}, wall {wall:.0f} s")
    print(f"{'mode':<22}{'mean n':>10}{'median n':>10}{'max n':>9}{'mean/N':>9}  result")
    for r, d in decision.items():
        s = d["samples"]
        print(f"{'decision r=' + r:<22}{s['mean']:>10,.0f}{s['median']:>10,.0f}{s['max']:>9,}"
              f"{s['mean_over_fixed']:>9.4f}"
              f"  agreement {d['agreement']:.3f} ({d['sequential_certified']} vs {d['fixed_certified']} certified; "
              f"{len(d['disagreements'])} disagreements, all within noise: {d['disagreements_all_within_noise']})")
    for t, d in radius.items():
        s = d["samples"]
        print(f"{'radius tol=' + t:<22}{s['mean']:>10,.0f}{s['median']:>10,.0f}{s['max']:>9,}"
              f"{s['mean_over_fixed']:>9.4f}"
              f"  ACR {d['acr']:.4f} vs fixed {d['acr_fixed']:.4f} (ratio {d['acr_ratio']:.3f})")
    o = result["radius_oracle"]
    print(f"radius-mode lower bound: {o['images_all_top']} of {o['images']} images have all fixed-N samples on the top "
          f"class; reaching ACR >= {o['acr_goal']} x fixed needs >= {o['min_mean_samples_over_fixed']:.3f} x N samples "
          f"on average when the other images get no more than their fixed-N radius, >= "
          f"{o['min_mean_samples_over_fixed_others_at_upper']:.3f} x N when they get their upper-bound radius")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
