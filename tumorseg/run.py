"""The run folder: its file names, its configuration (:class:`TrainConfig`, ``config.json``) and
its state (``state.json``). Training writes a run folder; prediction reads one.

A run folder holds:

* ``config.json`` — every setting, and the case split (the file re-creates the run);
* ``checkpoint-<epoch>.keras`` and ``state.json`` — the last complete epoch (``state.json`` is
  renamed into place after its checkpoint is complete, so a kill never leaves a half state);
* ``model.keras`` — the best model by validation Dice;
* ``history.csv``, ``curves.png``, ``logs/`` (TensorBoard) and ``cache/`` (cropped cases, .npy).

No TensorFlow import: the command line and :mod:`tumorseg.inference` read it cheaply.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .patches import TUMOUR_SHARE, Augmentation
from .presets import DEFAULT_PRESET, OUTPUTS, PRESETS, TRAINING_PRESETS, ModelConfig

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
MODEL_FILE = "model.keras"  # the best model by validation Dice
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
LOGS_DIR = "logs"  # TensorBoard
CACHE_DIR = "cache"  # cropped cases, .npy
CHECKPOINT_GLOB = "checkpoint-*.keras"

# Why a run ended, as state.json records it (None while it is still to be continued).
FINISHED, EARLY_STOP, OUT_OF_TIME = "finished", "early stop", "time limit"


def checkpoint_name(epoch: int) -> str:
    """The file name of the checkpoint after ``epoch`` (1-based) epochs."""
    return f"checkpoint-{epoch:04d}.keras"


@dataclass
class TrainConfig:
    """Every setting of a run; ``config.json`` holds exactly this (plus the split).

    Make one with :meth:`from_preset`: the network and the training settings come from a preset
    (:mod:`tumorseg.presets`), the rest from the defaults below.
    """

    data: str
    preset: str
    model: ModelConfig
    epochs: int
    steps_per_epoch: int
    batch_size: int  # per replica
    learning_rate: float
    final_learning_rate_fraction: float = 0.05  # cosine schedule down to this share
    valid_fraction: float = 0.2
    validation_patches: int = 16
    tumour_share: float = TUMOUR_SHARE
    core_share: float = 0.0  # of patches centred on necrosis / enhancing tumour (labels 2, 3)
    augmentation: Augmentation = field(default_factory=Augmentation)
    early_stopping_patience: int = 8  # epochs without a better validation Dice; 0: no early stop
    time_limit_minutes: float | None = None  # no epoch starts that would end past this
    # Under a time limit, shrink ``epochs`` to what the limit holds (at the mean pace of the
    # epochs after the first), so the learning-rate schedule ends when the minutes do.
    fit_to_time_limit: bool = False
    strategy: str = "default"
    seed: int = 0
    loss: str = "dice"  # or "dice_ce" (LOSSES)
    deep_supervision: int = 0  # auxiliary outputs at decoder levels 1..n (training only)
    optimizer: str = "adam"  # or "sgd" (OPTIMIZERS; learning_rate is its initial rate)
    schedule: str = "cosine"  # or "poly" (SCHEDULES), per epoch
    jit_compile: bool = False  # XLA-compile the training step
    inter_op_threads: int = 0  # TensorFlow's thread pools; 0: TensorFlow's choice
    intra_op_threads: int = 0
    calibrate: bool = True  # calibrate the label-map threshold after training (else 0.5)
    tta: bool = True  # calibration predicts with test-time flips, as make run's prediction does
    train_cases: list[str] = field(default_factory=list)
    valid_cases: list[str] = field(default_factory=list)
    spacing: list[float] | None = None  # of the training cases, [x, y, z] mm (median per axis)

    @classmethod
    def from_preset(cls, data: str, preset: str = DEFAULT_PRESET, **overrides) -> TrainConfig:
        """The run of ``preset`` on ``data``; ``overrides`` that are not None replace settings."""
        if preset not in TRAINING_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {list(TRAINING_PRESETS)}")
        settings = TRAINING_PRESETS[preset] | {k: v for k, v in overrides.items() if v is not None}
        return cls(data=str(data), preset=preset, model=PRESETS[preset], **settings)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["model"] = self.model.to_dict()
        values["augmentation"] = self.augmentation.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A configuration from ``config.json``'s mapping; :class:`Invalid` names the key of an
        unknown, missing or mistyped setting."""
        values = _mapping(values, "", cls)
        model = _mapping(values.get("model"), "model.", ModelConfig)
        if not isinstance(model.get("patch_shape", []), list):
            raise Invalid(
                "model.patch_shape", f"must be a list of three sizes, got {model['patch_shape']!r}"
            )
        values["model"] = ModelConfig.from_dict(model)
        values["augmentation"] = Augmentation(
            **_mapping(values.get("augmentation"), "augmentation.", Augmentation)
        )
        config = cls(**values)
        config.check()
        return config

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read and validate a config.json; every problem is an InputError naming the file."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(path, "no such file") from None
        except (ValueError, UnicodeDecodeError) as error:
            raise InputError(path, f"not a tumorseg run configuration ({error})") from None
        try:
            return cls.from_dict(values)
        except Invalid as error:
            raise InputError(path, f"{error.key}: {error.problem}") from None

    def validate(self) -> None:
        """Raise :class:`~tumorseg.errors.InputError` for the first bad setting, naming its
        command-line option where it has one (``--epochs``), else its config.json key."""
        try:
            self.check()
        except Invalid as error:
            name = OPTIONS.get(error.key, f"config key {error.key}")
            raise InputError(name, error.problem) from None

    def check(self) -> None:
        """Raise :class:`Invalid` for the first bad setting."""
        from .presets import LOSSES, OPTIMIZERS, PRECISIONS, SCHEDULES, STRATEGIES

        _check_text(self, "data")
        _check_text(self, "preset")
        for key in ("epochs", "steps_per_epoch", "batch_size", "validation_patches"):
            _check_integer(self, key, 1)
        _check_integer(self, "early_stopping_patience", 0)
        _check_integer(self, "seed", 0)
        _check_number(self, "learning_rate", 0, low_open=True)
        _check_number(self, "final_learning_rate_fraction", 0, 1)
        _check_number(self, "valid_fraction", 0, 1, low_open=True, high_open=True)
        _check_number(self, "tumour_share", 0, 1)
        _check_number(self, "core_share", 0, 1)
        if self.tumour_share + self.core_share > 1:
            raise Invalid(
                "core_share",
                f"tumour_share + core_share must be at most 1, got "
                f"{self.tumour_share} + {self.core_share}",
            )
        _check_choice(self, "loss", LOSSES)
        _check_choice(self, "optimizer", OPTIMIZERS)
        _check_choice(self, "schedule", SCHEDULES)
        _check_bool(self, "jit_compile")
        for key in ("inter_op_threads", "intra_op_threads"):
            _check_integer(self, key, 0)
        if self.time_limit_minutes is not None:
            _check_number(self, "time_limit_minutes", 0, low_open=True)
        _check_choice(self, "strategy", STRATEGIES)
        _check_bool(self, "calibrate")
        _check_bool(self, "fit_to_time_limit")
        _check_bool(self, "tta")
        for key in ("train_cases", "valid_cases"):
            value = getattr(self, key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise Invalid(key, f"must be a list of case ids, got {value!r}")
        if self.spacing is not None and (
            not isinstance(self.spacing, list)
            or len(self.spacing) != 3
            or not all(_is_number(v) and v > 0 for v in self.spacing)
        ):
            raise Invalid(
                "spacing", f"must be three positive millimetre sizes, got {self.spacing!r}"
            )
        _check_model(self.model, PRECISIONS)
        _check_integer(self, "deep_supervision", 0)
        if self.deep_supervision > self.model.depth - 2:
            raise Invalid(
                "deep_supervision",
                f"a network of depth {self.model.depth} has "
                f"{max(self.model.depth - 2, 0)} lower decoder "
                f"levels, got {self.deep_supervision}",
            )
        _check_augmentation(self.augmentation)


# Settings the command line sets, by the option that sets them (errors name the option).
OPTIONS = {
    "data": "--data",
    "epochs": "--epochs",
    "steps_per_epoch": "--steps-per-epoch",
    "batch_size": "--batch-size",
    "seed": "--seed",
    "strategy": "--strategy",
    "time_limit_minutes": "--time-limit",
    "preset": "--preset",
}


class Invalid(ValueError):
    """A bad setting of a run: its key (``epochs``, ``model.patch_shape``) and the problem."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def _mapping(values, prefix: str, kind) -> dict:
    """``values`` as a dict of exactly the fields of dataclass ``kind`` (missing fields that have
    defaults may be left out)."""
    from dataclasses import MISSING, fields

    where = prefix.rstrip(".") or "the file"
    if not isinstance(values, dict):
        raise Invalid(where, f"must be a mapping of settings, got {type(values).__name__}")
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise Invalid(prefix + unknown[0], f"unknown setting; known: {', '.join(known)}")
    for name, spec in known.items():
        if name not in values and spec.default is MISSING and spec.default_factory is MISSING:
            raise Invalid(prefix + name, "missing")
    return dict(values)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _check_integer(owner, key: str, low: int, prefix: str = "") -> None:
    value = getattr(owner, key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(prefix + key, f"must be an integer, got {value!r}")
    if value < low:
        raise Invalid(prefix + key, f"must be at least {low}, got {value}")


def _check_number(
    owner, key: str, low=None, high=None, low_open=False, high_open=False, prefix: str = ""
) -> None:
    value = getattr(owner, key)
    if not _is_number(value):
        raise Invalid(prefix + key, f"must be a number, got {value!r}")
    if (low is not None and (value <= low if low_open else value < low)) or (
        high is not None and (value >= high if high_open else value > high)
    ):
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        bounds = (
            f"in {left}{low}, {high}{right}"
            if high is not None
            else f"{'above' if low_open else 'at least'} {low}"
        )
        raise Invalid(prefix + key, f"must be {bounds}, got {value}")


def _check_text(owner, key: str) -> None:
    value = getattr(owner, key)
    if not isinstance(value, str) or not value:
        raise Invalid(key, f"must be a non-empty string, got {value!r}")


def _check_bool(owner, key: str, prefix: str = "") -> None:
    if not isinstance(getattr(owner, key), bool):
        raise Invalid(prefix + key, f"must be true or false, got {getattr(owner, key)!r}")


def _check_choice(owner, key: str, choices, prefix: str = "") -> None:
    value = getattr(owner, key)
    if value not in choices:
        raise Invalid(prefix + key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def _check_model(model: ModelConfig, precisions) -> None:
    """A network the U-Net builder can make: its patch pools ``depth - 1`` times."""
    for key, low in (("depth", 1), ("n_base_filters", 1), ("downsample", 1)):
        _check_integer(model, key, low, "model.")
    _check_choice(model, "n_channels", (4,), "model.")
    _check_choice(model, "n_labels", (3,), "model.")
    _check_choice(model, "normalization", (None, "batch", "instance"), "model.")
    _check_choice(model, "precision", precisions, "model.")
    _check_choice(model, "output", OUTPUTS, "model.")
    _check_bool(model, "deconvolution", "model.")
    patch = model.patch_shape
    if (
        not isinstance(patch, tuple)
        or len(patch) != 3
        or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch)
    ):
        raise Invalid("model.patch_shape", f"must be three positive integers, got {patch!r}")
    factor = 2 ** (model.depth - 1)
    if any(size % factor for size in patch):
        raise Invalid(
            "model.patch_shape",
            f"{list(patch)} cannot be pooled {model.depth - 1} "
            f"times: each size must be divisible by {factor}",
        )


def _check_augmentation(augmentation: Augmentation) -> None:
    _check_bool(augmentation, "flip", "augmentation.")
    for key in ("scale", "shift", "noise", "gamma", "bias", "blur"):
        _check_number(augmentation, key, 0, prefix="augmentation.")


def split_cases(case_ids: list[str], valid_fraction: float, seed: int) -> tuple[list, list]:
    """Whole cases into training and validation lists (at least one of each when possible).

    The one split rule of the package: runs and the seed's patch export use it alike."""
    order = np.random.default_rng(seed).permutation(len(case_ids))
    n_valid = min(max(1, round(len(case_ids) * valid_fraction)), len(case_ids) - 1)
    valid = sorted(case_ids[i] for i in order[:n_valid])
    return sorted(set(case_ids) - set(valid)), valid


def read_config(run: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` of the run folder ``run``."""
    return TrainConfig.load(Path(run) / CONFIG_FILE)


def is_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a run (its config.json)."""
    return (Path(folder) / CONFIG_FILE).exists()


def read_state(run: str | os.PathLike) -> dict | None:
    """The run's state (last complete epoch, why it ended, threshold), or None before the first
    epoch ends."""
    path = Path(run) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_state(run: str | os.PathLike, state: dict) -> None:
    """state.json, atomically: the run's commit point."""
    with atomic_path(Path(run) / STATE_FILE) as tmp:
        tmp.write_text(json.dumps(state, indent=2))


def check_tf_config(text: str | None) -> None:
    """Refuse a missing or malformed TF_CONFIG with one line (TensorFlow would give a traceback)."""
    if not text:
        raise InputError("TF_CONFIG", "multiworker training needs the TF_CONFIG variable")
    try:
        spec = json.loads(text)
    except ValueError as error:
        raise InputError("TF_CONFIG", f"not valid JSON ({error})") from None
    workers = spec.get("cluster", {}).get("worker") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if (
        not isinstance(workers, list)
        or not workers
        or not all(isinstance(w, str) and w.rpartition(":")[2].isdigit() for w in workers)
    ):
        raise InputError("TF_CONFIG", 'needs "cluster": {"worker": ["host:port", ...]}')
    if (
        not isinstance(task, dict)
        or task.get("type") != "worker"
        or not isinstance(task.get("index"), int)
        or not 0 <= task["index"] < len(workers)
    ):
        raise InputError(
            "TF_CONFIG", f'needs "task": {{"type": "worker", "index": 0..{len(workers) - 1}}}'
        )
