"""The study's resumable state under ``out``: stage caches, trained-model checkpoints, the invocation log.

* ``cache/<model>/<stage>.json``: ``{"format", "key", "time_s", "result"}``, written atomically; ``key``
  is :func:`certify._jsonio.digest` of the stage's settings, the model's fingerprint and the dataset, so a
  changed setting or model re-runs the stage and anything else is read back;
* ``models/<name>.pt`` + ``models/<name>.json``: models trained by the study, keyed by their training
  settings;
* ``invocations.json``: one entry per invocation of the folder (wall time, stages computed, load).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from certify._jsonio import atomic_write_json, digest

logger = logging.getLogger("certify.study")

__all__ = ["FORMAT", "CacheEntry", "StageCache", "CheckpointStore", "read_invocations", "record_invocation",
           "loadavg"]

FORMAT = "certify.study/1"


@dataclass(frozen=True)
class CacheEntry:
    """A stage result as stored: the settings key, the seconds it took when computed, its JSON."""

    key: str
    time_s: float
    result: Any


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None (with a warning) if it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("ignoring unreadable %s (%s)", path, exc)
        return None


class StageCache:
    """``out/cache/<model>/<stage>.json`` entries, one per model x stage."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def key(**parts: Any) -> str:
        """The cache key of a stage: a digest of everything its result depends on."""
        return digest(parts)

    def path(self, model: str, stage: str) -> Path:
        return self.root / "cache" / model / f"{stage}.json"

    def get(self, model: str, stage: str, key: str) -> CacheEntry | None:
        entry = _read_json(self.path(model, stage))
        if not isinstance(entry, dict):
            return None
        if entry.get("format") != FORMAT or entry.get("key") != key:
            logger.info("%s/%s: settings or model changed since the cached run; re-running", model, stage)
            return None
        return CacheEntry(key=key, time_s=float(entry["time_s"]), result=entry["result"])

    def put(self, model: str, stage: str, key: str, result: Any, time_s: float) -> CacheEntry:
        entry = {"format": FORMAT, "key": key, "time_s": float(time_s), "result": result}
        atomic_write_json(self.path(model, stage), entry)
        return CacheEntry(key=key, time_s=float(time_s), result=result)


class CheckpointStore:
    """``out/models/<name>.pt`` (state_dict) + ``<name>.json`` (training settings key, time, info)."""

    def __init__(self, root: Path):
        self.dir = Path(root) / "models"

    def checkpoint(self, name: str) -> Path:
        return self.dir / f"{name}.pt"

    def load(self, name: str, settings: Mapping[str, Any], model: torch.nn.Module) -> dict | None:
        """Load the saved weights into ``model`` if they were trained with ``settings``; the saved metadata
        (``time_s``, ``info``) or None."""
        ckpt, meta = self.checkpoint(name), _read_json(self.dir / f"{name}.json")
        if not ckpt.is_file() or not isinstance(meta, dict):
            return None
        if meta.get("key") != digest(settings):
            logger.info("model %s: training settings changed; re-training", name)
            return None
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        return meta

    def save(self, name: str, settings: Mapping[str, Any], model: torch.nn.Module, time_s: float,
             info: Mapping[str, Any]) -> Path:
        ckpt = self.checkpoint(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.pt.{os.getpid()}.tmp"
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, ckpt)
        atomic_write_json(self.dir / f"{name}.json", {"format": FORMAT, "key": digest(settings),
                                                       "settings": settings, "time_s": time_s, "info": info})
        return ckpt


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def read_invocations(out: Path) -> list[dict]:
    """The entries of ``out/invocations.json`` (empty if absent or unreadable)."""
    data = _read_json(Path(out) / "invocations.json")
    return data if isinstance(data, list) else []


def record_invocation(out: Path, entry: Mapping[str, Any]) -> list[dict]:
    """Add or update (same ``id``) this invocation's entry in ``out/invocations.json``; the whole log."""
    history = [h for h in read_invocations(out) if h.get("id") != entry["id"]]
    history.append(dict(entry))
    atomic_write_json(Path(out) / "invocations.json", history)
    return history
