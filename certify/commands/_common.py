"""What the sub-commands share: argparse types, the model / data / run flags, and loading and checking them.

Every check here runs before any compute and raises ``ValueError`` naming the flag (and the file) and the
accepted values; :func:`certify.cli.main` turns it into a one-line error with exit code 2.

* :func:`add_shared_flags` (added to every command by :mod:`certify.cli`): ``--json``, ``--quiet``;
* :func:`add_model_arguments` / :func:`load_model`: ``--checkpoint | --pretrained``, ``--arch``,
  ``--arch-kwargs``, ``--trust``, ``--mean``/``--std`` (wrapped in :class:`certify.models.Normalized`);
* :func:`add_run_arguments`: ``--out`` (default ``runs/<command>_<model>``), ``--resume``/``--no-resume``
  (default on), ``--overwrite``, ``--seed``, ``--max``;
* :func:`load_data`, :func:`check_model_and_data`, :func:`check_out`, :func:`run_record`, :func:`set_summary`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "positive_int", "nonnegative_int", "positive_float", "probability", "float_list", "shape_arg", "json_object",
    "add_shared_flags", "add_model_arguments", "add_run_arguments", "LoadedModel", "load_model", "load_data",
    "check_model_and_data", "check_out", "default_out", "run_record", "set_summary",
    "check_resume_flags", "prepare_smoothing", "add_to_run_json",
]


# ------------------------------------------------------------------------------------------------ argparse types
def _number(text: str, kind: type, accepted: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _number(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float, "a finite number > 0")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number strictly inside (0, 1)."""
    value = _number(text, float, "a number in (0, 1)")
    if not (0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def float_list(text: str) -> list[float]:
    """Comma-separated finite numbers, at least one."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected one or more finite comma-separated numbers, got {text!r}")
    return values


def shape_arg(text: str) -> tuple[int, ...]:
    """C,H,W (or CxHxW) of positive integers."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W, got {text!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"expected positive C,H,W, got {text!r}")
    return shape


def json_object(text: str) -> dict[str, Any]:
    """A JSON object, e.g. ``{"width": 64}``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"width\": 64}}', got {text!r} "
                                         f"({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"width\": 64}}', got {text!r}")
    return value


# ------------------------------------------------------------------------------------------------ flags
def add_shared_flags(p: argparse.ArgumentParser) -> None:
    """Flags every command has (added by :func:`certify.cli.build_parser` after the command's own)."""
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object on stdout (other output goes to stderr)")
    # default SUPPRESS: "certify -q CMD" and "certify CMD -q" both work, neither overrides the other
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="warnings only, no progress")
    # shared flags that apply to every command (e.g. --device) are added here


def add_model_arguments(p: argparse.ArgumentParser, *, num_classes: bool = True) -> None:
    """--checkpoint | --pretrained, --arch, --arch-kwargs, --trust, --mean, --std (and --num-classes)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH",
                     help="model file: a state_dict (needs --arch), TorchScript or torch.export file")
    src.add_argument("--pretrained", metavar="NAME",
                     help="a checkpoint shipped with certify (certify.models.available_pretrained()); it names "
                          "its own architecture and dataset")
    p.add_argument("--arch", metavar="ARCH",
                   help="architecture of a state_dict: a zoo name, path/to/file.py:ClassName, torchvision:NAME "
                        "(e.g. torchvision:resnet18) or package.module:callable")
    p.add_argument("--arch-kwargs", type=json_object, default=None, metavar="JSON",
                   help="keyword arguments for the --arch constructor, e.g. '{\"width\": 64}'")
    p.add_argument("--trust", action="store_true",
                   help="allow loading a pickled full module (runs code from the file: trusted files only)")
    p.add_argument("--mean", type=float_list, default=None, metavar="M[,M,...]",
                   help="the model was trained on (x - mean) / std: per-channel mean (with --std); inputs, noise "
                        "and radii stay in pixel units [0, 1]")
    p.add_argument("--std", type=float_list, default=None, metavar="S[,S,...]",
                   help="per-channel std of the model's input normalisation (with --mean)")
    if num_classes:
        p.add_argument("--num-classes", type=positive_int, default=None, metavar="K",
                       help="classes of the model (checked against its outputs; default: the number of outputs); "
                            "also passed to torchvision:NAME")


def add_smoothing_data_arguments(p: argparse.ArgumentParser) -> None:
    """--data, --split and --sigma of the smoothing commands (smooth, predict)."""
    p.add_argument("--data", metavar="NAME|PATH",
                   help="dataset: fashion-mnist (fmnist), digits, color-fmnist, a .npz file or an image folder")
    p.add_argument("--split", choices=("test", "train"), default="test", help="dataset split (default test)")
    p.add_argument("--sigma", type=positive_float, help="noise level (pixel units, inputs in [0, 1])")


def add_run_arguments(p: argparse.ArgumentParser, *, max_examples: bool = True, seed_help: str | None = None,
                      resume: bool = True) -> None:
    """--out, --resume/--no-resume, --overwrite, --seed, --max (--max: the Cohen et al. name)."""
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output directory (default runs/<command>_<model>...)")
    if resume:
        p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                       help="continue the run in --out, skipping finished work; the settings must match "
                            "(default: on)")
        p.add_argument("--overwrite", action="store_true",
                       help="with --no-resume: delete the results already in --out and start over")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help=seed_help or "seed of every random step (default 0)")
    if max_examples:
        p.add_argument("--max", dest="max_examples", type=positive_int, default=None, metavar="N",
                       help="at most N examples (default: all selected)")


def check_resume_flags(args: argparse.Namespace) -> None:
    if getattr(args, "overwrite", False) and getattr(args, "resume", False):
        raise ValueError("--overwrite: only with --no-resume (it deletes the results already in --out)")


# ------------------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class LoadedModel:
    """A model loaded from the command line, with what run.json records about it."""

    model: Any
    name: str
    info: dict = field(default_factory=dict)
    arch: str | None = None
    checkpoint_path: str | None = None
    checkpoint_sha256: str | None = None

    @property
    def stem(self) -> str:
        """A short name for default output directories: the shipped name, or the checkpoint file's stem."""
        name = Path(self.name).stem if self.checkpoint_path == self.name else self.name
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _build_arch(arch: str, kwargs: dict[str, Any]) -> Any:
    from certify.checkpoints import load_arch

    try:
        return load_arch(arch, kwargs=kwargs)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise ValueError(f"--arch: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module ran and failed: report it on one line
        raise ValueError(f"--arch {arch}: importing or building it failed ({type(exc).__name__}: "
                         f"{_first_line(exc)})") from None


def _load_pretrained(args: argparse.Namespace) -> LoadedModel:
    from certify import models
    from certify.rundir import file_sha256

    for flag in ("arch", "arch_kwargs"):
        if getattr(args, flag, None) is not None:
            raise ValueError(f"--{flag.replace('_', '-')}: not used with --pretrained (the shipped checkpoint "
                             "names its architecture)")
    try:
        info = dict(models.pretrained_info(args.pretrained))
        model = models.pretrained(args.pretrained)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--pretrained: {exc}") from None
    path = models.ZOO_DIR / f"{args.pretrained}.pt"
    return LoadedModel(model=model, name=args.pretrained, info=info, arch=info.get("arch"),
                       checkpoint_path=str(path), checkpoint_sha256=file_sha256(path))


def _load_file(args: argparse.Namespace) -> LoadedModel:
    from certify.checkpoints import ArchitectureError, load_checkpoint
    from certify.rundir import file_sha256

    path = Path(args.checkpoint).expanduser()
    if not path.is_file():
        raise ValueError(f"--checkpoint: file not found: {path}")
    kwargs = dict(args.arch_kwargs or {})
    if args.arch_kwargs is not None and args.arch is None:
        raise ValueError("--arch-kwargs: only with --arch (the constructor they are passed to)")
    num_classes = getattr(args, "num_classes", None)
    if args.arch and args.arch.startswith("torchvision:") and num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    module = _build_arch(args.arch, kwargs) if args.arch else None
    try:
        model = load_checkpoint(path, arch=module, trust=args.trust)
    except ArchitectureError as exc:
        if args.arch is None:
            raise ValueError(f"--arch: required: {path} is a state_dict; give its architecture (a zoo name, "
                             "path/to/file.py:ClassName, torchvision:NAME or package.module:callable)") from None
        raise ValueError(f"--checkpoint/--arch: {exc} (--arch {args.arch})") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--checkpoint: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - TorchScript / export / trusted pickle code failed on load
        raise ValueError(f"--checkpoint: {path} cannot be loaded ({type(exc).__name__}: {_first_line(exc)})") \
            from None
    return LoadedModel(model=model, name=str(path), info={}, arch=args.arch, checkpoint_path=str(path),
                       checkpoint_sha256=file_sha256(path))


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model of ``--checkpoint``/``--pretrained`` (+ ``--arch``...), wrapped by ``--mean``/``--std``."""
    from certify.models import Normalized

    if (args.mean is None) != (args.std is None):
        raise ValueError("--mean/--std: give both (the model's input normalisation), or neither")
    if args.mean is not None and len(args.mean) != len(args.std) and 1 not in (len(args.mean), len(args.std)):
        raise ValueError(f"--mean/--std: one value per channel each (or one value), got {len(args.mean)} and "
                         f"{len(args.std)}")
    if args.std is not None and any(s <= 0 for s in args.std):
        raise ValueError(f"--std: every value must be > 0, got {args.std}")
    loaded = _load_pretrained(args) if args.pretrained else _load_file(args)
    if args.mean is None:
        return loaded
    return LoadedModel(model=Normalized(loaded.model, args.mean, args.std), name=loaded.name, info=loaded.info,
                       arch=loaded.arch, checkpoint_path=loaded.checkpoint_path,
                       checkpoint_sha256=loaded.checkpoint_sha256)


# ------------------------------------------------------------------------------------------------ data
def load_data(name: str | None, split: str, *, flag: str = "--data") -> Any:
    """:func:`certify.data.load_dataset` with its errors blamed on ``flag``."""
    from certify.data import load_dataset

    if name is None:
        raise ValueError(f"{flag}: required with --checkpoint (a dataset name, .npz file or image folder)")
    try:
        return load_dataset(name, split=split)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise ValueError(f"{flag}: {exc}") from None
    except OSError as exc:  # an unreadable image or archive
        raise ValueError(f"{flag}: {name} cannot be read ({exc})") from None


def check_model_and_data(model: Any, dataset: Any, *, index: int = 0, num_classes: int | None = None,
                         data_flag: str = "--data") -> int:
    """Run the model on one example of ``dataset``; return its number of classes after checking everything.

    The model must accept the dataset's images and return (1, K) logits; ``num_classes`` (``--num-classes``),
    when given, must equal K; every label of the dataset must lie in [0, K). Each error names the flag to fix.
    """
    import torch

    from certify._modes import eval_mode
    from certify.devices import module_device
    from certify.models import Normalized

    x = dataset[index][0]
    shape = tuple(x.shape)
    channels = max(model.mean.shape[0], model.std.shape[0]) if isinstance(model, Normalized) else 1
    if channels not in (1, shape[0]):
        raise ValueError(f"--mean/--std: {channels} values (one per channel), but {dataset.name}'s images have "
                         f"{shape[0]} channels")
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(expected) != shape:
        raise ValueError(f"{data_flag}: {dataset.name} has images of shape {shape} (C, H, W); the model takes "
                         f"{tuple(expected)}")
    device = module_device(model)
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(torch.as_tensor(x).unsqueeze(0).to(device))
    except Exception as exc:  # noqa: BLE001 - the user's model rejects the input: report it on one line
        raise ValueError(f"{data_flag}: the model cannot take {dataset.name}'s images of shape {shape} (C, H, W) "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 1 or logits.shape[1] < 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"--checkpoint: the model must return logits of shape (batch, classes) with classes >= 2, "
                         f"got {got} for one input")
    k = int(logits.shape[1])
    if num_classes is not None and num_classes != k:
        raise ValueError(f"--num-classes {num_classes}: the model outputs {k} logits per example")
    top = int(dataset.y.max())
    if top >= k:
        flag = f"--num-classes {k}" if num_classes is not None else data_flag
        raise ValueError(f"{flag}: {dataset.name} has a label {top}, but the model has {k} classes (outputs); "
                         f"labels must lie in [0, {k})")
    return k


# ------------------------------------------------------------------------------------------------ output
def check_out(path: str | os.PathLike, *, flag: str = "--out") -> Path:
    """Refuse an output directory that is a file or cannot be written, before any compute (nothing created)."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag}: {out} is a file; give a directory")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag}: {out} cannot be created: {probe} is a file")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ValueError(f"{flag}: {out} is not writable ({exc.strerror or exc} in {probe})") from None
    return out


def default_out(command: str, loaded: LoadedModel | None = None, suffix: str = "") -> Path:
    """``runs/<command>_<model stem><suffix>``: the same rule on every command."""
    stem = f"_{loaded.stem}" if loaded is not None else ""
    return Path("runs") / f"{command}{stem}{suffix}"


def run_record(args: argparse.Namespace, loaded: LoadedModel | None = None, dataset: Any = None) -> dict[str, Any]:
    """What run.json records about how a run was made: command line, model source, checkpoint SHA-256,
    normalisation, class mapping of an image folder, package versions."""
    from certify.rundir import versions

    argv = getattr(args, "argv", None)
    record: dict[str, Any] = {"command_line": shlex.join(["certify", *argv]) if argv is not None else None,
                              "versions": versions()}
    if loaded is not None:
        record.update({"arch": loaded.arch, "arch_kwargs": getattr(args, "arch_kwargs", None),
                       "checkpoint_path": loaded.checkpoint_path, "checkpoint_sha256": loaded.checkpoint_sha256,
                       "mean": getattr(args, "mean", None), "std": getattr(args, "std", None)})
    if dataset is not None and getattr(dataset, "class_to_idx", None):
        record["class_to_idx"] = dict(dataset.class_to_idx)
    return record


def add_to_run_json(out: str | os.PathLike, record: dict[str, Any]) -> None:
    """Merge ``record`` into ``out/run.json`` (for runs whose run.json a library function writes)."""
    from certify._jsonio import atomic_write_json

    path = Path(out) / "run.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write_json(path, {**saved, **record})


def set_summary(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """The command's summary: :func:`certify.cli.main` prints it as one JSON object with ``--json``."""
    args.summary = summary


def prepare_smoothing(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Model, data, sigma, class count and output directory of ``smooth`` / ``predict``, checked before compute."""
    check_resume_flags(args)
    loaded = load_model(args)
    sigma = args.sigma
    if sigma is None:
        if float(loaded.info.get("sigma") or 0.0) > 0:
            sigma = float(loaded.info["sigma"])
        else:
            raise ValueError("--sigma: required (the noise level, e.g. 0.25)")
    dataset = load_data(args.data if args.data is not None else loaded.info.get("dataset"), args.split)
    if args.start >= len(dataset):
        raise ValueError(f"--start: must be < the dataset size {len(dataset)}, got {args.start}")
    num_classes = check_model_and_data(loaded.model, dataset, index=args.start, num_classes=args.num_classes)
    out = check_out(args.out if args.out else default_out(command, loaded, f"_sigma{sigma:g}"))
    return {"loaded": loaded, "sigma": sigma, "dataset": dataset, "num_classes": num_classes, "out": out,
            "record": run_record(args, loaded, dataset)}
