"""Offline datasets as tensors in [0, 1].

Every loader returns an :class:`ImageDataset`: ``x`` is a float32 tensor of shape (N, C, H, W) with
pixel values in [0, 1] (normalisation belongs inside the model, so noise and radii are in pixel
units) and ``y`` an int64 tensor of labels. Nothing is downloaded; the sources are

* ``"fashion-mnist"`` (alias ``"fmnist"``): the Debian package ``dataset-fashion-mnist``
  (IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` under
  ``/usr/share/datasets/fashion-mnist``; override with ``root=`` or the environment variable
  ``CERTIFY_DATA_DIR``). 60,000 train / 10,000 test images of shape 1x28x28.
* ``"digits"``: scikit-learn's bundled 8x8 digits (1,797 images, values 0..16 scaled to [0, 1]),
  split once into 1,437 train / 360 test images by a fixed permutation
  (``numpy.random.RandomState(0)``, whose stream numpy keeps stable across versions).
* ``"color-fmnist"``: Fashion-MNIST padded to 3x32x32 and colourised deterministically (see
  :func:`colourise`), so that hue, saturation and lightness perturbations act on real colours.
* a path to a ``.npz`` file with arrays ``x`` (N, C, H, W) or (N, H, W), float in [0, 1] or uint8
  0..255, and ``y`` (N,) integer labels (optionally ``classes``); per-split arrays ``x_<split>`` /
  ``y_<split>`` are used when present.
* a path to an image folder in torchvision ``ImageFolder`` layout (``root/<class>/<image>``, or
  ``root/<split>/<class>/<image>``); all images must have the same size. Class folders named by integers
  keep that integer as their label, other names are numbered in sorted order (``class_to_idx``).

Decoded arrays are cached in-process only; nothing is written to disk.

Example::

    >>> from certify.data import load_dataset
    >>> ds = load_dataset("digits", split="test")
    >>> ds.x.shape, ds.x.dtype, len(ds.classes)
    (torch.Size([360, 1, 8, 8]), torch.float32, 10)
"""
from __future__ import annotations

import functools
import gzip
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "ImageDataset",
    "load_dataset",
    "available_datasets",
    "fashion_mnist_dir",
    "colourise",
    "FMNIST_CLASSES",
    "DEFAULT_FMNIST_DIR",
]

DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATA_DIR_ENV = "CERTIFY_DATA_DIR"
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGITS_CLASSES = tuple(str(i) for i in range(10))
DIGITS_N_TEST = 360
DIGITS_SPLIT_SEED = 0
# seeds of the colour draws of color-fmnist, one per split (fixed: the dataset is part of the contract)
COLOR_SEEDS = {"train": 20_240_101, "test": 20_240_102}
SPLITS = ("train", "test")
_ALIASES = {"fashion-mnist": "fashion-mnist", "fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
            "digits": "digits", "color-fmnist": "color-fmnist", "color_fmnist": "color-fmnist",
            "colour-fmnist": "color-fmnist"}
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image dataset held in memory.

    Attributes:
        name: where it came from (dataset name or path, plus split).
        x: float32 tensor (N, C, H, W), every value in [0, 1].
        y: int64 tensor (N,), values in ``0 .. len(classes) - 1``.
        classes: class names; ``len(classes)`` is the number of classes.
        files: for image folders, each example's file (relative to the folder), else empty.
        class_to_idx: for image folders, class folder name -> label, else empty.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...] = field(default=())
    files: tuple[str, ...] = field(default=())
    class_to_idx: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise TypeError("ImageDataset: x and y must be torch tensors")
        if self.x.dtype != torch.float32:
            raise TypeError(f"ImageDataset: x must be float32, got {self.x.dtype}")
        if self.x.dim() != 4:
            raise ValueError(f"ImageDataset: x must have shape (N, C, H, W), got {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"ImageDataset: y must be an int64 tensor of shape ({self.x.shape[0]},), "
                f"got {self.y.dtype} {tuple(self.y.shape)}"
            )
        _check_unit_range(self.x, "x")
        classes = tuple(str(c) for c in self.classes)
        if not classes:
            n = int(self.y.max().item()) + 1 if self.y.numel() else 0
            classes = tuple(str(i) for i in range(n))
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "files", tuple(str(f) for f in self.files))
        if self.files and len(self.files) != self.x.shape[0]:
            raise ValueError(f"ImageDataset: files must name every example ({self.x.shape[0]}), got {len(self.files)}")
        if self.y.numel() and (int(self.y.min()) < 0 or int(self.y.max()) >= len(classes)):
            raise ValueError(
                f"ImageDataset: labels must lie in 0..{len(classes) - 1} (len(classes)={len(classes)}), "
                f"got range {int(self.y.min())}..{int(self.y.max())}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"ImageDataset index must be an int, got {type(index).__name__} (use subset())")
        return self.x[index], int(self.y[index])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: Sequence[int] | torch.Tensor | slice | range) -> "ImageDataset":
        """A new dataset with the rows ``indices`` (a slice, range, sequence or index tensor)."""
        if isinstance(indices, slice):
            idx = torch.arange(len(self))[indices]
        else:
            idx = torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.long)
        if idx.dim() != 1:
            raise ValueError(f"subset: indices must be one-dimensional, got shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise ValueError(f"subset: indices must lie in 0..{len(self) - 1}")
        files = tuple(self.files[int(i)] for i in idx) if self.files else ()
        return ImageDataset(name=self.name, x=self.x[idx].clone(), y=self.y[idx].clone(), classes=self.classes,
                            files=files, class_to_idx=dict(self.class_to_idx))

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, shape={self.input_shape}, "
                f"classes={len(self.classes)})")


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (besides paths to ``.npz`` files and image folders)."""
    return ["fashion-mnist", "digits", "color-fmnist"]


def load_dataset(name_or_path: str | os.PathLike, *, split: str = "test",
                 root: str | os.PathLike | None = None, num_classes: int | None = None) -> ImageDataset:
    """Load a dataset by name (see :func:`available_datasets`) or from a ``.npz`` file / image folder.

    Args:
        name_or_path: ``"fashion-mnist"`` / ``"fmnist"``, ``"digits"``, ``"color-fmnist"``, or a path.
        split: ``"train"`` or ``"test"``.
        root: folder with the Fashion-MNIST IDX files (overrides ``$CERTIFY_DATA_DIR`` and the
            Debian default ``/usr/share/datasets/fashion-mnist``); only for the Fashion-MNIST based sets.
        num_classes: the classifier's number of classes: every label must lie in [0, num_classes) and the
            dataset gets that many classes (default: inferred from the data).

    Image folders: class folders whose names are all non-negative integers ("0", "3", "10") get that integer
    as their label; otherwise the names are sorted and numbered 0, 1, ... (a mix of both is refused). The
    mapping is ``dataset.class_to_idx`` and every example's file name is in ``dataset.files``.

    Raises:
        ValueError: unknown name/split, malformed data, values outside [0, 1], an empty set, labels outside
            [0, num_classes), images of different sizes.
        FileNotFoundError: data files missing (the message says what to install and where it looked).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 2):
        raise ValueError(f"num_classes must be an int >= 2 or None, got {num_classes!r}")
    dataset = _load_any(name_or_path, split, root)
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name} is empty (0 examples)")
    if num_classes is None:
        return dataset
    top = int(dataset.y.max())
    if top >= num_classes:
        raise ValueError(f"dataset {dataset.name}: labels must lie in [0, {num_classes}) for num_classes="
                         f"{num_classes}, got a label {top}")
    if len(dataset.classes) > num_classes:
        raise ValueError(f"dataset {dataset.name} names {len(dataset.classes)} classes, more than num_classes="
                         f"{num_classes}")
    classes = dataset.classes + tuple(str(i) for i in range(len(dataset.classes), num_classes))
    return ImageDataset(name=dataset.name, x=dataset.x, y=dataset.y, classes=classes, files=dataset.files,
                        class_to_idx=dict(dataset.class_to_idx))


def _load_any(name_or_path: str | os.PathLike, split: str, root: str | os.PathLike | None) -> ImageDataset:
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a dataset name or a path, got {type(name_or_path).__name__}")
    key = _ALIASES.get(name_or_path.strip().lower())
    if key is not None:
        if root is not None and key == "digits":
            raise ValueError("root= applies to the Fashion-MNIST based datasets only; digits is bundled with "
                             "scikit-learn")
        if key == "fashion-mnist":
            return _load_fmnist(split, root)
        if key == "digits":
            return _load_digits(split)
        return _load_color_fmnist(split, root)
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"dataset file not found: {path}")
        return _load_npz(path, split)
    if path.is_dir():
        return _load_image_folder(path, split)
    raise ValueError(
        f"unknown dataset {name_or_path!r}: use one of {available_datasets()} (or alias 'fmnist'), a path to a "
        f".npz file with arrays x and y, or an image folder (root/<class>/<image>)"
    )


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files from the Debian package)
# --------------------------------------------------------------------------------------------------

def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder searched for the Fashion-MNIST IDX files: ``root``, else ``$CERTIFY_DATA_DIR``, else
    ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path(DEFAULT_FMNIST_DIR)


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}.gz not found in {folder}. Install the Debian package with "
        f"'sudo apt-get install dataset-fashion-mnist' (files go to {DEFAULT_FMNIST_DIR}), or point "
        f"root= / ${DATA_DIR_ENV} at a folder holding train-images-idx3-ubyte.gz, "
        f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz."
    )


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    arr = parse_idx(data, source=path)
    arr.setflags(write=False)
    return arr


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a read-only numpy array (cached in-process)."""
    p = Path(path)
    st = p.stat()
    return _read_idx_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode the IDX format (LeCun's MNIST layout): 2 zero bytes, a type code, the number of
    dimensions, then that many big-endian uint32 sizes, then the data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{source}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{source}: IDX payload has {len(data) - header} bytes, header says {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _fmnist_arrays(split: str, root: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray, str]:
    folder = fashion_mnist_dir(root)
    prefix = "train" if split == "train" else "t10k"
    images_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} "
                         f"{images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels_path}: expected {images.shape[0]} labels, got shape {labels.shape}")
    if labels.size and labels.max() >= len(FMNIST_CLASSES):
        raise ValueError(f"{labels_path}: labels must lie in 0..9")
    return images, labels, str(folder)


def _load_fmnist(split: str, root: str | os.PathLike | None) -> ImageDataset:
    images, labels, _ = _fmnist_arrays(split, root)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(name=f"fashion-mnist:{split}", x=x, y=y, classes=FMNIST_CLASSES)


# --------------------------------------------------------------------------------------------------
# colourised Fashion-MNIST
# --------------------------------------------------------------------------------------------------

def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1]; returns (..., 3)."""
    k = (np.stack([5.0, 3.0, 1.0], axis=-1) + h[..., None] * 6.0) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def colourise(gray: np.ndarray, seed: int) -> np.ndarray:
    """Colourise grayscale images deterministically.

    Each image ``i`` gets an object colour (hue uniform in [0, 1), saturation in [0.55, 1], value in
    [0.75, 1]) and a background colour (hue = object hue + 0.5 +/- 0.25, saturation in [0.3, 0.8],
    value in [0.1, 0.4]) drawn from ``numpy.random.Generator(PCG64(seed))``; pixel = (1 - g) * background
    + g * object, where g in [0, 1] is the grayscale intensity. Values stay in [0, 1] (a convex
    combination), and both foreground and background carry hue and saturation.

    Args:
        gray: (N, H, W) array with values in [0, 1].
        seed: seed of the colour draws.
    Returns:
        float32 array (N, 3, H, W) in [0, 1].
    """
    n = gray.shape[0]
    rng = np.random.Generator(np.random.PCG64(seed))
    draws = rng.random((n, 6))
    obj_h = draws[:, 0]
    obj = _hsv_to_rgb(obj_h, 0.55 + 0.45 * draws[:, 1], 0.75 + 0.25 * draws[:, 2])
    bg = _hsv_to_rgb((obj_h + 0.25 + 0.5 * draws[:, 3]) % 1.0, 0.3 + 0.5 * draws[:, 4], 0.1 + 0.3 * draws[:, 5])
    g = gray.astype(np.float32)[:, None, :, :]
    out = (1.0 - g) * bg.astype(np.float32)[:, :, None, None] + g * obj.astype(np.float32)[:, :, None, None]
    return np.clip(out, 0.0, 1.0, out=out)


def _load_color_fmnist(split: str, root: str | os.PathLike | None) -> ImageDataset:
    images, labels, _ = _fmnist_arrays(split, root)
    padded = np.zeros((images.shape[0], 32, 32), dtype=np.float32)
    padded[:, 2:30, 2:30] = images.astype(np.float32) / 255.0
    # quantise to 8 bits like a real colour image dataset (exactly representable values)
    rgb = np.rint(colourise(padded, COLOR_SEEDS[split]) * 255.0) / 255.0
    x = torch.from_numpy(rgb.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(name=f"color-fmnist:{split}", x=x, y=y, classes=FMNIST_CLASSES)


# --------------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _load_digits(split: str) -> ImageDataset:
    images, labels = _digits_arrays()
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(images.shape[0])
    idx = np.sort(perm[:DIGITS_N_TEST] if split == "test" else perm[DIGITS_N_TEST:])
    x = torch.from_numpy(images[idx].copy()).unsqueeze(1)
    y = torch.from_numpy(labels[idx].copy())
    return ImageDataset(name=f"digits:{split}", x=x, y=y, classes=DIGITS_CLASSES)


# --------------------------------------------------------------------------------------------------
# user data
# --------------------------------------------------------------------------------------------------

def _check_unit_range(x: torch.Tensor, what: str) -> None:
    if x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{what} must hold pixel values in [0, 1] (float) or 0..255 (uint8), got values in "
            f"[{lo:g}, {hi:g}]; normalisation belongs inside the model"
        )


def _images_to_tensor(x: np.ndarray, source: str) -> torch.Tensor:
    if x.dtype == np.uint8:
        arr = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        arr = x.astype(np.float32)
    else:
        raise ValueError(f"{source}: x must be float (values in [0, 1]) or uint8 (0..255), got dtype {x.dtype}")
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    if arr.ndim != 4:
        raise ValueError(f"{source}: x must have shape (N, C, H, W) or (N, H, W), got {x.shape}")
    if arr.shape[1] not in (1, 2, 3, 4) and arr.shape[-1] in (1, 3, 4):
        raise ValueError(f"{source}: x has shape {x.shape}, which looks channels-last (N, H, W, C); "
                         f"store it as (N, C, H, W), e.g. x.transpose(0, 3, 1, 2)")
    tensor = torch.from_numpy(np.ascontiguousarray(arr))
    _check_unit_range(tensor, f"{source}: x")
    return tensor


def _labels_to_tensor(y: np.ndarray, n: int, source: str) -> torch.Tensor:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{source}: y must have shape ({n},) to match x, got {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{source}: y must hold integer class labels")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{source}: y must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0, got {y.min()}")
    return torch.from_numpy(y.astype(np.int64))


def _open_npz(path: Path):
    import zipfile
    import zlib

    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npz archive (numpy.savez; truncated or another format?): "
                         f"{exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array, not an .npz archive with arrays x and y (numpy.savez)")
    return npz


def _load_npz(path: Path, split: str) -> ImageDataset:
    source = str(path)
    with _open_npz(path) as npz:
        keys = set(npz.files)
        if f"x_{split}" in keys and f"y_{split}" in keys:
            x_key, y_key = f"x_{split}", f"y_{split}"
        elif "x" in keys and "y" in keys:
            x_key, y_key = "x", "y"
        else:
            raise ValueError(f"{source}: expected arrays 'x' and 'y' (or 'x_{split}' and 'y_{split}'), "
                             f"found {sorted(keys)}")
        x = _images_to_tensor(npz[x_key], source)
        y = _labels_to_tensor(npz[y_key], x.shape[0], source)
        classes: tuple[str, ...] = ()
        if "classes" in keys:
            classes = tuple(str(c) for c in np.asarray(npz["classes"]).tolist())
    return ImageDataset(name=f"{source}:{x_key}", x=x, y=y, classes=classes)


def _pil_loader(path: str):
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("L", "1", "I", "I;16", "F", "LA"):
            return img.convert("L")
        return img.convert("RGB")


def _folder_classes(folder: Path) -> tuple[tuple[str, ...], dict[str, int]]:
    """(classes, class folder -> label): integer folder names keep their integer, other names sorted."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise ValueError(f"{folder}: not an image folder (expected root/<class>/<image>), no class folders")
    numeric = [n for n in names if n.isascii() and n.isdigit()]
    if numeric and len(numeric) != len(names):
        other = [n for n in names if n not in numeric]
        raise ValueError(f"{folder}: class folders mix integer names {numeric[:5]} and other names {other[:5]}; "
                         "name them all by their label (0, 1, ...) or all by class name (numbered in sorted order)")
    if numeric:
        mapping = {n: int(n) for n in names}
        if len(set(mapping.values())) != len(mapping):
            raise ValueError(f"{folder}: class folders {names} name the same label twice")
        classes = tuple(str(i) for i in range(max(mapping.values()) + 1))
        return classes, mapping
    return tuple(names), {n: i for i, n in enumerate(names)}


def _load_image_folder(path: Path, split: str) -> ImageDataset:
    folder = path / split if (path / split).is_dir() else path
    classes, mapping = _folder_classes(folder)
    samples = []  # (label, file) sorted by label, then file name
    for name, label in mapping.items():
        for dirpath, _, filenames in os.walk(folder / name, followlinks=True):
            samples += [(label, os.path.join(dirpath, f)) for f in filenames if f.lower().endswith(_IMAGE_EXTENSIONS)]
    samples.sort()
    if not samples:
        raise ValueError(f"{folder}: no images found (extensions {', '.join(_IMAGE_EXTENSIONS)})")
    images, labels = [], []
    for label, file in samples:
        try:
            arr = np.array(_pil_loader(file), dtype=np.uint8)  # a writable copy
        except OSError as exc:
            raise ValueError(f"{file}: not a readable image ({exc})") from None
        images.append(torch.from_numpy(np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))))
        labels.append(label)
    channels = {t.shape[0] for t in images}
    if channels == {1, 3}:  # mix of grayscale and colour: make everything RGB
        images = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in images]
    sizes = {tuple(t.shape[1:]) for t in images}
    if len(sizes) != 1:
        raise ValueError(f"{folder}: all images must have the same size, found {sorted(sizes)[:5]}")
    x = torch.stack(images).to(torch.float32) / 255.0
    y = torch.tensor(labels, dtype=torch.int64)
    files = tuple(os.path.relpath(f, folder) for _, f in samples)
    return ImageDataset(name=str(folder), x=x, y=y, classes=classes, files=files, class_to_idx=mapping)
