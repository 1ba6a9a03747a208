"""Where computations run: one place that turns ``"cpu" | "cuda" | "auto"`` (or a ``torch.device``) into a device.

Every public entry point that takes ``device=`` (:class:`certify.smoothing.Smooth`, :func:`certify.certify_dataset`,
:func:`certify.synbench.evaluate`, :func:`certify.training.train`, the attacks) resolves it here, and every
command gets the same ``--device`` flag from :func:`add_device_argument`. The CUDA path differs from the CPU
path only by the device: the same code, with tensors and random generators on the chosen device. Adding the
flag does not import torch. (:func:`certify.semantic.verify_semantic`, :func:`certify.semantic.semantic_report`,
:func:`certify.transfer.transfer_bounds` and :func:`certify.study.run_study` take ``device=`` too.)
``certify report`` has no ``--device``: it only reads result files and runs no model.

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device(None) is None
True
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a device is resolved, so adding the flag to a parser stays cheap
    import torch

__all__ = ["DEVICE_CHOICES", "resolve_device", "module_device", "add_device_argument", "device_from_args",
           "cuda_available"]

#: accepted device names at the boundary (also ``cuda:N`` for one GPU of several)
DEVICE_CHOICES = ("cpu", "cuda", "auto")


def cuda_available() -> bool:
    """Whether PyTorch sees a usable CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: Any) -> torch.device | None:
    """The ``torch.device`` for ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a ``torch.device``.

    ``"auto"`` is CUDA when a GPU is available, else the CPU. ``None`` stays None (the caller keeps its
    default, e.g. the model's own device). A CUDA device that is not available is a ``ValueError`` that says so.

    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    """
    import torch

    if device is None:
        return None
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        text = device.strip().lower()
        if text == "auto":
            return torch.device("cuda" if cuda_available() else "cpu")
        try:
            dev = torch.device(text)
        except RuntimeError:
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {device!r}")
    else:
        raise TypeError(f"device must be one of {', '.join(DEVICE_CHOICES)}, a torch.device or None, "
                        f"got {type(device).__name__} {device!r}")
    if dev.type == "cuda":
        if not cuda_available():
            raise ValueError(f"device {str(dev)!r}: no CUDA GPU is available on this machine (torch "
                             f"{torch.__version__}, cuda {torch.version.cuda}); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(dev)!r}: only {torch.cuda.device_count()} CUDA device(s) available")
    elif dev.type != "cpu":
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {device!r}")
    return dev


def module_device(model: Any) -> torch.device:
    """The device of a module's first parameter (else first buffer); the CPU for modules without either."""
    import torch

    if isinstance(model, torch.nn.Module):
        for param in model.parameters():
            return param.device
        for buf in model.buffers():
            return buf.device
    return torch.device("cpu")


def place_module(model: Any, dev: Any) -> Any:
    """Move ``model`` to the resolved device ``dev`` (from :func:`resolve_device`) and return ``dev``; with
    ``dev`` None the model stays where it is and its device (:func:`module_device`) is returned."""
    if dev is None:
        return module_device(model)
    model.to(dev)
    return dev


def _device_text(text: str) -> str:
    value = text.strip().lower()
    if value in DEVICE_CHOICES or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"must be one of {', '.join(DEVICE_CHOICES)} or cuda:N, got {text!r}")


def add_device_argument(parser: argparse.ArgumentParser, *, default: str = "cpu") -> None:
    """Add ``--device cpu|cuda|auto`` to a command's parser (resolved later by :func:`device_from_args`)."""
    parser.add_argument("--device", type=_device_text, default=default, metavar="cpu|cuda|auto",
                        help=f"where the model runs and the noise is drawn: cpu, cuda (cuda:N) or auto (cuda when "
                             f"a GPU is available) (default {default})")


def device_from_args(args: argparse.Namespace, *, remote: bool = False) -> torch.device | str:
    """The resolved ``--device`` of parsed arguments; a ValueError naming ``--device`` when it is unusable.

    With ``remote=True`` (the work runs on a Ray cluster given by ``--ray-address``) ``cuda`` is returned as the
    text ``"cuda"`` without checking this machine: the cluster's workers must have the GPUs.
    """
    import torch

    text = getattr(args, "device", "cpu") or "cpu"
    if remote and text == "cuda":
        return "cuda"
    try:
        dev = resolve_device(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--device: {exc}") from None
    return dev if dev is not None else torch.device("cpu")
