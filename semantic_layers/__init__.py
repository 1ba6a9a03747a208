"""Semantic perturbations as layers whose input is the perturbation parameter (Semantify-NN).

Families (``available()`` lists the registry keys):

- ``hue`` (:class:`Hue`, degrees, layer): HSV hue rotation (torchvision ``adjust_hue(x, theta/360)``)
- ``saturation`` (:class:`Saturation`, layer): HSL ``s' = clip(s + theta, 0, 1)``
- ``lightness`` (:class:`Lightness`, layer): HSL ``l' = clip(l + theta, 0, 1)``
- ``brightness`` (:class:`Brightness`, layer): ``clip(x + b, 0, 1)``
- ``contrast`` (:class:`Contrast`, layer): ``clip((1 + a)(x - p) + p, 0, 1)``; ``pivot=0.5`` (default,
  Semantify-NN), ``pivot="mean"`` (torchvision ``adjust_contrast``) or ``pivot=0.0``
- ``brightness_contrast`` (:class:`BrightnessContrast`, layer): ``clip((1 + a)(x - p) + p + b, 0, 1)``,
  theta = (a, b), same pivots
- ``rotation`` (:class:`Rotation`, degrees, box): bilinear rotation about the image centre; ``fill=None``
  (default: zero padding, torchvision ``rotate(..., fill=None)``) or ``fill=0.0`` (torchvision's masked
  fill, the ``RandomRotation`` default)

Each family's docstring names the reference function it equals; ``get(name, **options)`` passes
options such as ``pivot=`` / ``fill=`` to the class.

Contract (:class:`SemanticPerturbation`): ``name``, ``param_names``, ``units``, ``default_range``,
``domain``, ``requires_channels``, ``kind``, ``check_input(x)``, ``apply(x, theta)``, ``layer(x)``
(kind "layer": exact ``nn.Linear``/``nn.ReLU``/``view`` network theta (B,k) -> image (B,C,H,W) for
every theta in the domain), ``pixel_bounds(x, lo, hi)`` (sound per-pixel bounds over parameter boxes)
and ``validate_range(lo, hi)``.

Example::

    import torch, semantic_layers
    hue = semantic_layers.get("hue")            # or semantic_layers.Hue()
    x = torch.rand(3, 32, 32)
    y = hue.apply(x, 30.0)                      # (1, 3, 32, 32)
    net = hue.layer(x)                          # net(torch.tensor([[30.0]])) == y (float tolerance)
    lower, upper = hue.pixel_bounds(x, [-10.0], [10.0])

Recipe: adding a family
-----------------------
1. Subclass :class:`SemanticPerturbation` (or ``base.PiecewiseLinear1D`` for one parameter with a
   per-pixel piecewise-linear effect) in a module of this package, and set the class attributes
   ``name`` (lower-case registry key), ``param_names`` (1 or 2 names), ``units``,
   ``requires_channels`` (3 or None), ``kind`` ("layer" or "box"), ``DOMAIN`` and ``DEFAULT_RANGE``
   (both must contain 0, the identity).
2. Implement ``_apply(x, theta)`` (x (B,C,H,W) and theta (B,k) already validated; must return x
   exactly at theta = 0 and be differentiable in theta) - or, with ``PiecewiseLinear1D``,
   ``_pointwise(x, t)`` and ``_breakpoints(x, lo, hi)`` (every kink in theta per pixel).
3. Implement ``_bounds(x, lo, hi)`` (float64, sound) unless ``PiecewiseLinear1D`` provides it.
4. For kind "layer", implement ``_layer_spec(x, domain_lo, domain_hi)`` returning the ReLU expansion
   ``out_o(theta) = out_bias_o + sum_j W[o, j] relu(unit_w_j . theta + unit_c_j)`` as a dict (see
   :func:`base.build_relu_layer`, which merges shared units and folds away units that are linear or
   zero on the domain).  No clamp/min/max/gather and no broadcast constant adds: auto_LiRPA 0.3 is
   unsound or crashes on those.
5. Decorate the class with ``@register`` and import its module below.  The parametrised tests in
   ``tests/test_semantic_layers.py`` then check identity at 0, layer == apply, and the soundness of
   ``pixel_bounds`` for the new family automatically; add an independent-reference test.
"""
from .base import SemanticLayer, SemanticPerturbation
from .color import Brightness, BrightnessContrast, Contrast, Hue, Lightness, Saturation
from .geometric import Rotation
from .registry import available, get, register

__all__ = [
    "SemanticPerturbation", "SemanticLayer", "register", "available", "get",
    "Hue", "Saturation", "Lightness", "Brightness", "Contrast", "BrightnessContrast", "Rotation",
]
