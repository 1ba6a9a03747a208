"""Benchmark: floating-point sound smoothing (lattice noise) vs the default float Gaussian noise.

On Fashion-MNIST test images (every ``--image-skip``-th, ``--images`` of them) with the shipped noise-trained
CNN at sigma 0.25, each image is certified by ``Smooth(model, 10, sigma)`` and by
``Smooth(model, 10, sigma, sound=True)`` with the same n_select, n_estimate, alpha and seed; the two modes
alternate which goes first per image. Reported, from one run (the CPU may be shared, so ratios within the
run matter and the load average is recorded):

* throughput: noisy samples per second of each mode (wall time and process CPU time); ratio sound / default.
  Goal: >= 0.8.
* radii: ACR (mean certified l2 radius, 0 for abstentions and wrong labels) of each mode, their relative
  difference (goal: within 2 %), certified accuracy at a few radii, and how many labels/abstentions differ.

    python benchmarks/bench_sound.py                     # 100 images, n_estimate 10,000
    python benchmarks/bench_sound.py --n-estimate 2000 --images 20   # quick

Writes JSON (default benchmarks/results/bench_sound.json) and prints a table. Not part of the tests.
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

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def _certify(smooth, x, args, seed):
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    cert = smooth.certify(x, n_select=args.n_select, n_estimate=args.n_estimate, alpha=args.alpha,
                          batch_size=args.batch_size, seed=seed)
    return cert, time.perf_counter() - t_wall, time.process_time() - t_cpu


def run(args) -> dict:
    from certify import models
    from certify.data import load_dataset
    from certify.smoothing import Smooth

    torch.set_num_threads(args.threads)
    model = models.pretrained(args.checkpoint)
    sigma = float(models.pretrained_info(args.checkpoint)["sigma"])
    ds = load_dataset("fashion-mnist", split="test")
    indices = list(range(0, len(ds), args.image_skip))[:args.images]
    modes = {"default": Smooth(model, 10, sigma), "sound": Smooth(model, 10, sigma, sound=True)}
    x0 = ds[indices[0]][0]
    for smooth in modes.values():  # warm-up (thresholds, tables, first forward)
        smooth.certify(x0, n_select=10, n_estimate=args.batch_size, alpha=args.alpha,
                       batch_size=args.batch_size, seed=0)
    load_before = os.getloadavg()
    rows = []
    for k, idx in enumerate(indices):
        x, label = ds[idx]
        order = ("default", "sound") if k % 2 == 0 else ("sound", "default")
        row = {"idx": idx, "label": int(label)}
        for mode in order:
            cert, wall, cpu = _certify(modes[mode], x, args, seed=args.seed + idx)
            correct = (not cert.abstained) and cert.label == int(label)
            row[mode] = {"pred": cert.label, "abstained": cert.abstained, "radius": cert.radius,
                         "certified_radius": cert.radius if correct else 0.0, "p_lower": cert.p_lower,
                         "wall_s": wall, "cpu_s": cpu}
        rows.append(row)
    load_after = os.getloadavg()
    samples = len(indices) * (args.n_select + args.n_estimate)
    summary = {}
    for mode in modes:
        wall = sum(r[mode]["wall_s"] for r in rows)
        cpu = sum(r[mode]["cpu_s"] for r in rows)
        radii = np.array([r[mode]["certified_radius"] for r in rows])
        summary[mode] = {
            "samples_per_s_wall": samples / wall, "samples_per_s_cpu": samples / cpu,
            "acr": float(radii.mean()),
            "certified_accuracy": {str(t): float(np.mean(radii > t)) for t in RADII},
            "abstain_rate": float(np.mean([r[mode]["abstained"] for r in rows])),
        }
    d, s = summary["default"], summary["sound"]
    ratios = {
        "throughput_wall": s["samples_per_s_wall"] / d["samples_per_s_wall"],
        "throughput_cpu": s["samples_per_s_cpu"] / d["samples_per_s_cpu"],
        "acr_relative_difference": (s["acr"] - d["acr"]) / d["acr"] if d["acr"] > 0 else float("nan"),
        "labels_differ": int(sum((r["sound"]["pred"] != r["default"]["pred"]) or
                                 (r["sound"]["abstained"] != r["default"]["abstained"]) for r in rows)),
    }
    return {
        "settings": {"checkpoint": args.checkpoint, "sigma": sigma, "images": len(indices),
                     "image_skip": args.image_skip, "n_select": args.n_select, "n_estimate": args.n_estimate,
                     "alpha": args.alpha, "batch_size": args.batch_size, "threads": args.threads,
                     "seed": args.seed},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "summary": summary, "ratios": ratios, "rows": rows,
    }


def print_table(res: dict) -> None:
    st, sm, ra = res["settings"], res["summary"], res["ratios"]
    print(f"{st['images']} Fashion-MNIST images, sigma {st['sigma']}, n_estimate {st['n_estimate']:,}, "
          f"{st['threads']} thread(s); load {res['machine']['loadavg_before'][0]:.2f} -> "
          f"{res['machine']['loadavg_after'][0]:.2f}")
    print(f"{'mode':<9}{'samples/s wall':>16}{'samples/s cpu':>15}{'ACR':>9}{'abstain':>9}  certified acc at "
          + " ".join(f"{t:g}" for t in RADII))
    for mode, m in sm.items():
        acc = " ".join(f"{m['certified_accuracy'][str(t)]:.2f}" for t in RADII)
        print(f"{mode:<9}{m['samples_per_s_wall']:>16,.0f}{m['samples_per_s_cpu']:>15,.0f}{m['acr']:>9.4f}"
              f"{m['abstain_rate']:>9.2f}  {acc}")
    print(f"sound / default throughput: {ra['throughput_wall']:.3f} (wall), {ra['throughput_cpu']:.3f} (cpu); "
          f"ACR difference {100 * ra['acr_relative_difference']:+.2f} %; predictions differ on "
          f"{ra['labels_differ']} images")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="fmnist_cnn_sigma0.25")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--image-skip", type=int, default=100)
    p.add_argument("--n-select", type=int, default=100)
    p.add_argument("--n-estimate", type=int, default=10_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_sound.json"))
    args = p.parse_args(argv)
    res = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
