"""Shared fixtures: small cases written in the real file formats of each layout."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import tumorseg  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

SMALL = (12, 10, 8)


LPS = np.diag([-1.0, -1.0, 2.5, 1.0])  # L, P, S, as BraTS headers say


def write_nifti(
    path: Path, data: np.ndarray, slope: float | None = None, affine: np.ndarray = LPS
) -> Path:
    """Write ``data`` as NIfTI under ``affine``; with ``slope`` store it as int16 scaled by that
    factor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if slope is not None:
        img = nib.Nifti1Image(np.round(data / slope).astype(np.int16), affine)
        img.header.set_slope_inter(slope, 0)
    else:
        img = nib.Nifti1Image(data, affine)
    nib.save(img, path)
    return path


def small_image(shape=SMALL, seed=0) -> np.ndarray:
    """float32 (x, y, z, 4) where channel c holds 100 * (c + 1) plus a voxel-dependent ramp."""
    rng = np.random.default_rng(seed)
    ramp = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return np.stack([100 * (c + 1) + ramp + rng.integers(0, 5, shape) for c in range(4)], -1)


def small_label(shape=SMALL, values=(0, 1, 2, 3)) -> np.ndarray:
    """uint8 (x, y, z) with blocks of each value."""
    label = np.zeros(shape, np.uint8)
    for i, v in enumerate(values[1:], start=1):
        label[2 * i : 2 * i + 2, 2:6, 2:6] = v
    return label


@pytest.fixture
def msd_dir(tmp_path) -> Path:
    """An MSD Task01 folder: two training cases (one float32, one int16 with a scale factor)
    and one test case without a label."""
    root = tmp_path / "Task01_BrainTumour"
    write_nifti(root / "imagesTr" / "BRATS_001.nii.gz", small_image(seed=1))
    write_nifti(root / "labelsTr" / "BRATS_001.nii.gz", small_label())
    # BRATS_002 as MSD Task01 ships its files: an identity header over L, P, S voxels.
    write_nifti(
        root / "imagesTr" / "BRATS_002.nii.gz", small_image(seed=2), slope=0.5, affine=np.eye(4)
    )
    write_nifti(root / "labelsTr" / "BRATS_002.nii.gz", small_label(), affine=np.eye(4))
    write_nifti(root / "imagesTs" / "BRATS_900.nii.gz", small_image(seed=3))
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "dataset.json").write_text(json.dumps({"name": "BRATS", "numTraining": 2}))
    return root


def write_brats_case(folder: Path, suffixes, label_suffix, label_values, seed=0) -> Path:
    image = small_image(seed=seed)
    for channel, suffix in enumerate(suffixes):
        write_nifti(folder / f"{folder.name}{suffix}.nii.gz", image[..., channel])
    write_nifti(folder / f"{folder.name}{label_suffix}.nii.gz", small_label(values=label_values))
    return folder


@pytest.fixture
def brats2021_dir(tmp_path) -> Path:
    root = tmp_path / "BraTS2021"
    for i in range(2):
        write_brats_case(
            root / f"BraTS2021_0000{i}",
            ("_flair", "_t1", "_t1ce", "_t2"),
            "_seg",
            (0, 1, 2, 4),
            seed=i,
        )
    return root


@pytest.fixture
def brats2023_dir(tmp_path) -> Path:
    root = tmp_path / "BraTS2023"
    write_brats_case(
        root / "BraTS-GLI-00000-000", ("-t2f", "-t1n", "-t1c", "-t2w"), "-seg", (0, 1, 2, 3)
    )
    return root


def write_tumour_dataset(root: Path, shape=(48, 40, 24)) -> Path:
    """An MSD folder of three cases of ``shape`` with a noisy brain (4 voxels in from the
    sides, 2 from top and bottom) and a tumour: bright edema around an enhancing core."""
    rng = np.random.default_rng(0)
    brain = (slice(4, shape[0] - 4), slice(4, shape[1] - 4), slice(2, shape[2] - 2))
    for i in range(3):
        image = np.zeros(shape + (4,), np.float32)
        image[brain] = rng.normal(100, 10, image[brain].shape)
        label = np.zeros(shape, np.uint8)
        label[10 + i : 20 + i, 12:20, 8:14] = 1
        label[13 + i : 17 + i, 14:18, 10:12] = 3
        image[label == 1] += 40
        write_nifti(root / "imagesTr" / f"BRATS_00{i}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"BRATS_00{i}.nii.gz", label)
    return root


@pytest.fixture
def tumour_dataset(tmp_path):
    """An MSD folder of three 48x40x24 cases with a tumour each."""
    return write_tumour_dataset(tmp_path / "data")
