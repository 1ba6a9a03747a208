"""Feature extraction from an encoder (optionally at a named layer) on a chosen device."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from certify._checks import check_int
from certify._progress import track
from certify.devices import resolve_device
from certify.synbench.mixture import PixelMapping, _batches, _mixture_chunks


class _StopForward(Exception):
    """Raised by a feature hook to skip the rest of the forward pass."""


class FeatureExtractor:
    """Callable ``x -> features (B, F)`` taken from an encoder's output or an inner module.

    ``layer``: None (the encoder's output), the name of a sub-module (``dict(encoder.named_modules())``;
    its output is taken with a forward hook and the rest of the forward pass is skipped), or
    ``"penultimate"`` (the *input* of the last ``nn.Linear`` in ``named_modules`` order, i.e. the
    penultimate features of a classifier whose head is its last Linear layer). Outputs must be
    ``(B, F)`` tensors; with ``flatten=True`` higher-rank outputs (e.g. conv maps) are flattened
    per example. Use as a context manager: hooks are removed and the encoder's train/eval mode is
    restored on exit (it runs in eval mode, without gradients).
    """

    def __init__(self, encoder: nn.Module, *, layer: str | None = None, flatten: bool = False):
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"layer must be a module name (str) or None, got {layer!r}")
        self.encoder = encoder
        self.layer = layer
        self.flatten = bool(flatten)
        self._module, self._use_input = self._resolve(encoder, layer)
        self._captured: torch.Tensor | None = None
        self._handle = None
        self._was_training = False

    @staticmethod
    def _resolve(encoder: nn.Module, layer: str | None) -> tuple[nn.Module | None, bool]:
        if layer is None:
            return None, False
        modules = dict(encoder.named_modules())
        if layer in modules and layer != "":
            return modules[layer], False
        if layer == "penultimate":
            linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("layer='penultimate' needs an nn.Linear in the encoder; none found")
            return linears[-1], True
        names = [k for k in modules if k]
        raise ValueError(f"layer {layer!r} is not a sub-module of the encoder; choose one of "
                         f"{names[:20]}{' ...' if len(names) > 20 else ''} or 'penultimate'")

    def __enter__(self) -> "FeatureExtractor":
        self._was_training = self.encoder.training
        self.encoder.eval()
        if self._module is not None:
            if self._use_input:
                def pre_hook(_mod, inputs):
                    self._captured = inputs[0]
                    raise _StopForward
                self._handle = self._module.register_forward_pre_hook(pre_hook)
            else:
                def hook(_mod, _inputs, output):
                    self._captured = output
                    raise _StopForward
                self._handle = self._module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.encoder.train(self._was_training)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._module is not None and self._handle is None:
            raise RuntimeError("FeatureExtractor with a layer must be used inside a `with` block")
        self._captured = None
        with torch.no_grad():
            try:
                out = self.encoder(x)
            except _StopForward:
                out = self._captured
            if self._module is not None and out is not self._captured:
                raise ValueError(f"layer {self.layer!r} was not called during the forward pass")
        where = "encoder output" if self.layer is None else f"layer {self.layer!r}"
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{where} must be a tensor of shape (B, features), got {type(out).__name__}")
        if out.ndim > 2 and self.flatten:
            out = out.reshape(out.shape[0], -1)
        if out.ndim != 2 or out.shape[0] != x.shape[0] or out.shape[1] == 0:
            hint = " (pass flatten=True to flatten per example)" if out.ndim > 2 else ""
            raise ValueError(f"{where} must have shape (B, features) with B = {x.shape[0]}, got "
                             f"{tuple(out.shape)}{hint}")
        if not torch.isfinite(out).all():
            raise ValueError(f"{where} contains non-finite values (NaN or inf)")
        return out


def extract_features(encoder: nn.Module, x: torch.Tensor, *, layer: str | None = None, flatten: bool = False,
                     batch_size: int = 512, device: str | torch.device | None = None,
                     verbose: bool = False) -> torch.Tensor:
    """Features ``(N, F)`` (float64, CPU) of the inputs ``x`` (N, ...), batched; see :class:`FeatureExtractor`."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise TypeError("x must be a tensor of shape (N, ...)")
    batch_size = check_int("batch_size", batch_size)
    dev = _device(encoder, device)
    out = []
    with FeatureExtractor(encoder, layer=layer, flatten=flatten) as fx:
        for i in track(range(0, x.shape[0], batch_size), total=None, enabled=verbose, desc="features", unit="batch"):
            out.append(fx(x[i:i + batch_size].to(dev)).to("cpu", torch.float64))
    return torch.cat(out)


def _device(encoder: nn.Module, device) -> torch.device:
    """``device`` resolved (``"cpu"``, ``"cuda"``, ``"auto"``; the encoder is moved there), else the encoder's."""
    dev = resolve_device(device)
    if dev is not None:
        encoder.to(dev)
        return dev
    for p in encoder.parameters():
        return p.device
    return torch.device("cpu")


def _encode_split(fx: FeatureExtractor, separation: float, shape, n: int, seed: int, split: int,
                  mapping: PixelMapping, batch_size: int, dev: torch.device, dtype) -> tuple[np.ndarray, np.ndarray]:
    hs, ys = [], []
    for x, y in _batches(_mixture_chunks(separation, shape, n, seed, split, mapping), batch_size):
        hs.append(fx(x.to(dev, dtype)).to("cpu", torch.float64))
        ys.append(y)
    return torch.cat(hs).numpy(), torch.cat(ys).numpy().astype(np.float64)
