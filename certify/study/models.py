"""The models of a study: shipped zoo checkpoints, or trained once by :func:`certify.training.train` into
``out/models`` (keyed by their training settings, which start from the trainer's own defaults)."""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

import torch
from torch import nn

from certify._jsonio import jsonable
from certify.rundir import model_fingerprint
from certify.study.config import TRAIN_DEFAULTS, ModelSpec
from certify.study.context import StudyContext
from certify.study.results import ModelInfo

logger = logging.getLogger("certify.study")

__all__ = ["load_model", "train_settings"]


def train_settings(ctx: StudyContext, spec: ModelSpec) -> dict[str, Any]:
    """Everything the trained weights depend on (the key of ``out/models/<name>``)."""
    c = ctx.config
    return {"arch": c.arch, "dataset": c.dataset, "augment": spec.augment, "sigma": spec.sigma, "eps": spec.eps,
            "adv_fraction": spec.adv_fraction, "pgd_steps": spec.pgd_steps if spec.augment == "pgd" else None,
            "epochs": spec.epochs, "train_size": spec.train_size, "seed": c.seed, "batch_size": c.train_batch_size,
            "lr": TRAIN_DEFAULTS["lr"], "optimizer": TRAIN_DEFAULTS["optimizer"],
            "init": spec.init, "init_fingerprint": ctx.fingerprints.get(spec.init) if spec.init else None}


def _train_kwargs(ctx: StudyContext, spec: ModelSpec) -> dict[str, Any]:
    kw: dict[str, Any] = dict(epochs=spec.epochs, seed=ctx.config.seed, batch_size=ctx.config.train_batch_size,
                              augment=spec.augment)
    if spec.augment == "noise":
        kw["sigma"] = spec.sigma
    if spec.augment in ("fgsm", "pgd"):
        kw.update(eps=spec.eps, adv_fraction=spec.adv_fraction)
    if spec.augment == "pgd":
        kw["pgd_steps"] = spec.pgd_steps
    return kw


def _train_summary(res: Any) -> dict:
    """JSON-ready fields of a :class:`certify.training.TrainResult` (without the model)."""
    d = res.to_dict() if hasattr(res, "to_dict") else dataclasses.asdict(res)
    return jsonable({k: v for k, v in d.items()
                     if not isinstance(v, (nn.Module, torch.Tensor)) and k not in ("model", "state_dict")})


def _train(ctx: StudyContext, spec: ModelSpec) -> tuple[nn.Module, dict, float]:
    from certify import training

    data = ctx.train
    if spec.train_size is not None and spec.train_size < len(data):
        data = data.subset(range(spec.train_size))
    kw = _train_kwargs(ctx, spec)
    logger.info("model %s: training %s on %d images (%s, init %s)", spec.name, ctx.config.arch, len(data), kw,
                spec.init)
    # a copy of the weights: training must never change the model it starts from (still evaluated itself)
    init = copy.deepcopy(ctx.models[spec.init].state_dict()) if spec.init else None
    t0 = time.perf_counter()
    res = training.train(ctx.config.arch, data, test_dataset=ctx.test, verbose=ctx.verbose, init=init,
                         device=ctx.device, **kw)
    elapsed = time.perf_counter() - t0
    info = {"source": "train", "train_images": len(data), "train_result": _train_summary(res)}
    return res.model, info, elapsed


def _trained_model(ctx: StudyContext, spec: ModelSpec) -> tuple[nn.Module, dict, bool, float]:
    from certify import models as zoo

    settings = train_settings(ctx, spec)
    store = ctx.checkpoints
    model = zoo.build(ctx.config.arch)
    meta = store.load(spec.name, settings, model)
    ckpt = str(store.checkpoint(spec.name))
    if meta is not None:
        elapsed = float(meta.get("time_s", 0.0))
        logger.info("model %s: loaded %s (trained in %.1f s)", spec.name, ckpt, elapsed)
        return model, dict(meta.get("info", {}), checkpoint=ckpt), True, elapsed
    model, info, elapsed = _train(ctx, spec)
    store.save(spec.name, settings, model, elapsed, info)
    return model, dict(info, checkpoint=ckpt), False, elapsed


def load_model(ctx: StudyContext, spec: ModelSpec) -> nn.Module:
    """The model of ``spec`` (a zoo checkpoint, or trained once into ``out/models``), in eval mode, on the study's
    device."""
    from certify import models as zoo

    t0 = time.perf_counter()
    if spec.source == "pretrained":
        model = zoo.pretrained(spec.pretrained)
        info = {"source": "pretrained", "pretrained": spec.pretrained,
                "zoo_info": jsonable(zoo.pretrained_info(spec.pretrained))}
        cached, elapsed = True, time.perf_counter() - t0
    else:
        model, info, cached, elapsed = _trained_model(ctx, spec)
    model.eval()
    if ctx.device is not None:
        model.to(ctx.device)
    ctx.models[spec.name] = model
    ctx.fingerprints[spec.name] = model_fingerprint(model)
    ctx.record(spec.name, "info", ModelInfo.from_dict(
        {**info, "fingerprint": ctx.fingerprints[spec.name], "spec": spec.to_dict()}))
    ctx.record(spec.name, "model", None, elapsed, cached=cached)
    return model
