"""Synthetic Gaussian-mixture data: pixel mappings, seeded chunked sampling and batching."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from certify._checks import check_int
from certify.synbench._args import _input_shape

_CHUNK = 256          # rows per independently seeded generator chunk of synthetic data


@dataclass(frozen=True)
class PixelMapping:
    """Affine map from the Gaussian sample to the encoder's input, recorded in every result.

    ``x_in = ((scale * x + offset) clipped to clip - mean[c]) / std[c]`` (clip and per-channel
    normalisation optional; channel = first axis of ``input_shape``). Presets (:data:`PIXEL_MAPPINGS`):

    * ``"official"``: ``x + 0.5``, no clipping (the official code's offset; its ImageNet
      normalisation is omitted because the zoo models normalise internally);
    * ``"imagenet"``: ``x + 0.5`` then ImageNet mean/std normalisation (the full official pipeline,
      for encoders that expect normalised 3-channel input);
    * ``"none"``: the Gaussian sample itself;
    * ``"clip"``: ``clip(x + 0.5, 0, 1)``. Clipping makes the input non-Gaussian, so the raw-data
      reference no longer describes the data the encoder sees; use only to probe encoders that
      cannot take values outside [0, 1].
    """

    name: str = "official"
    offset: float = 0.5
    scale: float = 1.0
    clip: tuple[float, float] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        for attr in ("offset", "scale"):
            v = getattr(self, attr)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"PixelMapping.{attr} must be a finite number, got {v!r}")
        if self.scale == 0:
            raise ValueError("PixelMapping.scale must be non-zero")
        if self.clip is not None and (len(self.clip) != 2 or not self.clip[0] < self.clip[1]):
            raise ValueError(f"PixelMapping.clip must be (low, high) with low < high, got {self.clip!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("PixelMapping.mean and std must be given together")
        if self.std is not None and (len(self.std) != len(self.mean) or any(s <= 0 for s in self.std)):
            raise ValueError("PixelMapping.std must be positive with one entry per mean entry")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, *input_shape)``."""
        out = x * self.scale + self.offset
        if self.clip is not None:
            out = out.clamp(self.clip[0], self.clip[1])
        if self.mean is not None:
            c = x.shape[1]
            if len(self.mean) != c:
                raise ValueError(f"pixel mapping {self.name!r} normalises {len(self.mean)} channels, "
                                 f"input has {c} (input_shape[0])")
            view = (1, c) + (1,) * (x.ndim - 2)
            mean = torch.tensor(self.mean, dtype=out.dtype, device=out.device).view(view)
            std = torch.tensor(self.std, dtype=out.dtype, device=out.device).view(view)
            out = (out - mean) / std
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "offset": self.offset, "scale": self.scale,
                "clip": list(self.clip) if self.clip is not None else None,
                "mean": list(self.mean) if self.mean is not None else None,
                "std": list(self.std) if self.std is not None else None}

    @classmethod
    def from_dict(cls, d: dict) -> "PixelMapping":
        return cls(name=d["name"], offset=d["offset"], scale=d["scale"],
                   clip=tuple(d["clip"]) if d.get("clip") is not None else None,
                   mean=tuple(d["mean"]) if d.get("mean") is not None else None,
                   std=tuple(d["std"]) if d.get("std") is not None else None)


PIXEL_MAPPINGS: dict[str, PixelMapping] = {
    "official": PixelMapping("official", 0.5, 1.0),
    "imagenet": PixelMapping("imagenet", 0.5, 1.0, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": PixelMapping("none", 0.0, 1.0),
    "clip": PixelMapping("clip", 0.5, 1.0, (0.0, 1.0)),
}


def _pixel_mapping(value) -> PixelMapping:
    if isinstance(value, PixelMapping):
        return value
    if isinstance(value, str) and value in PIXEL_MAPPINGS:
        return PIXEL_MAPPINGS[value]
    raise ValueError(f"pixel_mapping must be one of {sorted(PIXEL_MAPPINGS)} or a PixelMapping, got {value!r}")


def _chunk_generator(seed: int, separation: float, split: int, chunk: int) -> torch.Generator:
    key = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, int(round(separation * 1e6)), split, chunk]
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def sample_mixture(separation: float, input_shape: Sequence[int], n: int, *, seed: int = 0, split: int = 0,
                   pixel_mapping: str | PixelMapping = "official") -> tuple[torch.Tensor, torch.Tensor]:
    """All ``n`` synthetic samples of one separation: ``(x (n, *input_shape) float32, y (n,) int64 in {-1, +1})``.

    ``y`` uniform, ``x = pixel_mapping(y * s/sqrt(d) * 1 + z)``, ``z ~ N(0, I)``. Rows are produced in
    chunks of 256, each from its own ``torch.Generator`` seeded by ``(seed, s, split, chunk index)``;
    the same arguments always give the same data. :func:`evaluate` uses split 0 for training and 1
    for testing.
    """
    shape = _input_shape(input_shape)
    n = check_int("n", n)
    mapping = _pixel_mapping(pixel_mapping)
    xs, ys = zip(*(_mixture_chunks(float(separation), shape, n, seed, split, mapping)))
    return torch.cat(xs), torch.cat(ys)


def _mixture_chunks(separation: float, shape: tuple[int, ...], n: int, seed: int, split: int,
                    mapping: PixelMapping) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if not math.isfinite(separation) or separation <= 0:
        raise ValueError(f"separation must be > 0, got {separation!r}")
    d = int(np.prod(shape))
    step = separation / math.sqrt(d)
    for chunk, start in enumerate(range(0, n, _CHUNK)):
        m = min(_CHUNK, n - start)
        g = _chunk_generator(seed, separation, split, chunk)
        # always draw a full chunk so that a row's value does not depend on n
        y = (torch.randint(0, 2, (_CHUNK,), generator=g, dtype=torch.int64) * 2 - 1)[:m]
        x = torch.randn((_CHUNK, d), generator=g, dtype=torch.float32)[:m] + step * y[:, None].to(torch.float32)
        yield mapping.apply(x.reshape((m,) + shape)), y


def _batches(chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], batch_size: int):
    """Re-cut a stream of (x, y) chunks into batches of exactly ``batch_size`` rows (last may be smaller)."""
    buf_x: list[torch.Tensor] = []
    buf_y: list[torch.Tensor] = []
    have = 0
    for x, y in chunks:
        buf_x.append(x)
        buf_y.append(y)
        have += x.shape[0]
        while have >= batch_size:
            X, Y = torch.cat(buf_x), torch.cat(buf_y)
            yield X[:batch_size], Y[:batch_size]
            buf_x, buf_y = [X[batch_size:]], [Y[batch_size:]]
            have -= batch_size
    if have:
        yield torch.cat(buf_x), torch.cat(buf_y)
