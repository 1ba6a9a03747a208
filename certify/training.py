"""Training the zoo on a CPU budget: standard, Gaussian-noise, FGSM and PGD adversarial training.

``augment`` chooses what each training batch looks like:

* ``"none"``: clean images;
* ``"noise"``: Gaussian data augmentation for randomized smoothing (Cohen et al. 2019): every image
  gets ``sigma * N(0, I)`` pixel noise (no clipping, exactly the distribution the smoothed classifier
  samples);
* ``"fgsm"`` / ``"pgd"``: adversarial training (Goodfellow et al. 2015; Madry et al. 2018) with an
  l-inf budget ``eps``: a fraction ``adv_fraction`` of every batch is replaced by adversarial examples
  from :mod:`certify.attacks` (``adv_fraction=1`` is plain adversarial training; ``0.3`` with ``init=``
  is the "fine-tune a pretrained encoder with 30% adversarial data" setting).

Everything random (initialisation, shuffling, noise, attack starts) comes from ``seed``: the
initialisation (:func:`certify.models.build` with ``seed``) runs inside ``torch.random.fork_rng`` so
the caller's global RNG is untouched, the rest uses private ``torch.Generator`` objects. Same seed, same
data and thread settings -> the same weights and the same sidecar accuracy.

Example::

    >>> from certify.training import train
    >>> result = train("digits_mlp", "digits", epochs=2, seed=0, verbose=False)
    >>> round(result.test_accuracy, 2) > 0.8
    True
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from certify import models as zoo
from certify._checks import check_choice, check_float, check_int
from certify._modes import eval_mode
from certify.data import ImageDataset, load_dataset
from certify.devices import module_device, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["AUGMENTS", "OPTIMIZERS", "TrainResult", "train", "evaluate_accuracy", "save"]

AUGMENTS = ("none", "noise", "fgsm", "pgd")
OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did (echoes every setting) and how well the model does on the clean test set."""

    arch: str
    dataset: str
    augment: str
    sigma: float
    eps: float
    adv_fraction: float
    pgd_steps: int
    epochs: int
    batch_size: int
    lr: float
    seed: int
    optimizer: str
    init: str | None
    n_train: int
    n_test: int
    test_accuracy: float
    train_seconds: float
    final_loss: float
    torch_version: str
    checkpoint: str | None = None
    model: nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings and results (the sidecar written next to the checkpoint)."""
        d = dataclasses.asdict(self)
        d.pop("model")
        return d


def _validate(arch, epochs, sigma, batch_size, lr, augment, eps, adv_fraction, pgd_steps, seed, max_train,
              optimizer):
    zoo._check_arch(arch)
    for name, value, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("pgd_steps", pgd_steps, 1),
                            ("seed", seed, 0)):
        check_int(name, value, lo)
    if max_train is not None:
        check_int("max_train", max_train, 1)
    check_choice("augment", augment, AUGMENTS)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_float("sigma", sigma, low=0.0)
    check_float("lr", lr, low=0.0, low_open=True)
    check_float("eps", eps, low=0.0, high=1.0)
    check_float("adv_fraction", adv_fraction, low=0.0, high=1.0)
    _check_augment_settings(augment, sigma, eps, adv_fraction)


def _check_augment_settings(augment: str, sigma: float, eps: float, adv_fraction: float) -> None:
    if augment == "noise" and sigma <= 0:
        raise ValueError(f"augment='noise' needs sigma > 0, got sigma={sigma}")
    if augment != "noise" and sigma != 0:
        raise ValueError(f"sigma={sigma} is only used with augment='noise' (got augment={augment!r})")
    if augment in ("fgsm", "pgd"):
        if not 0 < eps <= 1:
            raise ValueError(f"augment={augment!r} needs eps in (0, 1] (l-inf, pixel units), got {eps}")
        if not 0 < adv_fraction <= 1:
            raise ValueError(f"adv_fraction must lie in (0, 1], got {adv_fraction}")
    elif eps != 0:
        raise ValueError(f"eps={eps} is only used with augment='fgsm' or 'pgd' (got augment={augment!r})")


def evaluate_accuracy(model: nn.Module, dataset: ImageDataset, *, batch_size: int = 1000) -> float:
    """Clean top-1 accuracy of ``model`` on ``dataset`` (eval mode restored afterwards), on the model's device."""
    dev = module_device(model)
    correct = 0
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            xb = dataset.x[start:start + batch_size].to(dev)
            correct += int((model(xb).argmax(1).cpu() == dataset.y[start:start + batch_size]).sum())
    return correct / max(1, len(dataset))


def _load_init(model: nn.Module, init: str | os.PathLike | dict) -> str:
    if isinstance(init, dict):
        model.load_state_dict(init)
        return "<state_dict>"
    init = os.fspath(init)
    if init in zoo.available_pretrained():
        model.load_state_dict(zoo.pretrained(init).state_dict())
        return init
    from certify.checkpoints import load_checkpoint

    loaded = load_checkpoint(init, arch=model.arch)
    model.load_state_dict(loaded.state_dict())
    return init


def _adversarial(model, xb, yb, augment, eps, pgd_steps, generator):
    from certify import attacks

    if augment == "fgsm":
        return attacks.fgsm(model, xb, yb, eps=eps, norm="linf")
    return attacks.pgd(model, xb, yb, eps=eps, norm="linf", steps=pgd_steps, random_start=True,
                       generator=generator)


def _resolve_datasets(dataset: Any, test_dataset: Any, max_train: int | None
                      ) -> tuple[ImageDataset, ImageDataset, str]:
    """(train set, test set, dataset name) from :func:`train`'s ``dataset`` / ``test_dataset`` arguments."""
    if test_dataset is not None and not isinstance(test_dataset, ImageDataset):
        raise TypeError(f"test_dataset must be an ImageDataset or None, got {type(test_dataset).__name__}")
    if isinstance(dataset, ImageDataset):
        if test_dataset is None:
            raise ValueError("training on an ImageDataset needs test_dataset= (held-out images for the "
                             "sidecar's test_accuracy); pass a dataset name to use its test split")
        train_set, dataset_name, test_set = dataset, dataset.name, test_dataset
    elif not isinstance(dataset, (str, os.PathLike)):
        raise TypeError(f"dataset must be a dataset name, a path or an ImageDataset, got {type(dataset).__name__}")
    else:
        dataset_name = os.fspath(dataset)
        train_set = load_dataset(dataset_name, split="train")
        test_set = test_dataset if test_dataset is not None else load_dataset(dataset_name, split="test")
    if max_train is not None:
        train_set = train_set.subset(range(min(max_train, len(train_set))))
    return train_set, test_set, dataset_name


def _check_fits(arch: str, model: nn.Module, train_set: ImageDataset, test_set: ImageDataset) -> None:
    for what, ds in (("dataset", train_set), ("test_dataset", test_set)):
        if len(ds) == 0:
            raise ValueError(f"{what} is empty")
        if tuple(ds.input_shape) != tuple(model.input_shape):
            raise ValueError(f"{what} images have shape {ds.input_shape} but arch {arch!r} expects "
                             f"{model.input_shape}")
        if int(ds.y.max()) >= model.num_classes:
            raise ValueError(f"{what} has labels up to {int(ds.y.max())} but arch {arch!r} has "
                             f"{model.num_classes} outputs")


def train(arch: str, dataset: str | ImageDataset, *, epochs: int, sigma: float = 0.0, seed: int = 0,
          batch_size: int = 128, lr: float = 1e-3, augment: str | None = None, eps: float = 0.0,
          adv_fraction: float = 1.0, pgd_steps: int = 7, init: str | os.PathLike | dict | None = None,
          out: str | os.PathLike | None = None, max_train: int | None = None,
          test_dataset: ImageDataset | None = None, optimizer: str = "adam",
          verbose: bool = True, device: str | torch.device | None = None) -> TrainResult:
    """Train a zoo architecture and (optionally) save ``out`` (state_dict) plus ``out`` with ``.json``.

    Args:
        arch: zoo architecture (:func:`certify.models.available`).
        dataset: dataset name or path (train split used for training, test split for the accuracy),
            or an :class:`ImageDataset` to train on (then ``test_dataset`` is required).
        test_dataset: held-out images for ``test_accuracy`` (overrides the name's test split).
        epochs, batch_size, lr: optimisation budget; the learning rate follows a one-cycle schedule
            that peaks at ``3 * lr``.
        optimizer: ``"adam"`` (default) or ``"sgd"`` (momentum 0.9).
        sigma: Gaussian augmentation std in pixel units (``augment="noise"``; implied when sigma > 0).
        augment: ``"none" | "noise" | "fgsm" | "pgd"`` (default: ``"noise"`` if sigma > 0 else ``"none"``).
        eps, adv_fraction, pgd_steps: l-inf budget, fraction of each batch made adversarial, PGD steps.
        init: a shipped checkpoint name, a checkpoint path or a state_dict to fine-tune from.
        max_train: use only the first ``max_train`` training images (quick runs and tests).
        device: ``"cpu"`` (default), ``"cuda"`` or ``"auto"`` (:func:`certify.devices.resolve_device`): where the
            model trains and the augmentation noise and attack starts are drawn (generators on that device;
            the shuffling order is drawn on the CPU, so it is the same on every device).
    """
    if augment is None:
        augment = "noise" if sigma else "none"
    _validate(arch, epochs, sigma, batch_size, lr, augment, eps, adv_fraction, pgd_steps, seed, max_train,
              optimizer)
    dev = resolve_device(device) or torch.device("cpu")
    train_set, test_set, dataset_name = _resolve_datasets(dataset, test_dataset, max_train)
    model = zoo.build(arch, seed=seed)  # forked RNG state: the caller's global RNG is untouched
    _check_fits(arch, model, train_set, test_set)
    init_name = _load_init(model, init) if init is not None else None
    model.to(dev)

    shuffle_gen = torch.Generator().manual_seed(seed + 1)
    noise_gen = torch.Generator(device=dev).manual_seed(seed + 2)
    attack_gen = torch.Generator(device=dev).manual_seed(seed + 3)
    if optimizer == "adam":
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=SGD_MOMENTUM)
    n = len(train_set)
    steps_per_epoch = math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr * 3, total_steps=epochs * steps_per_epoch)
    from certify._progress import progress

    start = time.perf_counter()
    loss_value = float("nan")
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=shuffle_gen)
        running = 0.0
        with progress(total=steps_per_epoch, desc=f"{arch} epoch {epoch + 1}/{epochs}", unit="step",
                      enabled=verbose) as bar:
            for step in range(steps_per_epoch):
                idx = order[step * batch_size:(step + 1) * batch_size]
                xb, yb = train_set.x[idx].to(dev), train_set.y[idx].to(dev)
                if augment == "noise":
                    xb = xb + sigma * torch.randn(xb.shape, generator=noise_gen, device=dev)
                elif augment in ("fgsm", "pgd"):
                    k = max(1, round(adv_fraction * len(idx)))
                    x_adv = _adversarial(model, xb[:k], yb[:k], augment, eps, pgd_steps, attack_gen)
                    model.train()
                    xb = torch.cat([x_adv.detach(), xb[k:]])
                loss = F.cross_entropy(model(xb), yb)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
                running = 0.9 * running + 0.1 * float(loss.detach()) if step else float(loss.detach())
                bar.update(1)
                bar.set_postfix(loss=f"{running:.3f}")
        loss_value = running
        logger.info("%s epoch %d/%d: loss %.4f", arch, epoch + 1, epochs, running)
    seconds = time.perf_counter() - start
    model.eval()
    accuracy = evaluate_accuracy(model, test_set)
    logger.info("%s trained in %.1f s: clean test accuracy %.4f", arch, seconds, accuracy)

    result = TrainResult(
        arch=arch, dataset=dataset_name, augment=augment, sigma=float(sigma), eps=float(eps),
        adv_fraction=float(adv_fraction) if augment in ("fgsm", "pgd") else 0.0,
        pgd_steps=int(pgd_steps) if augment == "pgd" else 0, epochs=epochs, batch_size=batch_size, lr=float(lr),
        seed=seed, optimizer=optimizer, init=init_name, n_train=len(train_set), n_test=len(test_set),
        test_accuracy=accuracy,
        train_seconds=round(seconds, 2), final_loss=loss_value, torch_version=torch.__version__,
        checkpoint=os.fspath(out) if out is not None else None, model=model,
    )
    if out is not None:
        save(result, out)
    return result


def save(result: TrainResult, out: str | os.PathLike) -> Path:
    """Write ``out`` (the model's state_dict) and the JSON sidecar ``out`` with suffix ``.json``."""
    if result.model is None:
        raise ValueError("result has no model to save")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(result.model.state_dict(), tmp)
    os.replace(tmp, path)
    sidecar = dict(result.to_dict(), checkpoint=path.name)
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return path
