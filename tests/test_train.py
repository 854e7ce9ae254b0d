"""Training runs: the run folder, resume after SIGKILL, tf.distribute with two workers, and the
predict / evaluate commands on the trained model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from conftest import write_tumour_dataset

from tumorseg.model import ModelConfig, load_model
from tumorseg.presets import CPU_PRECISION, PRESETS
from tumorseg.train import TrainConfig

TINY = ModelConfig(patch_shape=(16, 16, 8), n_base_filters=2, depth=3, normalization="batch")


def tiny_config(data, tmp_path, **overrides):
    config = TrainConfig.from_preset(data, "cpu", epochs=3, steps_per_epoch=4, batch_size=2)
    config.model = TINY
    config.validation_patches = 4
    for key, value in overrides.items():
        setattr(config, key, value)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


def tumorseg(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "tumorseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        **kwargs,
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished tiny run (and its data) shared by the tests below."""
    root = tmp_path_factory.mktemp("run")
    data = make_dataset(root / "data")
    config = tiny_config(data, root)
    result = tumorseg("train", "--config", config, "--out", root / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("TensorFlow devices: CPU:0"), result.stdout[:200]
    return root / "run", data


def make_dataset(root):
    return write_tumour_dataset(root, shape=(40, 36, 20))


def test_run_folder_holds_everything(trained_run):
    run, data = trained_run
    names = {p.name for p in run.iterdir()}
    assert {
        "config.json",
        "model.keras",
        "state.json",
        "history.csv",
        "curves.png",
        "logs",
        "checkpoint-0003.keras",
    } <= names
    assert not [n for n in names if ".tmp" in n]
    config = TrainConfig.load(run / "config.json")
    assert config.model == TINY and config.epochs == 3
    assert config.spacing == [1.0, 1.0, 2.5]  # the training cases' voxel size (conftest)
    assert json.loads((run / "state.json").read_text())["threshold_tta"] is True
    assert len(config.train_cases) == 2 and len(config.valid_cases) == 1
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:1] == ["epoch"] and len(history) == 4
    model = load_model(run / "model.keras")
    assert model.input_shape == (None, 16, 16, 8, 4)


def test_config_json_recreates_the_run(trained_run, tmp_path):
    run, data = trained_run
    result = tumorseg("train", "--config", run / "config.json", "--out", tmp_path / "again")
    assert result.returncode == 0, result.stderr[-2000:]
    first = json.loads((run / "config.json").read_text())
    second = json.loads((tmp_path / "again" / "config.json").read_text())
    assert first == second


def test_existing_run_is_refused_without_resume(trained_run):
    run, data = trained_run
    result = tumorseg("train", "--data", data, "--out", run)
    assert result.returncode == 2 and "--resume" in result.stderr and str(run) in result.stderr


def weights_of(path):
    return load_model(path).get_weights()


def test_killed_training_resumes_as_if_never_interrupted(tmp_path):
    """SIGKILL mid-run, then --resume: the same weights, history and end as a run of the same
    settings that was never interrupted. (Calibration after a kill has a test of its own.)"""
    data = make_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path, epochs=4, steps_per_epoch=40, calibrate=False)
    reference = tmp_path / "reference"
    result = tumorseg("train", "--config", config, "--out", reference)
    assert result.returncode == 0, result.stderr[-2000:]

    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "tumorseg", "train", "--config", str(config), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (out / "state.json").exists():
        assert process.poll() is None and time.time() < deadline, "training ended too early"
        time.sleep(0.05)
    time.sleep(0.5)  # well into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = json.loads((out / "state.json").read_text())
    assert 1 <= state["epoch"] < 4, "killed mid-run"
    result = tumorseg("train", "--out", out, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    resumed, expected = (json.loads((run / "state.json").read_text()) for run in (out, reference))
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["history"] == expected["history"]
    assert (resumed["ended"], resumed["best_val_dice"]) == (
        expected["ended"],
        expected["best_val_dice"],
    )
    assert sorted(p.name for p in out.glob("checkpoint-*.keras")) == ["checkpoint-0004.keras"]
    for name in ("checkpoint-0004.keras", "model.keras"):
        for a, b in zip(weights_of(out / name), weights_of(reference / name), strict=True):
            np.testing.assert_array_equal(a, b)


def test_resume_restores_early_stopping(tmp_path):
    """A run resumed with two epochs of patience used up and an unbeatable best stops after one
    more epoch, as the uninterrupted run would have."""
    from tumorseg.train import resume, train

    data = make_dataset(tmp_path / "data")
    config = TrainConfig.load(
        tiny_config(data, tmp_path, epochs=1, steps_per_epoch=2, early_stopping_patience=3)
    )
    train(config, tmp_path / "run", verbose=0)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    state |= {"best_val_dice": 1.5, "epochs_without_improvement": 2}
    (tmp_path / "run" / "state.json").write_text(json.dumps(state))
    state = resume(tmp_path / "run", epochs=6, verbose=0)
    assert (state["epoch"], state["ended"]) == (2, "early stop")
    assert state["epochs_without_improvement"] == 3 and state["best_val_dice"] == 1.5


def test_early_stopping_patience_0_never_stops():
    from tumorseg.train import EarlyStopping

    for patience, stops in ((0, False), (3, True)):
        early = EarlyStopping(patience)
        for value in (0.5, 0.4, 0.3, 0.2, 0.1):
            early.update(value)
        assert early.should_stop == stops, patience


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DIVISION_SCRIPT = """
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tumorseg.metrics import batch_dice_loss
from tumorseg.model import unet_model_3d
from tumorseg.train import make_train_step

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.normal(size=(2, 2, 8, 8, 4, 4)).astype(np.float32)  # replica, batch, ...
y = (rng.random((2, 2, 8, 8, 4, 3)) < 0.3).astype(np.float32)
keras.utils.set_random_seed(0)
with strategy.scope():
    model = unet_model_3d(input_shape=(8, 8, 4, 4), depth=2, n_base_filters=2)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
reference = unet_model_3d(input_shape=(8, 8, 4, 4), depth=2, n_base_filters=2)
reference.set_weights(model.get_weights())
batch = tuple(strategy.experimental_distribute_values_from_function(
    lambda context, a=a: tf.constant(a[context.replica_id_in_sync_group])) for a in (x, y))
make_train_step(model, strategy)(batch)
with tf.GradientTape() as tape:  # the mean of the two replicas' losses, one SGD step
    loss = (batch_dice_loss(y[0], reference(x[0], training=True))
            + batch_dice_loss(y[1], reference(x[1], training=True))) / 2
gradients = tape.gradient(loss, reference.trainable_variables)
keras.optimizers.SGD(1.0).apply_gradients(zip(gradients, reference.trainable_variables))
moved = max(float(np.abs(g).max()) for g in gradients)
difference = max(float(np.abs(a - b).max())
                 for a, b in zip(model.get_weights(), reference.get_weights()))
print("RESULT", moved, difference)
"""


def test_replicas_apply_the_mean_of_their_gradients():
    """Two replicas with different batches take one SGD step: the weights move by the gradient
    of the mean of their losses (the loss is divided by the number of replicas)."""
    result = subprocess.run(
        [sys.executable, "-c", DIVISION_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    moved, difference = map(float, result.stdout.split("RESULT")[1].split())
    assert moved > 1e-3, "the step must move the weights"
    assert difference < 1e-6 * max(moved, 1), (moved, difference)


def test_two_workers_share_one_run_folder(tmp_path):
    """Two workers on 127.0.0.1 train into one --out; worker 1 starts 30 s late, after the
    collectives that create the model, so the chief's clock counts 30 s more than worker 1's
    (the chief waits in the first step). The chief alone writes the run folder and decides when
    the 1-minute limit ends the run (after epoch 1: 2 x (30 s + the first step's tracing));
    both workers stop after that epoch. Were each worker to decide on its own clock, worker 1
    would go on (2 x the tracing < 60 s) and wait for a chief that has left."""
    data = make_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path, epochs=50, steps_per_epoch=3, time_limit_minutes=1.0)
    out = tmp_path / "run"
    ports = [free_port(), free_port()]
    workers = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps(
                {
                    "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                    "task": {"type": "worker", "index": index},
                }
            ),
        )
        if index == 1:
            env["TUMORSEG_SLOW_START_SECONDS"] = "30"
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tumorseg",
                    "train",
                    "--config",
                    str(config),
                    "--out",
                    str(out),
                    "--strategy",
                    "multiworker",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=240)
            assert worker.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
    finally:
        for worker in workers:
            worker.kill()
    state = json.loads((out / "state.json").read_text())
    assert state["ended"] == "time limit" and 1 <= state["epoch"] < 50
    ends = [
        line
        for text in outputs
        for line in text.splitlines()
        if " after " in line and "best validation Dice" in line
    ]
    assert len(ends) == 2 and ends[0] == ends[1], outputs  # the same epoch on both workers
    assert TrainConfig.load(out / "config.json").strategy == "multiworker"
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "state.json",
        "model.keras",
        "history.csv",
        "cache",
        "logs",
        f"checkpoint-{state['epoch']:04d}.keras",
    } <= names
    assert not [n for n in names if ".tmp" in n or "worker" in n]
    assert "threshold" in state


# ----------------------------------------------------------------------------- predict and evaluate


def test_predict_and_evaluate(trained_run, tmp_path):
    run, data = trained_run
    out = tmp_path / "pred"
    result = tumorseg("predict", "--model", run, "--input", data, "--out", out, "--tta")
    assert result.returncode == 0, result.stderr[-2000:]
    for i in range(3):
        written = nib.load(out / f"BRATS_00{i}.nii.gz")
        source = nib.load(data / "imagesTr" / f"BRATS_00{i}.nii.gz")
        assert written.shape == (40, 36, 20) and written.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(written.affine, source.affine)
    record = json.loads((out / "predict.json").read_text())  # the run's label-map rule
    state = json.loads((run / "state.json").read_text())
    assert (record["threshold"], record["et_min_voxels"]) == (
        state["threshold"],
        state["et_min_voxels"],
    )
    assert record["threshold_source"] == record["et_min_voxels_source"] == "calibrated"
    result = tumorseg("evaluate", "--pred", out, "--truth", data)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Dice WT" in result.stdout and "HD95" in result.stdout and "mean" in result.stdout
    csv = (out / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("case,Dice Edema") and csv[-1].startswith("mean")
    assert len(csv) == 5


def test_evaluate_perfect_predictions(tmp_path):
    data = make_dataset(tmp_path / "data")
    pred = tmp_path / "pred"
    pred.mkdir()
    for label in (data / "labelsTr").iterdir():
        (pred / label.name).write_bytes(label.read_bytes())
    result = tumorseg("evaluate", "--pred", pred, "--truth", data, "--out", tmp_path / "m.csv")
    assert result.returncode == 0, result.stderr
    import pandas as pd

    table = pd.read_csv(tmp_path / "m.csv", index_col=0)
    assert table.loc["mean", "Dice WT"] == 1.0 and table.loc["mean", "HD95 ET"] == 0.0


def test_predict_refuses_to_overwrite_and_bad_models(trained_run, tmp_path):
    run, data = trained_run
    image = data / "imagesTr" / "BRATS_000.nii.gz"
    target = tmp_path / "one.nii.gz"
    target.write_bytes(b"keep me")
    result = tumorseg("predict", "--model", run, "--input", image, "--out", target)
    assert (
        result.returncode == 2 and "one.nii.gz" in result.stderr and "--overwrite" in result.stderr
    )
    assert target.read_bytes() == b"keep me"
    result = tumorseg("predict", "--model", run, "--input", image, "--out", target, "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert nib.load(target).shape == (40, 36, 20)

    fake = tmp_path / "fake.keras"
    fake.write_text("not a model")
    result = tumorseg("predict", "--model", fake, "--input", image, "--out", tmp_path / "x.nii.gz")
    assert result.returncode == 2 and "fake.keras" in result.stderr
    assert "not a Keras model" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = tumorseg(
        "predict",
        "--model",
        run,
        "--input",
        tmp_path / "missing.nii.gz",
        "--out",
        tmp_path / "y.nii.gz",
    )
    assert result.returncode == 2 and "missing.nii.gz: no such file" in result.stderr


def test_killed_predict_leaves_no_partial_output(trained_run, tmp_path):
    run, data = trained_run
    out = tmp_path / "pred"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tumorseg",
            "predict",
            "--model",
            str(run),
            "--input",
            str(data),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    first = process.stdout.readline()  # the first case is written
    assert "BRATS_000" in first
    process.send_signal(signal.SIGKILL)
    process.wait()
    for path in out.glob("*.nii.gz"):
        assert not path.name.startswith(".")
        np.asarray(nib.load(path).dataobj)  # every file under its final name is complete


def test_time_limit_stops_between_epochs(tmp_path):
    from tumorseg.train import TrainConfig, train

    data = make_dataset(tmp_path / "data")
    config = TrainConfig.load(
        tiny_config(data, tmp_path, epochs=50, steps_per_epoch=2, time_limit_minutes=0.05)
    )
    state = train(config, tmp_path / "run", verbose=0)
    assert 1 <= len(state["history"]) < 50 and state["ended"] == "time limit"
    assert json.loads((tmp_path / "run" / "state.json").read_text())["ended"] == "time limit"


def test_fitted_epochs_shrink_the_schedule_to_what_the_time_limit_holds():
    from dataclasses import replace

    from tumorseg.train import fitted_epochs

    config = TrainConfig.from_preset(
        "data", "cpu", epochs=28, time_limit_minutes=15, fit_to_time_limit=True
    )
    assert fitted_epochs(config, 2, 40.0, 100.0) == 2 + 20  # (900 s - 100 s) // 40 s
    assert fitted_epochs(config, 2, 20.0, 100.0) == 28  # never grown
    assert fitted_epochs(config, 2, 0.0, 100.0) == 28  # the pace is not known yet
    assert fitted_epochs(config, 20, 40.0, 890.0) == 28  # no epoch fits: the limit ends the run
    assert fitted_epochs(replace(config, fit_to_time_limit=False), 2, 40.0, 100.0) == 28
    assert fitted_epochs(replace(config, time_limit_minutes=None), 2, 40.0, 100.0) == 28


def test_a_run_fitted_to_its_time_limit_ends_its_schedule_in_time(tmp_path, capsys, monkeypatch):
    """500 epochs do not fit 20 seconds: the schedule shrinks to what they hold, config.json
    keeps it, the progress bar counts to it, and the run ends with its schedule (the last epoch
    at the final learning rate) rather than by the limit. The clock is the test's: each reading
    1 s later than the last, so every epoch lasts as long as the one before (on a real machine
    an epoch slower than the mean can leave the last planned one no time)."""
    import functools
    import itertools

    import tumorseg.train
    from tumorseg.train import TrainingClock, resume, train

    readings = itertools.count(step=1.0)
    steady = functools.partial(TrainingClock, now=lambda: next(readings))
    monkeypatch.setattr(tumorseg.train, "TrainingClock", steady)

    data = make_dataset(tmp_path / "data")
    config = TrainConfig.load(
        tiny_config(
            data,
            tmp_path,
            epochs=500,
            steps_per_epoch=2,
            time_limit_minutes=1 / 3,
            fit_to_time_limit=True,
            early_stopping_patience=0,  # never: the cpu preset's
            calibrate=False,
        )
    )
    state = train(config, tmp_path / "run", verbose=1)
    saved = TrainConfig.load(tmp_path / "run" / "config.json")
    assert state["ended"] == "finished" and state["epoch"] == saved.epochs < 500
    assert f"Epoch {saved.epochs}/{saved.epochs}\n" in capsys.readouterr().out
    final = config.learning_rate * config.final_learning_rate_fraction
    assert state["history"][-1]["learning_rate"] == pytest.approx(final, rel=1e-3)
    # Extended on purpose (README): more epochs and more minutes.
    more = resume(tmp_path / "run", epochs=saved.epochs + 2, time_limit_minutes=1, verbose=0)
    assert (more["epoch"], more["ended"]) == (saved.epochs + 2, "finished")


# ----------------------------------------------------------------------------- resume


def digests(run):
    """SHA-256 of every file of a run folder that training or calibration writes."""
    names = ["model.keras", "state.json", "history.csv", "config.json"]
    names += sorted(p.name for p in run.glob("checkpoint-*.keras"))
    return {name: hashlib.sha256((run / name).read_bytes()).hexdigest() for name in names}


def copy_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


@pytest.fixture(scope="module")
def time_limited_run(tmp_path_factory):
    """A run stopped by its time limit after its first epoch (as make run's 15 minutes do)."""
    root = tmp_path_factory.mktemp("limited")
    data = make_dataset(root / "data")
    config = tiny_config(data, root, epochs=50, steps_per_epoch=2)
    result = tumorseg("train", "--config", config, "--out", root / "run", "--time-limit", 0.001)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", data


def test_resume_of_a_run_ended_by_its_time_limit_changes_nothing(time_limited_run, tmp_path):
    run, data = time_limited_run
    state = json.loads((run / "state.json").read_text())
    assert state["ended"] == "time limit" and state["epoch"] < 50 and "threshold" in state
    before = digests(run)
    for _ in range(2):  # make run twice in a row
        result = tumorseg("train", "--out", run, "--resume")
        assert result.returncode == 0, result.stderr[-2000:]
        assert "nothing to train" in result.stdout
        assert digests(run) == before


def test_resume_of_a_finished_run_changes_nothing(trained_run):
    run, data = trained_run
    before = digests(run)
    result = tumorseg("train", "--out", run, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nothing to train" in result.stdout and digests(run) == before


def test_resume_redoes_a_killed_calibration(trained_run, tmp_path):
    run = copy_run(trained_run[0], tmp_path)
    state = json.loads((run / "state.json").read_text())
    for key in ("threshold", "threshold_scores", "et_min_voxels", "et_min_scores"):
        del state[key]  # as a kill during calibration leaves it
    (run / "state.json").write_text(json.dumps(state))
    before = digests(run)
    result = tumorseg("train", "--out", run, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "calibrating" in result.stdout and "nothing to train" in result.stdout
    after = json.loads((run / "state.json").read_text())
    assert after["threshold"] in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
    assert after["et_min_voxels"] in (0, 50, 100, 200, 300, 500, 750, 1000)
    assert after["history"] == state["history"]
    assert {k: v for k, v in digests(run).items() if k != "state.json"} == {
        k: v for k, v in before.items() if k != "state.json"
    }


def test_a_run_that_does_not_calibrate_keeps_no_threshold(tmp_path):
    data = make_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path, epochs=1, calibrate=False)
    result = tumorseg("train", "--config", config, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    again = tumorseg("train", "--out", tmp_path / "run", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "calibrating" not in result.stdout + again.stdout
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["ended"] == "finished" and "threshold" not in state


def test_resume_with_epochs_extends_the_run(trained_run, tmp_path):
    run = copy_run(trained_run[0], tmp_path)
    result = tumorseg("train", "--out", run, "--resume", "--epochs", 4)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if "learning rate" in line]
    assert len(lines) == 1 and "spans 4 epochs (was 3)" in lines[0], result.stdout
    state = json.loads((run / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3, 4]
    assert state["ended"] == "finished" and "threshold" in state
    assert TrainConfig.load(run / "config.json").epochs == 4


def test_resume_refuses_settings_it_cannot_honour(trained_run):
    run, data = trained_run
    before = digests(run)
    for option, value in (
        ("--batch-size", 3),
        ("--steps-per-epoch", 2),
        ("--seed", 1),
        ("--preset", "seed"),
        ("--epochs", 2),
    ):
        result = tumorseg("train", "--out", run, "--resume", option, value)
        assert result.returncode == 2, (option, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and option in lines[0], (option, result.stderr)
    assert digests(run) == before


def test_config_run_honours_the_options_given_with_it(trained_run, tmp_path):
    run, data = trained_run
    config = tiny_config(data, tmp_path, epochs=1, steps_per_epoch=1)
    result = tumorseg("train", "--config", config, "--out", tmp_path / "run", "--epochs", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert TrainConfig.load(tmp_path / "run" / "config.json").epochs == 2
    assert json.loads((tmp_path / "run" / "state.json").read_text())["epoch"] == 2


def test_malformed_tf_config_is_one_line(trained_run, tmp_path):
    run, data = trained_run
    for value, words in (
        ("{not json", "not valid JSON"),
        ('{"cluster": {}}', "worker"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
            "index",
        ),
    ):
        env = dict(os.environ, TF_CONFIG=value)
        result = tumorseg(
            "train", "--data", data, "--out", tmp_path / "mw", "--strategy", "multiworker", env=env
        )
        assert result.returncode == 2, (value, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tumorseg: error: TF_CONFIG: "), lines
        assert words in lines[0]


BAD_BEFORE_TENSORFLOW = """
import sys
from tumorseg.cli import main
code = main(sys.argv[1:])
print("RESULT", code, "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize(
    "args, tf_config, says",
    [
        (["predict", "--model", "no-run", "--input", "gone.nii.gz", "--out", "x"], None, "gone"),
        (["predict", "--model", "no-run", "--input", "{image}", "--out", "{kept}"], None, "exists"),
        (["train", "--data", "d", "--out", "mw", "--strategy", "multiworker"], "{", "TF_CONFIG"),
        (["train", "--out", "{run}", "--resume", "--seed", "1"], None, "--seed"),
    ],
)
def test_bad_input_is_refused_before_tensorflow_loads(trained_run, tmp_path, args, tf_config, says):
    """A bad input or option costs no TensorFlow start-up (seconds): the one-line error comes
    from the checks at the boundary."""
    run, data = trained_run
    kept = tmp_path / "kept.nii.gz"
    kept.write_bytes(b"keep me")
    image = data / "imagesTr" / "BRATS_000.nii.gz"
    args = [a.format(image=image, kept=kept, run=run) for a in args]
    env = dict(os.environ, **({"TF_CONFIG": tf_config} if tf_config else {}))
    result = subprocess.run(
        [sys.executable, "-c", BAD_BEFORE_TENSORFLOW, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.stdout.split() == ["RESULT", "2", "False"], result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr


# ----------------------------------------------------------------------------- predict options


def test_predict_refuses_bad_option_values(trained_run, tmp_path):
    run, data = trained_run
    image = data / "imagesTr" / "BRATS_000.nii.gz"
    for option, value in (
        ("--overlap", 1),
        ("--overlap", -0.1),
        ("--batch-size", 0),
        ("--threshold", 1),
        ("--threshold", -0.5),
        ("--threshold", "x"),
        ("--precision", "fp8"),
        ("--et-min-voxels", -1),
    ):
        result = tumorseg(
            "predict",
            "--model",
            run,
            "--input",
            image,
            "--out",
            tmp_path / "p.nii.gz",
            option,
            value,
        )
        assert result.returncode == 2, (option, value, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and option in lines[0], (option, value, result.stderr)
    assert not (tmp_path / "p.nii.gz").exists()


def foreign_model_file(path):
    """A .keras file of a Keras model that is not a tumorseg U-Net."""
    import keras

    inputs = keras.Input((8, 8, 4, 4))
    outputs = keras.layers.Conv3D(3, 1, activation="sigmoid")(inputs)
    keras.Model(inputs, outputs).save(path)
    return path


def test_bf16_for_a_foreign_model_is_refused(trained_run, tmp_path):
    run, data = trained_run
    model = foreign_model_file(tmp_path / "foreign.keras")
    result = tumorseg(
        "predict",
        "--model",
        model,
        "--input",
        data / "imagesTr" / "BRATS_000.nii.gz",
        "--out",
        tmp_path / "p.nii.gz",
        "--precision",
        "bf16",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--precision" in lines[0] and "foreign.keras" in lines[0]


def test_threshold_zero_and_a_huge_et_minimum_mean_it_and_provenance_is_written(
    trained_run, tmp_path
):
    from tumorseg.data import find_cases, load_case
    from tumorseg.inference import Predictor

    run, data = trained_run
    out = tmp_path / "pred"
    options = ("--threshold", 0, "--et-min-voxels", 10**9)
    result = tumorseg("predict", "--model", run, "--input", data, "--out", out, *options)
    assert result.returncode == 0, result.stderr[-2000:]
    label = np.asarray(nib.load(out / "BRATS_000.nii.gz").dataobj)
    image = np.asarray(nib.load(data / "imagesTr" / "BRATS_000.nii.gz").dataobj)
    brain = np.any(image != 0, axis=-1)
    assert np.all(label[brain] > 0), "threshold 0: every voxel of the brain box has a label"
    # Without the minimum the same map holds enhancing tumour; with it, none is left.
    kept = Predictor.from_run(run).segment(load_case(find_cases(data)[0])[0], 0, et_min_voxels=0)
    assert np.any(kept == 3) and not np.any(label == 3)
    record = json.loads((out / "predict.json").read_text())
    model_bytes = (run / "model.keras").read_bytes()
    assert record["model"] == str((run / "model.keras").resolve())
    assert record["model_sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert record["threshold"] == 0 and record["threshold_source"] == "--threshold"
    assert (record["et_min_voxels"], record["et_min_voxels_source"]) == (10**9, "--et-min-voxels")
    assert (record["overlap"], record["tta"], record["precision"]) == (0.25, False, "float32")
    assert record["tumorseg_version"] and record["time"].endswith("+00:00")
    assert [o["output"] for o in record["outputs"]] == [f"BRATS_00{i}.nii.gz" for i in range(3)]
    assert record["outputs"][1]["inputs"] == [
        str((data / "imagesTr" / "BRATS_001.nii.gz").resolve())
    ]


def test_a_bare_keras_file_predicts_with_defaults_said_in_one_line(trained_run, tmp_path):
    run, data = trained_run
    bare = tmp_path / "alone" / "model.keras"
    bare.parent.mkdir()
    shutil.copy(run / "model.keras", bare)
    out = tmp_path / "one.nii.gz"
    result = tumorseg(
        "predict", "--model", bare, "--input", data / "imagesTr" / "BRATS_000.nii.gz", "--out", out
    )
    assert result.returncode == 0, result.stderr[-2000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("tumorseg:")]
    assert len(notes) == 1 and "no run folder" in notes[0] and "threshold 0.5" in notes[0]
    record = json.loads((tmp_path / "one.predict.json").read_text())
    assert record["threshold"] == 0.5 and record["threshold_source"] == "default"
    assert (record["et_min_voxels"], record["et_min_voxels_source"]) == (0, "default")
    assert record["patch_shape"] == [16, 16, 8]


def test_sigkill_while_a_prediction_is_written_leaves_no_partial_file(trained_run, tmp_path):
    """Kill predict the moment its output file starts to be written: nothing may stand under the
    final name but a complete file (a large, noisy scan makes the write take a while)."""
    run, data = trained_run
    shape = (240, 240, 120)
    image = np.zeros(shape + (4,), np.float32)
    image[20:220, 20:220, 10:110] = np.random.default_rng(0).normal(100, 30, (200, 200, 100, 4))
    source = tmp_path / "big.nii.gz"
    # L, P, S at the run's training spacing (2.5 mm slices), so predict does not refuse it
    nib.save(nib.Nifti1Image(image, np.diag([-1.0, -1.0, 2.5, 1.0])), source)
    out = tmp_path / "pred"
    target = out / "big.nii.gz"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tumorseg",
            "predict",
            "--model",
            str(run),
            "--input",
            str(source),
            "--out",
            str(out),
            "--threshold",
            "0",
            "--batch-size",
            "64",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (out.exists() and any(out.iterdir())):
        assert process.poll() is None and time.time() < deadline, "predict ended before writing"
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = sorted(p.name for p in out.iterdir())
    if target.exists():  # only a complete file may carry the final name
        assert nib.load(target).shape == shape
        np.asarray(nib.load(target).dataobj)  # decompresses to the end
    assert written == [f".big.nii.gz.{process.pid}.tmp.nii.gz"], written  # killed mid-write


# ----------------------------------------------------------------------------- bad settings


def bad_config(tmp_path, change):
    """tiny.json with ``change`` applied to its mapping."""
    path = tiny_config(tmp_path / "data", tmp_path)
    values = json.loads(path.read_text())
    change(values)
    path.write_text(json.dumps(values))
    return path


BAD_FILES = {
    "epochs 0": (lambda v: v.update(epochs=0), "epochs: must be at least 1"),
    "batch_size 0": (lambda v: v.update(batch_size=0), "batch_size: must be at least 1"),
    "unpoolable patch": (
        lambda v: v["model"].update(patch_shape=[16, 16, 6]),
        "model.patch_shape: [16, 16, 6] cannot be pooled 2 times",
    ),
    "unknown key": (lambda v: v.update(epoch=3), "epoch: unknown setting"),
    "unknown model key": (lambda v: v["model"].update(filters=3), "model.filters: unknown"),
    "wrong type": (
        lambda v: v.update(steps_per_epoch="ten"),
        "steps_per_epoch: must be an integer, got 'ten'",
    ),
    "bool for int": (lambda v: v.update(batch_size=True), "batch_size: must be an integer"),
    "negative seed": (lambda v: v.update(seed=-1), "seed: must be at least 0"),
    "missing key": (lambda v: v.pop("learning_rate"), "learning_rate: missing"),
    "bad strategy": (lambda v: v.update(strategy="ring"), "strategy: must be one of"),
    "not a mapping": (
        lambda v: v["augmentation"].clear() or v.update(augmentation=[1]),
        "augmentation: must be a mapping",
    ),
    "bad loss": (lambda v: v.update(loss="focal"), "loss: must be one of dice, dice_ce"),
    "bad optimizer": (lambda v: v.update(optimizer="rmsprop"), "optimizer: must be one of"),
    "bad schedule": (lambda v: v.update(schedule="step"), "schedule: must be one of"),
    "bad output": (lambda v: v["model"].update(output="labels"), "model.output: must be one"),
    "zero downsample": (
        lambda v: v["model"].update(downsample=0),
        "model.downsample: must be at least 1",
    ),
    "shares over 1": (
        lambda v: v.update(core_share=0.5),
        "core_share: tumour_share + core_share must be at most 1",
    ),
    "too deep supervision": (
        lambda v: v.update(deep_supervision=2),
        "deep_supervision: a network of depth 3 has 1 lower decoder",
    ),
    "negative threads": (
        lambda v: v.update(intra_op_threads=-1),
        "intra_op_threads: must be at least 0",
    ),
    "jit not bool": (lambda v: v.update(jit_compile=1), "jit_compile: must be true or false"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_config_file_exits_2_naming_file_and_key(tmp_path, name):
    change, words = BAD_FILES[name]
    path = bad_config(tmp_path, change)
    result = tumorseg("train", "--config", path, "--out", tmp_path / "run")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert str(path) in lines[0] and words in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, option",
    [
        (("--seed", "-1"), "--seed"),
        (("--epochs", "0"), "--epochs"),
        (("--batch-size", "0"), "--batch-size"),
    ],
)
def test_a_bad_option_exits_2_naming_it(tmp_path, args, option):
    result = tumorseg("train", "--data", tmp_path, "--out", tmp_path / "run", *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and option in lines[0], result.stderr


def test_the_python_interface_validates_too(tmp_path):
    from tumorseg.errors import InputError
    from tumorseg.train import train

    config = TrainConfig.from_preset(tmp_path, "cpu", epochs=0)
    with pytest.raises(InputError, match="^--epochs: must be at least 1"):
        train(config, tmp_path / "run", verbose=0)
    config = TrainConfig.from_preset(tmp_path, "cpu", learning_rate=-1.0)
    with pytest.raises(InputError, match="config key learning_rate: must be above 0"):
        config.validate()


# ----------------------------------------------------------------------------- devices, calibration


def test_a_missing_gpu_is_said_when_one_was_expected(monkeypatch):
    import tensorflow as tf

    from tumorseg.train import describe_devices

    cpu = tf.config.PhysicalDevice("/physical_device:CPU:0", "CPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda *args: [cpu])
    log = "I cudart_stub.cc:31] noise\nW dso_loader.cc] Could not load library libcudnn.so.9\n"
    assert describe_devices("default", "cpu", log) == "TensorFlow devices: CPU:0"
    for strategy, preset, words in (
        ("mirrored", "cpu", "the mirrored strategy"),
        ("default", "seed", "the seed preset"),
    ):
        lines = describe_devices(strategy, preset, log).splitlines()
        assert len(lines) == 2 and lines[0] == "TensorFlow devices: CPU:0"
        assert "no GPU loaded" in lines[1] and words in lines[1] and "libcudnn.so.9" in lines[1]


@pytest.mark.parametrize("native", [False, True])
def test_emulated_bf16_is_said(monkeypatch, native):
    """bf16 on a CPU without AVX-512 BF16 or AMX gets a warning line; native bf16, float32 or a
    GPU none."""
    import tensorflow as tf

    import tumorseg.presets
    from tumorseg.train import describe_devices

    cpu = tf.config.PhysicalDevice("/physical_device:CPU:0", "CPU")
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    devices = [cpu]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda *args: devices)
    monkeypatch.setattr(tumorseg.presets, "native_bf16", lambda: native)
    lines = describe_devices("default", "cpu", "", "bf16").splitlines()
    assert lines[0] == "TensorFlow devices: CPU:0"
    if native:
        assert lines == lines[:1]
    else:
        assert len(lines) == 2 and "no native bfloat16" in lines[1] and "float32" in lines[1]
    assert describe_devices("default", "cpu", "", "float32") == lines[0]
    devices.append(gpu)
    assert describe_devices("default", "cpu", "", "bf16") == "TensorFlow devices: CPU:0, GPU:0"


def test_calibration_predicts_with_one_network_and_dice_only(trained_run, tmp_path, monkeypatch):
    import tumorseg.metrics
    import tumorseg.model
    from tumorseg.data import find_cases
    from tumorseg.inference import Predictor, calibrate_label_map

    run = copy_run(trained_run[0], tmp_path)
    builds, flips = [], []
    build_model = tumorseg.model.build_model
    monkeypatch.setattr(
        tumorseg.model,
        "build_model",
        lambda *args, **kwargs: builds.append(1) or build_model(*args, **kwargs),
    )
    predict = Predictor.predict
    monkeypatch.setattr(
        Predictor,
        "predict",
        lambda self, image, **options: (
            flips.append(options.get("tta")) or predict(self, image, **options)
        ),
    )

    def no_hd95(*args, **kwargs):
        raise AssertionError("calibration computed HD95")

    monkeypatch.setattr(tumorseg.metrics, "hausdorff95", no_hd95)
    cases = find_cases(trained_run[1])
    for tta in (False, True):
        builds.clear(), flips.clear()
        chosen = calibrate_label_map(run, cases, tta=tta)
        state = json.loads((run / "state.json").read_text())
        assert {k: state[k] for k in chosen} == chosen and chosen["threshold_tta"] is tta
        assert len(builds) == 1 and flips == [tta] * len(cases), (builds, flips)


def test_calibration_drops_a_false_small_enhancing_tumour(trained_run, tmp_path, monkeypatch):
    """Two validation scans: one without enhancing tumour where the network marks 20 enhancing
    voxels, one whose 64 enhancing voxels it finds. A minimum of 50 voxels gives both ET Dice
    1; 0 (keep all) and 100 (drops the true one too) give 0.5 each."""
    import tumorseg.data
    from tumorseg.inference import Predictor, calibrate_label_map

    truths, predictions = np.zeros((2, 30, 20, 10), np.uint8), np.zeros((2, 30, 20, 10), np.uint8)
    truths[:, 5:25, 5:15, 2:8] = 1
    truths[1, 10:14, 8:12, 3:7] = 3  # 64 voxels
    predictions[:] = truths
    predictions[0, 10:15, 8:12, 3] = 3  # 20 false enhancing voxels
    probabilities = [np.where(np.eye(4)[p][..., 1:] == 1, 0.9, 0.05) for p in predictions]
    monkeypatch.setattr(tumorseg.data, "load_case", lambda i: (i, truths[i]))
    monkeypatch.setattr(Predictor, "predict", lambda self, i, **options: probabilities[i])
    run = copy_run(trained_run[0], tmp_path)
    assert calibrate_label_map(run, [0, 1])["et_min_voxels"] == 50
    scores = json.loads((run / "state.json").read_text())["et_min_scores"]
    assert (scores["0"], scores["50"], scores["100"]) == (0.5, 1.0, 0.5)
    assert Predictor.from_run(run).et_min_voxels == 50
    predictions[0] = truths[0]  # no false enhancing tumour: nothing to drop, none dropped
    probabilities[0] = np.where(np.eye(4)[truths[0]][..., 1:] == 1, 0.9, 0.05)
    assert calibrate_label_map(run, [0, 1])["et_min_voxels"] == 0


# ----------------------------------------------------------------------------- training levers


def test_the_default_levers_are_the_seeds_recipe(tmp_path):
    config = TrainConfig.from_preset(tmp_path, "cpu")
    assert (
        config.loss,
        config.deep_supervision,
        config.core_share,
        config.optimizer,
        config.schedule,
        config.jit_compile,
        config.inter_op_threads,
        config.intra_op_threads,
    ) == ("dice", 0, 0.0, "adam", "cosine", False, 0, 0)
    assert config.model.output == "classes"
    # The one departure: the cpu preset trains in mixed bfloat16 where the CPU has it natively;
    # the seed's in float32.
    assert (config.model.precision, PRESETS["seed"].precision) == (CPU_PRECISION, "float32")


def test_the_cpu_preset_takes_bf16_only_where_the_cpu_has_it():
    from tumorseg.presets import native_bf16

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"
    assert not native_bf16(avx2)
    assert native_bf16(avx2.replace("avx512f", "avx512f avx512_bf16"))
    assert native_bf16(avx2.replace("avx512f", "amx_bf16 amx_tile"))
    assert not native_bf16("model name\t: avx512_bf16 in its name\n")
    assert CPU_PRECISION == ("bf16" if native_bf16() else "float32")


def test_optimizer_and_schedule_settings(tmp_path):
    from dataclasses import replace

    from tumorseg.train import learning_rate_schedule, make_optimizer

    config = TrainConfig.from_preset(tmp_path, "cpu", epochs=10, learning_rate=0.01)
    assert type(make_optimizer(config)).__name__ == "Adam"
    sgd = make_optimizer(replace(config, optimizer="sgd"))
    assert type(sgd).__name__ == "SGD" and sgd.nesterov and sgd.momentum == 0.99
    poly = learning_rate_schedule(replace(config, schedule="poly"))
    assert poly(0) == pytest.approx(0.01) and poly(5) == pytest.approx(0.01 * 0.5**0.9)
    cosine = learning_rate_schedule(config)
    assert cosine(9) == pytest.approx(0.01 * config.final_learning_rate_fraction)


def test_objective_of_regions_dice_ce_and_deep_supervision(tmp_path):
    from dataclasses import replace

    from tumorseg.metrics import batch_dice_ce_loss, batch_dice_loss, region_targets
    from tumorseg.train import make_objective

    rng = np.random.default_rng(0)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, 8, 8, 4))][..., 1:]
    a, b = (rng.random(y.shape).astype(np.float32) for _ in range(2))
    config = TrainConfig.from_preset(tmp_path, "cpu")
    targets, objective = make_objective(config)
    assert targets(y) is y and float(objective(y, a)) == pytest.approx(batch_dice_loss(y, a))
    regions = replace(config, model=replace(config.model, output="regions"), loss="dice_ce")
    targets, objective = make_objective(regions)
    np.testing.assert_array_equal(targets(y), region_targets(y))
    assert float(objective(y, a)) == pytest.approx(batch_dice_ce_loss(y, a), rel=1e-5)
    _, objective = make_objective(replace(config, deep_supervision=1))
    expected = (2 * batch_dice_loss(y, a) + batch_dice_loss(y, b)) / 3
    assert float(objective(y, [a, b])) == pytest.approx(expected, rel=1e-5)


def test_jit_compile_and_threads_reach_tensorflow(tmp_path, monkeypatch):
    from dataclasses import replace

    import tensorflow as tf

    from tumorseg.model import build_model
    from tumorseg.train import configure_threads, make_train_step

    config = TrainConfig.from_preset(tmp_path, "cpu")
    config.model = TINY
    model = build_model(TINY)
    model.compile(optimizer="adam")
    strategy = tf.distribute.get_strategy()
    jit = make_train_step(model, strategy, replace(config, jit_compile=True)).replica_step
    assert getattr(jit, "_jit_compile", None) is True
    plain = make_train_step(model, strategy, config).replica_step
    assert getattr(plain, "_jit_compile", None) is not True
    calls = []
    threading = tf.config.threading
    monkeypatch.setattr(
        threading, "set_inter_op_parallelism_threads", lambda n: calls.append(("inter", n))
    )
    monkeypatch.setattr(
        threading, "set_intra_op_parallelism_threads", lambda n: calls.append(("intra", n))
    )
    configure_threads(config)
    assert calls == []
    configure_threads(replace(config, inter_op_threads=1, intra_op_threads=3))
    assert sorted(calls) == [("inter", 1), ("intra", 3)]


def test_a_run_with_every_lever_trains_resumes_and_predicts(tmp_path):
    """bf16 training, instance normalisation, region outputs, Dice + CE, deep supervision,
    core-centred patches, SGD with poly decay, XLA and downsampled scans in one tiny run:
    config.json records them, the checkpoint keeps the auxiliary output (resume), model.keras
    has one output, and prediction uses the regions' label-map rule."""
    from dataclasses import replace

    from tumorseg.data import find_cases, load_case
    from tumorseg.inference import Predictor, to_label_map
    from tumorseg.run import read_config, read_state
    from tumorseg.train import resume, train

    data = make_dataset(tmp_path / "data")
    config = TrainConfig.from_preset(data, "cpu", epochs=1, steps_per_epoch=2, batch_size=2)
    config = replace(
        config,
        validation_patches=2,
        loss="dice_ce",
        deep_supervision=1,
        tumour_share=0.3,
        core_share=0.3,
        optimizer="sgd",
        schedule="poly",
        learning_rate=0.01,
        jit_compile=True,
        model=replace(
            TINY, normalization="instance", precision="bf16", output="regions", downsample=2
        ),
    )
    run = tmp_path / "run"
    train(config, run, verbose=0)
    # Trained on the scans at half their voxels per axis (40x36x20 -> 20x18x10, cropped).
    cached = np.array([np.load(path).shape for path in (run / "cache").rglob("*.label.npy")])
    assert len(cached) and (cached >= (16, 16, 8)).all() and (cached <= (20, 18, 10)).all(), cached
    assert read_config(run) == replace(
        config,
        train_cases=read_config(run).train_cases,
        valid_cases=read_config(run).valid_cases,
        spacing=read_config(run).spacing,
    )
    state = read_state(run)
    assert len(load_model(run / state["checkpoint"]).outputs) == 2
    from_checkpoint = Predictor.from_run(run / state["checkpoint"])
    assert len(from_checkpoint.model.outputs) == 1 and from_checkpoint.output == "regions"
    state = resume(run, epochs=2, verbose=0)
    assert state["epoch"] == 2
    assert state["history"][-1]["learning_rate"] == pytest.approx(0.01 * 0.5**0.9, rel=1e-4)
    predictor = Predictor.from_run(run)
    assert len(predictor.model.outputs) == 1 and predictor.output == "regions"
    assert predictor.model.get_layer("down0a_conv").dtype_policy.name == "mixed_bfloat16"
    image, _ = load_case(find_cases(data)[0])
    np.testing.assert_array_equal(
        predictor.segment(image, 0.3), to_label_map(predictor.predict(image), 0.3, "regions")
    )


def test_every_ablation_variant_is_a_valid_run_that_changes_one_thing(tmp_path):
    """Each variant of ``python -m benchmarks ablation`` makes a valid configuration, and each
    lever variant differs from the default one (a misspelt or ignored setting would not)."""
    from dataclasses import replace

    from benchmarks.bench_ablation import VARIANTS, variant_config

    default = variant_config("default", 1, tmp_path)
    assert default == replace(
        TrainConfig.from_preset(tmp_path, "cpu", seed=1),
        time_limit_minutes=default.time_limit_minutes,
        calibrate=False,
    )
    levers = [name for name, variant in VARIANTS.items() if variant.what.startswith("lever")]
    assert len(levers) == 9
    for name in VARIANTS:
        config = variant_config(name, 1, tmp_path)
        config.validate()
        assert config.seed == 1
        if name in levers and not (name == "float32" and CPU_PRECISION == "float32"):
            assert config != default, name  # float32 is the default on a CPU without bf16


def test_an_ablation_run_trained_with_another_network_is_not_reused(tmp_path, monkeypatch):
    """A run folder left by an ablation before a preset changed (another network than the
    variant builds now) stops the ablation, naming the folder, instead of being scored as the
    variant."""
    from dataclasses import replace

    from benchmarks import bench_ablation

    monkeypatch.setattr(bench_ablation, "OUT", tmp_path)
    run = bench_ablation.run_folder("base8", 0)
    config = bench_ablation.variant_config("base8", 0, tmp_path)
    stale = replace(config, model=replace(config.model, n_base_filters=4))
    run.mkdir(parents=True)
    stale.save(run / "config.json")
    with pytest.raises(SystemExit, match=f"{run}: trained with another network than base8"):
        bench_ablation.train_run("base8", 0)
