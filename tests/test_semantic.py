"""Soundness and behaviour of certify.semantic (verify_semantic, SemanticReport, semantic_report).

For EVERY registered family (semantic_layers.available()) a small random CNN is tuned so that the
clean label holds at theta = 0 but a flip exists inside the family's default range (the bias of
the most dangerous other class is raised until its margin at 0 is 40% of the largest margin drop
seen on a grid). Then:

* no flip anywhere in the certified range: a dense grid (>= 1,001 values; 32 x 32 for two
  parameters) plus 200 uniform random parameters, evaluated with ``perturbation.apply`` + model;
* every bounded parameter box's margin lower bound is <= the true margins sampled in the box
  (both ends + 10 interior points per box);
* every reported attack value really flips the label, and the certified range lies strictly
  inside the attack-free range;
* the naive l-inf box baseline never certifies more than the semantic verification.

Failure budget: zero (deterministic seeds; tolerance 1e-4 logits = margin_tol, covering float32).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import semantic_layers
from certify import rundir
from certify.rundir import ResumeMismatchError, RunDirBusyError
from certify.semantic import SemanticReport, resolve_range, semantic_report, verify_semantic
from certify.semantic import run as semantic_run

TOL = 1e-4
FAMILIES = semantic_layers.available()


def _cnn(channels: int = 3, classes: int = 5) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 16, 16), nn.ReLU(), nn.Linear(16, classes)).eval()


class _PoolNet(nn.Module):
    """Normalisation inside forward (0-dim buffers), MaxPool, Dropout (eval), reshape: a 'real' model."""

    def __init__(self, channels: int = 3, classes: int = 5):
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.45))
        self.register_buffer("std", torch.tensor(0.25))
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU(), nn.AvgPool2d(2), nn.Dropout(0.3))
        self.head = nn.Sequential(nn.Linear(8 * 4, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, x):
        h = self.features((x - self.mean) / self.std)
        return self.head(h.reshape(h.shape[0], -1))


def _pool_cnn() -> nn.Module:
    return _PoolNet().eval()


def make_case(p, seed: int = 3, arch=None):
    """Random 3x8x8 image + CNN whose label flips somewhere in p's default range (see module doc)."""
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    torch.manual_seed(seed)
    model = (arch or _cnn)()
    last = model[-1] if isinstance(model, nn.Sequential) else model.head[-1]
    ranges = resolve_range(p, None)
    axes = [torch.linspace(a, b, 41 if len(ranges) == 1 else 11) for a, b in ranges]
    theta = torch.cartesian_prod(*axes).reshape(-1, len(ranges))
    with torch.no_grad():
        z = model(p.apply(x, theta))
        z0 = model(x[None])[0]
        label = int(z0.argmax())
        drops = {j: float(((z[:, label] - z[:, j]) - (z0[label] - z0[j])).min()) for j in range(5) if j != label}
        j = min(drops, key=drops.get)
        delta = 0.4 * max(-drops[j], 1e-3)
        last.bias[j] += (z0[label] - z0[j]) - delta
    assert int(model(x[None]).argmax()) == label
    return model, x, label


def margins_at(model, p, x, label, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = model(p.apply(x, theta.float()))
    other = logits.clone()
    other[:, label] = -math.inf
    return logits[:, label] - other.max(dim=1).values, logits.argmax(dim=1)


def grid_in(cert, n1=1001, n2=32, n_random=200, seed=0):
    """Dense grid + uniform random parameters inside the certified range (k rows)."""
    g = torch.Generator().manual_seed(seed)
    ranges = cert.certified_ranges()
    if len(ranges) == 1:
        lo, hi = ranges[0]
        grid = torch.linspace(lo, hi, n1, dtype=torch.float64).unsqueeze(1)
    else:
        grid = torch.cartesian_prod(*[torch.linspace(a, b, n2, dtype=torch.float64) for a, b in ranges])
    lo_t = torch.tensor([a for a, _ in ranges], dtype=torch.float64)
    hi_t = torch.tensor([b for _, b in ranges], dtype=torch.float64)
    rnd = lo_t + torch.rand(n_random, len(ranges), generator=g, dtype=torch.float64) * (hi_t - lo_t)
    return torch.cat([grid, rnd])


def check_certificate(model, p, x, label, cert):
    """The soundness checks listed in the module docstring (except the baseline comparison)."""
    assert cert.clean_correct
    # 1. no flip inside the certified range
    pts = grid_in(cert)
    assert pts.shape[0] >= 1000
    _, pred = margins_at(model, p, x, label, pts)
    bad = pts[pred != label]
    assert bad.numel() == 0, f"{p.name}: flips inside the certified range {cert.certified} at {bad[:5].tolist()}"
    # 2. every box's margin lower bound is below the sampled true margins
    assert cert.pieces
    g = torch.Generator().manual_seed(1)
    n_checked = 0
    for lo, hi, lb, verified in cert.pieces:
        lo_t, hi_t = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
        inner = lo_t + torch.rand(10, len(lo), generator=g, dtype=torch.float64) * (hi_t - lo_t)
        th = torch.cat([lo_t[None], hi_t[None], inner])
        m, _ = margins_at(model, p, x, label, th)
        assert float(m.min()) >= lb - TOL, f"{p.name}: box {lo}-{hi} bound {lb} > sampled margin {float(m.min())}"
        assert verified == (lb > cert.margin_tol)
        n_checked += th.shape[0]
    assert n_checked >= 12 * len(cert.pieces)
    # 3. attacks are real flips; certified strictly inside the attack-free range
    if cert.n_params == 1:
        c_lo, c_hi = cert.certified
        a_lo, a_hi = cert.attack
        for a in (a_lo, a_hi):
            if a is not None:
                _, pr = margins_at(model, p, x, label, torch.tensor([[a]], dtype=torch.float64))
                assert int(pr[0]) != label, f"{p.name}: reported flip at {a} does not flip"
        assert a_lo is None or a_lo < c_lo
        assert a_hi is None or a_hi > c_hi
        req_lo, req_hi = cert.requested
        assert req_lo <= c_lo <= 0.0 <= c_hi <= req_hi
    else:
        if cert.attack_theta is not None:
            _, pr = margins_at(model, p, x, label, torch.tensor([cert.attack_theta], dtype=torch.float64))
            assert int(pr[0]) != label
            assert cert.attack_scale > cert.certified_scale
        assert 0.0 <= cert.certified_scale <= 1.0
    if cert.tightness is not None:
        assert 0.0 <= cert.tightness < 1.0


def _contains(outer, inner) -> bool:
    return all(o[0] <= i[0] + 1e-12 and i[1] <= o[1] + 1e-12 for o, i in zip(outer, inner))


# ----------------------------------------------------------------------------------------------
VARIANTS = {"contrast:pivot=mean": ("contrast", {"pivot": "mean"}), "contrast:pivot=0": ("contrast", {"pivot": 0.0}),
            "brightness_contrast:pivot=mean": ("brightness_contrast", {"pivot": "mean"}),
            "rotation:fill=0": ("rotation", {"fill": 0.0})}


@pytest.mark.parametrize("variant", ["brightness", "contrast", "hue", "rotation", "brightness_contrast",
                                     *sorted(VARIANTS)])
def test_certificates_sound_on_a_maxpool_model_normalising_inside_forward(variant):
    """Real-model operators (0-dim normalisation buffers, MaxPool, AvgPool, Dropout, reshape) and every
    convention: grid + random parameters inside the certified range never flip, every box bound lies
    below the sampled margins, attacks are real flips."""
    name, opts = VARIANTS.get(variant, (variant, {}))
    p = semantic_layers.get(name, **opts)
    model, x, label = make_case(p, seed=5, arch=_pool_cnn)
    cert = verify_semantic(model, x, label, p, n_splits=8, max_refine=3,
                           attack_grid=401 if p.n_params == 1 else 121)
    check_certificate(model, p, x, label, cert)


@pytest.mark.parametrize("family", FAMILIES)
def test_certificates_are_sound(family):
    p = semantic_layers.get(family)
    model, x, label = make_case(p)
    kw = dict(n_splits=8, max_refine=3, attack_grid=1001 if p.n_params == 1 else 441)
    if p.kind == "box":     # the family's default (finer) splitting
        kw.update(n_splits=None, max_refine=None)
    cert = verify_semantic(model, x, label, p, **kw)
    check_certificate(model, p, x, label, cert)
    # the fixture guarantees a flip on a grid the attack searches, and something certified
    assert cert.attack is not None and any(a is not None for a in cert.attack_ranges()[0] + cert.attack_ranges()[-1])
    widths = [hi - lo for lo, hi in cert.certified_ranges()]
    assert max(widths) > 0, f"{family}: nothing certified on the test fixture"
    # the naive l-inf envelope never certifies more than the semantic bound
    box = verify_semantic(model, x, label, p, baseline="linf-box", attack=False, **kw)
    assert box.baseline == "linf-box" and box.attack is None
    assert _contains(cert.certified_ranges(), box.certified_ranges())
    json.dumps(cert.to_dict())


def test_methods_and_ball_baseline():
    """IBP and the l-inf ball baseline are sound; alpha-CROWN certifies at least what CROWN does."""
    p = semantic_layers.get("brightness")
    model, x, label = make_case(p)
    kw = dict(n_splits=4, max_refine=3, attack=False)
    crown = verify_semantic(model, x, label, p, method="crown", **kw)
    alpha = verify_semantic(model, x, label, p, method="alpha-crown", alpha_iterations=5, **kw)
    assert _contains(alpha.certified_ranges(), crown.certified_ranges())
    for cert in (alpha, verify_semantic(model, x, label, p, method="ibp", **kw),
                 verify_semantic(model, x, label, p, baseline="linf-ball", **kw)):
        pts = grid_in(cert, n1=401, n_random=50)
        _, pred = margins_at(model, p, x, label, pts)
        assert (pred == label).all()
        for lo, hi, lb, _ in cert.pieces:
            m, _ = margins_at(model, p, x, label, torch.tensor([lo, hi], dtype=torch.float64))
            assert float(m.min()) >= lb - TOL


def test_misclassified_and_custom_ranges():
    p = semantic_layers.get("contrast")
    model, x, label = make_case(p)
    wrong = (label + 1) % 5
    cert = verify_semantic(model, x, wrong, p, attack=False)
    assert not cert.clean_correct and cert.certified == (0.0, 0.0) and cert.tightness is None
    assert cert.n_splits == 0 and cert.predicted == label
    one_sided = verify_semantic(model, x, label, p, max_param=(0.0, 0.2), n_splits=4, attack=False)
    assert one_sided.requested == (0.0, 0.2) and one_sided.certified[0] == 0.0
    sym = verify_semantic(model, x, label, p, max_param=0.1, n_splits=4, attack=False)
    assert sym.requested == (-0.1, 0.1)
    by_name = verify_semantic(model, x, label, p, max_param={"contrast": 0.1}, n_splits=4, attack=False)
    assert by_name.certified == sym.certified


def test_bad_input():
    p = semantic_layers.get("hue")
    model, x, label = make_case(p)
    with pytest.raises(ValueError, match="label"):
        verify_semantic(model, x, 5, p)
    with pytest.raises(TypeError, match="label"):
        verify_semantic(model, x, 1.5, p)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        verify_semantic(model, x + 1.0, label, p)
    with pytest.raises(ValueError):
        verify_semantic(model, x[:1], label, p)       # grayscale for a colour family
    with pytest.raises(ValueError):
        verify_semantic(model, x[None].repeat(2, 1, 1, 1), label, p)   # a batch, not one image
    with pytest.raises(ValueError, match="method"):
        verify_semantic(model, x, label, p, method="deeppoly")
    with pytest.raises(ValueError, match="baseline"):
        verify_semantic(model, x, label, p, baseline="l2")
    with pytest.raises(ValueError, match="contain 0"):
        verify_semantic(model, x, label, p, max_param=(5.0, 10.0))
    with pytest.raises(ValueError, match="inverted"):
        verify_semantic(model, x, label, p, max_param=(10.0, -10.0))
    with pytest.raises(ValueError, match="empty"):
        verify_semantic(model, x, label, p, max_param=(0.0, 0.0))
    with pytest.raises(ValueError, match="domain"):
        verify_semantic(model, x, label, p, max_param=500.0)
    with pytest.raises(ValueError, match="max_param"):
        verify_semantic(model, x, label, p, max_param=-1.0)
    with pytest.raises(ValueError, match="n_splits"):
        verify_semantic(model, x, label, p, n_splits=0)
    with pytest.raises(ValueError, match="max_param has no entry"):
        verify_semantic(model, x, label, p, max_param={"rotation": 5.0})
    with pytest.raises(TypeError, match="perturbation"):
        verify_semantic(model, x, label, "hue")
    with pytest.raises(TypeError, match="model"):
        verify_semantic(lambda t: t, x, label, p)


# ----------------------------------------------------------------------------------------------
class TinyDataset:
    name = "tiny"

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_report_rows_resume_and_files(tmp_path, monkeypatch):
    bright = semantic_layers.get("brightness")
    model, x0, label = make_case(bright)
    xs = torch.stack([x0, x0.flip(2), (x0 * 0.8 + 0.1)])
    with torch.no_grad():
        ys = model(xs).argmax(dim=1)
    ys[2] = (ys[2] + 1) % 5                   # one misclassified example
    ds = TinyDataset(xs, ys)
    perts = [bright, semantic_layers.get("brightness_contrast"), semantic_layers.get("rotation")]
    kw = dict(n_splits=4, max_refine=2, attack_grid=101, attack_steps=5,
              max_param={"brightness": 0.2, "brightness_contrast": (0.1, 0.1), "rotation": 5.0})
    out = tmp_path / "run"
    rep = semantic_report(model, ds, perts, out=out, verbose=False, **kw)
    assert len(rep) == 3 * (1 + 2 + 1)
    for name in ("rows.tsv", "run.json", "summary.json", "report.md", "semantic_accuracy.png",
                 "semantic_ranges.png", "semantic_examples.png"):
        assert (out / name).exists(), name
    back = SemanticReport.from_tsv(out / "rows.tsv")
    frame, frame2 = rep.to_frame(), back.to_frame()
    assert frame.equals(frame2)
    # rows agree with direct calls
    direct = verify_semantic(model, xs[1], int(ys[1]), bright, n_splits=4, max_refine=2, attack_grid=101,
                             attack_steps=5, max_param=0.2)
    row = [r for r in rep.rows if r["idx"] == 1 and r["perturbation"] == "brightness"][0]
    assert (row["certified_lo"], row["certified_hi"]) == direct.certified
    wrong = [r for r in rep.rows if r["idx"] == 2]
    assert all(not r["correct"] and r["certified_lo"] == 0.0 == r["certified_hi"] for r in wrong)
    # summary and curves
    s = rep.summary()
    assert set(s) == {"brightness", "brightness_contrast/contrast", "brightness_contrast/brightness", "rotation"}
    assert s["brightness"]["clean_accuracy"] == pytest.approx(2 / 3)
    rs = [0.0, 0.05, 0.1, 0.2]
    cert_acc = rep.certified_accuracy("brightness", rs)
    att_acc = rep.attack_accuracy("brightness", rs)
    assert (cert_acc <= att_acc + 1e-12).all() and (cert_acc[:-1] >= cert_acc[1:]).all()
    assert cert_acc[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="param"):
        rep.certified_accuracy("brightness_contrast", [0.1])
    # resume: nothing is recomputed
    calls = []
    real = semantic_run.verify_semantic
    monkeypatch.setattr(semantic_run, "verify_semantic", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = semantic_report(model, ds, perts, out=out, verbose=False, plots=False, **kw)
    assert calls == [] and again.to_frame().equals(frame)
    # an interrupted run: drop the last rows, resume recomputes only them
    lines = (out / "rows.tsv").read_text().splitlines()
    (out / "rows.tsv").write_text("\n".join(lines[:-2]) + "\n")   # the last two rows: idx 2 rotation + b_c/brightness
    again = semantic_report(model, ds, perts, out=out, verbose=False, plots=False, **kw)
    assert len(calls) == 2 and len(again) == len(rep)
    # settings must match to resume (a ResumeMismatchError naming the difference), conventions included
    with pytest.raises(ResumeMismatchError, match="n_splits"):
        semantic_report(model, ds, perts, out=out, verbose=False, plots=False, **{**kw, "n_splits": 6})
    pivot0 = [bright, semantic_layers.get("brightness_contrast", pivot=0.0), semantic_layers.get("rotation")]
    with pytest.raises(ResumeMismatchError, match="conventions"):
        semantic_report(model, ds, pivot0, out=out, verbose=False, plots=False, **kw)
    # a rerun without resume does not silently overwrite finished rows; overwrite=True starts over
    before = (out / "rows.tsv").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        semantic_report(model, ds, perts, out=out, verbose=False, plots=False, resume=False, **kw)
    assert (out / "rows.tsv").read_text() == before
    fresh = semantic_report(model, ds, perts[:1], out=out, verbose=False, plots=False,
                            resume=False, overwrite=True, **{**kw, "max_examples": 1})
    assert len(fresh) == 1 and not (out / "summary.json").read_text().count("rotation")
    # extending a run (a larger max_examples) resumes it
    more = semantic_report(model, ds, perts[:1], out=out, verbose=False, plots=False, **{**kw, "max_examples": 2})
    assert len(more) == 2


def test_report_run_directory_is_locked(tmp_path):
    """A second run on the same out directory while the first holds it gets a clear error, nothing written."""
    bright = semantic_layers.get("brightness")
    model, x0, label = make_case(bright)
    ds = TinyDataset(x0[None], torch.tensor([label]))
    out = tmp_path / "run"
    with rundir.open_run(out, settings={"other": 1}):
        with pytest.raises(RunDirBusyError, match="already open|in use"):
            semantic_report(model, ds, [bright], out=out, verbose=False, plots=False, n_splits=2, attack=False)
    assert not (out / "rows.tsv").exists()


def test_report_validation(tmp_path):
    p = semantic_layers.get("brightness")
    model, x, label = make_case(p)
    ds = TinyDataset(x[None], torch.tensor([label]))
    with pytest.raises(TypeError, match="perturbations"):
        semantic_report(model, ds, "brightness", out=tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        semantic_report(model, ds, [p, p], out=tmp_path)
    with pytest.raises(ValueError, match="method"):
        semantic_report(model, ds, [p], out=tmp_path, method="exact")
    with pytest.raises(ValueError, match="missing columns"):
        SemanticReport(({"idx": 0},))
    with pytest.raises(FileNotFoundError):
        SemanticReport.from_tsv(tmp_path / "nope.tsv")


def test_cli(tmp_path):
    """``certify semantic`` end to end on a user architecture (file.py:Class) and an .npz dataset."""
    from certify import cli

    src = tmp_path / "tiny_arch.py"
    src.write_text(
        "from torch import nn\n"
        "class Tiny(nn.Sequential):\n"
        "    def __init__(self):\n"
        "        super().__init__(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),\n"
        "                         nn.Flatten(), nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 5))\n")
    model, x, label = make_case(semantic_layers.get("hue"))
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    import numpy as np

    np.savez(tmp_path / "data.npz", x=x[None].numpy(), y=np.array([label]))
    out = tmp_path / "run"
    args = ["-q", "semantic", "--checkpoint", str(ckpt), "--arch", f"{src}:Tiny", "--data", str(tmp_path / "data.npz"),
            "--perturbation", "hue,saturation", "--max-param", "hue=20,saturation=0.1", "--n-splits", "4",
            "--attack-grid", "101", "--out", str(out)]
    assert cli.main(args) == 0
    rep = SemanticReport.from_tsv(out / "rows.tsv")
    assert len(rep) == 2 and {r["perturbation"] for r in rep.rows} == {"hue", "saturation"}
    assert rep.rows[0]["range_hi"] == 20.0
    assert cli.main(args + ["--resume"]) == 0
    assert len(SemanticReport.from_tsv(out / "rows.tsv")) == 2
    with pytest.raises(SystemExit):
        cli.main(args[:-2] + ["--max-param", "hue=abc", "--out", str(out)])


def _grey_cli_setup(tmp_path, layer: str = "nn.ReLU()"):
    """A grayscale user model (file.py:Class, optionally with an unsupported layer) and a 2-image .npz."""
    import numpy as np

    src = tmp_path / "grey_arch.py"
    src.write_text(
        "from torch import nn\n"
        "class Grey(nn.Sequential):\n"
        "    def __init__(self):\n"
        f"        super().__init__(nn.Conv2d(1, 4, 3, 1, 1), {layer}, nn.Flatten(), nn.Linear(4 * 36, 3))\n")
    import importlib.util
    spec = importlib.util.spec_from_file_location("grey_arch_mod", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = mod.Grey().eval()
    ckpt = tmp_path / "grey.pt"
    torch.save(model.state_dict(), ckpt)
    x = torch.rand(2, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    np.savez(tmp_path / "grey.npz", x=x.numpy(), y=y.numpy())
    return ["-q", "semantic", "--checkpoint", str(ckpt), "--arch", f"{src}:Grey", "--data",
            str(tmp_path / "grey.npz"), "--n-splits", "2", "--attack-grid", "11"]


@pytest.mark.parametrize("extra, layer, message", [
    (["--perturbation", "nope"], "nn.ReLU()", "unknown semantic perturbation 'nope'"),
    (["--perturbation", "rotation", "--max-param=5:-5"], "nn.ReLU()", "inverted"),
    (["--perturbation", "brightness", "--max-param=0:0"], "nn.ReLU()", "empty"),
    (["--perturbation", "brightness", "--max-param=0.1:0.3"], "nn.ReLU()", "must contain 0"),
    (["--perturbation", "hue"], "nn.ReLU()", "3-channel"),
    (["--perturbation", "brightness"], "nn.Tanh()", "unsupported operator.*Tanh.*certify bounds only"),
    (["--perturbation", "brightness", "--pivot", "mean"], "nn.ReLU()", "--pivot applies to contrast"),
    (["--perturbation", "contrast", "--pivot", "median"], "nn.ReLU()", "pivot must be"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, extra, layer, message):
    import re

    from certify import cli

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        cli.main(_grey_cli_setup(tmp_path, layer) + extra + ["--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not out.exists() or not any(out.iterdir())


def test_cli_resume_overwrite_and_pivot(tmp_path):
    from certify import cli

    out = tmp_path / "run"
    args = _grey_cli_setup(tmp_path) + ["--perturbation", "contrast,rotation", "--pivot", "mean", "--fill", "0",
                                        "--max-param", "contrast=0.2,rotation=5", "--out", str(out)]
    assert cli.main(args) == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["conventions"]["contrast"]["pivot"] == "mean"
    assert settings["conventions"]["rotation"]["fill"] == 0.0
    assert (out / "semantic_ranges.png").exists()
    rows = (out / "rows.tsv").read_text()
    assert cli.main(args) == 0 and (out / "rows.tsv").read_text() == rows    # resumed: nothing recomputed
    with pytest.raises(SystemExit):
        cli.main(args + ["--no-resume"])                                       # refuses to overwrite
    assert (out / "rows.tsv").read_text() == rows
    with pytest.raises(SystemExit):
        cli.main(args + ["--overwrite"])                                       # --overwrite needs --no-resume
    assert cli.main(args + ["--no-resume", "--overwrite", "--max", "1"]) == 0
    assert len((out / "rows.tsv").read_text().splitlines()) == 2 + 2         # preamble + header + 2 rows
