"""The display convention: BraTS voxel order (L, P, S) shown as 3D Slicer and ITK-SNAP show it
(radiological): axial views with the front of the head at the top and the patient's left on the
image's right; coronal and sagittal views with the top of the head at the top."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from tumorseg.data import load_case
from tumorseg.figures import take_slice, to_display

SHAPE = (12, 10, 8)


def brats_affine(shape):
    """The header BraTS files carry: diag(-1, -1, 1) with the second axis offset (L, P, S)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def write_brats2023(folder, image, affine, dtype=np.int16):
    """A BraTS 2023 case folder from ``image (x, y, z, 4)`` (FLAIR, T1, T1gd, T2)."""
    folder.mkdir(parents=True, exist_ok=True)
    for channel, suffix in enumerate(("-t2f", "-t1n", "-t1c", "-t2w")):
        img = nib.Nifti1Image(np.round(image[..., channel]).astype(dtype), affine)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        nib.save(img, folder / f"{folder.name}{suffix}.nii.gz")
    return folder


def world_extreme_voxel(affine, shape, direction, where):
    """The voxel of ``shape`` farthest along world ``direction`` (RAS) among those ``where``
    selects (a boolean array over voxel indices)."""
    ijk = np.indices(shape).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    score = np.asarray(direction) @ world
    score[~where.ravel()] = -np.inf
    return tuple(int(i) for i in ijk[:, int(np.argmax(score))])


def marker_position(picture):
    rows, columns = np.nonzero(picture)
    assert len(rows) == 1, "exactly one marker voxel in the slice"
    return int(rows[0]), int(columns[0])


def test_display_convention_on_a_file_with_a_brats_header(tmp_path):
    affine = brats_affine(SHAPE)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    image = np.zeros(SHAPE + (4,), np.float32)
    mid = np.zeros(SHAPE, bool)
    z = 3
    # Axial slice z: a marker at the patient's front left (world -x is left, +y is anterior).
    plane = np.zeros(SHAPE, bool)
    plane[:, :, z] = True
    front_left = world_extreme_voxel(affine, SHAPE, (-1, 1, 0), plane)
    image[front_left + (0,)] = 100
    # Coronal slice y: a marker at the top left; sagittal slice x: a marker at the top front.
    y, x = 4, 5
    mid[:, y, :] = True
    top_left = world_extreme_voxel(affine, SHAPE, (-1, 0, 1), mid)
    image[top_left + (1,)] = 100
    mid[:] = False
    mid[x, :, :] = True
    top_front = world_extreme_voxel(affine, SHAPE, (0, 1, 1), mid)
    image[top_front + (2,)] = 100
    loaded, _ = load_case(write_brats2023(tmp_path / "BraTS-GLI-00000-000", image, affine))

    axial = take_slice(loaded[..., 0], "axial", z)
    assert axial.shape == (SHAPE[1], SHAPE[0])
    assert marker_position(axial) == (0, SHAPE[0] - 1), "front at the top, left on the right"
    coronal = take_slice(loaded[..., 1], "coronal", y)
    assert marker_position(coronal) == (0, SHAPE[0] - 1), "top at the top, left on the right"
    sagittal = take_slice(loaded[..., 2], "sagittal", x)
    assert marker_position(sagittal) == (0, 0), "top at the top, front on the left"


def test_to_display_keeps_trailing_axes_and_refuses_unknown_planes():
    rgb = np.zeros((5, 4, 3))
    rgb[4, 0] = 1
    assert to_display(rgb, "axial").shape == (4, 5, 3)
    assert to_display(rgb, "axial")[0, 4].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="plane"):
        to_display(rgb, "oblique")


@pytest.fixture(scope="module")
def synthetic_case(tmp_path_factory):
    from tumorseg.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, cases=1, seed=3, progress=False, workers=1)
    return root / "imagesTr" / "BRATS_001.nii.gz", root / "labelsTr" / "BRATS_001.nii.gz"


def test_synthetic_files_are_stored_like_brats_files(synthetic_case):
    image_file, label_file = synthetic_case
    img = nib.load(image_file)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(img.affine[:3, :3], np.diag([-1.0, -1.0, 1.0]))
    assert img.get_data_dtype() == np.float32 and img.shape == (240, 240, 155, 4)
    assert nib.load(label_file).get_data_dtype() == np.uint8
    image, label = load_case(image_file, label_file)
    brain = np.any(image != 0, axis=-1)
    assert (image >= 0).all() and np.array_equal(image, np.round(image))
    assert not label[~brain].any(), "labels only inside the skull-stripped brain"
    assert 0.1 < brain.mean() < 0.4


def test_synthetic_and_brats_layout_files_of_the_same_anatomy_display_identically(
    synthetic_case, tmp_path
):
    image_file, label_file = synthetic_case
    img = nib.load(image_file)
    data = np.asarray(img.dataobj)
    # The same anatomy stored the BraTS way: voxels reordered to L, P, S by the header alone.
    transform = ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "P", "S")))
    brats = apply_orientation(data, np.vstack([transform, [[3, 1]]]))
    affine = img.affine @ inv_ornt_aff(transform, data.shape[:3])
    case = write_brats2023(tmp_path / "BraTS-GLI-00001-000", brats, affine, dtype=np.float32)
    synthetic, label = load_case(image_file, label_file)
    loaded, _ = load_case(case)
    centre = np.array([int(np.median(i)) for i in np.nonzero(label)] + [1])
    world = img.affine @ centre
    index = np.round(np.linalg.inv(affine) @ world).astype(int)
    for plane, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        for channel in range(4):
            np.testing.assert_array_equal(
                take_slice(synthetic[..., channel], plane, centre[axis]),
                take_slice(loaded[..., channel], plane, index[axis]),
                err_msg=f"{plane} view of channel {channel} differs",
            )
