"""semantic_layers: identity at 0, exact layers, sound/tight pixel bounds, independent references, bad input.

Failure budget: every check is deterministic (fixed seeds); there is no statistical tolerance.
Float tolerances: 1e-9 in float64, 2e-5 in float32 (hue layer: theta in degrees up to 180 times
slopes <= 1/60), rotation vs torchvision 1e-5 (float32 rounding of the source coordinates).
"""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semantic_layers as sl
from semantic_layers import base as sl_base
from semantic_layers import registry as sl_registry

FAMILIES = sl.available()
LAYER_FAMILIES = [n for n in FAMILIES if sl.get(n).kind == "layer"]
COLOUR_FAMILIES = [n for n in FAMILIES if sl.get(n).requires_channels == 3]
ANY_CHANNEL_FAMILIES = [n for n in FAMILIES if sl.get(n).requires_channels is None]
# conventions beyond each family's default (pivot of the contrasts, fill of the rotation)
VARIANT_OPTIONS = {"contrast:pivot=0": {"pivot": 0.0}, "contrast:pivot=mean": {"pivot": "mean"},
                   "brightness_contrast:pivot=0": {"pivot": 0.0}, "brightness_contrast:pivot=mean": {"pivot": "mean"},
                   "rotation:fill=0": {"fill": 0.0}, "rotation:fill=0.3": {"fill": 0.3}}
VARIANTS = FAMILIES + sorted(VARIANT_OPTIONS)
LAYER_VARIANTS = [v for v in VARIANTS if sl.get(v.split(":")[0]).kind == "layer"]


def _options(variant: str) -> dict:
    return dict(VARIANT_OPTIONS.get(variant, {}))


def _make(variant: str, **kwargs):
    return sl.get(variant.split(":")[0], **_options(variant), **kwargs)

SPECIAL_PIXELS = [  # black, white, greys, primaries, ties between max channels, l = 1/2, near-grey
    (0, 0, 0), (1, 1, 1), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (1, 0, 0), (0, 1, 0), (0, 0, 1),
    (1, 1, 0), (0, 1, 1), (1, 0, 1), (0.7, 0.7, 0.1), (0.2, 0.9, 0.9), (0.6, 0.1, 0.6), (0.75, 0.25, 0.5),
    (0.5, 0.5, 0.50001), (0.9, 0.1, 0.1), (0.3, 0.2, 0.1), (1.0, 0.5, 0.0), (0.0, 0.5, 1.0), (0.4, 0.6, 0.2),
]


def _image(seed: int, shape=(3, 8, 8), dtype=torch.float64, quantize: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64)
    if quantize:  # half the pixels on the 8-bit grid (shared breakpoints), half continuous
        x[:, : shape[1] // 2] = torch.round(x[:, : shape[1] // 2] * 255) / 255
    if shape[0] == 3:
        flat = x.reshape(3, -1)
        for i, px in enumerate(SPECIAL_PIXELS[: flat.shape[1]]):
            flat[:, i] = torch.tensor(px, dtype=torch.float64)
    else:
        x.reshape(-1)[:4] = torch.tensor([0.0, 1.0, 0.5, 1 / 3])
    return x.to(dtype)


def _photos(size: int) -> dict[str, torch.Tensor]:
    import skimage.data
    out = {}
    for name in ("astronaut", "chelsea", "coffee"):
        img = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)())).permute(2, 0, 1).double() / 255
        img = F.interpolate(img[None], size=(size, size), mode="area")[0]
        out[name] = (torch.round(img * 255) / 255).clamp(0, 1)
    return out


def _zero(p) -> object:
    return 0.0 if p.n_params == 1 else (0.0, 0.0)


def _sample_thetas(p, n: int, seed: int, lo=None, hi=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dlo, dhi = p.domain_tensors()
    lo = dlo if lo is None else lo
    hi = dhi if hi is None else hi
    return lo + (hi - lo) * torch.rand(n, p.n_params, generator=g, dtype=torch.float64)


def _grid(p, lo: torch.Tensor, hi: torch.Tensor, n1: int = 1000, n2: int = 32) -> torch.Tensor:
    """Dense grid over one box (endpoints included): n1 points for k=1, n2 x n2 for k=2."""
    if p.n_params == 1:
        t = torch.linspace(0, 1, n1, dtype=torch.float64)
        return (lo + (hi - lo) * t[:, None]).reshape(-1, 1)
    t = torch.linspace(0, 1, n2, dtype=torch.float64)
    a, b = torch.meshgrid(lo[0] + (hi[0] - lo[0]) * t, lo[1] + (hi[1] - lo[1]) * t, indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)


def _intervals(p, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full domain, default range, a degenerate point, intervals touching the domain ends, random ones."""
    dlo, dhi = p.domain_tensors()
    width = dhi - dlo
    g = torch.Generator().manual_seed(seed)
    rows_lo = [dlo, torch.tensor([r[0] for r in _ranges(p.default_range, p.n_params)], dtype=torch.float64),
               torch.zeros_like(dlo), dlo, dhi - 0.03 * width]
    rows_hi = [dhi, torch.tensor([r[1] for r in _ranges(p.default_range, p.n_params)], dtype=torch.float64),
               torch.zeros_like(dlo), dlo + 0.05 * width, dhi]
    for frac in (0.5, 0.2, 0.01, 0.001):
        c = dlo + width * torch.rand(p.n_params, generator=g, dtype=torch.float64)
        rows_lo.append(torch.maximum(c - frac * width / 2, dlo))
        rows_hi.append(torch.minimum(c + frac * width / 2, dhi))
    return torch.stack(rows_lo), torch.stack(rows_hi)


def _ranges(r, k):
    return [r] if k == 1 else list(r)


# ----------------------------------------------------------------------------------------- registry
def test_registry_lists_every_family():
    assert FAMILIES == sorted(["hue", "saturation", "lightness", "brightness", "contrast",
                               "brightness_contrast", "rotation"])
    classes = {"hue": sl.Hue, "saturation": sl.Saturation, "lightness": sl.Lightness, "brightness": sl.Brightness,
               "contrast": sl.Contrast, "brightness_contrast": sl.BrightnessContrast, "rotation": sl.Rotation}
    for name, cls in classes.items():
        p = sl.get(name)
        assert type(p) is cls and p.name == name
        assert p.kind == ("box" if name == "rotation" else "layer")
    assert sl.get(" HUE ") == sl.Hue()
    assert sl.get("hue", default_range=(-10, 10)).default_range == (-10.0, 10.0)
    with pytest.raises(ValueError, match="unknown semantic perturbation"):
        sl.get("nope")
    with pytest.raises(TypeError):
        sl.get(3)
    with pytest.raises(TypeError):
        sl.register(int)
    with pytest.raises(ValueError, match="already registered"):
        @sl.register
        class Hue2(sl.Hue):  # noqa: F811 - same name, other class
            pass


def test_registry_recipe_adds_a_family():
    """The documented recipe: subclass PiecewiseLinear1D, implement three methods, decorate."""

    class Gamma(sl_base.PiecewiseLinear1D):  # x -> clip(x + t * x, 0, 1), a toy family
        name = "toy_gain_test"
        param_names = ("gain",)
        units = "relative"
        DOMAIN = (-0.5, 0.5)
        DEFAULT_RANGE = (-0.1, 0.1)

        def _pointwise(self, x, t):
            return torch.clamp(x + t * x, 0.0, 1.0)

        def _breakpoints(self, x, lo, hi):
            pos = x > 0
            k = torch.where(pos, 1.0 / torch.where(pos, x, torch.ones_like(x)) - 1.0, torch.zeros_like(x))
            return k.unsqueeze(0).unsqueeze(0).expand(lo.shape[0], 1, -1, -1, -1)

        def _layer_spec(self, x, dlo, dhi):
            v = x.reshape(-1)
            O = v.numel()  # noqa: E741
            ar = torch.arange(O)
            return {"unit_w": torch.cat([v, v])[:, None], "unit_c": torch.cat([v, v - 1.0]),
                    "rows": torch.cat([ar, ar]), "cols": torch.cat([ar, ar + O]),
                    "vals": torch.cat([torch.ones(O), -torch.ones(O)]).double(),
                    "out_bias": torch.zeros(O, dtype=torch.float64)}

    try:
        sl.register(Gamma)
        assert "toy_gain_test" in sl.available()
        p = sl.get("toy_gain_test")
        x = _image(3, shape=(1, 5, 5))
        th = _sample_thetas(p, 50, 0)
        assert torch.allclose(p.layer(x)(th), p.apply(x, th), atol=1e-12)
        lo, hi = p.pixel_bounds(x, [-0.3], [0.4])
        v = p.apply(x, _grid(p, torch.tensor([-0.3], dtype=torch.float64), torch.tensor([0.4], dtype=torch.float64)))
        assert (lo <= v).all() and (v <= hi).all()
    finally:
        sl_registry._REGISTRY.pop("toy_gain_test", None)
    assert "toy_gain_test" not in sl.available()


@pytest.mark.parametrize("name", FAMILIES)
def test_contract_attributes(name):
    p = sl.get(name)
    assert isinstance(p, sl.SemanticPerturbation)
    assert p.name == name and isinstance(p.units, str) and p.units
    assert p.n_params == len(p.param_names) in (1, 2)
    assert p.requires_channels in (3, None)
    for r, d in zip(_ranges(p.default_range, p.n_params), _ranges(p.domain, p.n_params)):
        assert d[0] <= r[0] <= 0.0 <= r[1] <= d[1]
    d = p.to_dict()
    assert d["name"] == name and d["kind"] == p.kind
    assert _constructor_roundtrip(p)


def _constructor_roundtrip(p) -> bool:
    q = type(p)(domain=p.domain, default_range=p.default_range)
    return q == p and hash(q) == hash(p) and type(p).__name__ in repr(p)


# ----------------------------------------------------------------------------------------- identity and shapes
@pytest.mark.parametrize("name", VARIANTS)
def test_apply_zero_is_identity(name):
    p = _make(name)
    shapes = [(3, 8, 8), (3, 5, 7)] + ([] if p.requires_channels == 3 else [(1, 9, 6), (2, 4, 4)])
    for dtype in (torch.float32, torch.float64):
        for i, shape in enumerate(shapes):
            x = _image(10 + i, shape=shape, dtype=dtype)
            y = p.apply(x, _zero(p))
            assert y.shape == (1, *shape) and y.dtype == dtype
            assert torch.equal(y[0], x)
            xb = torch.stack([x, _image(20 + i, shape=shape, dtype=dtype)])
            assert torch.equal(p.apply(xb, _zero(p)), xb)


@pytest.mark.parametrize("name", VARIANTS)
def test_apply_batching_and_gradient(name):
    p = _make(name)
    x = _image(1, shape=(3, 6, 6))
    th = _sample_thetas(p, 4, 5, *[t * 0.5 for t in p.domain_tensors()])
    y = p.apply(x, th)
    assert y.shape == (4, 3, 6, 6)
    xb = torch.stack([_image(s, shape=(3, 6, 6)) for s in range(4)])
    yb = p.apply(xb, th)
    for i in range(4):
        assert torch.allclose(yb[i], p.apply(xb[i], th[i:i + 1])[0], atol=0)
    assert torch.equal(p.apply(xb, th[:1]), p.apply(xb, th[:1].expand(4, -1)))
    if p.n_params == 1:
        assert torch.equal(p.apply(x, th[:, 0]), y)
    # differentiable in theta: autograd derivative == central difference (away from kinks: check most pixels)
    t = th[:1].clone().requires_grad_(True)
    out = p.apply(x, t).sum()
    (grad,) = torch.autograd.grad(out, t)
    assert torch.isfinite(grad).all()
    h = 1e-6 * float((p.domain_tensors()[1] - p.domain_tensors()[0]).max())
    for i in range(p.n_params):
        e = torch.zeros_like(th[:1])
        e[0, i] = h
        fd = (p.apply(x, th[:1] + e).sum() - p.apply(x, th[:1] - e).sum()) / (2 * h)
        assert abs(float(fd) - float(grad[0, i])) <= 1e-4 * max(1.0, abs(float(fd)))


# ----------------------------------------------------------------------------------------- exact layers
def _check_layer_structure(net: nn.Module):
    allowed = (sl.SemanticLayer, nn.Linear, nn.ReLU)
    for m in net.modules():
        assert isinstance(m, allowed), f"layer contains {type(m).__name__}"
    assert not any(q.requires_grad for q in net.parameters())


@pytest.mark.parametrize("name", LAYER_VARIANTS)
def test_layer_equals_apply(name):
    p = _make(name)
    dlo, dhi = p.domain_tensors()
    shapes = [(3, 8, 8)] + ([] if p.requires_channels == 3 else [(1, 7, 5)])
    for i, shape in enumerate(shapes):
        x = _image(30 + i, shape=shape)
        th = torch.cat([_sample_thetas(p, 240, 40 + i), dlo[None], dhi[None], torch.zeros(1, p.n_params,
                                                                                             dtype=torch.float64)])
        net = p.layer(x)
        _check_layer_structure(net)
        assert net.hidden_width >= p.n_params
        ref = p.apply(x, th)
        assert (net(th) - ref).abs().max() <= 1e-9
        # float32 layer (the dtype verification uses)
        x32 = x.float()
        net32 = p.layer(x32)
        assert net32.out.weight.dtype == torch.float32
        assert (net32(th.float()) - p.apply(x32, th.float())).abs().max() <= 2e-5
    # a non-default domain is honoured (narrower domain -> no more units, still exact)
    dom = tuple((float(a) * 0.25, float(b) * 0.25) for a, b in zip(dlo, dhi))
    q = type(p)(domain=dom[0] if p.n_params == 1 else dom, default_range=dom[0] if p.n_params == 1 else dom,
                **_options(name))
    x = _image(33)
    assert q.layer(x).hidden_width <= p.layer(x).hidden_width
    th = _sample_thetas(q, 200, 7)
    assert (q.layer(x)(th) - q.apply(x, th)).abs().max() <= 1e-9


@pytest.mark.parametrize("name", LAYER_VARIANTS)
def test_layer_equals_apply_on_photos(name):
    p = _make(name)
    th = torch.cat([_sample_thetas(p, 200, 50), torch.stack(p.domain_tensors())]).float()
    for img in _photos(12).values():
        x = img.float()
        net = p.layer(x)
        assert (net(th) - p.apply(x, th)).abs().max() <= 2e-5


def test_hue_layer_width_is_at_most_six_units_per_pixel():
    x = _image(60, shape=(3, 8, 8), quantize=False)
    net = sl.Hue().layer(x)
    assert net.hidden_width <= 6 * 64 + 1
    assert sl.Hue(domain=(-30, 30)).layer(x).hidden_width <= 64 + 1
    grey = torch.full((3, 4, 4), 0.3, dtype=torch.float64)
    assert sl.Hue().layer(grey).hidden_width == 1   # only the pass-through unit
    assert torch.allclose(sl.Hue().layer(grey)(torch.tensor([[-180.0], [77.0]], dtype=torch.float64)),
                          grey.expand(2, -1, -1, -1))


# ----------------------------------------------------------------------------------------- pixel bounds
@pytest.mark.parametrize("name", VARIANTS)
def test_pixel_bounds_sound_and_tight(name):
    p = _make(name)
    images = [_image(70), _image(71, quantize=False), _photos(10)["astronaut"]]
    if p.requires_channels is None:
        images.append(_image(72, shape=(1, 7, 9)))
    for i, x in enumerate(images):
        shape = tuple(x.shape)
        lo, hi = _intervals(p, 80 + i)
        lower, upper = p.pixel_bounds(x, lo, hi)
        assert lower.shape == upper.shape == (lo.shape[0], *shape) and lower.dtype == torch.float64
        for s in range(lo.shape[0]):
            th = torch.cat([_grid(p, lo[s], hi[s]), _sample_thetas(p, 200, 90 + s, lo[s], hi[s])])
            v = p.apply(x, th)
            assert (lower[s] <= v + 1e-9).all(), f"interval {s}: lower bound violated"
            assert (v <= upper[s] + 1e-9).all(), f"interval {s}: upper bound violated"
            if p.kind == "layer":   # exact bounds: the dense grid touches them (grid spacing x slope)
                gap = torch.maximum(upper[s] - v.amax(0), v.amin(0) - lower[s])
                assert gap.max() <= 1e-2 and gap.mean() <= 1e-3, f"interval {s}: loose bounds {gap.max():.3g}"
        # degenerate interval [0, 0]: bounds collapse onto x
        atol = 1e-8 if p.kind == "box" else 1e-11   # rotation widens each arc box by 1e-9 pixel
        assert torch.allclose(lower[2], x, atol=atol) and torch.allclose(upper[2], x, atol=atol)
    # float32 image: bounds are rounded outward, so they contain the float64 transform exactly
    x32 = _image(75).float()
    lo, hi = _intervals(p, 85)
    lower, upper = p.pixel_bounds(x32, lo, hi)
    assert lower.dtype == torch.float32
    for s in range(lo.shape[0]):
        v = p.apply(x32.double(), _sample_thetas(p, 300, 95 + s, lo[s], hi[s]))
        assert (lower[s].double() <= v).all() and (v <= upper[s].double()).all()


def test_rotation_bounds_tight_for_small_intervals():
    p = sl.Rotation()
    x = _image(100, shape=(1, 12, 12))
    lower, upper = p.pixel_bounds(x, [17.0], [17.0 + 1e-7])
    assert (upper - lower).max() <= 1e-6
    # a 2-degree interval: the box is at most a little wider than the sampled envelope
    lower, upper = p.pixel_bounds(x, [-1.0], [1.0])
    v = p.apply(x, torch.linspace(-1, 1, 2001, dtype=torch.float64))
    env = v.amax(0) - v.amin(0)
    assert ((upper[0] - lower[0]) - env).mean() <= 0.05
    tighter = sl.Rotation(max_arc_px=0.05).pixel_bounds(x, [-1.0], [1.0])
    assert (tighter[1] - tighter[0]).sum() <= (upper - lower).sum() + 1e-12
    assert (tighter[0] <= v.amin(0) + 1e-12).all() and (v.amax(0) <= tighter[1] + 1e-12).all()


def test_rotation_bounds_sound_on_photo_full_circle():
    p = sl.Rotation(max_arc_px=0.5)
    x = _photos(10)["chelsea"]
    lo = torch.tensor([[-180.0], [-45.0], [89.0], [170.0]], dtype=torch.float64)
    hi = torch.tensor([[180.0], [-30.0], [91.0], [180.0]], dtype=torch.float64)
    lower, upper = p.pixel_bounds(x, lo, hi)
    for s in range(4):
        v = p.apply(x, torch.cat([_grid(p, lo[s], hi[s], n1=1000), _sample_thetas(p, 200, s, lo[s], hi[s])]))
        assert (lower[s] <= v + 1e-9).all() and (v <= upper[s] + 1e-9).all()


# ----------------------------------------------------------------------------------------- references
def test_hue_matches_torchvision_adjust_hue():
    import torchvision.transforms.functional as TF
    p = sl.Hue()
    thetas = [-180.0, -179.5, -120.0, -60.0, -31.7, -1.0, 0.0, 0.4, 45.0, 90.0, 150.0, 179.9, 180.0]
    g = torch.Generator().manual_seed(110)
    xs = [torch.rand(3, 16, 16, generator=g), _image(111).float()] + [v.float() for v in _photos(32).values()]
    for x in xs:
        net = p.layer(x)
        for t in thetas:
            ref = TF.adjust_hue(x, t / 360.0)
            assert (p.apply(x, t)[0] - ref).abs().max() <= 1e-5, t
            assert (net(torch.tensor([[t]]))[0] - ref).abs().max() <= 2e-5, t
        assert (p.apply(x, 90.0)[0] - x).abs().mean() > 0.01   # the perturbation does something


def test_hue_matches_colorsys_in_float64():
    """colorsys rgb_to_hsv, h + theta/360 (mod 1), hsv_to_rgb: agreement to float64 rounding."""
    p = sl.Hue()
    for x in (_image(112, shape=(3, 6, 6)), _photos(8)["astronaut"]):
        for t in (-180.0, -77.7, -0.5, 13.0, 120.0, 179.0):
            out = p.apply(x, t)[0]
            ref = torch.empty_like(x)
            for i in range(x.shape[1]):
                for j in range(x.shape[2]):
                    h, s, v = colorsys.rgb_to_hsv(*(float(c) for c in x[:, i, j]))
                    ref[:, i, j] = torch.tensor(colorsys.hsv_to_rgb((h + t / 360.0) % 1.0, s, v), dtype=x.dtype)
            assert (out - ref).abs().max() <= 1e-12, t


def _colorsys_hls(x: torch.Tensor, theta: float, which: str) -> torch.Tensor:
    out = torch.empty_like(x)
    C, H, W = x.shape
    for i in range(H):
        for j in range(W):
            r, g, b = (float(v) for v in x[:, i, j])
            h, l, s = colorsys.rgb_to_hls(r, g, b)  # noqa: E741
            if which == "saturation":
                s = min(max(s + theta, 0.0), 1.0)
            else:
                l = min(max(l + theta, 0.0), 1.0)  # noqa: E741
            out[:, i, j] = torch.tensor(colorsys.hls_to_rgb(h, l, s), dtype=x.dtype)
    return out


@pytest.mark.parametrize("which", ["saturation", "lightness"])
def test_hsl_families_match_colorsys(which):
    p = sl.get(which)
    xs = [_image(120, shape=(3, 6, 6)), _image(121, shape=(3, 5, 5), quantize=False), _photos(8)["coffee"]]
    for x in xs:
        grey = (x.amax(0) == x.amin(0))
        assert grey.sum() < grey.numel()
        for t in (-1.0, -0.6, -0.15, 0.02, 0.3, 0.75, 1.0):
            ref = _colorsys_hls(x, t, which)
            out = p.apply(x, t)[0]
            if which == "saturation":
                # colorsys gives grey pixels hue 0 (red) and tints them; Semantify-NN keeps them unchanged
                assert torch.equal(out[:, grey], x[:, grey])
                # near-grey pixels (chroma 1e-5) amplify float64 rounding by 1/s in both implementations
                assert (out - ref)[:, ~grey].abs().max() <= 1e-9, t
            else:
                assert (out - ref).abs().max() <= 1e-12, t


def _semantify_contrast(x: np.ndarray, a: float, b: float = 0.0) -> np.ndarray:
    """Semantify-NN (Mohapatra et al., CVPR 2020): clip((1 + a)(x - 0.5) + 0.5 + b, 0, 1), written independently."""
    return np.clip((1.0 + a) * (x - 0.5) + 0.5 + b, 0.0, 1.0)


def test_brightness_and_contrast_conventions_match_their_references():
    """Every convention against its reference to <= 1e-5 (float32 torchvision) / 1e-12 (float64 formulas)."""
    import torchvision.transforms.functional as TF
    xs = [_image(130, shape=(3, 6, 6)), _image(131, shape=(1, 5, 8)), _photos(16)["coffee"]]
    for x in xs:
        xn = x.numpy()
        x32 = x.float()
        for t in (-1.0, -0.4, -0.05, 0.0, 0.1, 0.55, 1.0):
            assert np.abs(sl.Brightness().apply(x, t)[0].numpy() - np.clip(xn + t, 0, 1)).max() <= 1e-12
            # default pivot 0.5: the Semantify-NN formula
            assert sl.Contrast().pivot == 0.5 and sl.BrightnessContrast().pivot == 0.5
            assert np.abs(sl.Contrast().apply(x, t)[0].numpy() - _semantify_contrast(xn, t)).max() <= 1e-12
            # pivot "mean": torchvision adjust_contrast (grey-level mean of the image)
            ref = TF.adjust_contrast(x32, 1.0 + t)
            assert (sl.Contrast(pivot="mean").apply(x32, t)[0] - ref).abs().max() <= 1e-5, t
            # pivot 0: torchvision adjust_brightness (multiplicative)
            ref = TF.adjust_brightness(x32, 1.0 + t)
            assert (sl.Contrast(pivot=0.0).apply(x32, t)[0] - ref).abs().max() <= 1e-5, t
            for b in (-0.7, 0.0, 0.3):
                out = sl.BrightnessContrast().apply(x, (t, b))[0].numpy()
                assert np.abs(out - _semantify_contrast(xn, t, b)).max() <= 1e-12
                out0 = sl.BrightnessContrast(pivot=0.0).apply(x, (t, b))[0].numpy()
                assert np.abs(out0 - np.clip((1 + t) * xn + b, 0, 1)).max() <= 1e-12
                # pivot "mean" with b = 0 is adjust_contrast; with b: adjust_contrast before the clip, plus b
                grey = (0.2989 * xn[0] + 0.587 * xn[1] + 0.114 * xn[2]) if xn.shape[0] == 3 else xn[0]
                ref_m = np.clip((1 + t) * xn + (-t) * grey.mean() + b, 0, 1)
                outm = sl.BrightnessContrast(pivot="mean").apply(x, (t, b))[0].numpy()
                assert np.abs(outm - ref_m).max() <= 1e-12
                if b == 0.0:
                    ref = TF.adjust_contrast(x32, 1.0 + t)
                    assert (sl.BrightnessContrast(pivot="mean").apply(x32, (t, 0.0))[0] - ref).abs().max() <= 1e-5


def test_contrast_mean_pivot_is_fixed_per_image():
    """The 'mean' pivot is the image's own grey level: batched apply == per-image apply, and bounds are
    exact (the pixel is affine in a, so the grid touches them)."""
    p = sl.Contrast(pivot="mean")
    xb = torch.stack([_image(s, shape=(3, 6, 6)) for s in range(3)])
    th = torch.tensor([[-0.3], [0.2], [0.9]], dtype=torch.float64)
    out = p.apply(xb, th)
    for i in range(3):
        assert torch.equal(out[i], p.apply(xb[i], th[i:i + 1])[0])
    assert not torch.allclose(sl.Contrast(pivot="mean").apply(xb[0], 0.5), sl.Contrast().apply(xb[0], 0.5))
    for bad in ("median", -0.1, 1.5, True, None, float("nan")):
        with pytest.raises(ValueError, match="pivot"):
            sl.Contrast(pivot=bad)
        with pytest.raises(ValueError, match="pivot"):
            sl.BrightnessContrast(pivot=bad)
    assert sl.get("contrast", pivot="mean") == sl.Contrast(pivot="mean") != sl.Contrast()
    assert "pivot='mean'" in repr(sl.Contrast(pivot="mean"))


def test_rotation_matches_torchvision_rotate():
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    p = sl.Rotation()
    assert p.fill is None
    p0 = sl.Rotation(fill=0.0)
    g = torch.Generator().manual_seed(140)
    xs = [torch.rand(3, 17, 20, generator=g), torch.rand(1, 16, 16, generator=g), _photos(24)["astronaut"].float()]
    for x in xs:
        for angle in (-170.0, -90.0, -33.3, -5.0, 0.0, 0.7, 7.5, 45.0, 90.0, 123.0, 180.0):
            # fill=None: plain zero padding
            ref = TF.rotate(x, angle, interpolation=InterpolationMode.BILINEAR)
            assert (p.apply(x, angle)[0] - ref).abs().max() <= 1e-5, angle
            # fill=0 (RandomRotation's default) and another fill: torchvision's masked fill, everywhere
            for fill in (0.0, 0.3):
                ref = TF.rotate(x, angle, interpolation=InterpolationMode.BILINEAR, fill=fill)
                mine = (p0 if fill == 0.0 else sl.Rotation(fill=fill)).apply(x, angle)[0]
                assert (mine - ref).abs().max() <= 1e-5, (angle, fill)
    # the two conventions differ (in the border band) for a generic angle
    x = xs[0]
    assert (p.apply(x, 33.3) - p0.apply(x, 33.3)).abs().max() > 1e-3
    # exact oracle: 90 degrees counter-clockwise on an odd square image is a pixel permutation
    x = torch.rand(2, 7, 7, generator=g, dtype=torch.float64)
    for q in (p, p0):
        assert torch.allclose(q.apply(x, 90.0)[0], torch.rot90(x, 1, dims=(1, 2)), atol=1e-12)
        assert torch.allclose(q.apply(x, -90.0)[0], torch.rot90(x, -1, dims=(1, 2)), atol=1e-12)
        assert torch.allclose(q.apply(x, 180.0)[0], torch.rot90(x, 2, dims=(1, 2)), atol=1e-12)
    for bad in (-0.1, 1.5, "0", True, float("nan")):
        with pytest.raises(ValueError, match="fill"):
            sl.Rotation(fill=bad)
    assert sl.Rotation(fill=0.0) != sl.Rotation() and "fill=0.0" in repr(p0)


def test_rotation_fill_bounds_sound_on_border_band():
    """fill=0 / fill=0.3: grid + random angles inside each interval stay inside the boxes, also in the
    one-pixel border band where the coverage mask is below 1; the interior equals the fill=None bounds."""
    x = _photos(10)["chelsea"]
    lo = torch.tensor([[-30.0], [-3.0], [12.0], [44.0], [170.0]], dtype=torch.float64)
    hi = torch.tensor([[30.0], [2.0], [12.5], [46.0], [180.0]], dtype=torch.float64)
    for fill in (0.0, 0.3):
        p = sl.Rotation(fill=fill)
        lower, upper = p.pixel_bounds(x, lo, hi)
        for s in range(lo.shape[0]):
            th = torch.cat([_grid(p, lo[s], hi[s], n1=1500), _sample_thetas(p, 300, 170 + s, lo[s], hi[s])])
            v = p.apply(x, th)
            assert (lower[s] <= v + 1e-9).all() and (v <= upper[s] + 1e-9).all(), (fill, s)
            assert (upper[s] - lower[s]).max() <= 1.0 + 1e-9
    # with a pure interior (a 12 x 12 image, small angles) the centre pixels match the fill=None boxes
    x = _image(171, shape=(1, 12, 12))
    a = sl.Rotation(fill=0.0).pixel_bounds(x, [-1.0], [1.0])
    b = sl.Rotation().pixel_bounds(x, [-1.0], [1.0])
    assert torch.allclose(a[0][..., 3:9, 3:9], b[0][..., 3:9, 3:9]) and torch.allclose(a[1][..., 3:9, 3:9],
                                                                                          b[1][..., 3:9, 3:9])


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", FAMILIES)
def test_bad_input(name):
    p = sl.get(name)
    x = _image(150, shape=(3, 4, 4))
    z = _zero(p)
    with pytest.raises(TypeError):
        p.apply(x.numpy(), z)
    with pytest.raises(TypeError):
        p.apply((x * 255).to(torch.uint8), z)
    for bad in (x[0, 0], x[None, None], torch.zeros(3, 0, 4, dtype=torch.float64)):
        with pytest.raises(ValueError):
            p.apply(bad, z)
    xn = x.clone()
    xn[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        p.apply(xn, z)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        p.apply(x * 2, z)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        p.apply(x - 0.5, z)
    if p.requires_channels == 3:
        for gray in (x[:1], torch.cat([x, x[:1]])):
            for call in (lambda g=gray: p.apply(g, z), lambda g=gray: p.layer(g),
                         lambda g=gray: p.pixel_bounds(g, z, z)):
                with pytest.raises(ValueError, match="3-channel"):
                    call()
    # theta
    dlo, dhi = p.domain_tensors()
    for bad_theta in ([float("nan")] * p.n_params, (dhi + 1).tolist(), (dlo - 1).tolist()):
        with pytest.raises(ValueError):
            p.apply(x, torch.tensor([bad_theta], dtype=torch.float64))
    with pytest.raises(ValueError):
        p.apply(x, torch.zeros(2, 3))
    with pytest.raises(ValueError):
        p.apply(torch.stack([x, x, x]), torch.zeros(2, p.n_params))
    with pytest.raises(TypeError):
        p.apply(x, True)
    # ranges
    lo = dlo * 0.5
    hi = dhi * 0.5
    p.validate_range(lo, hi)
    with pytest.raises(ValueError, match="empty"):
        p.validate_range(hi, lo)
    with pytest.raises(ValueError, match="NaN"):
        p.validate_range(torch.full_like(lo, float("nan")), hi)
    with pytest.raises(ValueError, match="domain"):
        p.validate_range(lo, dhi + 1)
    with pytest.raises(ValueError, match="domain"):
        p.validate_range(dlo - 1, hi)
    with pytest.raises(ValueError):
        p.validate_range(torch.zeros(2, p.n_params), torch.zeros(3, p.n_params))
    with pytest.raises(ValueError):
        p.validate_range(torch.zeros(0, p.n_params), torch.zeros(0, p.n_params))
    with pytest.raises(ValueError):
        p.pixel_bounds(x, hi, lo)
    with pytest.raises(ValueError):
        p.pixel_bounds(torch.stack([x, x]), lo, hi)   # one image only
    if p.n_params == 2:
        with pytest.raises(ValueError):
            p.validate_range(0.0, 0.1)
        with pytest.raises(ValueError):
            p.apply(x, 0.0)
    # constructor
    d = p.domain if p.n_params == 1 else p.domain[0]
    for bad_dom in ((0.1, 1.0), (1.0, -1.0), (float("-inf"), 1.0), (0.0, 0.0)):
        with pytest.raises(ValueError):
            type(p)(domain=bad_dom if p.n_params == 1 else (bad_dom, bad_dom))
    with pytest.raises(ValueError, match="inside the domain"):
        wide = (d[0] - 1, d[1] + 1)
        type(p)(default_range=wide if p.n_params == 1 else (wide, wide))
    with pytest.raises(ValueError):
        type(p)(domain="abc")
    if p.kind == "layer":
        with pytest.raises(ValueError, match="one image"):
            p.layer(torch.stack([x, x]))
    else:
        with pytest.raises(TypeError, match="box"):
            p.layer(x)


def test_rotation_bad_arc_parameter():
    for bad in (0, -1, float("nan"), 10, "0.5", True):
        with pytest.raises(ValueError, match="max_arc_px"):
            sl.Rotation(max_arc_px=bad)


# ----------------------------------------------------------------------------------------- auto_LiRPA soundness
@pytest.mark.parametrize("name", LAYER_FAMILIES)
def test_layer_bounds_under_lirpa_contain_samples(name):
    """IBP, CROWN and forward+backward bounds of layer(x) over small theta boxes contain the exact pixel
    bounds, the sampled layer outputs and the sampled reference images (soundness under bounding)."""
    from certify import lirpa
    p = sl.get(name)
    x = _image(160, shape=(3, 5, 5)).float()
    net = nn.Sequential(p.layer(x), nn.Flatten())
    dlo, dhi = p.domain_tensors()
    g = torch.Generator().manual_seed(161)
    width = dhi - dlo
    lo = dlo + width * 0.9 * torch.rand(5, p.n_params, generator=g, dtype=torch.float64)
    hi = torch.minimum(lo + width * torch.tensor([0.002, 0.02, 0.05, 0.1, 0.3], dtype=torch.float64)[:, None], dhi)
    lo, hi = lo.float().double(), hi.float().double()      # boxes exactly representable in float32
    plo, phi = p.pixel_bounds(x, lo, hi)
    bounded = lirpa.bounded_module(net, lo.float())
    for method in ("ibp", "crown", "forward+backward"):
        b = lirpa.compute_bounds(bounded, x_lower=lo.float(), x_upper=hi.float(), method=method)
        assert b.lower.shape == (5, x.numel())
        assert (b.lower <= plo.reshape(5, -1) + 1e-5).all(), method
        assert (b.upper >= phi.reshape(5, -1) - 1e-5).all(), method
        for s in range(5):
            th = torch.cat([_grid(p, lo[s], hi[s], n1=200, n2=15), _sample_thetas(p, 100, s, lo[s], hi[s])]).float()
            for imgs in (net(th), p.apply(x, th).reshape(th.shape[0], -1)):
                assert (imgs >= b.lower[s] - 1e-5).all() and (imgs <= b.upper[s] + 1e-5).all(), method
