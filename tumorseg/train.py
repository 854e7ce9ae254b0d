"""Training runs: the input pipeline, one training step for every tf.distribute strategy,
Keras callbacks, atomic checkpoints and resume. The run folder's format is :mod:`tumorseg.run`.

Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so the
loop is ours: ``strategy.run`` of a step that applies the optimizer under a GradientTape, the
loss divided by the number of replicas. The same step serves every strategy.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .data import find_cases
from .errors import InputError
from .inference import calibrate_threshold
from .model import load_model
from .patches import NO_AUGMENTATION, PatchSampler, cache_case, training_dataset
from .presets import STRATEGIES
from .run import (CACHE_DIR, CONFIG_FILE, CURVES_FILE, EARLY_STOP, FINISHED, HISTORY_FILE,
                  LOGS_DIR, MODEL_FILE, OUT_OF_TIME, TrainConfig, checkpoint_name, is_run,
                  read_config, read_state, split_cases, write_state)

def make_strategy(name: str):
    """The tf.distribute strategy called ``name`` (multiworker reads TF_CONFIG)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES}")


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
    if not isinstance(workers, list) or not workers or not all(
            isinstance(w, str) and w.rpartition(":")[2].isdigit() for w in workers):
        raise InputError("TF_CONFIG", 'needs "cluster": {"worker": ["host:port", ...]}')
    if (not isinstance(task, dict) or task.get("type") != "worker"
            or not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(workers)):
        raise InputError("TF_CONFIG", f'needs "task": {{"type": "worker", "index": 0..'
                                      f'{len(workers) - 1}}}')


def _callbacks_cls():
    import keras

    class RunRecorder(keras.callbacks.Callback):
        """After every epoch: the checkpoint, then state.json (the commit point, with why the run
        ended if it did), the best model, history.csv and the curves, all written atomically.
        It stops training at the run's time limit."""

        def __init__(self, out: Path, config: TrainConfig, state: dict | None):
            super().__init__()
            self.out, self.config = out, config
            self.state = dict(state or {"history": [], "best_val_dice": -math.inf,
                                        "training_seconds": 0.0})
            self.history = list(self.state["history"])
            self.started = time.monotonic() - self.state["training_seconds"]

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1} | {k: float(v) for k, v in (logs or {}).items()}
            self.history.append(row)
            checkpoint = checkpoint_name(epoch + 1)
            with atomic_path(self.out / checkpoint) as tmp:
                self.model.save(tmp)
            best = max(self.state["best_val_dice"], row["val_dice"])
            if row["val_dice"] > self.state["best_val_dice"]:
                with atomic_path(self.out / MODEL_FILE) as tmp:
                    self.model.save(tmp)
            previous = self.state.get("checkpoint")
            self.state |= {"epoch": epoch + 1, "checkpoint": checkpoint, "best_val_dice": best,
                           "training_seconds": time.monotonic() - self.started,
                           "history": self.history, "ended": self.ended(epoch + 1)}
            write_state(self.out, self.state)
            if previous and previous != checkpoint:
                (self.out / previous).unlink(missing_ok=True)
            write_history(self.out, self.history)

        def ended(self, epochs_done: int) -> str | None:
            """Why the run ends after this epoch (EarlyStopping runs before this callback)."""
            if epochs_done >= self.config.epochs:
                return FINISHED
            if self.model.stop_training:
                return EARLY_STOP
            if out_of_time(self.config, self.started, self.epoch_started):
                self.model.stop_training = True
                return OUT_OF_TIME
            return None

    return RunRecorder


def write_history(out: Path, history: list[dict]) -> None:
    """history.csv and curves.png of a run, atomically."""
    import pandas as pd

    from .figures import plot_history

    table = pd.DataFrame(history)
    with atomic_path(out / HISTORY_FILE) as tmp:
        table.to_csv(tmp, index=False)
    figure = plot_history(table)
    with atomic_path(out / CURVES_FILE) as tmp:
        figure.savefig(tmp, dpi=80, format="png")


# ----------------------------------------------------------------------------- the loop


def cosine_learning_rate(config: TrainConfig):
    """Epoch -> learning rate: cosine from ``learning_rate`` to its final fraction."""
    def schedule(epoch, _=None):
        progress = epoch / max(config.epochs - 1, 1)
        low = config.learning_rate * config.final_learning_rate_fraction
        return float(low + 0.5 * (config.learning_rate - low) * (1 + math.cos(math.pi * progress)))

    return schedule


def train_step(model, optimizer, x, y):
    """One optimisation step on one batch; the loss before the update.

    Args:
        model: a Keras model mapping ``(B, x, y, z, 4)`` to sigmoid ``(B, x, y, z, 3)``.
        optimizer: a Keras optimizer.
        x: ``(B, x, y, z, 4)`` standardised patches; y: ``(B, x, y, z, 3)`` one-hot labels.

    Returns:
        A scalar tensor: the soft Dice loss of the batch (pooled over batch and space, per
        class), computed in training mode before the gradients are applied.
    """
    return gradient_step(model, optimizer, x, y)[0]


def gradient_step(model, optimizer, x, y, replicas: int = 1):
    """The training step of every loop: the soft Dice loss of the batch in training mode, its
    gradients, divided by ``replicas`` (tf.distribute sums the replicas' gradients, so their
    mean is applied), applied by ``optimizer``.

    Returns ``(loss, probabilities)``: the batch's loss before the update (undivided), and the
    ``(B, x, y, z, 3)`` probabilities it was computed from.
    """
    import tensorflow as tf

    from .metrics import batch_dice_loss

    with tf.GradientTape() as tape:
        probabilities = model(x, training=True)
        loss = batch_dice_loss(y, probabilities)
        share = loss / replicas
    gradients = tape.gradient(share, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return loss, probabilities


def make_train_step(model, strategy):
    """``step(batch) -> (loss, dice)``: :func:`gradient_step` with the model's optimizer on one
    global (distributed) batch ``(x, y)``, the same for every strategy; loss and Dice are the
    mean over replicas."""
    import tensorflow as tf

    from .metrics import batch_dice

    def replica_step(x, y):
        loss, probabilities = gradient_step(model, model.optimizer, x, y,
                                            strategy.num_replicas_in_sync)
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


def used_up(config: TrainConfig, state: dict | None) -> bool:
    """Whether a run has trained for its whole time limit already."""
    limit = config.time_limit_minutes
    return bool(limit and state and state["training_seconds"] >= limit * 60)


def new_run(config: TrainConfig, out: Path) -> TrainConfig:
    """Check the data and the run folder, split the cases and write config.json."""
    if is_run(out):
        raise InputError(out, "holds a run already: pass --resume to continue it, or choose "
                              "another --out")
    cases = [case for case in find_cases(config.data) if case.label is not None]
    if len(cases) < 2:
        raise InputError(config.data, "training needs at least two labelled cases")
    config.train_cases, config.valid_cases = split_cases([c.id for c in cases],
                                                         config.valid_fraction, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG_FILE)
    return config


def train(config: TrainConfig, out: str | os.PathLike, strategy=None, verbose: int = 1) -> dict:
    """Train a new run into folder ``out``, then calibrate its threshold; returns its state
    (``state.json``: epochs, history, why it ended, threshold)."""
    out = Path(out)
    return _complete(new_run(config, out), out, None, strategy, verbose)


def resume(out: str | os.PathLike, epochs: int | None = None,
           time_limit_minutes: float | None = None, data: str | None = None, strategy=None,
           verbose: int = 1) -> dict:
    """Complete what the run in ``out`` is missing; returns its state.

    A run killed during training continues from its last complete epoch; a run killed during
    calibration is calibrated. A run that ended (all epochs done, early stop or time limit) trains
    again only when ``epochs`` or ``time_limit_minutes`` extend it; otherwise nothing changes.
    ``data`` points the run at its dataset in a new place (same cases). Changed settings are
    saved in config.json.
    """
    out = Path(out)
    if not is_run(out):
        raise InputError(out, f"no run to resume here ({CONFIG_FILE} missing)")
    config = read_config(out)
    state = read_state(out)
    done = state["epoch"] if state else 0
    if epochs is not None and epochs < max(done, 1):
        raise InputError("--epochs", f"the run in {out} has trained {done} epochs already; "
                                     f"give more to extend it")
    changes = {"epochs": epochs, "time_limit_minutes": time_limit_minutes, "data": data}
    changes = {key: value for key, value in changes.items()
               if value is not None and value != getattr(config, key)}
    for key, value in changes.items():
        setattr(config, key, value)
    if changes:
        config.save(out / CONFIG_FILE)
    if state and state.get("ended") and ({"epochs", "time_limit_minutes"} & changes.keys()):
        state["ended"] = None  # extended on purpose
    return _complete(config, out, state, strategy, verbose)


def _complete(config: TrainConfig, out: Path, state: dict | None, strategy, verbose: int) -> dict:
    """Train the epochs the run still needs, then calibrate if that is not done."""
    say = print if verbose else (lambda *args, **kwargs: None)
    done = state["epoch"] if state else 0
    by_id = {case.id: case for case in find_cases(config.data)}
    missing = [i for i in config.train_cases + config.valid_cases if i not in by_id]
    if missing:
        raise InputError(config.data, f"cases of this run are missing: {', '.join(missing[:5])}")
    strategy = strategy or make_strategy(config.strategy)
    if state and state.get("ended"):
        say(f"{out}: the run ended ({state['ended']}) after {done} epochs; nothing to train "
            f"(--epochs or --time-limit extend it)")
    elif done >= config.epochs:
        say(f"{out}: all {done} epochs are trained")
    elif used_up(config, state):
        write_state(out, state | {"ended": OUT_OF_TIME})
        state = read_state(out)
        say(f"{out}: the time limit of {config.time_limit_minutes} minutes is used up")
    else:
        if done:
            say(f"{out}: resuming at epoch {done + 1} of {config.epochs}")
        state = _fit(config, out, state, strategy, by_id, verbose)
        say(f"{out}: {state['ended']} after {state['epoch']} epochs; best validation Dice "
            f"{state['best_val_dice']:.4f}")
    if is_chief(strategy) and "threshold" not in state:
        say(f"{out}: calibrating the label-map threshold on {len(config.valid_cases)} "
            f"validation scans")
        calibrate_threshold(out, [by_id[i] for i in config.valid_cases], config.model.patch_shape)
        state = read_state(out)
        say(f"{out}: threshold {state['threshold']}")
    return state


def _fit(config: TrainConfig, out: Path, state: dict | None, strategy, by_id: dict,
         verbose: int) -> dict:
    """The training loop from the last complete epoch; returns the new state."""
    import keras

    initial_epoch = state["epoch"] if state else 0
    keras.utils.set_random_seed(config.seed + initial_epoch)
    patch = config.model.patch_shape
    cache = out / CACHE_DIR
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

    recorder = _callbacks_cls()(out, config, state)
    callbacks = keras.callbacks.CallbackList(
        [keras.callbacks.LearningRateScheduler(cosine_learning_rate(config)),
         keras.callbacks.EarlyStopping(monitor="val_dice", mode="max",
                                       patience=config.early_stopping_patience),
         keras.callbacks.TensorBoard(log_dir=str(out / LOGS_DIR), write_graph=False),
         recorder],
        add_history=True, add_progbar=verbose > 0, model=model, verbose=verbose,
        epochs=config.epochs, steps=config.steps_per_epoch)
    model.stop_training = False
    callbacks.on_train_begin()
    for epoch in range(initial_epoch, config.epochs):
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
        if recorder.state["ended"]:
            break
    callbacks.on_train_end()
    return recorder.state


def is_chief(strategy) -> bool:
    """Whether this process is the one that writes shared results (worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is None or not resolver.task_id
