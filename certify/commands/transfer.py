"""``certify transfer``: certify a model's linear head from its representation's certified sensitivity.

Examples::

    certify transfer --pretrained fmnist_cnn --eps 0.01 --max 200 --out runs/transfer
    certify transfer --checkpoint model.pt --arch fmnist_mlp --data fashion-mnist --norm l2 --eps 0.1 --method ibp

The model is split at its ``feature_layer`` into encoder and linear head
(:func:`certify.transfer.split_model`); auto_LiRPA bounds the representation over the input ball and
the head is certified with the criteria of :mod:`certify.transfer`. Unless ``--attack-steps 0``, PGD
(margin loss) attacks every example on the composed model and the run reports how many certified
examples it broke (must be 0) and the largest attacked loss next to its bound.

Certifies the first ``--max`` examples (default 100). Writes ``transfer.json`` (the
:class:`certify.transfer.TransferResult` plus the attack check), ``run.json`` and ``summary.txt`` to ``--out``
(default ``runs/transfer_<model>_<norm><eps>``).
"""
from __future__ import annotations

import argparse
import math

from certify.devices import add_device_argument, device_from_args

HELP = "robustness transfer: certify a linear head from auto_LiRPA bounds on the representation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from certify.commands._common import add_model_arguments, add_run_arguments, nonnegative_int, positive_int

    add_model_arguments(parser, num_classes=False)
    parser.add_argument("--data", default=None, help="dataset (default: the pretrained model's dataset)")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
    parser.add_argument("--eps", type=float, required=True, help="input radius in pixel units (>= 0)")
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--method", default="crown", choices=["ibp", "crown", "crown-ibp"])
    parser.add_argument("--no-clip", action="store_true", help="do not intersect the ball with [0, 1]")
    parser.add_argument("--attack-steps", type=nonnegative_int, default=20,
                        help="PGD steps of the check (0: no attack)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_run_arguments(parser, resume=False)
    add_device_argument(parser)


def attack_check(model, x, y, result, *, steps: int, seed: int, device=None) -> dict:
    """PGD (margin loss for flips, cross-entropy for the loss) on the composed model against the certificates.

    ``device``: where the model (moved there), the inputs and the random starts' generator are (None: the model's)."""
    import torch
    import torch.nn.functional as F

    from certify import attacks
    from certify.devices import place_module, resolve_device

    dev = place_module(model, resolve_device(device))
    x, y = x.to(dev), y.to(dev)

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"attack steps must be an int >= 1, got {steps!r}")
    out = {"steps": steps, "restarts": 2, "seed": seed}
    if result.eps == 0:
        x_flip = x_ce = x
    else:
        g = torch.Generator(device=dev).manual_seed(seed)
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
    from certify import transfer
    from certify._jsonio import atomic_write_json, atomic_write_text
    from certify.commands._common import check_out, default_out, load_data, load_model, run_record, set_summary

    if not math.isfinite(args.eps) or args.eps < 0:
        raise ValueError(f"--eps: must be a finite number >= 0 (pixel units), got {args.eps}")
    device = device_from_args(args)
    loaded = load_model(args)
    try:
        encoder, head = transfer.split_model(loaded.model)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--checkpoint/--pretrained: {exc}") from None
    ds = load_data(args.data if args.data is not None else loaded.info.get("dataset"), args.split)
    out = check_out(args.out if args.out else default_out("transfer", loaded, f"_{args.norm}{args.eps:g}"))
    n = min(args.max_examples or 100, len(ds))
    x, y = ds.x[:n], ds.y[:n]
    res = transfer.transfer_bounds(encoder, head, x, y, eps=args.eps, norm=args.norm, method=args.method,
                                   clip=not args.no_clip, batch_size=args.batch_size, name=loaded.stem, device=device)
    payload = res.to_dict()
    text = res.summary()
    if args.attack_steps > 0:
        check = attack_check(loaded.model, x, y, res, steps=args.attack_steps, seed=args.seed, device=device)
        payload["attack_check"] = check
        text += (f"\n  PGD check ({check['steps']} steps x {check['restarts']} restarts): attack accuracy "
                 f"{check['attack_accuracy']:.4f}; certified examples broken: logit {check['violations_logit']}, "
                 f"pairwise {check['violations_pairwise']}, box {check['violations_box']}; "
                 f"attacked loss above its bound: {check['loss_bound_violations']}")
    atomic_write_json(out / "transfer.json", payload)
    atomic_write_json(out / "run.json", run_record(args, loaded, ds))
    atomic_write_text(out / "summary.txt", text + "\n")
    summary = {k: payload[k] for k in ("name", "norm", "eps", "method", "n", "clean_accuracy", "certified_accuracy",
                                       "mean_loss_bound")}
    summary["attack_check"] = payload.get("attack_check")
    set_summary(args, summary)
    if not getattr(args, "quiet", False):
        print(text)
    return 0
