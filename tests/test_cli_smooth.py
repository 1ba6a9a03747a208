"""CLI: certify smooth / report / demo, bad input (exit code 2 naming the argument), kill and resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import needs_fmnist

from certify import cli, models

REPO = Path(__file__).resolve().parents[1]
NET_PY = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.net(x)
''' + (Path(__file__).resolve().parent / "data" / "slow_mlp.py").read_text()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A digits-sized checkpoint (the shipped digits MLP's state_dict) and a user-class checkpoint."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.save(models.pretrained("digits_mlp").state_dict(), d / "digits.pt")
    (d / "net.py").write_text(NET_PY)
    g = torch.Generator().manual_seed(0)
    state = {"net.1.weight": torch.randn(16, 64, generator=g) * 0.3, "net.1.bias": torch.zeros(16),
             "net.3.weight": torch.randn(10, 16, generator=g) * 0.3, "net.3.bias": torch.zeros(10)}
    torch.save(state, d / "tiny.pt")
    torch.save({f"inner.{k}": v for k, v in models.pretrained("digits_mlp").state_dict().items()}, d / "slow.pt")
    return d


def _smooth_args(ckpt, out, *extra):
    return ["-q", "smooth", "--checkpoint", str(ckpt / "digits.pt"), "--arch", "digits_mlp", "--data", "digits",
            "--sigma", "0.25", "--n-select", "20", "--n-estimate", "300", "--batch-size", "300", "--out", str(out),
            *extra]


def _exit_code(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code


def test_smooth_writes_a_run_and_report_rerenders(ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_smooth_args(ckpt, out, "--max", "6", "--skip", "7", "--first-order")) == 0
    text = capsys.readouterr().out
    assert "clean accuracy" in text and "certified accuracy at l2 radius" in text and "first order" in text
    for name in ("rows.tsv", "run.json", "summary.json", "report.md", "certified_accuracy.png"):
        assert (out / name).is_file(), name
    rows = pd.read_csv(out / "rows.tsv", sep="\t")
    assert rows["idx"].tolist() == [0, 7, 14, 21, 28, 35]
    assert {"radius_l2", "radius_l1", "radius_linf"} <= set(rows.columns)
    settings = json.loads((out / "run.json").read_text())
    assert settings["checkpoint"].endswith("digits.pt") and settings["n_estimate"] == 300
    summary = json.loads((out / "summary.json").read_text())

    # re-render from rows.tsv alone
    for name in ("summary.json", "report.md", "certified_accuracy.png"):
        (out / name).unlink()
    assert cli.main(["-q", "report", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "report.md").is_file() and (out / "certified_accuracy.png").is_file()

    # a second run at another sigma with a user class, overlaid
    out2 = tmp_path / "run2"
    assert cli.main(["-q", "smooth", "--checkpoint", str(ckpt / "tiny.pt"), "--arch", f"{ckpt / 'net.py'}:TinyNet",
                     "--data", "digits", "--sigma", "0.5", "--n-estimate", "200", "--max", "3",
                     "--out", str(out2)]) == 0
    capsys.readouterr()
    assert cli.main(["-q", "report", str(out), str(out2), "--labels", "mlp", "tiny"]) == 0
    text = capsys.readouterr().out
    assert (out / "comparison.png").stat().st_size > 5000
    assert "mlp" in text and "tiny" in text


def test_smooth_pretrained_defaults(tmp_path, capsys):
    out = tmp_path / "p"
    assert cli.main(["-q", "smooth", "--pretrained", "digits_mlp", "--sigma", "0.12", "--n-estimate", "100",
                     "--max", "2", "--out", str(out)]) == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["checkpoint"] == "digits_mlp" and settings["dataset"].startswith("digits")
    assert settings["sigma"] == 0.12


@pytest.mark.parametrize("change, name", [
    (["--sigma", "-1"], "--sigma"),
    (["--sigma", "abc"], "--sigma"),
    (["--n-estimate", "0"], "--n-estimate"),
    (["--alpha", "1.5"], "--alpha"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--skip", "0"], "--skip"),
    (["--data", "no-such-dataset"], "--data"),
    (["--num-classes", "5"], "--num-classes"),
    (["--start", "100000"], "--start"),
    (["--overwrite"], "--overwrite"),
])
def test_bad_smooth_input_exits_2_naming_the_argument(ckpt, tmp_path, capsys, change, name):
    argv = _smooth_args(ckpt, tmp_path / "bad", "--max", "1")
    key = change[0]
    if key in argv:
        i = argv.index(key)
        argv[i:i + 2] = change
    else:
        argv += change
    assert _exit_code(argv) == 2
    assert name in capsys.readouterr().err
    assert not (tmp_path / "bad" / "rows.tsv").exists()


def test_bad_model_arguments(ckpt, tmp_path, capsys):
    base = ["-q", "smooth", "--data", "digits", "--sigma", "0.25", "--max", "1", "--out", str(tmp_path / "x")]
    assert _exit_code(base + ["--checkpoint", str(ckpt / "digits.pt")]) == 2           # state_dict needs --arch
    assert "--arch" in capsys.readouterr().err
    assert _exit_code(base + ["--checkpoint", str(ckpt / "digits.pt"), "--arch", "fmnist_cnn"]) == 2
    assert "--arch" in capsys.readouterr().err                                         # does not fit
    assert _exit_code(base + ["--checkpoint", str(tmp_path / "missing.pt"), "--arch", "digits_mlp"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert _exit_code(base + ["--pretrained", "no_such_model"]) == 2
    assert "--pretrained" in capsys.readouterr().err
    assert _exit_code(base + ["--pretrained", "digits_mlp", "--checkpoint", "x.pt"]) == 2  # exclusive
    assert "--checkpoint" in capsys.readouterr().err
    assert _exit_code(["-q", "smooth", "--checkpoint", str(ckpt / "digits.pt"), "--arch", "digits_mlp",
                       "--data", "digits", "--max", "1"]) == 2                           # no sigma
    assert "--sigma" in capsys.readouterr().err
    assert _exit_code(["-q", "report", str(tmp_path)]) == 2
    assert "RUN_DIR" in capsys.readouterr().err


def test_settings_mismatch_exits_2(ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_smooth_args(ckpt, out, "--max", "1")) == 0
    argv = _smooth_args(ckpt, out, "--max", "1")
    argv[argv.index("--n-estimate") + 1] = "400"
    assert _exit_code(argv) == 2
    assert "n_estimate: saved 300 != now 400" in capsys.readouterr().err


def test_sigterm_then_resume_gives_identical_rows(ckpt, tmp_path):
    """Kill a real `certify smooth` process mid-run; re-running completes with the uninterrupted rows."""
    def args_for(out):
        return ["-q", "smooth", "--checkpoint", str(ckpt / "slow.pt"), "--arch", f"{ckpt / 'net.py'}:SlowMLP",
                "--data", "digits", "--sigma", "0.25", "--n-select", "20", "--n-estimate", "1000", "--batch-size",
                "100", "--max", "12", "--first-order", "--out", str(out)]   # >= 11 batches, >= 0.11 s per example

    args = args_for(tmp_path / "killed")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "certify", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rows = tmp_path / "killed" / "rows.tsv"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if rows.is_file() and len(rows.read_text().splitlines()) >= 3:  # header + 2 rows
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted: " + proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "re-run with --resume" in err
    n_done = len(rows.read_text().splitlines()) - 1
    assert 2 <= n_done < 12
    assert not (tmp_path / "killed" / ".lock").exists()

    assert cli.main(args) == 0                                   # resume (the default)
    assert cli.main(args_for(tmp_path / "full")) == 0
    resumed = pd.read_csv(rows, sep="\t").drop(columns="time")
    full = pd.read_csv(tmp_path / "full" / "rows.tsv", sep="\t").drop(columns="time")
    pd.testing.assert_frame_equal(resumed, full)
    assert len(full) == 12 and (~full["abstained"].astype(bool)).sum() >= 6   # real certificates were compared


@needs_fmnist
def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["-q", "demo", "--out", str(out), "--n", "2", "--n-estimate", "200", "--batch-size", "200"]) == 0
    text = capsys.readouterr().out
    assert "fmnist_cnn_sigma0.25" in text and str(out / "report.md") in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_examples"] == 2 and summary["first_order"] and summary["sigma"] == 0.25
    assert pd.read_csv(out / "rows.tsv", sep="\t")["idx"].tolist() == [0, 333]
    assert _exit_code(["-q", "demo", "--out", str(out), "--n", "0"]) == 2
    assert "--n" in capsys.readouterr().err
