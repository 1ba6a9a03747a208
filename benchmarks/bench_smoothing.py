"""Benchmark: randomized-smoothing throughput, memory, first-order overhead and first-order radius gains.

Four measurements, all on the shipped noise-trained Fashion-MNIST CNNs, in one run (ratios are only
meaningful within one run: the CPU may be shared, so the load average is recorded too):

1. throughput: noisy samples/s of ``Smooth.certify`` (zeroth order) vs raw batched forward passes of the
   same model on the same number of noisy inputs (pre-generated, so only the forward pass + argmax is
   timed), at batch sizes 256..2000, certify and forward alternating, best of ``--repeats`` and the median of
   the per-repeat ratios. Also reported (measured in a pass of its own): forward + noise generation in one
   thread (the least a sampler without a helper thread must do). ``--throughput-processes K`` repeats this in
   K fresh processes and reports the median over them (one process's speed depends on its heap layout).
   Ratios from wall time and from process CPU time (all threads; much less disturbed by other processes on a
   shared machine). Target: certify / forward >= 0.95.
   The benchmark keeps glibc malloc's freed memory (``certify.allocator.keep_freed_memory``, as the certify
   command does) unless ``--default-malloc``: with the defaults the forward pass itself runs up to ~3x slower in
   some processes (page faults), which hides every other cost.
1b. allocator: forward and certify throughput at batch 500 in fresh processes, malloc defaults vs kept.
2. memory: peak RSS growth and tracemalloc peak of one first-order ``certify`` at n_estimate 10,000 vs
   100,000 (each in a fresh subprocess). Target: does not grow with n.
3. first-order overhead: certify time with ``first_order=True`` / ``False`` at the same n_estimate
   (interleaved repeats, median of the per-pair ratios of wall time and of process CPU time). Target <= 1.10.
4. radius gains: on 100 Fashion-MNIST test images (every 100th) at sigma 0.25 and 0.5 (checkpoints
   fmnist_cnn_sigma0.25 / fmnist_cnn_sigma0.50), the mean ratio of each first-order radius to the radius a
   plain zeroth-order certificate (same n, same alpha, same seed) implies for that norm
   (l2: R, l1: R, l-inf: R / sqrt(D)), over images certified by both. The first-order certificate spends
   half of alpha on its gradient bounds, so its p_lower is lower than the plain certificate's; the ratio
   to the certificate's own zeroth-order radius (same p_lower) is reported too.

    python benchmarks/bench_smoothing.py                 # full: n_estimate 10,000-20,000, 12 repeats
    python benchmarks/bench_smoothing.py --quick         # smaller n and fewer repeats (a few minutes)

Writes JSON (default benchmarks/results/bench_smoothing.json) and prints a table. Not part of the tests.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

NORMS = ("l2", "l1", "linf")


def _load(sigma_name: str):
    from certify import models

    return models.pretrained(sigma_name)


def _images(n: int, skip: int):
    from certify.data import load_dataset

    ds = load_dataset("fashion-mnist", split="test")
    idx = list(range(0, len(ds), skip))[:n]
    return ds, idx


def bench_throughput(args, model, x) -> list[dict]:
    from certify.smoothing import Smooth

    smooth = Smooth(model, num_classes=10, sigma=0.25)
    n_select, n_estimate = 100, args.n_throughput
    total = n_select + n_estimate
    out = []
    gen = torch.Generator().manual_seed(0)
    times: dict[int, dict[str, list[float]]] = {bs: {"certify": [], "forward": [], "forward+noise": []}
                                                for bs in args.batch_sizes}
    cpu: dict[int, dict[str, list[float]]] = {bs: {"certify": [], "forward": [], "forward+noise": []}
                                              for bs in args.batch_sizes}

    def timed(bs, name, fn, rep):
        c, t = time.process_time(), time.perf_counter()
        fn(rep)
        times[bs][name].append(time.perf_counter() - t)
        cpu[bs][name].append(time.process_time() - c)

    def run_forward_noise(rep, bs):
        buf = torch.empty((bs, *x.shape))
        with torch.inference_mode():
            for s in range(0, total, bs):
                z = buf[: min(bs, total - s)].normal_(generator=gen)
                model(x + 0.25 * z).argmax(1)

    # 1. certify and the forward pass, alternating (so that load changes hit both alike), every batch size
    for bs in args.batch_sizes:
        noisy = [x + 0.25 * torch.randn((min(bs, total - s), *x.shape), generator=gen)
                 for s in range(0, total, bs)]

        def run_certify(rep, bs=bs):
            smooth.certify(x, n_select=n_select, n_estimate=n_estimate, alpha=0.001, batch_size=bs, seed=rep)

        def run_forward(rep, noisy=noisy):
            with torch.inference_mode():
                for batch in noisy:
                    model(batch).argmax(1)

        runs = [("certify", run_certify), ("forward", run_forward)]
        for _, fn in runs:  # warm-up
            fn(0)
        for rep in range(args.repeats):
            k = rep % len(runs)
            for name, fn in runs[k:] + runs[:k]:
                timed(bs, name, fn, rep)
    # 2. forward + noise in one thread (a reference only), after all pairs: interleaved with them, its fresh
    # per-batch tensors lowered the certify / forward ratios measured after it by ~3 % (in this process's heap)
    for bs in args.batch_sizes:
        run_forward_noise(0, bs)  # warm-up
        for rep in range(args.repeats):
            timed(bs, "forward+noise", lambda rep, bs=bs: run_forward_noise(rep, bs), rep)
    for bs in args.batch_sizes:
        t_cert, t_fwd, t_fwd_noise = times[bs]["certify"], times[bs]["forward"], times[bs]["forward+noise"]
        # best of the repeats: the least-disturbed measurement of each (the CPU may be shared)
        row = {
            "batch_size": bs, "samples": total, "repeats": args.repeats,
            "certify_samples_per_s": total / min(t_cert),
            "forward_samples_per_s": total / min(t_fwd),
            "forward_plus_noise_samples_per_s": total / min(t_fwd_noise),
            "certify_samples_per_s_median": total / statistics.median(t_cert),
            "forward_samples_per_s_median": total / statistics.median(t_fwd),
        }
        # CPU time (all threads of this process) is far less sensitive to other processes than wall time
        c_cert, c_fwd, c_fwd_noise = cpu[bs]["certify"], cpu[bs]["forward"], cpu[bs]["forward+noise"]
        row["certify_samples_per_cpu_s"] = total / min(c_cert)
        row["forward_samples_per_cpu_s"] = total / min(c_fwd)
        row["ratio_vs_forward_cpu"] = min(c_fwd) / min(c_cert)
        row["ratio_vs_forward_plus_noise_cpu"] = min(c_fwd_noise) / min(c_cert)
        row["ratio_vs_forward"] = row["certify_samples_per_s"] / row["forward_samples_per_s"]
        # the same repeat's certify and forward runs follow each other: the median of these ratios is the least
        # sensitive to slow drifts of the machine's speed
        paired = [f / c for f, c in zip(t_fwd, t_cert)]
        row["ratio_vs_forward_paired_median"] = statistics.median(paired)
        row["ratio_vs_forward_paired"] = paired
        row["ratio_vs_forward_plus_noise"] = row["certify_samples_per_s"] / row["forward_plus_noise_samples_per_s"]
        out.append(row)
        print(f"  batch {bs:5d}: certify {row['certify_samples_per_s']:8.0f}/s  "
              f"forward {row['forward_samples_per_s']:8.0f}/s"
              f"  forward+noise {row['forward_plus_noise_samples_per_s']:8.0f}/s  ratio {row['ratio_vs_forward']:.3f}"
              f" / {row['ratio_vs_forward_plus_noise']:.3f}"
              f"  (paired median {row['ratio_vs_forward_paired_median']:.3f};"
              f" CPU-time ratio {row['ratio_vs_forward_cpu']:.3f} / "
              f"{row['ratio_vs_forward_plus_noise_cpu']:.3f})", flush=True)
    return out


def memory_child(n_estimate: int, batch_size: int, threads: int) -> dict:
    """Run in a fresh process: peak RSS growth and tracemalloc peak of one first-order certify."""
    torch.set_num_threads(threads)
    from certify.smoothing import Smooth

    model = _load("fmnist_cnn_sigma0.25")
    ds, _ = _images(1, 1)
    x = ds[0][0]
    smooth = Smooth(model, num_classes=10, sigma=0.25)
    # warm-up at n = one batch: allocates every buffer of this batch size once
    smooth.certify(x, n_select=100, n_estimate=batch_size, alpha=0.001, batch_size=batch_size, seed=0,
                   first_order=True)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t = time.perf_counter()
    smooth.certify(x, n_select=100, n_estimate=n_estimate, alpha=0.001, batch_size=batch_size, seed=1,
                   first_order=True)
    seconds = time.perf_counter() - t
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n_estimate": n_estimate, "batch_size": batch_size, "rss_before_mb": base_kb / 1024,
            "rss_peak_mb": peak_kb / 1024, "rss_growth_mb": (peak_kb - base_kb) / 1024,
            "tracemalloc_peak_mb": py_peak / 2 ** 20, "seconds": seconds}


def throughput_in_processes(args) -> list[list[dict]]:
    """The throughput part in ``args.throughput_processes`` fresh processes, one after another."""
    runs = []
    for k in range(args.throughput_processes):
        cmd = [sys.executable, __file__, "--throughput-child", "--threads", str(args.threads), "--repeats",
               str(args.repeats), "--n-throughput", str(args.n_throughput), "--batch-sizes",
               *map(str, args.batch_sizes)] + (["--default-malloc"] if args.default_malloc else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"  process {k + 1}: paired median certify / forward "
              + ", ".join(f"batch {r['batch_size']} {r['ratio_vs_forward_paired_median']:.3f}" for r in runs[-1]),
              flush=True)
    return runs


def median_over_processes(runs: list[list[dict]]) -> list[dict]:
    """Per batch size: the median over processes of every number of :func:`bench_throughput`'s rows, and the
    per-process paired medians."""
    out = []
    for rows in zip(*runs):
        row = {"batch_size": rows[0]["batch_size"], "samples": rows[0]["samples"], "repeats": rows[0]["repeats"],
               "processes": len(rows)}
        for key, value in rows[0].items():
            if isinstance(value, float):
                row[key] = statistics.median(r[key] for r in rows)
        row["ratio_vs_forward_paired_median_per_process"] = [r["ratio_vs_forward_paired_median"] for r in rows]
        out.append(row)
    return out


def allocator_child(mode: str, threads: int) -> dict:
    """Run in a fresh process: forward-pass and certify throughput at batch 500 with glibc malloc's defaults
    ("default") or with freed memory kept ("keep"), and the page faults of one forward pass. No dataset is loaded
    (a seeded random image): a process that has not yet made large allocations shows the defaults' worst case."""
    from certify.allocator import keep_freed_memory
    from certify.smoothing import Smooth

    kept = keep_freed_memory() if mode == "keep" else False
    torch.set_num_threads(threads)
    model = _load("fmnist_cnn_sigma0.25")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, 28, 28), generator=gen)
    noisy = [x + 0.25 * torch.randn((500, *x.shape), generator=gen) for _ in range(20)]
    smooth = Smooth(model, num_classes=10, sigma=0.25)
    fwd, cert, faults = [], [], []
    with torch.inference_mode():
        for rep in range(6):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = time.perf_counter()
            for batch in noisy:
                model(batch).argmax(1)
            fwd.append(time.perf_counter() - t)
            faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / len(noisy))
            t = time.perf_counter()
            smooth.certify(x, n_select=100, n_estimate=9_900, alpha=0.001, batch_size=500, seed=rep)
            cert.append(time.perf_counter() - t)
    return {"mode": mode, "malloc_kept": kept, "forward_samples_per_s": 10_000 / min(fwd[1:]),
            "certify_samples_per_s": 10_000 / min(cert[1:]), "faults_per_forward": statistics.median(faults[1:])}


def bench_allocator(args) -> list[dict]:
    """Forward and certify speed in fresh processes, glibc malloc defaults vs freed memory kept (alternating)."""
    out = []
    for k in range(2 * args.allocator_processes):
        mode = ("default", "keep")[k % 2]
        cmd = [sys.executable, __file__, "--allocator-child", mode, "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        out.append(row)
        print(f"  {mode:7s}: forward {row['forward_samples_per_s']:8.0f}/s  certify {row['certify_samples_per_s']:8.0f}"
              f"/s  page faults per forward pass {row['faults_per_forward']:.0f}", flush=True)
    return out


def bench_memory(args) -> list[dict]:
    out = []
    for n in (10_000, 100_000):
        cmd = [sys.executable, __file__, "--memory-child", str(n), "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        out.append(row)
        print(f"  n_estimate {n:7d}: peak RSS {row['rss_peak_mb']:.1f} MB (growth over warm-up "
              f"{row['rss_growth_mb']:.1f} MB), tracemalloc peak {row['tracemalloc_peak_mb']:.2f} MB, "
              f"{row['seconds']:.1f} s", flush=True)
    return out


def bench_first_order_time(args, model, images) -> dict:
    from certify.smoothing import Smooth

    smooth = Smooth(model, num_classes=10, sigma=0.25)
    ratios, t0s, t1s, cpu_ratios = [], [], [], []
    kw = dict(n_select=100, n_estimate=args.n_overhead, alpha=0.001, batch_size=1000)
    smooth.certify(images[0], **kw, seed=0, first_order=True)  # warm-up
    for rep in range(args.overhead_repeats):
        for i, x in enumerate(images):
            order = (False, True) if (rep + i) % 2 == 0 else (True, False)
            times, cpu = {}, {}
            for fo in order:
                c, t = time.process_time(), time.perf_counter()
                smooth.certify(x, **kw, seed=rep, first_order=fo)
                times[fo] = time.perf_counter() - t
                cpu[fo] = time.process_time() - c
            t0s.append(times[False])
            t1s.append(times[True])
            ratios.append(times[True] / times[False])
            # process CPU time (all threads): far less disturbed by other processes on a shared machine
            cpu_ratios.append(cpu[True] / cpu[False])
    # the part of the extra time that does not grow with n (gradient bounds + radius solvers), from
    # certificates at n_estimate = one batch
    small = dict(kw, n_estimate=kw["batch_size"])
    fixed = []
    for rep in range(3 * args.overhead_repeats):
        x = images[rep % len(images)]
        t = time.perf_counter()
        smooth.certify(x, **small, seed=rep, first_order=False)
        t0 = time.perf_counter() - t
        t = time.perf_counter()
        smooth.certify(x, **small, seed=rep, first_order=True)
        fixed.append(time.perf_counter() - t - t0)
    res = {"n_estimate": args.n_overhead, "pairs": len(ratios), "median_ratio": statistics.median(ratios),
           "median_ratio_cpu": statistics.median(cpu_ratios),
           "ratio_of_total_time": sum(t1s) / sum(t0s), "zeroth_s_median": statistics.median(t0s),
           "first_s_median": statistics.median(t1s), "fixed_extra_s_median": statistics.median(fixed)}
    print(f"  first/zeroth certify time at n_estimate {args.n_overhead}: median ratio {res['median_ratio']:.3f}, "
          f"total-time ratio {res['ratio_of_total_time']:.3f}, CPU-time median ratio {res['median_ratio_cpu']:.3f} "
          f"({len(ratios)} interleaved pairs); extra time that "
          f"does not grow with n: {res['fixed_extra_s_median']:.3f} s per certificate", flush=True)
    return res


def bench_radii(args) -> list[dict]:
    from certify.smoothing import Smooth

    ds, idx = _images(args.images, args.image_skip)
    out = []
    for sigma, name in ((0.25, "fmnist_cnn_sigma0.25"), (0.5, "fmnist_cnn_sigma0.50")):
        smooth = Smooth(_load(name), num_classes=10, sigma=sigma)
        dim = None
        ratios = {n: [] for n in NORMS}
        own = {n: [] for n in NORMS}
        both = abst0 = abst1 = 0
        t = time.perf_counter()
        for i in idx:
            x, _ = ds[i]
            dim = x.numel()
            kw = dict(n_select=100, n_estimate=args.n_radii, alpha=0.001, batch_size=1000, seed=i)
            c0 = smooth.certify(x, **kw, first_order=False)
            c1 = smooth.certify(x, **kw, first_order=True)
            abst0 += c0.abstained
            abst1 += c1.abstained
            if c0.abstained or c1.abstained or c0.radius <= 0 or c1.radius <= 0:
                continue
            both += 1
            for n in NORMS:
                scale = 1.0 / math.sqrt(dim) if n == "linf" else 1.0
                ratios[n].append(c1.radii[n] / (c0.radius * scale))
                own[n].append(c1.radii[n] / (c1.radius * scale))
        row = {"sigma": sigma, "checkpoint": name, "images": len(idx), "n_estimate": args.n_radii,
               "certified_by_both": both, "abstained_zeroth": abst0, "abstained_first": abst1,
               "seconds": time.perf_counter() - t}
        for n in NORMS:
            r = np.array(ratios[n])
            row[f"{n}_mean_ratio"] = float(r.mean()) if len(r) else float("nan")
            row[f"{n}_median_ratio"] = float(np.median(r)) if len(r) else float("nan")
            row[f"{n}_frac_gain"] = float((r > 1.0 + 1e-9).mean()) if len(r) else float("nan")
            row[f"{n}_mean_ratio_vs_own_zeroth"] = float(np.mean(own[n])) if own[n] else float("nan")
        out.append(row)
        print(f"  sigma {sigma}: " + "  ".join(f"{n} mean {row[f'{n}_mean_ratio']:.3f} (gain on "
                                               f"{row[f'{n}_frac_gain']:.0%})" for n in NORMS)
              + f"  [{both}/{len(idx)} certified by both, {row['seconds']:.0f} s]", flush=True)
    return out


def print_table(result: dict) -> None:
    """The summary table of a benchmark result."""
    print("\n| measurement | value | target |\n|---|---|---|")
    for row in result.get("throughput", []):
        if "processes" in row:
            print(f"| certify / forward, batch {row['batch_size']}, median of {row['processes']} processes | paired "
                  f"median {row['ratio_vs_forward_paired_median']:.3f} (per process "
                  + ", ".join(f"{v:.3f}" for v in row["ratio_vs_forward_paired_median_per_process"])
                  + f"), best-of {row['ratio_vs_forward']:.3f} | >= 0.95 |")
            continue
        print(f"| certify / forward samples/s, batch {row['batch_size']} | wall {row['ratio_vs_forward']:.3f} "
              f"(paired median {row['ratio_vs_forward_paired_median']:.3f}), "
              f"CPU time {row['ratio_vs_forward_cpu']:.3f} (vs forward+noise: wall "
              f"{row['ratio_vs_forward_plus_noise']:.3f}, CPU {row['ratio_vs_forward_plus_noise_cpu']:.3f}; "
              f"{row['certify_samples_per_s']:.0f}/s) | >= 0.95 |")
    if "allocator" in result:
        for mode in ("default", "keep"):
            rows = [r for r in result["allocator"] if r["mode"] == mode]
            print(f"| malloc {mode}: forward / certify samples/s, batch 500 ({len(rows)} processes) | "
                  + ", ".join(f"{r['forward_samples_per_s']:.0f} / {r['certify_samples_per_s']:.0f}" for r in rows)
                  + " | (report) |")
    if "memory" in result:
        m10, m100 = result["memory"]
        print(f"| peak RSS growth n=10k / n=100k (MB) | {m10['rss_growth_mb']:.1f} / {m100['rss_growth_mb']:.1f} "
              f"| no growth with n |")
        print(f"| tracemalloc peak n=10k / n=100k (MB) | {m10['tracemalloc_peak_mb']:.2f} / "
              f"{m100['tracemalloc_peak_mb']:.2f} | no growth with n |")
    if "first_order_overhead" in result:
        o = result["first_order_overhead"]
        print(f"| first / zeroth certify time (n={o['n_estimate']}) | {o['median_ratio']:.3f}, CPU time "
              f"{o['median_ratio_cpu']:.3f} (fixed extra "
              f"{o['fixed_extra_s_median']:.3f} s; zeroth {o['zeroth_s_median']:.3f} s) | <= 1.10 |")
    for row in result.get("radius_ratios", []):
        print(f"| mean first/zeroth radius, sigma {row['sigma']} (n={row['n_estimate']}, {row['certified_by_both']} "
              f"imgs) | " + ", ".join(f"{n} {row[f'{n}_mean_ratio']:.3f}" for n in NORMS)
              + " (vs own zeroth: " + ", ".join(f"{row[f'{n}_mean_ratio_vs_own_zeroth']:.3f}" for n in NORMS)
              + ") | (report) |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller n, fewer repeats and images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 500, 1000, 2000])
    p.add_argument("--n-throughput", type=int, default=None, help="n_estimate of the throughput runs")
    p.add_argument("--n-overhead", type=int, default=None, help="n_estimate of the first-order overhead runs")
    p.add_argument("--overhead-repeats", type=int, default=None,
                   help="passes over the 3 images in the first-order overhead part (pairs = 3 x this; default 10)")
    p.add_argument("--n-radii", type=int, default=None, help="n_estimate of the radius-ratio runs")
    p.add_argument("--images", type=int, default=100, help="test images for the radius ratios")
    p.add_argument("--image-skip", type=int, default=100)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--parts", nargs="+", default=["throughput", "allocator", "memory", "overhead", "radii"],
                   choices=["throughput", "allocator", "memory", "overhead", "radii"])
    p.add_argument("--throughput-processes", type=int, default=1,
                   help="run the throughput part in this many fresh processes, one after another, and report the "
                        "median over them (the speed of one process depends on its heap layout: a few %%)")
    p.add_argument("--allocator-processes", type=int, default=4,
                   help="fresh processes per malloc setting in the allocator part")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_smoothing.json"))
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc malloc's defaults (by default the benchmark, like the certify command, keeps "
                        "freed memory: certify.allocator)")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--allocator-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--throughput-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.allocator_child is not None:
        print(json.dumps(allocator_child(args.allocator_child, args.threads)))
        return 0
    from certify.allocator import keep_freed_memory

    malloc_kept = False if args.default_malloc else keep_freed_memory()
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, 1000, args.threads)))
        return 0
    quick = args.quick
    args.n_throughput = args.n_throughput or (4_000 if quick else 10_000)
    args.n_overhead = args.n_overhead or (5_000 if quick else 20_000)
    args.n_radii = args.n_radii or (2_000 if quick else 10_000)
    args.repeats = args.repeats or (6 if quick else 12)
    args.overhead_repeats = args.overhead_repeats or (2 if quick else 10)
    torch.set_num_threads(args.threads)

    model = _load("fmnist_cnn_sigma0.25")
    ds, idx = _images(3, 1000)
    images = [ds[i][0] for i in idx]
    result = {"settings": {k: v for k, v in vars(args).items() if k != "memory_child"},
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads,
                          "torch": torch.__version__, "malloc_kept": malloc_kept,
                          "loadavg_start": os.getloadavg()}}
    t_all = time.perf_counter()
    if args.throughput_child:
        print(json.dumps(bench_throughput(args, model, images[0])))
        return 0
    if "throughput" in args.parts:
        print("throughput (noisy samples/s), certify vs forward-only / forward+noise:", flush=True)
        if args.throughput_processes > 1:
            result["throughput_processes"] = throughput_in_processes(args)
            result["throughput"] = median_over_processes(result["throughput_processes"])
        else:
            result["throughput"] = bench_throughput(args, model, images[0])
    if "allocator" in args.parts:
        print("glibc malloc defaults vs freed memory kept (fresh processes, batch 500):", flush=True)
        result["allocator"] = bench_allocator(args)
    if "memory" in args.parts:
        print("memory of one first-order certify:", flush=True)
        result["memory"] = bench_memory(args)
    if "overhead" in args.parts:
        print("first-order overhead:", flush=True)
        result["first_order_overhead"] = bench_first_order_time(args, model, images)
    if "radii" in args.parts:
        print("first-order / zeroth-order radius ratios:", flush=True)
        result["radius_ratios"] = bench_radii(args)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - t_all
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print_table(result)
    print(f"\nwrote {out} ({result['seconds']:.0f} s; load average {result['machine']['loadavg_start'][0]:.1f} -> "
          f"{result['machine']['loadavg_end'][0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
