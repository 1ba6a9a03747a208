"""Margin lower bounds of a classifier over boxes of semantic parameters (auto_LiRPA through :mod:`certify.lirpa`).

Kind ``"layer"`` families: the network ``theta -> image -> logits`` (the family's exact Linear/ReLU layer
composed with the model) is bounded over boxes of theta with the margin specification ``C = e_label - e_j``.
The model alone is first bounded over the sound per-pixel box of each parameter box
(``perturbation.pixel_bounds``); boxes this already verifies are done; for the others the semantic layer
is rebuilt on the union of their boxes (ReLUs linear there are folded away) and the model's intermediate
bounds are passed to the composed bound as reference bounds; the larger margin lower bound is used.
Kind ``"box"`` families (rotation) and the l-inf baselines: the model over the per-pixel box of each piece
(method "crown": CROWN-IBP, i.e. IBP intermediate bounds and a CROWN pass for the margins).

Everything runs on the image's device (``x.device``, where :func:`~certify.semantic.verify_semantic` put the
model too): parameter boxes, pixel boxes, margin specifications and the auto_LiRPA wrappers. The exact semantic
layer of a box is assembled on the CPU in float64 (its ReLU expansion) and moved to the device.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from certify import lirpa

logger = logging.getLogger(__name__)

# boxes per composed bound call are padded to a multiple of this
_ROWS = 8


class _Bounder:
    """Margin lower bounds of ``model`` over parameter boxes of one perturbation of one image."""

    def __init__(self, model: nn.Module, x: torch.Tensor, label: int, num_classes: int, perturbation: Any,
                 *, method: str, baseline: str | None, batch_size: int, alpha_iterations: int,
                 margin_tol: float, model_net: lirpa.BoundedNet | None = None):
        self.model = model
        self.x = x
        self.device = x.device
        self.label = label
        self.num_classes = num_classes
        self.p = perturbation
        self.method = method
        self.baseline = baseline
        self.batch_size = batch_size
        self.alpha_iterations = alpha_iterations
        self.margin_tol = margin_tol
        self.model_net = model_net
        self._spec: dict[str, torch.Tensor] | None = None
        self._no_forward_mode = False
        self._cnet: tuple[torch.Tensor, torch.Tensor, lirpa.BoundedNet] | None = None
        # the requested parameter box (k values each; set by verify_semantic): the composed network is built on it
        self.range_lo: torch.Tensor | None = None
        self.range_hi: torch.Tensor | None = None
        self.n_bounded = 0

    # the model alone (pixel boxes)
    def _model_bounded(self) -> lirpa.BoundedNet:
        if self.model_net is None:
            self.model_net = lirpa.bounded_module(self.model, self.x.unsqueeze(0))
        return self.model_net

    def _layer(self, lo: torch.Tensor, hi: torch.Tensor) -> nn.Module:
        """The exact theta -> image network of the family on the box [lo, hi] (k values each).

        Built from the family's ReLU expansion restricted to the box (units linear there are
        folded), which is exact on the box and much smaller than ``perturbation.layer(x)``."""
        from semantic_layers.base import build_relu_layer

        if self._spec is None:
            dlo, dhi = self.p.domain_tensors()
            self._spec = self.p._layer_spec(self.x.detach().cpu().double(), dlo, dhi)
        layer = build_relu_layer(**self._spec, domain_lo=lo.detach().cpu().double(),
                                 domain_hi=hi.detach().cpu().double(), image_shape=tuple(self.x.shape),
                                 dtype=torch.float32)
        return layer.to(self.device)

    def _pixel_box(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pl, pu = self.p.pixel_bounds(self.x, lo.double(), hi.double())
        pl, pu = pl.float(), pu.float()
        if self.baseline == "linf-ball":
            eps = torch.maximum(pu - self.x, self.x - pl).flatten(1).amax(dim=1).clamp_min(0)
            eps = eps.view(-1, 1, 1, 1)
            pl = (self.x - eps).clamp(0, 1)
            pu = (self.x + eps).clamp(0, 1)
            # clamping to [0, 1] is sound: apply() returns images in [0, 1]
            pl = torch.minimum(pl, self.x.expand_as(pl))
            pu = torch.maximum(pu, self.x.expand_as(pu))
        return pl, pu

    def margins(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """(S,) lower bounds of min_j (logit_label - logit_j) over each box ``lo[s] <= theta <= hi[s]``."""
        return self.class_margins(lo, hi).min(dim=1).values

    def class_margins(self, lo: torch.Tensor, hi: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        """(S, K-1) lower bounds of ``logit_label - logit_j`` over each box (j in :func:`lirpa.other_classes`
        order).

        ``known``: (S, K-1) lower bounds already proven over boxes CONTAINING these (e.g. the piece a row
        was cut from; -inf where none). Classes whose known bound exceeds ``margin_tol`` are not bounded
        again (the specification of a row holds only its other classes); every returned entry is the larger
        of the known and the computed bound, both sound over the row's box. Rows with nothing left to
        prove are not bounded at all.

        Method "crown" on pixel boxes ("box" families, baselines), without ``known``: the class with the
        smallest margin at theta = 0 is bounded first; the other classes only for the rows it verifies (a row
        it does not verify fails whatever the others give; their bounds stay -inf, a trivial lower bound)."""
        S, k1 = lo.shape[0], self.num_classes - 1
        out = torch.full((S, k1), -float("inf"), device=self.device) if known is None else \
            known.detach().float().clone()
        if tuple(out.shape) != (S, k1):
            raise ValueError(f"known must have shape {(S, k1)}; got {tuple(out.shape)}")
        need = out <= self.margin_tol
        if known is None and self.method == "crown" and (self.baseline is not None or self.p.kind != "layer"):
            probe = torch.zeros_like(need)
            probe[:, self._hardest_class()] = True
            self._bound_needed(out, probe, lo, hi)
            need &= ~probe & (out > self.margin_tol).any(dim=1, keepdim=True)
        self._bound_needed(out, need, lo, hi)
        return out

    def _hardest_class(self) -> int:
        """Column (other-class index) of the smallest margin of the clean image."""
        with torch.no_grad():
            z = self.model(self.x.unsqueeze(0))[0]
        others = lirpa.other_classes(torch.tensor([self.label], device=z.device), self.num_classes)[0]
        return int(torch.argmin(z[self.label] - z[others]))

    def _bound_needed(self, out: torch.Tensor, need: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Raise ``out`` (S, K-1) in place to the bounds of the ``need``-ed classes of each row that has any.
        Pixel-box rows are grouped by their number of needed classes (no padded specifications); the composed
        network's rows stay in one call (its cost is dominated by the call, not by the specifications)."""
        full = lirpa.margin_spec(torch.tensor([self.label], device=self.device), self.num_classes)[0]   # (K-1, K)
        self.n_bounded += bound_needed_classes(
            out, need, lambda r, cols: self._margins_chunk(lo[r], hi[r], full[cols]), rows_per_call=self.batch_size,
            group_by_count=not (self.baseline is None and self.p.kind == "layer"))

    def _margins_chunk(self, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """(S, w) lower bounds of ``C[s] @ logits`` over each box (C: (S, w, K) margin rows)."""
        composed = self.baseline is None and self.p.kind == "layer"
        if composed and self.method in ("crown", "ibp"):
            return self._composed(lo, hi, C)
        pl, pu = self._pixel_box(lo, hi)
        # the model over the pixel box: the certificate itself for "box" families and baselines;
        # for "layer" families a cheap CROWN pass whose intermediate bounds speed up the composed one
        box_method = ("ibp" if self.method == "ibp" else "crown") if composed else self.method
        if not composed and self.method == "crown":
            # pixel boxes of fine pieces are narrow: IBP intermediate bounds are nearly as tight there and
            # cost a fraction of CROWN's, so the range can be split much more finely for the same time
            box_method = "crown-ibp"
        mnet = self._model_bounded()
        box = lirpa.compute_bounds(mnet, x_lower=pl, x_upper=pu, method=box_method, C=C,
                                   alpha_iterations=self.alpha_iterations, bound_upper=False)
        best = box.lower
        todo = best.min(dim=1).values <= self.margin_tol      # rows the pixel box alone does not verify
        if composed and todo.any():
            rows = todo.nonzero().flatten()
            model_refs = None
            if box_method != "ibp":
                model_refs = [None if r is None else (r[0][rows], r[1][rows]) for r in lirpa.relu_input_bounds(mnet)]
            lo_t, hi_t = lo[rows], hi[rows]
            union_lo, union_hi = lo_t.min(dim=0).values, hi_t.max(dim=0).values
            net = nn.Sequential(self._layer(union_lo, union_hi), self.model).eval()
            cnet = lirpa.bounded_module(net, lo_t.float())
            reference = self._align(cnet, mnet, model_refs)
            comp = lirpa.compute_bounds(cnet, x_lower=lo_t.float(), x_upper=hi_t.float(), method=self.method,
                                        C=C[rows], alpha_iterations=self.alpha_iterations, reference=reference,
                                        bound_upper=False)
            best = best.clone()
            best[rows] = torch.maximum(best[rows], comp.lower)
        return best

    def _composed(self, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """(S, w) lower bounds of the margins ``C`` of ``theta -> layer -> model`` over the boxes (one call).

        "crown": auto_LiRPA's Forward+Backward - intermediate bounds by forward linear bound propagation
        (cheap and tight for a 1- or 2-dimensional input), the margins by CROWN's backward pass; models with
        operators that have no forward mode in auto_LiRPA 0.3 (BatchNorm, constant subtraction) get plain
        CROWN on the composed network instead. "ibp": interval bounds of the composed network."""
        cnet = self._composed_net(lo, hi)
        S = lo.shape[0]
        lo, hi, C = pad_rows(lo, hi, C)
        kw = dict(x_lower=lo.float(), x_upper=hi.float(), C=C, bound_upper=False)
        if self.method == "ibp":
            return lirpa.compute_bounds(cnet, method="ibp", **kw).lower[:S]
        lower, self._no_forward_mode = forward_backward_lower(cnet, no_forward_mode=self._no_forward_mode, **kw)
        return lower[:S]

    def _composed_net(self, lo: torch.Tensor, hi: torch.Tensor) -> lirpa.BoundedNet:
        """The traced ``layer -> model`` network, built on the first boxes' union and reused for every box
        inside it (the layer is exact on that union; ReLUs stable on a smaller box are exact there too)."""
        u_lo, u_hi = lo.min(dim=0).values, hi.max(dim=0).values
        if self._cnet is None or (u_lo < self._cnet[0]).any() or (u_hi > self._cnet[1]).any():
            if self.range_lo is not None:
                u_lo, u_hi = torch.minimum(u_lo, self.range_lo), torch.maximum(u_hi, self.range_hi)
            net = nn.Sequential(self._layer(u_lo, u_hi), self.model).eval()
            self._cnet = (u_lo, u_hi, lirpa.bounded_module(net, lo.float()))
        return self._cnet[2]

    @staticmethod
    def _align(cnet: lirpa.BoundedNet, mnet: lirpa.BoundedNet, model_refs: Any) -> Any:
        """Reference bounds for the composed network: the model's ReLU inputs are the suffix of its
        ReLU inputs. Returns None (plain bounding, slower but equally sound) if the graphs differ."""
        if model_refs is None:
            return None
        comp, mod = lirpa.relu_inputs(cnet), lirpa.relu_inputs(mnet)
        n = len(mod)
        if n == 0 or len(comp) < n or comp[len(comp) - n:] != mod:
            logger.debug("semantic: model graph not found as a suffix of the composed graph; "
                         "bounding without reference bounds")
            return None
        return [None] * (len(comp) - n) + list(model_refs)


def pad_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors with their last row repeated up to a multiple of ``_ROWS`` rows: a fixed set of batch sizes,
    since auto_LiRPA traces MaxPool models once per batch size (callers keep the first S rows of the bounds)."""
    pad = (-tensors[0].shape[0]) % _ROWS
    if not pad:
        return tensors
    return tuple(torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in tensors)


def forward_backward_lower(cnet: lirpa.BoundedNet, *, no_forward_mode: bool, **kw: Any
                           ) -> tuple[torch.Tensor, bool]:
    """Lower bounds of ``cnet`` by auto_LiRPA's Forward+Backward, or by CROWN when the model has no forward mode in
    auto_LiRPA 0.3 (BatchNorm, constant subtraction) or ``no_forward_mode`` says so already. Returns the bounds
    and whether the model has no forward mode (pass it back on the next call to skip the failing attempt)."""
    if not no_forward_mode:
        try:
            return lirpa.compute_bounds(cnet, method="forward+backward", **kw).lower, False
        except (NotImplementedError, TypeError) as exc:
            logger.info("semantic: the model has no forward mode in auto_LiRPA 0.3 (%s); using CROWN on the "
                        "composed network", exc)
    return lirpa.compute_bounds(cnet, method="crown", **kw).lower, True


def bound_needed_classes(out: torch.Tensor, need: torch.Tensor,
                         bound_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, rows_per_call: int,
                         group_by_count: bool = True) -> int:
    """Raise ``out`` (S, K-1) in place to the bounds of the ``need``-ed (S, K-1) classes of each row that has any.

    ``bound_rows(r, cols)`` returns the (R, w) margin lower bounds of rows ``r`` for their columns ``cols``
    (:func:`_needed_columns`); entries become the larger of the old and the new bound (both sound). With
    ``group_by_count`` rows are grouped by their number of needed classes (no padded specifications); at most
    ``rows_per_call`` rows per call. Returns the number of rows bounded."""
    counts = need.sum(dim=1)
    if group_by_count:
        groups = [(counts == w).nonzero().flatten() for w in torch.unique(counts[counts > 0]).tolist()]
    else:
        groups = [(counts > 0).nonzero().flatten()]
    for rows in groups:
        for s0 in range(0, rows.numel(), rows_per_call):
            r = rows[s0:s0 + rows_per_call]
            cols = _needed_columns(need[r])                              # (R, w), padded by repetition
            lb = bound_rows(r, cols)                                     # (R, w)
            sub = out[r]
            sub.scatter_reduce_(1, cols, lb.float(), reduce="amax")
            out[r] = sub
    return int((counts > 0).sum())


def _needed_columns(need: torch.Tensor) -> torch.Tensor:
    """(R, w) column indices of the True entries of each row of ``need`` (R, K-1), w = the largest count;
    shorter rows repeat their first index (a repeated specification row gives the same bound)."""
    counts = need.sum(dim=1)
    w = int(counts.max())
    order = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :w]   # needed columns first
    pos = torch.arange(w, device=need.device).unsqueeze(0).expand(need.shape[0], w)
    return torch.where(pos < counts.unsqueeze(1), order, order[:, :1])
