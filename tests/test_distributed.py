"""certify_dataset / certify smooth on Ray workers: identical rows for any worker count and the in-process path,
a killed worker loses and duplicates no row, SIGTERM on the driver leaves a resumable run, and bad input
(--workers 0, an unreachable --ray-address, a model the workers cannot import, Ray missing) is a one-line error.

One local Ray instance (4 logical CPUs, for the 4-worker test) is shared by the tests of this module;
certify_dataset uses it (and leaves it running) because Ray is already initialised.
"""
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from certify import cli, models
from certify.data import load_dataset
from certify.runs import certify_dataset
from certify.smoothing import Smooth

ray = pytest.importorskip("ray")  # the optional extra certify-toolkit[ray] (installed by `make test`)

from certify.distributed import ModelSource, worker_runtime_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NET_PY = (Path(__file__).resolve().parent / "data" / "slow_mlp.py").read_text()  # SlowMLP
SETTINGS = dict(n_select=20, n_estimate=500, alpha=0.01, batch_size=128, seed=5, first_order=True, skip=50,
                max_examples=6, verbose=False, render=False)


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env=worker_runtime_env())
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray_models")
    (d / "net.py").write_text(NET_PY)
    torch.save({f"inner.{k}": v for k, v in models.pretrained("digits_mlp").state_dict().items()}, d / "slow.pt")
    torch.save(models.pretrained("digits_mlp").state_dict(), d / "digits.pt")
    return d


def _smooth():
    return Smooth(models.pretrained("digits_mlp"), 10, 0.25)


def _rows(path):
    """rows.tsv lines (header and rows, no # comments) without the time column, in file order."""
    lines = [line for line in Path(path).read_text().splitlines() if not line.startswith("#")]
    header = lines[0].split("\t")
    t = header.index("time")
    return [[c for i, c in enumerate(line.split("\t")) if i != t] for line in lines]


def _worker_pids():
    """Processes of certify's Ray actors (Ray names them ray::_CertifyWorker...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("ray::_CertifyWorker"):
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_rows_identical_for_in_process_and_1_or_2_workers(ray_session, tmp_path):
    data = load_dataset("digits")
    certify_dataset(_smooth(), data, out=tmp_path / "inproc", **SETTINGS)
    certify_dataset(_smooth(), data, out=tmp_path / "w1", workers=1, **SETTINGS)
    certify_dataset(_smooth(), data, out=tmp_path / "w2", workers=2, **SETTINGS)
    # a run started in-process and finished on 2 workers
    certify_dataset(_smooth(), data, out=tmp_path / "mixed", **{**SETTINGS, "max_examples": 3})
    report = certify_dataset(_smooth(), data, out=tmp_path / "mixed", workers=2, **SETTINGS)
    reference = _rows(tmp_path / "inproc" / "rows.tsv")
    assert len(reference) == 1 + 6 and len(report) == 6
    assert [r[0] for r in reference[1:]] == [str(50 * k) for k in range(6)]       # example order
    assert sum(r[reference[0].index("abstained")] == "0" for r in reference[1:]) >= 3  # real certificates
    for name in ("w1", "w2", "mixed"):
        assert _rows(tmp_path / name / "rows.tsv") == reference, name


@pytest.mark.slow
def test_sample_chunks_rows_identical_for_1_2_4_workers_chunked_or_not(ray_session, tmp_path):
    from certify.smoothing import SAMPLE_CHUNK

    data = load_dataset("digits")
    settings = dict(SETTINGS, first_order=False, n_estimate=2 * SAMPLE_CHUNK + 500, batch_size=1000, max_examples=4)
    certify_dataset(_smooth(), data, out=tmp_path / "inproc", **settings)
    reference = _rows(tmp_path / "inproc" / "rows.tsv")
    assert len(reference) == 1 + 4
    assert sum(r[reference[0].index("abstained")] == "0" for r in reference[1:]) >= 2  # real certificates
    runs = {"w1": dict(workers=1), "w2_chunks": dict(workers=2, sample_chunks=True),
            "w4_chunks": dict(workers=4, sample_chunks=True), "w4": dict(workers=4)}
    for name, extra in runs.items():
        certify_dataset(_smooth(), data, out=tmp_path / name, **settings, **extra)
        assert _rows(tmp_path / name / "rows.tsv") == reference, name
    import json

    assert json.loads((tmp_path / "w2_chunks" / "run.json").read_text())["sample_chunks"] is True


@pytest.mark.slow
def test_model_source_and_pickled_module_give_the_same_rows(ray_session, tmp_path, files):
    data = load_dataset("digits")
    settings = {**SETTINGS, "max_examples": 4}
    certify_dataset(_smooth(), data, out=tmp_path / "a", workers=2,
                    model_source=ModelSource(checkpoint=files / "digits.pt", arch="digits_mlp"), **settings)
    certify_dataset(_smooth(), data, out=tmp_path / "b", workers=2,
                    model_source=ModelSource(pretrained="digits_mlp"), **settings)
    certify_dataset(_smooth(), data, out=tmp_path / "c", **settings)
    a, b, c = (_rows(tmp_path / name / "rows.tsv") for name in "abc")
    assert a == b == c


@pytest.mark.slow
@pytest.mark.parametrize("chunks", [False, True], ids=["per-example", "sample-chunks"])
def test_killed_worker_loses_and_duplicates_no_row(ray_session, tmp_path, files, chunks):
    from certify.smoothing import SAMPLE_CHUNK

    data = load_dataset("digits")
    model = load_slow(files)
    settings = dict(n_select=20, n_estimate=1000, alpha=0.01, batch_size=100, seed=1, max_examples=12,
                    verbose=False, render=False)  # >= 11 batches of >= 10 ms per example
    if chunks:  # 2 chunk tasks of >= 10 batches each per example
        settings.update(n_estimate=2 * SAMPLE_CHUNK, batch_size=SAMPLE_CHUNK // 10, max_examples=8,
                        sample_chunks=True)
    source = ModelSource(checkpoint=files / "slow.pt", arch=f"{files / 'net.py'}:SlowMLP")
    rows = tmp_path / "killed" / "rows.tsv"
    errors = []

    def run():
        try:
            certify_dataset(Smooth(model, 10, 0.25), data, out=tmp_path / "killed", workers=2, model_source=source,
                            **settings)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not (rows.is_file() and len(rows.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    pids = _worker_pids()
    assert thread.is_alive() and pids, "the run finished before a worker could be killed"
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and not errors, errors
    in_process = {k: v for k, v in settings.items() if k != "sample_chunks"}
    certify_dataset(Smooth(model, 10, 0.25), data, out=tmp_path / "ref", **in_process)
    got = _rows(rows)
    n = settings["max_examples"]
    assert len(got) == n + 1 and len({r[0] for r in got[1:]}) == n                 # no row lost or duplicated
    assert got == _rows(tmp_path / "ref" / "rows.tsv")


def load_slow(files):
    from certify.checkpoints import load_checkpoint

    return load_checkpoint(files / "slow.pt", arch=f"{files / 'net.py'}:SlowMLP")


def _cli_args(files, out, *extra):
    return ["-q", "smooth", "--checkpoint", str(files / "digits.pt"), "--arch", "digits_mlp", "--data", "digits",
            "--sigma", "0.25", "--n-select", "20", "--n-estimate", "300", "--batch-size", "300", "--max", "3",
            "--out", str(out), *extra]


def _cli_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_cli_workers_gives_the_in_process_rows(ray_session, tmp_path, files, capsys):
    assert cli.main(_cli_args(files, tmp_path / "w", "--workers", "2")) == 0
    assert cli.main(_cli_args(files, tmp_path / "p")) == 0
    assert _rows(tmp_path / "w" / "rows.tsv") == _rows(tmp_path / "p" / "rows.tsv")


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
    (["--workers", "-2"], "--workers must be an integer >= 1, got -2"),
    (["--ray-address", "127.0.0.1:6379"], "--ray-address: only used with --workers"),
    (["--workers", "1", "--ray-address", "nonsense"], "--ray-address: ray_address must be 'host:port'"),
])
def test_cli_bad_workers_arguments(tmp_path, files, capsys, extra, message):
    assert message in _cli_error(_cli_args(files, tmp_path / "x", *extra), capsys)


def test_unreachable_ray_address_fails_fast(tmp_path, files, capsys):
    t0 = time.time()
    err = _cli_error(_cli_args(files, tmp_path / "x", "--workers", "1", "--ray-address", "127.0.0.1:1"), capsys)
    assert "no Ray cluster reachable at 127.0.0.1:1" in err
    with pytest.raises(ValueError, match="no Ray cluster reachable"):
        certify_dataset(_smooth(), load_dataset("digits"), workers=1, ray_address="127.0.0.1:1", **SETTINGS)
    assert time.time() - t0 < 30


def test_library_bad_workers_arguments():
    data = load_dataset("digits")
    with pytest.raises(ValueError, match=r"workers must be an integer >= 1, got 0"):
        certify_dataset(_smooth(), data, workers=0, **SETTINGS)
    with pytest.raises(ValueError, match=r"workers must be an integer >= 1, got -3"):
        certify_dataset(_smooth(), data, workers=-3, **SETTINGS)
    with pytest.raises(TypeError, match="workers must be an integer"):
        certify_dataset(_smooth(), data, workers=True, **SETTINGS)
    with pytest.raises(ValueError, match="ray_address is only used with workers"):
        certify_dataset(_smooth(), data, ray_address="auto", **SETTINGS)
    with pytest.raises(TypeError, match="model_source must be"):
        certify_dataset(_smooth(), data, workers=1, model_source="digits_mlp", **SETTINGS)


def test_missing_ray_gives_the_install_command(tmp_path, files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ValueError, match=r"pip install 'certify-toolkit\[ray\]'"):
        certify_dataset(_smooth(), load_dataset("digits"), workers=1, **SETTINGS)
    assert "pip install 'certify-toolkit[ray]'" in _cli_error(_cli_args(files, tmp_path / "x", "--workers", "1"),
                                                                capsys)


@pytest.mark.slow
def test_model_file_the_workers_cannot_import(ray_session, tmp_path, files, capsys, monkeypatch):
    """The driver can import the model's code (its folder is on the driver's sys.path only); the workers cannot."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "ray_only_on_driver_helper.py").write_text("from torch import nn\n\nclass Head(nn.Linear):\n    pass\n")
    (tmp_path / "custom_net.py").write_text(
        "from torch import nn\nfrom ray_only_on_driver_helper import Head\n\n"
        "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.flat, self.fc = nn.Flatten(), Head(64, 10)\n\n"
        "    def forward(self, x):\n        return self.fc(self.flat(x))\n")
    monkeypatch.syspath_prepend(str(lib))
    torch.save({"fc.weight": torch.zeros(10, 64), "fc.bias": torch.arange(10.0)}, tmp_path / "net.pt")
    argv = ["-q", "smooth", "--checkpoint", str(tmp_path / "net.pt"), "--arch", f"{tmp_path / 'custom_net.py'}:Net",
            "--data", "digits", "--sigma", "0.25", "--n-estimate", "100", "--max", "2", "--out", str(tmp_path / "o"),
            "--workers", "1"]
    err = _cli_error(argv, capsys)
    assert "custom_net.py" in err and "ray_only_on_driver_helper" in err, err
    # the library path: the module pickled by Ray, whose class lives in a module only the driver can import
    (lib / "ray_driver_only_models.py").write_text(
        "from torch import nn\n\nclass Lin(nn.Sequential):\n    def __init__(self):\n"
        "        super().__init__(nn.Flatten(), nn.Linear(64, 10))\n")
    import ray_driver_only_models

    smooth = Smooth(ray_driver_only_models.Lin(), 10, 0.25)
    with pytest.raises(ValueError, match=r"ray_driver_only_models\.py.*not importable on the workers"):
        certify_dataset(smooth, load_dataset("digits"), workers=1, **SETTINGS)


# examples of the interrupted run (~0.11 s each on 2 workers: about a second left after the first rows appear)
N_SIGNAL = 16


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_on_the_driver_stops_the_workers_and_resume_completes(tmp_path, files, signum):
    def args_for(out, *extra):
        return ["-q", "smooth", "--checkpoint", str(files / "slow.pt"), "--arch", f"{files / 'net.py'}:SlowMLP",
                "--data", "digits", "--sigma", "0.25", "--n-select", "20", "--n-estimate", "1000", "--batch-size",
                "100", "--max", str(N_SIGNAL), "--out", str(out), *extra]

    before = set(_worker_pids())
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # a shell without job control starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    # across exec (Python then installs no KeyboardInterrupt handler): give the child the default disposition, as
    # a terminal's Ctrl-C finds it (a Python-level handler in the parent is reset to SIG_DFL by exec)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "certify", *args_for(tmp_path / "killed", "--workers", "2")],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    rows = tmp_path / "killed" / "rows.tsv"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            if rows.is_file() and len(rows.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        ours = set(_worker_pids()) - before
        assert proc.poll() is None, "the run finished before it could be interrupted: " + proc.stderr.read()
        assert ours, "no Ray worker processes found"
        n_at_signal = len(rows.read_text().splitlines()) - 1
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (f"exit {proc.returncode} after the signal at {n_at_signal} of {N_SIGNAL} rows, "
                                    f"{len(rows.read_text().splitlines()) - 1} at exit; stderr: {err!r}")
    assert not (tmp_path / "killed" / ".lock").exists()
    deadline = time.time() + 30
    while time.time() < deadline and set(_worker_pids()) & ours:
        time.sleep(0.2)
    assert not set(_worker_pids()) & ours, "the Ray workers outlived the driver"
    n_done = len(rows.read_text().splitlines()) - 1
    assert 2 <= n_done < N_SIGNAL
    assert cli.main(args_for(tmp_path / "killed")) == 0       # resume, in-process this time
    assert cli.main(args_for(tmp_path / "full")) == 0
    assert _rows(rows) == _rows(tmp_path / "full" / "rows.tsv")


@pytest.mark.slow
def test_semantic_rows_identical_in_process_and_on_2_workers(ray_session, tmp_path, capsys):
    import semantic_layers
    from certify.semantic import semantic_report

    families = [semantic_layers.get("brightness"), semantic_layers.get("contrast")]
    kw = dict(max_examples=3, n_splits=2, max_refine=1, attack_grid=11, attack_steps=2, verbose=False, plots=False)
    model = models.pretrained("digits_mlp")
    semantic_report(model, load_dataset("digits"), families, out=tmp_path / "inproc", **kw)
    semantic_report(model, load_dataset("digits"), families, out=tmp_path / "w2", workers=2, **kw)
    reference = _rows(tmp_path / "inproc" / "rows.tsv")
    assert len(reference) == 1 + 3 * 2
    assert _rows(tmp_path / "w2" / "rows.tsv") == reference
    # the CLI, its workers loading the shipped checkpoint themselves
    argv = ["-q", "semantic", "--pretrained", "digits_mlp", "--data", "digits", "--perturbation",
            "brightness,contrast", "--max", "3", "--n-splits", "2", "--max-refine", "1", "--attack-grid", "11",
            "--attack-steps", "2", "--out", str(tmp_path / "cli"), "--workers", "2"]
    assert cli.main(argv) == 0
    assert _rows(tmp_path / "cli" / "rows.tsv") == reference


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
    (["--ray-address", "auto"], "--ray-address: only used with --workers"),
])
def test_cli_semantic_bad_workers_arguments(tmp_path, capsys, extra, message):
    argv = ["-q", "semantic", "--pretrained", "digits_mlp", "--data", "digits", "--perturbation", "brightness",
            "--max", "1", "--out", str(tmp_path / "x"), *extra]
    assert message in _cli_error(argv, capsys)
    assert not (tmp_path / "x" / "rows.tsv").exists()


def test_cuda_workers_request_one_gpu_each(monkeypatch):
    """With device='cuda' every actor asks Ray for one GPU (and one CPU); on the CPU none."""
    from certify import distributed

    seen = []

    class FakeActorClass:
        def options(self, **kw):
            seen.append(kw)
            raise RuntimeError("stop here")

    fake_ray = type("FakeRay", (), {"remote": staticmethod(lambda cls: FakeActorClass())})
    for device, gpus in (("cuda", 1), ("cpu", 0)):
        with pytest.raises(RuntimeError, match="stop here"):
            distributed._start_workers(fake_ray, payload=b"", job=None, model=None, workers=2, device=device,
                                       fingerprint=None)
        assert seen[-1]["num_gpus"] == gpus and seen[-1]["num_cpus"] == 1


@pytest.mark.slow
def test_cuda_on_a_cluster_without_gpus_is_a_clear_error(ray_session, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    with pytest.raises(ValueError, match="the Ray cluster has no GPU"):
        certify_dataset(_smooth(), load_dataset("digits"), out=tmp_path / "x", workers=1, ray_address=address,
                        device="cuda", **SETTINGS)


def test_examples_are_sent_without_the_dataset_storage():
    """dataset[i] is a view of the whole image tensor; a task must carry the image, not the dataset."""
    import pickle

    from certify import distributed

    data = load_dataset("digits")
    x, _ = data[5]
    sent = distributed._own_copy(x)
    assert torch.equal(sent, x)
    assert len(pickle.dumps(sent)) < 4 * x.numel() + 2000 < len(pickle.dumps(x))
