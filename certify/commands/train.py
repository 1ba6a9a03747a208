"""``certify train``: train a zoo architecture (standard, Gaussian-noise or adversarial training)."""
from __future__ import annotations

import argparse
import json

from certify.commands._common import check_out, set_summary
from certify.devices import add_device_argument, device_from_args

HELP = "train a zoo model (clean, Gaussian noise for smoothing, FGSM/PGD adversarial, adversarial fine-tuning)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from certify.training import AUGMENTS, OPTIMIZERS

    p.add_argument("--arch", required=True, help="zoo architecture (see certify.models.available())")
    p.add_argument("--data", required=True, help="dataset name (fashion-mnist, digits, color-fmnist) or path")
    p.add_argument("--out", required=True, help="where to write the state_dict (.pt); a .json sidecar goes beside it")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="base learning rate (one-cycle schedule peaks at 3x)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", choices=AUGMENTS, default=None,
                   help="batch augmentation (default: noise if --sigma > 0, else none)")
    p.add_argument("--sigma", type=float, default=0.0, help="Gaussian augmentation std (pixel units)")
    p.add_argument("--eps", type=float, default=0.0, help="l-inf budget of fgsm/pgd training (pixel units)")
    p.add_argument("--adv-fraction", type=float, default=1.0, help="fraction of each batch made adversarial")
    p.add_argument("--pgd-steps", type=int, default=7)
    p.add_argument("--init", default=None, help="shipped checkpoint name or path to fine-tune from")
    p.add_argument("--max-train", type=int, default=None, help="train on the first N images only")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from certify.training import train

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory; give the .pt file to write")
    check_out(out.parent)
    result = train(args.arch, args.data, epochs=args.epochs, sigma=args.sigma, seed=args.seed,
                   batch_size=args.batch_size, lr=args.lr, augment=args.augment, eps=args.eps,
                   adv_fraction=args.adv_fraction, pgd_steps=args.pgd_steps, init=args.init, out=args.out,
                   max_train=args.max_train, optimizer=args.optimizer,
                   verbose=not args.quiet, device=device_from_args(args))
    print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    print(f"clean test accuracy {result.test_accuracy:.4f} after {result.train_seconds:.0f} s; wrote {args.out}")
    set_summary(args, result.to_dict())
    return 0
