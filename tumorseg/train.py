"""Training runs: presets, the input pipeline, one training step for every tf.distribute strategy,
Keras callbacks, atomic checkpoints and resume.

A run folder holds:

* ``config.json`` — every setting, and the case split (the file re-creates the run);
* ``checkpoint-<epoch>.keras`` and ``state.json`` — the last complete epoch (``state.json`` is
  renamed into place after its checkpoint is complete, so a kill never leaves a half state);
* ``model.keras`` — the best model by validation Dice;
* ``history.csv``, ``curves.png``, ``logs/`` (TensorBoard) and ``cache/`` (cropped cases, .npy).

Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so the
loop is ours: ``strategy.run`` of a step that applies the optimizer under a GradientTape, the
loss divided by the number of replicas. The same step serves every strategy.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .data import atomic_path, find_cases
from .errors import InputError
from .model import PRESETS, ModelConfig
from .patches import NO_AUGMENTATION, Augmentation, PatchSampler, cache_case, training_dataset

TRAINING_PRESETS = {
    # Two CPU cores: ~1.1 s per step of 4 patches of 64x64x32; ~13 minutes in all.
    "cpu": dict(epochs=28, steps_per_epoch=25, batch_size=4, learning_rate=2e-3),
    # The seed's full model and patches, for a GPU: batches of 3 patches, 20 steps an epoch.
    "seed": dict(epochs=100, steps_per_epoch=20, batch_size=3, learning_rate=1e-4),
}
STRATEGIES = ("default", "mirrored", "multiworker")


@dataclass
class TrainConfig:
    """Every setting of a run; ``config.json`` holds exactly this (plus the split)."""

    data: str
    preset: str = "cpu"
    model: ModelConfig = field(default_factory=lambda: PRESETS["cpu"])
    epochs: int = 28
    steps_per_epoch: int = 25
    batch_size: int = 4  # per replica
    learning_rate: float = 2e-3
    final_learning_rate_fraction: float = 0.05  # cosine schedule down to this share
    valid_fraction: float = 0.2
    validation_patches: int = 16
    tumour_share: float = 0.6  # the rest are random windows: healthy tissue must be seen too
    augmentation: Augmentation = field(default_factory=Augmentation)
    early_stopping_patience: int = 8
    time_limit_minutes: float | None = None  # no epoch starts that would end past this
    strategy: str = "default"
    seed: int = 0
    train_cases: list[str] = field(default_factory=list)
    valid_cases: list[str] = field(default_factory=list)

    @classmethod
    def from_preset(cls, data: str, preset: str = "cpu", **overrides) -> "TrainConfig":
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

    def save(self, path: Path) -> None:
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
    """Whole cases into training and validation lists (at least one of each when possible)."""
    order = np.random.default_rng(seed).permutation(len(case_ids))
    n_valid = min(max(1, round(len(case_ids) * valid_fraction)), len(case_ids) - 1)
    valid = sorted(case_ids[i] for i in order[:n_valid])
    return sorted(set(case_ids) - set(valid)), valid


def make_strategy(name: str):
    """The tf.distribute strategy called ``name`` (multiworker reads TF_CONFIG)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise InputError("TF_CONFIG", "multiworker training needs the TF_CONFIG variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES}")


# ----------------------------------------------------------------------------- run folder state


def read_state(out: Path) -> dict | None:
    """The last complete epoch's state, or None before the first."""
    path = out / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def custom_objects() -> dict:
    from .metrics import batch_dice, batch_dice_loss

    return {"batch_dice_loss": batch_dice_loss, "batch_dice": batch_dice}


def load_model(path: str | os.PathLike, compile: bool = False):
    """A Keras model from a .keras file or a run folder (its best ``model.keras``), in safe mode."""
    import keras

    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.exists():
        raise InputError(path, "no such file")
    try:
        return keras.models.load_model(path, custom_objects=custom_objects(), compile=compile,
                                       safe_mode=True)
    except Exception as error:  # zip, h5 and deserialisation errors of a foreign file
        message = " ".join(str(error).split())[:150]
        raise InputError(path, f"not a Keras model file ({message})") from None


def run_folder(model_path: str | os.PathLike) -> Path:
    """The run folder a --model argument names: the folder itself, or the one a .keras file is in."""
    path = Path(model_path)
    return path if path.is_dir() else path.parent


def run_patch_shape(model_path: str | os.PathLike) -> tuple[int, int, int] | None:
    """The training patch shape of a run folder (or of the run a .keras file sits in), or None."""
    config_path = run_folder(model_path) / "config.json"
    if not config_path.exists():
        return None
    return TrainConfig.load(config_path).model.patch_shape


def _callbacks_cls():
    import keras

    class RunRecorder(keras.callbacks.Callback):
        """After every epoch: the checkpoint, then state.json (the commit point), the best model,
        history.csv and the curves, all written atomically."""

        def __init__(self, out: Path, state: dict | None):
            super().__init__()
            self.out = out
            self.history = list(state["history"]) if state else []
            self.best = state["best_val_dice"] if state else -math.inf
            self.previous = state["checkpoint"] if state else None
            self.seconds_before = state.get("training_seconds", 0.0) if state else 0.0
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1} | {k: float(v) for k, v in (logs or {}).items()}
            self.history.append(row)
            checkpoint = f"checkpoint-{epoch + 1:04d}.keras"
            with atomic_path(self.out / checkpoint) as tmp:
                self.model.save(tmp)
            improved = row["val_dice"] > self.best
            if improved:
                self.best = row["val_dice"]
                with atomic_path(self.out / "model.keras") as tmp:
                    self.model.save(tmp)
            seconds = self.seconds_before + time.monotonic() - self.started
            state = {"epoch": epoch + 1, "checkpoint": checkpoint, "best_val_dice": self.best,
                     "training_seconds": seconds, "history": self.history}
            with atomic_path(self.out / "state.json") as tmp:
                tmp.write_text(json.dumps(state, indent=2))
            if self.previous and self.previous != checkpoint:
                (self.out / self.previous).unlink(missing_ok=True)
            self.previous = checkpoint
            write_history(self.out, self.history)

    return RunRecorder


def write_history(out: Path, history: list[dict]) -> None:
    """history.csv and curves.png of a run, atomically."""
    import pandas as pd

    from .figures import plot_history

    table = pd.DataFrame(history)
    with atomic_path(out / "history.csv") as tmp:
        table.to_csv(tmp, index=False)
    figure = plot_history(table)
    with atomic_path(out / "curves.png") as tmp:
        figure.savefig(tmp, dpi=80, format="png")


# ----------------------------------------------------------------------------- the loop


def cosine_learning_rate(config: TrainConfig):
    """Epoch -> learning rate: cosine from ``learning_rate`` to its final fraction."""
    def schedule(epoch, _=None):
        progress = epoch / max(config.epochs - 1, 1)
        low = config.learning_rate * config.final_learning_rate_fraction
        return float(low + 0.5 * (config.learning_rate - low) * (1 + math.cos(math.pi * progress)))

    return schedule


def make_train_step(model, strategy):
    """``step(batch) -> (loss, dice)``: one optimizer step on one global (distributed) batch
    ``(x, y)``, the same for every strategy."""
    import tensorflow as tf

    from .metrics import batch_dice, batch_dice_loss

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            probabilities = model(x, training=True)
            loss = batch_dice_loss(y, probabilities)
            scaled = loss / strategy.num_replicas_in_sync
        gradients = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, batch_dice(y, probabilities)

    @tf.function
    def step(batch):
        loss, dice = strategy.run(replica_step, args=batch)
        mean = tf.distribute.ReduceOp.MEAN
        return strategy.reduce(mean, loss, axis=None), strategy.reduce(mean, dice, axis=None)

    return step


def validation_arrays(sampler: PatchSampler, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` fixed validation patches: x ``(N, px, py, pz, 4)``, y ``(N, px, py, pz, 3)``."""
    pairs = [sampler(i) for i in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def evaluate_patches(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict:
    """Soft Dice loss and Dice pooled over all validation patches."""
    from .metrics import BATCH_AXIS, dice_coefficient, soft_dice_loss

    predictions = np.concatenate([np.asarray(model(x[i:i + batch_size], training=False))
                                  for i in range(0, len(x), batch_size)])
    return {"val_loss": float(soft_dice_loss(y, predictions, axis=BATCH_AXIS)),
            "val_dice": float(dice_coefficient(y, predictions, axis=BATCH_AXIS))}


def out_of_time(config: TrainConfig, started: float, epoch_started: float) -> bool:
    """Whether another epoch as long as the last would end past the run's time limit."""
    if not config.time_limit_minutes:
        return False
    now = time.monotonic()
    return (now - started) + (now - epoch_started) > config.time_limit_minutes * 60


def prepare_run(config: TrainConfig, out: Path, resume: bool) -> tuple[TrainConfig, dict | None]:
    """Check the run folder; write config.json for a new run, read it back to resume."""
    config_path = out / "config.json"
    if resume:
        if not config_path.exists():
            raise InputError(out, "no run to resume here (config.json missing)")
        return TrainConfig.load(config_path), read_state(out)
    if config_path.exists():
        raise InputError(out, "holds a run already: pass --resume to continue it, or choose "
                              "another --out")
    cases = [case for case in find_cases(config.data) if case.label is not None]
    if len(cases) < 2:
        raise InputError(config.data, "training needs at least two labelled cases")
    config.train_cases, config.valid_cases = split_cases([c.id for c in cases],
                                                         config.valid_fraction, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    config.save(config_path)
    return config, None


def train(config: TrainConfig, out: str | os.PathLike, resume: bool = False, strategy=None,
          verbose: int = 1):
    """Train (or resume) a run into folder ``out``; returns the history as a list of dicts."""
    import keras

    out = Path(out)
    config, state = prepare_run(config, out, resume)
    initial_epoch = state["epoch"] if state else 0
    if initial_epoch >= config.epochs:
        return state["history"]
    strategy = strategy or make_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed + initial_epoch)

    by_id = {case.id: case for case in find_cases(config.data)}
    missing = [i for i in config.train_cases + config.valid_cases if i not in by_id]
    if missing:
        raise InputError(config.data, f"cases of this run are missing: {', '.join(missing[:5])}")
    patch = config.model.patch_shape
    cache = out / "cache"
    train_cases = [cache_case(by_id[i], cache, patch) for i in config.train_cases]
    valid_cases = [cache_case(by_id[i], cache, patch) for i in config.valid_cases]
    sampler = PatchSampler(train_cases, patch, config.tumour_share, config.augmentation, config.seed)
    valid_x, valid_y = validation_arrays(
        PatchSampler(valid_cases, patch, config.tumour_share, NO_AUGMENTATION, config.seed + 1),
        config.validation_patches)

    global_batch = config.batch_size * strategy.num_replicas_in_sync
    start = initial_epoch * config.steps_per_epoch * global_batch

    def dataset_fn(context):
        return training_dataset(sampler, context.get_per_replica_batch_size(global_batch),
                                start=start,
                                shard=(context.input_pipeline_id, context.num_input_pipelines))

    with strategy.scope():
        if state:
            model = load_model(out / state["checkpoint"], compile=True)
        else:
            from .metrics import batch_dice, batch_dice_loss
            from .model import build_model

            model = build_model(config.model)
            model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                          loss=batch_dice_loss, metrics=[batch_dice])
        step = make_train_step(model, strategy)
        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

    recorder = _callbacks_cls()(out, state)
    callbacks = keras.callbacks.CallbackList(
        [keras.callbacks.LearningRateScheduler(cosine_learning_rate(config)),
         keras.callbacks.EarlyStopping(monitor="val_dice", mode="max",
                                       patience=config.early_stopping_patience),
         keras.callbacks.TensorBoard(log_dir=str(out / "logs"), write_graph=False),
         recorder],
        add_history=True, add_progbar=verbose > 0, model=model, verbose=verbose,
        epochs=config.epochs, steps=config.steps_per_epoch)
    model.stop_training = False
    started = time.monotonic() - (state.get("training_seconds", 0.0) if state else 0.0)
    callbacks.on_train_begin()
    for epoch in range(initial_epoch, config.epochs):
        epoch_started = time.monotonic()
        callbacks.on_epoch_begin(epoch)
        losses, dices = [], []
        for batch in range(config.steps_per_epoch):
            callbacks.on_train_batch_begin(batch)
            loss, dice = step(next(iterator))
            losses.append(float(loss))
            dices.append(float(dice))
            callbacks.on_train_batch_end(batch, {"loss": losses[-1], "dice": dices[-1]})
        logs = {"loss": float(np.mean(losses)), "dice": float(np.mean(dices))}
        logs |= evaluate_patches(model, valid_x, valid_y, config.batch_size)
        logs["learning_rate"] = float(np.asarray(model.optimizer.learning_rate))
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training or out_of_time(config, started, epoch_started):
            break
    callbacks.on_train_end()
    if is_chief(strategy):
        calibrate_threshold(out, [by_id[i] for i in config.valid_cases], patch)
    return recorder.history


def is_chief(strategy) -> bool:
    """Whether this process is the one that writes shared results (worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is None or not resolver.task_id


THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
TOLERANCE = 0.005


def calibrate_threshold(out: Path, valid_cases: list, patch_shape) -> float:
    """Choose the probability threshold of the label map that gives the best mean Dice of
    WT, TC and ET on the run's whole validation scans; record it in state.json.

    A soft-Dice-trained network is often under-confident at tumour borders, so 0.5 is not
    always best; the choice uses validation cases only, never the cases evaluated later.
    """
    from .data import load_case
    from .inference import predict_volume, to_label_map
    from .metrics import case_metrics

    model = load_model(out)
    scores = {threshold: [] for threshold in THRESHOLDS}
    for case in valid_cases:
        image, label = load_case(case)
        probabilities = predict_volume(model, image, patch_shape=patch_shape)
        for threshold in THRESHOLDS:
            row = case_metrics(to_label_map(probabilities, threshold), label)
            scores[threshold].append(np.mean([row[f"Dice {r}"] for r in ("WT", "TC", "ET")]))
    means = {t: float(np.mean(v)) for t, v in scores.items()}
    # The optimum is flat over a few cases: take the highest threshold within 0.005 of the best.
    best = max(t for t in THRESHOLDS if means[t] >= max(means.values()) - TOLERANCE)
    state = read_state(out) | {"threshold": best,
                               "threshold_scores": {str(t): m for t, m in means.items()}}
    with atomic_path(out / "state.json") as tmp:
        tmp.write_text(json.dumps(state, indent=2))
    return best


def run_threshold(model_path: str | os.PathLike) -> float | None:
    """The label-map threshold calibrated for a run folder (or the run a .keras file sits in)."""
    state_path = run_folder(model_path) / "state.json"
    if not state_path.exists():
        return None
    return json.loads(state_path.read_text()).get("threshold")
