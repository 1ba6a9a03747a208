"""Model zoo: every architecture builds and runs; every shipped checkpoint loads and matches its sidecar."""
import pytest
import torch
from conftest import HAVE_FMNIST

import certify
from certify import models
from certify.data import load_dataset
from certify.training import evaluate_accuracy


@pytest.mark.parametrize("arch", models.available())
def test_build_forward_and_feature_layer(arch):
    torch.manual_seed(0)
    model = models.build(arch)
    x = torch.rand(5, *model.input_shape)
    assert model(x).shape == (5, model.num_classes)
    feats = model.features(x)
    assert feats.dim() == 2 and feats.shape[0] == 5
    assert model.feature_layer in dict(model.named_children())
    # only operators whose auto_LiRPA bounds tests/test_lirpa.py proves sound
    allowed = (torch.nn.Conv2d, torch.nn.ReLU, torch.nn.Linear, torch.nn.Flatten)
    assert all(isinstance(m, allowed) for m in model.children())
    info = models.arch_info(arch)
    assert info["input_shape"] == list(model.input_shape)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = models.build("fmnist_cnn", seed=5), models.build("fmnist_cnn", seed=5), models.build("fmnist_cnn", seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])
    with pytest.raises(ValueError, match="seed"):
        models.build("fmnist_cnn", seed=-1)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown arch"):
        models.build("resnet9000")
    with pytest.raises(TypeError):
        models.build(3)
    with pytest.raises(ValueError, match="no shipped checkpoint"):
        models.pretrained("nope")


def test_expected_checkpoints_are_shipped():
    shipped = set(models.available_pretrained())
    assert {"fmnist_cnn", "fmnist_cnn_sigma0.25", "fmnist_cnn_sigma0.50", "digits_mlp", "color_cnn"} <= shipped
    total = sum((models.ZOO_DIR / f"{n}.pt").stat().st_size for n in shipped)
    assert total < 2_000_000, f"the shipped zoo should stay small, got {total} bytes"


@pytest.mark.parametrize("name", models.available_pretrained())
def test_pretrained_matches_sidecar(name):
    info = models.pretrained_info(name)
    model = models.pretrained(name)
    assert not model.training
    assert info["arch"] == model.arch
    if info["dataset"] != "digits" and not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed")
    test = load_dataset(info["dataset"], split="test")
    # the sidecar's figure is the full clean test accuracy of exactly these weights
    assert info["n_test"] == len(test)
    # (up to 3 images: float summation order can differ across CPUs and flip a near-tie)
    assert evaluate_accuracy(model, test) == pytest.approx(info["test_accuracy"], abs=3 / len(test) + 1e-12)


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_clean_fmnist_cnn_reaches_88_percent():
    assert models.pretrained_info("fmnist_cnn")["test_accuracy"] >= 0.88


def test_lazy_package_exports():
    assert certify.models is models
    assert callable(certify.load_checkpoint)
