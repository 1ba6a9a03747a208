"""CLI: certify smooth --sequential [--target-radius R] [--radius-tol T]: rows gain n_used, report shows samples."""
import json

import pandas as pd
import pytest

from certify import cli
from certify.reports import RadiusReport


def _args(out, *extra):
    return ["-q", "smooth", "--pretrained", "digits_mlp", "--sigma", "0.25", "--n-select", "20",
            "--n-estimate", "2000", "--batch-size", "500", "--max", "4", "--skip", "9", "--out", str(out), *extra]


def test_sequential_run_records_samples_used(tmp_path, capsys):
    out = tmp_path / "seq"
    assert cli.main(_args(out, "--sequential", "--target-radius", "0.25")) == 0
    text = capsys.readouterr().out
    assert "estimation samples per example: mean" in text
    rows = pd.read_csv(out / "rows.tsv", sep="\t")
    assert "n_used" in rows.columns and rows["n_used"].between(100, 2000).all()
    settings = json.loads((out / "run.json").read_text())
    assert settings["sequential"] is True and settings["target_radius"] == 0.25 and settings["radius_tol"] == 0.01
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples_used"]["max"] == int(rows["n_used"].max())
    assert summary["samples_used"]["median"] == pytest.approx(float(rows["n_used"].median()))
    assert "estimation samples per example" in (out / "report.md").read_text()
    assert (out / "samples_used.png").stat().st_size > 3000
    # resuming with another target is refused (the rows would mix)
    assert cli.main(_args(out, "--sequential", "--target-radius", "0.25")) == 0
    with pytest.raises(SystemExit) as info:
        cli.main(_args(out, "--sequential", "--target-radius", "0.5"))
    assert info.value.code == 2
    assert "target_radius" in capsys.readouterr().err


def test_fixed_run_keeps_its_columns(tmp_path):
    # fixed-n rows have no n_used column (every row used n_estimate), so runs written before it still resume
    out = tmp_path / "fixed"
    assert cli.main(_args(out, "--n-estimate", "200", "--max", "2")) == 0
    rows = pd.read_csv(out / "rows.tsv", sep="\t")
    assert "n_used" not in rows.columns
    assert "sequential" not in json.loads((out / "run.json").read_text())
    assert "samples_used" not in json.loads((out / "summary.json").read_text())
    with pytest.raises(ValueError, match="n_used"):
        RadiusReport.from_tsv(out / "rows.tsv").samples_used()
    assert cli.main(_args(out, "--n-estimate", "200", "--max", "3")) == 0
    assert len(pd.read_csv(out / "rows.tsv", sep="\t")) == 3


@pytest.mark.parametrize("change, name", [
    (["--sequential", "--target-radius", "-1"], "--target-radius"),
    (["--sequential", "--target-radius", "nan"], "--target-radius"),
    (["--sequential", "--target-radius", "abc"], "--target-radius"),
    (["--sequential", "--radius-tol", "0"], "--radius-tol"),
    (["--target-radius", "0.5"], "--target-radius"),
    (["--sequential", "--first-order"], "--first-order"),
])
def test_bad_sequential_input_exits_2(tmp_path, capsys, change, name):
    with pytest.raises(SystemExit) as info:
        cli.main(_args(tmp_path / "bad", *change))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err
