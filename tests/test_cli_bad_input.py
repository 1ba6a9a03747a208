"""A new user's own model and data (issue: no silent wrong answer, no traceback, familiar conventions).

Every bad input of the table below gives a one-line error that names the flag (and file) and exits with code 2
before any compute, leaving nothing half-written; the Python API raises ValueError/TypeError for the same input.
The conventions (Normalized / --mean --std, torchvision and module:callable architectures, Cohen's flag names,
`certify predict`, --json, run.json contents, progress off a terminal) are checked on tiny models.
"""
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from certify import cli, models
from certify.checkpoints import UnsafeCheckpointError, load_arch, load_checkpoint
from certify.data import load_dataset
from certify.rundir import file_sha256
from certify.smoothing import Smooth

NET_PY = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """8x8 grey images, 10 classes; a 0-dim buffer (a temperature) as some user models have."""

    def __init__(self, width=16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self, x):
        return self.net(x) / self.temperature


def make(width=16):
    return TinyNet(width)
'''


def _state(width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"net.1.weight": torch.randn(width, 64, generator=g) * 0.3, "net.1.bias": torch.zeros(width),
            "net.3.weight": torch.randn(10, width, generator=g) * 0.3, "net.3.bias": torch.zeros(10),
            "temperature": torch.tensor(1.0)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    (d / "tinynets.py").write_text(NET_PY)
    torch.save(_state(), d / "tiny.pt")
    torch.save(_state(width=8), d / "tiny8.pt")
    good = (d / "tiny.pt").read_bytes()
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    (d / "empty.pt").write_bytes(b"")
    (d / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 8, 8)).astype(np.float32)
    np.savez(d / "ok.npz", x=x, y=np.array([0, 1, 2, 3, 4, 5]))
    np.savez(d / "label10.npz", x=x, y=np.array([0, 1, 2, 3, 4, 10]))
    np.savez(d / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
    np.savez(d / "big32.npz", x=rng.random((2, 1, 32, 32)).astype(np.float32), y=np.array([0, 1]))
    np.savez(d / "rgb28.npz", x=rng.random((2, 3, 28, 28)).astype(np.float32), y=np.array([0, 1]))
    np.savez(d / "rgb8.npz", x=rng.random((2, 3, 8, 8)).astype(np.float32), y=np.array([0, 1]))
    np.savez(d / "pixels255.npz", x=(x * 255).astype(np.float32), y=np.arange(6))
    (d / "a_file").write_text("not a directory\n")
    return d


def _pil_folder(root: Path, layout: dict[str, list[tuple[int, int]]]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for cls, sizes in layout.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L").save(root / cls / f"img{k}.png")
    return root


def _smooth(files, out, *extra, data="ok.npz", model=("--checkpoint", "tiny.pt", "--arch", "tinynets.py:TinyNet")):
    args = ["-q", "smooth", model[0], str(files / model[1])]
    if len(model) > 2:
        args += [model[2], str(files / model[3]) if model[3].endswith(".py:TinyNet") or ".py:" in model[3]
                 else model[3]]
    args += ["--data", str(files / data), "--sigma", "0.25", "--N0", "10", "--N", "100", "--batch", "100",
             "--out", str(out), *extra]
    return args


def _exit2(capsys, argv, *needles, absent=()):
    """Run the CLI; it must exit with code 2 and a one-line error holding every needle."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("certify") or "error" in ln]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    for needle in absent:
        assert needle not in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------------------ labels
def test_label_outside_num_classes_is_an_error_not_a_wrong_row(files, tmp_path, capsys):
    out = tmp_path / "run"
    _exit2(capsys, _smooth(files, out, "--num-classes", "10", data="label10.npz"), "--num-classes 10", "label 10",
           "[0, 10)")
    _exit2(capsys, _smooth(files, out, data="label10.npz"), "--data", "label 10", "[0, 10)",
           absent=("--num-classes",))             # the class count was inferred: the data is blamed
    assert not out.exists()                        # nothing half-written
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        load_dataset(files / "label10.npz", num_classes=10)
    from certify.runs import certify_dataset

    ds = load_dataset(files / "label10.npz")
    smooth = Smooth(load_checkpoint(files / "tiny.pt", arch=f"{files / 'tinynets.py'}:TinyNet"), 10, 0.25)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\).*example 5 has label 10"):
        certify_dataset(smooth, ds, n_select=10, n_estimate=20, alpha=0.01)


def test_wrong_num_classes_is_blamed_on_the_flag(files, tmp_path, capsys):
    _exit2(capsys, _smooth(files, tmp_path / "r", "--num-classes", "7"), "--num-classes 7", "10 logits")


def test_load_dataset_rejects_empty_sets_labels_and_mixed_sizes(files, tmp_path, capsys):
    with pytest.raises(ValueError, match="empty"):
        load_dataset(files / "empty.npz")
    _exit2(capsys, _smooth(files, tmp_path / "r", data="empty.npz"), "--data", "empty")
    mixed = _pil_folder(tmp_path / "mixed", {"0": [(8, 8)], "1": [(9, 9)]})
    with pytest.raises(ValueError, match="same size"):
        load_dataset(mixed)
    _exit2(capsys, _smooth(files, tmp_path / "r", data=str(mixed)), "--data", "same size")
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 2"):
        load_dataset(files / "ok.npz", num_classes=1)
    assert load_dataset(files / "ok.npz", num_classes=10).num_classes == 10
    empty = tmp_path / "nofolders"
    empty.mkdir()
    _exit2(capsys, _smooth(files, tmp_path / "r", data=str(empty)), "--data", "no class folders")


def test_unreadable_data_files(files, tmp_path, capsys):
    good = (files / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "random.npz").write_bytes(bytes(range(256)) * 4)
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    for name in ("truncated.npz", "random.npz", "single.npz"):
        _exit2(capsys, _smooth(files, tmp_path / "r", data=str(tmp_path / name)), "--data", name, ".npz")
        with pytest.raises(ValueError, match=r"\.npz"):
            load_dataset(tmp_path / name)
    folder = _pil_folder(tmp_path / "imgs", {"0": [(8, 8)]})
    (folder / "0" / "broken.png").write_bytes(b"not a png")
    _exit2(capsys, _smooth(files, tmp_path / "r", data=str(folder)), "--data", "broken.png", "not a readable image")
    assert not (tmp_path / "r").exists()


def test_image_folder_integer_names_keep_their_label(files, tmp_path):
    only_3_7 = load_dataset(_pil_folder(tmp_path / "a", {"3": [(8, 8)] * 2, "7": [(8, 8)]}))
    assert only_3_7.y.tolist() == [3, 3, 7] and only_3_7.class_to_idx == {"3": 3, "7": 7}
    assert only_3_7.files == ("3/img0.png", "3/img1.png", "7/img0.png")
    eleven = load_dataset(_pil_folder(tmp_path / "b", {str(i): [(8, 8)] for i in range(11)}))
    assert eleven.y.tolist() == list(range(11))          # "10" is 10, not 2 (alphabetical position)
    named = load_dataset(_pil_folder(tmp_path / "c", {"dog": [(8, 8)], "cat": [(8, 8)]}))
    assert named.classes == ("cat", "dog") and named.y.tolist() == [0, 1]
    with pytest.raises(ValueError, match="mix integer names"):
        load_dataset(_pil_folder(tmp_path / "d", {"1": [(8, 8)], "cat": [(8, 8)]}))
    assert only_3_7.subset([2]).files == ("7/img0.png",)


def test_image_folder_run_records_mapping_and_file_names(files, tmp_path, capsys):
    folder = _pil_folder(tmp_path / "imgs", {"3": [(8, 8)], "7": [(8, 8)] * 2})
    out = tmp_path / "run"
    assert cli.main(_smooth(files, out, data=str(folder))) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["class_to_idx"] == {"3": 3, "7": 7} and run["num_classes"] == 10
    rows = (out / "rows.tsv").read_text().splitlines()
    header = next(r for r in rows if not r.startswith("#")).split("\t")
    assert "file" in header
    body = [dict(zip(header, r.split("\t"))) for r in rows[rows.index("\t".join(header)) + 1:]]
    assert [(r["label"], r["file"]) for r in body] == [("3", "3/img0.png"), ("7", "7/img0.png"),
                                                       ("7", "7/img1.png")]


# ------------------------------------------------------------------------------------------------ pixel scale
@pytest.mark.parametrize("method", ["certify", "predict"])
def test_smooth_refuses_inputs_that_are_not_pixels_in_0_1(method):
    smooth = Smooth(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), num_classes=3, sigma=0.25)
    call = (lambda x: smooth.certify(x, n_select=10, n_estimate=20, alpha=0.01)) if method == "certify" else \
        (lambda x: smooth.predict(x, n=20, alpha=0.01))
    x = torch.linspace(0.0, 1.0, 4).reshape(1, 2, 2)
    with pytest.raises(ValueError, match=r"pixel values in \[0, 1\].*255"):
        call(x * 255)                                               # 0-255 floats
    with pytest.raises(ValueError, match=r"pixel values in \[0, 1\].*Normalized"):
        call((x - 0.5) / 0.5)                                       # normalised inputs
    with pytest.raises(TypeError, match="integer dtype"):
        call((x * 255).to(torch.uint8))                             # uint8 tensors
    with pytest.raises(TypeError, match="integer dtype"):
        call((x.numpy() * 255).astype(np.uint8))                    # uint8 arrays
    call(x)                                                          # pixels are fine
    Smooth(smooth.model, num_classes=3, sigma=0.25, input_range=None).predict(x * 255, n=20, alpha=0.01)
    with pytest.raises(ValueError, match="input_range"):
        Smooth(smooth.model, num_classes=3, sigma=0.25, input_range=(1.0, 0.0))


def test_npz_in_0_255_floats_is_refused(files, tmp_path, capsys):
    _exit2(capsys, _smooth(files, tmp_path / "r", data="pixels255.npz"), "--data", "[0, 1]")


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("name, needle", [("truncated.pt", "truncated"), ("empty.pt", "empty"),
                                          ("random.pt", "not a PyTorch file")])
def test_broken_checkpoints(files, tmp_path, capsys, name, needle):
    line = _exit2(capsys, _smooth(files, tmp_path / "r", model=("--checkpoint", name, "--arch", "tinynets.py:TinyNet")),
                  "--checkpoint", needle, absent=("--trust",))
    assert name in line
    with pytest.raises(ValueError, match=needle) as info:
        load_checkpoint(files / name, arch="digits_mlp")
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_trusted_pickle_whose_class_is_not_importable(files, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(files))
    import tinynets

    net = tinynets.TinyNet()
    torch.save(net, tmp_path / "pickled.pt")
    monkeypatch.delitem(sys.modules, "tinynets")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(files)])
    _exit2(capsys, ["-q", "smooth", "--checkpoint", str(tmp_path / "pickled.pt"), "--trust", "--data",
                    str(files / "ok.npz"), "--sigma", "0.25", "--out", str(tmp_path / "r")],
           "--checkpoint", "cannot be imported", "tinynets", absent=("--arch:",))
    _exit2(capsys, ["-q", "smooth", "--checkpoint", str(tmp_path / "pickled.pt"), "--data",
                    str(files / "ok.npz"), "--sigma", "0.25", "--out", str(tmp_path / "r")],
           "--checkpoint", "--trust")                # without --trust: the pickle warning, as before


def test_state_dict_needs_and_must_fit_arch(files, tmp_path, capsys):
    _exit2(capsys, _smooth(files, tmp_path / "r", model=("--checkpoint", "tiny.pt")), "--arch: required")
    _exit2(capsys, _smooth(files, tmp_path / "r", model=("--checkpoint", "tiny8.pt", "--arch", "tinynets.py:TinyNet")),
           "--checkpoint/--arch", "shape")
    _exit2(capsys, _smooth(files, tmp_path / "r", model=("--checkpoint", "tiny.pt", "--arch", "nope.py:TinyNet")),
           "--arch", "not found")
    _exit2(capsys, _smooth(files, tmp_path / "r", "--arch-kwargs", "{width: 8}"), "--arch-kwargs", "JSON")
    _exit2(capsys, _smooth(files, tmp_path / "r", "--arch-kwargs", '{"depth": 8}'), "--arch", "depth")


# ------------------------------------------------------------------------------------------------ image shapes
@pytest.mark.parametrize("data, shape", [("big32.npz", "(1, 32, 32)"), ("rgb28.npz", "(3, 28, 28)")])
def test_images_of_the_wrong_shape_for_a_zoo_model(files, tmp_path, capsys, data, shape):
    _exit2(capsys, ["-q", "smooth", "--pretrained", "fmnist_cnn_sigma0.25", "--data", str(files / data),
                    "--out", str(tmp_path / "r")], "--data", shape, "(1, 28, 28)")


def test_images_of_the_wrong_shape_for_a_user_model(files, tmp_path, capsys):
    _exit2(capsys, _smooth(files, tmp_path / "r", data="rgb8.npz"), "--data", "(3, 8, 8)", "cannot take")


# ------------------------------------------------------------------------------------------------ --out
@pytest.mark.parametrize("command", ["smooth", "predict", "semantic", "synbench"])
def test_out_that_is_a_file_or_unwritable(files, capsys, command):
    base = ["-q", command, "--checkpoint", str(files / "tiny.pt"), "--arch", f"{files / 'tinynets.py'}:TinyNet"]
    if command in ("smooth", "predict"):
        base += ["--data", str(files / "ok.npz"), "--sigma", "0.25"]
    elif command == "semantic":
        base += ["--data", str(files / "ok.npz")]
    else:
        base += ["--input-shape", "1,8,8"]
    before = (files / "a_file").read_text()
    _exit2(capsys, base + ["--out", str(files / "a_file")], "--out", "is a file")
    _exit2(capsys, base + ["--out", str(files / "a_file" / "sub")], "--out", "is a file")
    assert (files / "a_file").read_text() == before
    _exit2(capsys, base + ["--out", "/proc/certify_cannot_write_here"], "--out", "not writable")


def test_open_run_refuses_a_file(files):
    from certify.rundir import open_run

    with pytest.raises(ValueError, match="is a file"):
        with open_run(files / "a_file", settings={}):
            pass


# ------------------------------------------------------------------------------------------------ synbench
def test_synbench_checks_come_before_the_compute(files, tmp_path, capsys):
    base = ["-q", "synbench", "--checkpoint", str(files / "tiny.pt"), "--arch", f"{files / 'tinynets.py'}:TinyNet",
            "--quick", "--out", str(tmp_path / "sb")]
    _exit2(capsys, base + ["--input-shape", "3,32,32"], "--input-shape 3,32,32", "cannot take")
    _exit2(capsys, base + ["--n-train", "0"], "--n-train", ">= 1")        # not silently 512
    _exit2(capsys, base + ["--n-train", "4"], "--n-train", ">= 8")
    _exit2(capsys, base + ["--input-shape", "1,8,8", "--probe-dataset", "digits", "--probe-max", "1"],
           "--probe-max", ">= 2")
    _exit2(capsys, base + ["--input-shape", "1,8,8", "--compare", str(tmp_path / "missing.tsv")], "--compare")
    _exit2(capsys, base + ["--input-shape", "1,8,8", "--layer", "nope"], "--layer", "nope")
    _exit2(capsys, base + ["--input-shape", "1,8,8", "--probe-dataset", "no-such-set"], "--probe-dataset")
    _exit2(capsys, base + ["--input-shape", "1,8,8", "--eps", "0,1.5"], "--eps", "[0, 1)")
    assert not (tmp_path / "sb").exists()


# ------------------------------------------------------------------------------------------------ normalisation
def test_normalized_is_pixel_units(files, tmp_path, capsys):
    inner = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    net = models.Normalized(inner, mean=[0.5], std=[0.25])
    x = torch.linspace(0.0, 1.0, 128).reshape(2, 1, 8, 8)
    assert torch.allclose(net(x), inner((x - 0.5) / 0.25))
    with pytest.raises(ValueError, match="std"):
        models.Normalized(inner, mean=[0.5], std=[0.0])
    with pytest.raises(ValueError, match="channels"):
        models.Normalized(inner, mean=[0.5, 0.5, 0.5], std=[0.2])(x)
    out = tmp_path / "norm"
    assert cli.main(_smooth(files, out, "--mean", "0.5", "--std", "0.25", "--max", "1")) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["mean"] == [0.5] and run["std"] == [0.25]
    _exit2(capsys, _smooth(files, tmp_path / "r", "--mean", "0.5"), "--mean/--std", "both")
    _exit2(capsys, _smooth(files, tmp_path / "r", "--mean", "0.5", "--std", "0"), "--std", "> 0")
    _exit2(capsys, _smooth(files, tmp_path / "r", "--mean", "0.4,0.5,0.6", "--std", "0.2"), "--mean/--std",
           "1 channels")


# ------------------------------------------------------------------------------------------------ architectures
def test_torchvision_and_module_callable_architectures(files, tmp_path, capsys, monkeypatch):
    net = load_arch("torchvision:resnet18", kwargs={"num_classes": 10})
    assert net.fc.out_features == 10
    with pytest.raises(ValueError, match="no such torchvision model"):
        load_arch("torchvision:resnet_nope")
    monkeypatch.syspath_prepend(str(files))
    tiny = load_arch("tinynets:make", kwargs={"width": 8})
    assert tiny.net[1].out_features == 8
    with pytest.raises(ValueError, match="cannot import module"):
        load_arch("no_such_pkg.mod:make")
    out = tmp_path / "mc"
    argv = ["-q", "predict", "--checkpoint", str(files / "tiny8.pt"), "--arch", "tinynets:make", "--arch-kwargs",
            '{"width": 8}', "--data", str(files / "ok.npz"), "--sigma", "0.25", "--N", "50", "--max", "2",
            "--out", str(out)]
    assert cli.main(argv) == 0
    assert json.loads((out / "run.json").read_text())["arch_kwargs"] == {"width": 8}


def test_torchvision_resnet18_from_the_cli(tmp_path):
    net = load_arch("torchvision:resnet18", kwargs={"num_classes": 10})
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.random((2, 3, 32, 32)).astype(np.float32), y=np.array([1, 2]))
    out = tmp_path / "r18"
    assert cli.main(["-q", "predict", "--checkpoint", str(tmp_path / "r18.pt"), "--arch", "torchvision:resnet18",
                     "--num-classes", "10", "--data", str(tmp_path / "c.npz"), "--sigma", "0.25", "--N", "8",
                     "--batch", "8", "--max", "1", "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["arch"] == "torchvision:resnet18"


# ------------------------------------------------------------------------------------------------ conventions
def test_cohen_aliases_json_and_run_json(files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _smooth(files, out, "--skip", "2", "--max", "2", "--json")
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert summary["n_examples"] == 2 and summary["out"] == str(out)
    run = json.loads((out / "run.json").read_text())
    assert (run["n_select"], run["n_estimate"], run["batch_size"], run["skip"], run["max_examples"]) == \
        (10, 100, 100, 2, 2)
    assert run["command_line"].startswith("certify -q smooth --checkpoint")
    assert run["arch"] == f"{files / 'tinynets.py'}:TinyNet"
    assert run["checkpoint_sha256"] == file_sha256(files / "tiny.pt")
    assert {"certify", "torch", "numpy"} <= set(run["versions"])
    assert run["n_rows"] == 2
    # a resumed run with a larger --max: run.json tells the truth
    assert cli.main(_smooth(files, out, "--skip", "2", "--max", "3")) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["max_examples"] == 3 and run["n_rows"] == 3 and "--max 3" in run["command_line"]


def test_predict_command_rows_summary_resume(files, tmp_path, capsys, caplog):
    out = tmp_path / "pred"
    base = ["predict", "--checkpoint", str(files / "tiny.pt"), "--arch", f"{files / 'tinynets.py'}:TinyNet",
            "--data", str(files / "ok.npz"), "--sigma", "0.25", "--N", "200", "--batch", "64", "--alpha", "0.01",
            "--out", str(out)]
    with caplog.at_level(logging.INFO, logger="certify.progress"):
        assert cli.main(base + ["--max", "2", "--json"]) == 0
    assert any("predict: 2/2 img done" in r.getMessage() for r in caplog.records)   # progress off a terminal
    first = json.loads(capsys.readouterr().out)
    assert first["n_examples"] == 2 and 0.0 <= first["abstain_rate"] <= 1.0
    assert cli.main(base + ["--max", "4", "-q"]) == 0
    lines = (out / "rows.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:5] == ["idx", "label", "predict", "correct", "time"]     # Cohen's columns
    assert len(lines) == 5
    rows = [dict(zip(lines[0].split("\t"), ln.split("\t"))) for ln in lines[1:]]
    assert all(r["predict"] == "-1" for r in rows if r["abstained"] == "1")
    again = tmp_path / "again"
    assert cli.main(base[:-1] + [str(again), "--max", "4", "-q"]) == 0
    strip = [ln.split("\t") for ln in (again / "rows.tsv").read_text().splitlines()]
    assert [r[:4] + r[5:] for r in strip] == [ln.split("\t")[:4] + ln.split("\t")[5:] for ln in lines]
    assert json.loads((out / "run.json").read_text())["n_rows"] == 4
    assert json.loads((out / "summary.json").read_text())["n_examples"] == 4
    _exit2(capsys, base + ["--N", "300"], "cannot resume", "n: saved 200 != now 300")
    _exit2(capsys, base + ["--overwrite"], "--overwrite", "--no-resume")


def test_report_renders_a_cohen_log_with_a_plot(tmp_path, capsys):
    src = Path(__file__).resolve().parent / "data" / "published-logs"
    log = next(p for p in sorted(src.iterdir()) if p.name.startswith("cohen"))
    copy = tmp_path / log.name
    copy.write_bytes(log.read_bytes())
    assert cli.main(["-q", "report", str(copy), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    plot = tmp_path / (log.name + ".png")
    assert summary["plot"] == str(plot) and plot.stat().st_size > 0
    assert summary["runs"][0]["n_examples"] > 0
    _exit2(capsys, ["-q", "report", str(tmp_path / "nothing_here")], "RUN_DIR", "no such")


def test_every_command_has_the_shared_flags():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        flags = {s for a in p._actions for s in a.option_strings}
        assert {"--json", "--quiet"} <= flags, name
        if name in ("smooth", "predict", "semantic", "synbench", "demo"):
            assert {"--out", "--resume", "--no-resume", "--overwrite", "--seed"} <= flags, name
        if name in ("smooth", "predict", "semantic", "synbench"):
            assert {"--mean", "--std", "--arch", "--arch-kwargs", "--checkpoint", "--pretrained"} <= flags, name
        if name in ("smooth", "predict", "semantic", "demo"):
            assert "--max" in flags, name


def test_a_broken_command_module_is_an_error(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "broken", "no_such_command_module")
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser()


def test_default_out_is_the_same_rule_everywhere(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _smooth(files, "unused", "--max", "1")
    del argv[argv.index("--out"):argv.index("--out") + 2]
    assert cli.main(argv) == 0
    assert (tmp_path / "runs" / "smooth_tiny_sigma0.25" / "rows.tsv").is_file()
    argv[1] = "predict"
    argv = [a for a in argv if a not in ("--N0", "10")]
    assert cli.main(argv) == 0
    assert (tmp_path / "runs" / "predict_tiny_sigma0.25" / "rows.tsv").is_file()


def test_synbench_resume_reuses_its_result_and_refuses_other_settings(files, tmp_path, capsys):
    out = tmp_path / "sb"
    argv = ["synbench", "--checkpoint", str(files / "tiny.pt"), "--arch", f"{files / 'tinynets.py'}:TinyNet",
            "--input-shape", "1,8,8", "--quick", "--n-train", "64", "--n-test", "64", "--eps", "0", "--out", str(out)]
    assert cli.main(["-q", *argv, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    run = json.loads((out / "run.json").read_text())
    assert run["checkpoint_sha256"] == file_sha256(files / "tiny.pt") and run["n_train"] == 64
    saved = (out / "synbench.json").read_text()
    assert cli.main(["-q", *argv, "--json"]) == 0                      # resumed: the saved result is reused
    assert json.loads(capsys.readouterr().out)["synbench"] == first["synbench"]
    assert (out / "synbench.json").read_text() == saved
    _exit2(capsys, ["-q", *argv, "--seed", "1"], "cannot resume", "seed: saved 0 != now 1")
    _exit2(capsys, ["-q", *argv, "--no-resume"], "--no-resume", "--overwrite")


def test_train_checks_its_out_file_before_training(tmp_path, capsys):
    base = ["-q", "train", "--arch", "digits_mlp", "--data", "digits", "--epochs", "1"]
    _exit2(capsys, base + ["--out", str(tmp_path)], "--out", "is a directory")
    _exit2(capsys, base + ["--out", "/proc/certify_cannot_write_here/m.pt"], "--out", "not writable")


def test_study_checks_its_out_before_computing(files, capsys):
    _exit2(capsys, ["-q", "study", "--quick", "--out", str(files / "a_file")], "--out", "is a file")
