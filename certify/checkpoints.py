"""Loading a user's checkpoint safely.

Accepted formats (detected from the file, not the suffix):

* a ``state_dict`` (or a dict holding one under ``"state_dict"`` / ``"model_state_dict"`` / ``"model"``),
  loaded with ``torch.load(weights_only=True)`` - which cannot run code - into a zoo architecture
  (``arch="fmnist_cnn"``) or a user class (``arch="path/to/file.py:ClassName"``, instantiated with no
  arguments);
* a TorchScript file (``torch.jit.save``);
* a ``torch.export`` program (``torch.export.save``, usually ``.pt2``); it must have been exported
  from a model in eval mode (an exported graph keeps the mode it was traced in; one traced in
  training mode, with random dropout or batch-statistics batch norm, is refused).

A pickled full ``nn.Module`` needs Python's pickle, which can execute arbitrary code while loading.
It is refused unless the caller passes ``trust=True`` for a file they trust.

Example::

    >>> import certify
    >>> model = certify.load_checkpoint("model.pt", arch="fmnist_cnn")       # doctest: +SKIP
"""
from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from certify import models as zoo

logger = logging.getLogger(__name__)

__all__ = ["load_checkpoint", "load_arch", "UnsafeCheckpointError", "ArchitectureError"]

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")


class UnsafeCheckpointError(ValueError):
    """The checkpoint can only be loaded with pickle, which may execute code; pass ``trust=True``."""


class ArchitectureError(ValueError):
    """A state_dict without ``arch``, or one that does not fit ``arch`` (missing / unexpected keys, shapes)."""


def load_arch(arch: str, *, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A freshly built module for ``arch``.

    ``arch`` is one of

    * a zoo name (:func:`certify.models.available`);
    * ``"path/to/file.py:ClassName"``: the user file is imported from its path with :mod:`importlib` (its
      top-level code runs, as with any import);
    * ``"torchvision:NAME"``: ``torchvision.models.get_model(NAME, weights=None, **kwargs)`` (nothing is
      downloaded; the weights come from the checkpoint), e.g. ``"torchvision:resnet18"`` with
      ``kwargs={"num_classes": 10}``;
    * ``"package.module:callable"``: an importable module and a class or factory function in it.

    The class or callable is called with ``kwargs`` (default: no arguments) and must return an ``nn.Module``.
    """
    if not isinstance(arch, str) or not arch:
        raise TypeError(f"arch must be a zoo name, 'path/to/file.py:ClassName' or 'module:callable', got {arch!r}")
    kwargs = dict(kwargs or {})
    if not all(isinstance(k, str) for k in kwargs):
        raise TypeError(f"arch kwargs must be a mapping with string keys, got {kwargs!r}")
    if ":" not in arch:
        if kwargs:
            raise ValueError(f"arch kwargs: zoo architectures take no arguments, got {kwargs} for {arch!r}")
        return zoo.build(arch)
    source, _, name = arch.rpartition(":")
    if not name.isidentifier():
        raise ValueError(f"arch {arch!r}: expected 'path/to/file.py:ClassName', 'torchvision:NAME', "
                         f"'module:callable' or one of {zoo.available()}")
    if source == "torchvision":
        return _build(arch, _torchvision_builder(name), kwargs)
    if source.endswith(".py"):
        return _build(arch, _file_attr(arch, Path(source).expanduser(), name), kwargs)
    return _build(arch, _module_attr(arch, source, name), kwargs)


def _torchvision_builder(name: str) -> Any:
    import functools

    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        raise ValueError(f"arch 'torchvision:{name}': no such torchvision model; available include "
                         f"{', '.join(sorted(known)[:12])}, ...")
    return functools.partial(torchvision.models.get_model, name, weights=None)


def _file_attr(arch: str, path: Path, name: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"arch {arch!r}: file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"certify_user_arch_{abs(hash(path.resolve()))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    obj = getattr(module, name, None)
    if obj is None:
        raise ValueError(f"arch {arch!r}: {path} has no nn.Module subclass or factory named {name!r}")
    return obj


def _module_attr(arch: str, module_name: str, name: str) -> Any:
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise ValueError(f"arch {arch!r}: {module_name!r} is neither a .py file nor an importable module name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"arch {arch!r}: cannot import module {module_name!r} ({exc}); check the name or "
                         "PYTHONPATH, or give the file as path/to/file.py:ClassName") from None
    obj = getattr(module, name, None)
    if obj is None:
        raise ValueError(f"arch {arch!r}: module {module_name!r} has no nn.Module subclass or factory named "
                         f"{name!r}")
    return obj


def _build(arch: str, factory: Any, kwargs: dict[str, Any]) -> nn.Module:
    if not callable(factory):
        raise ValueError(f"arch {arch!r}: {factory!r} is not a class or function")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"arch {arch!r}: calling it with arguments {kwargs} failed: {exc} "
                         "(CLI: set them with --arch-kwargs '{\"name\": value}')") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"arch {arch!r}: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def _is_export(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("serialized_exported_program.json") or "/models/" in n and n.endswith(".json")
               for n in names)


# aten ops that behave differently in training mode: op-name fragment -> position of the "train" flag
_TRAIN_FLAG_ARGS = {"dropout": (2, "train"), "batch_norm": (5, "training")}


def _check_export_inference(module: nn.Module, path: Path) -> None:
    """Refuse a torch.export program traced in training mode.

    An exported graph is frozen in the mode it was traced in (``.eval()`` is not supported on it):
    traced in training mode, dropout stays random and batch norm uses batch statistics, so the
    classifier would not be a fixed function and no certificate about it would mean anything.
    """
    graph = getattr(module, "graph", None)
    if graph is None:  # pragma: no cover - ExportedProgram.module() always returns a GraphModule
        return
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        if "no_training" in name:
            continue
        for fragment, (pos, kw) in _TRAIN_FLAG_ARGS.items():
            if fragment not in name:
                continue
            flag = node.kwargs.get(kw, node.args[pos] if len(node.args) > pos else None)
            if flag is True:
                raise ValueError(
                    f"{path}: this torch.export program was traced in training mode ({name} with {kw}=True), "
                    "so its output is random / batch-dependent. Re-export it from model.eval(): "
                    "torch.export.export(model.eval(), example_inputs)")


def _check_torchscript_inference(module: nn.Module, path: Path) -> None:
    """Refuse a TorchScript module traced in training mode (``torch.jit.trace`` bakes the dropout /
    batch-norm training flag into the graph as a constant, so ``.eval()`` cannot switch it off)."""
    graph = getattr(module, "inlined_graph", None)
    if graph is None:  # pragma: no cover
        return
    for node in graph.nodes():
        kind = node.kind()
        if not kind.startswith("aten::"):
            continue
        for fragment, (pos, kw) in _TRAIN_FLAG_ARGS.items():
            inputs = list(node.inputs())
            if fragment not in kind or len(inputs) <= pos:
                continue
            flag = inputs[pos]
            if flag.node().kind() == "prim::Constant" and flag.toIValue() is True:
                raise ValueError(
                    f"{path}: this TorchScript module was traced in training mode ({kind} with {kw}=True baked "
                    "in), so its output is random / batch-dependent even after .eval(). Re-trace it from "
                    "model.eval(): torch.jit.trace(model.eval(), example_inputs)")


def _extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    raise ValueError("checkpoint holds no state_dict (a dict of tensors, possibly under one of the keys "
                     f"{list(_STATE_KEYS)})")


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"{what} {items[:6]}" + (f" and {len(items) - 6} more" if len(items) > 6 else "")
                 for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", mismatched)) if items]
        raise ArchitectureError(f"checkpoint {source} does not fit the architecture: " + "; ".join(parts))
    model.load_state_dict(state)


def _sniff(path: Path) -> None:
    """Refuse files that cannot be a PyTorch checkpoint (empty, truncated archive, foreign bytes) up front."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes); save it again with torch.save")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise ValueError(f"checkpoint {path} is a truncated or damaged archive ({size} bytes, no zip central "
                             "directory); copy or save it again")
        return
    if head[:1] != b"\x80":  # neither torch.save's zip archive nor a legacy pickle stream
        raise ValueError(f"checkpoint {path} is not a PyTorch file (not a torch.save archive, TorchScript, "
                         "torch.export or pickle file); expected a state_dict saved with torch.save")


def _unreadable(path: Path, exc: BaseException) -> ValueError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ValueError(f"checkpoint {path} cannot be read: it is truncated or not a PyTorch file ({first})")


def _load_trusted(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"checkpoint {path} is a pickled module whose class cannot be imported here ({exc}); make the module "
            "that defines it importable (PYTHONPATH), or save a state_dict (torch.save(model.state_dict(), path)) "
            "and load it with arch='path/to/file.py:ClassName' (CLI: --arch)") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError) as exc:
        raise _unreadable(path, exc) from None


def load_checkpoint(path: str | os.PathLike, *, arch: str | nn.Module | None = None, trust: bool = False,
                    map_location: str | torch.device = "cpu",
                    arch_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Load a classifier checkpoint, in eval mode.

    Args:
        path: the checkpoint file.
        arch: for state_dicts: an architecture for :func:`load_arch` (zoo name, ``"path/to/file.py:ClassName"``,
            ``"torchvision:resnet18"``, ``"module:callable"``); ignored (may be None) for TorchScript /
            torch.export files and trusted pickled modules. A freshly built ``nn.Module`` is also accepted
            (the state_dict is loaded into it).
        trust: allow unpickling a full ``nn.Module`` (can execute arbitrary code: only for files you trust).
        map_location: device for the tensors.
        arch_kwargs: keyword arguments for the ``arch`` constructor (e.g. ``{"num_classes": 10}``).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs pickle and ``trust`` is False.
        ValueError: an empty, truncated or foreign file; the state_dict does not fit ``arch`` (names the keys);
            ``arch`` is missing; a trusted pickled module whose class cannot be imported.
    """
    if not isinstance(trust, bool):
        raise TypeError(f"trust must be a bool, got {type(trust).__name__}")
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _sniff(path)
    if _is_torchscript(path):
        model = torch.jit.load(str(path), map_location=map_location)
        logger.info("loaded TorchScript module from %s", path)
        model.eval()
        _check_torchscript_inference(model, path)
        return model
    if _is_export(path):
        program = torch.export.load(str(path))
        logger.info("loaded torch.export program from %s", path)
        module = program.module()
        _check_export_inference(module, path)
        return module
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a pickled object: damaged bytes
            raise _unreadable(path, exc) from None
        if not trust:
            raise UnsafeCheckpointError(
                f"{path} is not a plain state_dict: loading it needs Python pickle, which can execute arbitrary "
                "code hidden in the file. Save a state_dict (torch.save(model.state_dict(), path)), TorchScript or "
                "torch.export file instead, or pass trust=True (CLI: --trust) only for a file you trust.") from None
        obj = _load_trusted(path, map_location)
        if isinstance(obj, nn.Module):
            logger.warning("loaded a pickled module from %s with trust=True", path)
            return obj.eval()
    except (RuntimeError, EOFError, KeyError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    if isinstance(obj, nn.Module):
        return obj.eval()
    state = _extract_state_dict(obj)
    if arch is None:
        raise ArchitectureError(f"{path} is a state_dict: pass arch= (one of {zoo.available()}, "
                                "'path/to/file.py:ClassName', 'torchvision:NAME' or 'module:callable')")
    model = arch if isinstance(arch, nn.Module) else load_arch(arch, kwargs=arch_kwargs)
    _load_state(model, state, str(path))
    model.to(map_location)
    return model.eval()
