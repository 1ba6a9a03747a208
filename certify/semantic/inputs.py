"""Argument checks of semantic verification: methods, baselines, perturbations, models, images, ranges."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

METHODS = ("ibp", "crown", "alpha-crown")
BASELINES = ("linf-box", "linf-ball")


def check_method(method: Any) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {METHODS}; got {type(method).__name__}")
    m = method.lower()
    if m not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    return m


def check_baseline(baseline: Any) -> str | None:
    if baseline is None:
        return None
    if not isinstance(baseline, str) or baseline.lower() not in BASELINES:
        raise ValueError(f"baseline must be None or one of {BASELINES}; got {baseline!r}")
    return baseline.lower()



def check_perturbation(perturbation: Any) -> None:
    needed = ("name", "param_names", "kind", "apply", "pixel_bounds", "validate_range", "check_input",
              "default_range", "domain")
    missing = [a for a in needed if not hasattr(perturbation, a)]
    if missing:
        raise TypeError(f"perturbation must be a semantic_layers.SemanticPerturbation (missing {missing}); "
                        f"got {type(perturbation).__name__}")
    if perturbation.kind not in ("layer", "box"):
        raise TypeError(f"perturbation.kind must be 'layer' or 'box'; got {perturbation.kind!r}")


def check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")


def image_of(perturbation: Any, x: Any) -> torch.Tensor:
    """Validate one image (C,H,W) (or (1,C,H,W)) in [0,1]; return float32 (C,H,W)."""
    xb = perturbation.check_input(x)
    if xb.shape[0] != 1:
        raise ValueError(f"x must be one image (C,H,W); got shape {tuple(x.shape)}")
    return xb[0].detach().float()


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x.unsqueeze(0) if x.dim() == 3 else x)
    if out.dim() != 2:
        raise ValueError(f"model must return logits of shape (B, num_classes); got {tuple(out.shape)}")
    return out


def resolve_range(perturbation: Any, max_param: Any) -> tuple[tuple[float, float], ...]:
    """Requested parameter box as k (lo, hi) pairs; every pair contains 0.

    ``max_param``: None (the family's default range), a number r (``[-r, r]`` for every parameter),
    a (lo, hi) pair (k = 1) or k pairs (k = 2), or a mapping ``{family name: any of these}``.
    """
    k = len(perturbation.param_names)
    if isinstance(max_param, Mapping):
        if perturbation.name not in max_param:
            raise ValueError(f"max_param has no entry for perturbation {perturbation.name!r}; "
                             f"keys: {sorted(max_param)}")
        max_param = max_param[perturbation.name]
    if max_param is None:
        rng = perturbation.default_range
        pairs = (tuple(rng),) if k == 1 else tuple(tuple(r) for r in rng)
    elif isinstance(max_param, bool):
        raise TypeError("max_param must be a number, a (lo, hi) pair or None; got a bool")
    elif isinstance(max_param, (int, float, np.integer, np.floating)):
        r = float(max_param)
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"max_param must be a positive finite number; got {max_param!r}")
        pairs = ((-r, r),) * k
    else:
        try:
            seq = [v for v in max_param]
        except TypeError:
            raise TypeError(f"max_param must be None, a number, a (lo, hi) pair or a mapping; "
                            f"got {max_param!r}") from None
        if k == 1 and len(seq) == 2 and all(isinstance(v, (int, float, np.integer, np.floating)) for v in seq):
            pairs = ((float(seq[0]), float(seq[1])),)
        elif len(seq) == k and all(isinstance(v, (tuple, list)) and len(v) == 2 for v in seq):
            pairs = tuple((float(a), float(b)) for a, b in seq)
        elif k == 2 and len(seq) == 2 and all(isinstance(v, (int, float, np.integer, np.floating)) for v in seq):
            pairs = tuple((-float(v), float(v)) for v in seq)
        else:
            raise ValueError(f"max_param for {perturbation.name!r} (k={k}) must be a number, "
                             f"{'a (lo, hi) pair' if k == 1 else 'k (lo, hi) pairs or k numbers'}; got {max_param!r}")
    pairs = tuple((float(a), float(b)) for a, b in pairs)
    _check_pairs(perturbation, pairs)
    lo = [a for a, _ in pairs]
    hi = [b for _, b in pairs]
    perturbation.validate_range(lo if k > 1 else lo[0], hi if k > 1 else hi[0])
    return pairs


def _check_pairs(perturbation: Any, pairs: tuple) -> None:
    """Each (lo, hi) finite, not inverted, containing 0; not all empty."""
    for (a, b), name in zip(pairs, perturbation.param_names):
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"the range of {name!r} must be finite; got {(a, b)}")
        if a > b:
            raise ValueError(f"the range of {name!r} is inverted (lo > hi); give it as (lo, hi) with "
                             f"lo <= 0 <= hi; got {(a, b)}")
        if not (a <= 0.0 <= b):
            raise ValueError(f"the range of {name!r} must contain 0 (theta = 0 is the identity); got {(a, b)}")
    if all(a == b for a, b in pairs):
        raise ValueError(f"the range of {perturbation.name!r} is empty (lo == hi); give lo < hi with "
                         f"lo <= 0 <= hi; got {pairs if len(pairs) > 1 else pairs[0]}")
