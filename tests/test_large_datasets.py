"""Datasets of any size: the training cache holds a bounded number of open files and keeps no
case's arrays in memory, so a BraTS-sized dataset trains under a desktop's ``ulimit -n``."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from tumorseg import patches
from tumorseg.data import find_cases

TINY_SHAPE = (16, 16, 8)


def write_tiny_cases(root: Path, count: int, shape=TINY_SHAPE) -> Path:
    """An MSD folder of ``count`` tiny cases ``shape``: noise with a small tumour each."""
    rng = np.random.default_rng(0)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(count):
        image = rng.normal(100, 10, shape + (4,)).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        x = i % (shape[0] - 6)
        label[x : x + 4, 4:10, 2:6] = 1
        label[x + 1 : x + 3, 6:8, 3:5] = 3
        image[label > 0] += 40
        name = f"BRATS_{i:04d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
    return root


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_sampling_from_many_cases_holds_few_files_open(tmp_path):
    """Patches drawn from every one of 120 cached cases leave at most OPEN_ARRAYS files open,
    and a CachedCase holds no array (only its shape and tumour count)."""
    data = write_tiny_cases(tmp_path / "data", 120)
    gc.collect()
    before = open_files()
    cases = [patches.cache_case(c, tmp_path / "cache", TINY_SHAPE) for c in find_cases(data)]
    sampler = patches.PatchSampler(cases, TINY_SHAPE, tumour_share=0.5)
    for i in range(600):
        x, y = sampler(i)
        assert x.shape == TINY_SHAPE + (4,) and y.shape == TINY_SHAPE + (3,)
    assert open_files() - before <= patches.OPEN_ARRAYS
    assert not any(isinstance(v, np.ndarray) for v in vars(cases[0]).values())
    assert cases[0].shape == TINY_SHAPE and cases[0].tumour_count == 4 * 6 * 4


def test_1300_cases_train_under_ulimit_256(tmp_path):
    """BraTS 2021 has 1,251 cases: 1,300 tiny ones train a step with 256 file descriptors."""
    from tumorseg.model import ModelConfig
    from tumorseg.train import TrainConfig

    data = write_tiny_cases(tmp_path / "data", 1300)
    config = TrainConfig.from_preset(str(data), "cpu", epochs=1, steps_per_epoch=1, batch_size=1)
    config.model = ModelConfig(
        patch_shape=TINY_SHAPE, n_base_filters=2, depth=3, normalization="batch"
    )
    config.validation_patches = 2
    config.valid_fraction = 0.005
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config.to_dict()))
    command = (
        f"ulimit -n 256 && exec {sys.executable} -m tumorseg train --config {path} "
        f"--out {tmp_path / 'run'}"
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "run" / "cache").rglob("*.image.npy"))) == 1300
    assert (tmp_path / "run" / "model.keras").exists()
