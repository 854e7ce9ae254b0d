"""The enhancing-tumour minimum (:func:`tumorseg.inference.drop_small_enhancing`), measured: ET
Dice of each run's label maps with its calibrated minimum and without one, from the same
predictions (with test-time flips, as `make run` predicts), on held-out phantoms of the
training generator and of the shifted one (:func:`benchmarks.bench_transfer.held_out`) and on
the real development pair. WT and TC cannot change: a relabelled voxel stays in the tumour core.

    TUMORSEG_BENCH_RUNS=runs/cpu,build/bench/ablation/run-bf16_fitted-seed0-15min \\
        python -m benchmarks et_minimum

The runs (default ``runs/cpu``) must be trained on phantoms of the default generator with seed
0 (`make run`'s and the ablation's), so that the held-out phantoms are unseen. A run without a
calibrated minimum (calibrated before it existed, or not at all, as the ablation's) is
calibrated on its own validation scans in a copy under build/bench/et_minimum/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .common import OUT, save

RUNS = [Path(p) for p in os.environ.get("TUMORSEG_BENCH_RUNS", "runs/cpu").split(",")]
SETS = ("own", "shifted", "real")


def calibrated(run: Path) -> Path:
    """``run`` if its state holds a calibrated minimum, else a calibrated copy of it."""
    from tumorseg.data import find_cases
    from tumorseg.inference import calibrate_label_map
    from tumorseg.run import read_config, read_state

    if "et_min_voxels" in (read_state(run) or {}):
        return run
    copy = OUT / "et_minimum" / run.name
    if "et_min_voxels" not in (read_state(copy) or {}):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint-*"))
        config = read_config(copy)
        by_id = {case.id: case for case in find_cases(config.data)}
        calibrate_label_map(copy, [by_id[i] for i in config.valid_cases], tta=config.tta)
    return copy


def folders() -> dict:
    from tumorseg import devset

    from .bench_transfer import held_out

    return {"own": held_out("default"), "shifted": held_out("shifted"), "real": devset.LABELLED}


def et_dice_by_minimum(predictor, folder: Path) -> dict:
    """``{case id: {minimum: ET Dice}}`` for every candidate minimum
    (:data:`~tumorseg.inference.ET_MINIMUMS`) and the predicted enhancing voxels, from one
    prediction of each case in ``folder`` at the run's threshold."""
    from tumorseg.data import find_cases, load_case
    from tumorseg.inference import ET_MINIMUMS, drop_small_enhancing, region_dices

    rows = {}
    for case in find_cases(folder):
        image, label = load_case(case)
        label_map = predictor.label_map(predictor.predict(image, tta=True), et_min_voxels=0)
        rows[case.id] = {
            "enhancing_voxels": int(np.count_nonzero(label_map == 3)),
            "truth_enhancing_voxels": int(np.count_nonzero(label == 3)),
            **{
                str(m): region_dices(drop_small_enhancing(label_map, m), label)[2]
                for m in ET_MINIMUMS
            },
        }
    return rows


def et_minimum() -> dict:
    from tumorseg.inference import Predictor
    from tumorseg.run import MODEL_FILE

    missing = [str(run) for run in RUNS if not (run / MODEL_FILE).exists()]
    if missing:
        return save("et_minimum", {"missing": f"no trained model in {missing}: run `make run`"})
    sets = folders()
    runs = {}
    for run in RUNS:
        predictor = Predictor.from_run(calibrated(run))
        minimum = str(predictor.et_min_voxels)
        result = {"et_min_voxels": predictor.et_min_voxels}
        for name, folder in sets.items():
            cases = et_dice_by_minimum(predictor, folder)
            result[name] = {
                "cases": cases,
                "without": float(np.mean([c["0"] for c in cases.values()])),
                "with": float(np.mean([c[minimum] for c in cases.values()])),
                "changed": sum(c["0"] != c[minimum] for c in cases.values()),
            }
            print(f"  {run} {name}: {result[name]['without']:.3f} -> {result[name]['with']:.3f}")
        runs[str(run)] = result
    return save("et_minimum", {"runs": runs})


def report_et_minimum(r: dict) -> list[tuple[str, str, str]]:
    if "missing" in r:
        return [("et_minimum", r["missing"], "")]
    lines = []
    for run, result in r["runs"].items():
        for name in SETS:
            scores = result[name]
            lines.append(
                (
                    f"{run}: ET Dice without / with its minimum ({result['et_min_voxels']} "
                    f"voxels), {name} held-out",
                    f"{scores['without']:.3f} / {scores['with']:.3f} "
                    f"({scores['changed']} of {len(scores['cases'])} cases change)",
                    f"{scores['with'] - scores['without']:+.3f}",
                )
            )
    return lines
