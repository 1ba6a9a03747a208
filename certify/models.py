"""The small model zoo the project trains itself (CPU-sized), and its shipped checkpoints.

Every architecture takes images with pixel values in [0, 1] (so noise and radii are in pixel units)
and is an :class:`torch.nn.Sequential` of named layers built only from ``Conv2d``, ``ReLU``,
``Flatten`` and ``Linear`` - operators whose auto_LiRPA bounds ``tests/test_lirpa.py`` proves sound.
The small inputs need no normalisation layer.

Each architecture names its penultimate representation in ``model.feature_layer`` (the output of
that named module is the representation SynBench and linear probes use).

Shipped checkpoints live in ``certify/zoo/<name>.pt`` (a ``state_dict``) with a JSON sidecar
``<name>.json`` written by ``certify train`` (arch, dataset, augment, sigma, epochs, test accuracy,
seed, training time)::

    >>> import certify
    >>> certify.models.available()
    ['color_cnn', 'digits_mlp', 'fmnist_cnn', 'fmnist_mlp']
    >>> model = certify.models.pretrained("fmnist_cnn_sigma0.25")     # eval mode, ready to certify
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ZooModel", "Normalized", "available", "build", "arch_info", "pretrained", "pretrained_info",
           "available_pretrained", "ZOO_DIR"]

ZOO_DIR = Path(__file__).resolve().parent / "zoo"


class ZooModel(nn.Sequential):
    """An ``nn.Sequential`` of named layers with zoo metadata.

    Attributes:
        arch: architecture name (key of :func:`available`).
        input_shape: (C, H, W) the model expects, pixels in [0, 1].
        num_classes: number of logits.
        feature_layer: name of the module whose output is the penultimate representation.
    """

    def __init__(self, layers: "OrderedDict[str, nn.Module]", *, arch: str, input_shape: tuple[int, int, int],
                 num_classes: int, feature_layer: str) -> None:
        super().__init__(layers)
        self.arch = arch
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.feature_layer = feature_layer

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate representation (output of ``self.feature_layer``), flattened to (B, F)."""
        for name, module in self.named_children():
            x = module(x)
            if name == self.feature_layer:
                return x.flatten(1)
        raise RuntimeError(f"feature layer {self.feature_layer!r} not found")  # pragma: no cover


class Normalized(nn.Module):
    """``model((x - mean) / std)``: certify a model trained on normalised inputs in pixel units.

    The classifier then takes pixels in [0, 1], so smoothing noise, radii and semantic ranges are in pixel
    units (Cohen et al.'s ``NormalizeLayer``, ART's ``preprocessing=(mean, std)``). ``mean`` and ``std`` hold
    one value per channel (or one value for all); they are stored as buffers of shape (C, 1, 1), so they are
    part of the state_dict and of :func:`certify.rundir.model_fingerprint`.

    >>> net = Normalized(nn.Flatten(), mean=(0.5,), std=(0.25,))
    >>> net(torch.full((1, 1, 2, 2), 0.75)).tolist()
    [[1.0, 1.0, 1.0, 1.0]]
    """

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be a callable (e.g. torch.nn.Module), got {type(model).__name__}")
        mean_t = self._check("mean", mean, positive=False)
        std_t = self._check("std", std, positive=True)
        if mean_t.numel() != std_t.numel() and 1 not in (mean_t.numel(), std_t.numel()):
            raise ValueError(f"mean and std must have one value per channel (or one value), got {mean_t.numel()} "
                             f"and {std_t.numel()}")
        self.model = model
        self.register_buffer("mean", mean_t.reshape(-1, 1, 1))
        self.register_buffer("std", std_t.reshape(-1, 1, 1))
        for name in ("arch", "input_shape", "num_classes", "checkpoint_name"):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))
        if hasattr(model, "feature_layer"):  # the wrapped module's name as seen from here
            self.feature_layer = f"model.{model.feature_layer}"

    @staticmethod
    def _check(name: str, values, *, positive: bool) -> torch.Tensor:
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = (values,)
        try:
            t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a sequence of numbers (one per channel), got {values!r}") from None
        if t.numel() == 0 or not bool(torch.isfinite(t).all()) or (positive and not bool((t > 0).all())):
            accepted = "finite numbers > 0" if positive else "finite numbers"
            raise ValueError(f"{name} must be one or more {accepted} (one per channel), got {list(values)!r}")
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() >= 3 and self.mean.shape[0] not in (1, x.shape[-3]):
            raise ValueError(f"Normalized: mean/std have {self.mean.shape[0]} channels, the input has "
                             f"{x.shape[-3]} (shape {tuple(x.shape)})")
        return self.model((x - self.mean) / self.std)


def _cnn(arch: str, in_channels: int, size: int, width: tuple[int, int, int] = (16, 32, 32),
         hidden: int = 64, num_classes: int = 10) -> ZooModel:
    c1, c2, c3 = width
    s = size
    for _ in range(3):  # three stride-2 convolutions, padding keeps ceil(s / 2)
        s = (s + 1) // 2
    layers = OrderedDict([
        ("conv1", nn.Conv2d(in_channels, c1, 3, stride=2, padding=1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(c1, c2, 3, stride=2, padding=1)),
        ("relu2", nn.ReLU()),
        ("conv3", nn.Conv2d(c2, c3, 3, stride=2, padding=1)),
        ("relu3", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(c3 * s * s, hidden)),
        ("relu4", nn.ReLU()),
        ("fc2", nn.Linear(hidden, num_classes)),
    ])
    return ZooModel(layers, arch=arch, input_shape=(in_channels, size, size), num_classes=num_classes,
                    feature_layer="relu4")


def _mlp(arch: str, input_shape: tuple[int, int, int], hidden: tuple[int, ...], num_classes: int = 10) -> ZooModel:
    d = input_shape[0] * input_shape[1] * input_shape[2]
    layers: "OrderedDict[str, nn.Module]" = OrderedDict([("flatten", nn.Flatten())])
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(d, h)
        layers[f"relu{i}"] = nn.ReLU()
        d = h
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(d, num_classes)
    return ZooModel(layers, arch=arch, input_shape=input_shape, num_classes=num_classes,
                    feature_layer=f"relu{len(hidden)}")


# name -> (builder, dataset it is meant for, one-line description)
_ARCHS: dict[str, tuple[Callable[[], ZooModel], str, str]] = {
    "fmnist_cnn": (lambda: _cnn("fmnist_cnn", 1, 28), "fashion-mnist",
                   "3 stride-2 convs (16/32/32) + 64-unit hidden layer, 1x28x28"),
    "fmnist_mlp": (lambda: _mlp("fmnist_mlp", (1, 28, 28), (64, 64)), "fashion-mnist",
                   "MLP 784-64-64-10, 1x28x28"),
    "digits_mlp": (lambda: _mlp("digits_mlp", (1, 8, 8), (64, 32)), "digits", "MLP 64-64-32-10, 1x8x8"),
    "color_cnn": (lambda: _cnn("color_cnn", 3, 32), "color-fmnist",
                  "3 stride-2 convs (16/32/32) + 64-unit hidden layer, 3x32x32"),
}


def available() -> list[str]:
    """Names of the zoo architectures (for :func:`build`, ``--arch`` and ``load_checkpoint``)."""
    return sorted(_ARCHS)


def _check_arch(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"arch must be a string, got {type(name).__name__}")
    if name not in _ARCHS:
        raise ValueError(f"unknown arch {name!r}; zoo architectures are {available()}")
    return name


def build(name: str, *, seed: int | None = None) -> ZooModel:
    """A freshly initialised zoo architecture.

    With ``seed`` (an int >= 0) the initialisation is reproducible and runs in a forked RNG state,
    so the caller's global RNG is left untouched; without it, torch's default initialisation draws
    from the global RNG as any ``nn.Module`` constructor does.
    """
    builder = _ARCHS[_check_arch(name)][0]
    if seed is None:
        return builder()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder()


def arch_info(name: str) -> dict:
    """Dataset and description of a zoo architecture."""
    builder, dataset, description = _ARCHS[_check_arch(name)]
    model = builder()
    return {"arch": name, "dataset": dataset, "description": description, "input_shape": list(model.input_shape),
            "num_classes": model.num_classes, "feature_layer": model.feature_layer,
            "parameters": sum(p.numel() for p in model.parameters())}


def available_pretrained() -> list[str]:
    """Names of the checkpoints shipped in ``certify/zoo`` (each has a ``.pt`` and a ``.json``)."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.pt") if p.with_suffix(".json").is_file())


def pretrained_info(name: str) -> dict:
    """The JSON sidecar of a shipped checkpoint (arch, dataset, augment, sigma, test_accuracy, seed, ...)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    path = ZOO_DIR / f"{name}.json"
    if name not in available_pretrained():
        raise ValueError(f"no shipped checkpoint {name!r}; available: {available_pretrained()}")
    return json.loads(path.read_text())


def pretrained(name: str) -> ZooModel:
    """A shipped trained checkpoint of the zoo, in eval mode, on the CPU."""
    info = pretrained_info(name)
    model = build(info["arch"])
    state = torch.load(ZOO_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    model.checkpoint_name = name
    return model
