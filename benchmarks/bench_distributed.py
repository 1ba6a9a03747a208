"""Benchmark: certification throughput on Ray workers vs in-process, and a local multi-node Ray cluster.

On the shipped ``fmnist_cnn_sigma0.25`` at sigma 0.25, ``--n`` Fashion-MNIST test images (every ``--skip``-th),
n_estimate ``--n-estimate`` (default 10,000), zeroth order, one torch thread per process:

1. in-process: :func:`certify.runs.certify_one` over the images (the path of ``certify_dataset`` without workers),
   twice: with the default ``Smooth`` (on CPU it draws the next batch's noise in a helper thread, i.e. it uses a
   second core) and with ``Smooth(noise_thread=False)``, the exact configuration of a Ray worker (each actor
   reserves one CPU from Ray, so it draws noise in its own thread). The Ray overhead is measured against the
   latter (same work, same cores); the ratio to the default in-process path is reported too;
2. workers = 1 and 2 on a local Ray instance (``ray.init(num_cpus=2)``): examples/s from the first task to the
   last row, ``--repeats`` runs of each (alternating; the median run is reported, with every run's rate and the
   speed-up of each pair); the start-up (``ray.init``, then starting the actors and loading the model) is measured
   separately and excluded;
3. sample chunks: ``--chunk-images`` images (default 3) at n_estimate ``--chunk-n`` (default 50,000) on 2 workers,
   one task per image vs one task per chunk of 10,000 samples (``certify_rows_on_ray(chunks=...)``, the path of
   ``--sample-chunks``): with fewer images than a multiple of the workers, whole-image tasks leave a worker idle
   at the end; the rows must be identical (and equal to the in-process rows);
4. a local multi-node cluster: ``ray start --head`` plus a second ``ray start --address`` node on this machine
   (both on 127.0.0.1, one CPU each, their own temp dir), certified with ``ray_address`` and 2 workers; both
   nodes are stopped afterwards (their ``ray start --block`` processes are terminated).

Every distributed run's rows are compared with the in-process rows (all columns but ``time``). Also reported per
run: the mean seconds one example took inside its process (the rows' ``time``; it grows when the cores are
shared with other work) and the busy fraction = sum of those times / (workers x wall time): close to 1 means
the workers never waited for the driver or Ray, so a speed-up below the worker count comes from CPU contention.
Goals: workers=2 >= 1.7x workers=1; Ray overhead at workers=1 <= 10 % of in-process (rate ratio >= 0.9) with the
same resources (one CPU).
Batch size: default 200. At the command's default 1000 a batch's activations (tens of MB per conv layer) do not
fit in the cache, so two workers on two cores compete for memory bandwidth: each example takes ~12-16 % longer
than with one busy core even in two plain processes without Ray (~6-8 % at 200), which caps the speed-up there;
the part "plain processes" measures this (one process alone, then two side by side, no Ray).
Ratios are only meaningful within one run (the CPU may be shared): the load average is recorded.

    python benchmarks/bench_distributed.py                 # N = 10,000, 40 images
    python benchmarks/bench_distributed.py --n 8 --n-estimate 2000 --no-cluster   # a quick check

Writes JSON (default benchmarks/results/bench_distributed.json) and prints a table. Not part of the tests.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from certify import models  # noqa: E402
from certify.allocator import MALLOC_ENV  # noqa: E402
from certify.data import load_dataset  # noqa: E402
from certify.distributed import certify_rows_on_ray, worker_runtime_env  # noqa: E402
from certify.rundir import model_fingerprint  # noqa: E402
from certify.runs import certify_one  # noqa: E402
from certify.smoothing import Smooth  # noqa: E402

CHECKPOINT = "fmnist_cnn_sigma0.25"


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(smooth, data, indices, settings) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    rows = []
    for idx in indices:
        x, label = data[idx]
        rows.append(certify_one(smooth, idx, x, int(label), settings))
    return rows, time.perf_counter() - t0


def on_ray(model, data, indices, settings, workers, address=None, chunks=None) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    stats = certify_rows_on_ray(model=model, source=None, dataset=data, indices=indices, settings=settings,
                                emit=rows.append, workers=workers, ray_address=address, device="cpu", chunks=chunks)
    busy = sum(float(r["time"]) for r in rows)
    stats = {**stats, "mean_example_s": busy / len(rows), "busy_fraction": busy / (workers * stats["certify_s"])}
    return rows, stats


def _entry(rows, stats, ref_rows, n) -> dict:
    return {"startup_s": stats["startup_s"], "seconds": stats["certify_s"], "examples_per_s": n / stats["certify_s"],
            "mean_example_s": stats["mean_example_s"], "busy_fraction": stats["busy_fraction"],
            "rows_identical": _strip(rows) == _strip(ref_rows)}


def multi_node(model, data, indices, settings) -> dict:
    """Start a 2-node cluster on 127.0.0.1 (one CPU per node), certify with 2 workers, stop the nodes."""
    import ray

    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="certify_bench_ray_")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    common = ["--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", "127.0.0.1", "--block",
              "--disable-usage-stats"]
    procs = []
    t0 = time.perf_counter()
    try:
        procs.append(subprocess.Popen([ray_bin, "start", "--head", "--port", str(port), "--temp-dir", temp,
                                       "--include-dashboard", "false", *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(2)
        procs.append(subprocess.Popen([ray_bin, "start", "--address", address, *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env=worker_runtime_env())
        deadline = time.time() + 120
        while time.time() < deadline and len([n for n in ray.nodes() if n.get("Alive")]) < 2:
            time.sleep(0.5)
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        ray.shutdown()  # certify connects by itself, as `certify smooth --ray-address` does
        cluster_start = time.perf_counter() - t0
        rows, stats = on_ray(model, data, indices, settings, workers=2, address=address)
        return {"address": address, "nodes": nodes, "cluster_start_s": cluster_start, "rows": rows, **stats}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(temp, ignore_errors=True)


def plain_worker(argv: list[str]) -> None:
    """Child of :func:`contention`: wait until START (time.time()), certify the images in this process (one
    thread, no noise helper thread, the workers' malloc settings) and print the mean seconds per example."""
    start, batch_size, n, skip, n_estimate = float(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist", split="test")
    smooth = Smooth(models.pretrained(CHECKPOINT), 10, 0.25, device="cpu", noise_thread=False)
    settings = {"sigma": 0.25, "n_select": 100, "n_estimate": n_estimate, "alpha": 0.001, "seed": 0,
                "batch_size": batch_size, "first_order": False, "num_classes": 10}
    certify_one(smooth, 0, *data[0], settings)  # warm-up
    time.sleep(max(0.0, start - time.time()))
    indices = list(range(0, len(data), skip))[:n]
    _, seconds = in_process(smooth, data, indices, settings)
    print(seconds / len(indices))


def contention(args) -> dict:
    """Seconds per example of one plain process alone and of two side by side (no Ray): the slowdown that two
    busy cores cause each other (memory bandwidth, shared cache) whatever distributes the work."""
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": "1"}

    def launch(k: int) -> list[float]:
        start = time.time() + 10.0  # both children loaded before they start
        cmd = [sys.executable, __file__, "--plain-worker", str(start), str(args.batch_size), str(args.n),
               str(args.skip), str(args.n_estimate)]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        return [float(p.communicate()[0].split()[-1]) for p in procs]

    alone, pair = launch(1)[0], launch(2)
    res = {"alone_s_per_example": alone, "pair_s_per_example": pair,
           "slowdown_pair_vs_alone": sum(pair) / len(pair) / alone - 1.0}
    print(f"plain processes (no Ray): alone {alone:.4f} s/example, two side by side {pair[0]:.4f} / {pair[1]:.4f} "
          f"(+{100 * res['slowdown_pair_vs_alone']:.1f} %) (load {_load()})", flush=True)
    return res


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--plain-worker":
        plain_worker(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="test images (default 40)")
    ap.add_argument("--skip", type=int, default=250, help="every SKIP-th test image (default 250)")
    ap.add_argument("--n-estimate", type=int, default=10_000)
    ap.add_argument("--n-select", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=200,
                    help="noisy images per forward pass (default 200: on this 2-core CPU the fastest for 1 and 2 "
                         "workers; at 1000 the activations of two workers compete for memory bandwidth)")
    ap.add_argument("--no-cluster", action="store_true", help="skip the local multi-node cluster run")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of workers = 1 and 2, alternating; the median rate of each is reported (default 3)")
    ap.add_argument("--chunk-images", type=int, default=3, help="images of the sample-chunk part (default 3)")
    ap.add_argument("--chunk-n", type=int, default=50_000, help="n_estimate of the sample-chunk part")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_distributed.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    import ray

    data = load_dataset("fashion-mnist", split="test")
    indices = list(range(0, len(data), args.skip))[: args.n]
    model = models.pretrained(CHECKPOINT)
    smooth = Smooth(model, 10, 0.25, device="cpu")
    smooth_one_cpu = Smooth(model, 10, 0.25, device="cpu", noise_thread=False)
    settings = {"sigma": 0.25, "n_select": args.n_select, "n_estimate": args.n_estimate, "alpha": 0.001,
                "seed": 0, "batch_size": args.batch_size, "first_order": False, "num_classes": 10,
                "model_fingerprint": model_fingerprint(model)}
    load_before = _load()
    result: dict = {"checkpoint": CHECKPOINT, "images": len(indices), "skip": args.skip,
                    "n_estimate": args.n_estimate, "n_select": args.n_select, "batch_size": args.batch_size,
                    "torch_threads_per_process": 1, "cpu_count": os.cpu_count(), "load_before": load_before,
                    "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__}

    ref_rows, t_in = in_process(smooth, data, indices, settings)
    result["in_process"] = {"seconds": t_in, "examples_per_s": len(indices) / t_in,
                            "mean_example_s": sum(float(r["time"]) for r in ref_rows) / len(ref_rows)}
    print(f"in-process: {len(indices) / t_in:.3f} examples/s (load {_load()})", flush=True)
    rows_1, t_1 = in_process(smooth_one_cpu, data, indices, settings)
    result["in_process_one_cpu"] = {"seconds": t_1, "examples_per_s": len(indices) / t_1,
                                    "mean_example_s": sum(float(r["time"]) for r in rows_1) / len(rows_1),
                                    "rows_identical": _strip(rows_1) == _strip(ref_rows)}
    print(f"in-process, one CPU (noise_thread=False): {len(indices) / t_1:.3f} examples/s (load {_load()})",
          flush=True)

    result["plain_processes"] = contention(args)

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env=worker_runtime_env())
    result["ray_init_s"] = time.perf_counter() - t0
    try:
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for rep in range(args.repeats):  # alternate, so that a change in load hits both worker counts alike
            for workers in (1, 2):
                rows, stats = on_ray(model, data, indices, settings, workers)
                runs[workers].append(_entry(rows, stats, ref_rows, len(indices)))
                print(f"workers={workers} (run {rep + 1}/{args.repeats}): {len(indices) / stats['certify_s']:.3f} "
                      f"examples/s, start-up {stats['startup_s']:.1f} s, rows identical "
                      f"{_strip(rows) == _strip(ref_rows)} (load {_load()})", flush=True)
        for workers, entries in runs.items():  # the run with the median rate, and every run's rate
            ordered = sorted(entries, key=lambda e: e["examples_per_s"])
            result[f"workers_{workers}"] = {**ordered[len(ordered) // 2],
                                            "examples_per_s_runs": [e["examples_per_s"] for e in entries],
                                            "rows_identical": all(e["rows_identical"] for e in entries)}
        result["speedup_2_vs_1_runs"] = [b["examples_per_s"] / a["examples_per_s"] for a, b in zip(runs[1], runs[2])]
        # sample chunks: few images with many samples each
        chunk_idx = indices[: args.chunk_images]
        chunk_settings = {**settings, "n_estimate": args.chunk_n}
        chunk_ref, _ = in_process(smooth, data, chunk_idx, chunk_settings)
        part: dict = {"images": len(chunk_idx), "n_estimate": args.chunk_n, "workers": 2,
                      "chunks_per_image": smooth.n_chunks(args.chunk_n)}
        for name, chunks in (("per_image", None), ("per_chunk", smooth)):
            rows, stats = on_ray(model, data, chunk_idx, chunk_settings, 2, chunks=chunks)
            part[name] = {"seconds": stats["certify_s"], "examples_per_s": len(chunk_idx) / stats["certify_s"],
                          "busy_fraction": stats["busy_fraction"], "rows_identical": _strip(rows) == _strip(chunk_ref)}
        part["speedup_chunks"] = part["per_image"]["seconds"] / part["per_chunk"]["seconds"]
        result["sample_chunks"] = part
        print(f"sample chunks ({len(chunk_idx)} images x {args.chunk_n:,} samples, 2 workers): per image "
              f"{part['per_image']['seconds']:.2f} s (busy {part['per_image']['busy_fraction']:.2f}), per chunk "
              f"{part['per_chunk']['seconds']:.2f} s (busy {part['per_chunk']['busy_fraction']:.2f}): "
              f"{part['speedup_chunks']:.2f}x; rows identical {part['per_image']['rows_identical']} / "
              f"{part['per_chunk']['rows_identical']} (load {_load()})", flush=True)
    finally:
        ray.shutdown()
    if not args.no_cluster:
        cl = multi_node(model, data, indices, settings)
        rows = cl.pop("rows")
        result["multi_node"] = {"nodes": cl["nodes"], "address": cl["address"],
                                "cluster_start_s": cl["cluster_start_s"], **_entry(rows, cl, ref_rows, len(indices))}
    result["load_after"] = _load()
    w1, w2, inp = result["workers_1"], result["workers_2"], result["in_process"]
    inp1 = result["in_process_one_cpu"]
    result["speedup_2_vs_1"] = w2["examples_per_s"] / w1["examples_per_s"]
    result["overhead_1_vs_in_process_one_cpu"] = 1.0 - w1["examples_per_s"] / inp1["examples_per_s"]
    result["overhead_1_vs_in_process"] = 1.0 - w1["examples_per_s"] / inp["examples_per_s"]
    # load-independent: the fraction of wall time the workers were not certifying (Ray and driver overhead)
    result["idle_fraction_workers_1"] = 1.0 - w1["busy_fraction"]
    result["idle_fraction_workers_2"] = 1.0 - w2["busy_fraction"]
    result["goal_speedup_met"] = result["speedup_2_vs_1"] >= 1.7
    result["goal_overhead_met"] = result["overhead_1_vs_in_process_one_cpu"] <= 0.10

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"\n{len(indices)} Fashion-MNIST images, n_estimate {args.n_estimate:,}, 1 torch thread per process, "
          f"{os.cpu_count()} cores, load {load_before} -> {result['load_after']}")
    print(f"{'path':<22}{'examples/s':>12}{'start-up s':>12}{'s/example':>11}{'busy':>7}{'rows identical':>16}")
    print(f"{'in-process':<22}{inp['examples_per_s']:>12.3f}{'-':>12}{inp['mean_example_s']:>11.3f}{'-':>7}"
          f"{'(reference)':>16}")
    print(f"{'in-process, one CPU':<22}{inp1['examples_per_s']:>12.3f}{'-':>12}{inp1['mean_example_s']:>11.3f}"
          f"{'-':>7}{str(inp1['rows_identical']):>16}")
    for key, label in (("workers_1", "ray workers=1"), ("workers_2", "ray workers=2"),
                       ("multi_node", "2-node cluster, w=2")):
        if key in result:
            r = result[key]
            print(f"{label:<22}{r['examples_per_s']:>12.3f}{r['startup_s']:>12.1f}{r['mean_example_s']:>11.3f}"
                  f"{r['busy_fraction']:>7.2f}{str(r['rows_identical']):>16}")
    runs_text = ", ".join(f"{v:.2f}" for v in result["speedup_2_vs_1_runs"])
    print(f"ray.init {result['ray_init_s']:.1f} s; speed-up workers 2 vs 1 (median runs): "
          f"{result['speedup_2_vs_1']:.2f}x, per pair of runs {runs_text} (goal >= 1.7); "
          f"Ray overhead workers=1 vs in-process on one CPU: "
          f"{100 * result['overhead_1_vs_in_process_one_cpu']:.1f} % (goal <= 10 %), vs the default in-process path "
          f"(noise helper thread on a second core): {100 * result['overhead_1_vs_in_process']:.1f} %; "
          f"workers idle (Ray + driver overhead): {100 * result['idle_fraction_workers_1']:.1f} % "
          f"at 1, {100 * result['idle_fraction_workers_2']:.1f} % at 2")
    pp = result["plain_processes"]
    print(f"two plain processes (no Ray) side by side: +{100 * pp['slowdown_pair_vs_alone']:.1f} % per example vs "
          f"one alone (the ceiling this machine puts on the speed-up: "
          f"{2 / (1 + pp['slowdown_pair_vs_alone']):.2f}x)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
