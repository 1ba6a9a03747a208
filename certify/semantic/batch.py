"""``verify_semantic_batch``: certify several images against one semantic perturbation family together.

Every image runs the splitting of :func:`certify.semantic.splitting.certify_1d_steps`; the new sub-intervals of
one round of ALL images are bounded together (rows grouped by the number of classes left to prove), and the
flip search steps of all images share model calls. An image's result does not depend on the other images of
its batch (each bound row is computed independently). One-parameter families (:func:`batchable`):

* kind ``"layer"`` families whose exact ReLU layer has the same structure for every image and differs
  between images only in its unit offsets (e.g. brightness: ``relu(b + x) - relu(b + x - 1)`` per pixel): the
  network ``(theta, c) -> model(W relu(U theta + c) + bias)`` is traced ONCE (per model, family and image
  shape) with the per-image offsets ``c`` as a second, unperturbed input of the bound computation
  (:func:`certify.lirpa.bounded_module` with ``constants``), bounded with Forward+Backward (forward linear
  intermediate bounds, CROWN for the margins), as method "crown" of :func:`verify_semantic`. The layer is
  the family's unsimplified ReLU expansion (no folding of the units that are linear on a box, which
  :func:`verify_semantic` does per image), so bounds, and certified ranges, can differ slightly from
  :func:`verify_semantic`'s; both are sound.
* kind ``"box"`` families (rotation): CROWN-IBP of the model over the sound per-pixel box of each row, as
  :func:`verify_semantic`'s method "crown".
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from certify import lirpa
from certify._checks import check_float, check_int
from certify._modes import eval_mode
from certify.devices import module_device

from .bounds import _ROWS, bound_needed_classes, forward_backward_lower, pad_rows
from .certificate import SemanticCertificate, tightness_1d
from .inputs import check_model, check_perturbation, image_of, resolve_range
from .splitting import certify_1d_steps
from .verify import DEFAULT_SPLITTING, _check_label

__all__ = ["verify_semantic_batch", "batchable", "run_batched"]

logger = logging.getLogger(__name__)

# verification in batches runs on the CPU
_CPU = torch.device("cpu")
_SHARED = ("unit_w", "rows", "cols", "vals", "out_bias")
# bound rows per call = batch_size times this
_IMAGES_PER_CALL = 8


def _spec(perturbation: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    dlo, dhi = perturbation.domain_tensors()
    return perturbation._layer_spec(x.double(), dlo, dhi)


def _same_structure(a: dict, b: dict) -> bool:
    return all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in _SHARED)


def batchable(perturbation: Any, image_shape: Sequence[int]) -> bool:
    """Whether :func:`verify_semantic_batch` can verify images of ``image_shape`` (C, H, W) under
    ``perturbation``: one parameter, and kind ``"box"`` (rotation) or kind ``"layer"`` with a layer structure
    (unit weights, output weights and bias) that is the same for two different probe images (only the unit
    offsets differ)."""
    check_perturbation(perturbation)
    if len(perturbation.param_names) != 1:
        return False
    if perturbation.kind == "box":
        return True
    n = math.prod(image_shape)
    probes = [torch.full(tuple(image_shape), 0.25, dtype=torch.float64, device=_CPU),
              torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=_CPU).reshape(tuple(image_shape))]
    try:
        perturbation.check_input(probes[0].float())
    except (TypeError, ValueError):
        return False
    return _same_structure(_spec(perturbation, probes[0]), _spec(perturbation, probes[1]))


class _SharedLayerNet(nn.Module):
    """``(theta, c) -> model(W relu(U theta + c) + bias)``: the family's layer with per-image offsets ``c``."""

    def __init__(self, spec: dict[str, torch.Tensor], image_shape: tuple[int, ...], model: nn.Module):
        super().__init__()
        unit_w = spec["unit_w"]
        n_units, k = unit_w.shape
        n_out = math.prod(image_shape)
        weight = torch.zeros(n_out, n_units, dtype=torch.float64, device=_CPU)
        weight.index_put_((spec["rows"].long(), spec["cols"].long()), spec["vals"].double(), accumulate=True)
        self.hidden = nn.Linear(k, n_units)        # zero bias (a bias-free Linear is traced as Transpose + MatMul)
        self.out = nn.Linear(n_units, n_out)
        with torch.no_grad():
            self.hidden.weight.copy_(unit_w.float())
            self.hidden.bias.zero_()
            self.out.weight.copy_(weight.float())
            self.out.bias.copy_(spec["out_bias"].reshape(-1).float())
        self.image_shape = tuple(image_shape)
        self.model = model

    def forward(self, theta: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(theta) + c)
        return self.model(self.out(h).view(-1, *self.image_shape))


class _RowsBounder:
    """Per-class margin lower bounds of boxes of several images (rows tagged with their image)."""

    def __init__(self, num_classes: int, *, margin_tol: float, rows_per_call: int):
        self.num_classes = num_classes
        self.margin_tol = margin_tol
        self.rows_per_call = rows_per_call
        self.n_bounded = 0

    def class_margins(self, lo: torch.Tensor, hi: torch.Tensor, known: torch.Tensor, labels: torch.Tensor,
                      img_of: torch.Tensor, imgs: list, specs: list) -> torch.Tensor:
        """(S, K-1) per-class margin lower bounds of rows ``lo[s] <= theta <= hi[s]`` of image ``imgs[img_of[s]]``
        (label ``labels[s]``, layer spec ``specs[img_of[s]]``); as
        :meth:`certify.semantic.bounds._Bounder.class_margins` (``known`` classes above ``margin_tol`` are not
        bounded again). Rows are grouped by their number of classes left, so that no row of a call carries
        (repeated) specifications it does not need."""
        out = known.detach().float().clone()

        def bound_rows(r: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            C = lirpa.margin_spec(labels[r], self.num_classes).gather(
                1, cols.unsqueeze(2).expand(-1, -1, self.num_classes))
            return self._bound(lo[r], hi[r], C, img_of[r], imgs, specs)

        self.n_bounded += bound_needed_classes(out, out <= self.margin_tol, bound_rows,
                                               rows_per_call=self.rows_per_call)
        return out

    def _bound(self, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, img_of: torch.Tensor, imgs: list,
               specs: list) -> torch.Tensor:
        raise NotImplementedError


class _LayerBatchBounder(_RowsBounder):
    """Kind "layer": ``(theta, c) -> model(layer)`` traced once, the rows' unit offsets as constants."""

    def __init__(self, model: nn.Module, perturbation: Any, spec: dict, image_shape: tuple[int, ...],
                 num_classes: int, *, margin_tol: float, rows_per_call: int):
        super().__init__(num_classes, margin_tol=margin_tol, rows_per_call=rows_per_call)
        self.net = _SharedLayerNet(spec, image_shape, model).eval()
        k = len(perturbation.param_names)
        self.cnet = lirpa.bounded_module(self.net, torch.zeros(_ROWS, k, device=_CPU),
                                         constants=(torch.zeros(_ROWS, spec["unit_c"].numel(), device=_CPU),))
        self.no_forward_mode = False

    def _bound(self, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, img_of: torch.Tensor, imgs: list,
               specs: list) -> torch.Tensor:
        c = torch.stack([specs[int(i)]["unit_c"] for i in img_of]).float()
        S = lo.shape[0]
        lo, hi, C, c = pad_rows(lo.float(), hi.float(), C, c)
        lower, self.no_forward_mode = forward_backward_lower(
            self.cnet, no_forward_mode=self.no_forward_mode, x_lower=lo, x_upper=hi, C=C, bound_upper=False,
            constants=(c,))
        return lower[:S]


class _BoxBatchBounder(_RowsBounder):
    """Kind "box" (rotation): CROWN-IBP of the model over the sound per-pixel box of each row, as
    :func:`verify_semantic`'s method "crown" for these families."""

    def __init__(self, model: nn.Module, perturbation: Any, image_shape: tuple[int, ...], num_classes: int, *,
                 margin_tol: float, rows_per_call: int):
        super().__init__(num_classes, margin_tol=margin_tol, rows_per_call=rows_per_call)
        self.p = perturbation
        self.mnet = lirpa.bounded_module(model, torch.zeros(1, *image_shape, device=_CPU))

    def _bound(self, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, img_of: torch.Tensor, imgs: list,
               specs: list) -> torch.Tensor:
        pl = torch.empty(lo.shape[0], *imgs[0].shape, device=_CPU)
        pu = torch.empty_like(pl)
        for i in torch.unique(img_of).tolist():
            rows = (img_of == i).nonzero().flatten()
            a, b = self.p.pixel_bounds(imgs[i], lo[rows].double(), hi[rows].double())
            pl[rows], pu[rows] = a.float(), b.float()
        return lirpa.compute_bounds(self.mnet, x_lower=pl, x_upper=pu, method="crown-ibp", C=C,
                                    bound_upper=False).lower


def verify_semantic_batch(model: nn.Module, xs: Sequence[torch.Tensor] | torch.Tensor, labels: Sequence[int],
                          perturbation: Any, *, max_param: Any = None, n_splits: int | None = None,
                          max_refine: int | None = None, attack: bool = True, attack_grid: int = 201,
                          attack_steps: int = 20, batch_size: int = 32, seed: int = 0,
                          margin_tol: float = 1e-4, _bounders: dict | None = None) -> list[SemanticCertificate]:
    """Certify every image ``xs[i]`` (C,H,W) with label ``labels[i]`` against ``perturbation`` (method "crown").

    Arguments as in :func:`verify_semantic` (``batch_size``: images per attack batch / 8 and bound rows per
    call / 8). ``perturbation`` must be :func:`batchable` for the images' shape. Returns one
    :class:`SemanticCertificate` per image, in order; ``time_s`` is the batch's wall time shared equally
    between its images (plus each image's own attack time). See the module docstring for the guarantee.
    """
    t0 = time.perf_counter()
    check_model(model)
    if module_device(model).type != "cpu":
        raise ValueError(f"verify_semantic_batch runs on the CPU; the model is on {module_device(model)} "
                         "(move it with model.cpu(), or use verify_semantic)")
    check_perturbation(perturbation)
    opts = _options(perturbation, n_splits, max_refine, attack_grid, attack_steps, batch_size, margin_tol, seed)
    if not isinstance(attack, bool):
        raise TypeError(f"attack must be a bool; got {attack!r}")
    if isinstance(xs, torch.Tensor) and xs.dim() == 3:
        raise ValueError("xs must be a batch of images (N, C, H, W) or a sequence of (C, H, W) images")
    imgs = [image_of(perturbation, x) for x in xs]
    labels = list(labels)
    if len(imgs) != len(labels) or not imgs:
        raise ValueError(f"xs and labels must have the same, non-zero length; got {len(imgs)} and {len(labels)}")
    shape = tuple(imgs[0].shape)
    if any(tuple(x.shape) != shape for x in imgs):
        raise ValueError("xs must all have the same shape")
    if not batchable(perturbation, shape):
        raise ValueError(f"perturbation {perturbation.name!r} cannot be verified in batches (it needs one "
                         "parameter and a layer whose structure does not depend on the image, e.g. brightness); "
                         "use verify_semantic")
    (lo, hi), = resolve_range(perturbation, max_param)
    specs = [_spec(perturbation, x) if perturbation.kind == "layer" else {} for x in imgs]
    with eval_mode(model):
        with torch.no_grad():
            logits = model(torch.stack(imgs))
        num_classes = int(logits.shape[1])
        labels = [_check_label(y, num_classes) for y in labels]
        predicted = logits.argmax(dim=1).tolist()
        key = (perturbation, shape, num_classes, opts["margin_tol"], opts["batch_size"])
        bounders = {} if _bounders is None else _bounders     # a caller's cache: one traced network per key
        if key not in bounders:
            kw = dict(margin_tol=opts["margin_tol"], rows_per_call=opts["batch_size"] * _IMAGES_PER_CALL)
            bounders[key] = (_LayerBatchBounder(model, perturbation, specs[0], shape, num_classes, **kw)
                             if perturbation.kind == "layer" else
                             _BoxBatchBounder(model, perturbation, shape, num_classes, **kw))
        bounder = bounders[key]
        found = _certify_all(bounder, imgs, specs, labels, predicted, lo, hi, opts)
        t_attack = time.perf_counter()
        correct = [i for i, (y, pred) in enumerate(zip(labels, predicted)) if y == pred]
        atts: dict[int, Any] = {i: (0.0, 0.0) if attack else None for i in range(len(imgs))}
        if attack and correct:
            found_atts = attack_1d_batch(model, perturbation, [imgs[i] for i in correct], [labels[i] for i in correct],
                                         lo, hi, grid=opts["attack_grid"], steps=opts["attack_steps"],
                                         batch=8 * opts["batch_size"])
            atts.update(zip(correct, found_atts))
    now = time.perf_counter()
    shared = ((now - t0) / len(imgs), (now - t_attack) / len(imgs))
    return [_certificate(perturbation, labels[i], predicted[i], (lo, hi), found[i], atts[i], opts, shared)
            for i in range(len(imgs))]


def _options(perturbation: Any, n_splits: Any, max_refine: Any, attack_grid: Any, attack_steps: Any,
             batch_size: Any, margin_tol: Any, seed: Any) -> dict[str, Any]:
    d_splits, d_refine = DEFAULT_SPLITTING[perturbation.kind]
    return {"n_splits": check_int("n_splits", d_splits if n_splits is None else n_splits, 1),
            "max_refine": check_int("max_refine", d_refine if max_refine is None else max_refine, 0),
            "attack_grid": check_int("attack_grid", attack_grid, 3),
            "attack_steps": check_int("attack_steps", attack_steps, 0),
            "batch_size": check_int("batch_size", batch_size, 1),
            "margin_tol": check_float("margin_tol", margin_tol, low=0.0), "seed": check_int("seed", seed, 0)}


def _certify_all(bounder: _RowsBounder, imgs: list, specs: list, labels: list, predicted: list, lo: float,
                 hi: float, opts: dict) -> list[dict]:
    """Run every correctly classified image's splitting generator in lockstep, one bound call per round."""
    found: list[dict] = [{"pieces": [], "certified": (0.0, 0.0), "n_refined": 0} for _ in specs]
    gens, requests = {}, {}
    for i, (y, pred) in enumerate(zip(labels, predicted)):
        if y != pred:
            continue
        gens[i] = certify_1d_steps(lo, hi, n_splits=opts["n_splits"], max_refine=opts["max_refine"],
                                   tol=opts["margin_tol"], pieces=found[i]["pieces"])
        requests[i] = next(gens[i])
    k1 = bounder.num_classes - 1
    while requests:
        order = sorted(requests)
        counts = [requests[i][0].shape[0] for i in order]
        lo_t = torch.cat([requests[i][0] for i in order])
        hi_t = torch.cat([requests[i][1] for i in order])
        known = torch.cat([torch.full((n, k1), -float("inf"), device=_CPU) if requests[i][2] is None
                           else requests[i][2] for i, n in zip(order, counts)])
        img_of = torch.repeat_interleave(torch.tensor(order, device=_CPU), torch.tensor(counts, device=_CPU))
        per_class = bounder.class_margins(lo_t, hi_t, known, torch.tensor(labels, device=_CPU)[img_of], img_of,
                                          imgs, specs)
        for i, part in zip(order, per_class.split(counts)):
            try:
                requests[i] = gens[i].send(part)
            except StopIteration as done:
                c_lo, c_hi, n_refined = done.value
                found[i].update(certified=(float(c_lo), float(c_hi)), n_refined=n_refined)
                del requests[i]
    return found


def _certificate(perturbation: Any, label: int, predicted: int, requested: tuple, found: dict, att: Any,
                 opts: dict, shared_s: tuple[float, float]) -> SemanticCertificate:
    certified = found["certified"]
    tight = tightness_1d(certified, att) if predicted == label else None
    pieces = found["pieces"]
    return SemanticCertificate(
        perturbation=perturbation.name, param_names=tuple(perturbation.param_names),
        units=str(getattr(perturbation, "units", "")), kind=perturbation.kind, method="crown", baseline=None,
        label=label, predicted=predicted, clean_correct=predicted == label, requested=requested,
        certified=certified, certified_scale=None, attack=att, attack_theta=att, attack_scale=None,
        tightness=tight, n_splits=len(pieces), n_refined=found["n_refined"], max_refine=opts["max_refine"],
        margin_tol=opts["margin_tol"], pieces=tuple((p[0], p[1], p[2], p[2] > opts["margin_tol"]) for p in pieces),
        time_s=shared_s[0], attack_time_s=shared_s[1], seed=opts["seed"])


def run_batched(job: Any, model: nn.Module, model_net: Any, dataset: Any, units: list, image_batch: int
                ) -> Iterator[list[dict]]:
    """The rows of ``units`` ((idx, family name) pairs of :func:`semantic_report`), in order: the units of
    :func:`batchable` families (method "crown", no baseline) ``image_batch`` images per
    :func:`verify_semantic_batch` call, the others one by one with ``job.run``; yields each unit's rows."""
    from .report import rows_from_certificate

    opts, bounders = job.opts, {}
    state = (model, model_net)
    for s0 in range(0, len(units), image_batch):
        chunk = units[s0:s0 + image_batch]
        rows: dict[tuple, list] = {}
        examples = {idx: dataset[idx] for idx in {u[0] for u in chunk}}
        for name in dict.fromkeys(u[1] for u in chunk):
            p = job.perturbations[name]
            mine = [u for u in chunk if u[1] == name]
            shape = tuple(examples[mine[0][0]][0].shape)
            if opts["method"] != "crown" or opts["baseline"] is not None or not batchable(p, shape):
                for u in mine:
                    rows[u] = job.run(state, u, examples[u[0]][0], int(examples[u[0]][1]))
                continue
            rng = job.ranges[name]
            certs = verify_semantic_batch(
                model, [examples[u[0]][0] for u in mine], [int(examples[u[0]][1]) for u in mine], p,
                max_param=rng[0], n_splits=opts["n_splits"], max_refine=opts["max_refine"], attack=opts["attack"],
                attack_grid=opts["attack_grid"], attack_steps=opts["attack_steps"], batch_size=job.batch_size,
                seed=opts["seed"], margin_tol=opts["margin_tol"], _bounders=bounders)
            for u, cert in zip(mine, certs):
                rows[u] = rows_from_certificate(u[0], cert)
        for u in chunk:
            yield rows[u]


def _margins_rows(model: nn.Module, perturbation: Any, imgs: list, labels: torch.Tensor, thetas: list,
                  *, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Margins (logit_label - max other), predictions and (``grad``) d margin / d theta of rows: ``thetas[i]``
    (n_i, 1) float64 parameters of image ``imgs[i]`` with label ``labels[i]``; all rows in one model call."""
    ths = [t.detach().to(imgs[0].dtype).requires_grad_(grad) for t in thetas]
    with torch.enable_grad() if grad else torch.no_grad():
        logits = model(torch.cat([perturbation.apply(x, t) for x, t in zip(imgs, ths)]))
        lab = torch.repeat_interleave(labels, torch.tensor([t.shape[0] for t in ths], device=_CPU))
        other = logits.clone()
        other[torch.arange(lab.numel(), device=_CPU), lab] = -float("inf")
        margin = logits.gather(1, lab.unsqueeze(1))[:, 0] - other.max(dim=1).values
        grads = list(torch.autograd.grad(margin.sum(), ths)) if grad else []
    return margin.detach(), logits.argmax(dim=1) != lab, [g.detach().double() for g in grads]


def attack_1d_batch(model: nn.Module, perturbation: Any, imgs: list, labels: list, lo: float, hi: float, *,
                    grid: int, steps: int, batch: int) -> list[tuple]:
    """:func:`certify.semantic.attack.attack_1d` for several images at once (the same search - dense grid,
    sign-gradient steps from the two lowest-margin grid points before the nearest grid flip, bisection - with
    every step of all images and both sides of 0 in one model call). Returns (flip_lo | None, flip_hi | None)
    per image; every returned value was checked to flip (the model's argmax differs from the label)."""
    from .attack import _GRAD_STARTS, _GRAD_STEPS

    thetas = torch.unique(torch.cat([torch.linspace(lo, hi, grid, dtype=torch.float64, device=_CPU),
                                     torch.zeros(1, dtype=torch.float64, device=_CPU)]))
    labels_t = torch.tensor(labels, device=_CPU)
    per_call = max(1, batch // thetas.numel())
    margins, flips = [], []
    for s0 in range(0, len(imgs), per_call):
        m, f, _ = _margins_rows(model, perturbation, imgs[s0:s0 + per_call], labels_t[s0:s0 + per_call],
                                [thetas.unsqueeze(1)] * len(imgs[s0:s0 + per_call]))
        margins += list(m.split(thetas.numel()))
        flips += list(f.split(thetas.numel()))
    tasks = []          # [image, sign, magnitudes t_side, best, limit, candidates]
    for i in range(len(imgs)):
        for sign in (-1, 1):
            side = (thetas * sign) > 0
            if not side.any():
                continue
            t_side = thetas[side] * sign
            order = torch.argsort(t_side)
            t_side, f_side, m_side = t_side[order], flips[i][side][order], margins[i][side][order]
            best = float(t_side[f_side][0]) if f_side.any() else None
            limit = best if best is not None else float(t_side[-1])
            inside = t_side < limit if best is not None else torch.ones_like(f_side)
            cand = t_side[inside][torch.argsort(m_side[inside])[:_GRAD_STARTS]] if steps > 0 else t_side[:0]
            tasks.append([i, sign, t_side, best, limit, cand])
    step = (abs(hi - lo) / max(grid - 1, 1)) * 2.0
    n_grad = min(steps, _GRAD_STEPS)
    for it in range(n_grad):
        live = [t for t in tasks if t[5].numel()]
        if not live:
            break
        mg, flipped, grads = _margins_rows(model, perturbation, [imgs[t[0]] for t in live],
                                           labels_t[[t[0] for t in live]],
                                           [(t[5] * t[1]).unsqueeze(1) for t in live], grad=True)
        for t, m, f, g in zip(live, mg.split([t[5].numel() for t in live]),
                              flipped.split([t[5].numel() for t in live]), grads):
            real = t[5][(m <= 0) & f]
            if real.numel() and (t[3] is None or float(real.min()) < t[3]):
                t[3] = t[4] = float(real.min())
            t[5] = (t[5] - step * (1 - it / n_grad) * torch.sign(g[:, 0] * t[1])).clamp(0.0, t[4])
    _bisect(model, perturbation, imgs, labels_t, [t for t in tasks if t[3] is not None], steps)
    out = [[None, None] for _ in imgs]
    for t in tasks:
        out[t[0]][(t[1] + 1) // 2] = None if t[3] is None else t[3] * t[1]
    return [tuple(o) for o in out]


def _bisect(model: nn.Module, perturbation: Any, imgs: list, labels_t: torch.Tensor, tasks: list, steps: int) -> None:
    """Bisection between the nearest non-flipping grid magnitude and the flip of every task, all in one call
    per step; the flip (``task[3]``) moves to the last flipping midpoint."""
    if not tasks or steps == 0:
        return
    ab = []
    for t in tasks:
        safe = t[2][t[2] < t[3]]
        ab.append([float(safe.max()) if safe.numel() else 0.0, t[3]])
    for _ in range(steps):
        mids = [(a + b) / 2 for a, b in ab]
        thetas = [torch.tensor([[m * t[1]]], dtype=torch.float64, device=_CPU) for m, t in zip(mids, tasks)]
        _, flipped, _ = _margins_rows(model, perturbation, [imgs[t[0]] for t in tasks],
                                      labels_t[[t[0] for t in tasks]], thetas)
        for k, (m, f) in enumerate(zip(mids, flipped.tolist())):
            ab[k][1 if f else 0] = m
    for t, (_, b) in zip(tasks, ab):
        t[3] = b
