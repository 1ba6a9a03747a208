"""certify study: consistency checks (proofs vs attacks), rank correlation, configuration, and a tiny
end-to-end study on the digits data exercising caching/resume, report writing and the checks.

The full/quick studies on Fashion-MNIST are slow-marked (``pytest -m slow tests/test_study.py``).
"""
from __future__ import annotations

import json

import pytest
import torch
from scipy import stats

from certify import study
from certify.attacks import SmoothedAttackResult
from certify.reports import RadiusReport


# --------------------------------------------------------------------------------------------
# smoothing consistency
# --------------------------------------------------------------------------------------------
def _report(radii, correct, abstained=None):
    n = len(radii)
    abstained = abstained or [False] * n
    rows = [dict(idx=10 * i, label=i % 3, predict=i % 3 if c else (i + 1) % 3, abstained=a,
                 p_lower=0.9 if not a else 0.4,
                 radius=0.0 if a else r, correct=bool(c and not a), time=0.1)
            for i, (r, c, a) in enumerate(zip(radii, correct, abstained))]
    return RadiusReport(rows, sigma=0.25, alpha=0.001)


def _attack(labels, *, clean_label, success, abstain, clean_abstained=None, alpha=0.001):
    n = len(labels)
    clean_abstained = clean_abstained or [False] * n
    correct = [(not a) and c == y for c, a, y in zip(clean_label, clean_abstained, labels)]
    robust = [c and not s and not a for c, s, a in zip(correct, success, abstain)]
    return SmoothedAttackResult(
        eps=0.25, norm="l2", sigma=0.25, steps=10, step_size=0.05, n_noise=8, random_start=False,
        resample_noise=False, n_predict=500, alpha=alpha, batch_size=100, seed=0, n=n,
        clean_accuracy=sum(correct) / n, robust_accuracy=sum(robust) / n, success_rate=sum(success) / n,
        abstain_rate=sum(abstain) / n, clean_label=tuple(clean_label), clean_abstained=tuple(clean_abstained),
        adv_label=tuple(clean_label), adv_abstained=tuple(abstain), clean_correct=tuple(correct),
        success=tuple(success), abstain=tuple(abstain), perturbation=tuple([0.25] * n), time_s=0.0)


def test_smoothing_consistency_counts_only_flips_inside_certified_balls():
    # 4 examples: certified at 0.5, certified at 0.3, certified only at 0.1, wrong
    rep = _report([0.5, 0.3, 0.1, 0.0], [True, True, True, False])
    labels = [0, 1, 2, 0]
    # the attack flips example 2 (radius 0.1 < 0.25: allowed) and abstains on example 1
    att = _attack(labels, clean_label=[0, 1, 2, 1], success=[False, False, True, False],
                  abstain=[False, True, False, False])
    chk = study.smoothing_consistency(rep, att, radius=0.25, idx=[0, 10, 20, 30])
    assert chk["violations"] == 0 and chk["ok"]
    assert chk["certified_accuracy"] == 0.5          # examples 0 and 1
    assert chk["robust_accuracy"] == 0.25            # only example 0 survives (1 abstains, 2 flipped)
    assert chk["abstain_on_certified"] == 1
    assert not chk["certified_le_robust"] and chk["certified_le_robust_plus_abstain"]

    # a flip inside a certified ball is a violation (example 0, certified at 0.5)
    bad = _attack(labels, clean_label=[0, 1, 2, 1], success=[True, False, True, False],
                  abstain=[False, False, False, False])
    chk = study.smoothing_consistency(rep, bad, radius=0.25, idx=[0, 10, 20, 30])
    assert chk["violations"] == 1 and chk["violating_idx"] == [0]
    # with n = 4 and 2 alpha = 0.002 the binomial allowance at the 0.1% level is 1 violation ...
    assert chk["allowed"] == 1 and chk["ok"]
    # ... and 0 when alpha is so small that one failure is already too unlikely
    tiny = _attack(labels, clean_label=[0, 1, 2, 1], success=[True, False, True, False],
                   abstain=[False] * 4, alpha=1e-6)
    chk = study.smoothing_consistency(rep, tiny, radius=0.25, idx=[0, 10, 20, 30])
    assert chk["allowed"] == 0 and not chk["ok"]

    # PREDICT contradicting a certified label on the clean input is a violation too
    wrong_clean = _attack(labels, clean_label=[2, 1, 2, 1], success=[False] * 4, abstain=[False] * 4, alpha=1e-6)
    chk = study.smoothing_consistency(rep, wrong_clean, radius=0.25, idx=[0, 10, 20, 30])
    assert chk["violating_idx"] == [0] and not chk["ok"]


def test_smoothing_consistency_matches_examples_by_idx_and_rejects_unknown_ones():
    rep = _report([0.5, 0.0], [True, False])
    att = _attack([1, 0], clean_label=[1, 0], success=[True, False], abstain=[False, False], alpha=1e-6)
    # attack order reversed w.r.t. the report: example idx 10 (not certified) was flipped -> fine
    chk = study.smoothing_consistency(rep, att, radius=0.25, idx=[10, 0])
    assert chk["violations"] == 0
    with pytest.raises(ValueError, match="not rows of the report"):
        study.smoothing_consistency(rep, att, radius=0.25, idx=[10, 99])


def test_allowed_failures_is_a_binomial_tail():
    for n, p in [(50, 0.002), (20, 0.002), (1000, 0.002), (10, 0.1)]:
        k = study._allowed_failures(n, p, 1e-3)
        assert stats.binom.sf(k, n, p) <= 1e-3
        assert k == 0 or stats.binom.sf(k - 1, n, p) > 1e-3


# --------------------------------------------------------------------------------------------
# semantic consistency
# --------------------------------------------------------------------------------------------
def test_semantic_consistency_accuracies_and_violations():
    rows = [
        {"idx": 0, "correct": True, "certified": (-0.2, 0.3), "attack": (-0.4, 0.5)},
        {"idx": 1, "correct": True, "certified": (-0.05, 0.05), "attack": (-0.1, None)},   # no flip above 0
        {"idx": 2, "correct": False, "certified": (0.0, 0.0), "attack": (0.0, 0.0)},
    ]
    chk = study.semantic_consistency(rows, levels=[0.1, 0.2])
    assert chk["violations"] == 0 and chk["ok"]
    assert chk["n"] == 3 and chk["n_correct"] == 2
    assert chk["certified_accuracy"] == [1 / 3, 1 / 3]
    # flip found at exactly -0.1: not attack-free on [-0.1, 0.1]
    assert chk["attack_robust_accuracy"] == [1 / 3, 1 / 3]
    assert chk["mean_certified_range"] == pytest.approx([-0.125, 0.175])
    assert chk["mean_attack_range"] == pytest.approx([-0.25, 0.5])     # over sides with a flip
    assert chk["flips_found"] == [2, 1]
    assert chk["mean_gap"] == pytest.approx((0.2 + 0.2 + 0.05) / 3)
    # a flip inside the certified range [-0.2, 0.3] is a violation; so is one at its end point
    for attack in [(-0.1, 0.5), (-0.4, 0.3)]:
        rows[0] = {"idx": 0, "correct": True, "certified": (-0.2, 0.3), "attack": attack}
        chk = study.semantic_consistency(rows, levels=[0.1, 0.2])
        assert chk["violations"] == 1 and chk["violating_idx"] == [0] and not chk["ok"]
    # with the searched range known, a side without a flip counts at the range's end in means and gaps
    rows[0] = {"idx": 0, "correct": True, "certified": (-0.2, 0.3), "attack": (-0.4, 0.5)}
    rows[1] = {"idx": 1, "correct": True, "certified": (-0.05, 0.05), "attack": (-0.1, None), "range": (-0.3, 0.3)}
    chk = study.semantic_consistency(rows, levels=[0.1])
    assert chk["mean_attack_range"] == pytest.approx([-0.25, 0.4])
    assert chk["mean_gap"] == pytest.approx((0.2 + 0.2 + 0.05 + 0.25) / 4)
    # NaN marks 'no flip found' in the semantic report's rows
    rows[0] = {"idx": 0, "correct": True, "certified": (-0.2, 0.3), "attack": (float("nan"), float("nan"))}
    assert study.semantic_consistency(rows, levels=[0.1])["violations"] == 0


class _Threshold(torch.nn.Module):
    """2-class 'model' on 1x2x2 images: class 1 iff the mean pixel exceeds 0.5."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([0.5 - m, m - 0.5], dim=1)


def test_grid_check_semantic_finds_flips_only_outside_the_true_range():
    from semantic_layers import Brightness

    model = _Threshold()
    x = torch.full((1, 2, 2), 0.3)           # class 0; brightness b flips it at b > 0.2
    ok = study.grid_check_semantic(model, x, 0, Brightness(), (-0.3, 0.19), points=51)
    assert ok["flips"] == [] and ok["checked"] >= 51
    bad = study.grid_check_semantic(model, x, 0, Brightness(), (-0.3, 0.3), points=61)
    assert bad["flips"] and min(bad["flips"]) > 0.2 - 1e-6


# --------------------------------------------------------------------------------------------
# rank correlation
# --------------------------------------------------------------------------------------------
def test_rank_correlation_matches_scipy_and_states_n():
    x = [0.9, 0.7, 0.8, 0.5, 0.6, 0.95, 0.4]
    y = [0.85, 0.80, 0.82, 0.70, 0.60, 0.90, 0.75]
    res = study.rank_correlation(x, y, names=list("abcdefg"))
    ref = stats.spearmanr(x, y)
    assert res["n"] == 7
    assert res["spearman_rho"] == pytest.approx(ref.statistic)
    assert res["p_value"] == pytest.approx(ref.pvalue)
    # critical |rho| for n = 7 at 5% (t approximation): p at the critical value <= 0.05, just below it > 0.05
    crit = res["critical_rho_5pct"]
    assert 0.7 < crit < 0.85
    undefined = study.rank_correlation([1, 2], [2, 1])["spearman_rho"]
    assert undefined != undefined     # NaN: fewer than 3 points
    with pytest.raises(ValueError):
        study.rank_correlation([1, 2, 3], [1, 2])
    # exact permutation p-value: a perfect ranking of 5 items is matched (|rho| = 1) by 2 of 5! orderings
    assert study.rank_correlation([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])["p_value_exact"] == pytest.approx(2 / 120)
    assert "p_value_exact" not in study.rank_correlation(list(range(9)), list(range(9)))


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def test_presets_and_bad_configurations():
    q, f = study.quick_config(), study.full_config(seed=3)
    assert [m.name for m in q.models] == [m.name for m in f.models] == [
        "clean", "noise-0.12", "noise-0.25", "noise-0.50", "fgsm", "pgd", "adv-ft"]
    assert f.seed == 3 and q.n_certify < f.n_certify and q.n_estimate < f.n_estimate
    adv = f.model("adv-ft")
    assert adv.init == "clean" and adv.adv_fraction == 0.3 and adv.augment == "pgd"
    json.dumps(f.to_dict())
    with pytest.raises(ValueError, match="source"):
        study.ModelSpec("m", "download")
    with pytest.raises(ValueError, match="pretrained"):
        study.ModelSpec("m", "pretrained")
    with pytest.raises(ValueError, match="sigma"):
        study.ModelSpec("m", "train", augment="noise")
    with pytest.raises(ValueError, match="name"):
        study.ModelSpec("a/b", "train")
    m = study.ModelSpec("m", "train")
    with pytest.raises(ValueError, match="unique"):
        study.StudyConfig(name="x", models=(m, m))
    with pytest.raises(ValueError, match="init"):
        study.StudyConfig(name="x", models=(study.ModelSpec("a", "train", init="b"), study.ModelSpec("b", "train")))
    with pytest.raises(ValueError, match="n_smooth_attack"):
        study.StudyConfig(name="x", models=(m,), n_certify=5, n_smooth_attack=6)
    with pytest.raises(ValueError, match="alpha"):
        study.StudyConfig(name="x", models=(m,), alpha=0.0)
    with pytest.raises(TypeError, match="n_attack"):
        study.StudyConfig(name="x", models=(m,), n_attack=2.5)
    with pytest.raises(ValueError, match="semantic_max_param"):
        study.StudyConfig(name="x", models=(m,), perturbations=("hue",))
    with pytest.raises(TypeError, match="config"):
        study.run_study("unused", config={"name": "x"})
    with pytest.raises(TypeError, match="quick"):
        study.run_study("unused", quick="yes")
    with pytest.raises(ValueError, match="seed"):
        study.run_study("unused", seed=-1)
    with pytest.raises(TypeError, match="verbose"):
        study.run_study("unused", config=q, verbose="no")
    # results.json's config reads back as the same configuration
    assert study.StudyConfig.from_dict(json.loads(json.dumps(f.to_dict()))) == f


def test_example_indices_are_evenly_spaced():
    assert study.example_indices(10_000, 50) == list(range(0, 10_000, 200))
    assert study.example_indices(360, 1000) == list(range(360))
    assert study.example_indices(10, 3) == [0, 3, 6]


# --------------------------------------------------------------------------------------------
# a tiny end-to-end study on the digits data: caching, resume, report, checks
# --------------------------------------------------------------------------------------------
def _tiny_config(**overrides):
    models = (
        study.ModelSpec("plain", "train", augment="none", epochs=3, smooth_sigma=0.25, description="standard"),
        study.ModelSpec("noisy", "train", augment="noise", sigma=0.25, epochs=3, smooth_sigma=0.25,
                        description="noise 0.25"),
        study.ModelSpec("ft", "train", augment="pgd", eps=0.1, adv_fraction=0.3, pgd_steps=2, init="plain", epochs=1,
                        smooth_sigma=0.25, description="fine-tuned from plain with 30% PGD"),
    )
    kw = dict(name="tiny", models=models, dataset="digits", arch="digits_mlp", train_batch_size=64,
              n_attack=60, attack_eps_linf=(0.1,), attack_eps_l2=(0.5,), pgd_steps=5,
              n_certify=8, n_select=50, n_estimate=1000, smooth_batch_size=500,
              n_smooth_attack=8, smooth_attack_radii=(0.25,), smooth_attack_steps=5, smooth_attack_noise=4,
              n_predict=300, n_semantic=3, semantic_grid=41, semantic_kwargs={"attack_grid": 201, "attack_steps": 5},
              synbench_separations=(0.5, 1.0, 2.0, 3.0), synbench_n_train=64, synbench_n_test=64,
              probe_n_train=200, probe_n_test=100, probe_max_iter=30,
              n_hidden_cost=12, hidden_cost_n_estimate=200, transfer_eps=(1 / 255, 4 / 255), n_transfer=12,
              transfer_probe_n_train=200)
    kw.update(overrides)
    names = [m.name for m in kw["models"]]
    # the sweep on the plain and the noise-trained model, the transfer on the plain and the fine-tuned one
    kw.setdefault("hidden_cost_models", tuple(n for n in ("plain", "noisy") if n in names))
    kw.setdefault("transfer_models", tuple(n for n in ("plain", "ft") if n in names))
    return study.StudyConfig(**kw)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, study.run_study(out, config=_tiny_config(), verbose=False)


def test_tiny_study_writes_report_results_plots_and_passes_its_checks(tiny_study):
    out, res = tiny_study
    stages = ("clean", "attacks", "synbench", "probe", "smoothing", "compare", "smooth_attack", "semantic",
              "semantic_grid")
    for name in ("plain", "noisy", "ft"):
        for stage in stages:
            assert stage in res.models[name], (name, stage)
            assert (out / "cache" / name / f"{stage}.json").is_file()
            assert res.timings["per_model"][name][stage]["cached"] is False
        assert (out / "models" / f"{name}.pt").is_file()
    assert set(res.models["plain"]) >= {"hidden_cost", "transfer"}
    assert "hidden_cost" in res.models["noisy"] and "transfer" not in res.models["noisy"]
    assert "transfer" in res.models["ft"] and "hidden_cost" not in res.models["ft"]
    # consistency: proofs never contradicted by attacks on the same examples
    assert res.consistency["status"] == "all passed" and res.consistency["violations"] == 0
    # per model: 1 smoothing radius + 3 semantic families; plus 2 transfer radii on each of 2 models
    assert res.consistency["checks"] == 3 * (1 + 3) + 2 * 2
    for name in ("plain", "noisy", "ft"):
        for chk in res.models[name]["smooth_attack"]["checks"]:
            assert chk["n"] == 8 and chk["violations"] == 0
        for chk in res.models[name]["semantic"]["families"].values():
            # the study's reading of the semantic rows agrees with SemanticReport's own accuracy
            assert chk["certified_accuracy"] == pytest.approx(chk["report_certified_accuracy"])
            assert chk["attack_robust_accuracy"] == pytest.approx(chk["report_attack_accuracy"])
            assert all(c <= a for c, a in zip(chk["certified_accuracy"], chk["attack_robust_accuracy"]))
        assert sum(g["examples"] for g in res.models[name]["semantic_grid"].values()) > 0
    # results.json is strict JSON and holds the same numbers
    data = json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert data["status"] == "complete"
    assert data["models"]["noisy"]["smoothing"] == res.models["noisy"]["smoothing"]
    assert data["correlation"]["main"]["n"] == 3
    # the reported clean accuracy is what the saved model really scores
    from certify import models as zoo
    from certify.data import load_dataset

    model = zoo.build("digits_mlp")
    model.load_state_dict(torch.load(out / "models" / "noisy.pt", weights_only=True))
    model.eval()
    test = load_dataset("digits", split="test")
    with torch.no_grad():
        acc = float((model(test.x).argmax(1) == test.y).float().mean())
    assert res.models["noisy"]["clean"]["accuracy"] == pytest.approx(acc)
    assert res.models["noisy"]["clean"]["n"] == len(test)
    # report: every section, sample counts, and the reproduce commands
    text = res.report.read_text()
    for heading in ("## Models", "## Empirical robust accuracy", "## Randomized smoothing", "### l2", "### linf",
                    "## Semantic perturbations", "### rotation", "## SynBench", "## Rank correlation",
                    "## Hidden cost of smoothing", "## Robustness transfer", "Transfer: a violation",
                    "## Consistency checks", "## Time per stage", "## Reproduce"):
        assert heading in text, heading
    assert "n = 8 test images" in text and "little power" in text
    assert "certify.hidden_cost.sigma_sweep(" in text and "certify.transfer.transfer_bounds(" in text
    # every Markdown table keeps its column count (no cell may contain a bare '|')
    table: list[int] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            table.append(line.count("|"))
        elif table:
            assert len(set(table)) == 1, table
            table = []
    assert "certify.certify_dataset(" in text and "seed=0" in text
    for png in ("certified_accuracy.png", "synbench_vs_probe.png", "semantic_ranges.png", "hidden_cost_disparity.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    assert all(p.is_file() for p in res.plots)


def test_typed_stage_results_match_results_json_and_the_headline_table(tiny_study):
    out, res = tiny_study
    data = json.loads((out / "results.json").read_text())
    for name, stages in res.stages.items():
        # the typed results are what results.json holds, and read back from it unchanged
        assert stages.to_dict() == data["models"][name]
        assert study.ModelStages.from_dict(data["models"][name]).to_dict() == data["models"][name]
        assert stages.smoothing.n == 8 and stages.smoothing.norms["l2"].first is not None
        assert stages.attacks.find("pgd", "linf", 0.1).n == 60
        assert set(stages.semantic.families) == {"brightness", "contrast", "rotation"}
        assert all(c.n == 8 for c in stages.smooth_attack.checks)
    # the README's table from results.json is the report's summary
    table = study.headline_table(out / "results.json")
    assert table.splitlines()[0].startswith("| model | clean acc |")
    assert [line.split(" | ")[0] for line in table.splitlines()[2:5]] == ["| plain", "| noisy", "| ft"]
    assert table.splitlines()[2] in res.report.read_text()
    assert "rotation in degrees" in table          # units as the perturbation states them


def test_hidden_cost_stage_rows_are_consistent_and_round_trip(tiny_study):
    out, res = tiny_study
    for name in ("plain", "noisy"):
        hc = res.stages[name].hidden_cost
        assert isinstance(hc, study.HiddenCostResult)
        assert study.HiddenCostResult.from_dict(json.loads(json.dumps(hc.to_dict()))) == hc
        assert [r.sigma for r in hc.rows] == [0.0, 0.12, 0.25, 0.5]
        assert hc.n == 12 and hc.n_estimate == 200 and sum(hc.class_counts) == 12
        base = hc.row(0.0)
        assert base.abstain_rate == 0.0 and base.changed_fraction == 0.0 and base.vanished == ()
        for r in hc.rows:
            # the overall accuracy is the class accuracies weighted by the class counts
            total = sum(a * k for a, k in zip(r.class_accuracy, hc.class_counts) if a is not None)
            assert total / hc.n == pytest.approx(r.accuracy)
            live = [a for a in r.class_accuracy if a is not None]
            assert r.disparity == pytest.approx(max(live) - min(live))
            assert 0.0 <= r.abstain_rate <= r.changed_fraction + 1e-12
    # sigma 0 is the base classifier: its accuracy on the same examples is the clean accuracy there
    from certify import models as zoo
    from certify.data import load_dataset

    test = load_dataset("digits", split="test")
    idx = study.example_indices(len(test), 12)
    plain = zoo.build("digits_mlp")
    plain.load_state_dict(torch.load(out / "models" / "plain.pt", weights_only=True))
    plain.eval()
    with torch.no_grad():
        acc = float((plain(test.x[idx]).argmax(1) == test.y[idx]).float().mean())
    assert res.stages["plain"].hidden_cost.row(0.0).accuracy == pytest.approx(acc)
    text = res.report.read_text()
    assert "| plain | 0.5 |" in text and "| noisy | 0.12 |" in text


def test_transfer_stage_certificates_survive_pgd_and_round_trip(tiny_study):
    _, res = tiny_study
    for name in ("plain", "ft"):
        tr = res.stages[name].transfer
        assert isinstance(tr, study.TransferStage)
        assert study.TransferStage.from_dict(json.loads(json.dumps(tr.to_dict()))) == tr
        assert [r.eps for r in tr.rows] == [1 / 255, 4 / 255] and tr.n == 12 and tr.probe_n_train == 200
        for r in tr.rows:
            assert r.certified_logit <= r.certified_pairwise <= r.certified_box <= r.clean_accuracy
            # certified examples are never broken by PGD on the composed model
            assert r.ok and r.violations == 0
            assert all(p for c, p in zip(r.certified, r.pgd_robust) if c)
            assert r.certified_box == pytest.approx(sum(r.certified) / r.n)
            assert r.certified_box <= r.pgd_robust_accuracy
            assert r.mean_loss_bound >= r.mean_clean_loss and r.mean_loss_bound_box >= r.mean_clean_loss - 1e-9
        # a larger radius certifies no more and bounds the loss no lower
        small, large = tr.rows
        assert large.certified_box <= small.certified_box and large.mean_loss_bound >= small.mean_loss_bound
    # the check is non-vacuous on this family: something is certified at the small radius
    assert max(res.stages[n].transfer.rows[0].certified_box for n in ("plain", "ft")) > 0


def test_transfer_consistency_and_the_study_summary_count_violations(tiny_study):
    import dataclasses

    from certify.study.checks import consistency_summary
    from certify.study.transfer_stage import transfer_consistency

    assert transfer_consistency([True, True, False], [True, True, False], [1, 2, 3]) == {
        "violations": 0, "violating_idx": [], "ok": True}
    assert transfer_consistency([True, True, False], [True, False, False], [1, 2, 3])["violating_idx"] == [2]
    with pytest.raises(ValueError, match="same length"):
        transfer_consistency([True], [True, False], [0])
    # a transfer row that PGD contradicted is counted by the study's consistency summary
    _, res = tiny_study
    st = res.stages["ft"]
    bad_row = dataclasses.replace(st.transfer.rows[0], violations=2, violating_idx=(0, 5), ok=False)
    broken = dataclasses.replace(st, transfer=dataclasses.replace(st.transfer, rows=(bad_row,)))
    summary = consistency_summary({**res.stages, "ft": broken})
    assert summary.violations == 2 and summary.status == "VIOLATIONS FOUND"
    assert any("ft transfer" in p for p in summary.problems)


def test_hidden_cost_and_transfer_settings_are_checked():
    m = study.ModelSpec("m", "train")
    base = dict(name="x", models=(m,))
    with pytest.raises(ValueError, match="hidden_cost_models"):
        study.StudyConfig(**base, hidden_cost_models=("other",))
    with pytest.raises(TypeError, match="transfer_models"):
        study.StudyConfig(**base, transfer_models="m")
    with pytest.raises(ValueError, match="hidden_cost_sigmas"):
        study.StudyConfig(**base, hidden_cost_sigmas=(0.0, 0.25, 0.25))
    with pytest.raises(ValueError, match="hidden_cost_sigmas"):
        study.StudyConfig(**base, hidden_cost_sigmas=(-0.1,))
    with pytest.raises(ValueError, match="hidden_cost_n_estimate"):
        study.StudyConfig(**base, hidden_cost_n_estimate=0)
    with pytest.raises(ValueError, match="transfer_eps"):
        study.StudyConfig(**base, transfer_eps=(0.0,))
    with pytest.raises(ValueError, match="transfer_eps"):
        study.StudyConfig(**base, transfer_eps=())
    with pytest.raises(ValueError, match="transfer_method"):
        study.StudyConfig(**base, transfer_method="exact")
    with pytest.raises(ValueError, match="n_transfer"):
        study.StudyConfig(**base, n_transfer=0)
    cfg = study.StudyConfig(**base, transfer_models=())
    assert cfg.models_for("transfer") == () and cfg.models_for("hidden_cost") == ("m",)
    q = study.quick_config()
    assert q.models_for("hidden_cost") == ("clean", "noise-0.12", "noise-0.25", "noise-0.50")
    assert q.n_hidden_cost == 100 and q.models_for("transfer") == ("clean", "noise-0.25", "fgsm", "pgd", "adv-ft")
    assert set(study.full_config().models_for("transfer")) == {"clean", "noise-0.25", "fgsm", "pgd", "adv-ft"}


def test_tiny_study_resumes_from_its_caches(tiny_study):
    out, first = tiny_study
    again = study.run_study(out, config=_tiny_config(), verbose=False)
    for name, stages in again.timings["per_model"].items():
        assert all(v["cached"] for v in stages.values()), (name, stages)
    for name in first.models:
        for stage in ("clean", "attacks", "smoothing", "smooth_attack", "semantic", "synbench", "probe"):
            assert again.models[name][stage] == first.models[name][stage]
    # a changed setting re-runs exactly the stages that depend on it
    changed = study.run_study(out, config=_tiny_config(n_attack=30), verbose=False)
    for name, stages in changed.timings["per_model"].items():
        assert stages["attacks"]["cached"] is False
        assert all(v["cached"] for k, v in stages.items() if k != "attacks"), (name, stages)
    assert changed.models["plain"]["attacks"]["n"] == 30
    # every invocation of the folder is logged with its wall time and the number of stages it computed
    history = json.loads((out / "invocations.json").read_text())
    # 3 models x (training + 9 stages) + 2 sigma sweeps + 2 transfers
    assert [h["stages_computed"] for h in history[-3:]] == [3 * 10 + 2 + 2, 0, 3]
    assert changed.timings["total_wall_time_s"] == pytest.approx(sum(h["wall_time_s"] for h in history))


def test_runner_folders_of_other_settings_are_started_afresh(tiny_study):
    out, _ = tiny_study
    cfg = _tiny_config(models=_tiny_config().models[:1], n_select=40)
    res = study.run_study(out, config=cfg, verbose=False)
    t = res.timings["per_model"]["plain"]
    assert t["smoothing"]["cached"] is False and t["semantic"]["cached"] is True
    assert json.loads((out / "smoothing" / "plain" / "run.json").read_text())["n_select"] == 40
    # the semantic runner's folder too (its resume check raises ResumeMismatchError, the study starts over)
    cfg = _tiny_config(models=_tiny_config().models[:1], n_select=40,
                       semantic_kwargs={"attack_grid": 201, "attack_steps": 4})
    res = study.run_study(out, config=cfg, verbose=False)
    t = res.timings["per_model"]["plain"]
    assert t["semantic"]["cached"] is False and t["smoothing"]["cached"] is True
    assert json.loads((out / "semantic" / "plain" / "run.json").read_text())["attack_steps"] == 4
    assert res.models["plain"]["smoothing"]["n"] == 8 and res.consistency["violations"] == 0


def test_interrupted_study_leaves_a_partial_report_and_resumes(tmp_path, monkeypatch):
    cfg = _tiny_config(models=_tiny_config().models[:1], perturbations=("brightness",))
    calls = []

    def boom(self, spec):
        calls.append(spec.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(study._Run, "run_semantic", boom)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(tmp_path, config=cfg, verbose=False)
    assert calls == ["plain"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["status"].startswith("interrupted")
    assert "smoothing" in data["models"]["plain"] and "semantic" not in data["models"]["plain"]
    assert "interrupted" in (tmp_path / "report.md").read_text()
    monkeypatch.undo()
    res = study.run_study(tmp_path, config=cfg, verbose=False)
    t = res.timings["per_model"]["plain"]
    assert t["smoothing"]["cached"] and t["attacks"]["cached"] and not t["semantic"]["cached"]
    assert res.consistency["violations"] == 0


# --------------------------------------------------------------------------------------------
# the quick study through the command line (slow; make test-slow-quick)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_certify_study_quick_cli(tmp_path, capsys):
    from conftest import HAVE_FMNIST

    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    from certify import cli

    # one torch thread: reproducible, and a shared machine cannot oversubscribe it (make test-slow-quick also
    # sets OMP_NUM_THREADS=1 for the BLAS and OpenMP pools)
    threads = torch.get_num_threads()
    try:
        rc = cli.main(["study", "--out", str(tmp_path), "--quick", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["status"] == "complete" and data["consistency"]["violations"] == 0
    assert len(data["models"]) == 7 and data["correlation"]["main"]["n"] == 7
    stages = {n: study.ModelStages.from_dict(m) for n, m in data["models"].items()}
    assert sorted(n for n, st in stages.items() if st.hidden_cost) == ["clean", "noise-0.12", "noise-0.25",
                                                                         "noise-0.50"]
    assert sorted(n for n, st in stages.items() if st.transfer) == ["adv-ft", "clean", "fgsm", "noise-0.25", "pgd"]
    for st in stages.values():
        if st.hidden_cost:
            assert [r.sigma for r in st.hidden_cost.rows] == [0.0, 0.12, 0.25, 0.5] and st.hidden_cost.n == 100
        if st.transfer:
            assert all(r.ok and r.certified_box <= r.pgd_robust_accuracy for r in st.transfer.rows)
    assert (tmp_path / "plots" / "hidden_cost_disparity.png").is_file()
    assert "Spearman rho" in printed
