"""--device / device=: one resolution (certify.devices), the same numbers on the CPU path with and without it,
clear errors for CUDA without a GPU; ``import certify`` + certify_dataset without workers never imports Ray."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from certify import cli, devices, models
from certify.attacks import robust_accuracy
from certify.smoothing import Smooth

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_gpu(monkeypatch):
    """Pretend there is no GPU (there is none here; on a GPU machine the error paths are still tested)."""
    monkeypatch.setattr(devices, "cuda_available", lambda: False)


def test_resolve_device(no_gpu):
    assert devices.resolve_device(None) is None
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device(" CPU ") == torch.device("cpu")
    assert devices.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert devices.resolve_device("auto") == torch.device("cpu")
    for bad in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            devices.resolve_device(bad)
    for bad in ("tpu", "", "mps", "gpu"):
        with pytest.raises(ValueError, match="device must be one of cpu, cuda, auto"):
            devices.resolve_device(bad)
    with pytest.raises(TypeError, match="device must be one of"):
        devices.resolve_device(0)


def test_auto_picks_cuda_when_available(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("cuda")


def test_device_flag_parsing(no_gpu):
    p = argparse.ArgumentParser()
    devices.add_device_argument(p)
    assert p.parse_args([]).device == "cpu"
    assert devices.device_from_args(p.parse_args(["--device", "auto"])) == torch.device("cpu")
    assert devices.device_from_args(p.parse_args(["--device", "cuda"]), remote=True) == "cuda"
    with pytest.raises(ValueError, match="^--device: device 'cuda': no CUDA GPU"):
        devices.device_from_args(p.parse_args(["--device", "cuda"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--device", "tpu"])


def _tiny_model():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 16, generator=g))
        model[1].bias.zero_()
    return model


def test_smooth_device_cpu_gives_the_same_certificate_and_cuda_is_refused(no_gpu):
    model = _tiny_model()
    x = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(1))
    kw = dict(n_select=50, n_estimate=400, alpha=0.01, batch_size=64, seed=3, first_order=True)
    plain = Smooth(model, 3, 0.25).certify(x, **kw)
    on_cpu = Smooth(model, 3, 0.25, device="cpu").certify(x, **kw)
    auto = Smooth(model, 3, 0.25, device="auto").certify(x, **kw)
    for cert in (on_cpu, auto):
        assert (cert.label, cert.counts, cert.p_lower, cert.radius, cert.radii) == \
            (plain.label, plain.counts, plain.p_lower, plain.radius, plain.radii)
    assert Smooth(model, 3, 0.25, device="cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Smooth(model, 3, 0.25, device="cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        Smooth(model, 3, 0.25, device="gpu")


def test_certificate_is_the_same_for_every_batch_size_on_the_cpu():
    """Counts, p_lower and the zeroth-order radius are identical; first-order radii agree up to float rounding
    (the gradient sums are accumulated batch by batch in float32)."""
    model = _tiny_model()
    x = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(4))
    smooth = Smooth(model, 3, 0.5, device="cpu")
    certs = [smooth.certify(x, n_select=30, n_estimate=300, alpha=0.01, batch_size=bs, seed=9, first_order=True)
             for bs in (300, 64, 7)]
    for cert in certs[1:]:
        assert (cert.counts, cert.p_lower, cert.radius) == (certs[0].counts, certs[0].p_lower, certs[0].radius)
        assert cert.radii == pytest.approx(certs[0].radii, rel=1e-5)


def test_attack_device_cpu_is_the_default_path(no_gpu):
    model = _tiny_model()
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    a = robust_accuracy(model, x, y, eps=0.1, steps=3, seed=1, verbose=False)
    b = robust_accuracy(model, x, y, eps=0.1, steps=3, seed=1, verbose=False, device="cpu")
    assert a.success == b.success and a.perturbation == b.perturbation
    with pytest.raises(ValueError, match="no CUDA GPU"):
        robust_accuracy(model, x, y, eps=0.1, steps=3, verbose=False, device="cuda")


def test_train_device_cuda_without_gpu_is_refused_before_loading_data(no_gpu):
    from certify.training import train

    with pytest.raises(ValueError, match="no CUDA GPU"):
        train("digits_mlp", "no-such-dataset", epochs=1, device="cuda")


def test_synbench_device(no_gpu):
    from certify import synbench

    enc = models.build("digits_mlp", seed=0)
    assert synbench._device(enc, "cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        synbench._device(enc, "cuda")


@pytest.mark.parametrize("argv", [
    ["smooth", "--pretrained", "digits_mlp", "--data", "digits", "--sigma", "0.25", "--max", "1"],
    ["train", "--arch", "digits_mlp", "--data", "digits", "--out", "x.pt", "--epochs", "1"],
    ["synbench", "--pretrained", "digits_mlp", "--out", "sb", "--quick"],
    ["demo", "--n", "1"],
    ["predict", "--pretrained", "digits_mlp", "--data", "digits", "--sigma", "0.25", "--max", "1"],
])
def test_cli_device_cuda_without_gpu_exits_2_with_one_line(argv, no_gpu, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(["-q", *argv, "--device", "cuda"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device" in err and "no CUDA GPU" in err, err


def test_certify_dataset_without_workers_does_not_import_ray(tmp_path):
    code = (
        "import sys, torch\n"
        "import certify\n"
        "from certify.data import load_dataset\n"
        "smooth = certify.Smooth(certify.models.pretrained('digits_mlp'), 10, 0.25, device='cpu')\n"
        f"r = certify.certify_dataset(smooth, load_dataset('digits'), out={str(tmp_path / 'run')!r}, n_select=10,"
        " n_estimate=50, alpha=0.01, max_examples=2, verbose=False, render=False)\n"
        "assert len(r) == 2\n"
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n"
        "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
