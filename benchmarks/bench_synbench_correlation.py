"""Benchmark: does the SynBench score rank encoders the way linear-probe accuracy does?

Trains a population of encoders at CPU scale on Fashion-MNIST, then for each one computes the SynBench
score of its penultimate representation (eps = 0, a_T = 0.7 and the other official thresholds) and
the clean test accuracy of a linear probe fitted on labelled training features, and reports
Spearman's rho between the two with a permutation p-value and a percentile bootstrap interval.

Population (default 3 architectures x 6 regimes = 18 encoders):

* architectures: ``mlp`` (zoo ``fmnist_mlp``, 784-64-64), ``cnn`` (zoo ``fmnist_cnn``, 16/32/32 convs + 64),
  ``wide_cnn`` (32/64/64 convs + 128 hidden units, same layout);
* regimes: ``untrained`` (random initialisation), ``clean`` (cross-entropy), ``noise`` (Gaussian
  augmentation, sigma 0.25), ``adversarial`` (l-inf PGD, eps 0.1, 3 steps), ``simclr`` (contrastive,
  :mod:`certify.contrastive`), ``adv_simclr`` (adversarial contrastive, l-inf eps 0.1, 3 PGD steps).
  Supervised and contrastive regimes get the same number of optimiser steps on the same subset.

    python benchmarks/bench_synbench_correlation.py                  # full population, default sizes
    python benchmarks/bench_synbench_correlation.py --steps 150 --n-synbench 512   # reduced sizes
    python benchmarks/bench_synbench_correlation.py --seeds 0,1 --steps 500 --full-separations --n-synbench 2048
    python benchmarks/bench_synbench_correlation.py --resume         # reuse encoders already in the JSON

Writes JSON (default benchmarks/results/bench_synbench_correlation.json, updated after every encoder),
a Markdown table next to it, and prints the table. The machine's load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from certify import attacks, contrastive, models
from certify import synbench as sb
from certify.data import load_dataset

ARCHS = ("mlp", "cnn", "wide_cnn")
REGIMES = ("untrained", "clean", "noise", "adversarial", "simclr", "adv_simclr")
NOISE_SIGMA = 0.25
ADV_EPS = 0.1
ADV_STEPS = 3


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------
def spearman(x, y) -> float:
    """Spearman's rank correlation of two equal-length samples (average ranks for ties); nan if constant."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def permutation_p_value(x, y, *, n_permutations: int = 20000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho under exchangeability of ``y`` given ``x``.

    ``p = (1 + #{perm: |rho_perm| >= |rho_obs|}) / (1 + n_permutations)``: with probability at most
    ``alpha`` this is <= alpha when x and y are independent (a valid Monte Carlo p-value).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    obs = abs(spearman(x, y))
    rng = np.random.default_rng(seed)
    rx = stats.rankdata(x)
    ry = stats.rankdata(y)
    rx_c = (rx - rx.mean()) / rx.std()
    perms = np.argsort(rng.random((n_permutations, y.size)), axis=1)
    ryp = ry[perms]
    ryp = (ryp - ryp.mean(axis=1, keepdims=True)) / ryp.std(axis=1, keepdims=True)
    rho = (ryp * rx_c).mean(axis=1)
    return float((1 + np.sum(np.abs(rho) >= obs - 1e-12)) / (1 + n_permutations))


def bootstrap_interval(x, y, *, n_boot: int = 5000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's rho (resampling (x, y) pairs; degenerate resamples dropped).

    An approximate ``level`` interval; with n ~ 20 pairs its coverage is only roughly nominal.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, x.size, x.size)
        r = spearman(x[i], y[i])
        if math.isfinite(r):
            vals.append(r)
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------------------
# encoders
# ----------------------------------------------------------------------------------------------
def build(arch: str, seed: int) -> models.ZooModel:
    if arch == "mlp":
        return models.build("fmnist_mlp", seed=seed)
    if arch == "cnn":
        return models.build("fmnist_cnn", seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = OrderedDict([
            ("conv1", nn.Conv2d(1, 32, 3, stride=2, padding=1)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(32, 64, 3, stride=2, padding=1)), ("relu2", nn.ReLU()),
            ("conv3", nn.Conv2d(64, 64, 3, stride=2, padding=1)), ("relu3", nn.ReLU()),
            ("flatten", nn.Flatten()), ("fc1", nn.Linear(64 * 4 * 4, 128)), ("relu4", nn.ReLU()),
            ("fc2", nn.Linear(128, 10))])
        return models.ZooModel(layers, arch="wide_cnn", input_shape=(1, 28, 28), num_classes=10,
                               feature_layer="relu4")


def train_supervised(model, x, y, *, regime: str, steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batch_gen = torch.Generator().manual_seed(seed + 1)
    noise_gen = torch.Generator().manual_seed(seed + 2)
    attack_gen = torch.Generator().manual_seed(seed + 3)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=batch_gen)
        xb, yb = x[idx], y[idx]
        if regime == "noise":
            xb = xb + NOISE_SIGMA * torch.randn(xb.shape, generator=noise_gen)
        elif regime == "adversarial":
            xb = attacks.pgd(model, xb, yb, eps=ADV_EPS, norm="linf", steps=ADV_STEPS, generator=attack_gen)
        model.train()
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def make_encoder(arch: str, regime: str, data, args, seed: int) -> tuple[nn.Module, dict]:
    x, y = data
    model = build(arch, seed)
    info: dict = {"steps": 0}
    t0 = time.perf_counter()
    if regime in ("clean", "noise", "adversarial"):
        losses = train_supervised(model, x, y, regime=regime, steps=args.steps, batch_size=args.batch_size,
                                  lr=args.lr, seed=seed)
        info = {"steps": args.steps, "final_loss": float(np.mean(losses[-max(1, len(losses) // 10):]))}
    elif regime in ("simclr", "adv_simclr"):
        res = contrastive.train_contrastive(
            model, x, steps=args.steps, mode="simclr" if regime == "simclr" else "adversarial",
            eps=0.0 if regime == "simclr" else ADV_EPS, pgd_steps=ADV_STEPS, batch_size=args.batch_size,
            lr=args.lr, seed=seed)
        info = {"steps": args.steps, "final_loss": res.final_loss}
    info["train_seconds"] = round(time.perf_counter() - t0, 2)
    model.eval()
    return model, info


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def correlation(rows: list[dict], key: str, *, seed: int) -> dict:
    x = [r["synbench"][key] for r in rows]
    y = [r["probe_accuracy"] for r in rows]
    if len(rows) < 3:
        return {"n": len(rows), "spearman_rho": float("nan")}
    lo, hi = bootstrap_interval(x, y, seed=seed)
    return {"n": len(rows), "spearman_rho": spearman(x, y), "permutation_p": permutation_p_value(x, y, seed=seed),
            "bootstrap_95": [lo, hi], "pearson_r": float(np.corrcoef(x, y)[0, 1])}


def table(result: dict) -> str:
    lines = ["| encoder | arch | regime | SynBench score (a_T 0.7) | probe accuracy | train s |",
             "|---|---|---|---|---|---|"]
    for r in result["encoders"]:
        lines.append(f"| {r['name']} | {r['arch']} | {r['regime']} | {r['synbench']['0.7']:.3f} | "
                     f"{r['probe_accuracy']:.3f} | {r['train']['train_seconds']:.0f} |")
    lines.append("")
    for key, c in result["correlation"].items():
        if "bootstrap_95" in c:
            lines.append(f"a_T = {key}: Spearman rho = {c['spearman_rho']:+.3f} (n = {c['n']}), permutation p = "
                         f"{c['permutation_p']:.4f}, 95% bootstrap interval [{c['bootstrap_95'][0]:+.2f}, "
                         f"{c['bootstrap_95'][1]:+.2f}]")
    c = result.get("correlation_trained_only")
    if c and "bootstrap_95" in c:
        lines.append(f"trained encoders only (no 'untrained'), a_T = 0.7: rho = {c['spearman_rho']:+.3f} "
                     f"(n = {c['n']}), "
                     f"permutation p = {c['permutation_p']:.4f}, 95% bootstrap interval [{c['bootstrap_95'][0]:+.2f}, "
                     f"{c['bootstrap_95'][1]:+.2f}]")
    for arch, c in result.get("within_architecture", {}).items():
        lines.append(f"within {arch}: rho = {c['spearman_rho']:+.3f} (n = {c['n']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--regimes", default=",".join(REGIMES))
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per trained encoder")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-pretrain", type=int, default=6000, help="training images for the encoders")
    p.add_argument("--n-probe-train", type=int, default=2000)
    p.add_argument("--n-probe-test", type=int, default=2000, help="held-out (test split) images for the probe")
    p.add_argument("--n-synbench", type=int, default=1024, help="synthetic train and test samples per separation")
    p.add_argument("--full-separations", action="store_true", help="49 separations instead of 24")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds; one encoder per (arch, regime, seed)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the data subsets and of SynBench's synthetic data")
    p.add_argument("--resume", action="store_true", help="keep encoders already in --out with the same settings")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" /
                                       "bench_synbench_correlation.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    archs, regimes = args.archs.split(","), args.regimes.split(",")
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    for a in archs:
        if a not in ARCHS:
            p.error(f"--archs: unknown architecture {a!r}; choose from {ARCHS}")
    for r in regimes:
        if r not in REGIMES:
            p.error(f"--regimes: unknown regime {r!r}; choose from {REGIMES}")

    settings = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "n_pretrain", "n_probe_train",
                                              "n_probe_test", "n_synbench", "full_separations", "seeds", "data_seed")}
    out = Path(args.out)
    done: dict[str, dict] = {}
    if args.resume and out.is_file():
        old = json.loads(out.read_text())
        if old.get("settings") == settings:
            done = {r["name"]: r for r in old["encoders"]}

    train = load_dataset("fashion-mnist", split="train")
    test = load_dataset("fashion-mnist", split="test")
    g = np.random.default_rng(args.data_seed)
    perm = g.permutation(len(train))
    pre_idx = perm[: args.n_pretrain]
    probe_idx = perm[args.n_pretrain: args.n_pretrain + args.n_probe_train]
    test_idx = g.permutation(len(test))[: args.n_probe_test]
    x_pre, y_pre = train.x[pre_idx], train.y[pre_idx]
    probe_train, probe_test = train.subset(probe_idx), test.subset(test_idx)
    seps = sb.DEFAULT_SEPARATIONS if args.full_separations else sb.QUICK_SEPARATIONS

    result = {"benchmark": "bench_synbench_correlation", "settings": settings, "archs": archs, "regimes": regimes,
              "regime_details": {"noise_sigma": NOISE_SIGMA, "adv_eps_linf": ADV_EPS, "adv_pgd_steps": ADV_STEPS},
              "synbench": {"eps": 0.0, "layer": "penultimate", "n_separations": len(seps)},
              "probe": {"eps": 0.0, "layer": "penultimate", "train": "fashion-mnist train (disjoint from pretraining)",
                        "test": "fashion-mnist test"},
              "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                          "cpus": os.cpu_count(), "load_before": os.getloadavg()},
              "encoders": []}
    t_start = time.perf_counter()
    for arch, regime, seed in ((a, r, s) for s in seeds for a in archs for r in regimes):
        name = f"{arch}/{regime}" + (f"/seed{seed}" if len(seeds) > 1 else "")
        if name in done:
            result["encoders"].append(done[name])
            continue
        model, info = make_encoder(arch, regime, (x_pre, y_pre), args, seed)
        t0 = time.perf_counter()
        syn = sb.evaluate(model, (1, 28, 28), (0.0,), n_train=args.n_synbench, n_test=args.n_synbench,
                          separations=seps, layer="penultimate", seed=args.data_seed, name=name, verbose=False)
        probe = sb.robust_probe(model, probe_train, probe_test, (0.0,), layer="penultimate", seed=args.data_seed,
                                name=name, verbose=False)
        row = {"name": name, "arch": arch, "regime": regime, "seed": seed, "train": info,
               "synbench": {str(a): syn.score(0.0, a) for a in syn.valid_thresholds()},
               "feature_dim": syn.feature_dim, "probe_accuracy": probe.clean_accuracy[0],
               "probe_converged": probe.converged[0], "eval_seconds": round(time.perf_counter() - t0, 2)}
        result["encoders"].append(row)
        print(f"{name:24s} score@0.7 {row['synbench']['0.7']:.3f}  probe {row['probe_accuracy']:.3f}  "
              f"train {info['train_seconds']:.0f} s  eval {row['eval_seconds']:.0f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(result, partial=True), indent=1))
    rows = result["encoders"]
    result["correlation"] = {a: correlation(rows, a, seed=args.data_seed) for a in ("0.6", "0.7", "0.8", "0.9")}
    trained = [r for r in rows if r["regime"] != "untrained"]
    result["correlation_trained_only"] = correlation(trained, "0.7", seed=args.data_seed)
    result["within_architecture"] = {
        a: {"n": len(sub), "spearman_rho": spearman([r["synbench"]["0.7"] for r in sub],
                                                    [r["probe_accuracy"] for r in sub])}
        for a in archs if len(sub := [r for r in rows if r["arch"] == a]) >= 3}
    result["machine"]["load_after"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    out.write_text(json.dumps(result, indent=1))
    text = table(result)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"load average before {result['machine']['load_before']}, after {result['machine']['load_after']}; "
          f"{result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
