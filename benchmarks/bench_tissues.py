"""How tissues relate on each sequence, on the real development pair (``data/real``) and on
held-out phantoms of the default generator, measured the same way on both; and, with a trained
run, where its false whole tumour falls on the real pair (issue 17, item 2).

Each case: normal brain (more than ``MARGIN`` voxels from the labelled tumour, and off the brain's
edge) is split into three classes by k-means on T1 (CSF-rich, grey, white: partial volume
included, as a model sees it); each class and each tumour label gets its median intensity on
each sequence, divided by the white-matter median of that sequence.

`python -m benchmarks tissues`; the run is ``runs/cpu`` (``make run``) or
``TUMORSEG_BENCH_RUN``; without a run the error study is left out.
"""

from __future__ import annotations

import numpy as np

from .common import save

MARGIN = 6  # voxels between normal brain and the labelled tumour
TISSUE_CLASSES = ("csf", "grey", "white")  # by T1, ascending
TUMOUR_LABELS = {"edema": 1, "core": 2, "enhancing": 3}  # the seed's label values
MIN_VOXELS = 50  # a tumour label smaller than this has no median
PHANTOMS = 4


def kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 30) -> np.ndarray:
    """Class index ``(n,)`` of each value, classes in ascending order of their centres."""
    centres = np.linspace(*np.percentile(values, (1, 99)), k)
    for _ in range(iterations):
        classes = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        centres = np.array(
            [values[classes == j].mean() if np.any(classes == j) else centres[j] for j in range(k)]
        )
    return classes


def tissue_classes(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """``(x, y, z)`` int: 0/1/2 for CSF-rich / grey / white normal brain, -1 elsewhere."""
    from scipy import ndimage

    brain = ndimage.binary_erosion(image[..., 1] > 0, iterations=2)
    normal = brain & ~ndimage.binary_dilation(label > 0, iterations=MARGIN)
    classes = np.full(label.shape, -1, np.int8)
    classes[normal] = kmeans_1d(image[..., 1][normal])
    return classes


def tissue_ratios(image: np.ndarray, label: np.ndarray) -> dict[str, list[float]]:
    """``{tissue: [FLAIR, T1, T1gd, T2]}``: median over the tissue / white-matter median."""
    classes = tissue_classes(image, label)
    masks = {name: classes == i for i, name in enumerate(TISSUE_CLASSES)}
    masks |= {name: label == value for name, value in TUMOUR_LABELS.items()}
    medians = {
        name: np.median(image[mask], axis=0)
        for name, mask in masks.items()
        if mask.sum() >= MIN_VOXELS
    }
    return {name: (m / medians["white"]).round(3).tolist() for name, m in medians.items()}


def false_tumour(prediction: np.ndarray, image: np.ndarray, label: np.ndarray) -> dict:
    """Where ``prediction``'s whole tumour ``(x, y, z)`` falls outside ``label``: voxels by
    tissue class, the share within 5 voxels of the brain's edge, and how each true label was
    labelled (shares of background / edema / core / enhancing)."""
    from scipy import ndimage

    classes = tissue_classes(image, label)
    false = (prediction > 0) & (label == 0)
    depth = ndimage.distance_transform_edt(image[..., 1] > 0)
    true = {
        name: [float(np.mean(prediction[label == value] == k)) for k in range(4)]
        for name, value in TUMOUR_LABELS.items()
        if np.any(label == value)
    }
    return {
        "true_voxels": int(np.count_nonzero(label)),
        "false_voxels": int(false.sum()),
        "false_by_tissue": {
            n: int((false & (classes == i)).sum()) for i, n in enumerate(TISSUE_CLASSES)
        },
        "false_near_edge": float(np.mean(depth[false] < 5)) if false.any() else 0.0,
        "true_labelled_as": true,
    }


def tissues() -> dict:
    from tumorseg import devset
    from tumorseg.data import find_cases, load_case

    from .bench_transfer import RUN, held_out

    predictor = None
    if (RUN / "config.json").exists():
        from tumorseg.inference import Predictor

        predictor = Predictor.from_run(RUN)
    result = {"real": {}, "phantoms": {}, "errors": {}}
    for case in find_cases(devset.LABELLED):
        image, label = load_case(case)
        result["real"][case.id] = tissue_ratios(image, label)
        if predictor is not None:
            result["errors"][case.id] = false_tumour(predictor.segment(image), image, label)
    for case in find_cases(held_out("default"))[:PHANTOMS]:
        result["phantoms"][case.id] = tissue_ratios(*load_case(case))
    return save("tissues", result)


def report_tissues(r: dict) -> list[tuple[str, str, str]]:
    """Per tissue: its range over cases, per sequence, real vs phantoms."""
    from tumorseg.data import CHANNELS

    def ranges(group: dict, tissue: str) -> str:
        rows = np.array([case[tissue] for case in group.values() if tissue in case])
        if rows.size == 0:
            return "-"
        return " ".join(f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(rows.min(0), rows.max(0)))

    lines = []
    for tissue in (*TISSUE_CLASSES, *TUMOUR_LABELS):
        lines.append(
            (
                f"{tissue} / white matter, {' '.join(CHANNELS)}",
                f"real {ranges(r['real'], tissue)}",
                f"phantoms {ranges(r['phantoms'], tissue)}",
            )
        )
    for case, e in r["errors"].items():
        by_tissue = "/".join(str(v) for v in e["false_by_tissue"].values())
        lines.append(
            (
                f"false whole tumour on {case} (voxels; CSF-rich/grey/white)",
                f"{e['false_voxels']} vs {e['true_voxels']} true; {by_tissue}",
                f"{e['false_near_edge']:.0%} within 5 voxels of the edge",
            )
        )
    return lines
