"""Whole-scan inference: speed and Dice against the seed's tiling, GFLOP/s, bf16, peak memory;
and the accuracy of the `cpu` preset trained for at most 15 minutes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from .common import OUT, save, synthetic_case

HELD_OUT = 8


def _scan_seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def window_voxels(image, model) -> int:
    """Voxels the default predict_volume feeds through the network for ``image``."""
    from tumorseg.inference import inference_model, plan_axis
    from tumorseg.patches import brain_box

    net, patch = inference_model(model)
    box = brain_box(image)
    plans = [plan_axis(s.stop - s.start, size, 0.25, True, 8) for s, size in zip(box, patch)]
    return int(np.prod([size * len(starts) for size, starts in plans]))


def speed() -> dict:
    """The seed model on a 240x240x155 scan: default predict_volume vs the seed's tiling."""
    import keras

    from tumorseg.inference import predict_volume, seed_tiling_predict
    from tumorseg.model import build_model, forward_flops

    keras.utils.set_random_seed(0)
    model = build_model("seed")
    image, _ = synthetic_case(2)
    predict_volume(model, image[:, :, :40])  # build and trace once
    ours = _scan_seconds(lambda: predict_volume(model, image))
    bf16 = _scan_seconds(lambda: predict_volume(model, image, precision="bf16"))
    tiling = _scan_seconds(lambda: seed_tiling_predict(model, image))
    per_voxel = forward_flops(model) / (160 * 160 * 16)
    ours_flop = per_voxel * window_voxels(image, model)
    tiling_flop = per_voxel * 320 * 320 * 160
    peak = (
        json.loads((OUT / "model_flops.json").read_text())["matmul_peak_gflops_float32"]
        if (OUT / "model_flops.json").exists()
        else None
    )
    return {
        "scan_seconds_sliding_float32": ours,
        "scan_seconds_sliding_bf16": bf16,
        "scan_seconds_seed_tiling": tiling,
        "speedup_vs_seed_tiling": tiling / ours,
        "bf16_speedup": ours / bf16,
        "gflop_sliding": ours_flop / 1e9,
        "gflop_seed_tiling": tiling_flop / 1e9,
        "gflops_sliding": ours_flop / ours / 1e9,
        "gflops_seed_tiling": tiling_flop / tiling / 1e9,
        "matmul_peak_gflops_float32": peak,
    }


MEMORY_SCRIPT = """
import resource, numpy as np
from tumorseg.model import build_model
from tumorseg.inference import predict_volume
from tumorseg.synthetic import synthesize_case
image, _ = synthesize_case(0, 2)
predict_volume(build_model("seed"), image)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def memory() -> dict:
    """Peak resident memory of a fresh process that predicts one scan with the seed model."""
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, check=True
    )
    peak = int(result.stdout.strip().splitlines()[-1])
    return {"peak_rss_gb": peak / 1e9, "target_peak_rss_gb": 4.0}


def accuracy() -> dict:
    """Train the cpu preset for at most 15 minutes, predict held-out cases, evaluate; and the
    seed's tiling with the same trained model on the same cases."""
    from tumorseg.data import find_cases, load_case, voxel_spacing
    from tumorseg.inference import Predictor, seed_tiling_predict, to_label_map
    from tumorseg.metrics import case_metrics, metrics_table
    from tumorseg.run import is_run
    from tumorseg.synthetic import write_dataset
    from tumorseg.train import TrainConfig, resume, train

    train_data, test_data, run = OUT / "train-data", OUT / "held-out", OUT / "accuracy-run"
    write_dataset(train_data, cases=24, seed=0, progress=False)
    write_dataset(test_data, cases=HELD_OUT, seed=1, progress=False)
    if is_run(run):  # a finished run is reused: delete it to retrain
        state = resume(run, verbose=0)
    else:
        state = train(
            TrainConfig.from_preset(str(train_data), time_limit_minutes=15), run, verbose=0
        )
    training_minutes = state["training_seconds"] / 60
    predictor = Predictor.from_run(run)
    threshold = predictor.threshold
    rows = {"sliding": {}, "sliding_tta": {}, "seed_tiling": {}}
    for case in find_cases(test_data):
        image, label = load_case(case)
        spacing = voxel_spacing(case)
        for name, predict in (
            ("sliding", lambda image=image: predictor.predict(image)),
            ("sliding_tta", lambda image=image: predictor.predict(image, tta=True)),
            ("seed_tiling", lambda image=image: seed_tiling_predict(predictor.net(), image)),
        ):
            rows[name][case.id] = case_metrics(to_label_map(predict(), threshold), label, spacing)
    means = {name: metrics_table(r).loc["mean"] for name, r in rows.items()}
    return {
        "training_minutes": training_minutes,
        "epochs": state["epoch"],
        "threshold_calibrated_on_validation_cases": threshold,
        "held_out_cases": HELD_OUT,
        **{
            f"{name}_dice_{region}": float(mean[f"Dice {region}"])
            for name, mean in means.items()
            for region in ("WT", "TC", "ET")
        },
        **{
            f"{name}_hd95_{region}": float(mean[f"HD95 {region}"])
            for name, mean in means.items()
            for region in ("WT", "TC", "ET")
        },
        "targets": {"WT": 0.90, "TC": 0.85, "ET": 0.80},
    }


def inference() -> dict:
    result = {
        "what": "whole-scan inference, seed model (untrained weights) on a 240x240x155 "
        "synthetic scan; accuracy with the trained cpu preset on held-out cases"
    }
    result |= speed()
    result |= memory()
    result |= accuracy()
    return save("inference", result)


def report_inference(r: dict) -> list[tuple[str, str, str]]:
    peak = r["matmul_peak_gflops_float32"]
    share = f", {r['gflops_sliding'] / peak:.0%} of matmul peak" if peak else ""
    lines = [
        (
            "whole scan, seed model, default settings",
            f"{r['scan_seconds_sliding_float32']:.1f} s vs seed tiling "
            f"{r['scan_seconds_seed_tiling']:.1f} s",
            f"{r['speedup_vs_seed_tiling']:.2f}x (target >= 2x)",
        ),
        (
            "whole scan GFLOP/s (sliding / seed tiling)",
            f"{r['gflops_sliding']:.0f} / {r['gflops_seed_tiling']:.0f} GFLOP/s{share}",
            f"{r['gflop_sliding']:.0f} vs {r['gflop_seed_tiling']:.0f} GFLOP",
        ),
        (
            "whole scan, bf16",
            f"{r['scan_seconds_sliding_bf16']:.1f} s",
            f"{r['bf16_speedup']:.2f}x float32",
        ),
        ("whole scan peak resident memory", f"{r['peak_rss_gb']:.2f} GB", "target <= 4 GB"),
        (
            f"cpu preset: {r['epochs']} epochs in {r['training_minutes']:.1f} min",
            "",
            "target <= 15 min",
        ),
    ]
    for name in ("sliding", "sliding_tta", "seed_tiling"):
        lines.append(
            (
                f"held-out Dice ({r['held_out_cases']} cases), {name.replace('_', ' ')}",
                " ".join(f"{k} {r[f'{name}_dice_{k}']:.3f}" for k in ("WT", "TC", "ET")),
                "targets WT .90 TC .85 ET .80" if name == "sliding_tta" else "",
            )
        )
    return lines
