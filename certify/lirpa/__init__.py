"""The one place that imports auto_LiRPA: compatibility shims and a small, validated bounding API.

auto_LiRPA 0.3 (the version this project pins) was written for torch<1.13 and numpy<2. On the
torch/numpy versions the project runs on, importing it needs a few shims (the ``_shim_*`` functions in
``certify/lirpa/_shims.py``). They are applied once, lazily, the first time a bound is requested - never at
``import certify``.

Everything here bounds a network ``f`` over an axis-aligned input box ``[x_lower, x_upper]``:
for every input ``x`` in the box and every specification row ``c``, ``lower <= c^T f(x) <= upper``
(up to float32 rounding, checked by ``tests/test_lirpa.py``). Bounds are for the model in eval mode
(BatchNorm running statistics, no dropout).

Models: the network is bounded as written, including normalisation inside ``forward`` (``(x - mean) / std``
with registered buffers, also 0-dim ones such as ``register_buffer("mean", torch.tensor(0.286))``, or a
``torchvision.transforms.Normalize`` / user ``Normalize`` module), Conv2d, Linear, ReLU, MaxPool2d,
AvgPool2d, BatchNorm (eval), Dropout (eval: the identity), Flatten, ``view``/``reshape``, slicing, cat,
sin/cos and products. The wrapper bounds a private copy of the model in which dropout layers are the
identity and buffers that are not BatchNorm statistics are constants (auto_LiRPA 0.3 cannot
back-propagate through a broadcast buffer). Every node of the traced graph must be one of
:data:`SUPPORTED_OPERATORS` (each has a sampling test in ``tests/test_lirpa.py``); anything else is
refused with one ValueError naming the operator and listing the supported ones.

Example::

    from certify import lirpa
    C = lirpa.margin_spec(torch.tensor([3]), num_classes=10)      # (1, 9, 10)
    b = lirpa.bound_model(model, x - 0.01, x + 0.01, method="crown", C=C)
    certified = bool((b.lower > 0).all())   # class 3 provably beats every other class on the box

Methods: ``"ibp"`` (interval bound propagation), ``"crown"`` (backward linear relaxation, CROWN),
``"crown-ibp"`` (IBP intermediate bounds, CROWN for the output), ``"forward+backward"``
(forward-mode intermediate bounds, CROWN for the output; auto_LiRPA 0.3 has no forward mode for
BatchNorm or for subtracting a constant, so it raises NotImplementedError/TypeError there) and
``"alpha-crown"`` (CROWN intermediate bounds, then the output's ReLU lower slopes optimised:
``alpha_iterations`` Adam steps at learning rate ``alpha_lr``; 10-100x slower on CPU).

Beyond the import shims, auto_LiRPA 0.3 needed these fixes on this torch version (each has a
regression test in tests/test_lirpa.py): alpha-CROWN's slopes never moved (torch's clamp has zero
gradient at the bounds 0/1 where the slopes start), alpha-CROWN crashed with > 90% unstable
neurons in a layer, with reference bounds, and (MaxPool) at a batch size other than the traced one;
patches mode crashed on a non-image Add/Sub or a flat-to-image reshape before a convolution. CROWN
through a gather/index_select/advanced indexing that repeats an index is UNSOUND in auto_LiRPA 0.3:
:func:`compute_bounds` refuses every method but "ibp" on such graphs.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Any

import torch
from torch import nn

from certify._modes import eval_mode
from certify.lirpa._shims import _lirpa, _quiet

logger = logging.getLogger(__name__)

METHODS = ("ibp", "crown", "crown-ibp", "forward+backward", "alpha-crown")
CONV_MODES = ("auto", "patches", "matrix")
# our method name -> auto_LiRPA's
_LIRPA_METHOD = {
    "ibp": "IBP",
    "crown": "backward",
    "crown-ibp": "CROWN-IBP",
    "forward+backward": "Forward+Backward",
    "alpha-crown": "CROWN-Optimized",
}

# auto_LiRPA node type -> what it is; the only node types certify bounds (each is covered by a sampling
# soundness test in tests/test_lirpa.py)
SUPPORTED_OPERATORS = {
    "BoundInput": "input", "BoundParams": "parameter", "BoundBuffers": "buffer", "BoundConstant": "constant",
    "BoundLinear": "nn.Linear / matmul with a constant", "BoundConv": "nn.Conv2d", "BoundRelu": "ReLU",
    "BoundMaxPool": "nn.MaxPool2d (stride = kernel)", "BoundAveragePool": "nn.AvgPool2d (stride = kernel)",
    "BoundBatchNormalization": "nn.BatchNorm (eval)", "BoundFlatten": "nn.Flatten / flatten",
    "BoundReshape": "view / reshape", "BoundUnsqueeze": "unsqueeze",
    "BoundAdd": "+", "BoundSub": "-", "BoundMul": "*", "BoundDiv": "/ by a constant",
    "BoundConcat": "cat / stack", "BoundSlice": "slicing", "BoundReduceSum": "sum over a dimension",
    "BoundGather": "indexing / index_select", "BoundSin": "sin", "BoundCos": "cos",
}
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Bounds:
    """Sound bounds ``lower <= C f(x) <= upper`` over an input box (shape (B, n_specs) each).

    Without a specification matrix ``C`` the rows are the raw outputs (n_specs = number of logits).
    """

    lower: torch.Tensor
    upper: torch.Tensor        # +inf where not computed (compute_bounds(..., bound_upper=False))
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"lower": self.lower.tolist(), "upper": self.upper.tolist(), "method": self.method}


class BoundedNet:
    """A network wrapped for bounding (auto_LiRPA ``BoundedModule``), with its shapes.

    Build with :func:`bounded_module`; reuse it for many boxes of the same per-example shape
    (the batch size may change between calls).
    """

    def __init__(self, module: Any, input_shape: tuple[int, ...], output_dim: int, conv_mode: str,
                 model: nn.Module, batch_size: int, device: torch.device | None = None,
                 constant_shapes: tuple[tuple[int, ...], ...] = ()):
        self.module = module
        self.constant_shapes = constant_shapes
        self.input_shape = input_shape
        self.output_dim = output_dim
        self.conv_mode = conv_mode
        self._model = model
        self._batch_size = batch_size
        self.device = device
        self._has_maxpool = any(type(n).__name__ == "BoundMaxPool" for n in module._modules.values())
        self._frozen_batch = _frozen_batch_reshape(module, batch_size)
        self._per_batch: dict[int, Any] = {batch_size: module}
        self._last_module: Any = None
        self.unsound_linear_ops = _duplicate_index_gathers(module)

    def _module_for(self, method: str, batch_size: int) -> Any:
        """The wrapper to use for a call. auto_LiRPA 0.3's alpha-CROWN and forward mode for MaxPool size
        their tensors with the batch size seen when the graph was traced (other sizes crash), so those
        cases get one wrapper per batch size, traced from the same model."""
        per_batch = self._frozen_batch or (method in ("alpha-crown", "forward+backward") and self._has_maxpool)
        if not per_batch or batch_size == self._batch_size:
            return self.module
        if batch_size not in self._per_batch:
            example = torch.zeros((batch_size, *self.input_shape), device=self.device)
            consts = tuple(torch.zeros((batch_size, *shape), device=self.device) for shape in self.constant_shapes)
            self._per_batch[batch_size] = _build(self._model, example, self.conv_mode, consts)[0]
            logger.debug("%s with MaxPool: traced a wrapper for batch size %d", method, batch_size)
        return self._per_batch[batch_size]

    def __repr__(self) -> str:
        return (f"BoundedNet(input_shape={self.input_shape}, output_dim={self.output_dim}, "
                f"conv_mode={self.conv_mode!r})")


def _frozen_batch_reshape(module: Any, batch_size: int) -> bool:
    """Whether a reshape in the traced graph has the example's batch size built in (``x.view(x.shape[0], -1)``
    is traced as a constant shape); such graphs are re-traced for every other batch size."""
    for node in module._modules.values():
        if type(node).__name__ == "BoundReshape" and len(node.inputs) > 1:
            shape = getattr(node.inputs[1], "value", None)
            if isinstance(shape, torch.Tensor) and shape.numel() > 0 and int(shape.reshape(-1)[0]) == batch_size:
                return True
    return False


def _duplicate_index_gathers(module: Any) -> tuple[str, ...]:
    """Names of Gather/GatherElements nodes that read some input element more than once.

    auto_LiRPA 0.3 back-propagates linear bounds through such nodes with an overwriting scatter, so
    duplicated contributions are dropped: CROWN-type bounds are then UNSOUND (see
    tests/test_lirpa.py::test_known_unsound_duplicate_gather). IBP is unaffected.
    """
    found = []
    for node in module._modules.values():
        kind = type(node).__name__
        if kind == "BoundGather":
            idx = getattr(node, "indices", None)
            if idx is None or idx.numel() != torch.unique(idx.reshape(-1)).numel():
                found.append(node.name)
        elif kind == "BoundGatherElements":
            idx = getattr(node, "index", None)
            if idx is None:
                found.append(node.name)
                continue
            srt = torch.sort(idx, dim=node.axis).values
            if srt.shape[node.axis] > 1 and bool((srt.diff(dim=node.axis) == 0).any()):
                found.append(node.name)
    return tuple(found)


def _check_method(method: str) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {METHODS}; got {type(method).__name__}")
    m = method.lower()
    if m == "alpha_crown" or m == "crown-optimized":
        m = "alpha-crown"
    if m not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    return m


def bounded_module(model: nn.Module, example_input: torch.Tensor, *,
                   conv_mode: str = "auto", constants: tuple[torch.Tensor, ...] = ()) -> BoundedNet:
    """Wrap ``model`` for bounding. ``example_input``: one input batch (B, ...) of the right shape.

    The model is traced in eval mode (its own train/eval flag is restored afterwards); the result
    bounds the eval-mode network. Shapes computed from the batch size inside ``forward`` (e.g.
    ``x.view(x.shape[0], ...)``) are frozen at the example's batch size by the tracer; write
    ``view(-1, ...)`` to bound other batch sizes.

    The wrapper lives on ``example_input``'s device (the model must be there too); bound boxes on that device.

    ``conv_mode``: "patches" (auto_LiRPA's fast convolution mode), "matrix" (dense; always
    applicable) or "auto" (default): "patches" unless the graph reshapes a non-Linear flat tensor
    into an image (e.g. ``relu(linear(theta)).view(-1, C, H, W)`` followed by a convolution),
    which auto_LiRPA 0.3 cannot bound in patches mode, then "matrix".

    ``constants``: example values (B, ...) of further, UNPERTURBED inputs of ``model`` (called as
    ``model(x, *constants)``), e.g. per-row data a batch of different examples needs; every
    :func:`compute_bounds` call passes their values (``constants=``), which enter the bounds exactly.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise TypeError("example_input must be a tensor of shape (B, ...) with a batch dimension")
    if conv_mode not in CONV_MODES:
        raise ValueError(f"conv_mode must be one of {CONV_MODES}; got {conv_mode!r}")
    example = example_input.detach().float()
    consts = _check_constants_arg(constants, example.shape[0])
    mode = "patches" if conv_mode == "auto" else conv_mode
    net = _prepare(model)
    module, out = _build(net, example, mode, consts)
    if conv_mode == "auto" and _needs_matrix_mode(module):
        mode = "matrix"
        logger.debug("conv_mode='auto': flat-to-image reshape of a non-Linear node, using matrix mode")
        module, out = _build(net, example, mode, consts)
    elif mode == "patches" and _constant_image_ops(module):
        raise ValueError("conv_mode='patches' cannot bound constant Add/Sub/Mul/Div on images (e.g. input "
                         "normalisation) with auto_LiRPA 0.3; use conv_mode='auto' or 'matrix'")
    if out.dim() != 2:
        raise ValueError(f"model output must have shape (B, num_outputs); got {tuple(out.shape)}")
    return BoundedNet(module, tuple(example.shape[1:]), int(out.shape[1]), mode, net,
                      int(example.shape[0]), example.device, tuple(tuple(c.shape[1:]) for c in consts))


def _check_constants_arg(constants: Any, batch: int) -> tuple[torch.Tensor, ...]:
    """The unperturbed extra inputs: a tuple of finite float tensors (batch, ...)."""
    if not isinstance(constants, (tuple, list)):
        raise TypeError(f"constants must be a tuple of tensors; got {type(constants).__name__}")
    out = []
    for i, c in enumerate(constants):
        if not isinstance(c, torch.Tensor) or not c.is_floating_point() or c.dim() < 1:
            raise TypeError(f"constants[{i}] must be a floating point tensor (B, ...)")
        if c.shape[0] != batch:
            raise ValueError(f"constants[{i}] must have batch size {batch}; got shape {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise ValueError(f"constants[{i}] must be finite")
        out.append(c.detach().float())
    return tuple(out)


def _prepare(model: nn.Module) -> nn.Module:
    """The network auto_LiRPA traces: an eval-mode copy of ``model`` whose dropout layers are the identity
    and whose buffers (except BatchNorm statistics) are plain tensors, i.e. constants of the traced graph.

    Same function as ``model.eval()``. TorchScript modules are used as they are (they cannot be edited)."""
    if isinstance(model, torch.jit.ScriptModule):
        return model
    net = copy.deepcopy(model).eval()
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, _DROPOUT):
                setattr(module, name, nn.Identity())
        if isinstance(module, nn.modules.batchnorm._NormBase):
            continue
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                del module._buffers[name]
                object.__setattr__(module, name, buf.detach().clone())
    return net


def _unsupported(module: Any) -> list[str]:
    """Nodes of the traced graph outside :data:`SUPPORTED_OPERATORS` (and divisions by a perturbed value)."""
    bad = []
    for node in module._modules.values():
        kind = type(node).__name__
        if kind not in SUPPORTED_OPERATORS:
            bad.append(f"{kind[5:] if kind.startswith('Bound') else kind} (node {node.name})")
        elif kind == "BoundDiv" and getattr(node.inputs[1], "perturbed", False):
            bad.append(f"Div by a value that depends on the input (node {node.name})")
        elif kind in ("BoundMaxPool", "BoundAveragePool") and not _plain_pool(node):
            bad.append(f"{kind[5:]} with stride != kernel size or padding (node {node.name})")
    return bad


def _plain_pool(node: Any) -> bool:
    """Pooling with stride == kernel size and no padding, e.g. nn.MaxPool2d(2) (the case the tests cover;
    auto_LiRPA 0.3's AvgPool backward assumes it)."""
    kernel = list(getattr(node, "kernel_size", []) or [])
    stride = list(getattr(node, "stride", []) or [])
    padding = [int(v) for v in (getattr(node, "padding", [0]) or [0])]
    return bool(kernel) and kernel == stride and not any(padding)


def _supported_text() -> str:
    return ", ".join(sorted({v for k, v in SUPPORTED_OPERATORS.items()
                             if k not in ("BoundInput", "BoundParams", "BoundBuffers", "BoundConstant")}))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.ops: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Name: "):
            self.ops.append(msg[len("Name: "):].split(",")[0])


def _build(model: nn.Module, example: torch.Tensor, conv_mode: str,
           constants: tuple[torch.Tensor, ...] = ()) -> tuple[Any, torch.Tensor]:
    """Trace ``model`` (already :func:`_prepare`-d) into a BoundedModule; ValueError for unsupported operators."""
    lib = _lirpa()
    capture = _Capture()
    lirpa_logger = logging.getLogger("auto_LiRPA")
    lirpa_logger.addHandler(capture)
    try:
        with eval_mode(model), torch.no_grad(), _quiet():
            out = model(example, *constants)
            module = lib.BoundedModule(model, (example, *constants), bound_opts={"conv_mode": conv_mode},
                                       device=example.device)
        module.eval()
    except NotImplementedError:
        ops = sorted(set(capture.ops)) or ["an operator auto_LiRPA 0.3 cannot parse"]
        raise ValueError(f"the model uses unsupported operator(s) {', '.join(ops)}; certify bounds only: "
                         f"{_supported_text()}") from None
    finally:
        lirpa_logger.removeHandler(capture)
    _check_constants(module)
    bad = _unsupported(module)
    if bad:
        raise ValueError(f"the model uses unsupported operator(s) {', '.join(bad)}; certify bounds only: "
                         f"{_supported_text()}")
    if conv_mode == "patches":
        _flat_add_to_matrix_mode(module)
    return module, out


_ELEMENTWISE = ("BoundAdd", "BoundSub", "BoundMul", "BoundDiv")


def _input_dependent(module: Any) -> set[str]:
    """Names of the nodes that depend on the network input (the rest are constants)."""
    dep: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in module._modules.values():
            if node.name in dep:
                continue
            if type(node).__name__ == "BoundInput" or any(i.name in dep for i in node.inputs):
                dep.add(node.name)
                changed = True
    return dep


def _constant_image_ops(module: Any) -> list[tuple[Any, list[Any]]]:
    """(node, constant operands) of Add/Sub/Mul/Div nodes on an image-shaped (4-D) tensor with an operand
    that does not depend on the input, e.g. the normalisation ``(x - mean) / std``."""
    dep = _input_dependent(module)
    out = []
    for node in module._modules.values():
        shape = getattr(node, "output_shape", None)
        if type(node).__name__ in _ELEMENTWISE and shape is not None and len(shape) == 4 and node.name in dep:
            consts = [i for i in node.inputs if i.name not in dep]
            if consts:
                out.append((node, consts))
    return out


def _check_constants(module: Any) -> None:
    """auto_LiRPA 0.3 crashes on a non-scalar constant operand with a leading batch-like dimension of size
    1 (e.g. ``mean.view(1, -1, 1, 1)``); the same constant as (C, 1, 1) (``mean.view(-1, 1, 1)``, as
    ``torchvision.transforms.Normalize`` does) is bounded correctly."""
    for node, consts in _constant_image_ops(module):
        for i in consts:
            value = getattr(i, "forward_value", None)
            if value is None:
                value = getattr(i, "value", None)
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
            if len(shape) == 4 and math.prod(shape) > 1:
                raise ValueError(
                    f"unsupported operator: {type(node).__name__[5:]} with a constant of shape {shape} (node "
                    f"{node.name}); give per-channel constants the shape (C, 1, 1), e.g. mean.view(-1, 1, 1) "
                    "instead of mean.view(1, -1, 1, 1)")


def _needs_matrix_mode(module: Any) -> bool:
    """Graphs auto_LiRPA 0.3 cannot bound in patches mode: a Reshape to an image (4-D) whose input
    is not a Linear node (patches are only converted back to a matrix at a Linear layer), and constant
    operands of Add/Sub/Mul/Div on images (patches mode drops or misplaces their bias terms)."""
    if _constant_image_ops(module):
        return True
    for node in module._modules.values():
        if type(node).__name__ == "BoundReshape":
            shape = getattr(node, "output_shape", None)
            if shape is not None and len(shape) == 4 and type(node.inputs[0]).__name__ != "BoundLinear":
                return True
    return False


def _flat_add_to_matrix_mode(module: Any) -> None:
    """In patches mode auto_LiRPA 0.3 treats every Add/Sub as a convolution-shaped node and crashes
    (IndexError) on a non-image Add/Sub feeding a ReLU, e.g. ``relu(a - b)`` in an MLP. Such nodes
    are switched to the generic dense ("matrix") treatment; image-shaped nodes keep patches."""
    for node in module._modules.values():
        if type(node).__name__ in ("BoundAdd", "BoundSub") and getattr(node, "mode", None) == "patches":
            shape = getattr(node, "output_shape", None)
            if shape is None or len(shape) != 4:
                node.mode = "matrix"
                logger.debug("auto_LiRPA: %s %s (shape %s) bounded in matrix mode",
                             type(node).__name__, node.name, None if shape is None else tuple(shape))


def _validate_box(bounded: BoundedNet, x_lower: Any, x_upper: Any) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in (("x_lower", x_lower), ("x_upper", x_upper)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor; got {t.dtype}")
    if x_lower.shape != x_upper.shape:
        raise ValueError(f"x_lower and x_upper must have the same shape; got {tuple(x_lower.shape)} "
                         f"and {tuple(x_upper.shape)}")
    if x_lower.dim() < 1 or tuple(x_lower.shape[1:]) != bounded.input_shape or x_lower.shape[0] < 1:
        raise ValueError(f"x_lower/x_upper must have shape (B, {', '.join(map(str, bounded.input_shape))}) "
                         f"with B >= 1; got {tuple(x_lower.shape)}")
    if not (torch.isfinite(x_lower).all() and torch.isfinite(x_upper).all()):
        raise ValueError("x_lower and x_upper must be finite (no NaN/inf)")
    if (x_lower > x_upper).any():
        raise ValueError("x_lower must be <= x_upper elementwise")
    return x_lower.detach().float(), x_upper.detach().float()


def _validate_spec(C: Any, batch: int, num_outputs: int) -> torch.Tensor | None:
    if C is None:
        return None
    if not isinstance(C, torch.Tensor):
        raise TypeError(f"C must be a torch.Tensor of shape (B, n_specs, num_outputs); got {type(C).__name__}")
    if C.dim() != 3 or C.shape[0] != batch or C.shape[2] != num_outputs or C.shape[1] < 1:
        raise ValueError(f"C must have shape ({batch}, n_specs, {num_outputs}); got {tuple(C.shape)}")
    if not torch.isfinite(C).all():
        raise ValueError("C must be finite")
    return C.detach().float()


def relu_inputs(bounded: BoundedNet) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(kind, per-example shape) of every ReLU input node of the wrapped network, in graph order.

    This is the order used by :func:`relu_input_bounds` and by ``reference=`` of
    :func:`compute_bounds`; two networks that share a sub-network (e.g. ``model`` and
    ``Sequential(layer, model)``) list that sub-network's entries in the same order, as a suffix.
    """
    out = []
    for node in bounded.module._modules.values():
        if type(node).__name__ == "BoundRelu":
            pre = node.inputs[0]
            out.append((type(pre).__name__, tuple(getattr(pre, "output_shape", ())[1:])))
    return tuple(out)


def _bound_input_nodes(module: Any) -> list[Any]:
    """Perturbed nodes whose bounds the graph needs (inputs of ReLU, MaxPool, sin, ...), with bounds set."""
    out, seen = [], set()
    for node in module._modules.values():
        idx = list(getattr(node, "requires_input_bounds", []) or [])
        if getattr(node, "nonlinear", False):
            idx = list(range(len(node.inputs)))
        for i in idx:
            pre = node.inputs[i]
            if pre.name in seen or not getattr(pre, "perturbed", False):
                continue
            if getattr(pre, "lower", None) is None or getattr(pre, "upper", None) is None:
                continue
            seen.add(pre.name)
            out.append(pre)
    return out


def _relu_input_nodes(module: Any) -> list[Any]:
    return [node.inputs[0] for node in module._modules.values() if type(node).__name__ == "BoundRelu"]


def relu_input_bounds(bounded: BoundedNet) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, ...]:
    """Bounds of every ReLU input computed by the LAST :func:`compute_bounds` call on ``bounded``
    (same order as :func:`relu_inputs`; None where that call computed none, e.g. method "ibp" keeps
    them too). Sound for the boxes of that call; pass them as ``reference=`` to bound a larger
    network that contains this one (see :func:`compute_bounds`)."""
    module = bounded._last_module if bounded._last_module is not None else bounded.module
    out = []
    for pre in _relu_input_nodes(module):
        lo, hi = getattr(pre, "lower", None), getattr(pre, "upper", None)
        out.append(None if lo is None or hi is None else (lo.detach().clone(), hi.detach().clone()))
    return tuple(out)


def compute_bounds(bounded: BoundedNet, *, x_lower: torch.Tensor, x_upper: torch.Tensor,
                   method: str = "crown", C: torch.Tensor | None = None,
                   alpha_iterations: int = 20, alpha_lr: float = 0.5,
                   reference: Any = None, intermediate: Any = None,
                   bound_upper: bool = True, constants: tuple[torch.Tensor, ...] = ()) -> Bounds:
    """Sound bounds of ``C f(x)`` (or ``f(x)``) for every ``x`` with ``x_lower <= x <= x_upper``.

    Args:
        bounded: from :func:`bounded_module`.
        x_lower, x_upper: (B, *input_shape) box corners; one box per batch row.
        method: one of :data:`METHODS`.
        C: optional specification (B, n_specs, num_outputs), e.g. :func:`margin_spec`.
        alpha_iterations, alpha_lr: optimisation budget of ``"alpha-crown"`` (ignored otherwise).
        reference: optional sequence, one entry per ReLU input of this network (order of
            :func:`relu_inputs`), of ``(lower, upper)`` tensors (B, *shape) or None. They MUST be
            sound bounds of those nodes over the same boxes (e.g. from :func:`relu_input_bounds` of
            a sub-network bounded over a box that contains the sub-network's inputs). Neurons they
            prove stable are not re-bounded (much faster CROWN) and the tighter of the computed
            and reference bounds is used; the result is at least as tight as without them.
            Ignored by "ibp".
        intermediate: like ``reference`` (same format and soundness requirement), but the bounds
            are used as they are instead of being computed (fast; as tight as they are), e.g. the
            :func:`relu_input_bounds` of an earlier call on this network and boxes. Ignored by
            "ibp". ("alpha-crown" always optimises the final bound's slopes on top of fixed
            intermediate bounds: these, or CROWN's.)
        bound_upper: False skips the upper bounds (returned as +inf), e.g. for margins where only
            the lower bound matters; halves the alpha-CROWN cost.
        constants: the values (B, ...) of the unperturbed extra inputs the network was built with
            (:func:`bounded_module`'s ``constants``), one row per box.

    Returns:
        :class:`Bounds` with ``lower``/``upper`` of shape (B, n_specs), detached, float32.
    """
    if not isinstance(bounded, BoundedNet):
        raise TypeError(f"bounded must be a BoundedNet from bounded_module(); got {type(bounded).__name__}")
    m = _check_method(method)
    lo, hi = _validate_box(bounded, x_lower, x_upper)
    spec = _validate_spec(C, lo.shape[0], bounded.output_dim)
    consts = _check_constants_arg(constants, lo.shape[0])
    if tuple(tuple(c.shape[1:]) for c in consts) != bounded.constant_shapes:
        raise ValueError(f"constants must have per-row shapes {bounded.constant_shapes} (those the network "
                         f"was built with); got {[tuple(c.shape[1:]) for c in consts]}")
    if m == "alpha-crown":
        if not isinstance(alpha_iterations, int) or isinstance(alpha_iterations, bool) or alpha_iterations < 1:
            raise ValueError(f"alpha_iterations must be an int >= 1; got {alpha_iterations!r}")
        if not (isinstance(alpha_lr, (int, float)) and not isinstance(alpha_lr, bool)
                and 0 < alpha_lr < float("inf")):
            raise ValueError(f"alpha_lr must be a positive finite number; got {alpha_lr!r}")
    if m != "ibp" and bounded.unsound_linear_ops:
        raise ValueError(
            f"method {m!r} is unsound on this network with auto_LiRPA 0.3: gather/index_select/"
            f"advanced indexing that repeats an index (nodes {list(bounded.unsound_linear_ops)}); "
            "use method='ibp' or rewrite the repeated indexing (e.g. as a matrix product)")
    lib = _lirpa()
    module = bounded._module_for(m, lo.shape[0])
    if not isinstance(bound_upper, bool):
        raise TypeError(f"bound_upper must be a bool; got {bound_upper!r}")
    refs = _reference_dict(module, reference, lo.shape[0]) if m != "ibp" else {}
    fixed = _reference_dict(module, intermediate, lo.shape[0]) if m != "ibp" else {}
    extra: dict[str, Any] = {"bound_upper": bound_upper}
    if refs:
        extra.update(reference_bounds=refs, aux_reference_bounds=dict(refs))
    if fixed:
        extra["intermediate_layer_bounds"] = fixed
    center = (lo + hi) / 2
    ptb = lib.PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi)
    bx = lib.BoundedTensor(center, ptb)
    if m == "alpha-crown" and not module.optimizable_activations:
        # nothing to optimise (no ReLU/MaxPool...): alpha-CROWN is CROWN; auto_LiRPA would crash
        logger.info("alpha-CROWN: the network has no optimisable activations; its bounds equal CROWN's")
        with torch.no_grad(), _quiet():
            lower, upper = module.compute_bounds(x=(bx, *consts), C=spec, method=_LIRPA_METHOD["crown"], **extra)
    elif m == "alpha-crown":
        # alpha-CROWN on top of fixed intermediate bounds: CROWN computes every intermediate bound
        # once (with the reference bounds, if any), then the ReLU slopes of the final bound are
        # optimised. auto_LiRPA 0.3's own alpha-CROWN re-derives intermediate bounds during the
        # optimisation and crashes (sparse-alpha assertions) whenever the unstable sets found at
        # initialisation and in later iterations differ (e.g. with reference bounds).
        module.set_bound_opts({"optimize_bound_args": {"iteration": int(alpha_iterations),
                                                      "lr_alpha": float(alpha_lr)}})
        crown_lower = None
        if not fixed:
            crown_extra = {k: v for k, v in extra.items() if k != "intermediate_layer_bounds"}
            with torch.no_grad(), _quiet():
                crown_lower, _ = module.compute_bounds(x=(bx, *consts), C=spec, method="backward", **crown_extra)
            fixed = {n.name: (n.lower.detach(), n.upper.detach()) for n in _bound_input_nodes(module)}
        opt_extra = {"bound_upper": bound_upper, "intermediate_layer_bounds": fixed}
        with torch.enable_grad(), _quiet():
            module.init_slope((bx, *consts), share_slopes=False, method="backward", c=spec,
                              bound_upper=bound_upper, intermediate_layer_bounds=fixed)
            module.set_bound_opts({"optimize_bound_args": {"init_alpha": False}})
            try:
                lower, upper = module.compute_bounds(x=(bx, *consts), C=spec, method=_LIRPA_METHOD[m], **opt_extra)
            finally:
                module.set_bound_opts({"optimize_bound_args": {"init_alpha": True}})
        if crown_lower is not None:   # both are sound; the optimisation starts from CROWN anyway
            lower = torch.maximum(lower.detach(), crown_lower.detach())
    else:
        with torch.no_grad(), _quiet():
            lower, upper = module.compute_bounds(x=(bx, *consts), C=spec, method=_LIRPA_METHOD[m], **extra)
    bounded._last_module = module
    lower = lower.detach().reshape(lo.shape[0], -1)
    upper = torch.full_like(lower, float("inf")) if upper is None else upper.detach().reshape(lo.shape[0], -1)
    if torch.isnan(lower).any() or torch.isnan(upper).any():
        raise RuntimeError(f"auto_LiRPA returned NaN bounds with method {m!r}")
    return Bounds(lower=lower, upper=upper, method=m)


def _reference_dict(module: Any, reference: Any, batch: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if reference is None:
        return {}
    nodes = _relu_input_nodes(module)
    reference = list(reference)
    if len(reference) != len(nodes):
        raise ValueError(f"reference must have one entry per ReLU input ({len(nodes)}); got {len(reference)}")
    out = {}
    for node, ref in zip(nodes, reference):
        if ref is None:
            continue
        lo, hi = ref
        shape = (batch, *tuple(node.output_shape[1:]))
        if tuple(lo.shape) != shape or tuple(hi.shape) != shape:
            raise ValueError(f"reference bounds for ReLU input {node.name} must have shape {shape}; "
                             f"got {tuple(lo.shape)} / {tuple(hi.shape)}")
        if (lo > hi).any() or torch.isnan(lo).any() or torch.isnan(hi).any():
            raise ValueError(f"reference bounds for ReLU input {node.name} must satisfy lower <= upper")
        out[node.name] = (lo.detach().float(), hi.detach().float())
    return out


def bound_model(model: nn.Module, x_lower: torch.Tensor, x_upper: torch.Tensor, *,
                method: str = "crown", C: torch.Tensor | None = None, conv_mode: str = "auto",
                alpha_iterations: int = 20, alpha_lr: float = 0.5) -> Bounds:
    """:func:`bounded_module` + :func:`compute_bounds` in one call (rebuilds the wrapper each time)."""
    _check_method(method)
    if not isinstance(x_lower, torch.Tensor):
        raise TypeError(f"x_lower must be a torch.Tensor; got {type(x_lower).__name__}")
    bounded = bounded_module(model, x_lower.detach().float(), conv_mode=conv_mode)
    return compute_bounds(bounded, x_lower=x_lower, x_upper=x_upper, method=method, C=C,
                          alpha_iterations=alpha_iterations, alpha_lr=alpha_lr)


def margin_spec(labels: torch.Tensor | int | list[int], num_classes: int) -> torch.Tensor:
    """Margin specification: ``C[b, i] = e_{label_b} - e_{j_i}`` for the K-1 classes ``j != label_b``.

    ``C @ logits`` are the margins label-vs-other; all > 0 means the label is the unique argmax.
    Returns a float32 tensor of shape (B, K-1, K) on the device of ``labels`` (a tensor; else the CPU).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
    labels_t = torch.as_tensor(labels)
    if labels_t.dim() == 0:
        labels_t = labels_t.reshape(1)
    if labels_t.dim() != 1 or labels_t.is_floating_point() or labels_t.dtype == torch.bool:
        raise TypeError("labels must be an int or a 1-D integer tensor/list")
    labels_t = labels_t.long()
    if ((labels_t < 0) | (labels_t >= num_classes)).any():
        raise ValueError(f"labels must be in [0, {num_classes - 1}]; got {labels_t.tolist()}")
    B = labels_t.shape[0]
    eye = torch.eye(num_classes, device=labels_t.device)
    C = eye[labels_t].unsqueeze(1) - eye.unsqueeze(0)            # (B, K, K): row j = e_label - e_j
    keep = torch.arange(num_classes, device=labels_t.device).unsqueeze(0) != labels_t.unsqueeze(1)   # (B, K)
    return C[keep].reshape(B, num_classes - 1, num_classes)


def other_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class index of each margin-spec row: (B, K-1) long tensor, the j of ``e_label - e_j``."""
    labels_t = torch.as_tensor(labels).reshape(-1).long()
    idx = torch.arange(num_classes, device=labels_t.device).unsqueeze(0).expand(labels_t.shape[0], -1)
    keep = idx != labels_t.unsqueeze(1)
    return idx[keep].reshape(labels_t.shape[0], num_classes - 1)
