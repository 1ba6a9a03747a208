"""What a study computes: :class:`ModelSpec` (one model), :class:`StudyConfig` (every size and setting)
and the two presets :func:`quick_config` and :func:`full_config`.

Training defaults (PGD steps, adversarial fraction, batch size, augmentations) are read from
:mod:`certify.training`, which owns them.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

from certify import training
from certify._checks import check_bool, check_float, check_float_tuple, check_int
from certify._jsonio import jsonable

__all__ = ["ModelSpec", "StudyConfig", "quick_config", "full_config", "example_indices", "SOURCES", "AUGMENTS",
           "TRAIN_DEFAULTS"]

SOURCES = ("pretrained", "train")
#: training augmentations, as accepted by :func:`certify.training.train`
AUGMENTS = training.AUGMENTS
#: the keyword defaults of :func:`certify.training.train` (the study's training settings start from them)
TRAIN_DEFAULTS: Mapping[str, Any] = {
    name: p.default for name, p in inspect.signature(training.train).parameters.items()
    if p.default is not inspect.Parameter.empty}


def example_indices(n_total: int, n: int) -> list[int]:
    """Evenly spaced indices ``0, skip, 2 skip, ...`` (``skip = n_total // n``), ``min(n, n_total)`` of them.

    >>> example_indices(10, 3)
    [0, 3, 6]
    """
    n = min(int(n), int(n_total))
    skip = max(1, n_total // n)
    return list(range(0, skip * n, skip))


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study.

    Attributes:
        name: short key used in tables, file names and caches (letters, digits, ``.``, ``_``, ``-``).
        source: ``"pretrained"`` (a shipped zoo checkpoint, :func:`certify.models.pretrained`) or
            ``"train"`` (trained by the study with :func:`certify.training.train` into ``out/models``).
        pretrained: zoo checkpoint name (source ``"pretrained"``).
        augment: training augmentation (source ``"train"``): one of :data:`AUGMENTS`.
        sigma: Gaussian training-noise level in pixel units (augment ``"noise"``), else 0.
        eps: l-inf radius (pixel units) of the adversarial training examples (augment fgsm / pgd).
        adv_fraction: fraction of each batch replaced by adversarial examples (fgsm / pgd).
        pgd_steps: PGD steps per adversarial training example (augment pgd).
        init: name of another model of the study to start from (fine-tuning); it must come earlier.
        epochs: training epochs. train_size: use the first ``train_size`` training images (None: all).
        smooth_sigma: noise level of the smoothed classifier certified for this model (pixel units).
        description: one line for the report.
    """

    name: str
    source: str
    pretrained: str | None = None
    augment: str = "none"
    sigma: float = 0.0
    eps: float = 0.0
    adv_fraction: float = TRAIN_DEFAULTS["adv_fraction"]
    pgd_steps: int = TRAIN_DEFAULTS["pgd_steps"]
    init: str | None = None
    epochs: int = 1
    train_size: int | None = None
    smooth_sigma: float = 0.25
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not all(c.isalnum() or c in "._-" for c in self.name):
            raise ValueError(f"ModelSpec.name must be a non-empty string of letters, digits, '.', '_' or '-', "
                             f"got {self.name!r}")
        if self.source not in SOURCES:
            raise ValueError(f"ModelSpec.source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "pretrained":
            if not isinstance(self.pretrained, str) or not self.pretrained:
                raise ValueError(f"model {self.name!r}: source 'pretrained' needs pretrained=<zoo checkpoint name>")
            if self.init is not None:
                raise ValueError(f"model {self.name!r}: init only applies to source 'train'")
        if self.augment not in AUGMENTS:
            raise ValueError(f"ModelSpec.augment must be one of {AUGMENTS}, got {self.augment!r}")
        check_float(f"{self.name}.sigma", self.sigma, low=0.0)
        check_float(f"{self.name}.eps", self.eps, low=0.0)
        check_float(f"{self.name}.adv_fraction", self.adv_fraction, low=0.0, high=1.0, low_open=True)
        check_float(f"{self.name}.smooth_sigma", self.smooth_sigma, low=0.0, low_open=True)
        check_int(f"{self.name}.epochs", self.epochs, 1)
        check_int(f"{self.name}.pgd_steps", self.pgd_steps, 1)
        if self.train_size is not None:
            check_int(f"{self.name}.train_size", self.train_size, 1)
        if self.source == "train":
            if self.augment == "noise" and self.sigma <= 0:
                raise ValueError(f"model {self.name!r}: augment 'noise' needs sigma > 0")
            if self.augment in ("fgsm", "pgd") and self.eps <= 0:
                raise ValueError(f"model {self.name!r}: augment {self.augment!r} needs eps > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _default_models(*, epochs: Mapping[str, int], train_size: int | None, adv_eps: float,
                    pgd_steps: int) -> tuple[ModelSpec, ...]:
    """The family of the study: 3 shipped zoo checkpoints + 4 models the study trains."""
    return (
        ModelSpec("clean", "pretrained", pretrained="fmnist_cnn", smooth_sigma=0.25,
                  description="zoo fmnist_cnn, standard training"),
        ModelSpec("noise-0.12", "train", augment="noise", sigma=0.12, epochs=epochs["noise"],
                  train_size=train_size, smooth_sigma=0.12,
                  description="Gaussian noise augmentation, sigma 0.12"),
        ModelSpec("noise-0.25", "pretrained", pretrained="fmnist_cnn_sigma0.25", smooth_sigma=0.25,
                  description="zoo fmnist_cnn_sigma0.25, Gaussian noise augmentation"),
        ModelSpec("noise-0.50", "pretrained", pretrained="fmnist_cnn_sigma0.50", smooth_sigma=0.5,
                  description="zoo fmnist_cnn_sigma0.50, Gaussian noise augmentation"),
        ModelSpec("fgsm", "train", augment="fgsm", eps=adv_eps, adv_fraction=1.0, epochs=epochs["fgsm"],
                  train_size=train_size, smooth_sigma=0.25,
                  description=f"FGSM adversarial training, l-inf eps {adv_eps:g}"),
        ModelSpec("pgd", "train", augment="pgd", eps=adv_eps, adv_fraction=1.0, pgd_steps=pgd_steps,
                  epochs=epochs["pgd"], train_size=train_size, smooth_sigma=0.25,
                  description=f"PGD-{pgd_steps} adversarial training, l-inf eps {adv_eps:g}"),
        ModelSpec("adv-ft", "train", augment="pgd", eps=adv_eps, adv_fraction=0.3, pgd_steps=pgd_steps,
                  init="clean", epochs=epochs["finetune"], train_size=train_size, smooth_sigma=0.25,
                  description=f"zoo fmnist_cnn fine-tuned with 30% PGD-{pgd_steps} data, l-inf eps {adv_eps:g}"),
    )


_POSITIVE_INTS = ("n_attack", "pgd_steps", "pgd_restarts", "attack_batch_size", "n_certify", "n_select", "n_estimate",
                  "smooth_batch_size", "n_smooth_attack", "smooth_attack_steps", "smooth_attack_noise", "n_predict",
                  "n_semantic", "synbench_n_test", "probe_n_train", "probe_n_test", "probe_max_iter", "n_hidden_cost",
                  "n_transfer", "transfer_probe_n_train")


@dataclass(frozen=True)
class StudyConfig:
    """Every size and setting of a study (echoed into results.json; stage caches are keyed on them).

    Example counts are taken as evenly spaced test indices ``0, skip, 2 skip, ...`` with
    ``skip = len(test) // n`` (Cohen et al.'s convention), so every stage that names the same ``n``
    uses the same examples, and the consistency checks compare proofs and attacks on identical inputs.
    Sizes and radii are in pixel units on the [0, 1] scale; ``alpha`` is the failure probability of each
    smoothing certificate and of each PREDICT call.
    """

    name: str
    models: tuple[ModelSpec, ...]
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    arch: str = "fmnist_cnn"
    seed: int = 0
    train_batch_size: int = TRAIN_DEFAULTS["batch_size"]
    # clean accuracy (None = the whole test split)
    n_clean: int | None = None
    # attacks on the base classifier
    n_attack: int = 1000
    attack_eps_linf: tuple[float, ...] = (0.05, 0.1)
    attack_eps_l2: tuple[float, ...] = (0.5, 1.0)
    pgd_steps: int = 10
    pgd_restarts: int = 1
    attack_batch_size: int = 250
    # randomized smoothing certification
    n_certify: int = 50
    n_select: int = 100
    n_estimate: int = 10_000
    alpha: float = 0.001
    first_order: bool = True
    smooth_batch_size: int = 1000
    radii_l2: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    radii_l1: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    radii_linf: tuple[float, ...] = (0.0, 1 / 255, 2 / 255, 4 / 255)
    # smoothed-classifier attack (consistency check), l2, on the first n_smooth_attack smoothing examples
    n_smooth_attack: int = 50
    smooth_attack_radii: tuple[float, ...] = (0.25, 0.5)
    smooth_attack_steps: int = 20
    smooth_attack_noise: int = 16
    n_predict: int = 1000
    # semantic verification
    n_semantic: int = 30
    perturbations: tuple[str, ...] = ("brightness", "contrast", "rotation")
    semantic_max_param: Mapping[str, float] = field(default_factory=lambda: {
        "brightness": 0.3, "contrast": 0.5, "rotation": 30.0})
    semantic_levels: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: {
        "brightness": (0.05, 0.1, 0.2), "contrast": (0.1, 0.2, 0.4), "rotation": (2.0, 5.0, 10.0)})
    semantic_method: str = "crown"
    semantic_kwargs: Mapping[str, Any] = field(default_factory=dict)
    semantic_grid: int = 201
    # SynBench and linear probing
    synbench_eps: tuple[float, ...] = (0.0, 0.2)
    synbench_separations: tuple[float, ...] | None = None   # None: the official 0.1..4.9
    synbench_n_train: int = 2048
    synbench_n_test: int = 2048
    a_t: float = 0.7
    probe_eps: tuple[float, ...] = (0.0, 0.2)
    probe_n_train: int = 10_000
    probe_n_test: int = 2000
    probe_max_iter: int = 500
    # SynBench comparison
    mixture_sigma: float = 1.0
    # hidden cost of smoothing: accuracy per class against sigma (None: every model; (): none)
    hidden_cost_models: tuple[str, ...] | None = None
    hidden_cost_sigmas: tuple[float, ...] = (0.0, 0.12, 0.25, 0.5)
    n_hidden_cost: int = 100
    hidden_cost_n_estimate: int | None = None     # noise samples per prediction (None: n_estimate)
    # robustness transfer to a fresh linear probe (None: every model; (): none)
    transfer_models: tuple[str, ...] | None = None
    transfer_eps: tuple[float, ...] = (1 / 255, 2 / 255)
    transfer_method: str = "crown"
    n_transfer: int = 100
    transfer_probe_n_train: int = 2000

    def __post_init__(self) -> None:
        self._check_models()
        self._check_sizes()
        self._check_radii()
        self._check_semantic()
        self._check_hidden_cost_transfer()

    def _set(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)

    def _check_models(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        models = tuple(self.models)
        if not models or not all(isinstance(m, ModelSpec) for m in models):
            raise TypeError("models must be a non-empty sequence of ModelSpec")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for i, m in enumerate(models):
            if m.init is not None and m.init not in names[:i]:
                raise ValueError(f"model {m.name!r}: init={m.init!r} must name a model listed before it")
        self._set("models", models)

    def _check_sizes(self) -> None:
        check_int("seed", self.seed, 0)
        check_int("train_batch_size", self.train_batch_size, 1)
        if self.n_clean is not None:
            check_int("n_clean", self.n_clean, 1)
        for key in _POSITIVE_INTS:
            check_int(key, getattr(self, key), 1)
        check_int("synbench_n_train", self.synbench_n_train, 8)
        check_int("semantic_grid", self.semantic_grid, 3)
        if self.n_smooth_attack > self.n_certify:
            raise ValueError(f"n_smooth_attack ({self.n_smooth_attack}) must be <= n_certify ({self.n_certify}): "
                             "the smoothed attack runs on the smoothing examples")
        check_float("alpha", self.alpha, low=0.0, high=0.5, low_open=True, high_open=True)
        check_float("a_t", self.a_t, low=0.5, high=1.0, low_open=True)
        check_float("mixture_sigma", self.mixture_sigma, low=0.0, low_open=True)
        check_bool("first_order", self.first_order)

    def _check_radii(self) -> None:
        for key in ("attack_eps_linf", "attack_eps_l2", "smooth_attack_radii"):
            self._set(key, check_float_tuple(key, getattr(self, key), low=0.0, low_open=True))
        for key in ("radii_l2", "radii_l1", "radii_linf", "probe_eps"):
            self._set(key, check_float_tuple(key, getattr(self, key), low=0.0))
        self._set("synbench_eps", check_float_tuple("synbench_eps", self.synbench_eps, low=0.0, high=1.0,
                                                    high_open=True))
        if 0.0 not in self.synbench_eps:
            raise ValueError("synbench_eps must contain 0.0 (the score correlated with probe accuracy)")
        if 0.0 not in self.probe_eps:
            raise ValueError("probe_eps must contain 0.0 (the linear-probe accuracy)")
        if self.synbench_separations is not None:
            self._set("synbench_separations", check_float_tuple("synbench_separations", self.synbench_separations,
                                                                low=0.0, low_open=True))

    def _check_semantic(self) -> None:
        perts = tuple(self.perturbations)
        for p in perts:
            if p not in self.semantic_max_param:
                raise ValueError(f"semantic_max_param has no entry for perturbation {p!r}")
            if p not in self.semantic_levels:
                raise ValueError(f"semantic_levels has no entry for perturbation {p!r}")
            check_float(f"semantic_max_param[{p!r}]", self.semantic_max_param[p], low=0.0, low_open=True)
        self._set("perturbations", perts)
        self._set("semantic_max_param", {p: float(self.semantic_max_param[p]) for p in perts})
        self._set("semantic_levels", {
            p: check_float_tuple(f"semantic_levels[{p!r}]", self.semantic_levels[p], low=0.0, low_open=True)
            for p in perts})
        self._set("semantic_kwargs", dict(self.semantic_kwargs))

    def _model_subset(self, key: str) -> None:
        value = getattr(self, key)
        if value is None:
            return
        if isinstance(value, str) or not all(isinstance(n, str) for n in value):
            raise TypeError(f"{key} must be None or a sequence of model names, got {value!r}")
        unknown = [n for n in value if n not in self.model_names]
        if unknown:
            raise ValueError(f"{key} names models that are not in the study: {unknown} (models: {self.model_names})")
        self._set(key, tuple(value))

    def _check_hidden_cost_transfer(self) -> None:
        from certify.transfer import METHODS

        self._model_subset("hidden_cost_models")
        self._model_subset("transfer_models")
        sigmas = check_float_tuple("hidden_cost_sigmas", self.hidden_cost_sigmas, low=0.0)
        if not sigmas or len(set(sigmas)) != len(sigmas):
            raise ValueError(f"hidden_cost_sigmas must be a non-empty sequence of distinct numbers >= 0, "
                             f"got {self.hidden_cost_sigmas!r}")
        self._set("hidden_cost_sigmas", sigmas)
        if self.hidden_cost_n_estimate is not None:
            check_int("hidden_cost_n_estimate", self.hidden_cost_n_estimate, 1)
        eps = check_float_tuple("transfer_eps", self.transfer_eps, low=0.0, low_open=True)
        if not eps:
            raise ValueError("transfer_eps must name at least one l-inf radius > 0")
        self._set("transfer_eps", eps)
        if self.transfer_method not in METHODS:
            raise ValueError(f"transfer_method must be one of {METHODS}, got {self.transfer_method!r}")

    def models_for(self, stage: str) -> tuple[str, ...]:
        """The models a per-model-subset stage (``"hidden_cost"`` or ``"transfer"``) runs on, in study order."""
        chosen = {"hidden_cost": self.hidden_cost_models, "transfer": self.transfer_models}[stage]
        return tuple(n for n in self.model_names if chosen is None or n in chosen)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def radii(self) -> dict[str, tuple[float, ...]]:
        """The certified-accuracy radius grid per norm (pixel units)."""
        return {"l2": self.radii_l2, "l1": self.radii_l1, "linf": self.radii_linf}

    def attack_settings(self) -> list[dict[str, Any]]:
        """The base-classifier attacks of the study, in table order: FGSM / PGD l-inf, then PGD l2."""
        out = [{"attack": "fgsm", "norm": "linf", "eps": e} for e in self.attack_eps_linf]
        out += [{"attack": "pgd", "norm": "linf", "eps": e} for e in self.attack_eps_linf]
        out += [{"attack": "pgd", "norm": "l2", "eps": e} for e in self.attack_eps_l2]
        return out

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["models"] = [m.to_dict() for m in self.models]
        return jsonable(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StudyConfig":
        """The configuration of a results.json ``config`` entry (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["models"] = tuple(ModelSpec.from_dict(m) for m in d["models"])
        return cls(**kw)


def quick_config(seed: int = 0) -> StudyConfig:
    """The CI-sized study: all 7 models (the 4 trained ones on the first 6,000 training images for one
    epoch, PGD with 3 steps), fewer examples and samples in every stage than :func:`full_config`; the
    sigma sweep on 100 images (500 noise samples per prediction), the robustness transfer on 20 images
    (probe on 1,000 training images), on the same models as :func:`full_config`.

    ``results.json`` records the measured time of every stage.
    """
    models = _default_models(epochs={"noise": 1, "fgsm": 1, "pgd": 1, "finetune": 1}, train_size=6000,
                             adv_eps=0.1, pgd_steps=3)
    return StudyConfig(
        name="quick", models=models, seed=seed, n_clean=None,
        n_attack=200, attack_eps_linf=(0.05, 0.1), attack_eps_l2=(1.0,), pgd_steps=10,
        n_certify=20, n_select=100, n_estimate=2000, alpha=0.001,
        n_smooth_attack=10, smooth_attack_radii=(0.25,), smooth_attack_steps=8, smooth_attack_noise=8,
        n_predict=300,
        n_semantic=3, semantic_grid=101, semantic_kwargs={"attack_grid": 401, "attack_steps": 10},
        synbench_separations=tuple(round(0.2 * k, 1) for k in range(1, 25)), synbench_n_train=512,
        synbench_n_test=512, probe_n_train=2000, probe_n_test=1000, probe_max_iter=150,
        hidden_cost_models=("clean", "noise-0.12", "noise-0.25", "noise-0.50"), n_hidden_cost=100,
        hidden_cost_n_estimate=500,
        transfer_models=("clean", "noise-0.25", "fgsm", "pgd", "adv-ft"), n_transfer=20,
        transfer_eps=(1 / 255, 2 / 255), transfer_probe_n_train=1000,
    )


def full_config(seed: int = 0) -> StudyConfig:
    """The full study: the 4 study-trained models on all 60,000 training images (noise 2 epochs, FGSM 2,
    PGD-5 1, 30%-PGD-5 fine-tune 1); attacks on 1,000 test images, smoothing on 100 (n_estimate 10,000),
    the smoothed attack on 50 of them at 2 radii, semantic verification on 20 images per family; the sigma
    sweep on 200 images (2,000 noise samples per prediction) of the clean and the three noise-trained
    models; the robustness transfer of a fresh linear probe (5,000 training images) on 200 images at
    l-inf 1/255 and 2/255 for the clean model (reference) and the four robust-training variants
    (noise 0.25, FGSM, PGD, 30%-PGD fine-tune).

    ``results.json`` records the measured time of every stage.
    """
    models = _default_models(epochs={"noise": 2, "fgsm": 2, "pgd": 1, "finetune": 1}, train_size=None,
                             adv_eps=0.1, pgd_steps=5)
    return StudyConfig(
        name="full", models=models, seed=seed, n_clean=None,
        n_attack=1000, attack_eps_linf=(0.05, 0.1), attack_eps_l2=(0.5, 1.0), pgd_steps=10,
        n_certify=100, n_select=100, n_estimate=10_000, alpha=0.001,
        n_smooth_attack=50, smooth_attack_radii=(0.25, 0.5), smooth_attack_steps=10, smooth_attack_noise=8,
        n_predict=500,
        n_semantic=20, semantic_grid=201,
        synbench_separations=None, synbench_n_train=1024, synbench_n_test=1024,
        probe_n_train=5000, probe_n_test=2000, probe_max_iter=300,
        hidden_cost_models=("clean", "noise-0.12", "noise-0.25", "noise-0.50"), n_hidden_cost=200,
        hidden_cost_n_estimate=2000,
        transfer_models=("clean", "noise-0.25", "fgsm", "pgd", "adv-ft"), n_transfer=200,
        transfer_eps=(1 / 255, 2 / 255), transfer_probe_n_train=5000,
    )
