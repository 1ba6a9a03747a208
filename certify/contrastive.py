"""Self-supervised contrastive pretraining of an encoder at CPU scale: SimCLR and adversarial SimCLR.

* ``mode="simclr"`` (Chen et al., "A Simple Framework for Contrastive Learning of Visual
  Representations", ICML 2020): two random views of every image, a small projection head on the
  encoder's representation, and the NT-Xent loss (:func:`nt_xent`) that pulls the two views of an
  image together and pushes the other ``2B - 2`` views of the batch away.
* ``mode="adversarial"``: instance-wise adversarial contrastive learning in the form of RoCL (Kim et
  al., NeurIPS 2020) and the contrastive term of AdvCL (Fan et al., NeurIPS 2021): the first view is
  replaced by an l-inf PGD perturbation (``eps`` in pixel units, ``pgd_steps`` steps) that *maximises*
  the NT-Xent loss against the second view, and the encoder minimises
  ``nt_xent(z1, z2) + nt_xent(z1_adv, z2)``. (AdvCL's high-frequency view and pseudo-labels, and the
  NCA-based integrated losses of Ko et al., ICML 2022, are not implemented.)

Views (:func:`random_views`) are cheap for small grey or colour images: a random translation by up to
``max_shift`` pixels (zero padding), a random horizontal flip, a random brightness factor in
``[1 - jitter, 1 + jitter]`` and a random square cut-out, all clipped to [0, 1].

Everything random comes from ``seed`` through private ``torch.Generator`` objects; the projection
head is initialised in a forked RNG state, so the global RNG is never touched.

Example::

    >>> from certify import models
    >>> from certify.contrastive import train_contrastive
    >>> enc = models.build("fmnist_mlp", seed=0)
    >>> res = train_contrastive(enc, x_train, steps=200, mode="simclr", seed=0)   # doctest: +SKIP
    >>> res.losses[-1] < res.losses[0]                                          # doctest: +SKIP
    True
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from certify._checks import check_choice, check_float, check_int
from certify._modes import eval_mode
from certify._progress import track

logger = logging.getLogger(__name__)

__all__ = ["MODES", "nt_xent", "random_views", "ContrastiveResult", "train_contrastive"]

MODES = ("simclr", "adversarial")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy) loss of SimCLR, averaged over the ``2B`` views.

    With ``u = normalize([z1; z2])`` and ``s_ij = u_i . u_j / temperature``, the loss of view ``i`` is
    ``-log(exp(s_{i,p(i)}) / sum_{j != i} exp(s_ij))`` with ``p(i)`` the other view of the same image.
    With all embeddings equal it is ``log(2B - 1)`` (chance among the ``2B - 1`` candidates).

    Args:
        z1, z2: (B, D) embeddings of the two views, B >= 2.
        temperature: > 0.
    """
    if not isinstance(z1, torch.Tensor) or not isinstance(z2, torch.Tensor):
        raise TypeError("z1 and z2 must be tensors of shape (B, D)")
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(f"z1 and z2 must have the same shape (B, D) with B >= 2, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    check_float("temperature", temperature, low=0.0, low_open=True)
    b = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = u @ u.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=sim.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(sim.device)
    return F.cross_entropy(sim, target)


def random_views(x: torch.Tensor, generator: torch.Generator, *, max_shift: int = 3, flip: bool = True,
                 jitter: float = 0.4, cutout: int = 8) -> torch.Tensor:
    """One random augmented view of every image of ``x`` (N, C, H, W) in [0, 1]; see the module docstring.

    The same ``generator`` state gives the same views; the result stays in [0, 1].
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise TypeError("x must be a tensor of shape (N, C, H, W)")
    n, _, h, w = x.shape
    out = x
    if max_shift > 0:
        pad = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
        dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
        idx_n = torch.arange(n)[:, None, None, None]
        idx_c = torch.arange(x.shape[1])[None, :, None, None]
        out = pad[idx_n, idx_c, rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    if jitter > 0:
        factor = 1.0 + jitter * (2 * torch.rand(n, generator=generator) - 1)
        out = out * factor[:, None, None, None].to(out.dtype)
    if cutout > 0:
        cy = torch.randint(0, h, (n,), generator=generator)
        cx = torch.randint(0, w, (n,), generator=generator)
        ys = torch.arange(h)[None, :, None]
        xs = torch.arange(w)[None, None, :]
        half = cutout // 2
        box = ((ys - cy[:, None, None]).abs() <= half) & ((xs - cx[:, None, None]).abs() <= half)
        out = out.masked_fill(box[:, None], 0.0)
    return out.clamp(0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class ContrastiveResult:
    """What :func:`train_contrastive` did (echoes every setting); ``losses`` is the loss per step.

    ``model`` is the trained encoder (the object passed in, trained in place); it is left out of
    :meth:`to_dict`.
    """

    mode: str
    steps: int
    batch_size: int
    lr: float
    temperature: float
    projection_dim: int
    eps: float
    pgd_steps: int
    seed: int
    n_train: int
    feature_dim: int
    losses: tuple[float, ...]
    train_seconds: float
    model: nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of the steps (at least one)."""
        k = max(1, len(self.losses) // 10)
        return float(sum(self.losses[-k:]) / k)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d["losses"] = list(self.losses)
        d["final_loss"] = self.final_loss
        return d


def _encode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    feats = getattr(model, "features", None)
    h = feats(x) if callable(feats) else model(x)
    return h.flatten(1)


def _adversarial_view(model: nn.Module, head: nn.Module, x1: torch.Tensor, z2: torch.Tensor, *, eps: float,
                      steps: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """l-inf PGD on the first view that maximises NT-Xent against the (fixed) second view's embeddings."""
    step = 2.5 * eps / steps
    delta = (2 * torch.rand(x1.shape, generator=generator) - 1) * eps
    x_adv = (x1 + delta).clamp(0.0, 1.0)
    z2 = z2.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = nt_xent(head(_encode(model, x_adv)), z2, temperature=temperature)
        grad, = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + step * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x1 - eps), x1 + eps).clamp(0.0, 1.0)
    return x_adv.detach()


def _check_args(mode, steps, batch_size, lr, temperature, projection_dim, eps, pgd_steps, seed) -> None:
    check_choice("mode", mode, MODES)
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 2)
    check_int("projection_dim", projection_dim, 1)
    check_int("pgd_steps", pgd_steps, 1)
    check_int("seed", seed, 0)
    check_float("lr", lr, low=0.0, low_open=True)
    check_float("temperature", temperature, low=0.0, low_open=True)
    if mode == "adversarial":
        check_float("eps", eps, low=0.0, high=1.0, low_open=True)
    elif check_float("eps", eps) != 0:
        raise ValueError(f"eps={eps!r} is only used with mode='adversarial'")


def train_contrastive(model: nn.Module, x: torch.Tensor, *, steps: int, mode: str = "simclr", batch_size: int = 128,
                      lr: float = 1e-3, temperature: float = 0.5, projection_dim: int = 32, eps: float = 0.0,
                      pgd_steps: int = 3, seed: int = 0, verbose: bool = False) -> ContrastiveResult:
    """Contrastive pretraining of ``model``'s representation on unlabelled images (trained in place).

    Args:
        model: an encoder; if it has a ``features(x)`` method (every :class:`certify.models.ZooModel`)
            that representation is trained, otherwise ``model(x)`` flattened. Layers after the
            feature layer are not touched.
        x: (N, C, H, W) float images in [0, 1], N >= batch_size.
        steps: optimiser steps (Adam, learning rate ``lr``); each draws ``batch_size`` images.
        mode: ``"simclr"`` or ``"adversarial"`` (see the module docstring).
        temperature: NT-Xent temperature; projection_dim: output size of the 2-layer projection head.
        eps, pgd_steps: l-inf budget (pixel units) and PGD steps of the adversarial view (mode
            ``"adversarial"`` only).
        seed: all randomness (head initialisation, batches, views, attack starts).

    Returns:
        :class:`ContrastiveResult` with the per-step losses; ``result.model is model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise TypeError("x must be a float tensor of shape (N, C, H, W)")
    _check_args(mode, steps, batch_size, lr, temperature, projection_dim, eps, pgd_steps, seed)
    if x.shape[0] < batch_size:
        raise ValueError(f"x has {x.shape[0]} images, fewer than batch_size={batch_size}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("x must have pixel values in [0, 1]")
    with eval_mode(model), torch.no_grad():
        feature_dim = int(_encode(model, x[:2]).shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, projection_dim))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    batch_gen = torch.Generator().manual_seed(seed + 1)
    view_gen = torch.Generator().manual_seed(seed + 2)
    attack_gen = torch.Generator().manual_seed(seed + 3)
    losses = []
    start = time.perf_counter()
    with eval_mode(model):  # every submodule's train/eval mode is restored afterwards
        for _ in track(range(steps), total=steps, desc=f"contrastive ({mode})", unit="step", enabled=verbose):
            xb = x[torch.randint(0, x.shape[0], (batch_size,), generator=batch_gen)]
            x1, x2 = random_views(xb, view_gen), random_views(xb, view_gen)
            model.train()
            z2 = head(_encode(model, x2))
            loss = nt_xent(head(_encode(model, x1)), z2, temperature=temperature)
            if mode == "adversarial":
                model.eval()
                x_adv = _adversarial_view(model, head, x1, z2, eps=float(eps), steps=pgd_steps,
                                          temperature=temperature, generator=attack_gen)
                model.train()
                loss = loss + nt_xent(head(_encode(model, x_adv)), z2, temperature=temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    logger.info("contrastive %s: %d steps in %.1f s, loss %.4f -> %.4f", mode, steps, seconds, losses[0], losses[-1])
    return ContrastiveResult(mode=mode, steps=steps, batch_size=batch_size, lr=float(lr),
                             temperature=float(temperature), projection_dim=projection_dim, eps=float(eps),
                             pgd_steps=int(pgd_steps) if mode == "adversarial" else 0, seed=seed,
                             n_train=int(x.shape[0]), feature_dim=feature_dim, losses=tuple(losses),
                             train_seconds=round(seconds, 2), model=model)
