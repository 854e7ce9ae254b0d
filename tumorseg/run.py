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
from .presets import DEFAULT_PRESET, PRESETS, TRAINING_PRESETS, ModelConfig

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
    augmentation: Augmentation = field(default_factory=Augmentation)
    early_stopping_patience: int = 8
    time_limit_minutes: float | None = None  # no epoch starts that would end past this
    strategy: str = "default"
    seed: int = 0
    train_cases: list[str] = field(default_factory=list)
    valid_cases: list[str] = field(default_factory=list)

    @classmethod
    def from_preset(cls, data: str, preset: str = DEFAULT_PRESET, **overrides) -> "TrainConfig":
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
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        values["model"] = ModelConfig.from_dict(values["model"])
        values["augmentation"] = Augmentation(**values["augmentation"])
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise InputError(path, "no such file") from None
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(path, f"not a tumorseg run configuration ({error})") from None


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
