"""Robustness transfer: exact values on linear encoders, PGD never breaks a certificate, CLI, bad input."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certify import attacks, models
from certify import transfer as tr


def _linear_encoder(A: torch.Tensor, c: torch.Tensor | None = None) -> nn.Module:
    lin = nn.Linear(A.shape[1], A.shape[0])
    with torch.no_grad():
        lin.weight.copy_(A)
        lin.bias.copy_(torch.zeros(A.shape[0]) if c is None else c)
    return nn.Sequential(nn.Flatten(), lin).eval()


def _head(k: int, f: int, seed: int) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(f, k)
    with torch.no_grad():
        head.weight.copy_(torch.randn(k, f, generator=g))
        head.bias.copy_(0.1 * torch.randn(k, generator=g))
    return head


def test_diagonal_encoder_deviation_and_box_criterion_are_exact():
    # g(x) = D x: over the l-inf ball the coordinates range exactly over +-eps |d_k| and the largest
    # ||g(x') - g(x)||_2 is eps ||d||_2 (a vertex attains it); the box criterion is then exact:
    # certified iff m_j(x) - eps ||D (w_y - w_j)||_1 > 0 for every j.
    g = torch.Generator().manual_seed(0)
    d = torch.linspace(0.5, 2.0, 6)
    enc = _linear_encoder(torch.diag(d))
    head = _head(3, 6, 1)
    x = 0.3 + 0.4 * torch.rand(40, 6, generator=g)
    with torch.no_grad():
        y = head(enc(x)).argmax(1)
    y[:5] = (y[:5] + 1) % 3                                   # a few misclassified examples
    eps = 0.05
    for method in ("ibp", "crown"):
        res = tr.transfer_bounds(enc, head, x, y, eps=eps, method=method, clip=False)
        np.testing.assert_allclose(res.feature_deviation, eps * float(d.norm()), rtol=1e-4)  # float32 bounds, widened
        W, b = head.weight.detach().double(), head.bias.detach().double()
        z = x.double() @ torch.diag(d).double() @ W.T + b
        for i in range(40):
            yi = int(y[i])
            exact = all(float(z[i, yi] - z[i, j]) - eps * float(((W[yi] - W[j]) * d.double()).abs().sum()) > 0
                        for j in range(3) if j != yi)
            assert res.certified_box[i] == exact
        assert not any(res.certified_box[:5]) and not any(res.clean_correct[:5])


def test_general_linear_encoder_bound_against_the_exact_value():
    # g(x) = A x, 8 inputs: the exact sup of ||A delta||_2 over the l-inf ball is the largest value at the
    # 2^8 vertices; over the l2 ball it is eps * sigma_max(A). The certified Delta is an upper bound of
    # both; on the l-inf ball it is the norm of the per-coordinate ranges eps ||A_k||_1 (exact per coordinate).
    g = torch.Generator().manual_seed(2)
    A = torch.randn(5, 8, generator=g)
    enc = _linear_encoder(A)
    head = _head(4, 5, 3)
    x = 0.5 + 0.1 * torch.rand(6, 8, generator=g)
    y = torch.zeros(6, dtype=torch.long)
    eps = 0.02
    res = tr.transfer_bounds(enc, head, x, y, eps=eps, method="crown", clip=False)
    verts = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=8)), dtype=torch.float64) * eps
    exact = float((verts @ A.double().T).norm(dim=1).max())
    per_coord = float((eps * A.double().abs().sum(1)).norm())
    assert all(exact <= dv * (1 + 1e-5) for dv in res.feature_deviation)
    np.testing.assert_allclose(res.feature_deviation, per_coord, rtol=1e-4)
    assert per_coord / exact < 2.0          # measured ratio 1.2 for this A
    res2 = tr.transfer_bounds(enc, head, x, y, eps=eps, norm="l2", method="crown", clip=False)
    sigma = float(torch.linalg.matrix_norm(A.double(), 2))
    assert all(eps * sigma <= dv * (1 + 1e-5) for dv in res2.feature_deviation)


def test_criteria_are_nested_and_loss_bounds_dominate_the_clean_loss():
    model = models.pretrained("digits_mlp")
    from certify.data import load_dataset

    ds = load_dataset("digits", split="test")
    enc, head = tr.split_model(model)
    res = tr.transfer_bounds(enc, head, ds.x[:64], ds.y[:64], eps=0.02, method="crown")
    assert sum(res.certified_logit) < sum(res.certified_box)
    for a, b, c in zip(res.certified_logit, res.certified_pairwise, res.certified_box):
        assert (not a or b) and (not b or c)
    assert all(lb >= cl - 1e-9 and lbb >= cl - 1e-6 for lb, lbb, cl in
               zip(res.loss_bound, res.loss_bound_box, res.clean_loss))
    assert res.certified_accuracy("box") <= res.clean_accuracy
    json.dumps(res.to_dict())
    assert "certified accuracy" in res.summary()
    with torch.no_grad():
        assert torch.equal(head(enc(ds.x[:4])), model(ds.x[:4]))


def _pgd_check(name, dataset, n, norm, eps, method):
    # failure budget: none. Every certified example must survive PGD (margin loss, 20 steps x 2 restarts),
    # every example's attacked cross-entropy must stay below both loss bounds.
    model = models.pretrained(name)
    from certify.data import load_dataset

    ds = load_dataset(dataset, split="test")
    x, y = ds.x[:n], ds.y[:n]
    enc, head = tr.split_model(model)
    res = tr.transfer_bounds(enc, head, x, y, eps=eps, norm=norm, method=method)
    assert sum(res.certified_box) >= 3          # the check must have something to attack
    gen = torch.Generator().manual_seed(1)
    x_flip = attacks.pgd(model, x, y, eps=eps, norm=norm, steps=20, restarts=2, generator=gen, loss="margin")
    x_ce = attacks.pgd(model, x, y, eps=eps, norm=norm, steps=20, restarts=2, generator=gen, loss="ce")
    with torch.no_grad():
        broken = (model(x_flip).argmax(1) != y).tolist()
        ce = F.cross_entropy(model(x_ce), y, reduction="none").tolist()
    assert sum(ce) > sum(res.clean_loss)        # the attack is not idle
    for i in range(n):
        if res.certified_box[i]:
            assert not broken[i], i
        assert ce[i] <= res.loss_bound_box[i] + 1e-4 and ce[i] <= res.loss_bound[i] + 1e-4


@pytest.mark.parametrize("norm,eps,method", [("linf", 0.02, "crown"), ("linf", 0.02, "ibp"), ("l2", 0.02, "crown")])
def test_pgd_never_breaks_a_certificate_mlp(norm, eps, method):
    _pgd_check("digits_mlp", "digits", 64, norm, eps, method)


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps,method", [("linf", 0.01, "crown"), ("l2", 0.01, "crown")])
def test_pgd_never_breaks_a_certificate_cnn(norm, eps, method):
    _pgd_check("fmnist_cnn", "fashion-mnist", 48, norm, eps, method)


def test_split_model_and_bad_input():
    model = models.build("fmnist_mlp", seed=0)
    enc, head = tr.split_model(model)
    assert head is model.fc3
    x = torch.rand(3, 1, 28, 28)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(TypeError):
        tr.split_model(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="eps"):
        tr.transfer_bounds(enc, head, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="eps"):
        tr.transfer_bounds(enc, head, x, y, eps=float("nan"))
    with pytest.raises(ValueError, match="norm"):
        tr.transfer_bounds(enc, head, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="method"):
        tr.transfer_bounds(enc, head, x, y, eps=0.1, method="alpha-crown")
    with pytest.raises(ValueError, match="labels"):
        tr.transfer_bounds(enc, head, x, torch.tensor([0, 1, 10]), eps=0.1)
    with pytest.raises(TypeError, match="y must"):
        tr.transfer_bounds(enc, head, x, torch.tensor([0.0, 1.0, 2.0]), eps=0.1)
    with pytest.raises(ValueError, match="features"):
        tr.transfer_bounds(enc, nn.Linear(10, 3), x, y, eps=0.1)
    with pytest.raises(TypeError, match="head"):
        tr.transfer_bounds(enc, "head", x, y, eps=0.1)
    with pytest.raises(TypeError, match="x must"):
        tr.transfer_bounds(enc, head, [1, 2], y, eps=0.1)
    with pytest.raises(ValueError, match="criterion"):
        tr.transfer_bounds(enc, head, x, y, eps=0.0).certified("exact")


def test_cli_transfer(tmp_path, capsys):
    from certify import cli

    out = tmp_path / "tr"
    rc = cli.main(["-q", "transfer", "--pretrained", "digits_mlp", "--eps", "0.01", "--max", "20",
                   "--attack-steps", "10", "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    d = json.loads((out / "transfer.json").read_text())
    assert d["n"] == 20 and d["eps"] == 0.01 and d["norm"] == "linf"
    assert summary["certified_accuracy"] == d["certified_accuracy"]
    assert d["attack_check"]["violations_box"] == 0 and d["attack_check"]["loss_bound_violations"] == 0
    assert "certified accuracy" in (out / "summary.txt").read_text()
    assert (out / "run.json").is_file()
    # bad values found by the command: one line, exit 2
    for bad, msg in ((["--eps", "-1"], "--eps"), (["--eps", "nan"], "--eps"),
                     (["--eps", "0.1", "--mean", "0.5", "--std", "0.2"], "--pretrained"),
                     (["--eps", "0.1", "--out", str(out / "transfer.json")], "--out")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["-q", "transfer", "--pretrained", "digits_mlp", *bad] + ([] if "--out" in bad else
                                                                               ["--out", str(out)]))
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # bad values refused by the parser: exit 2
    for bad in (["--eps", "0.1", "--max", "0"], ["--eps", "0.1", "--attack-steps", "-1"],
                ["--eps", "0.1", "--norm", "l1"], ["--eps", "0.1", "--method", "alpha-crown"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["-q", "transfer", "--pretrained", "digits_mlp", *bad, "--out", str(out)])
        assert exc.value.code == 2
        capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(["-q", "transfer", "--checkpoint", str(tmp_path / "none.pt"), "--eps", "0.1", "--out", str(out)])
    assert exc.value.code == 2


@pytest.mark.slow
def test_fresh_probe_transfer_is_sound_under_pgd():
    from certify.data import load_dataset

    model = models.pretrained("digits_mlp")
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    x, y = test.x[:64], test.y[:64]
    res = tr.fresh_probe_transfer(model, train.x[:600], train.y[:600], x, y, eps=0.02, method="crown")
    assert res.clean_accuracy > 0.8 and sum(res.certified_box) >= 10
    enc, _ = tr.split_model(model)
    # rebuild the composed model with the probe the function fitted (same deterministic fit)
    from estimators import robust_linear as rl

    with torch.no_grad():
        h = enc(train.x[:600]).double().numpy()
    probe = rl.train_robust_probe(h, train.y[:600].numpy(), num_classes=10, eps=0.0, weight_decay=1e-4, seed=0)
    head = nn.Linear(h.shape[1], 10)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(probe.weight))
        head.bias.copy_(torch.from_numpy(probe.bias))
    composed = nn.Sequential(enc, head).eval()
    with torch.no_grad():
        assert (composed(x).argmax(1) == y).float().mean().item() == pytest.approx(res.clean_accuracy)
    x_adv = attacks.pgd(composed, x, y, eps=0.02, norm="linf", steps=20, restarts=2,
                        generator=torch.Generator().manual_seed(0), loss="margin")
    with torch.no_grad():
        broken = (composed(x_adv).argmax(1) != y).tolist()
    assert not any(b and c for b, c in zip(broken, res.certified_box))
    with pytest.raises(ValueError, match="probe_eps"):
        tr.fresh_probe_transfer(model, train.x[:50], train.y[:50], x, y, eps=0.02, probe_eps=-1.0)
