"""Benchmark: semantic verification - seconds per image, tightness, grid flips against reference functions,
and the throughput of a test-set-scale ``semantic_report`` run.

Models:

* ``fmnist_cnn`` (the zoo CNN) on Fashion-MNIST: brightness, contrast, rotation;
* a LeNet-5-style MaxPool CNN (conv32-pool-conv64-pool-fc200-fc10), trained here for ``--epochs`` epoch(s)
  (default 1) on the Fashion-MNIST training set with Adam (lr 1e-3, batch 128, seed 0): brightness +-0.2,
  contrast +-0.3 and rotation +-30 degrees (the issue's goals: tightness >= 0.9 and <= 3 s per image per family
  on 2 cores).

Per model and family: the first ``--n`` correctly classified test images are certified with
:func:`certify.verify_semantic` (method "crown", default splitting); reported are the mean wall and process-CPU
seconds per image (verification + attack), the mean tightness (certified / attack width, over images where the
attack found a flip), and the grid flips: ``--grid`` evenly spaced parameters inside every certified range are
applied with the family's REFERENCE function (torchvision ``rotate`` / ``adjust_contrast`` /
``adjust_hue``, the closed-form Semantify-NN formulas for brightness and pivot-0.5 contrast; not the
layers) and classified; any flip contradicts a certificate (must be 0).

Throughput: ``semantic_report`` (brightness +-0.2, ``fmnist_cnn``, the test set) on ``--report-n`` images,
giving images per minute and the extrapolated time for all 10,000 test images, once one image at a time
(``image_batch=1``) and once with ``--image-batch`` images per bound call (same images, same process, one
after the other: their ratio is the batching speed-up at the same load). The batched path bounds the family's
unsimplified layer, so a certified range can differ in its last sub-interval; the number of rows whose certified
ranges agree is reported.

The machine may be shared: the load average before and after is recorded; CPU seconds are less sensitive to
other processes than wall seconds.

    python benchmarks/bench_semantic.py                       # n = 10 images per family, 500-image report
    python benchmarks/bench_semantic.py --n 3 --report-n 50 --epochs 1

Writes JSON (default benchmarks/results/bench_semantic.json) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import semantic_layers
from certify import data, lirpa, models
from certify.semantic import semantic_report, verify_semantic

SETUP = {"lenet_maxpool": {"brightness": 0.2, "rotation": 30.0, "contrast": 0.3},
         "fmnist_cnn": {"brightness": 0.2, "contrast": 0.3, "rotation": 15.0}}


def lenet_maxpool() -> nn.Module:
    """LeNet-5-style CNN with MaxPool: conv32-pool-conv64-pool-fc200-fc10 (5x5 convs, padding 2)."""
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 200), nn.ReLU(), nn.Linear(200, 10))


def train_lenet(epochs: int, seed: int = 0) -> tuple[nn.Module, float]:
    train = data.load_dataset("fashion-mnist", split="train")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = lenet_maxpool()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(train.y), generator=gen)
        for i in range(0, len(perm), 128):
            b = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(train.x[b]), train.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), time.perf_counter() - t0


def reference(family: str, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The family's reference function (independent of semantic_layers) on one image, a batch of thetas."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    t = theta.reshape(-1).tolist()
    if family == "brightness":
        return torch.stack([(x + v).clamp(0, 1) for v in t])
    if family == "contrast":       # Semantify-NN, pivot 0.5
        return torch.stack([((1 + v) * (x - 0.5) + 0.5).clamp(0, 1) for v in t])
    if family == "rotation":
        return torch.stack([TF.rotate(x, v, interpolation=InterpolationMode.BILINEAR) for v in t])
    if family == "hue":
        return torch.stack([TF.adjust_hue(x, v / 360.0) for v in t])
    raise ValueError(f"no reference function for {family!r} in this benchmark")


def grid_flips(model: nn.Module, family: str, x: torch.Tensor, label: int, certified: tuple, points: int) -> int:
    lo, hi = certified
    if hi <= lo:
        return 0
    theta = torch.linspace(lo, hi, points, dtype=torch.float64)
    with torch.no_grad():
        pred = model(reference(family, x.float(), theta.float())).argmax(dim=1)
    return int((pred != label).sum())


def _mean(values) -> float:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else float("nan")


def bench_family(model: nn.Module, dataset, family: str, r: float, *, n: int, grid: int) -> dict:
    p = semantic_layers.get(family)
    net = None
    rows = []
    i = 0
    while len(rows) < n and i < len(dataset):
        x, y = dataset[i]
        with torch.no_grad():
            ok = int(model(x[None]).argmax()) == int(y)
        if ok:
            if net is None:
                net = lirpa.bounded_module(model, x[None])
            c0, t0 = time.process_time(), time.perf_counter()
            cert = verify_semantic(model, x, int(y), p, max_param=r, _model_net=net)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            flips = grid_flips(model, family, x, int(y), cert.certified, grid)
            rows.append({"idx": i, "certified": cert.certified, "attack": cert.attack, "tightness": cert.tightness,
                         "wall_s": wall, "cpu_s": cpu, "boxes": cert.n_splits, "grid_flips": flips})
            print(f"  {family} idx {i}: certified {tuple(round(v, 4) for v in cert.certified)} attack {cert.attack} "
                  f"tightness {cert.tightness} {wall:.2f}s wall {cpu:.2f}s cpu, grid flips {flips}", flush=True)
        i += 1
    return {"family": family, "requested": [-r, r], "n": len(rows),
            "seconds_per_image": _mean(r_["wall_s"] for r_ in rows),
            "cpu_seconds_per_image": _mean(r_["cpu_s"] for r_ in rows),
            "tightness": _mean(r_["tightness"] for r_ in rows),
            "n_with_flip": sum(r_["tightness"] is not None for r_ in rows),
            "fraction_certified": _mean((c["certified"][1] - c["certified"][0]) / (2 * r) for c in rows),
            "grid_points_per_image": grid, "grid_flips": sum(r_["grid_flips"] for r_ in rows), "per_image": rows}


def bench_report(n: int, image_batch: int = 1) -> dict:
    """semantic_report on the first n test images: brightness +-0.2, fmnist_cnn, ``image_batch`` images per call."""
    model = models.pretrained("fmnist_cnn").eval()
    ds = data.load_dataset("fashion-mnist")
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()
        c0, t0 = time.process_time(), time.perf_counter()
        rep = semantic_report(model, ds, [semantic_layers.get("brightness")], out=Path(tmp) / "run", max_param=0.2,
                              max_examples=n, plots=False, verbose=False, image_batch=image_batch)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = rep.summary()["brightness"]
    per_min = 60.0 * n / wall
    return {"n": n, "image_batch": image_batch, "wall_s": wall, "cpu_s": cpu, "images_per_minute": per_min,
            "extrapolated_minutes_for_10000": 10000 / per_min, "clean_accuracy": s["clean_accuracy"],
            "certified_accuracy_at_0.2": s["certified_accuracy"][-1], "mean_tightness": s["mean_tightness"],
            "goal_minutes_for_10000": 20.0, "loadavg_before": load,
            "certified": [(r["certified_lo"], r["certified_hi"]) for r in rep.rows]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="images per model and family (default 10)")
    ap.add_argument("--grid", type=int, default=201, help="reference-function grid points per certified range")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs of the MaxPool CNN (default 1)")
    ap.add_argument("--report-n", type=int, default=500, help="images of the throughput run (default 500)")
    ap.add_argument("--image-batch", type=int, default=32,
                    help="images per bound call of the batched throughput run (default 32)")
    ap.add_argument("--models", default="lenet_maxpool,fmnist_cnn", help="comma-separated subset of the models")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine more threads oversubscribe)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_semantic.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    lenet, train_s = train_lenet(args.epochs)
    test = data.load_dataset("fashion-mnist")
    with torch.no_grad():
        lenet_acc = float((lenet(test.x).argmax(1) == test.y).float().mean())
    print(f"LeNet-style MaxPool CNN: {args.epochs} epoch(s) in {train_s:.0f} s, test accuracy {lenet_acc:.4f}")
    zoo = {"fmnist_cnn": models.pretrained("fmnist_cnn").eval(), "lenet_maxpool": lenet}
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for fam, r in SETUP[name].items():
            print(f"{name} / {fam} +-{r}", flush=True)
            res = bench_family(zoo[name], test, fam, r, n=args.n, grid=args.grid)
            res["model"] = name
            results.append(res)
    report = batched = None
    if args.report_n > 0:
        print(f"semantic_report throughput on {args.report_n} images", flush=True)
        report = bench_report(args.report_n)
        batched = bench_report(args.report_n, args.image_batch)
        same = sum(a == b for a, b in zip(report.pop("certified"), batched.pop("certified")))
        batched["speedup_vs_image_batch_1"] = batched["images_per_minute"] / report["images_per_minute"]
        batched["rows_with_the_same_certified_range_as_image_batch_1"] = same
    record = {
        "benchmark": "semantic", "argv": sys.argv[1:] if argv is None else list(argv), "threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "wall_s": time.perf_counter() - t_all,
        "lenet": {"epochs": args.epochs, "train_s": train_s, "test_accuracy": lenet_acc},
        "results": results, "report": report, "report_batched": batched,
        "goals": {"lenet_maxpool": {"tightness": 0.9, "seconds_per_image": 3.0}, "grid_flips": 0,
                  "full_test_set_minutes": 20.0},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=float))
    hdr = f"{'model':<14} {'family':<11} {'range':>7} {'n':>3} {'s/img':>6} {'cpu-s':>6} {'tight':>6} {'flips':>5} " \
          f"{'cert%':>6} {'grid flips':>10}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(f"{r['model']:<14} {r['family']:<11} {r['requested'][1]:>7.3g} {r['n']:>3} "
              f"{r['seconds_per_image']:>6.2f} "
              f"{r['cpu_seconds_per_image']:>6.2f} {r['tightness']:>6.3f} {r['n_with_flip']:>5} "
              f"{100 * r['fraction_certified']:>5.1f}% {r['grid_flips']:>10}")
    for rep in (report, batched):
        if rep is None:
            continue
        print(f"semantic_report (fmnist_cnn, brightness +-0.2, image_batch {rep['image_batch']}): {rep['n']} images "
              f"in {rep['wall_s']:.0f} s wall ({rep['cpu_s']:.0f} s cpu) = {rep['images_per_minute']:.1f} images/min "
              f"-> 10,000 images in {rep['extrapolated_minutes_for_10000']:.1f} min (extrapolated; goal 20 min)")
    if batched is not None:
        print(f"batched / one image at a time: {batched['speedup_vs_image_batch_1']:.2f}x; same certified range in "
              f"{batched['rows_with_the_same_certified_range_as_image_batch_1']} of {batched['n']} rows")
    print(f"wrote {out}  (load average before {load_before}, after {record['loadavg_after']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
