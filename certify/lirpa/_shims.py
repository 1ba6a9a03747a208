"""auto_LiRPA 0.3 import and its compatibility shims for this torch / numpy (applied once, lazily, thread safe).

:func:`_lirpa` imports auto_LiRPA the first time a bound is requested (never at ``import certify``) and applies
the ``_shim_*`` fixes listed in :mod:`certify.lirpa`'s docstring; :func:`_quiet` keeps auto_LiRPA's warnings and
logging set-up out of the user's console. Only :mod:`certify.lirpa` uses this module.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import sys
import threading
import types
import warnings

import torch

logger = logging.getLogger("certify.lirpa")

_SHIM_LOCK = threading.Lock()
_LIRPA: types.SimpleNamespace | None = None


# --------------------------------------------------------------------------------------------
# compatibility shims (applied once)
# --------------------------------------------------------------------------------------------
def _shim_set_opset_version(patched: list[str]) -> None:
    import torch.onnx.symbolic_helper as symbolic_helper

    if hasattr(symbolic_helper, "_set_opset_version"):
        return
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:  # older torch layouts
        from torch.onnx._globals import GLOBALS  # type: ignore[no-redef]

    def _set_opset_version(opset_version: int) -> None:
        GLOBALS.export_onnx_opset_version = opset_version

    symbolic_helper._set_opset_version = _set_opset_version
    patched.append("torch.onnx.symbolic_helper._set_opset_version")


def _shim_node_getitem(patched: list[str]) -> None:
    node_cls = torch._C.Node
    if hasattr(node_cls, "__getitem__"):
        return

    def __getitem__(self, name):  # node["value"] -> node.t("value") etc., by attribute kind
        return getattr(self, self.kindOf(name))(name)

    node_cls.__getitem__ = __getitem__
    patched.append("torch._C.Node.__getitem__")


def _shim_numpy_arraysetops(patched: list[str]) -> None:
    import numpy

    try:
        importlib.import_module("numpy.lib.arraysetops")
        return
    except ImportError:
        pass
    module = types.ModuleType("numpy.lib.arraysetops")
    module.isin = numpy.isin
    sys.modules["numpy.lib.arraysetops"] = module
    patched.append("numpy.lib.arraysetops (isin)")


def _shim_named_members(bounded_cls: type, patched: list[str]) -> None:
    if "remove_duplicate" in inspect.signature(bounded_cls._named_members).parameters:
        return

    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        """``nn.Module._named_members`` plus auto_LiRPA's node-name -> original-name translation."""
        memo = set()
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse \
            else [(prefix, self)]
        for module_prefix, module in modules:
            for k, v in get_members_fn(module):
                if v is None or (remove_duplicate and v in memo):
                    continue
                if remove_duplicate:
                    memo.add(v)
                name = module_prefix + ("." if module_prefix else "") + k
                name = self.node_name_map.get(name, name)
                yield name, v

    bounded_cls._named_members = _named_members
    patched.append("auto_LiRPA.BoundedModule._named_members(remove_duplicate=...)")


def _shim_relu_alpha_clamp(patched: list[str]) -> None:
    """alpha-CROWN starts every ReLU slope at exactly 0 or 1 and passes it through
    ``clamp(alpha, 0, 1)``. On torch >= 2.x the gradient of clamp at its bounds is 0, so the slopes
    never move and "alpha-crown" silently equals "crown". Use a clamp with the same value and a
    straight-through gradient (values are unchanged, hence still in [0, 1] and sound; auto_LiRPA
    also clips the stored slopes after every step)."""
    probe = torch.tensor([0.0, 1.0], requires_grad=True)
    probe.clamp(min=0.0, max=1.0).sum().backward()
    if bool((probe.grad == 1).all()):
        return
    from auto_LiRPA.operators.activation import BoundRelu

    def _clip01(a: torch.Tensor) -> torch.Tensor:
        return a + (a.clamp(min=0.0, max=1.0) - a).detach()

    def _relu_mask_alpha(lower, upper, lb_lower_d, ub_lower_d):
        lower_mask = (lower >= 0).to(lower.dtype)
        upper_mask = upper <= 0
        zero_coeffs = upper_mask.all()
        no_mask = (1.0 - lower_mask) * (1.0 - upper_mask.to(upper.dtype))
        if lb_lower_d is not None:
            lb_lower_d = _clip01(lb_lower_d) * no_mask + lower_mask
        if ub_lower_d is not None:
            ub_lower_d = _clip01(ub_lower_d) * no_mask + lower_mask
        return lb_lower_d, ub_lower_d, zero_coeffs

    BoundRelu._relu_mask_alpha = staticmethod(_relu_mask_alpha)
    patched.append("auto_LiRPA BoundRelu._relu_mask_alpha (straight-through clamp; torch clamp "
                   "has zero gradient at 0/1, which froze alpha-CROWN)")


def _shim_full_alpha_indices(patched: list[str]) -> None:
    """auto_LiRPA 0.3 bug: when more than ``minimum_sparsity`` (90%) of a ReLU layer's neurons are
    unstable, alpha-CROWN allocates full (dense) slopes but only clears the sparse index list when
    verbosity > 0, and then crashes scattering the dense slopes ("shape mismatch"). Clear it."""
    from auto_LiRPA.operators.activation import BoundRelu

    original = BoundRelu.init_opt_parameters
    if getattr(original, "_certify_shim", False):
        return

    def init_opt_parameters(self, start_nodes):
        original(self, start_nodes)
        if self.alpha_indices is not None:
            ref = self.inputs[0].lower
            total = ref.numel() // ref.size(0)
            if self.alpha_indices[0].size(0) > self.options.get("minimum_sparsity", 0.9) * total:
                self.alpha_indices = None

    init_opt_parameters._certify_shim = True
    BoundRelu.init_opt_parameters = init_opt_parameters
    patched.append("auto_LiRPA BoundRelu.init_opt_parameters (dense alpha with > 90% unstable neurons)")


def _shim_avgpool_contiguous(patched: list[str]) -> None:
    """auto_LiRPA 0.3's AvgPool backward calls ``.view`` on the incoming A matrix, which fails ("view size is
    not compatible") when that matrix is a non-contiguous tensor (e.g. after MaxPool in forward+backward
    mode). Same values, made contiguous first."""
    from auto_LiRPA.operators.pooling import BoundAveragePool

    original = BoundAveragePool.bound_backward
    if getattr(original, "_certify_shim", False):
        return

    def bound_backward(self, last_lA, last_uA, x):
        last_lA = last_lA.contiguous() if isinstance(last_lA, torch.Tensor) else last_lA
        last_uA = last_uA.contiguous() if isinstance(last_uA, torch.Tensor) else last_uA
        return original(self, last_lA, last_uA, x)

    bound_backward._certify_shim = True
    BoundAveragePool.bound_backward = bound_backward
    patched.append("auto_LiRPA BoundAveragePool.bound_backward (non-contiguous A)")


@contextlib.contextmanager
def _quiet():
    """Keep auto_LiRPA's chatter out of the user's console.

    auto_LiRPA 0.3 resets the warning filters (``simplefilter("once")``) and calls
    ``logging.basicConfig`` at import, and warns freely while bounding (torch.jit deprecation,
    "LinearBound with zero weights", ...). Warnings raised inside this context are recorded and
    logged at debug level instead of printed; root-logger handlers added inside it are removed.
    """
    noisy = logging.getLogger("torch.utils.cpp_extension")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    root = logging.getLogger()
    root_handlers = list(root.handlers)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            logger.debug("auto_LiRPA warning: %s: %s", w.category.__name__, w.message)
    finally:
        noisy.setLevel(level)
        for handler in list(root.handlers):
            if handler not in root_handlers:
                root.removeHandler(handler)


def _lirpa() -> types.SimpleNamespace:
    """Import auto_LiRPA with the compatibility shims (idempotent, thread safe)."""
    global _LIRPA
    if _LIRPA is not None:
        return _LIRPA
    with _SHIM_LOCK:
        if _LIRPA is not None:
            return _LIRPA
        patched: list[str] = []
        # auto_LiRPA switches TorchScript to the legacy executor at import; undo that global change
        profiling_executor = torch._C._jit_set_profiling_executor(True)
        torch._C._jit_set_profiling_executor(profiling_executor)
        profiling_mode = torch._C._jit_set_profiling_mode(True)
        torch._C._jit_set_profiling_mode(profiling_mode)
        try:
            with _quiet():
                _shim_set_opset_version(patched)
                _shim_node_getitem(patched)
                _shim_numpy_arraysetops(patched)
                auto_lirpa = importlib.import_module("auto_LiRPA")
        except ImportError as exc:
            raise ImportError(
                "certify needs auto_LiRPA 0.3 for semantic verification: "
                "pip install --no-deps auto-LiRPA==0.3 (see the Makefile)") from exc
        finally:
            torch._C._jit_set_profiling_executor(profiling_executor)
            torch._C._jit_set_profiling_mode(profiling_mode)
        _shim_named_members(auto_lirpa.BoundedModule, patched)
        _shim_relu_alpha_clamp(patched)
        _shim_full_alpha_indices(patched)
        _shim_avgpool_contiguous(patched)
        # its module logger is set to INFO at import; our own logger reports what matters
        for name in ("auto_LiRPA", "auto_LiRPA.utils"):
            logging.getLogger(name).setLevel(logging.WARNING)
        for item in patched:
            logger.debug("auto_LiRPA compatibility shim applied: %s", item)
        _LIRPA = types.SimpleNamespace(
            BoundedModule=auto_lirpa.BoundedModule,
            BoundedTensor=auto_lirpa.BoundedTensor,
            PerturbationLpNorm=auto_lirpa.PerturbationLpNorm,
            version=getattr(auto_lirpa, "__version__", "unknown"),
            patched=tuple(patched),
        )
        return _LIRPA
