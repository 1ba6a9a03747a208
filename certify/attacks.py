"""Empirical attacks: FGSM, PGD (l-inf / l2) and PGD on a randomized-smoothing classifier.

Attacks give *upper* bounds on robust accuracy; certificates give lower bounds. The gap between the two is
the tightness figure the project reports, so an attack must never overstate its success:

* every adversarial input returned by :func:`fgsm`, :func:`pgd` and :func:`smooth_pgd` lies inside the
  eps-ball around ``x`` (l-inf: per-coordinate clamp; l2: projection onto the ball) **and** inside the pixel
  box ``[0, 1]``; projections are done in float64 and the rounding back to the input dtype never moves a
  coordinate farther from ``x`` than intended, so the constraint holds exactly, not just up to rounding;
* :func:`robust_accuracy` and :func:`smoothed_robust_accuracy` report a success only after re-running the
  classifier (the smoothed one on *fresh* noise) on the final adversarial input and seeing a different label.

Conventions: inputs are float tensors of shape ``(B, ...)`` with values in ``[0, 1]`` (normalisation lives in
the model), labels are int64 of shape ``(B,)``. Radii are in pixel units. Attacks put the model in eval
mode and restore every submodule's previous mode afterwards; gradients are taken with respect to the
input only (``torch.autograd.grad``), so parameter ``.grad`` fields are never touched. Random starts and
noise come from a ``torch.Generator`` (a fresh one seeded with 0 when none is given), never the global RNG.

References:
  Goodfellow, Shlens, Szegedy (2015), "Explaining and harnessing adversarial examples" (FGSM).
  Madry et al. (2018), "Towards deep learning models resistant to adversarial attacks" (PGD,
  step size 2.5 * eps / steps).
  Salman et al. (2019), "Provably robust deep learning via adversarially trained smoothed classifiers"
  (SmoothAdv: PGD on -log of the Monte Carlo soft smoothed classifier).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from certify._checks import check_bool, check_choice, check_float, check_int
from certify._modes import eval_mode as _eval_mode
from certify._progress import track
from certify.devices import resolve_device

logger = logging.getLogger(__name__)

__all__ = [
    "NORMS",
    "ATTACKS",
    "LOSSES",
    "fgsm",
    "pgd",
    "smooth_pgd",
    "robust_accuracy",
    "smoothed_robust_accuracy",
    "perturbation_norm",
    "AttackResult",
    "SmoothedAttackResult",
]

NORMS = ("linf", "l2")
ATTACKS = ("fgsm", "pgd")
LOSSES = ("ce", "margin")

# --------------------------------------------------------------------------------------------------
# validation (one place)
# --------------------------------------------------------------------------------------------------
def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_norm(norm: Any) -> str:
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm.lower()


def _nonneg(name: str, value: Any) -> float:
    return check_float(name, value, low=0.0)


def _positive(name: str, value: Any) -> float:
    return check_float(name, value, low=0.0, low_open=True)


def _check_generator(generator: Any) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _check_inputs(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor of int64 labels, got {type(y).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (B, ...) with a batch dimension, got shape {tuple(x.shape)}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"y must be an integer tensor of class labels, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape (B,) = ({x.shape[0]},), got {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x must contain at least one example (B >= 1)")
    x = x.detach()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values; inputs must lie in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"x must lie in [0, 1] (pixel space; normalise inside the model), got range [{lo}, {hi}]")
    if bool((y < 0).any()):
        raise ValueError("y must contain non-negative class indices")
    return x, y.detach().to(device=x.device, dtype=torch.int64)


def _on_device(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) on ``device`` with the model moved there too; unchanged when ``device`` is None."""
    dev = resolve_device(device)
    if dev is None:
        return x, y
    model.to(dev)
    return x.to(dev), y.to(dev)


def _check_labels_fit(y: torch.Tensor, num_classes: int) -> None:
    if int(y.max()) >= num_classes:
        raise ValueError(f"y contains label {int(y.max())} but the model outputs only {num_classes} classes")


def _check_step_size(step_size: Any) -> float | None:
    return None if step_size is None else _positive("step_size", step_size)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------



def _flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return torch.linalg.vector_norm(flat, ord=2, dim=1)


def perturbation_norm(x_adv: torch.Tensor, x: torch.Tensor, norm: str = "linf") -> torch.Tensor:
    """Per-example size of ``x_adv - x`` in ``norm`` ("linf" or "l2"), computed in float64. Shape (B,)."""
    norm = _check_norm(norm)
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv and x must have the same shape, got {tuple(x_adv.shape)} and {tuple(x.shape)}")
    return _flat_norm(x_adv.detach().double() - x.detach().double(), norm)


def _per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    # margin (Carlini-Wagner style): best other logit minus the true logit; > 0 means misclassified
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return other - true


def _forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, *, grad: bool):
    """Logits, per-example losses and (if grad) the gradient of the summed loss w.r.t. x only."""
    if not grad:
        with torch.no_grad():
            logits = model(x)
            _check_logits(logits, x.shape[0])
            _check_labels_fit(y, logits.shape[1])
            return logits, _per_example_loss(logits, y, loss), None
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        _check_logits(logits, x.shape[0])
        _check_labels_fit(y, logits.shape[1])
        losses = _per_example_loss(logits, y, loss)
        (g,) = torch.autograd.grad(losses.sum(), xr)
    return logits.detach(), losses.detach(), g


def _check_logits(logits: Any, batch: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape (B, num_classes) = ({batch}, K), got {shape}")
    if logits.shape[1] < 2:
        raise ValueError(f"model must output at least 2 classes, got {logits.shape[1]}")


def _ascent_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent unit direction for the norm: sign(g) for l-inf, g/||g||_2 for l2 (0 where g == 0)."""
    if norm == "linf":
        return g.sign()
    flat = g.flatten(1)
    # rescale by the largest entry first so that tiny gradients do not underflow when squared
    scale = flat.abs().amax(dim=1, keepdim=True)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = flat / safe
    n = torch.linalg.vector_norm(scaled, ord=2, dim=1, keepdim=True)
    n = torch.where(n > 0, n, torch.ones_like(n))
    return (scaled / n).view_as(g)


def _place(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x + delta rounded to x's dtype and clipped to [0, 1], with every coordinate's realised offset
    no larger in magnitude than the intended (float64) offset.

    Rounding to nearest can overshoot by half an ulp; the neighbouring float toward x then lies between
    x and x + delta, so one ``nextafter`` step fixes each overshooting coordinate. Clipping to [0, 1]
    only moves coordinates toward x (x itself is in [0, 1]). Hence ||x_adv - x|| <= ||delta|| holds
    exactly, for every norm that is monotone in the coordinates' magnitudes (l-inf, l2).
    """
    x64 = x.double()
    x_adv = (x64 + delta).to(x.dtype).clamp(0.0, 1.0)
    over = (x_adv.double() - x64).abs() > delta.abs()
    if bool(over.any()):
        x_adv = torch.where(over, torch.nextafter(x_adv, x), x_adv)
    return x_adv


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Map x_adv into {x' : ||x' - x|| <= eps, 0 <= x' <= 1}, exactly (the ball is checked in float64).

    The offset is projected in float64: l-inf by a per-coordinate clamp (the intersection of the cube and
    [0, 1]^D is a box, so clamp + clip is the exact Euclidean projection); l2 by scaling onto the ball
    (with a 1e-12 relative safety margin against float64 rounding), after which clipping to [0, 1] only
    shrinks the offset. :func:`_place` then rounds without ever increasing any coordinate's offset.
    """
    delta = x_adv.double() - x.double()
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = _flat_norm(delta, "l2")
        limit = eps * (1.0 - 1e-12)
        factor = torch.where(n > limit, limit / torch.where(n > 0, n, torch.ones_like(n)), torch.ones_like(n))
        delta = delta * factor.view(-1, *([1] * (x.dim() - 1)))
    x_adv = _place(x, delta)
    if bool((_flat_norm(x_adv.double() - x.double(), norm) > eps).any()):
        raise RuntimeError("internal error: could not place the adversarial input inside the eps-ball")
    return x_adv


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """Uniform random point of the eps-ball (l-inf cube / l2 ball) around x, then clipped to [0, 1]."""
    dev = generator.device
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype) * 2.0 - 1.0
        delta = eps * u
    else:
        direction = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
        direction = direction / torch.linalg.vector_norm(direction.flatten(1), dim=1).clamp_min(1e-12).view(
            -1, *([1] * (x.dim() - 1)))
        dim = x[0].numel()
        radius = eps * torch.rand(x.shape[0], generator=generator, device=dev, dtype=x.dtype) ** (1.0 / dim)
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
    return _project(x + delta.to(x.device), x, eps, norm)


def _assert_feasible(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Exact check used before any success is reported; returns the per-example perturbation norms."""
    if x_adv.shape != x.shape:
        raise RuntimeError("internal error: adversarial batch has the wrong shape")
    if not bool(torch.isfinite(x_adv).all()) or float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0:
        raise RuntimeError("internal error: adversarial input left the [0, 1] box")
    sizes = perturbation_norm(x_adv, x, norm)
    if bool((sizes > eps).any()):
        raise RuntimeError(f"internal error: adversarial input left the {norm} ball of radius {eps}")
    return sizes


# --------------------------------------------------------------------------------------------------
# attacks on a base classifier
# --------------------------------------------------------------------------------------------------
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
         loss: str = "ce") -> torch.Tensor:
    """Fast gradient (sign) method: one step of size eps along the steepest-ascent direction of the loss.

    l-inf: ``x + eps * sign(grad)`` (Goodfellow et al. 2015); l2: ``x + eps * grad / ||grad||_2`` (FGM).
    The result is projected into the eps-ball and [0, 1]. A zero gradient leaves an example unchanged.

    Args:
        model: classifier mapping (B, ...) inputs in [0, 1] to (B, K) logits.
        x: (B, ...) float inputs in [0, 1]. y: (B,) int labels.
        eps: radius in pixel units (>= 0). norm: "linf" or "l2". loss: "ce" (cross-entropy) or "margin".

    Returns:
        x_adv, detached, same shape/dtype as x, with ``||x_adv - x||_norm <= eps`` and values in [0, 1].

    Example:
        >>> x_adv = fgsm(model, x, y, eps=8 / 255)   # doctest: +SKIP
    """
    _check_model(model)
    x, y = _check_inputs(x, y)
    eps = _nonneg("eps", eps)
    norm = _check_norm(norm)
    loss = check_choice("loss", loss, LOSSES)
    if eps == 0.0:
        return x.clone()
    with _eval_mode(model):
        _, _, g = _forward(model, x, y, loss, grad=True)
        return _project(x + eps * _ascent_direction(g, norm), x, eps, norm)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", steps: int = 10,
        step_size: float | None = None, restarts: int = 1, random_start: bool = True,
        generator: torch.Generator | None = None, loss: str = "ce") -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018), untargeted, l-inf or l2, with restarts.

    Each restart starts from a uniform random point of the eps-ball (if ``random_start``) and takes
    ``steps`` steps of size ``step_size`` (default ``2.5 * eps / steps``) along sign(grad) (l-inf) or
    grad/||grad||_2 (l2), projecting into the eps-ball and [0, 1] after each step. Every iterate of every
    restart is a candidate; per example the returned input is the best candidate ordered by
    (misclassified, loss): a misclassified iterate from any restart beats every correctly classified
    one, and among equals the higher loss wins. (So the attack is never weakened by a later step
    undoing an earlier flip.) The flags used for this choice come from the attack's own forward passes;
    callers that report successes must re-run the model (as :func:`robust_accuracy` does).

    On a linear 2-class model PGD from x (``random_start=False``) reaches the exact minimal flip
    distance |w.x + b| / ||w||_dual (tested); from a random start the start's off-axis part only decays
    geometrically, so within a tight budget (eps within ~1-2% of the minimal distance) it can miss.

    Args:
        eps: radius in pixel units (>= 0; eps == 0 returns x unchanged).
        norm: "linf" or "l2". steps: >= 1. step_size: > 0 or None. restarts: >= 1 (> 1 needs random_start).
        generator: torch.Generator for the random starts (None: a fresh generator seeded with 0).
        loss: "ce" (cross-entropy) or "margin" (max other logit - true logit; does not saturate).

    Returns:
        x_adv, detached, same shape/dtype as x, inside the eps-ball and [0, 1].

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x_adv = pgd(model, x, y, eps=0.5, norm="l2", steps=20, restarts=2, generator=g)  # doctest: +SKIP
    """
    _check_model(model)
    x, y = _check_inputs(x, y)
    eps = _nonneg("eps", eps)
    norm = _check_norm(norm)
    steps = check_int("steps", steps, 1)
    step_size = _check_step_size(step_size)
    restarts = check_int("restarts", restarts, 1)
    random_start = check_bool("random_start", random_start)
    generator = _check_generator(generator)
    loss = check_choice("loss", loss, LOSSES)
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 requires random_start=True (restarts from x are identical)")
    if eps == 0.0:
        return x.clone()
    if step_size is None:
        step_size = 2.5 * eps / steps

    with _eval_mode(model):
        best_x = x.clone()
        best_flip = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        bshape = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(restarts):
            x_adv = _random_start(x, eps, norm, generator) if random_start else x.clone()
            for t in range(steps + 1):
                last = t == steps
                logits, losses, g = _forward(model, x_adv, y, loss, grad=not last)
                flip = logits.argmax(dim=1) != y
                losses = torch.nan_to_num(losses.float(), nan=float("-inf"))
                better = (flip & ~best_flip) | ((flip == best_flip) & (losses > best_loss))
                best_x = torch.where(better.view(bshape), x_adv, best_x)
                best_flip = best_flip | flip
                best_loss = torch.where(better, losses, best_loss)
                if not last:
                    x_adv = _project(x_adv + step_size * _ascent_direction(g, norm), x, eps, norm)
    return best_x


# --------------------------------------------------------------------------------------------------
# evaluation of a base classifier
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AttackResult:
    """Outcome of :func:`robust_accuracy`; echoes every setting.

    Per-example tuples (length n): ``clean_correct`` (clean prediction == label), ``success`` (clean
    prediction was correct AND the model, re-run on the final adversarial input, predicts another
    label), ``adv_label`` (the verified prediction on the adversarial input; for examples that were
    already misclassified it is the clean prediction, since they are not attacked), ``perturbation``
    (size of x_adv - x in ``norm``, 0.0 for examples not attacked). ``robust_accuracy`` is the fraction
    of examples that are clean-correct and not successfully attacked: an upper bound on the true
    robust accuracy at radius ``eps``. ``adversarial`` holds x_adv when requested (not in to_dict()).
    """

    attack: str
    norm: str
    eps: float
    steps: int | None
    step_size: float | None
    restarts: int | None
    random_start: bool | None
    loss: str
    seed: int
    batch_size: int
    n: int
    clean_accuracy: float
    robust_accuracy: float
    clean_correct: tuple[bool, ...]
    success: tuple[bool, ...]
    adv_label: tuple[int, ...]
    perturbation: tuple[float, ...]
    time_s: float
    adversarial: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def robust_correct(self) -> tuple[bool, ...]:
        return tuple(c and not s for c, s in zip(self.clean_correct, self.success))

    @property
    def num_success(self) -> int:
        return int(sum(self.success))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "adversarial"}
        for key in ("clean_correct", "success", "adv_label", "perturbation"):
            out[key] = list(out[key])
        return out


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd", eps: float,
                    norm: str = "linf", batch_size: int = 256, steps: int | None = None,
                    step_size: float | None = None, restarts: int | None = None, random_start: bool | None = None,
                    seed: int = 0, loss: str = "ce", keep_adversarial: bool = False,
                    verbose: bool = True, device: str | torch.device | None = None) -> AttackResult:
    """Clean and empirical robust accuracy of ``model`` under FGSM or PGD at radius ``eps``.

    Only clean-correct examples are attacked. A success is counted only after the model, re-run (under
    ``torch.no_grad`` in eval mode) on the final adversarial input, predicts a label different from y,
    and after an exact check that the input lies in the eps-ball and [0, 1]. The random starts of all
    batches come from one generator seeded with ``seed`` (results depend on batch_size).

    ``steps`` (default 10), ``step_size`` (default 2.5*eps/steps), ``restarts`` (default 1) and
    ``random_start`` (default True) apply to PGD only; passing them with attack="fgsm" is an error.
    ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``; default: where x is) moves the model and the data there; the
    random starts are drawn by a generator on that device.

    Example:
        >>> res = robust_accuracy(model, x, y, attack="pgd", eps=0.1, norm="linf", steps=20)  # doctest: +SKIP
        >>> res.clean_accuracy, res.robust_accuracy                                           # doctest: +SKIP
    """
    t0 = time.perf_counter()
    _check_model(model)
    x, y = _on_device(model, *_check_inputs(x, y), device)
    attack = check_choice("attack", attack, ATTACKS)
    eps = _nonneg("eps", eps)
    norm = _check_norm(norm)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0)
    loss = check_choice("loss", loss, LOSSES)
    keep_adversarial = check_bool("keep_adversarial", keep_adversarial)
    if attack == "fgsm":
        given = [name for name, v in (("steps", steps), ("step_size", step_size), ("restarts", restarts),
                                      ("random_start", random_start)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to attack='pgd', not 'fgsm'")
    else:
        steps = 10 if steps is None else check_int("steps", steps, 1)
        restarts = 1 if restarts is None else check_int("restarts", restarts, 1)
        random_start = True if random_start is None else check_bool("random_start", random_start)
        step_size = _check_step_size(step_size)
        if restarts > 1 and not random_start:
            raise ValueError("restarts > 1 requires random_start=True (restarts from x are identical)")
    generator = torch.Generator(device=x.device).manual_seed(seed)

    n = x.shape[0]
    clean_correct = torch.zeros(n, dtype=torch.bool)
    success = torch.zeros(n, dtype=torch.bool)
    adv_label = torch.zeros(n, dtype=torch.int64)
    sizes = torch.zeros(n, dtype=torch.float64)
    adversarial = x.clone() if keep_adversarial else None
    starts = range(0, n, batch_size)
    desc = f"{attack} {norm} eps={eps:g}"
    with _eval_mode(model):
        for lo in track(starts, total=len(starts), desc=desc, unit="batch", enabled=verbose):
            xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
            with torch.no_grad():
                logits = model(xb)
            _check_logits(logits, xb.shape[0])
            _check_labels_fit(yb, logits.shape[1])
            pred = logits.argmax(dim=1)
            correct = pred == yb
            clean_correct[lo:lo + len(yb)] = correct.cpu()
            adv_label[lo:lo + len(yb)] = pred.cpu()
            idx = torch.nonzero(correct).flatten()
            if idx.numel() == 0:
                continue
            xa, ya = xb[idx], yb[idx]
            if attack == "fgsm":
                x_adv = fgsm(model, xa, ya, eps=eps, norm=norm, loss=loss)
            else:
                x_adv = pgd(model, xa, ya, eps=eps, norm=norm, steps=steps, step_size=step_size,
                            restarts=restarts, random_start=random_start, generator=generator, loss=loss)
            # verification: exact feasibility check, then a fresh forward pass on the final inputs
            size = _assert_feasible(x_adv, xa, eps, norm)
            with torch.no_grad():
                adv_pred = model(x_adv).argmax(dim=1)
            rows = idx.cpu() + lo
            success[rows] = (adv_pred != ya).cpu()
            adv_label[rows] = adv_pred.cpu()
            sizes[rows] = size.cpu()
            if adversarial is not None:
                adversarial[lo + idx] = x_adv

    if attack == "pgd" and step_size is None:
        step_size = 2.5 * eps / steps  # the default pgd() used, recorded for the result
    result = AttackResult(
        attack=attack, norm=norm, eps=eps, steps=steps, step_size=step_size, restarts=restarts,
        random_start=random_start, loss=loss, seed=seed, batch_size=batch_size, n=n,
        clean_accuracy=float(clean_correct.float().mean()),
        robust_accuracy=float((clean_correct & ~success).float().mean()),
        clean_correct=tuple(bool(v) for v in clean_correct), success=tuple(bool(v) for v in success),
        adv_label=tuple(int(v) for v in adv_label), perturbation=tuple(float(v) for v in sizes),
        time_s=time.perf_counter() - t0, adversarial=adversarial,
    )
    logger.info("%s %s eps=%g: clean %.4f robust %.4f (%d examples, %.1fs)", attack, norm, eps,
                result.clean_accuracy, result.robust_accuracy, n, result.time_s)
    return result


# --------------------------------------------------------------------------------------------------
# attack on a randomized-smoothing classifier (Salman et al. 2019)
# --------------------------------------------------------------------------------------------------
def _noise(shape: tuple[int, ...], sigma: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    z = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return (sigma * z).to(like.device)


def _smoothed_loss_grad(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                        chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss -log((1/m) sum_i softmax(f(x + delta_i))_y) per example and its gradient w.r.t. x.

    Computed in log space, noise chunk by noise chunk, with a running log-sum-exp so the result equals
    the full-batch gradient exactly (up to rounding) and does not underflow when p_y is tiny.
    """
    m = noise.shape[0]
    b = x_adv.shape[0]
    acc_lse = torch.full((b,), float("-inf"), dtype=torch.float64, device=x_adv.device)
    acc_grad = torch.zeros_like(x_adv, dtype=torch.float64)
    bshape = (-1,) + (1,) * (x_adv.dim() - 1)
    for start in range(0, m, chunk):
        nz = noise[start:start + chunk]
        k = nz.shape[0]
        with torch.enable_grad():
            xr = x_adv.detach().requires_grad_(True)
            batch = (xr.unsqueeze(0) + nz).reshape(k * b, *x_adv.shape[1:])
            logits = model(batch)
            _check_logits(logits, k * b)
            _check_labels_fit(y, logits.shape[1])
            logp = F.log_softmax(logits.double(), dim=1).gather(1, y.repeat(k)[:, None])[:, 0].view(k, b)
            chunk_lse = torch.logsumexp(logp, dim=0)                                  # (b,)
            (g,) = torch.autograd.grad(chunk_lse.sum(), xr)                           # grad of chunk_lse_b
        chunk_lse = chunk_lse.detach()
        new_lse = torch.logaddexp(acc_lse, chunk_lse)
        w_old = torch.exp(acc_lse - new_lse).nan_to_num(0.0)
        w_new = torch.exp(chunk_lse - new_lse).nan_to_num(0.0)
        acc_grad = acc_grad * w_old.view(bshape) + g.double() * w_new.view(bshape)
        acc_lse = new_lse
    loss = -(acc_lse - math.log(m))
    return loss, (-acc_grad).to(x_adv.dtype)


def smooth_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, sigma: float, eps: float, norm: str = "l2",
               steps: int = 20, n_noise: int = 16, step_size: float | None = None, random_start: bool = False,
               resample_noise: bool = False, batch_size: int = 1000,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """SmoothAdv PGD (Salman et al. 2019): attack the soft smoothed classifier of ``model``.

    The soft smoothed classifier is G(x)_c = E_delta[softmax(f(x + delta))_c], delta ~ N(0, sigma^2 I),
    estimated with ``n_noise`` Monte Carlo draws. PGD maximises -log G(x')_y over the eps-ball (and [0, 1])
    with ``steps`` normalised-gradient steps of size ``step_size`` (default 2 * eps / steps, as in the
    paper's code). Noise is added in pixel space without clipping (as in Cohen et al.'s PREDICT/CERTIFY).
    By default the same noise draws are used for all steps (``resample_noise=False``, as in the paper);
    with ``resample_noise=True`` every step draws fresh noise (an expectation-over-transformation
    estimate). Returns the final iterate; whether it fools the *smoothed* classifier must be judged with
    fresh noise, e.g. by :func:`smoothed_robust_accuracy`.

    Args:
        model: the base classifier f. sigma: noise level (> 0, pixel units). eps: attack radius (>= 0).
        norm: "l2" (the norm smoothing certifies) or "linf". steps >= 1, n_noise >= 1.
        batch_size: at most this many noisy images per forward pass (>= 1).
        generator: torch.Generator for the noise and random start (None: a fresh one seeded with 0).

    Returns:
        x_adv (detached) inside the eps-ball around x and [0, 1].
    """
    _check_model(model)
    x, y = _check_inputs(x, y)
    sigma = _positive("sigma", sigma)
    eps = _nonneg("eps", eps)
    norm = _check_norm(norm)
    steps = check_int("steps", steps, 1)
    n_noise = check_int("n_noise", n_noise, 1)
    step_size = (2.0 * eps / steps if step_size is None else _positive("step_size", step_size))
    random_start = check_bool("random_start", random_start)
    resample_noise = check_bool("resample_noise", resample_noise)
    batch_size = check_int("batch_size", batch_size, 1)
    generator = _check_generator(generator)
    if eps == 0.0:
        return x.clone()
    chunk = max(1, batch_size // x.shape[0])
    noise_shape = (n_noise,) + tuple(x.shape)
    with _eval_mode(model):
        x_adv = _random_start(x, eps, norm, generator) if random_start else x.clone()
        noise = _noise(noise_shape, sigma, generator, x)
        for t in range(steps):
            if resample_noise and t > 0:
                noise = _noise(noise_shape, sigma, generator, x)
            _, g = _smoothed_loss_grad(model, x_adv, y, noise, chunk)
            x_adv = _project(x_adv + step_size * _ascent_direction(g, norm), x, eps, norm)
    return x_adv


@dataclasses.dataclass(frozen=True)
class SmoothedAttackResult:
    """Outcome of :func:`smoothed_robust_accuracy`; echoes every setting.

    Per example (tuples of length n): the smoothed prediction on the clean input (``clean_label``,
    ``clean_abstained``) and on the adversarial input (``adv_label``, ``adv_abstained``), both from PREDICT
    on noise independent of the attack's; ``clean_correct`` (not abstained and == y); ``success`` (clean
    correct and PREDICT on the adversarial input returns a different, non-abstained label);
    ``abstain`` (clean correct and PREDICT abstains on the adversarial input; reported separately, not a
    success); ``perturbation`` (size of x_adv - x in ``norm``). Examples that are not clean-correct are
    not attacked (their adv_* fields repeat the clean prediction). A label is None where PREDICT abstained.

    ``robust_accuracy`` = fraction clean-correct with neither success nor abstention (an empirical upper
    bound on the smoothed classifier's accuracy at radius eps, at PREDICT's level alpha).
    """

    eps: float
    norm: str
    sigma: float
    steps: int
    step_size: float
    n_noise: int
    random_start: bool
    resample_noise: bool
    n_predict: int
    alpha: float
    batch_size: int
    seed: int
    n: int
    clean_accuracy: float
    robust_accuracy: float
    success_rate: float
    abstain_rate: float
    clean_label: tuple[int | None, ...]
    clean_abstained: tuple[bool, ...]
    adv_label: tuple[int | None, ...]
    adv_abstained: tuple[bool, ...]
    clean_correct: tuple[bool, ...]
    success: tuple[bool, ...]
    abstain: tuple[bool, ...]
    perturbation: tuple[float, ...]
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


def _derived_seed(seed: int, *path: int) -> int:
    """An independent seed in [0, 2**32) for each (example, purpose), derived from one user seed."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1, dtype=np.uint32)[0])


def _predict(smooth: Any, x: torch.Tensor, *, n: int, alpha: float, batch_size: int, seed: int):
    pred = smooth.predict(x, n=n, alpha=alpha, batch_size=batch_size, seed=seed)
    abstained = bool(pred.abstained)
    label = None if abstained or pred.label is None else int(pred.label)
    return label, abstained


def smoothed_robust_accuracy(smooth: Any, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "l2",
                             steps: int = 20, n_noise: int = 16, step_size: float | None = None,
                             random_start: bool = False, resample_noise: bool = False, n_predict: int = 1000,
                             alpha: float = 0.001, batch_size: int = 1000, seed: int = 0,
                             verbose: bool = True, device: str | torch.device | None = None) -> SmoothedAttackResult:
    """Empirical robust accuracy of a smoothed classifier under :func:`smooth_pgd`, judged by PREDICT.

    ``smooth`` is a :class:`certify.smoothing.Smooth` (anything with ``model``, ``sigma`` and
    ``predict(x, n=, alpha=, batch_size=, seed=) -> Prediction(label, abstained, ...)``). For each
    example: PREDICT on the clean input (seed A); if it returns the true label, attack the base model
    with :func:`smooth_pgd` (noise from seed B), check the result lies in the eps-ball and [0, 1], and
    run PREDICT on the adversarial input with a third, independent seed C (fresh noise). Seeds A, B, C
    are derived from ``seed`` and the example index. Success = PREDICT returns a different label without
    abstaining; abstention is reported separately.

    Note PREDICT itself errs with probability <= alpha per call (Cohen et al. 2019), so with many
    examples a few "successes" or abstentions can be sampling effects rather than attack successes.

    ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``; default: the smoothed classifier's) is where the attack and
    PREDICT run; the attack noise is drawn by generators on that device.
    """
    t0 = time.perf_counter()
    model = getattr(smooth, "model", None)
    sigma = getattr(smooth, "sigma", None)
    if model is None or sigma is None or not callable(getattr(smooth, "predict", None)):
        raise TypeError("smooth must be a certify.smoothing.Smooth (needs .model, .sigma and .predict)")
    _check_model(model)
    if device is not None:
        from certify.smoothing import Smooth

        if not isinstance(smooth, Smooth):
            raise TypeError(f"device= needs smooth to be a certify.Smooth, got {type(smooth).__name__}")
        smooth = Smooth(model, smooth.num_classes, smooth.sigma, device=device)
    x, y = _on_device(model, *_check_inputs(x, y), getattr(smooth, "device", None))
    eps = _nonneg("eps", eps)
    norm = _check_norm(norm)
    sigma = _positive("smooth.sigma", sigma)
    steps = check_int("steps", steps, 1)
    n_noise = check_int("n_noise", n_noise, 1)
    step_size = 2.0 * eps / steps if step_size is None else _positive("step_size", step_size)
    random_start = check_bool("random_start", random_start)
    resample_noise = check_bool("resample_noise", resample_noise)
    n_predict = check_int("n_predict", n_predict, 1)
    alpha = _positive("alpha", alpha)
    if alpha >= 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0)

    n = x.shape[0]
    clean_label: list[int | None] = []
    clean_abst: list[bool] = []
    adv_label: list[int | None] = []
    adv_abst: list[bool] = []
    correct: list[bool] = []
    success: list[bool] = []
    abstain: list[bool] = []
    sizes: list[float] = []
    for i in track(range(n), total=n, desc=f"smoothed pgd eps={eps:g}", unit="img", enabled=verbose):
        xi, yi = x[i:i + 1], y[i:i + 1]
        label, abst = _predict(smooth, x[i], n=n_predict, alpha=alpha, batch_size=batch_size,
                               seed=_derived_seed(seed, i, 0))
        ok = (not abst) and label == int(yi)
        clean_label.append(label)
        clean_abst.append(abst)
        correct.append(ok)
        if not ok:
            adv_label.append(label)
            adv_abst.append(abst)
            success.append(False)
            abstain.append(False)
            sizes.append(0.0)
            continue
        gen = torch.Generator(device=x.device).manual_seed(_derived_seed(seed, i, 1))
        x_adv = smooth_pgd(model, xi, yi, sigma=sigma, eps=eps, norm=norm, steps=steps, n_noise=n_noise,
                           step_size=step_size, random_start=random_start, resample_noise=resample_noise,
                           batch_size=batch_size, generator=gen)
        size = float(_assert_feasible(x_adv, xi, eps, norm)[0])
        a_label, a_abst = _predict(smooth, x_adv[0], n=n_predict, alpha=alpha, batch_size=batch_size,
                                   seed=_derived_seed(seed, i, 2))
        adv_label.append(a_label)
        adv_abst.append(a_abst)
        success.append((not a_abst) and a_label != int(yi))
        abstain.append(a_abst)
        sizes.append(size)

    robust = [c and not s and not a for c, s, a in zip(correct, success, abstain)]
    result = SmoothedAttackResult(
        eps=eps, norm=norm, sigma=sigma, steps=steps, step_size=step_size, n_noise=n_noise,
        random_start=random_start, resample_noise=resample_noise, n_predict=n_predict, alpha=alpha,
        batch_size=batch_size, seed=seed, n=n,
        clean_accuracy=sum(correct) / n, robust_accuracy=sum(robust) / n,
        success_rate=sum(success) / n, abstain_rate=sum(abstain) / n,
        clean_label=tuple(clean_label), clean_abstained=tuple(clean_abst), adv_label=tuple(adv_label),
        adv_abstained=tuple(adv_abst), clean_correct=tuple(correct), success=tuple(success),
        abstain=tuple(abstain), perturbation=tuple(sizes), time_s=time.perf_counter() - t0,
    )
    logger.info("smoothed pgd %s eps=%g sigma=%g: clean %.4f robust %.4f (success %.4f, abstain %.4f)",
                norm, eps, sigma, result.clean_accuracy, result.robust_accuracy, result.success_rate,
                result.abstain_rate)
    return result
