"""The report's "Reproduce" section: the command that made the study and the library calls of every stage,
with the arguments the study used."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from certify.study.config import StudyConfig

__all__ = ["reproduce_lines"]


def _command(c: StudyConfig, out: Path) -> str:
    if c.name in ("quick", "full"):
        return f"certify study --out {out} --seed {c.seed}" + (" --quick" if c.name == "quick" else "")
    return (f"python -c 'from certify.study import run_study, StudyConfig; ...'   # custom configuration {c.name!r}: "
            "see config in results.json")


def _model_calls(c: StudyConfig, n_test: int) -> list[str]:
    attacks = [f"certify.attacks.robust_accuracy(model, x, y, attack={a['attack']!r}, norm={a['norm']!r}, "
               f"eps={a['eps']!r}, batch_size={c.attack_batch_size}, seed={c.seed}"
               + (f", steps={c.pgd_steps}, restarts={c.pgd_restarts})" if a["attack"] == "pgd" else ")")
               for a in c.attack_settings()]
    return ["# models: zoo checkpoints via certify.models.pretrained(name); trained ones:",
            f"certify.training.train({c.arch!r}, train[:train_size], epochs=spec.epochs, seed={c.seed}, "
            f"batch_size={c.train_batch_size}, augment=spec.augment, sigma=spec.sigma, eps=spec.eps, "
            "adv_fraction=spec.adv_fraction, init=<model spec.init>)",
            f"# attacks on idx({n_test}, {c.n_attack}):", *attacks]


def _smoothing_calls(c: StudyConfig, smoothing_kwargs: Mapping[str, Any]) -> list[str]:
    return ["# randomized smoothing (rows in smoothing/<model>/rows.tsv):",
            "certify.certify_dataset(certify.Smooth(model, num_classes=10, sigma=spec.smooth_sigma), test, "
            "out='smoothing/<model>', resume=True, " + ", ".join(f"{k}={v!r}" for k, v in smoothing_kwargs.items())
            + ")",
            f"certify.attacks.smoothed_robust_accuracy(smooth, x[idx], y[idx], eps=r, norm='l2', "
            f"steps={c.smooth_attack_steps}, n_noise={c.smooth_attack_noise}, n_predict={c.n_predict}, "
            f"alpha={c.alpha}, batch_size={c.smooth_batch_size}, seed={c.seed})   # r in "
            f"{list(c.smooth_attack_radii)}, idx = the first {c.n_smooth_attack} rows of the smoothing run"]


def _synbench_calls(c: StudyConfig, n_test: int, n_train: int) -> list[str]:
    seps = "DEFAULT_SEPARATIONS" if c.synbench_separations is None else tuple(c.synbench_separations)
    return ["# SynBench, probing, comparison:",
            f"certify.synbench.evaluate(model, (C, H, W), {tuple(c.synbench_eps)}, n_train={c.synbench_n_train}, "
            f"n_test={c.synbench_n_test}, separations={seps}, seed={c.seed}, layer='penultimate')",
            f"certify.synbench.robust_probe(model, train[idx({n_train}, {c.probe_n_train})], "
            f"test[idx({n_test}, {c.probe_n_test})], {tuple(c.probe_eps)}, layer='penultimate', "
            f"max_iter={c.probe_max_iter}, seed={c.seed})",
            f"certify.synbench.compare(radius_report, sigma={c.mixture_sigma})"]


def _semantic_calls(c: StudyConfig, n_test: int) -> list[str]:
    return ["# semantic:",
            f"certify.semantic_report(model, test[idx({n_test}, {c.n_semantic})], "
            f"[semantic_layers.get(name) for name in {list(c.perturbations)}], out='semantic/<model>', "
            f"method={c.semantic_method!r}, max_param={dict(c.semantic_max_param)!r}"
            + "".join(f", {k}={v!r}" for k, v in c.semantic_kwargs.items()) + ")"]


def _hidden_cost_transfer_calls(c: StudyConfig, n_test: int, n_train: int) -> list[str]:
    n_est = c.hidden_cost_n_estimate or c.n_estimate
    return [f"# hidden cost of smoothing, models {list(c.models_for('hidden_cost'))}:",
            f"certify.hidden_cost.sigma_sweep({{name: model}}, x[idx({n_test}, {c.n_hidden_cost})], "
            f"y[idx({n_test}, {c.n_hidden_cost})], num_classes=10, sigmas={tuple(c.hidden_cost_sigmas)}, "
            f"n={n_est}, alpha={c.alpha}, batch_size={c.smooth_batch_size}, seed={c.seed})",
            f"# robustness transfer, models {list(c.models_for('transfer'))}: encoder, _ = "
            "certify.transfer.split_model(model); a fresh probe = "
            f"estimators.robust_linear.train_robust_probe(encoder(train.x[idx({n_train}, "
            f"{c.transfer_probe_n_train})]), ..., eps=0.0, max_iter={c.probe_max_iter}, seed={c.seed})",
            f"certify.transfer.transfer_bounds(encoder, probe, x[idx({n_test}, {c.n_transfer})], "
            f"y[idx({n_test}, {c.n_transfer})], eps=eps, norm='linf', method={c.transfer_method!r}, clip=True)"
            f"   # eps in {list(c.transfer_eps)}",
            f"certify.attacks.robust_accuracy(nn.Sequential(encoder, probe), x, y, attack='pgd', eps=eps, "
            f"norm='linf', steps={c.pgd_steps}, restarts={c.pgd_restarts}, batch_size=256, seed={c.seed})"]


def reproduce_lines(c: StudyConfig, *, out: Path, n_test: int, n_train: int,
                    smoothing_kwargs: Mapping[str, Any]) -> list[str]:
    """Markdown lines: the (resumable) command, then the library call of every stage."""
    return ["Every number above comes from one command (resumable: re-running it skips finished stages):", "",
            "```bash", _command(c, out), "```", "",
            "The stages call the library with exactly these arguments (`config` = results.json's config; "
            "`test`/`train` = `certify.data.load_dataset(dataset, split=...)`; `idx(N, n)` = evenly spaced indices "
            "0, N//n, 2 N//n, ...):", "", "```python",
            *_model_calls(c, n_test), *_smoothing_calls(c, smoothing_kwargs), *_synbench_calls(c, n_test, n_train),
            *_hidden_cost_transfer_calls(c, n_test, n_train), *_semantic_calls(c, n_test), "```", "",
            f"Seeds: every stage uses seed {c.seed} (training, attack starts, smoothing noise, SynBench data, "
            "probes); the smoothing and smoothed-attack runners derive per-example seeds from it."]
