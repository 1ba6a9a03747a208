"""Hidden cost of smoothing on the shipped Fashion-MNIST CNNs: accuracy and disparity per class against sigma.

Runs :func:`certify.hidden_cost.sigma_sweep` on ``fmnist_cnn`` (clean training) and the noise-trained
``fmnist_cnn_sigma0.25`` / ``fmnist_cnn_sigma0.50`` for sigma in {0, 0.12, 0.25, 0.5} on the first
``--n-examples`` test images (PREDICT with ``--n`` samples, alpha 0.001, abstention counts as an error).

    python benchmarks/bench_hidden_cost.py                       # 500 images, 500 samples each
    python benchmarks/bench_hidden_cost.py --n-examples 100 --n 200

Writes benchmarks/results/bench_hidden_cost.json, a Markdown table and a PNG next to it, prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from certify import hidden_cost, models
from certify.data import load_dataset

MODELS = ("fmnist_cnn", "fmnist_cnn_sigma0.25", "fmnist_cnn_sigma0.50")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-examples", type=int, default=500)
    p.add_argument("--n", type=int, default=500, help="noise samples per prediction")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_hidden_cost.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist", split="test")
    x, y = ds.x[:args.n_examples], ds.y[:args.n_examples]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    sweep = hidden_cost.sigma_sweep({m: models.pretrained(m) for m in MODELS}, x, y, num_classes=10,
                                    sigmas=hidden_cost.DEFAULT_SIGMAS, n=args.n, alpha=0.001, batch_size=500)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "bench_hidden_cost", "sweep": sweep.to_dict(), "classes": list(ds.classes),
              "seconds": round(time.perf_counter() - t0, 1), "load_before": load_before,
              "load_after": os.getloadavg(), "threads": args.threads}
    out.write_text(json.dumps(result, indent=1))
    text = sweep.to_markdown(ds.classes)
    out.with_suffix(".md").write_text(text)
    sweep.plot(out.with_suffix(".png"), ds.classes)
    print(text)
    print(f"{result['seconds']} s; load average before {load_before}, after {result['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
