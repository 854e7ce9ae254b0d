"""Orientation: every scan is loaded in one voxel order (L, P, S, as BraTS) whatever its file's,
a prediction goes back in the scan's own grid and affine, sequences must share one grid, MSD
Task01's identity header is taken as L, P, S, and a scan at another spacing is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import small_image, small_label
from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

from tumorseg.data import check_spacing, load_case, load_scan, scan_grid
from tumorseg.errors import InputError
from tumorseg.run import CONFIG_FILE, TrainConfig

SHAPE = (20, 18, 12)
# The BraTS header: voxel axes toward the patient's left, back and top (1 mm, offset as BraTS).
LPS = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239], [0, 0, 1.0, 0], [0, 0, 0, 1]])
ORDERS = {  # stored L, P, S -> another voxel order (nibabel orientation, rows per stored axis)
    "as_is": np.array([[0, 1], [1, 1], [2, 1]]),
    "ras": ornt_transform(axcodes2ornt("LPS"), axcodes2ornt("RAS")),
    "swapped": np.array([[2, 1], [1, 1], [0, 1]]),  # first and last axes exchanged: S, P, L
}
SEQUENCES = ("_flair", "_t1", "_t1ce", "_t2")


def scan_in_lps():
    """An asymmetric scan and label ``SHAPE``, L, P, S: a brain with a tumour off-centre."""
    rng = np.random.default_rng(3)
    image = np.zeros(SHAPE + (4,), np.float32)
    image[2:17, 3:16, 1:11] = rng.normal(100, 15, (15, 13, 10, 4))
    label = np.zeros(SHAPE, np.uint8)
    label[4:10, 5:9, 3:8] = 1
    label[5:8, 6:8, 4:6] = 3
    image[label == 1] += 50
    return image, label


def write_brats_case(folder: Path, image, label, affine, affines=None) -> Path:
    """A BraTS 2021 case folder; ``affines`` overrides a sequence's header by suffix."""
    folder.mkdir(parents=True)
    for channel, suffix in enumerate(SEQUENCES):
        header = (affines or {}).get(suffix, affine)
        nib.save(
            nib.Nifti1Image(image[..., channel], header), folder / f"{folder.name}{suffix}.nii.gz"
        )
    brats = np.select([label == 1, label == 2, label == 3], [2, 1, 4], 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(brats, affine), folder / f"{folder.name}_seg.nii.gz")
    return folder


def reorder(array, affine, ornt):
    """The same voxels stored in another order, with the affine that keeps them in place."""
    img = nib.Nifti1Image(array, affine).as_reoriented(ornt)
    return np.asarray(img.dataobj), img.affine


@pytest.fixture
def three_orders(tmp_path):
    """One scan stored three ways (BraTS 2021 layout), case folders named by order."""
    image, label = scan_in_lps()
    root = tmp_path / "data"
    for number, (name, ornt) in enumerate(ORDERS.items()):
        stored, affine = reorder(image, LPS, ornt)
        stored_label, _ = reorder(label, LPS, ornt)
        assert (
            nib.aff2axcodes(affine)
            == {"as_is": ("L", "P", "S"), "ras": ("R", "A", "S"), "swapped": ("S", "P", "L")}[name]
        )
        write_brats_case(root / f"BraTS2021_0000{number}", stored, stored_label, affine)
    return root, image, label


def test_every_voxel_order_loads_as_l_p_s(three_orders):
    root, image, label = three_orders
    for number, name in enumerate(ORDERS):
        loaded, loaded_label, grid = load_scan(root / f"BraTS2021_0000{number}")
        np.testing.assert_array_equal(loaded, image, err_msg=name)
        np.testing.assert_array_equal(loaded_label, label, err_msg=name)
        assert loaded.flags.c_contiguous and loaded_label.flags.c_contiguous
        assert grid.training_shape == SHAPE
        np.testing.assert_array_equal(
            grid.stored_order(loaded_label), apply_orientation(label, ORDERS[name])
        )


def tumorseg(*args):
    return subprocess.run(
        [sys.executable, "-m", "tumorseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_predictions_come_back_in_each_scans_own_grid(three_orders, tmp_path):
    """``tumorseg predict`` on the three stored orders: each label map is in its scan's voxel
    order and affine, and all three are the same map in the world."""
    import keras

    from tumorseg.model import unet_model_3d

    root, _, _ = three_orders
    keras.utils.set_random_seed(0)
    model = unet_model_3d(input_shape=(16, 16, 8, 4), n_base_filters=2, depth=3)
    model.save(tmp_path / "tiny.keras")
    out = tmp_path / "pred"
    result = tumorseg(
        "predict",
        "--model",
        tmp_path / "tiny.keras",
        "--input",
        root,
        "--out",
        out,
        "--threshold",
        "0.45",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    maps = {name: nib.load(out / f"BraTS2021_0000{n}.nii.gz") for n, name in enumerate(ORDERS)}
    reference = np.asarray(maps["as_is"].dataobj)
    assert len(np.unique(reference)) > 1, "the map must not be uniform (else order is moot)"
    for number, (name, ornt) in enumerate(ORDERS.items()):
        scan = nib.load(root / f"BraTS2021_0000{number}" / f"BraTS2021_0000{number}_flair.nii.gz")
        np.testing.assert_allclose(maps[name].affine, scan.affine)
        assert maps[name].shape == scan.shape and maps[name].get_data_dtype() == np.uint8
        np.testing.assert_array_equal(
            np.asarray(maps[name].dataobj), apply_orientation(reference, ornt), err_msg=name
        )
    # evaluate reads the maps back in each scan's grid: all three agree with their truth alike
    result = tumorseg("evaluate", "--pred", out, "--truth", root, "--out", tmp_path / "m.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    import pandas as pd

    table = pd.read_csv(tmp_path / "m.csv", index_col=0).drop(index="mean")
    assert len(table) == 3 and (table.nunique() <= 1).all()


def test_sequences_with_different_affines_are_refused(tmp_path):
    image, label = scan_in_lps()
    ras = ornt_transform(axcodes2ornt("LPS"), axcodes2ornt("RAS"))
    _, ras_affine = reorder(label, LPS, ras)
    case = write_brats_case(
        tmp_path / "data" / "BraTS2021_00000", image, label, LPS, affines={"_t1ce": ras_affine}
    )
    with pytest.raises(InputError, match="BraTS2021_00000_t1ce.nii.gz.*BraTS2021_00000_flair"):
        load_case(case)
    result = tumorseg("info", tmp_path / "data")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "_t1ce.nii.gz" in lines[0] and "_flair.nii.gz" in lines[0]
    assert "affine" in lines[0]


def test_a_label_with_another_affine_is_refused(tmp_path):
    image, label = scan_in_lps()
    case = write_brats_case(tmp_path / "BraTS2021_00000", image, label, LPS)
    seg = case / "BraTS2021_00000_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(seg).dataobj), np.diag([1.0, 1, 1, 1])), seg)
    with pytest.raises(InputError, match="_seg.nii.gz.*affine"):
        load_case(case)


def test_msd_identity_header_is_taken_as_l_p_s(tmp_path):
    """MSD Task01 ships L, P, S voxels under an identity header: loaded as stored. The same
    voxels under a header that says R, A, S at 2 mm are reoriented by it (x and y flipped)."""
    image, label = small_image(), small_label()
    for name, affine in (("identity", np.eye(4)), ("ras2mm", np.diag([2.0, 2.0, 2.0, 1.0]))):
        nib.save(nib.Nifti1Image(image, affine), tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), tmp_path / f"{name}_seg.nii.gz")
    loaded, loaded_label = load_case(tmp_path / "identity.nii.gz", tmp_path / "identity_seg.nii.gz")
    np.testing.assert_array_equal(loaded, image)
    np.testing.assert_array_equal(loaded_label, label)
    flipped, flipped_label = load_case(tmp_path / "ras2mm.nii.gz", tmp_path / "ras2mm_seg.nii.gz")
    np.testing.assert_array_equal(flipped, image[::-1, ::-1])
    np.testing.assert_array_equal(flipped_label, label[::-1, ::-1])
    assert scan_grid(tmp_path / "ras2mm.nii.gz").spacing == (2.0, 2.0, 2.0)


def test_spacing_is_in_the_training_order_and_checked(three_orders, tmp_path):
    root, image, _ = three_orders
    anisotropic = np.diag([-1.0, -1.0, 3.0, 1.0])  # L, P, S at 1 x 1 x 3 mm
    stored, affine = reorder(image, anisotropic, ORDERS["swapped"])
    case = write_brats_case(
        tmp_path / "BraTS2021_00009", stored, np.zeros(stored.shape[:3], np.uint8), affine
    )
    grid = scan_grid(case)
    assert grid.spacing == (1.0, 1.0, 3.0)  # stored 3 x 1 x 1, loaded L, P, S
    check_spacing(grid, None)  # a run without a recorded spacing: no check
    check_spacing(grid, [1.0, 1.05, 2.8])  # within 10 %
    with pytest.raises(
        InputError,
        match=r"_flair.nii.gz.*spacing 1 x 1 x 3 mm differs by more "
        r"than 10% from the training spacing 1 x 1 x 1 mm",
    ):
        check_spacing(grid, [1.0, 1.0, 1.0])


def test_predict_refuses_a_scan_at_another_spacing(tmp_path):
    image, label = scan_in_lps()
    case = write_brats_case(
        tmp_path / "data" / "BraTS2021_00000", image, label, LPS @ np.diag([1.0, 1.0, 2.0, 1.0])
    )
    run = tmp_path / "run"
    run.mkdir()
    TrainConfig.from_preset(tmp_path / "data", "cpu", spacing=[1.0, 1.0, 1.0]).save(
        run / CONFIG_FILE
    )
    result = tumorseg("predict", "--model", run, "--input", case, "--out", tmp_path / "p.nii.gz")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "_flair.nii.gz" in lines[0] and "training spacing" in lines[0]
    assert not (tmp_path / "p.nii.gz").exists()


def test_a_prediction_off_the_scans_grid_is_refused(three_orders, tmp_path):
    """evaluate reads a map in its scan's grid: another affine (or shape) is refused by name."""
    from tumorseg.data import load_label_map

    root, _, label = three_orders
    grid = scan_grid(root / "BraTS2021_00001")  # stored R, A, S
    stored = apply_orientation(label, ORDERS["ras"])
    nib.save(nib.Nifti1Image(stored, grid.affine), tmp_path / "good.nii.gz")
    np.testing.assert_array_equal(load_label_map(tmp_path / "good.nii.gz", grid), label)
    nib.save(nib.Nifti1Image(stored, LPS), tmp_path / "moved.nii.gz")
    with pytest.raises(InputError, match="moved.nii.gz.*affine"):
        load_label_map(tmp_path / "moved.nii.gz", grid)
    nib.save(nib.Nifti1Image(stored[:-1], grid.affine), tmp_path / "cut.nii.gz")
    with pytest.raises(InputError, match="cut.nii.gz.*shape"):
        load_label_map(tmp_path / "cut.nii.gz", grid)


def test_a_file_without_a_spatial_header_is_taken_as_stored(tmp_path):
    """qform and sform codes 0: nibabel's affine is a guess (L, A, S), so the voxels are taken
    as stored, in the BraTS order, whatever the layout."""
    image, label = scan_in_lps()
    folder = write_brats_case(tmp_path / "BraTS2021_00000", image, label, None)
    img = nib.load(folder / f"{folder.name}_flair.nii.gz")
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0
    assert nib.aff2axcodes(img.affine) != ("L", "P", "S")
    loaded, loaded_label = load_case(folder)
    np.testing.assert_array_equal(loaded, image)
    np.testing.assert_array_equal(loaded_label, label)
