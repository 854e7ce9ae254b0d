"""The command line on data: `synth` (determinism, layout) and `info`, and bad input -> exit 2."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import small_image, write_nifti


def tumorseg(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "tumorseg", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def synthetic_pair(tmp_path_factory):
    """Two one-case datasets of seed 0 and one of seed 1, written by the CLI."""
    root = tmp_path_factory.mktemp("synth")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = tumorseg("synth", "--out", root / name, "--cases", 1, "--seed", seed)
        assert result.returncode == 0, result.stderr
    return root


def test_synth_writes_the_msd_layout(synthetic_pair):
    root = synthetic_pair / "a"
    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest["numTraining"] == 1
    assert manifest["training"][0] == {
        "image": "./imagesTr/BRATS_001.nii.gz",
        "label": "./labelsTr/BRATS_001.nii.gz",
    }
    image = nib.load(root / "imagesTr" / "BRATS_001.nii.gz")
    label = nib.load(root / "labelsTr" / "BRATS_001.nii.gz")
    assert image.shape == (240, 240, 155, 4) and image.get_data_dtype() == np.float32
    assert label.shape == (240, 240, 155) and label.get_data_dtype() == np.uint8
    values = np.unique(np.asarray(label.dataobj))
    assert set(values.tolist()) <= {0, 1, 2, 3} and len(values) >= 3


def test_synth_is_deterministic(synthetic_pair):
    for folder in ("imagesTr", "labelsTr"):
        a, b, c = (synthetic_pair / name / folder / "BRATS_001.nii.gz" for name in "abc")
        assert digest(a) == digest(b), "same seed must give the same bytes"
        assert digest(a) != digest(c), "another seed must give other data"


def test_synth_refuses_a_folder_of_another_seed(synthetic_pair):
    result = tumorseg("synth", "--out", synthetic_pair / "a", "--cases", 1, "--seed", 5)
    assert result.returncode == 2
    assert "dataset.json" in result.stderr and "seed 0" in result.stderr


def test_synth_refuses_a_negative_seed_in_one_line(tmp_path):
    result = tumorseg("synth", "--out", tmp_path / "d", "--cases", 1, "--seed", -1)
    assert result.returncode == 2
    assert "--seed" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_synthetic_case_looks_like_a_tumour_scan(synthetic_pair):
    from tumorseg.data import find_cases, load_case

    image, label = load_case(find_cases(synthetic_pair / "a")[0])
    brain = image[..., 1] > 0
    assert 0.1 < brain.mean() < 0.4  # a skull-stripped brain in a BraTS-sized grid
    assert np.array_equal(image[..., 0] > 0, brain) or (image[..., 0][~brain] == 0).all()
    flair, t1, t1gd, t2 = (image[..., c] for c in range(4))
    edema, enhancing = label == 1, label == 3
    normal_white = brain & (label == 0)

    def rel(seq, mask):
        return seq[mask].mean() / seq[normal_white].mean()

    if edema.sum() > 50:
        assert rel(flair, edema) > 1.2 and rel(t2, edema) > 1.2
    if enhancing.sum() > 50:
        assert rel(t1gd, enhancing) > 1.1


def test_info_prints_a_table(synthetic_pair):
    result = tumorseg("info", synthetic_pair / "a")
    assert result.returncode == 0, result.stderr
    assert "BRATS_001" in result.stdout and "(240, 240, 155, 4)" in result.stdout
    assert "edema" in result.stdout and "(1.0, 1.0, 1.0)" in result.stdout


def test_info_reads_each_layout(msd_dir, brats2021_dir, brats2023_dir):
    for root, expected in (
        (msd_dir, "BRATS_002"),
        (brats2021_dir, "BraTS2021_00001"),
        (brats2023_dir, "BraTS-GLI-00000-000"),
    ):
        result = tumorseg("info", root)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout


def bad_inputs(tmp_path):
    """(name, path given to `info`, text the message names) for each bad input."""
    cases = []
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append(("empty folder", empty, "no cases found"))
    cases.append(("missing path", tmp_path / "missing", "no such file"))
    text = tmp_path / "text.nii.gz"
    text.write_text("hello")
    cases.append(("not a NIfTI", text, "not a NIfTI"))
    cut = write_nifti(tmp_path / "cut.nii.gz", small_image())
    cut.write_bytes(cut.read_bytes()[:-100])
    cases.append(("truncated gzip", cut, "truncated or corrupt"))
    cases.append(("3-D image", write_nifti(tmp_path / "flat.nii.gz", small_image()[..., 0]), "4-D"))
    cases.append(
        ("3 channels", write_nifti(tmp_path / "rgb.nii.gz", small_image()[..., :3]), "4-D")
    )
    nan = small_image()
    nan[1, 1, 1, 0] = np.nan
    cases.append(("NaN voxel", write_nifti(tmp_path / "nan.nii.gz", nan), "non-finite"))
    return cases


def test_bad_input_exits_2_with_one_line_naming_the_file(tmp_path):
    for name, path, words in bad_inputs(tmp_path):
        result = tumorseg("info", path)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (name, result.stderr)
        assert path.name in lines[0] and words in lines[0], (name, lines[0])
        assert "Traceback" not in result.stderr


def test_bad_dataset_cases_exit_2(msd_dir, brats2021_dir, tmp_path):
    label = msd_dir / "labelsTr" / "BRATS_001.nii.gz"
    write_nifti(label, np.zeros((5, 5, 5), np.uint8))
    result = tumorseg("info", msd_dir)
    assert result.returncode == 2 and "BRATS_001.nii.gz" in result.stderr
    assert "does not match image shape" in result.stderr

    seg = brats2021_dir / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    write_nifti(seg, np.full((12, 10, 8), 3, np.uint8))
    (brats2021_dir / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz").unlink()
    result = tumorseg("info", brats2021_dir)
    assert result.returncode == 2 and "missing BraTS sequence T2" in result.stderr
    result = tumorseg("info", brats2021_dir / "BraTS2021_00001")
    assert result.returncode == 2 and "_seg.nii.gz" in result.stderr
    assert "outside the brats2021 set" in result.stderr


def test_patches_command_writes_the_processed_layout(msd_dir, tmp_path):
    result = tumorseg(
        "patches",
        "--data",
        msd_dir,
        "--out",
        tmp_path / "processed",
        "--per-case",
        1,
        "--patch",
        8,
        8,
        4,
        "--valid-fraction",
        0.5,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "processed" / "config.json").read_text())
    assert len(config["train"]) == 1 and len(config["valid"]) == 1
    assert (tmp_path / "processed" / "train" / config["train"][0]).exists()
    result = tumorseg("patches", "--data", tmp_path / "nothing", "--out", tmp_path / "p2")
    assert result.returncode == 2 and "nothing: no such file" in result.stderr
