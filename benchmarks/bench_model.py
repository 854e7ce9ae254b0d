"""Forward GFLOP/s of the seed's U-Net in float32 and bf16 beside this machine's matmul peak."""

from __future__ import annotations

import numpy as np

from .common import save, timed


def matmul_peak(dtype: str, n: int = 4096, repeat: int = 5) -> float:
    """GFLOP/s of an n x n matrix product in ``dtype`` (TensorFlow, all cores)."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda: tf.linalg.matmul(a, a))
    seconds = timed(lambda: product().numpy(), repeat)
    return 2 * n**3 / seconds / 1e9


def forward_rate(precision: str, repeat: int = 3) -> tuple[float, float]:
    """(seconds, GFLOP/s) of one forward pass of a 160x160x16x4 patch through the seed model."""
    from tumorseg.model import PRESETS, build_model, forward_flops

    config = PRESETS["seed"]
    if precision == "bf16":
        from dataclasses import replace

        config = replace(config, precision="bf16")
    model = build_model(config)
    x = np.random.default_rng(0).standard_normal((1, *config.patch_shape, 4)).astype(np.float32)
    seconds = timed(lambda: model.predict_on_batch(x), repeat)
    return seconds, forward_flops(model) / seconds / 1e9


def flops() -> dict:
    peak32, peak16 = matmul_peak("float32"), matmul_peak("bfloat16")
    seconds32, rate32 = forward_rate("float32")
    seconds16, rate16 = forward_rate("bf16")
    return save(
        "model_flops",
        {
            "what": "seed U-Net forward, one 160x160x16x4 patch, 741.9 GFLOP",
            "matmul_peak_gflops_float32": peak32,
            "matmul_peak_gflops_bf16": peak16,
            "forward_seconds_float32": seconds32,
            "forward_gflops_float32": rate32,
            "forward_seconds_bf16": seconds16,
            "forward_gflops_bf16": rate16,
            "share_of_peak_float32": rate32 / peak32,
            "share_of_peak_bf16": rate16 / peak16,
            "bf16_speedup": seconds32 / seconds16,
        },
    )


def report_flops(r: dict) -> list[tuple[str, str, str]]:
    return [
        (
            "matmul peak (4096^2, TensorFlow)",
            f"{r['matmul_peak_gflops_float32']:.0f} GFLOP/s f32, "
            f"{r['matmul_peak_gflops_bf16']:.0f} bf16",
            "",
        ),
        (
            "seed U-Net forward, float32",
            f"{r['forward_seconds_float32']:.2f} s/patch, "
            f"{r['forward_gflops_float32']:.0f} GFLOP/s",
            f"{r['share_of_peak_float32']:.0%} of peak",
        ),
        (
            "seed U-Net forward, bf16",
            f"{r['forward_seconds_bf16']:.2f} s/patch, {r['forward_gflops_bf16']:.0f} GFLOP/s",
            f"{r['share_of_peak_bf16']:.0%} of peak, {r['bf16_speedup']:.2f}x f32",
        ),
    ]
