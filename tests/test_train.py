"""Training runs: the run folder, resume after SIGKILL, tf.distribute with two workers, and the
predict / evaluate commands on the trained model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from conftest import write_tumour_dataset
from tumorseg.model import ModelConfig
from tumorseg.train import TrainConfig, load_model

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
    return subprocess.run([sys.executable, "-m", "tumorseg", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=env, **kwargs)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished tiny run (and its data) shared by the tests below."""
    root = tmp_path_factory.mktemp("run")
    data = make_dataset(root / "data")
    config = tiny_config(data, root)
    result = tumorseg("train", "--config", config, "--out", root / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", data


def make_dataset(root):
    return write_tumour_dataset(root, shape=(40, 36, 20))


def test_run_folder_holds_everything(trained_run):
    run, data = trained_run
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.keras", "state.json", "history.csv", "curves.png", "logs",
            "checkpoint-0003.keras"} <= names
    assert not [n for n in names if ".tmp" in n]
    config = TrainConfig.load(run / "config.json")
    assert config.model == TINY and config.epochs == 3
    assert len(config.train_cases) == 2 and len(config.valid_cases) == 1
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:1] == ["epoch"] and len(history) == 4
    model = load_model(run)
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


def test_killed_training_resumes_at_the_right_epoch(tmp_path):
    data = make_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path, epochs=4, steps_per_epoch=40)
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "tumorseg", "train", "--config", str(config),
                                "--out", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
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
    state = json.loads((out / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3, 4]
    assert len((out / "history.csv").read_text().splitlines()) == 5
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*.keras"))
    assert checkpoints == ["checkpoint-0004.keras"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_end_with_the_same_weights(tmp_path):
    data = make_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path, epochs=2, steps_per_epoch=3)
    ports = [free_port(), free_port()]
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "tumorseg", "train", "--config", str(config), "--out",
             str(tmp_path / f"worker{index}"), "--strategy", "multiworker"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    first = load_model(tmp_path / "worker0" / "checkpoint-0002.keras").get_weights()
    second = load_model(tmp_path / "worker1" / "checkpoint-0002.keras").get_weights()
    initial = TrainConfig.load(tmp_path / "worker0" / "config.json")
    assert initial.strategy == "multiworker"
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


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
    assert result.returncode == 2 and "one.nii.gz" in result.stderr and "--overwrite" in result.stderr
    assert target.read_bytes() == b"keep me"
    result = tumorseg("predict", "--model", run, "--input", image, "--out", target, "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert nib.load(target).shape == (40, 36, 20)

    fake = tmp_path / "fake.keras"
    fake.write_text("not a model")
    result = tumorseg("predict", "--model", fake, "--input", image, "--out", tmp_path / "x.nii.gz")
    assert result.returncode == 2 and "fake.keras" in result.stderr
    assert "not a Keras model" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = tumorseg("predict", "--model", run, "--input", tmp_path / "missing.nii.gz",
                      "--out", tmp_path / "y.nii.gz")
    assert result.returncode == 2 and "missing.nii.gz: no such file" in result.stderr


def test_killed_predict_leaves_no_partial_output(trained_run, tmp_path):
    run, data = trained_run
    out = tmp_path / "pred"
    process = subprocess.Popen([sys.executable, "-m", "tumorseg", "predict", "--model", str(run),
                                "--input", str(data), "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
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
    config = TrainConfig.load(tiny_config(data, tmp_path, epochs=50, steps_per_epoch=2,
                                          time_limit_minutes=0.05))
    history = train(config, tmp_path / "run", verbose=0)
    assert 1 <= len(history) < 50
