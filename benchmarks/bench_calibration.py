"""Calibration of the label-map threshold, before and after issue 18: the old code (from git:
a network rebuilt per case, all metrics with HD95, no test-time flips) and the new one (one
Predictor, Dice only, with and without flips), on the same 16 phantoms and model, in one run.

    python -m benchmarks calibration

The model is the ``cpu`` preset trained for two epochs (a run folder under build/bench; its
weights matter only as far as they shape the label maps whose metrics are computed).
"""

from __future__ import annotations

import shutil
import subprocess
import time

OLD_COMMIT = "ac82d5b"  # the last commit with calibrate_threshold in train.py
CASES = 16


def old_calibrate_threshold():
    """The calibration function of ``OLD_COMMIT``, run against today's library."""
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:tumorseg/train.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    start = source.index("THRESHOLDS = (0.2")
    code = source[start:].replace("from .", "from tumorseg.")
    import numpy as np

    from tumorseg.model import load_model
    from tumorseg.run import read_state, write_state

    namespace = {
        "np": np,
        "Path": __import__("pathlib").Path,
        "load_model": load_model,
        "read_state": read_state,
        "write_state": write_state,
    }
    exec(compile(code, f"{OLD_COMMIT}:tumorseg/train.py", "exec"), namespace)
    return namespace["calibrate_threshold"]


def calibration() -> dict:
    from tumorseg.data import find_cases
    from tumorseg.inference import calibrate_label_map
    from tumorseg.run import is_run, read_config
    from tumorseg.synthetic import write_dataset
    from tumorseg.train import TrainConfig, train

    from .common import OUT, save

    data, run = OUT / "calibration-data", OUT / "calibration-run"
    write_dataset(data, cases=CASES, seed=2, progress=False)
    if not is_run(run):
        train(TrainConfig.from_preset(str(data), "cpu", epochs=2), run, verbose=0)
    cases = find_cases(data)[:CASES]
    patch = read_config(run).model.patch_shape
    old = old_calibrate_threshold()
    from tumorseg.data import load_case
    from tumorseg.inference import Predictor

    Predictor.from_run(run).predict(load_case(cases[0])[0])  # warm-up: TensorFlow's first call
    seconds = {}
    for name, calibrate in (
        ("old", lambda folder: old(folder, cases, patch)),
        ("new_tta", lambda folder: calibrate_label_map(folder, cases, tta=True)["threshold"]),
        ("new_no_tta", lambda folder: calibrate_label_map(folder, cases, tta=False)["threshold"]),
    ):
        folder = OUT / f"calibration-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(run, folder)
        start = time.perf_counter()
        threshold = calibrate(folder)
        seconds[name] = time.perf_counter() - start
        print(f"  {name}: {seconds[name]:.1f} s, threshold {threshold}", flush=True)
    return save(
        "calibration",
        {
            "cases": CASES,
            "old_seconds": seconds["old"],
            "new_seconds_tta": seconds["new_tta"],
            "new_seconds_no_tta": seconds["new_no_tta"],
        },
    )


def report_calibration(r: dict) -> list[tuple[str, str, str]]:
    return [
        (
            f"calibration, {r['cases']} phantoms, cpu model: old (per-case network, HD95)",
            f"{r['old_seconds']:.1f} s",
            "",
        ),
        (
            "calibration, new (one Predictor, Dice only), with flips as make run predicts",
            f"{r['new_seconds_tta']:.1f} s",
            f"{r['old_seconds'] / r['new_seconds_tta']:.2f}x",
        ),
        (
            "calibration, new, without flips (the old setting)",
            f"{r['new_seconds_no_tta']:.1f} s",
            f"{r['old_seconds'] / r['new_seconds_no_tta']:.2f}x",
        ),
    ]
