"""Scans at a coarser grid (tumorseg.resample): block means, the most common label, and
probabilities interpolated back between block centres."""

from __future__ import annotations

import numpy as np

from tumorseg.resample import downsample_image, downsample_label, upsample_probabilities


def test_downsample_image_takes_block_means_of_the_edge_padded_scan():
    image = np.random.default_rng(0).random((5, 4, 3, 2), dtype=np.float32)
    coarse = downsample_image(image, 2)
    assert coarse.shape == (3, 2, 2, 2)
    padded = np.pad(image, [(0, 1), (0, 0), (0, 1), (0, 0)], mode="edge")
    for x, y, z in np.ndindex(coarse.shape[:3]):
        block = padded[2 * x : 2 * x + 2, 2 * y : 2 * y + 2, 2 * z : 2 * z + 2]
        np.testing.assert_allclose(coarse[x, y, z], block.mean(axis=(0, 1, 2)), rtol=1e-6)
    assert downsample_image(image, 1) is image


def test_downsample_label_keeps_each_blocks_most_common_label_ties_to_the_higher():
    label = np.zeros((4, 2, 2), np.uint8)
    label[0:2, 0, :] = 1  # block 0: four 1s, four 0s -> a tie, goes to 1
    label[0:2, 1, 0] = 3  # ... and then two 3s: 0 x2, 1 x4, 3 x2 -> 1
    label[2:4] = 2
    label[2, 0, 0] = 3  # block 1: seven 2s, one 3 -> 2
    coarse = downsample_label(label, 2)
    assert coarse.dtype == np.uint8 and coarse.shape == (2, 1, 1)
    assert coarse.ravel().tolist() == [1, 2]
    tie = np.zeros((2, 2, 2), np.uint8)
    tie[0] = 3
    assert downsample_label(tie, 2).item() == 3


def test_upsample_interpolates_linearly_between_block_centres():
    ramp = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 1, 1, 2), np.float32)
    fine = upsample_probabilities(ramp, (5, 2, 2), 2)
    assert fine.shape == (5, 2, 2, 2) and fine.dtype == np.float32
    # Voxel i lies at coarse position (i + 0.5) / 2 - 0.5, held at the outer centres.
    expected = np.clip((np.arange(5) + 0.5) / 2 - 0.5, 0, 2)
    np.testing.assert_allclose(fine[:, 0, 0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(fine[:, 1, 1, 1], expected, atol=1e-6)


def test_a_linear_field_comes_back_from_the_coarse_grid():
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (12, 10, 8)), indexing="ij")
    field = (0.5 * x - 0.25 * y + 0.1 * z)[..., None]
    back = upsample_probabilities(downsample_image(field, 2), field.shape, 2)
    inner = (slice(1, -1),) * 3
    np.testing.assert_allclose(back[inner], field[inner], atol=1e-5)
