"""Does the `make run` model transfer? Dice on held-out phantoms of the training generator
beside Dice on phantoms of a deliberately shifted generator (contrasts, artefacts and tumour
morphology outside the training ranges: :data:`tumorseg.synthetic.SHIFTED`) and on the real
development pair (``data/real``, :mod:`tumorseg.devset`; the five algorithms' agreement with
their vote is the ceiling), and, when ``../shared/real`` holds real BraTS cases, a picture of
the model's prediction on each.

The run is ``runs/cpu`` (``make run``); ``TUMORSEG_BENCH_RUN=DIR`` names another.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .common import OUT, save

RUN = Path(os.environ.get("TUMORSEG_BENCH_RUN", "runs/cpu"))
HELD_OUT = 8  # cases of each generator
REAL = Path("../shared/real")


def held_out(generator: str) -> Path:
    """A folder of held-out phantoms of ``generator``: seed 1 (as `make run`'s test set) for the
    training generator, seed 2 for the shifted one."""
    from tumorseg.synthetic import write_dataset

    folder = OUT / f"held-out-{generator}"
    write_dataset(
        folder,
        cases=HELD_OUT,
        seed=1 if generator == "default" else 2,
        progress=False,
        generator=generator,
    )
    return folder


def dice_on(predictor, folder: Path, per_case: bool = False) -> dict:
    """Mean Dice WT / TC / ET of a :class:`~tumorseg.inference.Predictor` over the cases in
    ``folder`` (sliding window, no TTA); with ``per_case``, ``{case id or "mean": {region:
    Dice}}``."""
    from tumorseg.data import find_cases, load_case, voxel_spacing
    from tumorseg.metrics import case_metrics, metrics_table

    rows = {}
    for case in find_cases(folder):
        image, label = load_case(case)
        prediction = predictor.segment(image)
        rows[case.id] = case_metrics(prediction, label, voxel_spacing(case))
    table = metrics_table(rows)
    dice = {
        case: {region: float(table.loc[case, f"Dice {region}"]) for region in ("WT", "TC", "ET")}
        for case in table.index
    }
    return dice if per_case else dice["mean"]


def real_pictures(predictor, run: Path = RUN, prefix: Path = OUT / "real") -> list[dict]:
    """For each real case under ``../shared/real``: a PNG of ``run``'s prediction in three
    planes (``{prefix}_{case}.png``) and the predicted volume of each class (cm3). Empty when the
    folder is absent."""
    from tumorseg.data import find_cases, load_case, voxel_spacing
    from tumorseg.figures import plot_prediction

    if not REAL.is_dir():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = []
    for case in find_cases(REAL):
        image, _ = load_case(case)
        prediction = predictor.segment(image)
        figure = plot_prediction(image, prediction, title=f"{case.id}: prediction of {run}")
        path = prefix.parent / f"{prefix.name}_{case.id}.png"
        figure.savefig(path, dpi=70, facecolor=figure.get_facecolor())
        plt.close(figure)
        voxel_cm3 = float(np.prod(voxel_spacing(case))) / 1000
        counts = np.bincount(prediction.ravel(), minlength=4)
        results.append(
            {
                "case": case.id,
                "picture": str(path),
                **{
                    f"{name}_cm3": float(counts[value] * voxel_cm3)
                    for value, name in ((1, "edema"), (2, "non_enhancing"), (3, "enhancing"))
                },
            }
        )
    return results


def transfer() -> dict:
    from tumorseg.inference import Predictor
    from tumorseg.run import MODEL_FILE

    if not (RUN / MODEL_FILE).exists():
        return save("transfer", {"run": str(RUN), "missing": "no trained model: run `make run`"})
    predictor = Predictor.from_run(RUN)
    threshold = predictor.threshold
    result = {
        "what": "Dice of a trained run on held-out phantoms of the training generator and "
        "of the shifted generator (sliding window, no TTA)",
        "run": str(RUN),
        "threshold": threshold,
        "held_out_cases": HELD_OUT,
    }
    for generator in ("default", "shifted"):
        dice = dice_on(predictor, held_out(generator))
        result |= {f"{generator}_dice_{region}": value for region, value in dice.items()}
    from tumorseg import devset

    result["real_pair"] = dice_on(predictor, devset.LABELLED, per_case=True)
    # The ceiling of the mean: the range of the five algorithms' mean Dice against their vote.
    result["real_pair_agreement"] = devset.mean_ranges(devset.agreement())
    result["real"] = real_pictures(predictor)
    return save("transfer", result)


def report_transfer(r: dict) -> list[tuple[str, str, str]]:
    if "missing" in r:
        return [(f"transfer: {r['run']}", r["missing"], "")]
    lines = []
    for generator, what in (
        ("default", "default (training) generator"),
        ("shifted", "shifted generator"),
    ):
        lines.append(
            (
                f"{r['run']} held-out Dice, {what} ({r['held_out_cases']} cases)",
                " ".join(f"{k} {r[f'{generator}_dice_{k}']:.3f}" for k in ("WT", "TC", "ET")),
                "",
            )
        )
    shift = r["shifted_dice_WT"] / max(r["default_dice_WT"], 1e-6)
    lines[-1] = lines[-1][:2] + (f"WT {shift:.2f}x in-distribution",)
    if "real_pair" in r:  # data/real: two TCGA gliomas, the algorithms' vote as label
        agreement = r["real_pair_agreement"]
        for case, dice in r["real_pair"].items():
            what = "mean" if case == "mean" else case
            lines.append(
                (
                    f"{r['run']} Dice, real development pair: {what}",
                    " ".join(f"{k} {dice[k]:.3f}" for k in ("WT", "TC", "ET")),
                    ""
                    if case != "mean"
                    else "algorithms vs vote: "
                    + " ".join(
                        f"{k} {agreement[k][0]:.2f}-{agreement[k][1]:.2f}"
                        for k in ("WT", "TC", "ET")
                    ),
                )
            )
    for case in r["real"]:
        lines.append(
            (
                f"real case {case['case']}",
                f"edema {case['edema_cm3']:.0f}, non-enh {case['non_enhancing_cm3']:.0f}, "
                f"enh {case['enhancing_cm3']:.0f} cm3",
                case["picture"],
            )
        )
    return lines
