"""The shared run-directory layer: lock, append + fsync, torn-line repair, resume, one fingerprint."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from certify._checks import check_bool, check_choice, check_float, check_int
from certify._jsonio import atomic_write_json, digest, dumps, jsonable
from certify._progress import _LogBar, progress
from certify.rundir import (
    LOCK_FILE,
    ResumeMismatchError,
    RunDirBusyError,
    file_sha256,
    format_value,
    model_fingerprint,
    open_run,
    read_rows_file,
)


def _rows(path):
    return read_rows_file(path / "rows.tsv")[2]


def test_append_and_resume_skips_done_rows(tmp_path):
    with open_run(tmp_path, settings={"seed": 0, "max": 3}, match_keys=["seed"]) as run:
        assert not run.resumed and run.done("idx") == set()
        run.append({"idx": 0, "v": 0.5, "ok": True})
        run.append({"idx": 1, "v": float("nan"), "ok": False})
    with open_run(tmp_path, settings={"seed": 0, "max": 5}, match_keys=["seed"]) as run:
        assert run.resumed and run.done_ints("idx") == {0, 1}
        run.append({"idx": 2, "v": 1.0, "ok": True})
    rows = _rows(tmp_path)
    assert [r["idx"] for r in rows] == ["0", "1", "2"]
    assert rows[1]["v"] == "nan" and rows[0]["ok"] == "1"
    # run.json tells the truth about the latest call and is strict JSON
    assert json.loads((tmp_path / "run.json").read_text())["max"] == 5


def test_resume_with_other_settings_raises_typed_error(tmp_path):
    with open_run(tmp_path, settings={"seed": 0, "sigma": 0.25}) as run:
        run.append({"idx": 0})
    with pytest.raises(ResumeMismatchError, match=r"sigma: saved 0.25 != now 0.5") as info:
        with open_run(tmp_path, settings={"seed": 0, "sigma": 0.5}):
            pass
    assert isinstance(info.value, ValueError) and info.value.differences == ("sigma: saved 0.25 != now 0.5",)
    assert not (tmp_path / LOCK_FILE).exists()


def test_existing_rows_without_resume_need_overwrite(tmp_path):
    with open_run(tmp_path, settings={"a": 1}) as run:
        run.append({"idx": 0})
    (tmp_path / "report.md").write_text("old")
    with pytest.raises(ValueError, match="already holds a run"):
        with open_run(tmp_path, settings={"a": 1}, resume=False):
            pass
    with open_run(tmp_path, settings={"a": 2}, resume=False, overwrite=True, artifacts=("report.md",)) as run:
        assert run.done("idx") == set()
        run.append({"idx": 7})
    assert [r["idx"] for r in _rows(tmp_path)] == ["7"] and not (tmp_path / "report.md").exists()


def test_torn_last_line_is_cut_off(tmp_path):
    with open_run(tmp_path, settings={}, preamble=("# my format",)) as run:
        run.append({"idx": 0, "x": 1.5}, {"idx": 1, "x": 2.5})
    with open(tmp_path / "rows.tsv", "a") as f:
        f.write("2\t3.")  # a run killed mid-write
    with open_run(tmp_path, settings={}) as run:
        assert run.done_ints() == {0, 1} and run.preamble == ("# my format",)
        run.append({"idx": 2, "x": 3.5})
    text = (tmp_path / "rows.tsv").read_text()
    assert text.splitlines() == ["# my format", "idx\tx", "0\t1.5", "1\t2.5", "2\t3.5"]


def test_rewrite_drops_rows(tmp_path):
    with open_run(tmp_path, settings={}) as run:
        run.append({"idx": 0, "k": "a"}, {"idx": 0, "k": "b"}, {"idx": 1, "k": "a"})
    with open_run(tmp_path, settings={}) as run:
        run.rewrite([r for r in run.existing if r["idx"] == "0"])
        run.append({"idx": 1, "k": "z"})
    assert [(r["idx"], r["k"]) for r in _rows(tmp_path)] == [("0", "a"), ("0", "b"), ("1", "z")]


def test_rows_must_match_columns(tmp_path):
    with open_run(tmp_path, settings={}) as run:
        run.append({"idx": 0, "a": 1})
        with pytest.raises(ValueError, match="extra \\['b'\\]"):
            run.append({"idx": 1, "a": 1, "b": 2})
        with pytest.raises(ValueError, match="missing \\['a'\\]"):
            run.append({"idx": 1})


def test_lock_refuses_a_second_live_process(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / LOCK_FILE).write_text(str(sleeper.pid))
        with pytest.raises(RunDirBusyError, match=f"in use by another certify run \\(pid {sleeper.pid}\\)"):
            with open_run(tmp_path, settings={}):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: its stale lock is removed and the run opens
    with open_run(tmp_path, settings={}) as run:
        run.append({"idx": 0})
    assert not (tmp_path / LOCK_FILE).exists()


def test_same_process_cannot_open_twice(tmp_path):
    with open_run(tmp_path, settings={}):
        with pytest.raises(RunDirBusyError, match="already open in this process"):
            with open_run(tmp_path, settings={}):
                pass


def test_out_is_a_file_or_unwritable(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ValueError, match="out must be a directory; .* is a file"):
        with open_run(target, settings={}):
            pass
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(ValueError, match="not writable"):
            with open_run(ro, settings={}):
                pass


def test_model_fingerprint_is_one_function_for_all_models():
    class WithScalarBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.register_buffer("mean", torch.tensor(0.286))

        def forward(self, x):
            return self.lin(x - self.mean)

    torch.manual_seed(0)
    a = WithScalarBuffer()
    fp = model_fingerprint(a)
    assert isinstance(fp, str) and len(fp) == 16
    b = WithScalarBuffer()
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(b) == fp
    with torch.no_grad():
        b.mean.add_(1e-7)
    assert model_fingerprint(b) != fp
    assert model_fingerprint(lambda x: x) is None
    half = nn.Linear(2, 2).to(torch.bfloat16)
    assert len(model_fingerprint(half)) == 16


def test_file_sha256(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_json_policy_nan_is_null(tmp_path):
    obj = {"a": float("nan"), "b": float("inf"), "c": (1, 2), "d": torch.tensor([0.5]), "p": tmp_path}
    assert jsonable(obj) == {"a": None, "b": None, "c": [1, 2], "d": [0.5], "p": str(tmp_path)}
    json.loads(dumps(obj))  # strict JSON
    atomic_write_json(tmp_path / "x.json", obj)
    assert json.loads((tmp_path / "x.json").read_text())["a"] is None
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1}) != digest({"a": 1, "b": 3})


def test_format_value():
    assert [format_value(v) for v in (True, 3, 0.1, float("nan"), None, "x")] == ["1", "3", "0.1", "nan", "NA", "x"]
    with pytest.raises(ValueError, match="tabs or newlines"):
        format_value("a\tb")


def test_checks_name_argument_and_range():
    assert check_int("n", 5, 1) == 5
    with pytest.raises(TypeError, match="n must be an integer >= 1, got bool True"):
        check_int("n", True, 1)
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 3\], got 4"):
        check_int("n", 4, 1, 3)
    with pytest.raises(ValueError, match=r"sigma must be a finite number in \(0, inf\]"):
        check_float("sigma", float("nan"), low=0.0, low_open=True)
    with pytest.raises(ValueError, match="method must be one of 'ibp', 'crown'"):
        check_choice("method", "foo", ("ibp", "crown"))
    assert check_choice("method", "CROWN", ("ibp", "crown")) == "crown"
    with pytest.raises(TypeError, match="flag must be True or False"):
        check_bool("flag", 1)


def test_progress_logs_with_eta_off_a_terminal(caplog):
    caplog.set_level("INFO", logger="certify.progress")
    bar = _LogBar(total=4, initial=0, desc="certify", unit="img", every=0.0)
    bar.set_postfix(acc="0.50")
    for _ in range(4):
        bar.update(1)
        time.sleep(0.001)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[-1].startswith("certify: 4/4 img done") and "ETA" in lines[0]
    assert "acc=0.50" in lines[0]
    with progress(total=2, desc="x", enabled=False) as quiet:
        quiet.update(2)
        assert quiet.n == 2
