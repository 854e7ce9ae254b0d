"""The real development pair committed in ``data/real`` (data/real/README.md): two TCGA gliomas
in the BraTS 2021 layout whose label is the majority vote of five top BraTS 2020 algorithms,
and those algorithms' own segmentations. For measuring only: never train on them, never tune
a setting to them.

How far the algorithms agree with their vote is the ceiling of what a Dice means on these
cases: :func:`agreement` measures it, :func:`format_real` prints a model's Dice beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "data" / "real"
LABELLED = ROOT / "labelled"  # <case>/<case>_flair/_t1/_t1ce/_t2/_seg.nii.gz
ALGORITHMS = ROOT / "labelled-algorithms"  # <case>/<algorithm>-20.nii.gz, BraTS 2020 values
BRATS_REGIONS = ("WT", "TC", "ET")


def agreement(truth: str | os.PathLike = LABELLED, algorithms: str | os.PathLike = ALGORITHMS):
    """Dice of each algorithm's segmentation against each case's label, per BraTS region.

    ``algorithms/<case id>/*-20.nii.gz`` are read in the BraTS 2021 values (the fusions, such as
    ``simple.nii.gz``, are not algorithms and are skipped). Returns a pandas table indexed by
    (case, algorithm) with columns WT, TC, ET. Raises InputError for a case without any, or a
    missing ``algorithms`` folder."""
    import pandas as pd

    from .data import BRATS2021, find_cases, load_case, load_label
    from .errors import InputError
    from .metrics import region_masks

    if not Path(algorithms).is_dir():
        raise InputError(algorithms, "no such folder of algorithm segmentations")
    rows = {}
    for case in find_cases(truth):
        _, label = load_case(case)
        true_masks = region_masks(label)
        files = sorted(Path(algorithms, case.id).glob("*-20.nii.gz"))
        if not files:
            raise InputError(
                Path(algorithms, case.id),
                "no algorithm segmentations (<name>-20.nii.gz) for this case",
            )
        for path in files:
            masks = region_masks(load_label(path, BRATS2021))
            rows[(case.id, path.name.removesuffix("-20.nii.gz"))] = {
                region: _dice(masks[region], true_masks[region]) for region in BRATS_REGIONS
            }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["case", "algorithm"])


def mean_ranges(ceiling) -> dict[str, tuple[float, float]]:
    """``{region: (lowest, highest)}`` of the algorithms' mean Dice over the cases
    (``ceiling``: :func:`agreement`): the ceiling of a model's mean Dice."""
    means = ceiling.groupby(level="algorithm").mean()
    return {
        region: (float(means[region].min()), float(means[region].max())) for region in BRATS_REGIONS
    }


def _dice(pred, true) -> float:
    """Dice of two boolean masks; 1 when both are empty (as in :mod:`tumorseg.metrics`)."""
    import numpy as np

    both = np.count_nonzero(pred) + np.count_nonzero(true)
    return 1.0 if both == 0 else 2 * np.count_nonzero(pred & true) / both


def format_real(table, ceiling) -> str:
    """A model's Dice per case and mean (``table``: :func:`tumorseg.metrics.metrics_table`)
    beside the range of the algorithms' Dice against their vote (``ceiling``: :func:`agreement`;
    on the mean row, the range of each algorithm's mean over the cases), as text."""
    import numpy as np

    lines = [
        f"{'':<22}{'model':^21}   {'algorithms vs their vote (range)':^33}",
        f"{'case':<22}"
        + "".join(f"{r:>7}" for r in BRATS_REGIONS)
        + "   "
        + "".join(f"{r:^11}" for r in BRATS_REGIONS),
    ]
    absent = []
    for case in table.index:
        if case == "mean":
            spans = mean_ranges(ceiling)
        else:
            rows = ceiling.xs(case, level="case")
            spans = {r: (rows[r].min(), rows[r].max()) for r in BRATS_REGIONS}
        lines.append(
            f"{case:<22}"
            + "".join(f"{table.loc[case, f'Dice {r}']:>7.3f}" for r in BRATS_REGIONS)
            + "   "
            + "".join(f"{spans[r][0]:.2f}-{spans[r][1]:.2f}".center(11) for r in BRATS_REGIONS)
        )
        if case != "mean" and np.isnan(table.loc[case, "Sensitivity ET"]):
            absent.append(case)
    if absent:
        lines.append(
            f"no enhancing tumour in the label of {', '.join(absent)}: its ET Dice is 1 "
            "when none is predicted, 0 otherwise"
        )
    return "\n".join(lines)
