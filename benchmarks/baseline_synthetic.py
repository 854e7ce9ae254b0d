"""The phantom generator as it was before issue 17 (commit ac82d5b), kept to measure the faster
one against (``python -m benchmarks synthesis``): smooth fields upsampled by ``ndimage.zoom``,
every tissue map warped at every point of the box, the tumour's distances in float64, the
mixing, noise and intensity curves over the whole box, and the noise drawn from the case's own
stream. The helpers that did not change are the library's own."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tumorseg.synthetic import (
    CHANNELS,
    COMPARTMENTS,
    CONTRAST,
    DEFAULT,
    SHAPE,
    Randomisation,
    _anatomy_box,
    _erfinv,
    _log_uniform,
    _mass_effect,
    _rotation,
    _two_sided,
    draw_contrast,
    mni_anatomy,
    resolve_generator,
    thick_slices,
)


def smooth_field(shape: tuple[int, ...], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std random field of ``shape`` varying over about ``scale`` voxels (float32).

    Made at a quarter of the resolution, blurred there, and upsampled linearly: cheap and smooth.
    """
    small_shape = tuple(max(2, -(-s // 4)) for s in shape)
    small = ndimage.gaussian_filter(rng.standard_normal(small_shape).astype(np.float32), scale / 8)
    small = (small - small.mean()) / (small.std() + 1e-6)
    field = ndimage.zoom(small, [s / t for s, t in zip(shape, small_shape)], order=1)
    return field[tuple(slice(0, s) for s in shape)]


def _warp_anatomy(
    anatomy: dict,
    box: tuple[slice, ...],
    rng: np.random.Generator,
    randomisation: Randomisation = DEFAULT,
) -> dict:
    """Tissue maps ``(bx, by, bz)`` inside ``box`` after a random affine (rotation about three
    axes, scaling per axis) and a smooth deformation of random strength and scale."""
    shape = tuple(s.stop - s.start for s in box)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    centre = np.array([(s.stop - s.start - 1) / 2 for s in box], dtype=np.float32)[:, None]
    rotation = _rotation(rng.uniform(-1, 1, 3) * np.array([6.0, 6.0, 10.0]))
    scaling = np.diag(rng.uniform(0.9, 1.12, 3)).astype(np.float32)
    coords = (rotation @ scaling) @ (grid - centre) + centre
    strength = rng.uniform(*randomisation.deformation)
    scale = rng.uniform(25, 50)
    for axis in range(3):
        coords[axis] += strength * smooth_field(shape, scale, rng).ravel()
        coords[axis] += box[axis].start
    warped = {
        name: ndimage.map_coordinates(anatomy[name], coords, order=1).reshape(shape)
        for name in ("t1", "grey", "white", "brain")
    }
    # Linear interpolation commutes with sums: the CSF map needs no warp of its own.
    warped["csf"] = np.clip(warped["brain"] - warped["grey"] - warped["white"], 0, 1)
    return warped


def bias_field(
    shape: tuple[int, int, int], strength: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth multiplicative field ``(x, y, z)`` around 1: ``exp(strength * smooth field)``."""
    return np.exp(strength * smooth_field(shape, 60, rng)).astype(np.float32)


def _focus(
    tissue: dict,
    centre: np.ndarray,
    radius: float,
    rng: np.random.Generator,
    randomisation: Randomisation,
) -> tuple[tuple[slice, ...], dict[str, np.ndarray]]:
    """One tumour focus: its box and soft compartments (fractions 0..1) of edema,
    non-enhancing tumour, necrosis, cyst and enhancing tumour inside it."""
    shape = tissue["white"].shape
    reach = min(rng.uniform(1.3, 3.2), 35.0 / radius)  # edema extent along white matter, in radii
    irregularity = rng.uniform(*randomisation.irregularity)
    half = int(2.5 * reach * radius * (1 + irregularity)) + 6
    box = tuple(
        slice(max(0, int(c) - half), min(s, int(c) + half + 1)) for c, s in zip(centre, shape)
    )
    local = tuple(np.arange(s.start, s.stop, dtype=np.float32) for s in box)
    axes = radius * rng.uniform(0.7, 1.3, 3)
    offsets = [(g - c) / a for g, c, a in zip(local, centre, axes)]
    distance = np.sqrt(
        offsets[0][:, None, None] ** 2
        + offsets[1][None, :, None] ** 2
        + offsets[2][None, None, :] ** 2
    )
    box_shape = distance.shape
    coarse = np.clip(smooth_field(box_shape, max(4.0, radius * 0.8), rng), -2, 2)
    fine = np.clip(smooth_field(box_shape, max(2.0, radius * 0.3), rng), -2, 2)
    distance = distance * (1 + irregularity * (coarse + 0.5 * fine))

    edge = 0.9 / radius  # a partial-volume border about one voxel wide

    def inside(limit):
        return 1 / (1 + np.exp(np.clip((distance - limit) / edge, -30, 30)))

    tumour = inside(1.0)
    enhances = rng.random() < randomisation.enhancing_chance
    has_core = rng.random() < (0.8 if enhances else 0.3)
    core_size = rng.uniform(0.45, 0.8)
    core = inside(core_size) if has_core else np.zeros_like(tumour)
    cystic = rng.random() < randomisation.cyst_chance
    share = np.clip(smooth_field(box_shape, max(4.0, radius), rng) + rng.uniform(0.5, 1.3), 0, 1)
    share = share if enhances else 0.0
    enhancing = (tumour - core) * share
    non_enhancing = tumour - core - enhancing

    white = tissue["white"][box]
    tissue_in_box = white + tissue["grey"][box]
    spread = (1 + (reach - 1) * white) * (
        1 + 0.15 * np.clip(smooth_field(box_shape, 6, rng), -2, 2)
    )
    edema = np.clip(1 / (1 + np.exp(np.clip((distance - spread) / edge, -30, 30))) - tumour, 0, 1)
    edema *= np.clip(tissue_in_box * 1.2, 0, 1)
    zero = np.zeros_like(tumour)
    return box, {
        "edema": edema,
        "non_enhancing": non_enhancing,
        "necrosis": zero if cystic else core,
        "cyst": core if cystic else zero,
        "enhancing": enhancing,
    }


def _tumour(
    tissue: dict, rng: np.random.Generator, randomisation: Randomisation = DEFAULT
) -> dict[str, np.ndarray]:
    """Soft compartments ``(bx, by, bz)`` (fractions 0..1, summing to at most 1) of edema,
    non-enhancing tumour, necrosis, cyst and enhancing tumour: one to a few foci, the first at a
    random place in deep white matter with mass effect on the anatomy (``tissue`` changes)."""
    shape = tissue["white"].shape
    deep_white = np.flatnonzero(ndimage.binary_erosion(tissue["white"] > 0.6, iterations=4))
    points = np.array(np.unravel_index(deep_white, shape), dtype=np.float32).T
    centre = points[rng.integers(len(points))]
    radius = _log_uniform(rng, randomisation.radius)
    _mass_effect(tissue, centre, radius, rng.uniform(*randomisation.mass_effect))
    foci = [(centre, radius)]
    for _ in range(int(rng.integers(randomisation.foci[0], randomisation.foci[1] + 1)) - 1):
        distance = np.linalg.norm(points - centre, axis=1)
        near = np.flatnonzero((distance > 1.2 * radius) & (distance < 3 * radius + 12))
        pool = near if near.size else np.arange(len(points))
        foci.append((points[pool[rng.integers(pool.size)]], radius * rng.uniform(0.3, 0.7)))
    full = {name: np.zeros(shape, np.float32) for name in COMPARTMENTS}
    for focus_centre, focus_radius in foci:
        box, parts = _focus(tissue, focus_centre, focus_radius, rng, randomisation)
        for name in COMPARTMENTS:
            np.maximum(full[name][box], parts[name] * tissue["brain"][box], out=full[name][box])
    solid = sum(full[name] for name in COMPARTMENTS[1:])
    over = np.maximum(solid, 1)
    for name in COMPARTMENTS[1:]:
        full[name] /= over
    full["edema"] = np.minimum(full["edema"], 1 - np.minimum(solid, 1))
    return full


def synthesize_case(
    seed: int, index: int, randomisation: Randomisation | str = DEFAULT
) -> tuple[np.ndarray, np.ndarray]:
    """Phantom case ``index`` of dataset ``seed``, drawn with ``randomisation`` (a
    :class:`Randomisation` or a name in :data:`GENERATORS`).

    Returns:
        image: float32 (240, 240, 155, 4) in BraTS voxel order (L, P, S), channels FLAIR, T1,
            T1gd, T2, integer-valued like scanner data, zero outside the brain.
        label: uint8 (240, 240, 155): 0 background, 1 edema, 2 non-enhancing, 3 enhancing.
    """
    _, randomisation = resolve_generator(randomisation)
    rng = np.random.default_rng([seed, index])
    anatomy = mni_anatomy()
    box = _anatomy_box(anatomy)
    tissue = _warp_anatomy(anatomy, box, rng, randomisation)
    tumour = _tumour(tissue, rng, randomisation)

    lesion = sum(tumour[name] for name in COMPARTMENTS)
    normal = np.clip(1 - lesion, 0, 1)
    # Vessels and dura: a random share of the sulcal CSF, in thin smooth patches.
    vessel_share = rng.uniform(*randomisation.vessels)
    vessel = (
        tissue["csf"]
        * normal
        * (smooth_field(normal.shape, 2, rng) > np.sqrt(2) * _erfinv(1 - 2 * vessel_share))
    )
    fractions = [
        tissue["csf"] * normal - vessel,
        tissue["grey"] * normal,
        tissue["white"] * normal,
        tumour["edema"],
        tumour["non_enhancing"],
        tumour["necrosis"],
        tumour["enhancing"],
        tumour["cyst"],
        vessel,
    ]
    contrast = draw_contrast(rng, randomisation)
    # The template's own T1 texture (deep nuclei, cortex detail) beyond the tissue mix.
    t1_mix = sum(f * c for f, c in zip(fractions[:3], CONTRAST[:3, 1]))
    detail = (tissue["t1"] - t1_mix) * normal
    detail_weight = (0.4, 1.0, 0.9, -0.4)
    brain = tissue["brain"]
    box_shape = brain.shape
    texture = 1 + (
        rng.uniform(*randomisation.texture) * smooth_field(box_shape, 2, rng) * normal
        + rng.uniform(*randomisation.tumour_texture)
        * smooth_field(box_shape, 3, rng)
        * (lesion > 0.01)
    )

    image = np.zeros(SHAPE + (len(CHANNELS),), np.float32)
    for channel in range(len(CHANNELS)):
        signal = sum(f * c for f, c in zip(fractions, contrast[:, channel]))
        signal = (signal + detail_weight[channel] * detail) * texture
        sigma = rng.uniform(*randomisation.blur, 3)
        if sigma.max() > 0.2:
            signal = ndimage.gaussian_filter(signal, sigma)
        thick = rng.random() < randomisation.thick_slice_chance  # every draw made either way
        axis = 2 if rng.random() < 0.6 else int(rng.integers(2))
        thickness = int(
            rng.integers(randomisation.slice_thickness[0], randomisation.slice_thickness[1] + 1)
        )
        phase = int(rng.integers(thickness))
        if thick:
            signal = thick_slices(signal, axis, thickness, phase)
        signal = signal * bias_field(box_shape, rng.uniform(*randomisation.bias), rng)
        noise = rng.uniform(*randomisation.noise)
        noisy = np.hypot(
            signal + noise * rng.standard_normal(box_shape, np.float32),
            noise * rng.standard_normal(box_shape, np.float32),
        )
        noisy = noisy ** float(_two_sided(rng, randomisation.gamma))
        scale = _log_uniform(rng, randomisation.scale)
        image[box + (channel,)] = np.round(noisy * brain * scale) * (brain > 0.5)

    classes = np.stack(
        [
            normal,
            tumour["edema"],
            tumour["non_enhancing"] + tumour["necrosis"] + tumour["cyst"],
            tumour["enhancing"],
        ]
    )
    label = np.zeros(SHAPE, np.uint8)
    label[box] = np.argmax(classes, axis=0).astype(np.uint8) * (brain > 0.5)
    return image, label
