"""Safe checkpoint loading: state_dicts, user classes, TorchScript, torch.export; pickles refused."""
import textwrap

import pytest
import torch

from certify import models
from certify.checkpoints import UnsafeCheckpointError, load_checkpoint


@pytest.fixture()
def digits_model():
    torch.manual_seed(0)
    return models.build("digits_mlp").eval()


def _same(a, b):
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_state_dict_into_zoo_arch(tmp_path, digits_model):
    torch.save(digits_model.state_dict(), tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt", arch="digits_mlp")
    assert not loaded.training and _same(loaded, digits_model)
    torch.save({"model_state_dict": digits_model.state_dict(), "epoch": 7}, tmp_path / "wrapped.pt")
    assert _same(load_checkpoint(tmp_path / "wrapped.pt", arch="digits_mlp"), digits_model)


def test_state_dict_into_user_class(tmp_path):
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(64, 3)
            def forward(self, x):
                return self.fc(x.flatten(1))
    """))
    spec = f"{tmp_path / 'net.py'}:Net"
    from certify.checkpoints import load_arch
    net = load_arch(spec)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    loaded = load_checkpoint(tmp_path / "net.pt", arch=spec)
    assert _same(loaded, net)
    with pytest.raises(ValueError, match="no nn.Module subclass"):
        load_checkpoint(tmp_path / "net.pt", arch=f"{tmp_path / 'net.py'}:Missing")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "net.pt", arch=f"{tmp_path / 'nope.py'}:Net")


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_and_export(tmp_path, digits_model):
    torch.jit.script(digits_model).save(str(tmp_path / "ts.pt"))
    assert _same(load_checkpoint(tmp_path / "ts.pt"), digits_model)
    batch = torch.export.Dim("batch", min=1, max=1_000_000)
    program = torch.export.export(digits_model, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    assert _same(load_checkpoint(tmp_path / "m.pt2"), digits_model)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_training_mode_exports_and_traces_are_refused(tmp_path):
    # a graph frozen in training mode is random (dropout) or batch-dependent (batch norm): no fixed classifier
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8),
                              torch.nn.Dropout(0.2), torch.nn.Linear(8, 3))
    x = torch.rand(4, 1, 8, 8)
    torch.export.save(torch.export.export(net.train(), (x,)), str(tmp_path / "train.pt2"))
    with pytest.raises(ValueError, match="training mode"):
        load_checkpoint(tmp_path / "train.pt2")
    torch.jit.trace(net.train(), (x,), check_trace=False).save(str(tmp_path / "train_trace.pt"))
    with pytest.raises(ValueError, match="training mode"):
        load_checkpoint(tmp_path / "train_trace.pt")
    # the same network exported / traced / scripted from eval mode loads and is deterministic
    torch.export.save(torch.export.export(net.eval(), (x,)), str(tmp_path / "eval.pt2"))
    torch.jit.trace(net.eval(), (x,)).save(str(tmp_path / "eval_trace.pt"))
    torch.jit.script(net.train()).save(str(tmp_path / "script.pt"))  # scripted: .eval() switches the mode
    for name in ("eval.pt2", "eval_trace.pt", "script.pt"):
        loaded = load_checkpoint(tmp_path / name)
        with torch.no_grad():
            assert torch.allclose(loaded(x), net.eval()(x), atol=1e-6), name


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running_payload(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weights": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="trust=True"):
        load_checkpoint(tmp_path / "evil.pt", arch="digits_mlp")
    assert not marker.exists()


def test_full_module_pickle_needs_trust(tmp_path, digits_model):
    torch.save(digits_model, tmp_path / "full.pt")
    with pytest.raises(UnsafeCheckpointError, match="arbitrary"):
        load_checkpoint(tmp_path / "full.pt")
    assert _same(load_checkpoint(tmp_path / "full.pt", trust=True), digits_model)


def test_mismatch_names_keys(tmp_path, digits_model):
    state = digits_model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc1.bias"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "bad.pt", arch="digits_mlp")
    assert "fc1.bias" in str(info.value) and "extra.weight" in str(info.value)
    torch.save(digits_model.state_dict(), tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="fc1.weight"):
        load_checkpoint(tmp_path / "ok.pt", arch="fmnist_mlp")
    with pytest.raises(ValueError, match="arch="):
        load_checkpoint(tmp_path / "ok.pt")


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt", arch="digits_mlp")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="state_dict"):
        load_checkpoint(tmp_path / "empty.pt", arch="digits_mlp")
    with pytest.raises(TypeError):
        load_checkpoint(tmp_path / "empty.pt", arch="digits_mlp", trust="yes")
