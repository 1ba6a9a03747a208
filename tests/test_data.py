"""Offline datasets: shapes, ranges, user formats and clear errors."""
import gzip
import struct

import numpy as np
import pytest
import torch
from conftest import needs_fmnist

from certify.data import ImageDataset, available_datasets, load_dataset, parse_idx


def test_digits_shapes_range_and_fixed_split():
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert test.x.shape == (360, 1, 8, 8) and train.x.shape == (1437, 1, 8, 8)
    assert test.x.dtype == torch.float32 and test.y.dtype == torch.int64
    assert float(test.x.min()) >= 0.0 and float(test.x.max()) <= 1.0
    assert test.num_classes == 10 and len(test) == 360
    again = load_dataset("digits", split="test")
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)
    x0, y0 = test[0]
    assert x0.shape == (1, 8, 8) and isinstance(y0, int)
    assert len(test.subset(range(5))) == 5
    assert set(available_datasets()) >= {"fashion-mnist", "digits", "color-fmnist"}


@needs_fmnist
def test_fashion_mnist_and_colour_version():
    ds = load_dataset("fmnist", split="test")
    assert ds.x.shape == (10000, 1, 28, 28) and ds.num_classes == 10
    assert float(ds.x.max()) <= 1.0 and float(ds.x.min()) >= 0.0
    assert torch.bincount(ds.y).tolist() == [1000] * 10
    col = load_dataset("color-fmnist", split="test")
    assert col.x.shape == (10000, 3, 32, 32)
    assert torch.equal(col.y, ds.y)
    # colourised: channels differ, and deterministic
    assert float((col.x[:50, 0] - col.x[:50, 1]).abs().mean()) > 0.01
    assert torch.equal(load_dataset("color-fmnist", split="test").x[:5], col.x[:5])


def _write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_root_override_and_missing_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    ds = load_dataset("fashion-mnist", split="test", root=tmp_path)
    assert ds.x.shape == (4, 1, 28, 28)
    monkeypatch.setenv("CERTIFY_DATA_DIR", str(tmp_path))
    assert load_dataset("fashion-mnist", split="train").x.shape == (6, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


def test_idx_parser_rejects_garbage():
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="payload"):
        parse_idx(struct.pack(">BBBB", 0, 0, 8, 1) + struct.pack(">I", 10) + b"\x00" * 3)


def test_npz_float_and_uint8(tmp_path):
    rng = np.random.default_rng(1)
    xf = rng.random((5, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=xf, y=np.arange(5))
    ds = load_dataset(tmp_path / "f.npz")
    assert torch.allclose(ds.x, torch.from_numpy(xf)) and ds.y.tolist() == [0, 1, 2, 3, 4]
    xu = rng.integers(0, 256, (3, 1, 4, 4)).astype(np.uint8)
    np.savez(tmp_path / "u.npz", x=xu, y=np.array([0, 1, 0]))
    du = load_dataset(str(tmp_path / "u.npz"))
    assert torch.allclose(du.x, torch.from_numpy(xu.astype(np.float32) / 255))


@pytest.mark.parametrize("x, y, match", [
    (np.full((2, 1, 3, 3), 2.0, np.float32), np.array([0, 1]), r"\[0, 1\]"),
    (np.full((2, 1, 3, 3), np.nan, np.float32), np.array([0, 1]), "NaN"),
    (np.zeros((2, 1, 3, 3), np.float32), np.array([0]), "shape"),
    (np.zeros((2, 1, 3, 3), np.float32), np.array([0, -1]), ">= 0"),
    (np.zeros((2, 5, 5, 3), np.float32), np.array([0, 1]), "channels-last"),
])
def test_npz_bad_values(tmp_path, x, y, match):
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(ValueError, match=match):
        load_dataset(tmp_path / "bad.npz")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(tmp_path)
    assert ds.x.shape == (6, 3, 6, 6) and ds.classes == ("cat", "dog")
    assert sorted(ds.y.tolist()) == [0, 0, 0, 1, 1, 1]


def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="valid")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(TypeError):
        load_dataset(3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageDataset(name="x", x=torch.full((1, 1, 2, 2), 3.0), y=torch.zeros(1, dtype=torch.long))
