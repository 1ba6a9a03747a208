"""device= / --device on the bound-based paths: semantic verification (and its Ray workers), robustness transfer,
the hidden-cost sweep and the study. On the CPU every device spelling gives exactly the default's numbers; CUDA
without a GPU is a ValueError naming the device before anything is written (from the CLI: one line, exit 2).
A static check keeps every tensor factory of these modules on an explicit device."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import semantic_layers
from certify import cli, devices, models
from certify.data import load_dataset
from certify.semantic import SemanticReport, semantic_report, verify_semantic
from certify.study import grid_check_semantic
from certify.transfer import feature_box, fresh_probe_transfer, split_model, transfer_bounds

REPO = Path(__file__).resolve().parents[1]
CPU_SPELLINGS = ("cpu", "auto", torch.device("cpu"))


@pytest.fixture
def no_gpu(monkeypatch):
    """Pretend there is no GPU (there is none here; on a GPU machine the error paths are still tested)."""
    monkeypatch.setattr(devices, "cuda_available", lambda: False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _model():
    return models.pretrained("digits_mlp")


def _on_cpu(model: torch.nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())


# --------------------------------------------------------------------------------------------------- semantic
def _cert(cert) -> dict:
    d = cert.to_dict()
    d.pop("time_s")
    d.pop("attack_time_s")
    return d


@pytest.mark.parametrize("family, extra", [
    ("brightness", {}),                                   # composed theta -> layer -> model bound
    ("contrast", {"method": "alpha-crown", "alpha_iterations": 2}),
    ("rotation", {}),                                     # "box" family: CROWN-IBP over pixel boxes
    ("brightness", {"baseline": "linf-ball"}),
    ("brightness_contrast", {}),                          # two parameters
])
def test_verify_semantic_gives_the_default_certificate_on_every_cpu_spelling(digits, no_gpu, family, extra):
    x, y = digits[3]
    p = semantic_layers.get(family)
    kw = dict(n_splits=2, max_refine=1, attack_grid=11, attack_steps=2, **extra)
    ref = verify_semantic(_model(), x, int(y), p, **kw)
    assert ref.pieces and all(isinstance(v, float) for piece in ref.pieces for v in (*piece[0], *piece[1], piece[2]))
    for dev in CPU_SPELLINGS:
        assert _cert(verify_semantic(_model(), x, int(y), p, device=dev, **kw)) == _cert(ref), dev


def test_verify_semantic_cuda_without_gpu_is_refused_before_any_work(digits, no_gpu):
    x, y = digits[0]
    model = _model()
    with pytest.raises(ValueError, match="^device 'cuda': no CUDA GPU"):
        verify_semantic(model, x, int(y), semantic_layers.get("brightness"), device="cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        verify_semantic(model, x, int(y), semantic_layers.get("brightness"), device="tpu")
    assert _on_cpu(model)


def _rows(path: Path) -> list[list[str]]:
    """rows.tsv without the time column."""
    lines = path.read_text().splitlines()
    header = lines[[i for i, line in enumerate(lines) if line.startswith("idx\t")][0]].split("\t")
    t = header.index("time")
    return [[c for j, c in enumerate(line.split("\t")) if j != t] for line in lines if not line.startswith("#")]


def test_semantic_report_rows_are_the_same_on_every_cpu_spelling(tmp_path, digits, no_gpu):
    fams = [semantic_layers.get("brightness"), semantic_layers.get("rotation")]
    kw = dict(max_examples=2, n_splits=2, max_refine=1, attack_grid=11, attack_steps=2, verbose=False, plots=False)
    semantic_report(_model(), digits, fams, out=tmp_path / "default", **kw)
    reference = _rows(tmp_path / "default" / "rows.tsv")
    assert len(reference) == 1 + 2 * 2
    for i, dev in enumerate(CPU_SPELLINGS):
        semantic_report(_model(), digits, fams, out=tmp_path / f"d{i}", device=dev, **kw)
        assert _rows(tmp_path / f"d{i}" / "rows.tsv") == reference, dev
    with pytest.raises(ValueError, match="^device 'cuda': no CUDA GPU"):
        semantic_report(_model(), digits, fams, out=tmp_path / "cuda", device="cuda", **kw)
    assert not (tmp_path / "cuda").exists()


def test_semantic_report_hands_the_device_to_the_ray_workers(tmp_path, digits, no_gpu, monkeypatch):
    """The job every actor runs carries the device; with a remote cluster "cuda" is left to its workers (each
    actor then requests a GPU: tests/test_distributed.py::test_cuda_workers_request_one_gpu_each)."""
    from certify import distributed

    seen: list[dict] = []

    class Handed(Exception):
        pass

    def fake_run_on_ray(**kw):
        seen.append(kw)
        raise Handed

    monkeypatch.setattr(distributed, "run_on_ray", fake_run_on_ray)
    fams = [semantic_layers.get("brightness")]
    kw = dict(max_examples=1, verbose=False, plots=False, workers=2)
    model = _model()
    with pytest.raises(Handed):
        semantic_report(model, digits, fams, out=tmp_path / "auto", device="auto", **kw)
    with pytest.raises(Handed):
        semantic_report(model, digits, fams, out=tmp_path / "remote", device="cuda", ray_address="10.0.0.1:6379",
                        **kw)
    assert [(s["device"], s["job"].device) for s in seen] == [("cpu", "cpu"), ("cuda", "cuda")]
    assert _on_cpu(model)          # the driver's model stays where it is; the workers move their copies
    with pytest.raises(ValueError, match="^device 'cuda': no CUDA GPU"):   # a local cluster: checked here
        semantic_report(model, digits, fams, out=tmp_path / "local", device="cuda", **kw)
    assert not (tmp_path / "local").exists() and len(seen) == 2


def test_semantic_job_on_a_device_gives_the_in_process_rows(digits, no_gpu):
    from certify.semantic.run import SemanticJob

    p = semantic_layers.get("brightness")
    opts = dict(method="crown", baseline=None, n_splits=2, max_refine=1, attack=True, attack_grid=11,
                attack_steps=2, seed=0, margin_tol=1e-4, alpha_iterations=20)
    jobs = [SemanticJob(perturbations={"brightness": p}, ranges={"brightness": ((-0.3, 0.3),)}, opts=opts,
                        batch_size=8, example_input=digits[0][0], device=dev) for dev in ("cpu", "auto")]
    x, y = digits[5]
    rows = [job.run(job.prepare(_model()), (5, "brightness"), x, int(y)) for job in jobs]
    for r in rows:
        for row in r:
            row.pop("time")
    assert json.dumps(rows[0]) == json.dumps(rows[1])      # NaN (no flip found) compares equal as text


# --------------------------------------------------------------------------------------------------- transfer
def _transfer(res) -> dict:
    d = res.to_dict()
    d.pop("time_s")
    return d


def test_transfer_gives_the_default_result_on_every_cpu_spelling(digits, no_gpu):
    x, y = digits.x[:12], digits.y[:12]
    encoder, head = split_model(_model())
    ref = transfer_bounds(encoder, head, x, y, eps=0.02)
    pair = (head.weight.detach().clone(), head.bias.detach().clone())
    for dev in CPU_SPELLINGS:
        assert _transfer(transfer_bounds(encoder, head, x, y, eps=0.02, device=dev)) == _transfer(ref), dev
        assert _transfer(transfer_bounds(encoder, pair, x, y, eps=0.02, device=dev)) == _transfer(ref), dev
    h, lo, hi = feature_box(encoder, x, eps=0.02, device="auto")
    assert h.device.type == lo.device.type == hi.device.type == "cpu" and bool((lo <= h).all() and (h <= hi).all())
    train = digits.x[100:300], digits.y[100:300]
    probe = fresh_probe_transfer(_model(), *train, x, y, eps=0.02, probe_eps=0.0)
    assert _transfer(fresh_probe_transfer(_model(), *train, x, y, eps=0.02, probe_eps=0.0, device="cpu")) \
        == _transfer(probe)


def test_transfer_cuda_without_gpu_is_refused(digits, no_gpu):
    x, y = digits.x[:4], digits.y[:4]
    model = _model()
    encoder, head = split_model(model)
    for call in (lambda: transfer_bounds(encoder, head, x, y, eps=0.01, device="cuda"),
                 lambda: feature_box(encoder, x, eps=0.01, device="cuda"),
                 lambda: fresh_probe_transfer(model, x, y, x, y, eps=0.01, device="cuda")):
        with pytest.raises(ValueError, match="^device 'cuda': no CUDA GPU"):
            call()
    assert _on_cpu(model)


# ------------------------------------------------------------------------------------- hidden cost, grid check
def test_sigma_sweep_and_grid_check_give_the_default_numbers_on_every_cpu_spelling(digits, no_gpu):
    from certify.hidden_cost import sigma_sweep

    x, y = digits.x[:6], digits.y[:6]
    kw = dict(num_classes=10, sigmas=(0.0, 0.25), n=64, alpha=0.01, batch_size=32, seed=1)
    ref = sigma_sweep(_model(), x, y, **kw)
    p = semantic_layers.get("brightness")
    grid = grid_check_semantic(_model(), digits.x[0], int(digits.y[0]), p, (-0.5, 0.5), points=21)
    for dev in CPU_SPELLINGS:
        got = sigma_sweep(_model(), x, y, device=dev, **kw)
        assert (got.accuracy, got.overall, got.abstain_rate, got.vanished) == \
            (ref.accuracy, ref.overall, ref.abstain_rate, ref.vanished), dev
        assert grid_check_semantic(_model(), digits.x[0], int(digits.y[0]), p, (-0.5, 0.5), points=21,
                                   device=dev) == grid
    for call in (lambda: sigma_sweep(_model(), x, y, device="cuda", **kw),
                 lambda: grid_check_semantic(_model(), digits.x[0], 0, p, (-0.1, 0.1), device="cuda")):
        with pytest.raises(ValueError, match="^device 'cuda': no CUDA GPU"):
            call()


# --------------------------------------------------------------------------------------------------- study
def _mini_study():
    from certify import study

    models_ = (study.ModelSpec("plain", "train", augment="none", epochs=1, smooth_sigma=0.25, description="plain"),)
    return study.StudyConfig(
        name="mini", models=models_, dataset="digits", arch="digits_mlp", train_batch_size=64, n_clean=100,
        n_attack=20, attack_eps_linf=(0.1,), attack_eps_l2=(0.5,), pgd_steps=2, n_certify=3, n_select=20,
        n_estimate=100, smooth_batch_size=100, n_smooth_attack=2, smooth_attack_radii=(0.25,), smooth_attack_steps=2,
        smooth_attack_noise=2, n_predict=50, n_semantic=2, perturbations=("brightness",), semantic_grid=11,
        semantic_kwargs={"attack_grid": 11, "attack_steps": 2, "n_splits": 2, "max_refine": 1},
        synbench_separations=(1.0, 2.0), synbench_n_train=32, synbench_n_test=32, probe_n_train=100,
        probe_n_test=50, probe_max_iter=10, n_hidden_cost=4, hidden_cost_n_estimate=50, hidden_cost_models=("plain",),
        transfer_eps=(1 / 255,), n_transfer=4, transfer_probe_n_train=100, transfer_models=("plain",))


def _study_numbers(out: Path) -> dict:
    """Every stage result of results.json without timings (``*time*``, ``*seconds*``) and the paths inside ``out``."""
    text = (out / "results.json").read_text().replace(str(out), "OUT")
    models_ = json.loads(text)["models"]

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(w) for k, w in v.items() if "time" not in k and "seconds" not in k}
        if isinstance(v, list):
            return [strip(w) for w in v]
        return v

    return strip(models_)


def test_study_gives_the_default_results_with_device_cpu_and_auto(tmp_path, no_gpu):
    from certify import study

    study.run_study(tmp_path / "default", config=_mini_study(), verbose=False)
    reference = _study_numbers(tmp_path / "default")
    assert set(reference["plain"]) >= {"clean", "attacks", "smoothing", "semantic", "hidden_cost", "transfer"}
    for dev in ("cpu", "auto"):
        study.run_study(tmp_path / dev, config=_mini_study(), verbose=False, device=dev)
        assert _study_numbers(tmp_path / dev) == reference, dev


def test_study_cuda_without_gpu_is_refused_before_anything_is_written(tmp_path, no_gpu):
    from certify import study

    with pytest.raises(ValueError, match="^device 'cuda': no CUDA GPU"):
        study.run_study(tmp_path / "s", config=_mini_study(), verbose=False, device="cuda")
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv", [
    ["semantic", "--pretrained", "digits_mlp", "--data", "digits", "--perturbation", "brightness", "--max", "1"],
    ["transfer", "--pretrained", "digits_mlp", "--eps", "0.01", "--max", "2"],
    ["study", "--quick"],
])
def test_cli_device_cuda_without_gpu_exits_2_with_one_line(argv, no_gpu, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["-q", *argv, "--out", str(tmp_path / "out"), "--device", "cuda"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device" in err and "no CUDA GPU" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_cli_semantic_and_transfer_device_auto_give_the_default_results(tmp_path, no_gpu, capsys):
    sem = ["-q", "semantic", "--pretrained", "digits_mlp", "--data", "digits", "--perturbation", "brightness",
           "--max", "2", "--n-splits", "2", "--max-refine", "1", "--attack-grid", "11", "--attack-steps", "2"]
    tra = ["-q", "transfer", "--pretrained", "digits_mlp", "--eps", "0.02", "--max", "6", "--attack-steps", "2"]
    for name, argv in (("sem", sem), ("tra", tra)):
        assert cli.main([*argv, "--out", str(tmp_path / f"{name}_default")]) == 0
        assert cli.main([*argv, "--out", str(tmp_path / f"{name}_auto"), "--device", "auto"]) == 0
    assert _rows(tmp_path / "sem_auto" / "rows.tsv") == _rows(tmp_path / "sem_default" / "rows.tsv")
    results = [json.loads((tmp_path / f"tra_{d}" / "transfer.json").read_text()) for d in ("default", "auto")]
    for r in results:
        r.pop("time_s")
    assert results[0] == results[1] and results[0]["attack_check"]["violations_box"] == 0
    report = SemanticReport.from_tsv(tmp_path / "sem_auto" / "rows.tsv")
    assert len(report) == 2


def test_cli_study_device_auto_runs(tmp_path, no_gpu, monkeypatch, capsys):
    from certify.study import driver

    monkeypatch.setattr(driver, "quick_config", lambda seed=0: _mini_study())
    assert cli.main(["-q", "study", "--quick", "--out", str(tmp_path / "s"), "--device", "auto"]) == 0
    data = json.loads((tmp_path / "s" / "results.json").read_text())
    assert data["status"] == "complete" and data["consistency"]["violations"] == 0
    assert set(data["models"]["plain"]) >= {"clean", "smoothing", "semantic", "transfer", "hidden_cost"}


# --------------------------------------------------------------------------------------------------- static
#: tensor factories that allocate on the default (CPU) device unless told otherwise
FACTORIES = {"zeros", "ones", "full", "empty", "tensor", "arange", "linspace", "logspace", "eye", "rand", "randn",
             "randint", "randperm"}
#: the modules of the device-aware paths (semantic verification, transfer, the study's device-dependent stages)
DEVICE_MODULES = [*sorted((REPO / "certify" / "semantic").glob("*.py")), REPO / "certify" / "transfer.py",
                  REPO / "certify" / "study" / "checks.py", REPO / "certify" / "hidden_cost.py"]


#: the semantic_layers functions that run on the image's device (the exact layers are built on the CPU and moved)
DEVICE_FUNCTIONS = {"apply", "pixel_bounds", "_theta_tensor", "_apply", "_pointwise", "_breakpoints", "_bounds",
                    "_grid_coords", "bilinear_zero", "round_outward", "_pivot_of", "_grey_mean"}


def _cpu_factories(path: Path, root: Path = REPO, functions: set[str] | None = None) -> list[str]:
    """``torch.<factory>(...)`` calls without ``device=`` (only inside ``functions`` when given); a call whose result
    is immediately turned into Python numbers (``.tolist()``, ``.item()``) is exempt: it produces no tensor for the
    computation."""
    tree: ast.AST = ast.parse(path.read_text())
    if functions is not None:
        tree = ast.Module(body=[f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in functions],
                          type_ignores=[])
    exempt = {id(node.func.value) for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("tolist", "item") and isinstance(node.func.value, ast.Call)}
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and node.func.attr in FACTORIES):
            continue
        if id(node) in exempt or any(k.arg == "device" for k in node.keywords):
            continue
        bad.append(f"{path.relative_to(root)}:{node.lineno}: torch.{node.func.attr}(...) without device=")
    return bad


def test_tensor_factories_of_the_device_paths_name_their_device():
    bad = [b for path in DEVICE_MODULES for b in _cpu_factories(path)]
    layers = sorted((REPO / "semantic_layers").glob("*.py"))
    found = {f.name for path in layers for f in ast.walk(ast.parse(path.read_text())) if isinstance(f, ast.FunctionDef)}
    assert DEVICE_FUNCTIONS <= found, DEVICE_FUNCTIONS - found
    bad += [b for path in layers for b in _cpu_factories(path, functions=DEVICE_FUNCTIONS)]
    assert not bad, "\n".join(bad)


def test_the_static_check_catches_a_cpu_factory(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import torch\n"
                   "a = torch.zeros(3)\n"
                   "b = torch.zeros(3, device=x.device)\n"
                   "c = torch.linspace(0, 1, 5).tolist()\n"
                   "d = torch.tensor([1.0], dtype=torch.float64)\n")
    assert [line.split(": ")[0] for line in _cpu_factories(src, tmp_path)] == ["m.py:2", "m.py:5"]
    src.write_text("import torch\n"
                   "def _bounds(x):\n"
                   "    return torch.empty(3)\n"
                   "def _layer_spec(x):\n"
                   "    return torch.ones(3)\n")
    assert [line.split(": ")[0] for line in _cpu_factories(src, tmp_path, {"_bounds"})] == ["m.py:3"]


def test_every_command_that_runs_a_model_has_the_device_flag():
    """``certify report`` only reads result files (no model runs), so it alone has no --device."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "report" in sub.choices and len(sub.choices) > 5
    for name, p in sub.choices.items():
        flags = {s for a in p._actions for s in a.option_strings}
        assert ("--device" in flags) == (name != "report"), name
