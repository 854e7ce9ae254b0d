"""The real development pair committed in data/real: it loads, shows in the radiological
convention, and its BraTS 2021 labels map to the seed's values."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumorseg.data import find_cases, load_case
from tumorseg.figures import take_slice

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
CASES = ("OtherEXampleFromTCIA", "TCGA-DU-7294")


@pytest.fixture(scope="module")
def real_cases():
    cases = find_cases(REAL / "labelled")
    return {case.id: (case, *load_case(case)) for case in cases}


def test_the_pair_loads_as_brats_2021(real_cases):
    assert tuple(real_cases) == CASES
    for case, image, label in real_cases.values():
        assert case.layout == "brats2021"
        assert image.shape == (240, 240, 155, 4) and image.dtype == np.float32
        assert label.shape == (240, 240, 155) and label.dtype == np.uint8
        for path in case.images + (case.label,):
            assert nib.aff2axcodes(nib.load(path).affine) == ("L", "P", "S")


def test_labels_map_brats_2021_values_to_the_seeds(real_cases):
    for name, (case, _, label) in real_cases.items():
        stored = np.asarray(nib.load(case.label).dataobj)
        for brats, seed in ((0, 0), (1, 2), (2, 1), (4, 3)):
            assert np.array_equal(label == seed, stored == brats), (name, brats, seed)
    counts = {
        name: np.bincount(label.ravel(), minlength=4) for name, (_, _, label) in real_cases.items()
    }
    assert counts["TCGA-DU-7294"][3] == 0, "TCGA-DU-7294 has no enhancing tumour"
    assert (counts["OtherEXampleFromTCIA"][1:] > 1000).all(), "all three classes"


def test_display_is_radiological(real_cases):
    """Through the case's own affine: the front of the head at the top of an axial view and the
    patient's left on its right; the top of the head at the top of a coronal view."""
    case, image, label = real_cases["OtherEXampleFromTCIA"]
    affine = nib.load(case.reference).affine
    shape = image.shape[:3]
    world = {
        axis: (affine[axis, :3] @ np.indices(shape).reshape(3, -1)).reshape(shape) + affine[axis, 3]
        for axis in range(3)
    }  # RAS: +x right, +y front, +z top
    z = int(np.argmax(np.count_nonzero(label, axis=(0, 1))))
    axial_y, axial_x = take_slice(world[1], "axial", z), take_slice(world[0], "axial", z)
    assert (np.diff(axial_y, axis=0) < 0).all(), "front of the head at the top"
    assert (np.diff(axial_x, axis=1) < 0).all(), "patient's left on the image's right"
    coronal_z = take_slice(world[2], "coronal", 120)
    assert (np.diff(coronal_z, axis=0) < 0).all(), "top of the head at the top"
    # The tumour shown is where the label is: the axial view of the label has tumour in it.
    assert take_slice(label, "axial", z).any() and take_slice(image[..., 0], "axial", z).any()


def test_evaluate_prints_the_pair_beside_the_algorithms_agreement(real_cases, tmp_path):
    import subprocess
    import sys

    from tumorseg.data import save_nifti

    for name, (case, _, label) in real_cases.items():
        save_nifti(label, tmp_path / "pred" / f"{name}.nii.gz", case.reference)  # perfect
    run = [
        sys.executable,
        "-m",
        "tumorseg",
        "evaluate",
        "--pred",
        tmp_path / "pred",
        "--truth",
        REAL / "labelled",
        "--agreement",
        REAL / "labelled-algorithms",
    ]
    result = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    # A perfect model, and the five algorithms' Dice against their vote (data/real/README.md).
    assert rows["OtherEXampleFromTCIA"] == ["1.000"] * 3 + ["0.91-0.98", "0.95-0.97", "0.93-0.99"]
    assert rows["TCGA-DU-7294"] == ["1.000"] * 3 + ["0.98-0.99", "0.91-0.96", "0.00-1.00"]
    assert rows["mean"][:3] == ["1.000"] * 3
    assert "no enhancing tumour in the label of TCGA-DU-7294" in result.stdout

    (tmp_path / "algorithms").mkdir()
    run[-1] = tmp_path / "algorithms"
    result = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "no algorithm segmentations" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    run[-1] = tmp_path / "missing"
    result = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"tumorseg: error: {tmp_path / 'missing'}: no such folder of algorithm segmentations"
    )


def test_tissue_ratios_measure_each_tissue_against_white_matter():
    """The tissue benchmark's measure (issue 17, item 2) on a volume of known intensities:
    three T1 levels of normal brain, an edema block, all compared to white matter."""
    from benchmarks.bench_tissues import tissue_ratios

    # FLAIR, T1, T1gd, T2 of CSF, grey, white and edema.
    values = {
        "csf": (10, 20, 20, 300),
        "grey": (130, 60, 60, 150),
        "white": (100, 100, 100, 100),
        "edema": (150, 70, 70, 180),
    }
    image = np.zeros((60, 60, 30, 4), np.float32)
    label = np.zeros((60, 60, 30), np.uint8)
    image[2:58, 2:58, 2:28] = values["white"]
    image[2:58, 2:16, 2:28] = values["grey"]
    image[2:58, 2:10, 2:28] = values["csf"]
    # More edema than grey matter, nearer grey on T1: counted as normal brain, it would move
    # grey matter's median.
    image[30:58, 30:58, 2:28] = values["edema"]
    label[30:58, 30:58, 2:28] = 1
    ratios = tissue_ratios(image, label)
    expected = {name: np.array(v) / np.array(values["white"]) for name, v in values.items()}
    assert set(ratios) == {"csf", "grey", "white", "edema"}  # no core or enhancing voxels
    for name, ratio in ratios.items():
        np.testing.assert_allclose(ratio, expected[name], rtol=1e-3, err_msg=name)
