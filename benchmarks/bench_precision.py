"""How the `cpu` preset should compute on this machine: seconds per training step of its network
(a batch of its patches, Adam, the soft Dice loss) in float32 with TensorFlow's oneDNN kernels
off and on (``TF_ENABLE_ONEDNN_OPTS``, which ``import tumorseg`` sets to 1), and in mixed
bfloat16, side by side, each in a fresh process; beside whether the CPU computes bfloat16
natively (:func:`tumorseg.presets.native_bf16`, which picks the preset's precision).

    python -m benchmarks precision
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np

from .common import save, timed

STEPS = 3  # timed, after two warm-up steps (an emulated bf16 step can take most of a minute)


def step_seconds(precision: str) -> float:
    """Mean seconds of one training step of the `cpu` preset's network in ``precision``."""
    import keras
    import tensorflow as tf

    from tumorseg.metrics import batch_dice_loss
    from tumorseg.model import build_model
    from tumorseg.presets import PRESETS, TRAINING_PRESETS
    from tumorseg.train import make_train_step

    config = replace(PRESETS["cpu"], precision=precision)
    batch = TRAINING_PRESETS["cpu"]["batch_size"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *config.patch_shape, 4)).astype(np.float32)
    y = (rng.random((batch, *config.patch_shape, 3)) < 0.1).astype(np.float32)
    model = build_model(config)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=batch_dice_loss)
    step = make_train_step(model, tf.distribute.get_strategy())
    data = (tf.constant(x), tf.constant(y))
    step(data)  # trace
    return timed(lambda: float(step(data)[0]), STEPS)


# name -> (precision, TF_ENABLE_ONEDNN_OPTS); "float32, oneDNN on" is what tumorseg runs.
SETTINGS = {
    "float32, oneDNN off": ("float32", "0"),
    "float32, oneDNN on": ("float32", "1"),
    "bf16, oneDNN on": ("bf16", "1"),
}


def measured(precision: str, onednn: str) -> float:
    """:func:`step_seconds` in a fresh process (TensorFlow reads oneDNN's setting at start)."""
    code = f"from benchmarks.bench_precision import step_seconds as s; print(s({precision!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=os.environ | {"TF_ENABLE_ONEDNN_OPTS": onednn},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.split()[-1])


def precision() -> dict:
    from tumorseg.presets import CPU_PRECISION, native_bf16

    seconds = {}
    for name, setting in SETTINGS.items():
        seconds[name] = measured(*setting)
        print(f"  {name}: {seconds[name]:.2f} s a step", flush=True)
    return save(
        "precision",
        {"native_bf16": native_bf16(), "cpu_preset_precision": CPU_PRECISION, "steps": seconds},
    )


def report_precision(r: dict) -> list[tuple[str, str, str]]:
    native = "native bf16" if r["native_bf16"] else "no native bf16"
    base = r["steps"]["float32, oneDNN on"]
    return [
        (
            f"cpu preset training step, {name} ({native}; preset: {r['cpu_preset_precision']})",
            f"{seconds:.2f} s",
            f"{seconds / base:.2f}x float32 with oneDNN's time",
        )
        for name, seconds in r["steps"].items()
    ]
