"""Robustness transfer: certify a linear head from a bound on its representation's sensitivity.

Nern, Raj, Georgi, Sharma, "On Transfer of Adversarial Robustness from Pretraining to Downstream
Tasks" (NeurIPS 2023): for a linear predictor ``f(x) = W g(x) + b`` on a representation ``g``, the
downstream robustness is controlled by how far the representation can move,
``Delta(x) = sup_{x' in B(x, eps)} ||g(x') - g(x)||_2``: (i) a task-independent bound on the loss,
(ii) a criterion for robust classification. Here ``Delta`` is *certified* rather than estimated
by an attack: auto_LiRPA (IBP or CROWN, through :mod:`certify.lirpa`) bounds every feature over
the input ball, ``l_k <= g_k(x') <= u_k``, and ``Delta`` is the l2 norm of the per-coordinate
worst deviation ``max(|u_k - g_k(x)|, |g_k(x) - l_k|)``.

Criteria (each sound: if it holds, no ``x'`` in the ball changes the prediction from the label;
an example is certified only if it is also classified correctly), from loosest to tightest:

* ``"logit"``: each logit moves by at most ``||w_i||_2 Delta``, so the prediction is robust if
  ``m_j(x) > (||w_y||_2 + ||w_j||_2) Delta`` for every ``j != y`` (``<= 2 max_i ||w_i|| Delta``,
  the form in which a representation-sensitivity criterion bounds any linear head);
* ``"pairwise"``: ``m_j(x) > ||w_y - w_j||_2 Delta`` for every ``j != y`` (Cauchy-Schwarz on the
  logit difference);
* ``"box"``: the exact minimum of ``(w_y - w_j)^T h + b_y - b_j`` over the feature box ``[l, u]``
  is positive for every ``j`` (interval arithmetic; the box lies inside the l2 ball of radius
  ``Delta`` around ``g(x)``, so this certifies every example the other two certify).

``m_j(x) = (w_y - w_j)^T g(x) + b_y - b_j`` is the clean logit margin.

Loss bounds for the softmax cross-entropy ``CE(z, y) = logsumexp(z) - z_y`` over the ball:

* ``loss_bound`` (task independent, the paper's form): ``CE`` is ``sqrt(2)``-Lipschitz in the logits
  (its gradient ``softmax(z) - e_y`` has l2 norm ``<= sqrt(2)``) and the logits move by at most
  ``||W||_2 Delta`` (spectral norm), so ``CE(f(x'), y) <= CE(f(x), y) + sqrt(2) ||W||_2 Delta``;
* ``loss_bound_box``: ``CE = log sum_j exp(z_j - z_y) <= log sum_j exp(max_box (z_j - z_y))``.

Input balls: ``norm="linf"`` bounds over the box ``[x - eps, x + eps]``; ``norm="l2"`` bounds over
the same box, which contains the l2 ball of radius eps (sound, loose by up to ``sqrt(d)``:
:mod:`certify.lirpa` bounds boxes). With ``clip=True`` (default) the box is intersected with the
image domain [0, 1], the threat model of :mod:`certify.attacks`.

Devices: ``device=`` (``"cpu"``, ``"cuda"``, ``"auto"`` or a ``torch.device``, :func:`certify.devices.resolve_device`)
moves the encoder, the head and the inputs there and bounds there; None keeps the encoder's device. Results are
Python numbers whatever the device.

Example::

    >>> from certify import models, transfer
    >>> model = models.pretrained("fmnist_cnn")
    >>> encoder, head = transfer.split_model(model)
    >>> res = transfer.transfer_bounds(encoder, head, x, y, eps=0.01, norm="linf")   # doctest: +SKIP
    >>> res.certified_accuracy("box") <= res.clean_accuracy                           # doctest: +SKIP
    True
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from certify._checks import check_bool, check_choice, check_float, check_int
from certify._modes import eval_mode
from certify.devices import module_device, place_module, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["NORMS", "METHODS", "CRITERIA", "split_model", "feature_box", "TransferResult", "transfer_bounds",
           "fresh_probe_transfer"]

NORMS = ("linf", "l2")
METHODS = ("ibp", "crown", "crown-ibp")
CRITERIA = ("logit", "pairwise", "box")


# ----------------------------------------------------------------------------------------------
# model plumbing
# ----------------------------------------------------------------------------------------------
def split_model(model: nn.Module) -> tuple[nn.Sequential, nn.Linear]:
    """``(encoder, head)`` of a zoo model: the layers up to ``model.feature_layer`` and the final Linear.

    The model must be an ``nn.Sequential`` with a ``feature_layer`` attribute (every
    :class:`certify.models.ZooModel`) whose only layers after the feature layer are one ``nn.Linear``
    (optionally preceded by ``nn.Flatten``). The encoder shares the model's modules (no copy).
    """
    if not isinstance(model, nn.Sequential) or not isinstance(getattr(model, "feature_layer", None), str):
        raise TypeError("model must be an nn.Sequential with a feature_layer attribute (a certify.models.ZooModel)")
    names = [n for n, _ in model.named_children()]
    if model.feature_layer not in names:
        raise ValueError(f"feature_layer {model.feature_layer!r} is not a layer of the model; layers: {names}")
    k = names.index(model.feature_layer)
    rest = [m for _, m in list(model.named_children())[k + 1:] if not isinstance(m, nn.Flatten)]
    if len(rest) != 1 or not isinstance(rest[0], nn.Linear):
        raise ValueError("the layers after the feature layer must be a single nn.Linear head, got "
                         f"{[type(m).__name__ for m in rest]}")
    encoder = nn.Sequential(*[m for _, m in list(model.named_children())[:k + 1]], nn.Flatten())
    encoder.eval()
    return encoder, rest[0]


def _head_params(head) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(head, nn.Linear):
        w = head.weight.detach()
        b = head.bias.detach() if head.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    elif isinstance(head, (tuple, list)) and len(head) == 2:
        w, b = (torch.as_tensor(t).detach() for t in head)
    else:
        raise TypeError("head must be an nn.Linear or a (weight (K, F), bias (K,)) pair")
    if w.ndim != 2 or b.shape != (w.shape[0],) or w.shape[0] < 2:
        raise ValueError(f"head weight must be (K, F) with K >= 2 and bias (K,), got {tuple(w.shape)} and "
                         f"{tuple(b.shape)}")
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise ValueError("head weight and bias must be finite")
    return w.double(), b.double()


def _check_ball(eps, norm, method, clip, batch_size) -> float:
    eps = check_float("eps", eps, low=0.0)
    check_choice("norm", norm, NORMS)
    check_choice("method", method, METHODS)
    check_bool("clip", clip)
    check_int("batch_size", batch_size, 1)
    return eps


def _check_x(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise TypeError("x must be a float tensor of shape (N, ...)")
    if x.shape[0] == 0:
        raise ValueError("x must contain at least one example")
    return x


def _check_y(y, n: int, num_classes: int) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != n or y.is_floating_point():
        raise TypeError(f"y must be an integer tensor of shape ({n},)")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels y must lie in 0..{num_classes - 1} (the head has {num_classes} outputs)")
    return y.long()


# ----------------------------------------------------------------------------------------------
# the representation's box
# ----------------------------------------------------------------------------------------------
def feature_box(encoder: nn.Module, x: torch.Tensor, *, eps: float, norm: str = "linf", method: str = "crown",
                clip: bool = True, batch_size: int = 64,
                device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h, lower, upper)``: features ``g(x)`` and sound bounds ``lower <= g(x') <= upper`` (N, F) over the ball.

    The ball is the l-inf box of radius ``eps`` (for ``norm="l2"`` too, which it contains), intersected
    with [0, 1] if ``clip``. Bounds come from :func:`certify.lirpa.compute_bounds` (float32); ``h`` is
    computed in float64 and ``lower``/``upper`` are widened to contain it. ``device``: where the encoder (moved
    there) and the inputs are bounded (None: the encoder's device); the three tensors are on that device.
    """
    from certify import lirpa

    dev = resolve_device(device)
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    x = _check_x(x)
    eps = _check_ball(eps, norm, method, clip, batch_size)
    dev = place_module(encoder, dev)
    x = x.to(dev)
    with eval_mode(encoder):
        with torch.no_grad():
            h = torch.cat([encoder(x[i:i + batch_size]).flatten(1).double() for i in range(0, x.shape[0],
                                                                                          batch_size)])
        bounded = lirpa.bounded_module(encoder, x[:min(batch_size, x.shape[0])].float())
        lows, ups = [], []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].float()
            lo, hi = xb - eps, xb + eps
            if clip:
                lo, hi = lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0)
            b = lirpa.compute_bounds(bounded, x_lower=lo, x_upper=hi, method=method)
            lows.append(b.lower.double())
            ups.append(b.upper.double())
    lower, upper = torch.cat(lows), torch.cat(ups)
    if lower.shape != h.shape:
        raise ValueError(f"the encoder's bounded output has shape {tuple(lower.shape)}, its features {tuple(h.shape)}")
    # float32 bounds: widen by a relative float32 ulp-scale margin so that h itself is inside
    slack = 1e-6 * (1.0 + h.abs())
    return h, torch.minimum(lower - slack, h), torch.maximum(upper + slack, h)


# ----------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransferResult:
    """Per-example downstream certificates of a linear head from its representation's certified box.

    Inputs echoed: ``name``, ``norm``, ``eps``, ``method``, ``clip``, ``n``, ``num_classes``,
    ``feature_dim``. Per example (tuples of length n): ``labels``, ``clean_correct``, ``clean_margin``
    (smallest ``m_j(x)``; negative when misclassified), ``feature_deviation`` (``Delta``, certified
    upper bound on ``||g(x') - g(x)||_2``), ``certified_logit`` / ``certified_pairwise`` /
    ``certified_box`` (see the module docstring), ``clean_loss`` and the robust-loss upper bounds
    ``loss_bound`` (``CE + sqrt(2) ||W||_2 Delta``) and ``loss_bound_box``. ``head_spectral_norm``
    is ``||W||_2``.
    """

    name: str
    norm: str
    eps: float
    method: str
    clip: bool
    n: int
    num_classes: int
    feature_dim: int
    head_spectral_norm: float
    labels: tuple[int, ...]
    clean_correct: tuple[bool, ...]
    clean_margin: tuple[float, ...]
    feature_deviation: tuple[float, ...]
    certified_logit: tuple[bool, ...]
    certified_pairwise: tuple[bool, ...]
    certified_box: tuple[bool, ...]
    clean_loss: tuple[float, ...]
    loss_bound: tuple[float, ...]
    loss_bound_box: tuple[float, ...]
    time_s: float

    @property
    def clean_accuracy(self) -> float:
        return sum(self.clean_correct) / self.n

    def certified(self, criterion: str = "box") -> tuple[bool, ...]:
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        return getattr(self, f"certified_{criterion}")

    def certified_accuracy(self, criterion: str = "box") -> float:
        """Fraction of examples certified by ``criterion`` (a lower bound on robust accuracy at ``eps``)."""
        return sum(self.certified(criterion)) / self.n

    def mean_loss_bound(self, kind: str = "lipschitz") -> float:
        """Mean over examples of the robust cross-entropy bound (``"lipschitz"`` or ``"box"``)."""
        if kind not in ("lipschitz", "box"):
            raise ValueError(f"kind must be 'lipschitz' or 'box', got {kind!r}")
        vals = self.loss_bound if kind == "lipschitz" else self.loss_bound_box
        return sum(vals) / self.n

    def summary(self) -> str:
        dev = sorted(self.feature_deviation)
        med = dev[len(dev) // 2]
        lines = [f"robustness transfer: {self.name} ({self.norm} radius {self.eps:g}, {self.method} feature bounds"
                 f"{', clipped to [0, 1]' if self.clip else ''}; {self.n} examples, {self.feature_dim} features, "
                 f"{self.num_classes} classes)",
                 f"  clean accuracy {self.clean_accuracy:.4f}; certified feature deviation ||g(x') - g(x)||_2: "
                 f"median {med:.4g}, max {dev[-1]:.4g}; ||W||_2 = {self.head_spectral_norm:.4g}",
                 "  certified accuracy: " + ", ".join(f"{c} {self.certified_accuracy(c):.4f}" for c in CRITERIA),
                 f"  mean cross-entropy: clean {sum(self.clean_loss) / self.n:.4f}, robust bound "
                 f"{self.mean_loss_bound('lipschitz'):.4f} (Lipschitz) / {self.mean_loss_bound('box'):.4f} (box)"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: json.loads(json.dumps(getattr(self, f.name))) for f in fields(self)}
        d["clean_accuracy"] = self.clean_accuracy
        d["certified_accuracy"] = {c: self.certified_accuracy(c) for c in CRITERIA}
        d["mean_loss_bound"] = {k: self.mean_loss_bound(k) for k in ("lipschitz", "box")}
        return d


# ----------------------------------------------------------------------------------------------
# the bounds
# ----------------------------------------------------------------------------------------------
def _criteria(w, b, h, lower, upper, y) -> dict[str, torch.Tensor]:
    """All per-example certificates and loss bounds from the features and their box (float64)."""
    n, k = h.shape[0], w.shape[0]
    z = h @ w.T + b                                              # (n, K) clean logits
    idx = torch.arange(n, device=h.device)
    diff_w = w[y][:, None, :] - w[None, :, :]                    # (n, K, F): w_y - w_j
    margins = z[idx, y][:, None] - z                             # (n, K): m_j(x), 0 at j = y
    dev = torch.maximum(upper - h, h - lower)                    # per-coordinate worst deviation
    delta = dev.norm(dim=1)                                      # (n,)
    other = torch.ones(n, k, dtype=torch.bool, device=h.device)
    other[idx, y] = False
    wn = w.norm(dim=1)
    logit_need = (wn[y][:, None] + wn[None, :]) * delta[:, None]
    pair_need = diff_w.norm(dim=2) * delta[:, None]
    # exact minimum over the box of (w_y - w_j)^T h' + b_y - b_j
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    box_min = (diff_w * centre[:, None, :]).sum(2) - (diff_w.abs() * radius[:, None, :]).sum(2) \
        + (b[y][:, None] - b[None, :])
    correct = (torch.where(other, margins, torch.inf).min(1).values > 0)
    big = torch.full_like(margins, math.inf)

    def holds(ok: torch.Tensor) -> torch.Tensor:
        return correct & torch.where(other, ok, True).all(1)

    clean_loss = F.cross_entropy(z, y, reduction="none")
    spectral = torch.linalg.matrix_norm(w, 2)
    # upper bound of z_j - z_y over the box = -box_min (0 for j = y)
    worst = torch.where(other, -box_min, torch.zeros_like(box_min))
    return {"margin": torch.where(other, margins, big).min(1).values, "delta": delta, "correct": correct,
            "logit": holds(margins > logit_need), "pairwise": holds(margins > pair_need), "box": holds(box_min > 0),
            "clean_loss": clean_loss, "loss_bound": clean_loss + math.sqrt(2) * spectral * delta,
            "loss_bound_box": torch.logsumexp(worst, dim=1), "spectral": spectral}


def transfer_bounds(encoder: nn.Module, head, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
                    method: str = "crown", clip: bool = True, batch_size: int = 64,
                    name: str | None = None, device: str | torch.device | None = None) -> TransferResult:
    """Certify the linear head ``head`` on ``encoder``'s representation over input balls of radius ``eps``.

    Args:
        encoder: ``nn.Module`` mapping inputs (B, ...) to features (B, F) (e.g. the first part of
            :func:`split_model`); only operators auto_LiRPA bounds (Linear, Conv2d, ReLU, Flatten, ...).
        head: an ``nn.Linear`` (F -> K) or a ``(weight, bias)`` pair: the downstream linear predictor.
        x: (N, ...) float inputs in pixel units; y: (N,) integer labels in ``0 .. K-1``.
        eps: input radius in pixel units (>= 0). norm: ``"linf"`` or ``"l2"`` (see the module docstring).
        method: auto_LiRPA method for the feature bounds: ``"ibp"``, ``"crown"`` or ``"crown-ibp"``.
        clip: intersect the ball with the image domain [0, 1].
        batch_size: examples per bound call.
        device: where the encoder, the head (both moved there) and the inputs are bounded: ``"cpu"``, ``"cuda"``,
            ``"auto"`` or a ``torch.device``; None (default): the encoder's device.

    Returns:
        :class:`TransferResult`. Guarantee: for every example with ``certified_<criterion>`` True, every
        input in the ball (within [0, 1] if ``clip``) is classified as its label by ``head(encoder(.))``,
        and its cross-entropy there is at most ``loss_bound`` and ``loss_bound_box`` (up to float32
        rounding inside auto_LiRPA, checked by the tests with PGD).
    """
    dev = resolve_device(device)
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    w, b = _head_params(head)
    x = _check_x(x)
    y = _check_y(y, x.shape[0], w.shape[0])
    eps = _check_ball(eps, norm, method, clip, batch_size)
    if dev is None:
        dev = module_device(encoder)
    t0 = time.perf_counter()
    h, lower, upper = feature_box(encoder, x, eps=eps, norm=norm, method=method, clip=clip, batch_size=batch_size,
                                  device=dev)
    w, b, y = w.to(dev), b.to(dev), y.to(dev)
    if h.shape[1] != w.shape[1]:
        raise ValueError(f"the encoder gives {h.shape[1]} features but the head expects {w.shape[1]}")
    c = _criteria(w, b, h, lower, upper, y)
    logger.debug("transfer bounds for %d examples in %.1f s", x.shape[0], time.perf_counter() - t0)

    def tup(t: torch.Tensor, kind=float) -> tuple:
        return tuple(kind(v) for v in t.tolist())

    return TransferResult(
        name=name or type(encoder).__name__, norm=norm, eps=eps, method=method, clip=clip, n=int(x.shape[0]),
        num_classes=int(w.shape[0]), feature_dim=int(w.shape[1]), head_spectral_norm=float(c["spectral"]),
        labels=tup(y, int), clean_correct=tup(c["correct"], bool), clean_margin=tup(c["margin"]),
        feature_deviation=tup(c["delta"]), certified_logit=tup(c["logit"], bool),
        certified_pairwise=tup(c["pairwise"], bool), certified_box=tup(c["box"], bool),
        clean_loss=tup(c["clean_loss"]), loss_bound=tup(c["loss_bound"]), loss_bound_box=tup(c["loss_bound_box"]),
        time_s=round(time.perf_counter() - t0, 3))


def fresh_probe_transfer(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor,
                         y: torch.Tensor, *, eps: float, norm: str = "linf", method: str = "crown",
                         clip: bool = True, probe_eps: float = 0.0, weight_decay: float = 1e-4,
                         batch_size: int = 64, seed: int = 0, name: str | None = None,
                         device: str | torch.device | None = None) -> TransferResult:
    """Certify a *fresh* linear probe on a zoo model's representation (the downstream task of Nern et al.).

    The model is split with :func:`split_model`; a linear probe is fitted on the encoder's features of
    ``(train_x, train_y)`` (:func:`estimators.robust_linear.train_robust_probe`, feature-space l2 radius
    ``probe_eps``; 0 = plain multinomial logistic regression) and certified on ``(x, y)`` with
    :func:`transfer_bounds`. The model's own head is not used. ``device`` as in :func:`transfer_bounds` (the
    probe itself is fitted by numpy on the CPU).
    """
    from estimators import robust_linear as rl

    dev = resolve_device(device)
    encoder, own_head = split_model(model)
    dev = place_module(model, dev)
    train_x = _check_x(train_x)
    num_classes = int(own_head.weight.shape[0])
    train_y = _check_y(train_y, train_x.shape[0], num_classes)
    check_int("batch_size", batch_size, 1)
    with torch.no_grad():
        h = torch.cat([encoder(train_x[i:i + batch_size].to(dev)).double().cpu()
                       for i in range(0, train_x.shape[0], batch_size)])
    probe = rl.train_robust_probe(h.numpy(), train_y.cpu().numpy(), num_classes=num_classes,
                                  eps=check_float("probe_eps", probe_eps, low=0.0), weight_decay=weight_decay,
                                  seed=seed)
    head = (torch.from_numpy(probe.weight), torch.from_numpy(probe.bias))
    return transfer_bounds(encoder, head, x, y, eps=eps, norm=norm, method=method, clip=clip,
                           batch_size=batch_size, name=name or f"{type(model).__name__} + fresh probe", device=dev)
