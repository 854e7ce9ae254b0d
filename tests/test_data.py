"""tumorseg.data: layouts, loading, label mapping, validation and atomic writing."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import SMALL, small_image, small_label, write_nifti

from tumorseg.data import find_cases, load_case, load_label, save_nifti
from tumorseg.errors import InputError


def test_msd_layout_is_found_and_skips_hidden_files(msd_dir):
    cases = find_cases(msd_dir)
    assert [c.id for c in cases] == ["BRATS_001", "BRATS_002", "BRATS_900"]
    assert {c.layout for c in cases} == {"msd"}
    assert cases[2].label is None


def test_msd_case_loads_channels_last_contiguous_float32(msd_dir):
    image, label = load_case(find_cases(msd_dir)[0])
    assert image.shape == SMALL + (4,) and image.dtype == np.float32
    assert image.flags.c_contiguous and label.flags.c_contiguous
    np.testing.assert_array_equal(image, small_image(seed=1))
    np.testing.assert_array_equal(label, small_label())
    assert label.dtype == np.uint8


def test_int16_image_with_scale_factor_is_scaled(msd_dir):
    image, _ = load_case(msd_dir / "imagesTr" / "BRATS_002.nii.gz")
    expected = np.round(small_image(seed=2) / 0.5) * 0.5
    np.testing.assert_allclose(image, expected)
    assert image.dtype == np.float32


def test_unlabelled_case_returns_none(msd_dir):
    image, label = load_case(find_cases(msd_dir)[2])
    assert label is None and image.shape == SMALL + (4,)


def test_brats2021_layout_maps_labels_and_orders_channels(brats2021_dir):
    cases = find_cases(brats2021_dir)
    assert [c.id for c in cases] == ["BraTS2021_00000", "BraTS2021_00001"]
    assert cases[0].layout == "brats2021"
    image, label = load_case(cases[0])
    np.testing.assert_array_equal(image, small_image(seed=0))  # FLAIR, T1, T1gd, T2
    # file 1 (necrotic core) -> 2, file 2 (edema) -> 1, file 4 (enhancing) -> 3
    np.testing.assert_array_equal(label, small_label(values=(0, 2, 1, 3)))


def test_brats2023_layout_maps_labels(brats2023_dir):
    (case,) = find_cases(brats2023_dir)
    assert case.layout == "brats2023"
    image, label = load_case(case)
    np.testing.assert_array_equal(image, small_image(seed=0))
    np.testing.assert_array_equal(label, small_label(values=(0, 2, 1, 3)))


def test_a_single_case_folder_and_a_single_file_are_cases(brats2021_dir, msd_dir):
    assert [c.id for c in find_cases(brats2021_dir / "BraTS2021_00001")] == ["BraTS2021_00001"]
    image, label = load_case(brats2021_dir / "BraTS2021_00001")
    assert image.shape == SMALL + (4,) and label is not None
    (case,) = find_cases(msd_dir / "imagesTs" / "BRATS_900.nii.gz")
    assert case.id == "BRATS_900"


# The BraTS challenge's own region definitions, in each release's file values.
BRATS_REGIONS = {
    "brats2021": {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    "brats2023": {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
}


@pytest.mark.parametrize("layout", ["brats2021", "brats2023"])
def test_brats_label_files_keep_the_challenge_regions(layout, tmp_path):
    """A label file of random BraTS values, loaded: the edema class is exactly the voxels the
    file calls edema (value 2 in both releases), and every BraTS region (WT, TC, ET, as the
    challenge defines them on the file values) is the same voxels as ours on the loaded map."""
    from tumorseg.metrics import region_masks

    values = sorted({v for region in BRATS_REGIONS[layout].values() for v in region} | {0})
    stored = np.random.default_rng(1).choice(values, size=SMALL).astype(np.uint8)
    path = write_nifti(tmp_path / "seg.nii.gz", stored)
    label = load_label(path, layout)
    masks = region_masks(label)
    np.testing.assert_array_equal(masks["Edema"], stored == 2)
    for region, file_values in BRATS_REGIONS[layout].items():
        np.testing.assert_array_equal(masks[region], np.isin(stored, file_values), err_msg=region)


def test_save_nifti_keeps_affine_and_header_and_is_atomic(msd_dir, tmp_path):
    reference = msd_dir / "imagesTr" / "BRATS_001.nii.gz"
    out = tmp_path / "out" / "pred.nii.gz"
    save_nifti(small_label(), out, reference)
    written, ref = nib.load(out), nib.load(reference)
    np.testing.assert_array_equal(written.affine, ref.affine)
    assert written.header.get_zooms()[:3] == ref.header.get_zooms()[:3]
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), small_label())
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.nii.gz"]


def test_failed_write_leaves_no_file(tmp_path):
    out = tmp_path / "pred.nii.gz"
    with pytest.raises(Exception):  # noqa: B017 (whatever nibabel raises, nothing is left)
        save_nifti(np.zeros((2, 2, 2), dtype=object), out)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad input


def expect_error(call, path_part: str, words: str):
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert path_part in message and words in message, message
    assert "\n" not in message
    return message


def test_missing_path(tmp_path):
    expect_error(lambda: find_cases(tmp_path / "nowhere"), "nowhere", "no such file")
    expect_error(lambda: load_case(tmp_path / "nowhere.nii.gz"), "nowhere.nii.gz", "no such file")


def test_empty_folder(tmp_path):
    expect_error(lambda: find_cases(tmp_path), str(tmp_path), "no cases found")


def test_not_a_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image")
    expect_error(lambda: load_case(path), "notes.nii.gz", "not a NIfTI")


def test_truncated_gzip(tmp_path):
    path = write_nifti(tmp_path / "cut.nii.gz", small_image())
    path.write_bytes(path.read_bytes()[:-200])
    expect_error(lambda: load_case(path), "cut.nii.gz", "truncated or corrupt")


def test_corrupt_gzip_body(tmp_path):
    path = tmp_path / "garbled.nii.gz"
    raw = gzip.decompress(write_nifti(path, small_image()).read_bytes())
    packed = bytearray(gzip.compress(raw))
    # Garbled from the start of the deflate stream (after gzip's 10-byte header): an invalid
    # block type, whatever the data (garbling elsewhere may decode silently to other values).
    packed[10:74] = b"\xff" * 64
    path.write_bytes(bytes(packed))
    expect_error(lambda: load_case(path), "garbled.nii.gz", "")


def test_three_d_image(tmp_path):
    path = write_nifti(tmp_path / "flat.nii.gz", small_image()[..., 0])
    expect_error(lambda: load_case(path), "flat.nii.gz", "4-D image with 4 channels")


def test_three_channel_image(tmp_path):
    path = write_nifti(tmp_path / "three.nii.gz", small_image()[..., :3])
    expect_error(lambda: load_case(path), "three.nii.gz", "got shape (12, 10, 8, 3)")


def test_missing_brats_sequence(brats2021_dir):
    folder = brats2021_dir / "BraTS2021_00000"
    (folder / "BraTS2021_00000_t1ce.nii.gz").unlink()
    expect_error(
        lambda: find_cases(brats2021_dir), "BraTS2021_00000", "missing BraTS sequence T1gd"
    )


def test_label_shape_mismatch(tmp_path):
    image = write_nifti(tmp_path / "img.nii.gz", small_image())
    label = write_nifti(tmp_path / "seg.nii.gz", np.zeros((12, 10, 7), np.uint8))
    expect_error(lambda: load_case(image, label), "seg.nii.gz", "does not match image shape")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path, bad):
    data = small_image()
    data[3, 3, 3, 2] = bad
    path = write_nifti(tmp_path / "nan.nii.gz", data)
    message = expect_error(lambda: load_case(path), "nan.nii.gz", "non-finite")
    assert "T1gd" in message


def test_non_finite_voxels_name_the_brats_sequence_file(brats2021_dir):
    folder = brats2021_dir / "BraTS2021_00001"
    flair = small_image(seed=1)[..., 3]
    flair[0, 0, 0] = np.nan
    write_nifti(folder / "BraTS2021_00001_t2.nii.gz", flair)
    expect_error(lambda: load_case(folder), "BraTS2021_00001_t2.nii.gz", "non-finite")


def test_label_values_outside_the_layout(tmp_path, brats2021_dir):
    image = write_nifti(tmp_path / "img.nii.gz", small_image())
    label = write_nifti(tmp_path / "seg.nii.gz", small_label(values=(0, 1, 2, 4)))
    expect_error(lambda: load_case(image, label), "seg.nii.gz", "label values [4] outside the msd")
    # 3 is not a BraTS 2021 value
    seg = brats2021_dir / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    write_nifti(seg, small_label(values=(0, 1, 2, 3)))
    expect_error(lambda: load_label(seg, "brats2021"), "_seg.nii.gz", "[3] outside the brats2021")


def test_fractional_label_values(tmp_path):
    path = write_nifti(tmp_path / "seg.nii.gz", small_label().astype(np.float32) * 0.5)
    expect_error(lambda: load_label(path), "seg.nii.gz", "must be integers")


def test_clip_intensities_handles_negative_values_and_heavy_tails():
    from tumorseg.data import clip_intensities

    rng = np.random.default_rng(0)
    image = np.zeros((30, 30, 20, 4), np.float32)
    image[5:25, 5:25, 2:18] = rng.normal(1000, 100, (20, 20, 16, 4))
    image[6, 6, 6, 2] = 50_000  # a vessel many times brighter than tissue
    image[7, 7, 7, 0] = -40  # a registration undershoot inside the brain
    original = image.copy()
    clipped = clip_intensities(image)
    np.testing.assert_array_equal(image, original)
    assert clipped.dtype == np.float32 and clipped.shape == image.shape
    assert clipped[7, 7, 7, 0] == 0 and clipped.min() == 0
    assert clipped[6, 6, 6, 2] < 1500
    brain = np.any(image != 0, axis=-1)
    assert not clipped[~brain].any()
    typical = (image[..., 1] > 800) & (image[..., 1] < 1200)
    np.testing.assert_array_equal(clipped[..., 1][typical], image[..., 1][typical])


def test_viewer_grey_scale_ignores_the_background_and_the_tails():
    from tumorseg.figures import normalise

    rng = np.random.default_rng(1)
    volume = np.zeros((40, 40, 10), np.float32)
    volume[5:35, 5:35] = rng.normal(1000, 100, (30, 30, 10))
    volume[10, 10, 5] = 80_000
    volume[11, 11, 5] = -300
    grey = normalise(volume)
    assert grey.min() == 0 and grey.max() == 1 and grey[0, 0, 0] == 0
    assert 0.3 < np.median(grey[5:35, 5:35]) < 0.7  # tissue spans the grey scale
