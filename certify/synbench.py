"""SynBench: probe a representation with synthetic Gaussian data and compare it with theory.

Ko, Chen, Mohapatra, Das, Daniel: "SynBench: Task-Agnostic Benchmarking of Pretrained
Representations using Synthetic Data" (arXiv 2210.02989, 2022) / "What Would Gauss Say About
Representations? Probing Pretrained Image Models using Synthetic Gaussian Benchmarks" (ICML 2024);
official code ``IBM/synbench`` (``evaluate_synbench.py``).

Protocol (:func:`evaluate`)
---------------------------
For each separation ``s`` (default 0.1, 0.2, ..., 4.9):

1. Draw ``y`` uniform in {-1, +1} and ``x | y ~ N(y mu, I)`` with ``mu = s/sqrt(d) * 1`` in the
   encoder's input space (``d = prod(input_shape)``), ``n_train`` + ``n_test`` samples, then apply a
   :class:`PixelMapping` (the official code adds 0.5 and applies the ImageNet normalisation its
   timm encoders expect; the zoo models here normalise inside the model, so the default
   ``"official"`` mapping is the 0.5 offset alone, without clipping; ``"imagenet"`` reproduces the
   full official pipeline). The raw data's Bayes accuracy is ``Phi(s)``.
2. Encode; fit the class means ``m+, m-`` and the pooled within-class covariance ``Sigma`` of the
   training features; ``mu~ = (m+ - m-)/2``, centre ``c = (m+ + m-)/2``.
3. For each ``eps`` (relative: the l2 budget in feature space is ``eps * ||mu~||``) form the
   eps-robust Bayes linear classifier ``w = (Sigma + gamma I)^-1 mu~`` (closed form + 1-D root
   finding, :func:`estimators.gaussian_mixture.robust_bayes_linear`) and record, on the test
   features, its accuracy and the mean *normalised margin* ``|w^T (h - c)| / (w^T mu~)`` over
   correctly classified points (the official ``bound``; for the raw data and ``eps = 0`` its
   expectation is ``B(Phi(s)) = 1 + phi(s)/(Phi(s) s)``).
4. ``E(a_t) = mean_s margin(s) * 1[accuracy(s) > a_t]`` on the grid ``a_t`` = 100 points in
   [0.6, 1.0]; ``score(eps, a_T) = sum_{a_t >= a_T} E_rep(a_t) / sum_{a_t >= a_T} E_raw(a_t)``, the
   raw curve using the closed forms ``accuracy = Phi(s)``, ``margin = B(Phi(s))``.

Differences from the official script (all deliberate, none changes what is estimated):
the robust classifier comes from exact root finding instead of an SCS cone solve; the covariance
is restricted to eigenvalues above ``eig_tol`` *relative* to the largest (official: absolute 1e-6),
which makes the score invariant to rescaling the features; margins are averaged over all correct
test points (official: mean of per-batch means over full batches of 256); each ``(seed, s, split)``
draws its data from its own seeded ``torch.Generator`` in fixed chunks, so results do not depend on
``batch_size`` or on which other separations are evaluated.

Reading the score: an invertible linear encoder preserves the Gaussian mixture (LDA is
affine-invariant), so its score is 1 up to sampling error; projecting to fewer dimensions or
otherwise losing signal makes it smaller; > 1 means the representation's margins are larger than
those of the raw data at the same accuracy levels.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from certify._checks import check_int
from certify._progress import track
from certify.devices import resolve_device
from estimators import gaussian_mixture as gm
from estimators import robust_linear as rl

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SEPARATIONS",
    "QUICK_SEPARATIONS",
    "DEFAULT_A_GRID",
    "SCORE_THRESHOLDS",
    "PixelMapping",
    "PIXEL_MAPPINGS",
    "ReferenceCurve",
    "reference_curve",
    "expected_bound_curve",
    "synbench_score",
    "sample_mixture",
    "FeatureExtractor",
    "extract_features",
    "SynBenchResult",
    "evaluate",
    "RobustProbeResult",
    "robust_probe",
    "SynBenchComparison",
    "compare",
]

#: separations ``s = ||mu||`` of the official protocol: 0.1, 0.2, ..., 4.9
DEFAULT_SEPARATIONS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 50))
#: a coarser grid for quick looks (CLI ``--quick``): 0.2, 0.4, ..., 4.8
QUICK_SEPARATIONS: tuple[float, ...] = tuple(round(0.2 * k, 1) for k in range(1, 25))
#: threshold-accuracy grid of the official code: 100 points from 0.6 to 1.0
DEFAULT_A_GRID: tuple[float, ...] = tuple(float(a) for a in np.linspace(0.6, 1.0, 100))
#: thresholds a_T the official script reports
SCORE_THRESHOLDS: tuple[float, ...] = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)

_CHUNK = 256          # rows per independently seeded generator chunk of synthetic data
_FORMAT = "certify.synbench/1"


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _float_tuple(name: str, values, *, low: float, low_open: bool, high: float, high_open: bool,
                 increasing: bool) -> tuple[float, ...]:
    if isinstance(values, (int, float, np.floating, np.integer)) and not isinstance(values, bool):
        values = (values,)
    if isinstance(values, (str, bytes)) or values is None:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}")
    try:
        arr = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got {values!r}")
    lo_ok = arr > low if low_open else arr >= low
    hi_ok = arr < high if high_open else arr <= high
    if not np.all(np.isfinite(arr)) or not np.all(lo_ok & hi_ok):
        rng = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {rng}, got {values!r}")
    if increasing and np.any(np.diff(arr) <= 0):
        raise ValueError(f"{name} must be strictly increasing, got {values!r}")
    if not increasing and len(set(arr.tolist())) != arr.size:
        raise ValueError(f"{name} must not contain duplicates, got {values!r}")
    return tuple(float(v) for v in arr)


def _input_shape(value) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) == 0:
        raise TypeError(f"input_shape must be a tuple of positive ints such as (C, H, W), got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"input_shape must be a tuple of positive ints such as (C, H, W), got {value!r}")
    return tuple(int(v) for v in value)


# ----------------------------------------------------------------------------------------------
# the raw-data reference
# ----------------------------------------------------------------------------------------------
def expected_bound_curve(accuracy, margin, a_grid=DEFAULT_A_GRID) -> np.ndarray:
    """``E(a_t) = (1/S) sum_s margin(s) * 1[accuracy(s) > a_t]`` for every ``a_t`` in ``a_grid``.

    ``accuracy`` and ``margin`` are per-separation arrays of equal length ``S``; the comparison is
    strict, as in the official code.
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    mar = np.asarray(margin, dtype=np.float64)
    grid = np.asarray(a_grid, dtype=np.float64)
    if acc.ndim != 1 or acc.shape != mar.shape or acc.size == 0:
        raise ValueError(f"accuracy and margin must be non-empty 1-D arrays of equal length, got "
                         f"{acc.shape} and {mar.shape}")
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError("a_grid must be a non-empty 1-D array")
    if not (np.all(np.isfinite(acc)) and np.all(np.isfinite(mar)) and np.all(np.isfinite(grid))):
        raise ValueError("accuracy, margin and a_grid must be finite")
    return (mar[None, :] * (acc[None, :] > grid[:, None])).sum(axis=1) / acc.size


def synbench_score(e_rep, e_raw, a_grid, a_t: float) -> float:
    """``sum_{a >= a_t} E_rep(a) / sum_{a >= a_t} E_raw(a)`` over the grid (the SynBench score)."""
    grid = np.asarray(a_grid, dtype=np.float64)
    a = float(a_t)
    if not math.isfinite(a) or a < grid[0] - 1e-12 or a > grid[-1] + 1e-12:
        raise ValueError(f"a_t must lie in the threshold grid [{grid[0]:g}, {grid[-1]:g}], got {a_t!r}")
    sel = grid >= a - 1e-12
    den = float(np.asarray(e_raw, dtype=np.float64)[sel].sum())
    if den <= 0:
        raise ValueError(f"the raw-data curve is 0 above a_t={a_t:g} (no separation has Phi(s) > a_t); "
                         "choose a smaller a_t or larger separations")
    return float(np.asarray(e_rep, dtype=np.float64)[sel].sum() / den)


@dataclass(frozen=True)
class ReferenceCurve:
    """Closed-form raw-data curve: per separation ``accuracy = Phi(s)``, ``margin = B(Phi(s))``; and
    ``expected_bound`` ``E_raw(a_t)`` on ``a_grid``."""

    separations: tuple[float, ...]
    accuracy: tuple[float, ...]
    margin: tuple[float, ...]
    a_grid: tuple[float, ...]
    expected_bound: tuple[float, ...]

    def to_dict(self) -> dict:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}


def reference_curve(separations: Sequence[float] = DEFAULT_SEPARATIONS,
                    a_grid: Sequence[float] = DEFAULT_A_GRID) -> ReferenceCurve:
    """SynBench's theoretical raw-data robustness-accuracy curve (no sampling).

    For ``x ~ N(y mu, I)`` with ``||mu|| = s`` the Bayes classifier (also the eps-robust one, since
    the covariance is isotropic) has accuracy ``Phi(s)`` and expected normalised margin over correct
    points ``B(Phi(s)) = 1 + phi(s) / (Phi(s) s)``.

    Example:
        >>> ref = reference_curve()
        >>> round(ref.accuracy[9], 4), round(ref.margin[9], 4)      # s = 1.0
        (0.8413, 1.2876)
    """
    seps = _float_tuple("separations", separations, low=0.0, low_open=True, high=math.inf,
                        high_open=True, increasing=True)
    grid = _float_tuple("a_grid", a_grid, low=0.5, low_open=True, high=1.0, high_open=False,
                        increasing=True)
    s = np.asarray(seps)
    acc = stats.norm.cdf(s)
    mar = np.asarray(gm.margin_from_separation(s), dtype=np.float64).reshape(-1)
    e = expected_bound_curve(acc, mar, grid)
    return ReferenceCurve(separations=seps, accuracy=tuple(map(float, acc)), margin=tuple(map(float, mar)),
                          a_grid=grid, expected_bound=tuple(map(float, e)))


# ----------------------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# evaluation result
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynBenchResult:
    """Per-separation accuracy / normalised margin of the eps-robust Bayes probes of one encoder.

    ``accuracy[i][k]`` and ``margin[i][k]`` belong to ``eps[i]`` and ``separations[k]``; ``gamma`` is
    the ridge parameter of each robust classifier, ``mu_norm[k]`` the feature-space ``||mu~||`` (on the
    retained eigenspace), ``rank[k]`` the number of covariance directions kept. The remaining fields
    echo the inputs. A margin is 0.0 where no test point was classified correctly (then the accuracy
    is 0 and the point contributes nothing to ``E``).
    """

    name: str
    input_shape: tuple[int, ...]
    layer: str | None
    eps: tuple[float, ...]
    separations: tuple[float, ...]
    a_grid: tuple[float, ...]
    n_train: int
    n_test: int
    seed: int
    batch_size: int
    pixel_mapping: dict
    eig_tol: float
    shrinkage: float
    flatten: bool
    feature_dim: int
    accuracy: tuple[tuple[float, ...], ...]
    margin: tuple[tuple[float, ...], ...]
    gamma: tuple[tuple[float, ...], ...]
    mu_norm: tuple[float, ...]
    rank: tuple[int, ...]
    time_s: float
    reference: ReferenceCurve = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "reference", reference_curve(self.separations, self.a_grid))

    # -- curves and scores ---------------------------------------------------------------------
    def _eps_index(self, eps: float) -> int:
        for i, e in enumerate(self.eps):
            if abs(e - float(eps)) <= 1e-12:
                return i
        raise ValueError(f"eps={eps!r} was not evaluated; available: {list(self.eps)}")

    def expected_bound(self, eps: float | None = 0.0) -> np.ndarray:
        """``E(a_t)`` on ``a_grid`` for the representation at ``eps`` (``eps=None``: the raw-data curve)."""
        if eps is None:
            return np.asarray(self.reference.expected_bound)
        i = self._eps_index(eps)
        return expected_bound_curve(self.accuracy[i], self.margin[i], self.a_grid)

    def score(self, eps: float = 0.0, a_t: float = 0.7) -> float:
        """SynBench score ``sum_{a >= a_t} E_rep(a) / sum_{a >= a_t} E_raw(a)`` at this ``eps``."""
        return synbench_score(self.expected_bound(eps), self.reference.expected_bound, self.a_grid, a_t)

    def valid_thresholds(self, thresholds: Sequence[float] = SCORE_THRESHOLDS) -> tuple[float, ...]:
        """The thresholds at which the score is defined: inside ``a_grid`` with a non-zero raw curve above."""
        raw = np.asarray(self.reference.expected_bound)
        grid = np.asarray(self.a_grid)
        return tuple(float(a) for a in thresholds
                     if grid[0] - 1e-12 <= a <= grid[-1] + 1e-12 and raw[grid >= a - 1e-12].sum() > 0)

    def scores(self, thresholds: Sequence[float] | None = None) -> dict[float, dict[float, float]]:
        """``{eps: {a_t: score}}`` for every evaluated eps; default thresholds: the official ones
        (:data:`SCORE_THRESHOLDS`) that lie inside this result's grid."""
        ths = self.valid_thresholds() if thresholds is None else tuple(float(a) for a in thresholds)
        return {e: {a: self.score(e, a) for a in ths} for e in self.eps}

    def _default_a_t(self) -> float:
        valid = self.valid_thresholds((0.7,)) or self.valid_thresholds(self.a_grid)
        if not valid:
            raise ValueError("no threshold of a_grid has a non-zero raw-data curve above it")
        return valid[0]

    def best_eps(self, a_t: float = 0.7) -> float:
        """The evaluated eps with the highest score at ``a_t`` (SynBench's recommendation for robust probing;
        ties go to the smaller eps)."""
        vals = [self.score(e, a_t) for e in self.eps]
        best = max(vals)
        return min(e for e, v in zip(self.eps, vals) if v == best)

    # -- presentation --------------------------------------------------------------------------
    def summary(self, thresholds: Sequence[float] | None = None) -> str:
        ths = self.valid_thresholds() if thresholds is None else tuple(float(a) for a in thresholds)
        a_rec = self._default_a_t()
        lines = [f"SynBench: {self.name}  (input {self.input_shape}, layer {self.layer or 'output'}, "
                 f"{self.feature_dim} features)",
                 f"  {len(self.separations)} separations in [{self.separations[0]:g}, {self.separations[-1]:g}], "
                 f"n_train={self.n_train}, n_test={self.n_test}, seed={self.seed}, "
                 f"pixel mapping {self.pixel_mapping['name']}, {self.time_s:.1f} s",
                 "  score(eps, a_T) = area under E_rep / area under E_raw for a_t >= a_T:",
                 "  " + "eps".rjust(6) + "".join(f"{a:>7.2f}" for a in ths)]
        for e in self.eps:
            lines.append("  " + f"{e:6.3g}" + "".join(f"{self.score(e, a):7.3f}" for a in ths))
        lines.append(f"  recommended eps (best score at a_T={a_rec:g}): {self.best_eps(a_rec):g}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = {"format": _FORMAT}
        for f in fields(self):
            if f.name == "reference":
                continue
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = json.loads(json.dumps(v))  # nested tuples -> lists
            d[f.name] = v
        d["scores"] = {str(e): {str(a): s for a, s in row.items()} for e, row in self.scores().items()}
        d["raw"] = self.reference.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SynBenchResult":
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a SynBench result (format {d.get('format')!r}, expected {_FORMAT!r})")
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "reference":
                continue
            if f.name not in d:
                raise ValueError(f"SynBench result is missing the field {f.name!r}")
            v = d[f.name]
            if f.name in ("accuracy", "margin", "gamma"):
                v = tuple(tuple(float(x) for x in row) for row in v)
            elif f.name in ("input_shape", "rank"):
                v = tuple(int(x) for x in v)
            elif f.name in ("eps", "separations", "a_grid", "mu_norm"):
                v = tuple(float(x) for x in v)
            kw[f.name] = v
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (``inf`` gammas of trivial classifiers are written as ``Infinity``)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> "SynBenchResult":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, path: str | Path) -> Path:
        """PNG: left, ``E(a_t)`` of the raw data and of the representation per eps; right, accuracy vs s."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 4.2), dpi=110)
        ax, ax2 = fig.subplots(1, 2)
        grid = np.asarray(self.a_grid)
        ax.plot(grid, self.reference.expected_bound, color="crimson", lw=2, label="raw data (Bayes)")
        ax2.plot(self.separations, self.reference.accuracy, color="crimson", lw=2, label="raw data: Phi(s)")
        for i, e in enumerate(self.eps):
            a_rec = self._default_a_t()
            ax.plot(grid, self.expected_bound(e),
                    label=f"representation, eps={e:g} (score@{a_rec:g} {self.score(e, a_rec):.3f})")
            ax2.plot(self.separations, self.accuracy[i], ".-", label=f"representation, eps={e:g}")
        ax.set_xlabel("threshold accuracy $a_t$")
        ax.set_ylabel("expected normalised margin $E(a_t)$")
        ax.set_title(f"SynBench: {self.name}")
        ax.grid(True, ls="-.", alpha=0.5)
        ax.legend(fontsize=8)
        ax2.set_xlabel("separation s = ||mu||")
        ax2.set_ylabel("test accuracy")
        ax2.grid(True, ls="-.", alpha=0.5)
        ax2.legend(fontsize=8)
        fig.tight_layout()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, format="png")
        return p


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------
def evaluate(encoder: nn.Module, input_shape: Sequence[int], eps: Sequence[float] = (0.0,), *,
             n_train: int = 2048, n_test: int = 2048, separations: Sequence[float] = DEFAULT_SEPARATIONS,
             a_grid: Sequence[float] = DEFAULT_A_GRID, batch_size: int = 512, seed: int = 0,
             layer: str | None = None, flatten: bool = False,
             pixel_mapping: str | PixelMapping = "official", eig_tol: float = 1e-6, shrinkage: float = 0.0,
             device: str | torch.device | None = None, name: str | None = None,
             verbose: bool = True) -> SynBenchResult:
    """Run SynBench on an encoder (see the module docstring for the protocol).

    Args:
        encoder: an ``nn.Module`` mapping ``(B, *input_shape)`` to features ``(B, F)`` (or use ``layer``).
            It is moved to ``device`` when one is given; it runs in eval mode without gradients (its mode is
            restored afterwards).
        input_shape: the encoder's input shape without the batch axis, e.g. ``(1, 28, 28)``.
        eps: relative l2 budgets in [0, 1): the feature-space budget is ``eps * ||mu~||``.
        n_train, n_test: synthetic samples per separation for fitting / testing (official: 2048 each).
        separations: increasing ``s = ||mu|| > 0`` values (official 0.1..4.9 step 0.1).
        a_grid: increasing threshold accuracies in (0.5, 1] (official: 100 points in [0.6, 1]).
        batch_size: encoder batch size (does not change the result).
        seed: all synthetic data derive from it (see :func:`sample_mixture`).
        layer, flatten: where features come from (see :class:`FeatureExtractor`).
        pixel_mapping: a :data:`PIXEL_MAPPINGS` name or a :class:`PixelMapping`.
        eig_tol: covariance eigenvalues ``<= eig_tol * largest`` are dropped (the probe works on the
            numerically supported eigenspace; a near-singular covariance is therefore stable).
        shrinkage: optional covariance shrinkage towards ``tr(Sigma)/p I``, in [0, 1].
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (:func:`certify.devices.resolve_device`): where the encoder
            runs (it is moved there); default: where its parameters are.
        name: label used in summaries/plots (default: the encoder's class name).
        verbose: tqdm progress bar (only on a TTY) and INFO logs.

    Returns:
        :class:`SynBenchResult`; ``result.score(eps, a_t)`` is the SynBench score.

    Example:
        >>> enc = torch.nn.Flatten()
        >>> res = evaluate(enc, (1, 4, 4), (0.0,), n_train=512, n_test=512, verbose=False)
        >>> 0.85 < res.score(0.0, 0.7) < 1.15
        True
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    shape = _input_shape(input_shape)
    eps_t = _float_tuple("eps", eps, low=0.0, low_open=False, high=1.0, high_open=True, increasing=False)
    seps = _float_tuple("separations", separations, low=0.0, low_open=True, high=math.inf,
                        high_open=True, increasing=True)
    grid = _float_tuple("a_grid", a_grid, low=0.5, low_open=True, high=1.0, high_open=False, increasing=True)
    n_train = check_int("n_train", n_train, 8)
    n_test = check_int("n_test", n_test, 1)
    batch_size = check_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    mapping = _pixel_mapping(pixel_mapping)
    if mapping.mean is not None and len(mapping.mean) != shape[0]:
        raise ValueError(f"pixel_mapping {mapping.name!r} normalises {len(mapping.mean)} channels but "
                         f"input_shape {shape} has {shape[0]}")
    # validate the covariance options once, up front
    gm.covariance_spectrum(np.eye(1), eig_tol=eig_tol, shrinkage=shrinkage)
    dev = _device(encoder, device)
    dtype = next((p.dtype for p in encoder.parameters() if p.is_floating_point()), torch.float32)
    label = name or type(encoder).__name__

    acc = np.zeros((len(eps_t), len(seps)))
    mar = np.zeros((len(eps_t), len(seps)))
    gam = np.zeros((len(eps_t), len(seps)))
    mu_norm = np.zeros(len(seps))
    rank = np.zeros(len(seps), dtype=int)
    feature_dim = -1
    t0 = time.perf_counter()
    with FeatureExtractor(encoder, layer=layer, flatten=flatten) as fx:
        for k in track(range(len(seps)), total=len(seps), enabled=verbose, desc="SynBench separations"):
            s = seps[k]
            h_tr, y_tr = _encode_split(fx, s, shape, n_train, int(seed), 0, mapping, batch_size, dev, dtype)
            h_te, y_te = _encode_split(fx, s, shape, n_test, int(seed), 1, mapping, batch_size, dev, dtype)
            feature_dim = h_tr.shape[1]
            try:
                m_pos, m_neg, cov = gm.pooled_moments(h_tr, y_tr)
                spec = gm.covariance_spectrum(cov, eig_tol=eig_tol, shrinkage=shrinkage)
            except ValueError as exc:
                raise ValueError(f"separation s={s:g}: cannot fit the Gaussian model of the features ({exc})") from None
            mu_t = 0.5 * (m_pos - m_neg)
            center = 0.5 * (m_pos + m_neg)
            mn = float(np.linalg.norm(spec.vectors.T @ mu_t))
            if mn == 0.0:
                raise ValueError(f"separation s={s:g}: the class means of the features coincide on the "
                                 "supported eigenspace; the representation carries no class signal")
            mu_norm[k] = mn
            rank[k] = spec.rank
            family = gm.robust_bayes_family(mu_t, spec, [e * mn for e in eps_t])
            centred = h_te - center
            for i, clf in enumerate(family):
                gam[i, k] = clf.gamma
                if clf.trivial:  # cannot happen for eps < 1, kept for safety of the formulas
                    acc[i, k], mar[i, k] = 0.0, 0.0
                    continue
                margin = centred @ clf.w
                correct = ((margin > 0) & (y_te > 0)) | ((margin < 0) & (y_te < 0))
                acc[i, k] = float(correct.mean())
                scale = float(clf.w @ mu_t)
                mar[i, k] = float(np.abs(margin[correct]).mean() / scale) if correct.any() else 0.0
            logger.debug("s=%.2f acc=%s rank=%d", s, acc[:, k], spec.rank)
    elapsed = time.perf_counter() - t0
    result = SynBenchResult(
        name=label, input_shape=shape, layer=layer, eps=eps_t, separations=seps, a_grid=grid,
        n_train=n_train, n_test=n_test, seed=int(seed), batch_size=batch_size,
        pixel_mapping=mapping.to_dict(), eig_tol=float(eig_tol), shrinkage=float(shrinkage),
        flatten=bool(flatten), feature_dim=int(feature_dim),
        accuracy=tuple(tuple(map(float, r)) for r in acc), margin=tuple(tuple(map(float, r)) for r in mar),
        gamma=tuple(tuple(map(float, r)) for r in gam), mu_norm=tuple(map(float, mu_norm)),
        rank=tuple(int(r) for r in rank), time_s=float(elapsed))
    if verbose:
        logger.info("SynBench %s: score(eps=%g, a_t=0.7) = %.4f in %.1f s", label, eps_t[0],
                    result.score(eps_t[0], 0.7), elapsed)
    return result


# ----------------------------------------------------------------------------------------------
# eps-robust linear probing on a real dataset
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RobustProbeResult:
    """Clean and robust accuracy of eps-robust linear probes trained on a real dataset's features.

    ``eps`` are relative budgets; the absolute feature-space radius is ``eps * scale`` with ``scale``
    the mean over class pairs of half the distance between class means of the training features
    (for two classes exactly SynBench's ``||mu~||``). ``clean_accuracy[i]`` is the test accuracy of
    the probe trained at ``eps[i]``; ``robust_accuracy[i][j]`` its exact test accuracy under
    feature-space l2 attacks of radius ``eps[j] * scale``. ``recommended_eps`` is SynBench's choice
    (the evaluated eps with the best score at ``a_t``) when a SynBench result was given.
    """

    name: str
    layer: str | None
    eps: tuple[float, ...]
    scale: float
    clean_accuracy: tuple[float, ...]
    robust_accuracy: tuple[tuple[float, ...], ...]
    train_clean_accuracy: tuple[float, ...]
    recommended_eps: float | None
    a_t: float
    num_classes: int
    n_train: int
    n_test: int
    feature_dim: int
    weight_decay: float
    seed: int
    converged: tuple[bool, ...]
    time_s: float

    @property
    def eps_abs(self) -> tuple[float, ...]:
        return tuple(e * self.scale for e in self.eps)

    def robust_at_own_eps(self) -> tuple[float, ...]:
        """Robust accuracy of each probe at the radius it was trained for."""
        return tuple(self.robust_accuracy[i][i] for i in range(len(self.eps)))

    def summary(self) -> str:
        head = "train eps".rjust(10) + "  clean" + "".join(f"  rob@{e:<5g}" for e in self.eps)
        lines = [f"eps-robust linear probing: {self.name} (layer {self.layer or 'output'}, {self.feature_dim} "
                 f"features, {self.num_classes} classes, {self.n_train} train / {self.n_test} test)",
                 f"  feature-space l2 radius = eps x {self.scale:.4g} (mean half distance between class means)",
                 "  " + head]
        for i, e in enumerate(self.eps):
            mark = " *" if self.recommended_eps is not None and abs(e - self.recommended_eps) < 1e-12 else "  "
            lines.append("  " + f"{e:>8g}{mark}" + f"  {self.clean_accuracy[i]:.3f}" +
                         "".join(f"  {r:9.3f}" for r in self.robust_accuracy[i]))
        if self.recommended_eps is not None:
            lines.append(f"  * SynBench-recommended eps (best score at a_T={self.a_t:g}): {self.recommended_eps:g}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = {f.name: json.loads(json.dumps(getattr(self, f.name))) for f in fields(self)}
        d["eps_abs"] = list(self.eps_abs)
        return d


def _dataset_xy(data, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    elif hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
    else:
        raise TypeError(f"{name} must be a dataset with tensors .x and .y (certify.data.ImageDataset) "
                        "or an (x, y) pair")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: x and y must be tensors")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0 or y.ndim != 1:
        raise ValueError(f"{name}: x (N, ...) and y (N,) must be non-empty with equal N, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return x, y.to(torch.int64)


def robust_probe(encoder: nn.Module, train, test, eps: Sequence[float] = (0.0, 0.1, 0.2), *,
                 synbench: SynBenchResult | None = None, a_t: float = 0.7, layer: str | None = None,
                 flatten: bool = False, batch_size: int = 512, weight_decay: float = 1e-4, max_iter: int = 2000,
                 seed: int = 0, device: str | torch.device | None = None, name: str | None = None,
                 verbose: bool = True) -> RobustProbeResult:
    """eps-robust linear probing of a frozen representation on a labelled dataset.

    Features are extracted once (as in :func:`evaluate`), then for every eps a linear probe is
    trained by feature-space adversarial training with the exact worst-case-margin loss of
    :mod:`estimators.robust_linear` (for two classes the closed-form inner maximum
    ``loss(y w^T h - eps' ||w||)``; for more classes its sound pairwise relaxation) and evaluated
    with exact robust accuracy. If ``synbench`` is given, its recommended eps
    (:meth:`SynBenchResult.best_eps` at ``a_t``) is added to ``eps`` and marked in the result.

    Args:
        train, test: :class:`certify.data.ImageDataset` (or ``(x, y)`` tensor pairs) with integer labels.
        eps: relative radii >= 0 (multiplied by the mean half distance between class means).
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    eps_t = list(_float_tuple("eps", eps, low=0.0, low_open=False, high=math.inf, high_open=True, increasing=False))
    recommended = None
    if synbench is not None:
        if not isinstance(synbench, SynBenchResult):
            raise TypeError("synbench must be a SynBenchResult")
        recommended = synbench.best_eps(a_t)
        if all(abs(recommended - e) > 1e-12 for e in eps_t):
            eps_t.append(recommended)
    eps_t = sorted(eps_t)
    x_tr, y_tr = _dataset_xy(train, "train")
    x_te, y_te = _dataset_xy(test, "test")
    t0 = time.perf_counter()
    h_tr = extract_features(encoder, x_tr, layer=layer, flatten=flatten, batch_size=batch_size, device=device,
                            verbose=verbose)
    h_te = extract_features(encoder, x_te, layer=layer, flatten=flatten, batch_size=batch_size, device=device,
                            verbose=verbose)
    classes = torch.unique(y_tr)
    if classes.numel() < 2:
        raise ValueError("train must contain at least two classes")
    num_classes = int(max(int(y_tr.max()), int(y_te.max())) + 1)
    means = torch.stack([h_tr[y_tr == c].mean(0) for c in classes])
    iu = torch.triu_indices(len(classes), len(classes), 1)
    scale = float((means[iu[0]] - means[iu[1]]).norm(dim=1).mean() / 2)
    if scale <= 0:
        raise ValueError("the class means of the training features coincide; cannot set a relative eps")
    clean, robust, train_clean, conv = [], [], [], []
    for e in track(eps_t, total=len(eps_t), enabled=verbose, desc="robust probes"):
        probe = rl.train_robust_probe(h_tr, y_tr, num_classes=num_classes, eps=e * scale,
                                      weight_decay=weight_decay, max_iter=max_iter, seed=seed)
        conv.append(probe.converged)
        train_clean.append(rl.probe_accuracy(probe, h_tr, y_tr, 0.0)[0])
        clean.append(rl.probe_accuracy(probe, h_te, y_te, 0.0)[0])
        robust.append(tuple(rl.probe_accuracy(probe, h_te, y_te, a * scale)[1] for a in eps_t))
    return RobustProbeResult(
        name=name or type(encoder).__name__, layer=layer, eps=tuple(eps_t), scale=scale,
        clean_accuracy=tuple(clean), robust_accuracy=tuple(robust), train_clean_accuracy=tuple(train_clean),
        recommended_eps=recommended, a_t=float(a_t), num_classes=num_classes, n_train=int(x_tr.shape[0]),
        n_test=int(x_te.shape[0]), feature_dim=int(h_tr.shape[1]), weight_decay=float(weight_decay),
        seed=int(seed), converged=tuple(conv), time_s=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# compare a certified-radius report with the Gaussian-mixture reference
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynBenchComparison:
    """A report's certified-accuracy curve next to the Gaussian-mixture reference (see :func:`compare`).

    ``gap_area`` = ``integral (reference - certified) dr`` over ``radii`` (trapezoid rule, pixel
    units x accuracy); positive where the model certifies less than the reference.
    ``gap_area_positive`` / ``gap_area_negative`` split it by sign; ``max_gap`` is the largest
    ``reference - certified`` and ``radius_at_max_gap`` where it occurs.
    """

    name: str
    sigma: float
    clean_accuracy: float
    mu_norm: float
    norm: str
    radii: tuple[float, ...]
    reference: tuple[float, ...]
    certified: tuple[float, ...]
    gap_area: float
    gap_area_positive: float
    gap_area_negative: float
    max_gap: float
    radius_at_max_gap: float

    def summary(self) -> str:
        return "\n".join([
            f"SynBench reference vs certified accuracy: {self.name}",
            f"  Gaussian mixture N(+-mu, sigma^2 I), sigma = {self.sigma:g} (pixel units), Bayes accuracy = "
            f"clean accuracy {self.clean_accuracy:.4f} => ||mu|| = {self.mu_norm:.4g}",
            f"  reference(r) = Phi((||mu|| - r)/sigma) over r in [{self.radii[0]:g}, {self.radii[-1]:g}] ({self.norm})",
            f"  gap area (reference - certified) = {self.gap_area:.4g}  (+{self.gap_area_positive:.4g} / "
            f"-{self.gap_area_negative:.4g})",
            f"  largest gap {self.max_gap:.4f} at r = {self.radius_at_max_gap:.4g}",
        ])

    def to_dict(self) -> dict:
        return {f.name: json.loads(json.dumps(getattr(self, f.name))) for f in fields(self)}

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1))
        return p

    def plot(self, path: str | Path) -> Path:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 4.2), dpi=110)
        ax = fig.subplots()
        r = np.asarray(self.radii)
        ax.plot(r, self.reference, color="crimson", lw=2,
                label=f"Gaussian mixture, Bayes acc {self.clean_accuracy:.3f}, sigma={self.sigma:g}")
        ax.plot(r, self.certified, color="navy", lw=2, label=f"{self.name}: certified accuracy")
        ax.fill_between(r, self.certified, self.reference, color="grey", alpha=0.2,
                        label=f"gap area {self.gap_area:.3g}")
        ax.set_xlabel(f"{self.norm} radius (pixel units)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(True, ls="-.", alpha=0.5)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, format="png")
        return p


def _report_label(report) -> str:
    label = getattr(report, "label_text", None)
    return str(label()) if callable(label) else type(report).__name__


def compare(radius_report, *, sigma: float = 1.0, radii: Sequence[float] | None = None,
            clean_accuracy: float | None = None, norm: str = "l2", num_radii: int = 201,
            name: str | None = None) -> SynBenchComparison:
    """Compare a certified-accuracy curve with the best l2-robust accuracy of a matched Gaussian mixture.

    Reference: the symmetric mixture ``N(+-mu, sigma^2 I)`` whose Bayes accuracy ``Phi(||mu||/sigma)``
    equals the model's clean accuracy ``a``, i.e. ``||mu|| = sigma Phi^-1(a)``, and
    ``reference(r) = Phi((||mu|| - r)/sigma) = Phi(Phi^-1(a) - r/sigma)``. For ``r <= ||mu||`` this is
    the best l2-robust accuracy *any* classifier can have on that mixture (Bhagoji et al. 2019;
    Dobriban et al. 2020; see :func:`estimators.gaussian_mixture.l2_robust_accuracy`); it is also
    exactly the certified-accuracy curve randomized smoothing gives the mixture's Bayes classifier
    (a smoothed linear classifier is itself and Cohen's radius with exact ``p_A`` is the distance to
    its boundary). Beyond ``||mu||`` a balanced *binary* mixture's optimum is the constant
    classifier's 1/2, which has no multi-class analogue; the curve drawn there is the Bayes rule's.
    The reference is a yardstick, not a bound on the model: real data need not be Gaussian.

    Noise-scale convention (pixel units): ``sigma`` is the mixture's per-pixel noise standard
    deviation, default **1.0 pixel unit**, the scale of SynBench's own synthetic data: :func:`evaluate`
    draws ``x | y ~ N(y mu, I)`` and (with the default ``"official"`` mapping, a pure offset) feeds it
    to the model in [0, 1]-pixel units, so the reference is exactly SynBench's synthetic task at
    separation ``s = Phi^-1(a)``, and its radii are in the same pixel units as the report's.
    ``sigma`` is *not* the smoothing sigma; passing the smoothing sigma instead gives a different
    reading ("a task whose errors all come from isotropic noise at the smoothing scale"), which for
    typical models lies below their certified curves (e.g. Cohen et al.'s CIFAR-10 sigma=0.25 log).
    The reference depends on the radius only through ``r/sigma``: another sigma rescales the radius
    axis and nothing else.

    Args:
        radius_report: a :class:`certify.reports.RadiusReport` (anything with
            ``certified_accuracy(radii, norm=...)`` and ``clean_accuracy``).
        sigma: the mixture's noise scale in pixel units (> 0).
        radii: radius grid (>= 0, increasing); default ``num_radii`` points on
            ``[0, max(||mu||, largest finite radius in the report)]``.
        clean_accuracy: override the report's clean accuracy; must be in (0.5, 1) for a binary
            mixture to match it.
        norm: only ``"l2"`` (the mixture reference is an l2 statement).

    Example (Cohen et al.'s published CIFAR-10 log, sigma = 0.25: clean accuracy 0.748)::

        rep = RadiusReport.from_tsv("cohen_cifar10_resnet110_noise0.25_sigma0.25.tsv", sigma=0.25)
        cmp = compare(rep)                # mixture with unit pixel noise: ||mu|| = Phi^-1(0.748) = 0.668
        cmp.plot("compare.png"); print(cmp.summary())   # gap area 0.127 over r in [0, 0.98]
    """
    if norm != "l2":
        raise ValueError(f"norm must be 'l2' (the Gaussian-mixture reference is an l2 result), got {norm!r}")
    if not hasattr(radius_report, "certified_accuracy"):
        raise TypeError("radius_report must provide certified_accuracy(radii, norm=...) "
                        "(a certify.reports.RadiusReport)")
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise TypeError(f"sigma must be a number, got {sigma!r}") from None
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if clean_accuracy is None:
        clean_accuracy = radius_report.clean_accuracy
        if callable(clean_accuracy):
            clean_accuracy = clean_accuracy()
    a = float(clean_accuracy)
    if not (0.5 < a < 1.0):
        raise ValueError(f"clean_accuracy must be in (0.5, 1) for a symmetric binary Gaussian mixture to have it "
                         f"as Bayes accuracy, got {a!r}")
    mu_norm = sigma * float(stats.norm.ppf(a))
    if radii is None:
        num_radii = check_int("num_radii", num_radii, 2)
        r_max = mu_norm
        frame = getattr(radius_report, "to_frame", None)
        if callable(frame):
            col = frame()["radius"].to_numpy(dtype=np.float64)
            col = col[np.isfinite(col)]
            if col.size:
                r_max = max(r_max, float(col.max()))
        r = np.linspace(0.0, r_max, num_radii)
    else:
        r = np.asarray(_float_tuple("radii", radii, low=0.0, low_open=False, high=math.inf, high_open=True,
                                    increasing=True))
    ref = stats.norm.cdf((mu_norm - r) / sigma)
    cert = np.asarray(radius_report.certified_accuracy(r, norm=norm), dtype=np.float64).reshape(-1)
    if cert.shape != r.shape or not np.all(np.isfinite(cert)):
        raise ValueError("radius_report.certified_accuracy returned a curve of the wrong shape or non-finite values")
    diff = ref - cert
    trap = getattr(np, "trapezoid", None) or np.trapz
    pos, neg = np.maximum(diff, 0), np.maximum(-diff, 0)
    k = int(np.argmax(diff))
    return SynBenchComparison(
        name=name or _report_label(radius_report), sigma=sigma, clean_accuracy=a, mu_norm=mu_norm, norm=norm,
        radii=tuple(map(float, r)), reference=tuple(map(float, ref)), certified=tuple(map(float, cert)),
        gap_area=float(trap(diff, r)) if r.size > 1 else 0.0,
        gap_area_positive=float(trap(pos, r)) if r.size > 1 else 0.0,
        gap_area_negative=float(trap(neg, r)) if r.size > 1 else 0.0,
        max_gap=float(diff[k]), radius_at_max_gap=float(r[k]))
