"""``certify transfer``: certify a model's linear head from its representation's certified sensitivity.

Examples::

    certify transfer --pretrained fmnist_cnn --eps 0.01 --n 200 --out runs/transfer
    certify transfer --checkpoint model.pt --arch fmnist_mlp --norm l2 --eps 0.1 --method ibp --out runs/tr

The model is split at its ``feature_layer`` into encoder and linear head
(:func:`certify.transfer.split_model`); auto_LiRPA bounds the representation over the input ball and
the head is certified with the criteria of :mod:`certify.transfer`. Unless ``--attack-steps 0``, PGD
(margin loss) attacks every example on the composed model and the run reports how many certified
examples it broke (must be 0) and the largest attacked loss next to its bound.

Writes ``transfer.json`` (the :class:`certify.transfer.TransferResult` plus the attack check) and
``summary.txt``.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

HELP = "robustness transfer: certify a linear head from auto_LiRPA bounds on the representation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="model file (state_dict for --arch)")
    src.add_argument("--pretrained", metavar="NAME", help="a shipped zoo checkpoint")
    parser.add_argument("--arch", help="zoo architecture of --checkpoint")
    parser.add_argument("--trust", action="store_true", help="allow unpickling arbitrary objects from --checkpoint")
    parser.add_argument("--data", default=None, help="dataset (default: the model's dataset, else fashion-mnist)")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
    parser.add_argument("--n", type=int, default=100, help="first N examples (default 100)")
    parser.add_argument("--eps", type=float, required=True, help="input radius in pixel units (>= 0)")
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--method", default="crown", choices=["ibp", "crown", "crown-ibp"])
    parser.add_argument("--no-clip", action="store_true", help="do not intersect the ball with [0, 1]")
    parser.add_argument("--attack-steps", type=int, default=20, help="PGD steps of the check (0: no attack)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")


def _load(args):
    from certify import models

    if args.pretrained:
        return models.pretrained(args.pretrained), dict(models.pretrained_info(args.pretrained))
    if not args.arch:
        raise ValueError("--checkpoint needs --arch (a zoo architecture with a feature layer)")
    from certify.checkpoints import load_checkpoint

    return load_checkpoint(args.checkpoint, arch=args.arch, trust=args.trust), {}


def attack_check(model, x, y, result, *, steps: int, seed: int) -> dict:
    """PGD (margin loss for flips, cross-entropy for the loss) on the composed model against the certificates."""
    import torch
    import torch.nn.functional as F

    from certify import attacks

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"attack steps must be an int >= 1, got {steps!r}")
    out = {"steps": steps, "restarts": 2, "seed": seed}
    if result.eps == 0:
        x_flip = x_ce = x
    else:
        g = torch.Generator().manual_seed(seed)
        x_flip = attacks.pgd(model, x, y, eps=result.eps, norm=result.norm, steps=steps, restarts=2,
                             generator=g, loss="margin")
        x_ce = attacks.pgd(model, x, y, eps=result.eps, norm=result.norm, steps=steps, restarts=2,
                           generator=g, loss="ce")
    with torch.no_grad():
        broken = (model(x_flip).argmax(1) != y).tolist()
        ce = F.cross_entropy(model(x_ce), y, reduction="none").double().tolist()
    out["attack_accuracy"] = 1.0 - sum(broken) / len(broken)
    for c in ("logit", "pairwise", "box"):
        out[f"violations_{c}"] = int(sum(b and cert for b, cert in zip(broken, result.certified(c))))
    out["loss_bound_violations"] = int(sum(a > bound + 1e-4 for a, bound in zip(ce, result.loss_bound_box)))
    out["max_attacked_loss_minus_bound"] = max(a - bound for a, bound in zip(ce, result.loss_bound_box))
    return out


def run(args) -> int:
    from certify import data, transfer
    from certify._jsonio import atomic_write_json, atomic_write_text

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if not math.isfinite(args.eps) or args.eps < 0:
        raise ValueError(f"--eps must be a finite number >= 0 (pixel units), got {args.eps}")
    if args.attack_steps < 0:
        raise ValueError(f"--attack-steps must be >= 0, got {args.attack_steps}")
    model, info = _load(args)
    encoder, head = transfer.split_model(model)
    ds = data.load_dataset(args.data or info.get("dataset") or "fashion-mnist", split=args.split)
    n = min(args.n, len(ds))
    x, y = ds.x[:n], ds.y[:n]
    res = transfer.transfer_bounds(encoder, head, x, y, eps=args.eps, norm=args.norm, method=args.method,
                                   clip=not args.no_clip, batch_size=args.batch_size,
                                   name=args.pretrained or Path(args.checkpoint).name)
    payload = res.to_dict()
    text = res.summary()
    if args.attack_steps > 0:
        check = attack_check(model, x, y, res, steps=args.attack_steps, seed=args.seed)
        payload["attack_check"] = check
        text += (f"\n  PGD check ({check['steps']} steps x {check['restarts']} restarts): attack accuracy "
                 f"{check['attack_accuracy']:.4f}; certified examples broken: logit {check['violations_logit']}, "
                 f"pairwise {check['violations_pairwise']}, box {check['violations_box']}; "
                 f"attacked loss above its bound: {check['loss_bound_violations']}")
    out = Path(args.out)
    atomic_write_json(out / "transfer.json", payload)
    atomic_write_text(out / "summary.txt", text + "\n")
    if not getattr(args, "quiet", False):
        print(text)
    return 0
