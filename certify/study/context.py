"""The state of one study invocation shared by its stages: configuration, data, models, the stage cache,
and the typed results and timings collected so far."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from certify.study.cache import CheckpointStore, StageCache
from certify.study.config import StudyConfig
from certify.study.results import ModelStages, Record, StageTime

logger = logging.getLogger("certify.study")

__all__ = ["StudyContext"]


class StudyContext:
    """Configuration, lazily loaded data, the models and what every stage returned so far."""

    def __init__(self, out: Path, config: StudyConfig, verbose: bool, device: torch.device | None = None):
        self.out = Path(out)
        self.config = config
        self.verbose = verbose
        # where every model runs (None: where it was loaded, the CPU); stage caches do not depend on it
        self.device = device
        self.cache = StageCache(self.out)
        self.checkpoints = CheckpointStore(self.out)
        self.timings: dict[str, dict[str, StageTime]] = {m.name: {} for m in config.models}
        self.results: dict[str, dict[str, Record]] = {m.name: {} for m in config.models}
        self.models: dict[str, nn.Module] = {}
        self.fingerprints: dict[str, str | None] = {}
        self.reports: dict[str, Any] = {}          # model -> certify.reports.RadiusReport
        self._data: dict[str, Any] = {}

    # ------------------------------------------------------------------ data
    def _split(self, split: str) -> Any:
        if split not in self._data:
            from certify.data import load_dataset

            self._data[split] = load_dataset(self.config.dataset, split=split, root=self.config.data_root)
        return self._data[split]

    @property
    def test(self) -> Any:
        return self._split("test")

    @property
    def train(self) -> Any:
        return self._split("train")

    def on_device(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the study's device (unchanged when it has none)."""
        return t if self.device is None else t.to(self.device)

    def skip(self, n: int) -> int:
        """The test-index step of a stage on ``n`` evenly spaced test images."""
        return max(1, len(self.test) // n)

    # ------------------------------------------------------------------ results
    def record(self, model: str, stage: str, result: Record | None, elapsed: float | None = None,
               cached: bool = False) -> None:
        if result is not None:
            self.results[model][stage] = result
        if elapsed is not None:
            self.timings[model][stage] = StageTime(time_s=float(elapsed), cached=cached)

    def stages(self) -> dict[str, ModelStages]:
        """The typed results of every model so far."""
        return {name: ModelStages(**found) for name, found in self.results.items()}

    def get(self, model: str, stage: str) -> Any:
        """The result of ``stage`` for ``model`` (KeyError if it has not run)."""
        return self.results[model][stage]

    # ------------------------------------------------------------------ the stage wrapper
    def stage(self, model: str, stage: str, settings: Mapping[str, Any], compute: Callable[[], Record]) -> Any:
        """``compute()`` once per settings: read back from the cache when the model, dataset and settings are
        those of the cached run, else run it and cache its result."""
        typ = ModelStages.stage_type(stage)
        key = self.cache.key(stage=stage, model=self.fingerprints.get(model), dataset=self.config.dataset,
                             settings=settings)
        entry = self.cache.get(model, stage, key)
        if entry is not None:
            try:
                result = typ.from_dict(entry.result)
            except (TypeError, ValueError, KeyError) as exc:
                logger.warning("%s / %s: cache entry has another layout (%s); re-running", model, stage, exc)
            else:
                logger.info("%s / %s: cached (%.1f s when computed)", model, stage, entry.time_s)
                self.record(model, stage, result, entry.time_s, cached=True)
                return result
        logger.info("%s / %s: running", model, stage)
        t0 = time.perf_counter()
        result = compute()
        elapsed = time.perf_counter() - t0
        self.cache.put(model, stage, key, result.to_dict(), elapsed)
        logger.info("%s / %s: done in %.1f s", model, stage, elapsed)
        self.record(model, stage, result, elapsed)
        return result
