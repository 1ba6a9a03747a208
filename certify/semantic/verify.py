"""``verify_semantic``: certify one image against one semantic perturbation family.

One parameter and two parameters are two separate paths (:func:`_verify_1d`, :func:`_verify_2d`) sharing the
argument checks, the bounder (:mod:`.bounds`) and the certificate (:mod:`.certificate`).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from certify import lirpa
from certify._checks import check_bool, check_float, check_int
from certify._modes import eval_mode
from certify.devices import place_module, resolve_device

from .attack import attack_1d, attack_2d
from .bounds import _Bounder
from .certificate import SemanticCertificate, tightness_1d
from .inputs import check_baseline, check_method, check_model, check_perturbation, image_of, logits_of, resolve_range
from .splitting import certify_1d, certify_2d

__all__ = ["verify_semantic", "DEFAULT_SPLITTING"]

# (n_splits, max_refine) when not given, by family kind: "box" pieces are bounded with cheap CROWN-IBP over
# narrow pixel boxes, so they start finer and refine deeper
DEFAULT_SPLITTING = {"layer": (8, 4), "box": (32, 6)}


def verify_semantic(model: nn.Module, x: torch.Tensor, label: int, perturbation: Any, *,
                    method: str = "crown", max_param: Any = None, n_splits: int | None = None,
                    max_refine: int | None = None, attack: bool = True, attack_grid: int = 201,
                    attack_steps: int = 20, batch_size: int = 32, seed: int = 0,
                    baseline: str | None = None, margin_tol: float = 1e-4,
                    alpha_iterations: int = 20, device: str | torch.device | None = None,
                    _model_net: lirpa.BoundedNet | None = None) -> SemanticCertificate:
    """Certify that ``perturbation`` with any parameter in the certified range keeps ``label``.

    Args:
        model: classifier on [0,1] images (any batch size), logits (B, K). Bounded in eval mode.
        x: one image (C,H,W) in [0,1] (colour families need C = 3).
        label: the class to certify, in [0, K).
        perturbation: a :class:`semantic_layers.SemanticPerturbation`.
        method: "crown" (default), "alpha-crown" (slower) or "ibp" (fast, loose). "crown" bounds "layer"
            families with auto_LiRPA's Forward+Backward on ``theta -> layer -> model`` (forward linear
            intermediate bounds, CROWN for the margins; plain CROWN where the model has no forward mode) and
            "box" families and baselines with CROWN-IBP over the pixel boxes of the pieces.
        max_param: requested range: None = the family's ``default_range``; r = ``[-r, r]``;
            ``(lo, hi)``; for two parameters ``((lo1, hi1), (lo2, hi2))`` or ``(r1, r2)``; or a
            mapping ``{family name: any of these}``. Must contain 0 and lie in the family's domain.
        n_splits: initial sub-intervals over the whole range (split between the two sides of 0 in
            proportion to their length); two parameters: grid cells per axis (n_splits // 2 rings).
            None: :data:`DEFAULT_SPLITTING` of the family's kind (8 for "layer", 32 for "box").
        max_refine: how many times a failing sub-interval (cell) is bisected (quartered) before the
            certified range stops at it (one parameter: a round splits it into 4 = two bisection
            levels at once). None: :data:`DEFAULT_SPLITTING` (4 for "layer", 6 for "box").
        attack, attack_grid, attack_steps: nearest-flip search: ``attack_grid`` evenly spaced
            parameters (k = 2: a sqrt(attack_grid)-per-axis grid), then sign-gradient steps on
            theta (min(attack_steps, 10), from the 2 lowest-margin grid points before the nearest
            flip) and ``attack_steps`` bisection steps between the flip and the last safe point.
        batch_size: parameter boxes per bound call (and images per attack batch = 8x).
        seed: recorded; the search is deterministic (grids, gradients, bisection).
        baseline: None (semantic verification) or "linf-box" / "linf-ball" (naive l-inf baselines;
            see the module docstring).
        margin_tol: a box verifies when every margin lower bound exceeds this (logits).
        alpha_iterations: optimisation steps of "alpha-crown".
        device: where the model, the image, the parameter boxes and the bounds live: ``"cpu"``, ``"cuda"``,
            ``"auto"`` or a ``torch.device`` (:func:`certify.devices.resolve_device`); the model is moved there
            (``model.to(device)``). None (default): the model's device (its first parameter; the CPU without
            one). The certificate holds Python floats whatever the device.

    Returns:
        :class:`SemanticCertificate`.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    check_model(model)
    check_perturbation(perturbation)
    opts = _Options(
        method=check_method(method), baseline=check_baseline(baseline),
        n_splits=check_int("n_splits", DEFAULT_SPLITTING[perturbation.kind][0] if n_splits is None else n_splits, 1),
        max_refine=check_int("max_refine",
                             DEFAULT_SPLITTING[perturbation.kind][1] if max_refine is None else max_refine, 0),
        attack=check_bool("attack", attack), attack_grid=check_int("attack_grid", attack_grid, 3),
        attack_steps=check_int("attack_steps", attack_steps, 0), batch_size=check_int("batch_size", batch_size, 1),
        alpha_iterations=check_int("alpha_iterations", alpha_iterations, 1),
        margin_tol=check_float("margin_tol", margin_tol, low=0.0), seed=check_int("seed", seed, 0))
    img = image_of(perturbation, x)
    ranges = resolve_range(perturbation, max_param)
    dev = place_module(model, dev)
    img = img.to(dev)
    with eval_mode(model):
        logits = logits_of(model, img)
        num_classes = int(logits.shape[1])
        label = _check_label(label, num_classes)
        predicted = int(logits.argmax(dim=1)[0])
        bounder = _Bounder(model, img, label, num_classes, perturbation, method=opts.method, baseline=opts.baseline,
                           batch_size=opts.batch_size, alpha_iterations=opts.alpha_iterations,
                           margin_tol=opts.margin_tol, model_net=_model_net)
        bounder.range_lo = torch.tensor([a for a, _ in ranges], dtype=torch.float64, device=dev)
        bounder.range_hi = torch.tensor([b for _, b in ranges], dtype=torch.float64, device=dev)
        path = _verify_1d if len(ranges) == 1 else _verify_2d
        found = path(model, img, label, perturbation, ranges, bounder, opts, clean_correct=predicted == label)
    return SemanticCertificate(
        perturbation=perturbation.name, param_names=tuple(perturbation.param_names),
        units=str(getattr(perturbation, "units", "")), kind=perturbation.kind, method=opts.method,
        baseline=opts.baseline, label=label, predicted=predicted, clean_correct=predicted == label,
        requested=ranges[0] if len(ranges) == 1 else ranges, n_splits=len(found["pieces"]),
        max_refine=opts.max_refine, margin_tol=opts.margin_tol,
        pieces=tuple((p[0], p[1], p[2], p[2] > opts.margin_tol) for p in found.pop("pieces")),
        time_s=time.perf_counter() - t0, seed=opts.seed, **found)


@dataclasses.dataclass(frozen=True)
class _Options:
    method: str
    baseline: str | None
    n_splits: int
    max_refine: int
    attack: bool
    attack_grid: int
    attack_steps: int
    batch_size: int
    alpha_iterations: int
    margin_tol: float
    seed: int


def _check_label(label: Any, num_classes: int) -> int:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer, torch.Tensor)):
        raise TypeError(f"label must be an int; got {type(label).__name__}")
    label = int(label)
    if num_classes < 2:
        raise ValueError("the model must have at least 2 classes")
    if not 0 <= label < num_classes:
        raise ValueError(f"label must be in [0, {num_classes - 1}] (the model has {num_classes} classes); got {label}")
    return label


def _verify_1d(model: nn.Module, img: torch.Tensor, label: int, perturbation: Any, ranges: tuple,
               bounder: _Bounder, opts: _Options, *, clean_correct: bool) -> dict[str, Any]:
    """One parameter: the certified interval around 0, then the nearest flips below and above 0."""
    (lo, hi), = ranges
    pieces: list = []
    if not clean_correct:   # nothing is certified, not even 0; the clean image itself is the flip
        return dict(certified=(0.0, 0.0), certified_scale=None, attack=(0.0, 0.0), attack_theta=(0.0, 0.0),
                    attack_scale=None, tightness=None, n_refined=0, attack_time_s=0.0, pieces=pieces)
    c_lo, c_hi, n_refined = certify_1d(bounder, lo, hi, n_splits=opts.n_splits, max_refine=opts.max_refine,
                                       tol=opts.margin_tol, pieces=pieces)
    certified = (float(c_lo), float(c_hi))
    t_attack = time.perf_counter()
    att = None
    if opts.attack:
        att = attack_1d(model, perturbation, img, label, lo, hi, grid=opts.attack_grid, steps=opts.attack_steps,
                        batch=8 * opts.batch_size)
    return dict(certified=certified, certified_scale=None, attack=att, attack_theta=att, attack_scale=None,
                tightness=tightness_1d(certified, att), n_refined=n_refined,
                attack_time_s=time.perf_counter() - t_attack, pieces=pieces)


def _verify_2d(model: nn.Module, img: torch.Tensor, label: int, perturbation: Any, ranges: tuple,
               bounder: _Bounder, opts: _Options, *, clean_correct: bool) -> dict[str, Any]:
    """Two parameters: the largest certified scale s of the requested box, then the smallest-scale flip."""
    pieces: list = []
    if not clean_correct:
        zero = tuple((0.0, 0.0) for _ in ranges)
        return dict(certified=zero, certified_scale=0.0, attack=zero, attack_theta=(0.0,) * len(ranges),
                    attack_scale=0.0, tightness=None, n_refined=0, attack_time_s=0.0, pieces=pieces)
    scale, n_refined = certify_2d(bounder, ranges, n_splits=opts.n_splits, max_refine=opts.max_refine,
                                  tol=opts.margin_tol, pieces=pieces)
    t_attack = time.perf_counter()
    att = att_theta = att_scale = None
    if opts.attack:
        s, point = attack_2d(model, perturbation, img, label, ranges, grid=opts.attack_grid,
                             steps=opts.attack_steps, batch=8 * opts.batch_size)
        if point is not None:
            att_scale, att_theta = s, point
            att = tuple((s * a, s * b) for a, b in ranges)
    return dict(certified=tuple((scale * a, scale * b) for a, b in ranges), certified_scale=scale, attack=att,
                attack_theta=att_theta, attack_scale=att_scale,
                tightness=None if not att_scale else float(scale / att_scale), n_refined=n_refined,
                attack_time_s=time.perf_counter() - t_attack, pieces=pieces)
