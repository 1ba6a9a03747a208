"""The robustness-transfer stage of the study (Nern et al., "On Transfer of Adversarial Robustness from
Pretraining to Downstream Tasks", NeurIPS 2023): a *fresh* linear probe is fitted on a model's encoder
(the layers up to its feature layer, :func:`certify.transfer.split_model`), certified over l-inf balls from
the encoder's certified feature box (:func:`certify.transfer.transfer_bounds`), and the certificates are
checked by PGD on the composed model (encoder + probe) on the same examples: a certified example broken by
PGD is a consistency violation (counted in the study's checks)."""
from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Sequence

import torch
from torch import nn

from certify.study.config import ModelSpec, example_indices
from certify.study.context import StudyContext
from certify.study.results import TransferRow, TransferStage

logger = logging.getLogger("certify.study")

__all__ = ["run_transfer", "transfer_settings", "transfer_consistency", "fit_probe"]

_BATCH = 256


def transfer_settings(ctx: StudyContext) -> dict[str, Any]:
    """What the stage's result depends on besides the model (its cache key)."""
    c = ctx.config
    return {"n": min(c.n_transfer, len(ctx.test)), "eps": c.transfer_eps, "method": c.transfer_method,
            "probe_n_train": min(c.transfer_probe_n_train, len(ctx.train)), "probe_max_iter": c.probe_max_iter,
            "pgd_steps": c.pgd_steps, "pgd_restarts": c.pgd_restarts, "seed": c.seed, "norm": "linf", "clip": True}


def transfer_consistency(certified: Sequence[bool], pgd_robust: Sequence[bool], idx: Sequence[int]) -> dict:
    """Certified examples that PGD nevertheless broke (or that are misclassified on the clean input).

    ``certified[i]``: the transfer certificate holds for example ``idx[i]`` at the radius;
    ``pgd_robust[i]``: the composed model classifies it correctly on the clean input and on PGD's output
    at that radius. The certificate is deterministic, so every violation is a bug (no allowance).

    >>> transfer_consistency([True, False, True], [True, False, False], [0, 5, 9])
    {'violations': 1, 'violating_idx': [9], 'ok': False}
    """
    if not (len(certified) == len(pgd_robust) == len(idx)):
        raise ValueError(f"certified, pgd_robust and idx must have the same length, got {len(certified)}, "
                         f"{len(pgd_robust)} and {len(idx)}")
    bad = [int(i) for i, c, r in zip(idx, certified, pgd_robust) if c and not r]
    return {"violations": len(bad), "violating_idx": bad, "ok": not bad}


def fit_probe(encoder: nn.Module, x: torch.Tensor, y: torch.Tensor, *, num_classes: int, max_iter: int,
              seed: int) -> tuple[nn.Linear, float, bool]:
    """A fresh multinomial logistic probe on ``encoder``'s features of ``(x, y)``
    (:func:`estimators.robust_linear.train_robust_probe` at eps 0): ``(probe, training accuracy, converged)``.
    The features are computed on the encoder's device and the probe (fitted by numpy) is put there too."""
    from certify.devices import module_device
    from estimators import robust_linear as rl

    dev = module_device(encoder)
    with torch.no_grad():
        h = torch.cat([encoder(x[i:i + _BATCH].to(dev)).double().cpu() for i in range(0, x.shape[0], _BATCH)])
    probe = rl.train_robust_probe(h.numpy(), y.cpu().numpy(), num_classes=num_classes, eps=0.0, max_iter=max_iter,
                                  seed=seed)
    head = nn.Linear(h.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(probe.weight))
        head.bias.copy_(torch.from_numpy(probe.bias))
    train_acc = float((probe.logits(h.numpy()).argmax(1) == y.cpu().numpy()).mean())
    return head.to(dev).eval(), train_acc, bool(probe.converged)


def _row(ctx: StudyContext, composed: nn.Module, encoder: nn.Module, head: nn.Linear, idx: list[int],
         eps: float, settings: dict) -> TransferRow:
    from certify.attacks import robust_accuracy
    from certify.transfer import transfer_bounds

    x, y = ctx.test.x[idx], ctx.test.y[idx]
    t0 = time.perf_counter()
    tr = transfer_bounds(encoder, head, x, y, eps=eps, norm="linf", method=settings["method"], clip=True,
                         batch_size=64, device=ctx.device)
    bound_time = time.perf_counter() - t0
    att = robust_accuracy(composed, x, y, attack="pgd", eps=eps, norm="linf", steps=settings["pgd_steps"],
                          restarts=settings["pgd_restarts"], batch_size=_BATCH, seed=settings["seed"],
                          verbose=ctx.verbose, device=ctx.device)
    chk = transfer_consistency(tr.certified_box, att.robust_correct, idx)
    return TransferRow(
        eps=eps, n=tr.n, clean_accuracy=tr.clean_accuracy, certified_logit=tr.certified_accuracy("logit"),
        certified_pairwise=tr.certified_accuracy("pairwise"), certified_box=tr.certified_accuracy("box"),
        mean_clean_loss=sum(tr.clean_loss) / tr.n, mean_loss_bound=tr.mean_loss_bound("lipschitz"),
        mean_loss_bound_box=tr.mean_loss_bound("box"),
        median_feature_deviation=float(statistics.median(tr.feature_deviation)),
        head_spectral_norm=tr.head_spectral_norm, pgd_robust_accuracy=att.robust_accuracy,
        certified=tuple(tr.certified_box), pgd_robust=tuple(att.robust_correct), violations=chk["violations"],
        violating_idx=tuple(chk["violating_idx"]), ok=chk["ok"], bound_time_s=round(bound_time, 3),
        attack_time_s=att.time_s)


def _log_violations(name: str, stage: TransferStage) -> None:
    for row in stage.rows:
        if not row.ok:
            logger.error("CONSISTENCY VIOLATION (%s, transfer l-inf eps %g): PGD broke %d certified examples: idx %s "
                         "-- this is a bug in the transfer certificate or the attack", name, row.eps, row.violations,
                         row.violating_idx)


def run_transfer(ctx: StudyContext, spec: ModelSpec) -> TransferStage | None:
    """Fresh-probe robustness transfer of ``spec``'s encoder on ``n_transfer`` evenly spaced test images at every
    radius of ``transfer_eps``, with the PGD check (None: the model is not in ``config.transfer_models``)."""
    from certify.transfer import split_model

    if spec.name not in ctx.config.models_for("transfer"):
        return None
    settings = transfer_settings(ctx)
    idx = example_indices(len(ctx.test), settings["n"])
    tr_idx = example_indices(len(ctx.train), settings["probe_n_train"])

    def compute() -> TransferStage:
        encoder, own_head = split_model(ctx.models[spec.name])
        head, train_acc, converged = fit_probe(encoder, ctx.train.x[tr_idx], ctx.train.y[tr_idx],
                                               num_classes=int(own_head.out_features),
                                               max_iter=settings["probe_max_iter"], seed=settings["seed"])
        composed = nn.Sequential(encoder, head).eval()
        rows = tuple(_row(ctx, composed, encoder, head, idx, eps, settings) for eps in settings["eps"])
        return TransferStage(n=len(idx), idx=tuple(idx), method=settings["method"], probe_n_train=len(tr_idx),
                             probe_train_accuracy=train_acc, probe_converged=converged,
                             feature_dim=int(head.in_features), pgd_steps=settings["pgd_steps"],
                             pgd_restarts=settings["pgd_restarts"], rows=rows)

    res = ctx.stage(spec.name, "transfer", settings, compute)
    _log_violations(spec.name, res)
    return res
