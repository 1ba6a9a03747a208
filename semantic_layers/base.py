"""The :class:`SemanticPerturbation` contract and the ReLU-network builder shared by all families.

A semantic perturbation maps an image ``x`` (C,H,W) in [0,1] and a parameter ``theta`` (k = 1 or 2
numbers, e.g. a hue angle in degrees) to a perturbed image.  Verification (``certify.semantic``)
needs one of two things from a family:

* kind ``"layer"``: an exact network ``theta -> image`` (:meth:`SemanticPerturbation.layer`) built only
  from ``nn.Linear`` + ``nn.ReLU`` + ``view`` so that auto_LiRPA 0.3 bounds it soundly with IBP, CROWN
  and alpha-CROWN (no clamp/min/max/gather, no broadcast constant adds);
* kind ``"box"``: sound per-pixel bounds over a parameter interval (:meth:`pixel_bounds`), e.g. rotation.

Every family also provides :meth:`pixel_bounds` (for layer families they are exact up to float
rounding, computed from the breakpoints of the piecewise-linear function of theta).
"""
from __future__ import annotations

import abc
import math
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["SemanticPerturbation", "SemanticLayer", "build_relu_layer", "round_outward"]

_KINDS = ("layer", "box")
_DTYPES = (torch.float32, torch.float64)
# Absolute slack (in pixel units) subtracted/added to float64 bounds before rounding them outward to
# the image dtype; it covers float64 evaluation error (~1e-16) of the closed forms.
BOUND_SLACK = 1e-12


def round_outward(lower64: torch.Tensor, upper64: torch.Tensor, dtype: torch.dtype,
                  slack: float = BOUND_SLACK) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert float64 bounds to ``dtype`` so that ``lower <= lower64 - slack`` and ``upper >= upper64 + slack``."""
    lo = lower64 - slack
    hi = upper64 + slack
    if dtype == torch.float64:
        return lo, hi
    lo_c = lo.to(dtype)
    hi_c = hi.to(dtype)
    lo_c = torch.where(lo_c.double() > lo, torch.nextafter(lo_c, torch.full_like(lo_c, -math.inf)), lo_c)
    hi_c = torch.where(hi_c.double() < hi, torch.nextafter(hi_c, torch.full_like(hi_c, math.inf)), hi_c)
    return lo_c, hi_c


class SemanticLayer(nn.Module):
    """``theta (B,k) -> image (B,C,H,W)`` as ``Linear -> ReLU -> Linear -> view``.

    The first Linear computes the ReLU pre-activations ``w_j . theta + c_j`` (``hidden_width`` units,
    the first ``k`` being pass-through units ``theta_i - domain_lo_i``, which are non-negative on the
    domain); the second Linear holds the per-pixel slopes with every constant folded into its bias.
    Parameters are frozen (``requires_grad=False``).
    """

    def __init__(self, hidden: nn.Linear, out: nn.Linear, image_shape: Sequence[int]):
        super().__init__()
        self.hidden = hidden
        self.relu = nn.ReLU()
        self.out = out
        self.image_shape = tuple(int(s) for s in image_shape)
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def n_params(self) -> int:
        return self.hidden.in_features

    @property
    def hidden_width(self) -> int:
        return self.hidden.out_features

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        c, h, w = self.image_shape
        return self.out(self.relu(self.hidden(theta))).view(-1, c, h, w)

    def extra_repr(self) -> str:
        return f"n_params={self.n_params}, hidden_width={self.hidden_width}, image_shape={self.image_shape}"


def build_relu_layer(*, unit_w: torch.Tensor, unit_c: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                     vals: torch.Tensor, out_bias: torch.Tensor, domain_lo: torch.Tensor,
                     domain_hi: torch.Tensor, image_shape: Sequence[int], dtype: torch.dtype) -> SemanticLayer:
    """Assemble ``out_o(theta) = out_bias_o + sum_j W[o, j] relu(unit_w_j . theta + unit_c_j)``.

    Inputs (all float64 except the integer index tensors): ``unit_w`` (J,k), ``unit_c`` (J,), the
    sparse weight matrix as triplets ``W[rows[n], cols[n]] += vals[n]``, ``out_bias`` (O,) with
    O = C*H*W, and the parameter domain box.  The network is simplified for the domain only:

    * units are normalised to ``max_i |w_ji| = 1`` (``relu(s z) = s relu(z)`` for s > 0) and
      identical units are merged, so pixels sharing a breakpoint share one hidden unit;
    * units that are <= 0 on the whole domain are dropped; units that are >= 0 on the whole domain are
      linear there and are folded into ``k`` pass-through units ``relu(theta_i - domain_lo_i)``;
    * constant units (w = 0) go into the bias.

    The result equals the input expression exactly (up to float rounding) for every theta in the
    domain box; outside the domain it is NOT the same function.
    """
    f64 = torch.float64
    unit_w = unit_w.to(f64)
    unit_c = unit_c.to(f64)
    vals = vals.to(f64)
    bias = out_bias.to(f64).clone().reshape(-1)
    lo = domain_lo.to(f64).reshape(-1)
    hi = domain_hi.to(f64).reshape(-1)
    k = lo.numel()
    n_out = bias.numel()
    rows = rows.long()
    cols = cols.long()

    scale = unit_w.abs().amax(dim=1) if unit_w.numel() else torch.zeros(0, dtype=f64)
    const = scale == 0
    # constant units relu(c)
    if const.any():
        sel = const[cols]
        bias.index_add_(0, rows[sel], vals[sel] * torch.relu(unit_c[cols[sel]]))
    safe = torch.where(const, torch.ones_like(scale), scale)
    w = unit_w / safe[:, None]
    c = unit_c / safe
    vals = vals * safe[cols]
    # pre-activation range over the domain box (exact for affine functions)
    zmin = c + torch.minimum(w * lo, w * hi).sum(dim=1)
    zmax = c + torch.maximum(w * lo, w * hi).sum(dim=1)
    active = (~const) & (zmin >= 0)
    unstable = (~const) & (zmin < 0) & (zmax > 0)
    # folded active units: relu(z) = sum_i w_i (theta_i - lo_i) + (c + w . lo) on the domain
    pass_vals: list[torch.Tensor] = []
    pass_rows: list[torch.Tensor] = []
    sel = active[cols]
    if sel.any():
        r, cc, v = rows[sel], cols[sel], vals[sel]
        bias.index_add_(0, r, v * (c[cc] + (w[cc] * lo).sum(dim=1)))
        for i in range(k):
            pass_rows.append(r)
            pass_vals.append(v * w[cc, i])
    # unstable units: deduplicate
    idx_unstable = torch.nonzero(unstable).reshape(-1)
    if idx_unstable.numel():
        key = torch.cat([w[idx_unstable], c[idx_unstable, None]], dim=1)
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    else:
        uniq = torch.zeros(0, k + 1, dtype=f64)
        inverse = torch.zeros(0, dtype=torch.long)
    remap = torch.full((unit_w.shape[0],), -1, dtype=torch.long)
    remap[idx_unstable] = inverse + k
    n_hidden = k + uniq.shape[0]
    hid_w = torch.zeros(n_hidden, k, dtype=f64)
    hid_b = torch.zeros(n_hidden, dtype=f64)
    hid_w[:k] = torch.eye(k, dtype=f64)
    hid_b[:k] = -lo
    hid_w[k:] = uniq[:, :k]
    hid_b[k:] = uniq[:, k]
    sel = unstable[cols]
    all_rows = [rows[sel]] + pass_rows
    all_cols = [remap[cols[sel]]] + [torch.full_like(pr, i) for i, pr in enumerate(pass_rows)]
    all_vals = [vals[sel]] + pass_vals
    r = torch.cat(all_rows)
    cc = torch.cat(all_cols)
    v = torch.cat(all_vals)
    # sum duplicate (row, col) entries in float64 before rounding to the layer dtype
    lin, inv = torch.unique(r * n_hidden + cc, return_inverse=True)
    summed = torch.zeros(lin.numel(), dtype=f64).index_add_(0, inv, v)
    hidden = nn.Linear(k, n_hidden)
    out = nn.Linear(n_hidden, n_out)
    with torch.no_grad():
        hidden = hidden.to(dtype)
        out = out.to(dtype)
        hidden.weight.copy_(hid_w.to(dtype))
        hidden.bias.copy_(hid_b.to(dtype))
        out.weight.zero_()
        out.weight.view(-1)[lin] = summed.to(dtype)
        out.bias.copy_(bias.to(dtype))
    return SemanticLayer(hidden, out, image_shape).eval()


class SemanticPerturbation(abc.ABC):
    """Contract of one semantic perturbation family (one or two real parameters).

    Class attributes set by each family: ``name`` (registry key, lower case), ``param_names``
    (tuple of k = 1 or 2 names), ``units`` (e.g. ``"degrees"``), ``requires_channels`` (3 for colour
    families, None for any channel count), ``kind`` (``"layer"`` or ``"box"``), ``DOMAIN`` and
    ``DEFAULT_RANGE`` (class defaults of :attr:`domain` / :attr:`default_range`).

    Instances take keyword-only ``domain=`` and ``default_range=`` overrides (same shape as the class
    defaults: ``(lo, hi)`` for k = 1, ``((lo1, hi1), (lo2, hi2))`` for k = 2); both must contain 0
    (theta = 0 is the identity) and ``default_range`` must lie inside ``domain`` (when only
    ``domain`` is given, the class default range is clipped to it).

    To add a family: subclass, set the class attributes, implement ``_apply`` (and ``_layer_spec``
    for kind "layer"), ``_bounds``, decorate with :func:`semantic_layers.register`.  See the package
    docstring for the recipe.
    """

    name: str = ""
    param_names: tuple[str, ...] = ()
    units: str = ""
    requires_channels: int | None = None
    kind: str = "layer"
    DOMAIN: Any = None
    DEFAULT_RANGE: Any = None

    def __init__(self, *, domain: Any = None, default_range: Any = None):
        k = self.n_params
        if k not in (1, 2):
            raise TypeError(f"{type(self).__name__}.param_names must have 1 or 2 names; got {self.param_names!r}")
        if self.kind not in _KINDS:
            raise TypeError(f"{type(self).__name__}.kind must be one of {_KINDS}; got {self.kind!r}")
        dom = self._parse_box("domain", self.DOMAIN if domain is None else domain)
        for i in range(k):
            if not dom[i][0] < dom[i][1]:
                raise ValueError(f"domain for {self.param_names[i]!r} must satisfy lo < hi; got {dom[i]}")
            if not dom[i][0] <= 0.0 <= dom[i][1]:
                raise ValueError(f"domain for {self.param_names[i]!r} must contain 0 (the identity); got {dom[i]}")
        self._domain = dom
        if default_range is None:   # class default, clipped to the domain (which contains 0)
            rng = [(max(r[0], d[0]), min(r[1], d[1]))
                   for r, d in zip(self._parse_box("DEFAULT_RANGE", self.DEFAULT_RANGE), dom)]
        else:
            rng = self._parse_box("default_range", default_range)
        for i in range(k):
            lo, hi = rng[i]
            if not (lo <= 0.0 <= hi):
                raise ValueError(f"default_range for {self.param_names[i]!r} must contain 0; got {rng[i]}")
            if lo < dom[i][0] or hi > dom[i][1]:
                raise ValueError(f"default_range for {self.param_names[i]!r} must lie inside the domain "
                                 f"{dom[i]}; got {rng[i]}")
        self._default_range = rng

    # ------------------------------------------------------------------ metadata
    @property
    def n_params(self) -> int:
        """k, the number of parameters (1 or 2)."""
        return len(self.param_names)

    @property
    def domain(self) -> tuple:
        """Allowed parameter values: ``(lo, hi)`` for k = 1, ``((lo1, hi1), (lo2, hi2))`` for k = 2."""
        return self._domain[0] if self.n_params == 1 else tuple(self._domain)

    @property
    def default_range(self) -> tuple:
        """Parameter range used when the caller gives none (same shape as :attr:`domain`)."""
        return self._default_range[0] if self.n_params == 1 else tuple(self._default_range)

    def domain_tensors(self, dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The domain as two (k,) tensors (lower corner, upper corner) on ``device`` (default the CPU)."""
        lo = torch.tensor([d[0] for d in self._domain], dtype=dtype, device=device)
        hi = torch.tensor([d[1] for d in self._domain], dtype=dtype, device=device)
        return lo, hi

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "param_names": list(self.param_names), "units": self.units,
                "kind": self.kind, "requires_channels": self.requires_channels,
                "domain": self.domain, "default_range": self.default_range}

    def __repr__(self) -> str:
        if not hasattr(self, "_default_range"):   # failed construction
            return f"<{type(self).__name__} (not initialised)>"
        return f"{type(self).__name__}(domain={self.domain!r}, default_range={self.default_range!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SemanticPerturbation) and type(self) is type(other) \
            and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self.domain), repr(self.default_range)))

    def _parse_box(self, what: str, value: Any) -> list[tuple[float, float]]:
        k = self.n_params
        try:
            if k == 1:
                pairs = [value]
            else:
                pairs = list(value)
                if len(pairs) != k:
                    raise ValueError
            out = []
            for p in pairs:
                p = list(p)
                if len(p) != 2:
                    raise ValueError
                lo, hi = float(p[0]), float(p[1])
                out.append((lo, hi))
        except (TypeError, ValueError):
            shape = "(lo, hi)" if k == 1 else "((lo1, hi1), (lo2, hi2))"
            raise ValueError(f"{what} of {type(self).__name__} must be {shape}; got {value!r}") from None
        for lo, hi in out:
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{what} of {type(self).__name__} must be finite; got {value!r}")
        return out

    # ------------------------------------------------------------------ validation
    def check_input(self, x: Any) -> torch.Tensor:
        """Validate an image (C,H,W) or batch (B,C,H,W) in [0,1]; return it as (B,C,H,W).

        Raises TypeError for non-tensors / non-float32/float64 dtypes and ValueError for a wrong number
        of dimensions, empty tensors, NaN/inf, values outside [0,1] or (colour families) C != 3.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor image (C,H,W) or batch (B,C,H,W); got {type(x).__name__}")
        if x.dtype not in _DTYPES:
            raise TypeError(f"x must be float32 or float64 with values in [0,1]; got dtype {x.dtype}")
        if x.dim() not in (3, 4):
            raise ValueError(f"x must have shape (C,H,W) or (B,C,H,W); got {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"x must not be empty; got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("x must be finite (no NaN/inf)")
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"x must have values in [0,1]; got range [{x.min().item():.4g}, {x.max().item():.4g}]")
        xb = x if x.dim() == 4 else x.unsqueeze(0)
        if self.requires_channels is not None and xb.shape[1] != self.requires_channels:
            raise ValueError(f"{type(self).__name__} needs {self.requires_channels}-channel (RGB) images; got "
                             f"{xb.shape[1]} channel(s) (shape {tuple(x.shape)})")
        return xb

    def _single_image(self, x: Any) -> torch.Tensor:
        xb = self.check_input(x)
        if xb.shape[0] != 1:
            raise ValueError(f"x must be one image (C,H,W) or (1,C,H,W); got shape {tuple(x.shape)}")
        return xb

    def validate_range(self, lo: Any, hi: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate parameter intervals; return float64 tensors (S,k).

        ``lo``/``hi``: numbers (k = 1), sequences of k numbers, or tensors (S,), (S,k).  Raises
        ValueError for NaN/inf, empty intervals (lo > hi; lo == hi is a single point) and intervals
        outside :attr:`domain`; TypeError for non-numeric input.
        """
        lo_t = self._as_param_tensor("lo", lo)
        hi_t = self._as_param_tensor("hi", hi)
        if lo_t.shape != hi_t.shape:
            raise ValueError(f"lo and hi must have the same shape; got {tuple(lo_t.shape)} and {tuple(hi_t.shape)}")
        if lo_t.shape[0] == 0:
            raise ValueError("lo/hi must hold at least one interval")
        if torch.isnan(lo_t).any() or torch.isnan(hi_t).any():
            raise ValueError("lo/hi must not be NaN")
        if (lo_t > hi_t).any():
            bad = int(torch.nonzero((lo_t > hi_t).any(dim=1))[0].item())
            raise ValueError(f"empty parameter interval: lo > hi at row {bad} "
                             f"(lo={lo_t[bad].tolist()}, hi={hi_t[bad].tolist()})")
        dlo, dhi = self.domain_tensors(device=lo_t.device)
        if (lo_t < dlo).any() or (hi_t > dhi).any() or not (torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all()):
            raise ValueError(f"parameter interval outside the domain of {type(self).__name__} "
                             f"({', '.join(self.param_names)} in {self.domain} {self.units}); "
                             f"got lo={lo_t.tolist()}, hi={hi_t.tolist()}")
        return lo_t, hi_t

    def _as_param_tensor(self, what: str, value: Any) -> torch.Tensor:
        k = self.n_params
        if isinstance(value, bool):
            raise TypeError(f"{what} must be numeric; got a bool")
        try:
            t = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, torch.Tensor) \
                else value.detach().to(torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{what} must be a number, a sequence of numbers or a tensor; got {value!r}") from None
        if isinstance(value, torch.Tensor) and not (value.is_floating_point() or value.dtype in
                                                    (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise TypeError(f"{what} must be a real tensor; got dtype {value.dtype}")
        if t.dim() == 0:
            if k != 1:
                raise ValueError(f"{what} needs {k} values ({', '.join(self.param_names)}); got a single number")
            return t.reshape(1, 1)
        if t.dim() == 1:
            if k == 1:
                return t.reshape(-1, 1)
            if t.shape[0] == k:
                return t.reshape(1, k)
            raise ValueError(f"{what} must have shape (k,) or (S,k) with k={k}; got {tuple(t.shape)}")
        if t.dim() == 2 and t.shape[1] == k:
            return t
        raise ValueError(f"{what} must have shape (S,) (k=1) or (S,{k}); got {tuple(t.shape)}")

    def _theta_tensor(self, theta: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """theta -> (B,k) tensor (keeps autograd); validates finiteness and the domain."""
        k = self.n_params
        if isinstance(theta, bool):
            raise TypeError("theta must be numeric; got a bool")
        if isinstance(theta, torch.Tensor):
            if not theta.is_floating_point() and theta.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"theta must be a real tensor; got dtype {theta.dtype}")
            t = theta.to(dtype=dtype, device=device)
        else:
            try:
                t = torch.as_tensor(theta, dtype=dtype, device=device)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"theta must be a number, a sequence or a tensor; got {theta!r}") from None
        if t.dim() == 0:
            if k != 1:
                raise ValueError(f"theta needs {k} values ({', '.join(self.param_names)}); got a single number")
            t = t.reshape(1, 1)
        elif t.dim() == 1:
            if k == 1:
                t = t.reshape(-1, 1)
            elif t.shape[0] == k:
                t = t.reshape(1, k)
            else:
                raise ValueError(f"theta must have shape (B,{k}) (or ({k},)); got {tuple(t.shape)}")
        elif not (t.dim() == 2 and t.shape[1] == k):
            raise ValueError(f"theta must be a number, (B,) (k=1) or (B,{k}); got {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError("theta must not be empty")
        td = t.detach()
        if not torch.isfinite(td).all():
            raise ValueError("theta must be finite (no NaN/inf)")
        dlo, dhi = self.domain_tensors(dtype, device)
        if (td < dlo).any() or (td > dhi).any():
            raise ValueError(f"theta outside the domain of {type(self).__name__} "
                             f"({', '.join(self.param_names)} in {self.domain} {self.units}); "
                             f"got values in [{td.min().item():.6g}, {td.max().item():.6g}]")
        return t

    # ------------------------------------------------------------------ public operations
    def apply(self, x: torch.Tensor, theta: Any) -> torch.Tensor:
        """The perturbed images (B,C,H,W) (reference semantics, differentiable in theta).

        ``x``: (C,H,W) or (B,C,H,W); ``theta``: a number (k = 1), (B,), (k,) or (B,k).  A single image
        is broadcast over the thetas and a single theta over the images; otherwise the batch sizes must
        match.  ``apply(x, 0)`` returns ``x`` exactly.
        """
        xb = self.check_input(x)
        th = self._theta_tensor(theta, xb.dtype, xb.device)
        bx, bt = xb.shape[0], th.shape[0]
        if bx != bt:
            if bx == 1:
                xb = xb.expand(bt, *xb.shape[1:])
            elif bt == 1:
                th = th.expand(bx, th.shape[1])
            else:
                raise ValueError(f"batch sizes of x ({bx}) and theta ({bt}) differ; use equal sizes or size 1")
        return self._apply(xb, th)

    def layer(self, x: torch.Tensor) -> SemanticLayer:
        """Exact network ``theta (B,k) -> perturbed x (B,C,H,W)`` for every theta in :attr:`domain`.

        Only nn.Linear + nn.ReLU + view (see :class:`SemanticLayer`); dtype and device follow ``x`` (the layer is
        assembled on the CPU in float64, then moved).  Raises TypeError for kind "box" families (use
        :meth:`pixel_bounds`).
        """
        if self.kind != "layer":
            raise TypeError(f"{type(self).__name__} is a '{self.kind}' perturbation: it has no exact theta->image "
                            f"layer; use pixel_bounds(x, lo, hi)")
        xb = self._single_image(x)
        dlo, dhi = self.domain_tensors()
        spec = self._layer_spec(xb[0].detach().cpu().to(torch.float64), dlo, dhi)
        return build_relu_layer(**spec, domain_lo=dlo, domain_hi=dhi, image_shape=tuple(xb.shape[1:]),
                                dtype=xb.dtype).to(xb.device)

    def pixel_bounds(self, x: torch.Tensor, lo: Any, hi: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Sound per-pixel bounds of ``apply(x, theta)`` over each box ``lo[s] <= theta <= hi[s]``.

        ``x``: one image; ``lo``/``hi``: see :meth:`validate_range`.  Returns ``(lower, upper)`` of
        shape (S,C,H,W) in x's dtype and on x's device, computed in float64 and rounded outward (plus an
        absolute slack of 1e-12), so ``lower <= apply(x, theta) <= upper`` for every theta in the box.
        """
        xb = self._single_image(x)
        lo_t, hi_t = self.validate_range(lo, hi)
        lower, upper = self._bounds(xb[0].detach().to(torch.float64), lo_t.to(xb.device), hi_t.to(xb.device))
        return round_outward(lower, upper, xb.dtype)

    # ------------------------------------------------------------------ for subclasses
    @abc.abstractmethod
    def _apply(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """x (B,C,H,W) validated, theta (B,k) validated (same dtype/device) -> (B,C,H,W)."""

    def _layer_spec(self, x: torch.Tensor, domain_lo: torch.Tensor, domain_hi: torch.Tensor) -> dict[str, torch.Tensor]:
        """For kind "layer": float64 x (C,H,W) -> dict(unit_w, unit_c, rows, cols, vals, out_bias) for
        :func:`build_relu_layer` (output index o = c*H*W + i*W + j)."""
        raise TypeError(f"{type(self).__name__} has no layer")

    @abc.abstractmethod
    def _bounds(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 x (C,H,W), lo/hi (S,k) on x's device -> float64 (lower, upper) of shape (S,C,H,W) there."""


class PiecewiseLinear1D(SemanticPerturbation):
    """Helper base for one-parameter families that are piecewise linear in theta for every pixel.

    Subclasses implement ``_pointwise(x, t)`` (x (...,C,H,W), t broadcastable per pixel, e.g.
    (...,1,H,W) or (...,1,1,1)) and ``_breakpoints(x, lo, hi)`` (x (C,H,W), lo/hi (S,1,1,1) ->
    (S,n,c,H,W) every kink of theta -> pixel inside [lo, hi], c = 1 or C; values outside [lo, hi]
    are allowed and get clamped).  Bounds are then exact: the extremes of a piecewise-linear function
    over an interval are at its endpoints or kinks.
    """

    def _apply(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self._pointwise(x, theta.reshape(-1, 1, 1, 1))

    @abc.abstractmethod
    def _pointwise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def _breakpoints(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        ...

    def _bounds(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        S = lo.shape[0]
        lo4 = lo.reshape(S, 1, 1, 1)
        hi4 = hi.reshape(S, 1, 1, 1)
        lower = torch.empty(S, *x.shape, dtype=torch.float64, device=x.device)
        upper = torch.empty_like(lower)
        chunk = max(1, 2_000_000 // max(1, x.numel() * 8))
        for s0 in range(0, S, chunk):
            l4, h4 = lo4[s0:s0 + chunk], hi4[s0:s0 + chunk]
            cand = self._breakpoints(x, l4, h4)                        # (s, n, c, H, W)
            cand = torch.nan_to_num(cand, nan=0.0, posinf=1e300, neginf=-1e300)
            cand = torch.maximum(torch.minimum(cand, h4.unsqueeze(1)), l4.unsqueeze(1))
            ends = torch.stack([l4.expand(-1, 1, *x.shape[1:]), h4.expand(-1, 1, *x.shape[1:])], dim=1)
            vals = torch.cat([self._pointwise(x, ends), self._pointwise(x, cand)], dim=1)   # (s, n+2, C, H, W)
            lower[s0:s0 + chunk] = vals.amin(dim=1)
            upper[s0:s0 + chunk] = vals.amax(dim=1)
        return lower, upper
