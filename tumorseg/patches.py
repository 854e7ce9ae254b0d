"""Patches: the seed's ``get_sub_volume`` and ``standardize``, made fast, and the training input.

Shapes are channels-last: an image ``(x, y, z, 4)``, a patch ``(px, py, pz, 4)``, its label
one-hot without background ``(px, py, pz, 3)``.

``get_sub_volume`` keeps the seed's meaning — a uniformly random window whose background share is
below ``background_threshold`` — but finds it without blind retries: every qualifying window
overlaps the tumour's bounding box, so corners are drawn only from those that do, each checked by
counting tumour voxels (no one-hot per try), and when a few draws fail, box sums over all those
corners list every qualifying window exactly. None comes back only when no window qualifies.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .presets import SEED_PATCH_SHAPE

FAST_TRIES = 16  # random draws before the exact search
TUMOUR_SHARE = 0.6  # training patches near tumour; the rest random: healthy tissue must be seen


# ----------------------------------------------------------------------------- the seed's functions


def standardize(image: np.ndarray) -> np.ndarray:
    """Each channel of each z-slice to mean 0 and standard deviation 1.

    image: ``(x, y, z, C)``. A constant slice is only centred (never divided by zero).
    Returns a new float32 array of the same shape.
    """
    image = np.asarray(image, dtype=np.float32)
    mean = image.mean(axis=(0, 1), keepdims=True)
    std = image.std(axis=(0, 1), keepdims=True)
    return (image - mean) / np.where(std > 0, std, 1).astype(np.float32)


def one_hot(label: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """float32 ``(..., num_classes - 1)``: one channel per non-background class 1..num_classes-1."""
    encoded = np.empty(label.shape + (num_classes - 1,), np.float32)
    for channel in range(num_classes - 1):  # a plane per class: ~4x faster than broadcasting
        encoded[..., channel] = label == channel + 1
    return encoded


def get_sub_volume(
    image,
    label,
    orig_x=240,
    orig_y=240,
    orig_z=155,
    output_x=160,
    output_y=160,
    output_z=16,
    num_classes=4,
    max_tries=1000,
    background_threshold=0.95,
    rng: np.random.Generator | None = None,
):
    """A random sub-volume whose background share is below ``background_threshold``.

    Args:
        image: ``(x, y, z, C)``, at least ``(orig_x, orig_y, orig_z)`` in space.
        label: ``(x, y, z)`` integer labels, 0 background.
        output_x, output_y, output_z: the sub-volume's size.
        num_classes: classes including background.
        max_tries: cap on the fast random draws (the exact search follows them).
        rng: a numpy Generator; None uses numpy's global state, as the seed does.

    Returns:
        ``X`` float32 ``(output_x, output_y, output_z, C)`` and ``y`` float32
        ``(output_x, output_y, output_z, num_classes - 1)``, or None (with a warning) when no
        window qualifies.
    """
    window = (output_x, output_y, output_z)
    corner = find_window(
        label[:orig_x, :orig_y, :orig_z],
        window,
        background_threshold,
        rng=rng,
        fast_tries=min(max_tries, FAST_TRIES),
    )
    if corner is None:
        warnings.warn(
            f"no {output_x}x{output_y}x{output_z} window has a background share below "
            f"{background_threshold}: returning None",
            stacklevel=2,
        )
        return None
    box = tuple(slice(c, c + w) for c, w in zip(corner, window))
    # The two copies are memory-bound and numpy releases the GIL: make them on two cores.
    encoding = _helper_thread().submit(one_hot, np.asarray(label[box]), num_classes)
    X = np.array(image[box], dtype=np.float32, order="C")
    return X, encoding.result()


@lru_cache(maxsize=1)
def _helper_thread():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="tumorseg-one-hot")


def _randint(rng, low: int, high: int) -> int:
    """Uniform integer in [low, high)."""
    return int(np.random.randint(low, high) if rng is None else rng.integers(low, high))


def find_window(
    label: np.ndarray,
    window: tuple[int, int, int],
    background_threshold: float,
    rng: np.random.Generator | None = None,
    fast_tries: int = FAST_TRIES,
):
    """Corner ``(x, y, z)`` of a uniformly random window of ``label`` whose background share is
    below ``background_threshold``, or None when there is none.

    label: ``(X, Y, Z)``; window: ``(wx, wy, wz)`` no larger than label.
    """
    if any(w > s for w, s in zip(window, label.shape)):
        raise ValueError(f"window {window} larger than the volume {label.shape}")
    volume = int(np.prod(window))

    def qualifies(count):  # the seed's test, on the foreground count
        return (volume - count) / volume < background_threshold

    extent = bounding_box(label)
    if extent is None or not qualifies(int(np.count_nonzero(label[extent]))):
        return None
    # Only corners whose window overlaps the tumour's bounding box can qualify.
    low = [max(0, s.start - w + 1) for s, w in zip(extent, window)]
    high = [min(size - w, s.stop - 1) for s, size, w in zip(extent, label.shape, window)]
    for _ in range(fast_tries):
        corner = tuple(_randint(rng, lo, hi + 1) for lo, hi in zip(low, high))
        box = tuple(slice(c, c + w) for c, w in zip(corner, window))
        if qualifies(np.count_nonzero(label[box])):
            return corner
    # Exact search: the foreground count of every candidate window, by box sums.
    region = tuple(slice(lo, hi + w) for lo, hi, w in zip(low, high, window))
    counts = window_sums(label[region] != 0, window)
    candidates = np.flatnonzero(qualifies(counts))
    if candidates.size == 0:
        return None
    pick = candidates[_randint(rng, 0, candidates.size)]
    return tuple(int(i) + lo for i, lo in zip(np.unravel_index(pick, counts.shape), low))


def bounding_box(mask: np.ndarray, margin: int | tuple[int, ...] = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every non-zero voxel of ``mask``, grown by ``margin`` voxels on
    each side (per axis when a tuple) and clipped to the array; None when nothing is non-zero.

    mask: ``(X, Y, Z)`` (any number of axes), any dtype; non-zero means inside.
    Returns one slice per axis. Uses projections (vectorised, no index lists): about 0.5 ms on
    a 240x240x155 uint8 label.
    """
    mask = np.asarray(mask)
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.unsignedinteger)):
        mask = mask != 0  # max-projections below need "non-zero" to mean "greater than zero"
    margins = (margin,) * mask.ndim if isinstance(margin, (int, np.integer)) else tuple(margin)
    if mask.size == 0:
        return None
    if mask.ndim == 3:
        plane = mask.max(axis=0)
        profiles = (
            mask.reshape(mask.shape[0], -1).max(axis=1),
            plane.max(axis=1),
            plane.max(axis=0),
        )
    else:
        profiles = [
            mask.max(axis=tuple(a for a in range(mask.ndim) if a != axis))
            for axis in range(mask.ndim)
        ]
    box = []
    for profile, size, grow in zip(profiles, mask.shape, margins):
        hits = np.flatnonzero(profile)
        if hits.size == 0:
            return None
        box.append(slice(max(0, int(hits[0]) - grow), min(size, int(hits[-1]) + 1 + grow)))
    return tuple(box)


def window_sums(mask: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """Sum of ``mask`` over every ``window``-sized box: ``(X-wx+1, Y-wy+1, Z-wz+1)`` int32."""
    sums = mask.astype(np.int32)
    for axis, width in enumerate(window):
        cumulative = np.cumsum(sums, axis=axis, dtype=np.int32)
        pad = [(0, 0)] * 3
        pad[axis] = (1, 0)
        cumulative = np.pad(cumulative, pad)
        upper = [slice(None)] * 3
        lower = [slice(None)] * 3
        upper[axis], lower[axis] = slice(width, None), slice(None, -width)
        sums = cumulative[tuple(upper)] - cumulative[tuple(lower)]
    return sums


# ------------------------------------------------------------------------- sampling for training


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied to each standardised training patch; each can be switched off
    (0 or False). Every draw comes from the sampler's generator, so a patch is reproducible.

    The intensity changes act on each channel between its minimum and maximum in the patch, so
    the background outside the brain (the minimum) stays where it is.
    """

    flip: bool = True  # left-right (x axis) flip with probability 0.5
    scale: float = 0.1  # per-channel intensity factor in [1 - scale, 1 + scale]
    shift: float = 0.1  # per-channel offset in [-shift, shift] (in standardised units)
    noise: float = 0.05  # Gaussian noise of std up to this (standardised units)
    # Off by default: the phantom generator draws gamma, bias and blur per case, and adding
    # them per patch made 15-minute cpu runs fit and transfer worse (README, "Measured").
    # Worth turning on for real training data, which has no generator behind it.
    gamma: float = 0.0  # per-channel gamma exp(u), u uniform in [-gamma, gamma]
    bias: float = 0.0  # smooth multiplicative field exp(b * field), b uniform in [0, bias]
    blur: float = 0.0  # Gaussian blur, sigma uniform in [0, blur] voxels per channel

    def to_dict(self) -> dict:
        return asdict(self)


NO_AUGMENTATION = Augmentation(
    flip=False, scale=0.0, shift=0.0, noise=0.0, gamma=0.0, bias=0.0, blur=0.0
)


def _patch_field(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth zero-mean field ``shape`` float32: a 3x3x3 random grid upsampled linearly."""
    from scipy import ndimage

    coarse = rng.standard_normal((3, 3, 3)).astype(np.float32)
    return ndimage.zoom(coarse, [s / 3 for s in shape], order=1, grid_mode=True, mode="nearest")[
        : shape[0], : shape[1], : shape[2]
    ]


def augment(
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    augmentation: Augmentation = Augmentation(),
) -> tuple[np.ndarray, np.ndarray]:
    """Augment a standardised patch ``x (px, py, pz, C)`` and its label ``y (px, py, pz, K)``:
    flip (both), then per channel a bias field, gamma, blur, scale, shift and noise (image only).

    Returns float32 C-contiguous ``(x, y)`` of the same shapes.
    """
    from scipy import ndimage

    channels = x.shape[-1]
    if augmentation.flip and rng.random() < 0.5:
        x, y = x[::-1], y[::-1]
    if augmentation.bias or augmentation.gamma or augmentation.blur:
        x = np.array(x, dtype=np.float32)
        for c in range(channels):
            low, high = float(x[..., c].min()), float(x[..., c].max())
            if high <= low:
                continue
            unit = (x[..., c] - low) / (high - low)
            if augmentation.bias:
                strength = rng.uniform(0, augmentation.bias)
                unit = unit * np.exp(strength * _patch_field(unit.shape, rng))
            if augmentation.gamma:
                unit = np.clip(unit, 0, None) ** np.exp(
                    rng.uniform(-augmentation.gamma, augmentation.gamma)
                )
            if augmentation.blur:
                sigma = rng.uniform(0, augmentation.blur)
                if sigma > 0.25:
                    unit = ndimage.gaussian_filter(unit, sigma)
            x[..., c] = low + (high - low) * unit
    if augmentation.scale:
        x = x * rng.uniform(1 - augmentation.scale, 1 + augmentation.scale, channels).astype(
            np.float32
        )
    if augmentation.shift:
        x = x + rng.uniform(-augmentation.shift, augmentation.shift, channels).astype(np.float32)
    if augmentation.noise:
        sigma = rng.uniform(0, augmentation.noise)
        x = x + (sigma * rng.standard_normal(x.shape, dtype=np.float32))
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)


def brain_box(image: np.ndarray, min_shape: tuple[int, int, int] = (1, 1, 1)) -> tuple[slice, ...]:
    """Bounding box of the voxels non-zero in any channel, grown (within the volume) to at least
    ``min_shape``; the whole volume when no voxel is non-zero. image: ``(x, y, z, C)``."""
    signal = bounding_box(np.any(image != 0, axis=-1))
    if signal is None:
        signal = tuple(slice(0, size) for size in image.shape[:3])
    box = []
    for size, need, extent in zip(image.shape[:3], min_shape, signal):
        lo, hi = extent.start, extent.stop
        grow = max(0, min(need, size) - (hi - lo))
        lo = max(0, min(lo - grow // 2, size - max(hi - lo, need)))
        box.append(slice(lo, min(size, max(hi, lo + need))))
    return tuple(box)


def pad_to(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Zero-pad the first three axes of ``array`` at the end up to at least ``shape``."""
    pad = [(0, max(0, s - a)) for a, s in zip(array.shape[:3], shape)]
    pad += [(0, 0)] * (array.ndim - 3)
    return np.pad(array, pad) if any(p[1] for p in pad) else array


OPEN_ARRAYS = 32  # cached arrays held open (memory-mapped) at once, whatever the dataset's size
# np.load parses a .npy header with ast.literal_eval, which Python 3.11 cannot run in two threads
# at once (CPython gh-106905: "SystemError: AST constructor recursion depth mismatch"); the input
# pipeline's parallel readers open arrays one at a time.
_OPEN_LOCK = threading.Lock()


@lru_cache(maxsize=OPEN_ARRAYS)
def _open_array(path: str, stamp: tuple[int, int]) -> np.ndarray:
    """A read-only memory map of a .npy file; ``stamp`` (inode, mtime) tells rewrites apart.

    An open map holds one file descriptor: the LRU bounds them, and a map it drops is closed
    once no reader holds it."""
    with _OPEN_LOCK:
        return np.load(path, mmap_mode="r", allow_pickle=False)


def cached_array(path: str | Path) -> np.ndarray:
    """The .npy array at ``path`` as a read-only memory map, from a small LRU of open maps."""
    stat = os.stat(path)
    return _open_array(str(path), (stat.st_ino, stat.st_mtime_ns))


@dataclass(frozen=True)
class CachedCase:
    """A case cropped to its brain, saved as three .npy files under ``folder``
    (``<id>.image.npy`` ``(x, y, z, 4)`` float32, ``<id>.label.npy`` ``(x, y, z)`` uint8,
    ``<id>.tumour.npy`` flat indices of the tumour voxels, int64).

    Only the shape and the tumour count stay in memory: the arrays are read when a patch is
    cut, through a small LRU of open memory maps (:data:`OPEN_ARRAYS`), so a dataset of any
    size holds a bounded number of open files and a bounded amount of memory.
    """

    id: str
    folder: Path
    shape: tuple[int, int, int]  # (x, y, z) of the cropped case
    tumour_count: int

    def path(self, part: str) -> Path:
        return self.folder / f"{self.id}.{part}.npy"

    @property
    def image(self) -> np.ndarray:
        """``(x, y, z, 4)`` float32, memory-mapped."""
        return cached_array(self.path("image"))

    @property
    def label(self) -> np.ndarray:
        """``(x, y, z)`` uint8, memory-mapped."""
        return cached_array(self.path("label"))

    @property
    def tumour(self) -> np.ndarray:
        """Flat indices of the tumour voxels ``(tumour_count,)`` int64, memory-mapped."""
        return cached_array(self.path("tumour"))

    def tumour_voxel(self, k: int) -> tuple[int, int, int]:
        """Coordinates of the ``k``-th tumour voxel."""
        return tuple(int(v) for v in np.unravel_index(int(self.tumour[k]), self.shape))

    def read(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the image ``(bx, by, bz, 4)`` and label ``(bx, by, bz)`` inside ``box``."""
        return np.array(self.image[box]), np.array(self.label[box])


def cache_case(
    case, cache_dir: str | Path, patch_shape: tuple[int, int, int], downsample: int = 1
) -> CachedCase:
    """Load ``case`` once, downsample it by ``downsample`` per axis (:mod:`tumorseg.resample`:
    block means of the image, the most common label), crop it to its brain, clip its intensities
    (:func:`tumorseg.data.clip_intensities`), save it as .npy (atomically) in a folder of
    ``cache_dir`` named by the patch and the factor (``64x64x32-downsample2``) and return its
    :class:`CachedCase`. A complete cache of the same settings is reused."""
    from .atomic import atomic_path
    from .data import clip_intensities, load_case
    from .resample import downsample_image, downsample_label

    folder = Path(cache_dir) / ("x".join(map(str, patch_shape)) + f"-downsample{downsample}")
    cached = CachedCase(case.id, folder, (0, 0, 0), 0)
    paths = {part: cached.path(part) for part in ("image", "label", "tumour")}
    if not all(p.exists() for p in paths.values()):
        image, label = load_case(case)
        if label is None:
            from .errors import InputError

            raise InputError(case.reference, "training needs a label for every case")
        image = downsample_image(image, downsample)
        label = downsample_label(label, downsample)
        box = brain_box(image, patch_shape)
        image = clip_intensities(image[box])
        arrays = {"image": pad_to(image, patch_shape), "label": pad_to(label[box], patch_shape)}
        arrays["tumour"] = np.flatnonzero(arrays["label"])
        for part in ("tumour", "label", "image"):  # image last: its presence marks completeness
            with atomic_path(paths[part]) as tmp:
                np.save(tmp, np.ascontiguousarray(arrays[part]), allow_pickle=False)
    return CachedCase(case.id, folder, _npy_shape(paths["label"]), _npy_shape(paths["tumour"])[0])


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The shape a .npy file's header declares (the file is opened and closed at once)."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read(file)
    return tuple(int(s) for s in shape)


class PatchSampler:
    """Deterministic random training patches: element ``i`` depends only on ``(seed, i)``.

    A share ``core_share`` (default 0) of patches is centred near a random voxel of the tumour
    core, necrosis / non-enhancing or enhancing (labels 2, 3; any tumour voxel where a case has
    no core), a further share ``tumour_share`` near a random tumour voxel (the voxel lies at a
    uniformly random place in the window); the rest are uniformly random windows. Each patch is
    standardised (per channel and z-slice) and augmented. ``core_share=0`` gives the same
    patches as before it existed (one random draw decides).
    """

    def __init__(
        self,
        cases: list[CachedCase],
        patch_shape=SEED_PATCH_SHAPE,
        tumour_share=TUMOUR_SHARE,
        augmentation: Augmentation = Augmentation(),
        seed: int = 0,
        num_classes: int = 4,
        core_share: float = 0.0,
    ):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        self.cases, self.patch_shape = cases, tuple(patch_shape)
        self.tumour_share, self.augmentation = tumour_share, augmentation
        self.seed, self.num_classes, self.core_share = seed, num_classes, core_share
        self._cores: dict[str, np.ndarray] = {}

    def core(self, case: CachedCase) -> np.ndarray:
        """Flat indices of the case's core voxels (labels 2 and 3), found once."""
        if case.id not in self._cores:
            tumour = np.asarray(case.tumour)
            self._cores[case.id] = tumour[np.asarray(case.label).ravel()[tumour] >= 2]
        return self._cores[case.id]

    def corner(self, case: CachedCase, rng: np.random.Generator) -> tuple[int, int, int]:
        shape = case.shape
        if case.tumour_count:
            draw = rng.random()  # one draw: core below core_share, other tumour up to the sum
            if draw < self.core_share + self.tumour_share:
                core = self.core(case) if draw < self.core_share else ()
                voxel = (
                    np.unravel_index(int(core[rng.integers(len(core))]), shape)
                    if len(core)
                    else case.tumour_voxel(rng.integers(case.tumour_count))
                )
                return tuple(
                    int(np.clip(v - rng.integers(w), 0, s - w))
                    for v, w, s in zip(voxel, self.patch_shape, shape)
                )
        return tuple(int(rng.integers(s - w + 1)) for w, s in zip(self.patch_shape, shape))

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Patch ``index``: standardised, augmented ``x (px, py, pz, 4)``, ``y (px, py, pz, 3)``."""
        rng = np.random.default_rng([self.seed, int(index)])
        case = self.cases[int(rng.integers(len(self.cases)))]
        corner = self.corner(case, rng)
        box = tuple(slice(c, c + w) for c, w in zip(corner, self.patch_shape))
        image, label = case.read(box)
        x = standardize(image)
        y = one_hot(label, self.num_classes)
        return augment(x, y, rng, self.augmentation)


def training_dataset(
    sampler: PatchSampler,
    batch_size: int,
    start: int = 0,
    count: int | None = None,
    shard: tuple[int, int] = (0, 1),
):
    """tf.data pipeline of batches ``x (B, px, py, pz, 4)``, ``y (B, px, py, pz, 3)``.

    Element ``i`` is ``sampler(start + i)``: deterministic, and resumable at any step by choosing
    ``start``. ``shard=(k, n)`` keeps elements with ``i % n == k`` (one input pipeline of ``n``
    in distributed training). Patches are made in parallel and batches prefetched, so they are
    ready before the model asks. ``count`` patches in all before sharding (None: without end).
    """
    import tensorflow as tf

    px, py, pz = sampler.patch_shape
    x_shape, y_shape = (px, py, pz, 4), (px, py, pz, sampler.num_classes - 1)
    index, shards = shard
    stop = start + count if count is not None else 2**62
    indices = tf.data.Dataset.range(start + index, stop, shards)

    def load(i):
        x, y = tf.numpy_function(sampler, [i], (tf.float32, tf.float32), stateful=False)
        return tf.ensure_shape(x, x_shape), tf.ensure_shape(y, y_shape)

    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return (
        indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
