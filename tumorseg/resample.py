"""Scans seen at a coarser grid, by a whole factor per axis, and predictions brought back.

A run whose network has ``ModelConfig.downsample = f`` sees every scan, in training and in
prediction, as the means of its ``f x f x f`` voxel blocks (the scan edge-padded to a multiple
of ``f``); its probabilities are interpolated back to the scan's grid. At ``f = 2`` a patch of
64x64x32 voxels covers 128x128x64 mm of a 1 mm scan: a whole tumour and its surroundings.

Shapes: an image ``(X, Y, Z, C)`` becomes ``(ceil(X / f), ceil(Y / f), ceil(Z / f), C)``; a
label ``(X, Y, Z)`` likewise.
"""

from __future__ import annotations

import numpy as np


def _blocks(array: np.ndarray, factor: int) -> np.ndarray:
    """``(X, Y, Z, ...)`` edge-padded to multiples of ``factor`` ->
    ``(X / f, Y / f, Z / f, f**3, ...)``: each coarse voxel's block."""
    pad = [(0, (-size) % factor) for size in array.shape[:3]] + [(0, 0)] * (array.ndim - 3)
    array = np.pad(array, pad, mode="edge") if any(p[1] for p in pad) else array
    x, y, z = (size // factor for size in array.shape[:3])
    rest = array.shape[3:]
    split = array.reshape(x, factor, y, factor, z, factor, *rest)
    order = (0, 2, 4, 1, 3, 5, *range(6, 6 + len(rest)))
    return split.transpose(order).reshape(x, y, z, factor**3, *rest)


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """float32 ``(ceil(X / f), ceil(Y / f), ceil(Z / f), C)``: the mean of each block of
    ``(X, Y, Z, C)`` ``image``; ``factor`` 1 returns it as it is."""
    if factor == 1:
        return image
    return _blocks(np.asarray(image, np.float32), factor).mean(axis=3, dtype=np.float32)


def downsample_label(label: np.ndarray, factor: int, num_classes: int = 4) -> np.ndarray:
    """uint8 ``(ceil(X / f), ceil(Y / f), ceil(Z / f))``: the most common label of each block of
    ``(X, Y, Z)`` ``label`` (a tie goes to the higher label, so thin enhancing rims survive);
    ``factor`` 1 returns it as it is."""
    if factor == 1:
        return label
    blocks = _blocks(np.asarray(label), factor)
    counts = np.stack([(blocks == k).sum(axis=3) for k in range(num_classes)], axis=-1)
    return (num_classes - 1 - np.argmax(counts[..., ::-1], axis=-1)).astype(np.uint8)


def upsample_probabilities(
    probabilities: np.ndarray, shape: tuple[int, ...], factor: int
) -> np.ndarray:
    """float32 ``(X, Y, Z, K)`` for a scan of grid ``shape``: the coarse ``(ceil(X / f), ...,
    K)`` ``probabilities`` interpolated linearly between block centres (the scan's voxel ``i``
    lies at coarse position ``(i + 0.5) / f - 0.5``; beyond the outer centres, the edge value)."""
    if factor == 1:
        return probabilities
    from scipy import ndimage

    fine = ndimage.zoom(
        np.asarray(probabilities, np.float32),
        (factor, factor, factor, 1),
        order=1,
        mode="nearest",
        grid_mode=True,
    )
    return np.ascontiguousarray(fine[: shape[0], : shape[1], : shape[2]])
