"""Training runs: the input pipeline, one training step for every tf.distribute strategy, early
stopping and the time limit (decided by the chief, told to every worker), atomic checkpoints and
resume. The run folder's format is :mod:`tumorseg.run`.

Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so the
loop is ours: ``strategy.run`` of :func:`gradient_step`, which applies the optimizer under a
GradientTape to the loss divided by the number of replicas. The same step serves every strategy
and the course's :func:`train_step`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .data import find_cases
from .errors import InputError
from .inference import calibrate_label_map, describe_rule
from .model import load_model
from .patches import NO_AUGMENTATION, PatchSampler, cache_case, training_dataset
from .presets import STRATEGIES
from .run import (
    CACHE_DIR,
    CONFIG_FILE,
    CURVES_FILE,
    EARLY_STOP,
    FINISHED,
    HISTORY_FILE,
    LOGS_DIR,
    MODEL_FILE,
    OUT_OF_TIME,
    TrainConfig,
    check_tf_config,
    checkpoint_name,
    is_run,
    read_config,
    read_state,
    split_cases,
    write_state,
)


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


def describe_devices(
    strategy: str, preset: str, startup_log: str = "", precision: str = "float32"
) -> str:
    """One line naming the devices TensorFlow found; when a GPU was expected (the ``seed``
    preset, or ``mirrored`` strategy) but none loaded, a second line says so, with TensorFlow's
    start-up message about CUDA or cuDNN if it printed one; when ``precision`` is bf16 on a CPU
    that emulates it, a line says that too."""
    import tensorflow as tf

    from .presets import native_bf16

    devices = tf.config.list_physical_devices()
    line = "TensorFlow devices: " + ", ".join(
        f"{d.device_type}:{d.name.rpartition(':')[2]}" for d in devices
    )
    gpu = any(d.device_type == "GPU" for d in devices)
    expected = preset == "seed" or strategy == "mirrored"
    if expected and not gpu:
        why = [
            text.strip()
            for text in startup_log.splitlines()
            if any(word in text.lower() for word in ("cuda", "cudnn", "gpu", "dlopen"))
        ]
        reason = "the seed preset" if preset == "seed" else f"the {strategy} strategy"
        line += (
            f"\nwarning: no GPU loaded although {reason} expects one; training runs on "
            f"the CPU" + (f" (TensorFlow said: {why[-1][:200]})" if why else "")
        )
    if precision == "bf16" and not gpu and not native_bf16():
        line += (
            "\nwarning: this CPU has no native bfloat16 (AVX-512 BF16 or AMX): mixed bfloat16 is "
            "emulated, many times slower than float32 (set model.precision to float32)"
        )
    return line


class EarlyStopping:
    """Stop when validation Dice has not improved for ``patience`` epochs (0: never). Its state
    (best value, epochs without improvement) is part of state.json, so a resumed run stops where
    an uninterrupted one would."""

    def __init__(self, patience: int, best: float = -math.inf, waited: int = 0):
        self.patience, self.best, self.waited = patience, best, waited

    @classmethod
    def restore(cls, patience: int, state: dict | None) -> EarlyStopping:
        state = state or {}
        return cls(
            patience,
            state.get("best_val_dice", -math.inf),
            state.get("epochs_without_improvement", 0),
        )

    def update(self, value: float) -> bool:
        """Record an epoch's validation Dice; whether it is the best so far."""
        improved = value > self.best
        self.best, self.waited = (value, 0) if improved else (self.best, self.waited + 1)
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.waited >= self.patience

    def state(self) -> dict:
        return {"best_val_dice": self.best, "epochs_without_improvement": self.waited}


class TrainingClock:
    """Seconds of training, counted across resumes (``state.json``'s ``training_seconds``), read
    off ``now`` (seconds; a test may pass a clock of its own)."""

    def __init__(self, seconds_before: float = 0.0, now=time.monotonic):
        self.now = now
        self.started = now() - seconds_before
        self.epoch_started = now()
        self.epoch_starts: list[float] = []  # of this process

    def start_epoch(self) -> None:
        self.epoch_started = self.now()
        self.epoch_starts.append(self.epoch_started)

    def pace(self) -> float:
        """Mean seconds of this process's complete epochs after its first (whose tracing would
        count), checkpoints included; 0 before there is one."""
        later = self.epoch_starts[1:]
        return (later[-1] - later[0]) / (len(later) - 1) if len(later) >= 2 else 0.0

    def seconds(self) -> float:
        return self.now() - self.started

    def next_epoch_overruns(self, limit_minutes: float | None) -> bool:
        """Whether another epoch as long as the last would end past ``limit_minutes``."""
        if not limit_minutes:
            return False
        return self.seconds() + (self.now() - self.epoch_started) > limit_minutes * 60


def fitted_epochs(
    config: TrainConfig, epochs_done: int, epoch_seconds: float, seconds: float
) -> int:
    """The run's epochs after ``epochs_done``, ``seconds`` into training at ``epoch_seconds`` an
    epoch (0: not known yet): with ``config.fit_to_time_limit``, shrunk (never grown) to what
    the time limit holds, so the schedule ends with the minutes; unchanged when no further
    epoch fits (the limit ends the run)."""
    limit = config.time_limit_minutes
    if not (config.fit_to_time_limit and limit) or epoch_seconds <= 0:
        return config.epochs
    more = int((limit * 60 - seconds) // epoch_seconds)
    return min(config.epochs, epochs_done + more) if more >= 1 else config.epochs


def stop_reason(
    config: TrainConfig, epochs_done: int, early: EarlyStopping, clock: TrainingClock
) -> str | None:
    """Why the run ends after ``epochs_done`` epochs (the chief's decision), or None."""
    if epochs_done >= config.epochs:
        return FINISHED
    if early.should_stop:
        return EARLY_STOP
    if clock.next_epoch_overruns(config.time_limit_minutes):
        return OUT_OF_TIME
    return None


REASONS = (None, FINISHED, EARLY_STOP, OUT_OF_TIME)


def make_broadcast(strategy):
    """``broadcast(number) -> number``: the chief's (replica 0's) integer on every worker, through
    the strategy's collective (a sum to which every other replica adds 0), so all workers keep
    the same schedule and stop after the same epoch whatever their own clocks say."""
    import tensorflow as tf

    def replica_value(code):
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        return tf.where(first, code, tf.zeros_like(code))

    @tf.function
    def collective(code):
        values = strategy.run(replica_value, args=(code,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)

    def broadcast(number: int) -> int:
        return int(collective(tf.constant(number, tf.int32)))

    return broadcast


def record_epoch(folder: Path, model, state: dict, improved: bool, best=None) -> None:
    """Write one epoch into the run folder, each file atomically: its checkpoint (``model``,
    the training twin under deep supervision), the best model (``best``, default ``model``: the
    one-output network, when ``improved``), then state.json (the commit point), then the history
    files; the previous checkpoint goes once the new state stands."""
    previous = read_state(folder)
    with atomic_path(folder / state["checkpoint"]) as tmp:
        model.save(tmp)
    if improved:
        with atomic_path(folder / MODEL_FILE) as tmp:
            (best or model).save(tmp)
    write_state(folder, state)
    if previous and previous.get("checkpoint") not in (None, state["checkpoint"]):
        (folder / previous["checkpoint"]).unlink(missing_ok=True)
    write_history(folder, state["history"])


# ----------------------------------------------------------------------------- the loop


def cosine_learning_rate(config: TrainConfig):
    """Epoch -> learning rate: cosine from ``learning_rate`` to its final fraction."""

    def schedule(epoch, _=None):
        progress = epoch / max(config.epochs - 1, 1)
        low = config.learning_rate * config.final_learning_rate_fraction
        return float(low + 0.5 * (config.learning_rate - low) * (1 + math.cos(math.pi * progress)))

    return schedule


def poly_learning_rate(config: TrainConfig):
    """Epoch -> learning rate: nnU-Net's ``learning_rate * (1 - epoch / epochs) ** 0.9``."""
    from .presets import POLY_EXPONENT

    def schedule(epoch, _=None):
        return float(config.learning_rate * (1 - epoch / config.epochs) ** POLY_EXPONENT)

    return schedule


def learning_rate_schedule(config: TrainConfig):
    """Epoch (0-based) -> learning rate, by ``config.schedule``."""
    return {"cosine": cosine_learning_rate, "poly": poly_learning_rate}[config.schedule](config)


def make_optimizer(config: TrainConfig):
    """The run's optimizer: Adam (the seed's), or nnU-Net's SGD with Nesterov momentum."""
    import keras

    from .presets import SGD_MOMENTUM

    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=SGD_MOMENTUM, nesterov=True)
    return keras.optimizers.Adam(config.learning_rate)


def configure_threads(config: TrainConfig) -> None:
    """Set TensorFlow's inter- and intra-op thread pools (0 leaves one alone). They are fixed
    once TensorFlow has run an operation: then a different setting is refused with a warning
    (a fresh process, as the command line is, applies it)."""
    import tensorflow as tf

    threading = tf.config.threading
    for value, get, set_ in (
        (
            config.inter_op_threads,
            threading.get_inter_op_parallelism_threads,
            threading.set_inter_op_parallelism_threads,
        ),
        (
            config.intra_op_threads,
            threading.get_intra_op_parallelism_threads,
            threading.set_intra_op_parallelism_threads,
        ),
    ):
        if value and get() != value:
            try:
                set_(value)
            except RuntimeError:
                print(
                    f"warning: TensorFlow has started already; its thread pools stay at "
                    f"{get() or 'its choice'} (not {value}); run in a fresh process"
                )


def make_objective(config: TrainConfig):
    """``objective(y, outputs) -> loss``: the run's loss (``config.loss``) of its targets
    (classes, or the BraTS regions of a ``regions`` network) against the model's outputs, the
    auxiliary ones of deep supervision weighted 1/2, 1/4, ... of the one before (weights sum
    to 1); ``targets(y)`` makes the targets from the one-hot classes. Returns
    ``(targets, objective)``."""
    from keras import ops

    from .metrics import LOSSES, region_targets

    loss = LOSSES[config.loss]
    targets = region_targets if config.model.output == "regions" else (lambda y: y)
    weights = [0.5**k for k in range(config.deep_supervision + 1)]
    weights = [w / sum(weights) for w in weights]

    def objective(y, outputs):
        if not isinstance(outputs, (list, tuple)):
            return loss(y, outputs)
        return ops.sum(ops.stack([w * loss(y, out) for w, out in zip(weights, outputs)]))

    return targets, objective


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


def gradient_step(model, optimizer, x, y, replicas: int = 1, objective=None):
    """The training step of every loop: the soft Dice loss of the batch in training mode (or
    ``objective(y, outputs)``, :func:`make_objective`), its gradients, divided by ``replicas``
    (tf.distribute sums the replicas' gradients, so their mean is applied), applied by
    ``optimizer``.

    Returns ``(loss, probabilities)``: the batch's loss before the update (undivided), and the
    ``(B, x, y, z, 3)`` probabilities (of the main output) it was computed from.
    """
    import tensorflow as tf

    from .metrics import batch_dice_loss

    objective = objective or batch_dice_loss
    with tf.GradientTape() as tape:
        outputs = model(x, training=True)
        loss = objective(y, outputs)
        share = loss / replicas
    probabilities = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    gradients = tape.gradient(share, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return loss, probabilities


def make_train_step(model, strategy, config: TrainConfig | None = None):
    """``step(batch) -> (loss, dice)``: :func:`gradient_step` with the model's optimizer on one
    global (distributed) batch ``(x, y)``, the same for every strategy; loss and Dice are the
    mean over replicas. ``config`` gives the targets and loss (:func:`make_objective`) and
    whether XLA compiles each replica's step (``jit_compile``); without it, the seed's."""
    import tensorflow as tf

    from .metrics import batch_dice

    targets, objective = make_objective(config) if config else ((lambda y: y), None)

    def replica_step(x, y):
        y = targets(y)
        loss, probabilities = gradient_step(
            model, model.optimizer, x, y, strategy.num_replicas_in_sync, objective
        )
        return loss, batch_dice(y, probabilities)

    if config is not None and config.jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def step(batch):
        loss, dice = strategy.run(replica_step, args=batch)
        mean = tf.distribute.ReduceOp.MEAN
        return strategy.reduce(mean, loss, axis=None), strategy.reduce(mean, dice, axis=None)

    step.replica_step = replica_step
    return step


def validation_arrays(sampler: PatchSampler, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` fixed validation patches: x ``(N, px, py, pz, 4)``, y ``(N, px, py, pz, 3)``."""
    pairs = [sampler(i) for i in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def evaluate_patches(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict:
    """Soft Dice loss and Dice pooled over all validation patches."""
    from .metrics import BATCH_AXIS, dice_coefficient, soft_dice_loss

    predictions = np.concatenate(
        [
            np.asarray(model(x[i : i + batch_size], training=False))
            for i in range(0, len(x), batch_size)
        ]
    )
    return {
        "val_loss": float(soft_dice_loss(y, predictions, axis=BATCH_AXIS)),
        "val_dice": float(dice_coefficient(y, predictions, axis=BATCH_AXIS)),
    }


def used_up(config: TrainConfig, state: dict | None) -> bool:
    """Whether a run has trained for its whole time limit already."""
    limit = config.time_limit_minutes
    return bool(limit and state and state["training_seconds"] >= limit * 60)


def write_history(folder: Path, history: list[dict]) -> None:
    """history.csv and curves.png of a run, atomically."""
    import pandas as pd

    from .figures import plot_history

    table = pd.DataFrame(history)
    with atomic_path(folder / HISTORY_FILE) as tmp:
        table.to_csv(tmp, index=False)
    figure = plot_history(table)
    with atomic_path(folder / CURVES_FILE) as tmp:
        figure.savefig(tmp, dpi=80, format="png")


# ----------------------------------------------------------------------------- runs


def is_chief(strategy) -> bool:
    """Whether this process is the one that writes the run folder (worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is None or not resolver.task_id


def split_run(config: TrainConfig) -> TrainConfig:
    """Split the labelled cases of ``config.data`` into the run's training and validation cases,
    and record the training cases' voxel spacing (median per axis, mm)."""
    from .data import voxel_spacing

    cases = [case for case in find_cases(config.data) if case.label is not None]
    if len(cases) < 2:
        raise InputError(config.data, "training needs at least two labelled cases")
    config.train_cases, config.valid_cases = split_cases(
        [c.id for c in cases], config.valid_fraction, config.seed
    )
    train_ids = set(config.train_cases)
    spacings = [voxel_spacing(case) for case in cases if case.id in train_ids]
    config.spacing = [float(s) for s in np.median(np.asarray(spacings, float), axis=0)]
    return config


def new_run(config: TrainConfig, out: Path) -> TrainConfig:
    """Check the data and the run folder, split the cases and write config.json."""
    if is_run(out):
        raise InputError(
            out, "holds a run already: pass --resume to continue it, or choose another --out"
        )
    split_run(config)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG_FILE)
    return config


def train(config: TrainConfig, out: str | os.PathLike, strategy=None, verbose: int = 1) -> dict:
    """Train a new run into folder ``out``, then calibrate its threshold (unless
    ``config.calibrate`` is off); returns its state
    (``state.json``: epochs, history, why it ended, threshold).

    Under multi-worker training every worker calls this with the same ``out``: the chief
    (worker 0) writes the run folder, the others split the cases alike and write nothing there.
    """
    config.validate()
    out = Path(out)
    configure_threads(config)
    strategy = strategy or make_strategy(config.strategy)
    config = new_run(config, out) if is_chief(strategy) else split_run(config)
    return _complete(config, out, None, strategy, verbose)


def resume(
    out: str | os.PathLike,
    epochs: int | None = None,
    time_limit_minutes: float | None = None,
    data: str | None = None,
    strategy=None,
    verbose: int = 1,
) -> dict:
    """Complete what the run in ``out`` is missing; returns its state.

    A run killed during training continues from its last complete epoch; a run killed during
    calibration is calibrated. A run that ended (all epochs done, early stop or time limit) trains
    again only when ``epochs`` or ``time_limit_minutes`` extend it; otherwise nothing changes.
    ``data`` points the run at its dataset in a new place (same cases). Changed settings are
    saved in config.json.
    """
    say = print if verbose else (lambda *args, **kwargs: None)
    out = Path(out)
    if not is_run(out):
        raise InputError(out, f"no run to resume here ({CONFIG_FILE} missing)")
    config = read_config(out)
    state = read_state(out)
    done = state["epoch"] if state else 0
    if epochs is not None and epochs < max(done, 1):
        raise InputError(
            "--epochs",
            f"the run in {out} has trained {done} epochs already; give more to extend it",
        )
    changes = {"epochs": epochs, "time_limit_minutes": time_limit_minutes, "data": data}
    changes = {
        key: value
        for key, value in changes.items()
        if value is not None and value != getattr(config, key)
    }
    old_epochs = config.epochs
    for key, value in changes.items():
        setattr(config, key, value)
    config.validate()
    configure_threads(config)
    strategy = strategy or make_strategy(config.strategy)
    if changes and is_chief(strategy):
        config.save(out / CONFIG_FILE)
    if "epochs" in changes and done:
        say(f"{out}: {schedule_change(config, old_epochs, done)}")
    if state and state.get("ended") and ({"epochs", "time_limit_minutes"} & changes.keys()):
        state["ended"] = None  # extended on purpose
    return _complete(config, out, state, strategy, verbose)


def schedule_change(config: TrainConfig, old_epochs: int, done: int) -> str:
    """One line on what extending a run from ``old_epochs`` to ``config.epochs`` epochs does to
    its learning rate (the cosine schedule is stretched over the new length)."""
    from dataclasses import replace

    old = learning_rate_schedule(replace(config, epochs=old_epochs))
    new = learning_rate_schedule(config)
    return (
        f"learning rate: the {config.schedule} schedule now spans {config.epochs} epochs (was "
        f"{old_epochs}): epoch {done} trained at {old(done - 1):.3g}, epoch {done + 1} "
        f"trains at {new(done):.3g}, falling to {new(config.epochs - 1):.3g}"
    )


def _complete(config: TrainConfig, out: Path, state: dict | None, strategy, verbose: int) -> dict:
    """Train the epochs the run still needs, then calibrate if the run calibrates and that is
    not done (the chief)."""
    say = print if verbose else (lambda *args, **kwargs: None)
    chief = is_chief(strategy)
    done = state["epoch"] if state else 0
    by_id = {case.id: case for case in find_cases(config.data)}
    missing = [i for i in config.train_cases + config.valid_cases if i not in by_id]
    if missing:
        raise InputError(config.data, f"cases of this run are missing: {', '.join(missing[:5])}")
    if state and state.get("ended"):
        say(
            f"{out}: the run ended ({state['ended']}) after {done} epochs; nothing to train "
            f"(--epochs or --time-limit extend it)"
        )
    elif done >= config.epochs:
        say(f"{out}: all {done} epochs are trained (--epochs extends the run)")
    elif used_up(config, state):
        state = state | {"ended": OUT_OF_TIME}
        if chief:
            write_state(out, state)
        say(f"{out}: the time limit of {config.time_limit_minutes} minutes is used up")
    else:
        if done:
            say(f"{out}: resuming at epoch {done + 1} of {config.epochs}")
        state = _fit_in_folder(config, out, state, strategy, by_id, verbose)
        say(
            f"{out}: {state['ended']} after {state['epoch']} epochs; best validation Dice "
            f"{state['best_val_dice']:.4f}"
        )
    if chief and config.calibrate and "threshold" not in state:
        say(
            f"{out}: calibrating the label map (threshold, smallest enhancing tumour) on "
            f"{len(config.valid_cases)} validation scans "
            f"({'with' if config.tta else 'without'} test-time flips)"
        )
        calibrate_label_map(out, [by_id[i] for i in config.valid_cases], tta=config.tta)
        state = read_state(out)
        say(f"{out}: {describe_rule(state)}")
    return state


def _fit_in_folder(
    config: TrainConfig, out: Path, state: dict | None, strategy, by_id: dict, verbose: int
) -> dict:
    """:func:`_fit` writing into ``out`` on the chief, and into a temporary folder, deleted
    afterwards, on every other worker (as Keras' BackupAndRestore does)."""
    if is_chief(strategy):
        return _fit(config, out, out, state, strategy, by_id, verbose)
    task = strategy.cluster_resolver.task_id
    scratch = Path(tempfile.mkdtemp(prefix=f"tumorseg-worker{task}-"))
    try:
        return _fit(config, out, scratch, state, strategy, by_id, verbose)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


SLOW_START_VARIABLE = "TUMORSEG_SLOW_START_SECONDS"  # tests: a worker that starts late


def _fit(
    config: TrainConfig,
    out: Path,
    folder: Path,
    state: dict | None,
    strategy,
    by_id: dict,
    verbose: int,
) -> dict:
    """The training loop from the last complete epoch of the run in ``out``, writing into
    ``folder``; returns the new state. The chief's decision to stop reaches every worker."""
    import keras

    initial_epoch = state["epoch"] if state else 0
    keras.utils.set_random_seed(config.seed + initial_epoch)
    patch = config.model.patch_shape
    cache = folder / CACHE_DIR
    factor = config.model.downsample
    train_cases = [cache_case(by_id[i], cache, patch, factor) for i in config.train_cases]
    valid_cases = [cache_case(by_id[i], cache, patch, factor) for i in config.valid_cases]
    sampler = PatchSampler(
        train_cases,
        patch,
        config.tumour_share,
        config.augmentation,
        config.seed,
        core_share=config.core_share,
    )
    valid_x, valid_y = validation_arrays(
        PatchSampler(valid_cases, patch, config.tumour_share, NO_AUGMENTATION, config.seed + 1),
        config.validation_patches,
    )

    global_batch = config.batch_size * strategy.num_replicas_in_sync
    start = initial_epoch * config.steps_per_epoch * global_batch

    def dataset_fn(context):
        return training_dataset(
            sampler,
            context.get_per_replica_batch_size(global_batch),
            start=start,
            shard=(context.input_pipeline_id, context.num_input_pipelines),
        )

    from .metrics import region_targets
    from .model import main_output

    if config.model.output == "regions":
        valid_y = region_targets(valid_y)
    with strategy.scope():
        if state:
            model = load_model(out / state["checkpoint"], compile=True)
        else:
            from .metrics import LOSSES, batch_dice
            from .model import add_deep_supervision, build_model

            model = add_deep_supervision(build_model(config.model), config.deep_supervision)
            model.compile(
                optimizer=make_optimizer(config),
                loss=LOSSES[config.loss],
                metrics=None if config.deep_supervision else [batch_dice],
            )
        net = main_output(model)  # the one-output network: validated and saved as the best
        step = make_train_step(model, strategy, config)
        broadcast = make_broadcast(strategy)
        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    # Tests: a worker that starts late, after the last collective before training (so the
    # workers' own clocks disagree by this much).
    time.sleep(float(os.environ.get(SLOW_START_VARIABLE) or 0))

    state = dict(state or {"history": [], "training_seconds": 0.0})
    early = EarlyStopping.restore(config.early_stopping_patience, state)
    clock = TrainingClock(state["training_seconds"])
    callbacks = keras.callbacks.CallbackList(
        [
            keras.callbacks.LearningRateScheduler(learning_rate_schedule(config)),
            keras.callbacks.TensorBoard(log_dir=str(folder / LOGS_DIR), write_graph=False),
        ],
        add_history=True,
        add_progbar=verbose > 0,
        model=model,
        verbose=verbose,
        epochs=config.epochs,
        steps=config.steps_per_epoch,
    )
    callbacks.on_train_begin()
    for epoch in range(initial_epoch, config.epochs):
        clock.start_epoch()
        callbacks.on_epoch_begin(epoch)
        losses, dices = [], []
        for batch in range(config.steps_per_epoch):
            callbacks.on_train_batch_begin(batch)
            loss, dice = step(next(iterator))
            losses.append(float(loss))
            dices.append(float(dice))
            callbacks.on_train_batch_end(batch, {"loss": losses[-1], "dice": dices[-1]})
        logs = {"loss": float(np.mean(losses)), "dice": float(np.mean(dices))}
        logs |= evaluate_patches(net, valid_x, valid_y, config.batch_size)
        logs["learning_rate"] = float(np.asarray(model.optimizer.learning_rate))
        callbacks.on_epoch_end(epoch, logs)
        improved = early.update(logs["val_dice"])
        fit_schedule(config, folder, epoch + 1, clock, broadcast, verbose)
        callbacks.set_params(callbacks.params | {"epochs": config.epochs})  # "Epoch 5/49"
        ended = REASONS[broadcast(REASONS.index(stop_reason(config, epoch + 1, early, clock)))]
        state |= early.state() | {
            "epoch": epoch + 1,
            "checkpoint": checkpoint_name(epoch + 1),
            "training_seconds": clock.seconds(),
            "ended": ended,
            "history": state["history"] + [{"epoch": epoch + 1} | logs],
        }
        record_epoch(folder, model, state, improved, net)
        if ended:
            break
    callbacks.on_train_end()
    return state


def fit_schedule(
    config: TrainConfig, folder: Path, epochs_done: int, clock: TrainingClock, broadcast, verbose
) -> None:
    """Shrink ``config.epochs`` to what the time limit holds (:func:`fitted_epochs`, the chief's
    figure on every worker) and save it in the run's config.json, so a resumed run keeps the
    schedule."""
    epoch_seconds = clock.pace()
    epochs = broadcast(fitted_epochs(config, epochs_done, epoch_seconds, clock.seconds()))
    if epochs == config.epochs:
        return
    old_epochs, config.epochs = config.epochs, epochs
    config.save(folder / CONFIG_FILE)
    if verbose:
        print(
            f"\n{folder}: {config.time_limit_minutes} minutes hold {epochs} epochs at "
            f"{epoch_seconds:.0f} s an epoch; {schedule_change(config, old_epochs, epochs_done)}"
        )
