"""The embedded default dataset: brain-tumour phantoms built from the MNI152 anatomy, randomised
in the spirit of SynthSeg (Billot et al., Medical Image Analysis 2023): a network that sees
random contrasts, resolutions, artefacts and shapes around fixed label rules learns the rules,
not one scanner's look.

nilearn ships one anatomy, the MNI152 (ICBM 2009a symmetric, 1 mm) T1 template with grey- and
white-matter probability maps, inside its package (no download). Each phantom case is made so:

1. anatomy: the template in a BraTS-sized (240, 240, 155) grid, in BraTS voxel order (first axis
   toward the patient's left, second toward the back: ``nibabel.aff2axcodes`` L, P, S), warped
   by a random affine (rotation about three axes, scaling per axis) and a random smooth
   deformation of random strength: one template, many brains;
2. tumour: one to a few foci in white matter, each with a random lobulated, irregular border, an
   enhancing rim or solid enhancing mass (or none), a necrotic or cystic core (or none), edema
   that spreads along white matter, and mass effect that pushes the anatomy nearby outward;
3. contrast: each tissue's intensity in each of FLAIR, T1, T1gd, T2 is drawn at random around a
   radiological reference while the orderings that define the sequence hold (e.g. on T2 white <
   grey < edema < CSF; on T1gd white < enhancing); each voxel mixes its tissues (partial volume),
   with fine texture in the brain and heterogeneity in the tumour;
4. artefacts, per sequence: blur, thick slices resampled to 1 mm, a smooth bias field, Rician
   noise, a gamma curve and a random intensity scale;
5. storage like BraTS data in the MSD Task01 layout: skull-stripped, zero outside the brain,
   float32 (240, 240, 155, 4) integer-valued images, uint8 labels, an affine diag(-1, -1, 1)
   with an offset (MNI coordinates) that says L, P, S.

Every draw comes from ``numpy.random.default_rng([seed, index])`` (the noise of sequence ``c``
from ``[seed, index, 1 + c]``): the same seed gives the same bytes, and case ``index`` of seed
``seed`` depends on nothing else. :data:`DEFAULT` holds the
training ranges; :data:`SHIFTED` draws contrasts, artefacts and morphology outside them (the
benchmark's stand-in for an unseen scanner and unseen tumours).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from .atomic import atomic_path
from .data import CHANNELS, LABELS, save_nifti
from .errors import InputError

SHAPE = (240, 240, 155)
AXCODES = ("L", "P", "S")  # BraTS voxel order
_MNI = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
# MNI152 1 mm is (197, 233, 189) with the brain in z 0..154: pad x and y to 240, keep z 0..154.
_PAD = ((21, 22), (3, 4), (0, 0))

# Reference intensity of each tissue in FLAIR, T1, T1gd, T2 (rows in TISSUES order).
TISSUES = (
    "csf",
    "grey",
    "white",
    "edema",
    "non_enhancing",
    "necrosis",
    "enhancing",
    "cyst",
    "vessel",
)
CONTRAST = np.array(
    [
        # FLAIR  T1    T1gd  T2
        [0.10, 0.20, 0.22, 1.00],  # CSF: dark on FLAIR (suppressed fluid), bright on T2
        [0.62, 0.55, 0.57, 0.58],  # grey matter
        [0.50, 0.80, 0.80, 0.40],  # white matter
        [0.98, 0.45, 0.47, 0.88],  # edema: bright on FLAIR and T2
        [0.82, 0.40, 0.48, 0.76],  # non-enhancing solid tumour
        [0.55, 0.18, 0.20, 0.96],  # necrosis: dark on T1/T1gd, fluid-bright on T2
        [0.76, 0.50, 1.25, 0.66],  # enhancing tumour: bright on T1gd
        [0.30, 0.15, 0.17, 1.05],  # cyst: fluid, dark on T1/T1gd, bright on T2, partly suppressed
        [0.20, 0.35, 1.20, 0.25],  # vessels and dura in the sulci: bright on T1gd only (not tumour)
    ],
    dtype=np.float32,
)

# Orderings every drawn contrast keeps, per sequence: each chain ascends (tissue names).
ORDERINGS = {
    "FLAIR": (
        ("csf", "white", "grey", "edema"),
        ("white", "non_enhancing"),
        ("csf", "cyst", "edema"),
        ("csf", "necrosis"),
    ),
    "T1": (
        ("csf", "grey", "white"),
        ("necrosis", "grey"),
        ("cyst", "grey"),
        ("edema", "white"),
        ("non_enhancing", "white"),
        ("enhancing", "white"),
    ),
    "T1gd": (
        ("csf", "grey", "white", "enhancing"),
        ("necrosis", "grey"),
        ("cyst", "grey"),
        ("edema", "white"),
        ("non_enhancing", "white"),
        ("non_enhancing", "enhancing"),
        ("white", "vessel"),
    ),
    "T2": (
        ("white", "grey", "edema", "csf"),
        ("white", "non_enhancing"),
        ("grey", "necrosis"),
        ("grey", "cyst"),
        ("vessel", "grey"),
    ),
}


# The same rules widened to cover the tissue ratios measured on real scans (README, "Real tissues
# vs phantoms"): grey matter may be as dark as white matter on FLAIR, edema is less bright on
# FLAIR and about as dark as grey matter on T1. Randomisation draws around these as around CONTRAST.
WIDENED_CONTRAST = CONTRAST.copy()
WIDENED_CONTRAST[TISSUES.index("grey"), 0] = 0.55  # FLAIR: 1.1x white (not 1.24x)
WIDENED_CONTRAST[TISSUES.index("edema"), 0] = 0.80  # FLAIR: 1.6x white (not 1.96x)
WIDENED_CONTRAST[TISSUES.index("edema"), 1] = 0.56  # T1: 0.7x white (not 0.56x), as grey
WIDENED_ORDERINGS = ORDERINGS | {
    "FLAIR": (
        ("csf", "white", "edema"),
        ("csf", "grey", "edema"),
        *ORDERINGS["FLAIR"][1:],
    ),
}


@dataclass(frozen=True)
class ContrastRules:
    """What every drawn contrast follows: the reference intensity of each tissue per sequence
    ``(len(TISSUES), 4)`` (FLAIR, T1, T1gd, T2) and, per sequence, chains of tissue names whose
    intensities ascend."""

    reference: np.ndarray
    orderings: dict[str, tuple[tuple[str, ...], ...]]


CONTRAST_RULES = {
    "textbook": ContrastRules(CONTRAST, ORDERINGS),
    "widened": ContrastRules(WIDENED_CONTRAST, WIDENED_ORDERINGS),
}


@dataclass(frozen=True)
class Randomisation:
    """The ranges the generator draws from. ``(low, high)`` pairs are uniform unless said;
    a "two-sided log" range gives a factor ``exp(s * u)``, ``u`` uniform in it, ``s`` = +-1."""

    contrast_rules: str = "textbook"  # the reference and orderings (CONTRAST_RULES)
    contrast: tuple[float, float] = (0.0, 0.35)  # per tissue and sequence, two-sided log
    gamma: tuple[float, float] = (0.0, 0.35)  # exponent per sequence, two-sided log
    bias: tuple[float, float] = (0.0, 0.3)  # std of the log of the smooth bias field
    noise: tuple[float, float] = (0.005, 0.05)  # Rician sigma (white matter on T1 is 0.8)
    blur: tuple[float, float] = (0.0, 1.0)  # Gaussian sigma per axis, voxels
    thick_slice_chance: float = 0.3  # per sequence
    slice_thickness: tuple[int, int] = (2, 5)  # voxels, inclusive
    texture: tuple[float, float] = (0.0, 0.08)  # fine texture of the brain (relative)
    tumour_texture: tuple[float, float] = (0.03, 0.15)  # heterogeneity inside the tumour
    # Main focus, mm, log-uniform. From 3 mm, half the tumours were under 8.5 mm (a core under
    # 3 cm3); trained on those, the model transferred worse (README, "Measured").
    radius: tuple[float, float] = (8.0, 24.0)
    foci: tuple[int, int] = (1, 3)  # inclusive; the first is the largest
    irregularity: tuple[float, float] = (0.1, 0.35)  # lobulation of the border
    cyst_chance: float = 0.2  # the core is a cyst instead of necrosis
    enhancing_chance: float = 0.85  # the rest have no enhancing tumour (low grade)
    mass_effect: tuple[float, float] = (0.0, 0.4)  # push at the tumour's border, in radii
    vessels: tuple[float, float] = (0.0, 0.6)  # share of sulcal CSF bright on T1gd (distractor)
    deformation: tuple[float, float] = (1.0, 5.0)  # smooth warp of the anatomy, mm
    scale: tuple[float, float] = (100.0, 5000.0)  # per-sequence intensity scale, log-uniform

    def __post_init__(self):
        if self.contrast_rules not in CONTRAST_RULES:
            known = list(CONTRAST_RULES)
            raise ValueError(f"unknown contrast_rules {self.contrast_rules!r}; choose from {known}")

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT = Randomisation()
# Outside every training range: other contrasts, stronger artefacts, larger irregular tumours.
SHIFTED = Randomisation(
    contrast=(0.35, 0.5),
    gamma=(0.35, 0.5),
    bias=(0.3, 0.4),
    noise=(0.05, 0.07),
    blur=(1.0, 1.3),
    thick_slice_chance=0.4,
    slice_thickness=(5, 6),
    texture=(0.08, 0.12),
    tumour_texture=(0.15, 0.25),
    radius=(24.0, 32.0),
    foci=(1, 3),
    irregularity=(0.35, 0.5),
    cyst_chance=0.5,
    enhancing_chance=0.85,
    mass_effect=(0.4, 0.5),
    vessels=(0.6, 0.8),
    deformation=(5.0, 6.0),
    scale=(5000.0, 12000.0),
)
GENERATORS = {"default": DEFAULT, "shifted": SHIFTED}
# Every randomisation at a fixed, quiet value: the figure changes one at a time from here.
FIXED = Randomisation(
    contrast=(0.0, 0.0),
    gamma=(0.0, 0.0),
    bias=(0.0, 0.0),
    noise=(0.01, 0.01),
    blur=(0.0, 0.0),
    thick_slice_chance=0.0,
    slice_thickness=(5, 5),
    texture=(0.0, 0.0),
    tumour_texture=(0.0, 0.0),
    radius=(14.0, 14.0),
    foci=(1, 1),
    irregularity=(0.1, 0.1),
    cyst_chance=0.0,
    enhancing_chance=1.0,
    mass_effect=(0.0, 0.0),
    vessels=(0.0, 0.0),
    deformation=(0.0, 0.0),
    scale=(1000.0, 1000.0),
)
# What the figure shows, one randomisation at a time (name -> changes to FIXED).
SHOWCASE = {
    "fixed": {},
    "contrast": {"contrast": (0.35, 0.35)},
    "gamma": {"gamma": (0.35, 0.35)},
    "bias field": {"bias": (0.3, 0.3)},
    "noise": {"noise": (0.05, 0.05)},
    "blur": {"blur": (1.0, 1.0)},
    "thick slices": {"thick_slice_chance": 1.0},
    "texture": {"texture": (0.08, 0.08), "tumour_texture": (0.15, 0.15)},
    "deformation": {"deformation": (5.0, 5.0)},
    "mass effect": {"mass_effect": (0.4, 0.4)},
    "irregular border": {"irregularity": (0.35, 0.35)},
    "several foci": {"foci": (3, 3)},
    "cystic core": {"cyst_chance": 1.0},
    "no enhancement": {"enhancing_chance": 0.0},
    "vessels (T1gd)": {"vessels": (0.6, 0.6)},
    "shifted (bench)": None,
}


def _two_sided(rng: np.random.Generator, bounds: tuple[float, float], size=None) -> np.ndarray:
    """``exp(+-u)`` with ``u`` uniform in ``bounds`` and a random sign: a factor around 1."""
    sign = rng.choice([-1.0, 1.0], size=size)
    return np.exp(sign * rng.uniform(*bounds, size=size))


def _erfinv(p: float) -> float:
    from scipy.special import erfinv

    return float(erfinv(np.clip(p, -0.999999, 0.999999)))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def draw_contrast(rng: np.random.Generator, randomisation: Randomisation = DEFAULT) -> np.ndarray:
    """Tissue intensities ``(len(TISSUES), 4)`` float32: the reference of the randomisation's
    :data:`CONTRAST_RULES` times a random factor per tissue and sequence, then reordered within
    each chain of its orderings so every ordering holds."""
    rules = CONTRAST_RULES[randomisation.contrast_rules]
    contrast = rules.reference * _two_sided(rng, randomisation.contrast, rules.reference.shape)
    index = {name: i for i, name in enumerate(TISSUES)}
    for channel, sequence in enumerate(CHANNELS):
        column = contrast[:, channel]
        for _ in range(len(TISSUES)):  # sorting each chain in turn settles a consistent order
            settled = True
            for chain in rules.orderings[sequence]:
                rows = [index[name] for name in chain]
                values = np.sort(column[rows])
                if not np.array_equal(values, column[rows]):
                    column[rows], settled = values, False
            if settled:
                break
    return contrast.astype(np.float32)


def orderings_hold(contrast: np.ndarray, randomisation: Randomisation = DEFAULT) -> bool:
    """True when ``contrast`` ``(len(TISSUES), 4)`` keeps every ordering of the randomisation's
    :data:`CONTRAST_RULES`."""
    orderings = CONTRAST_RULES[randomisation.contrast_rules].orderings
    index = {name: i for i, name in enumerate(TISSUES)}
    return all(
        np.all(np.diff(contrast[[index[n] for n in chain], channel]) >= 0)
        for channel, sequence in enumerate(CHANNELS)
        for chain in orderings[sequence]
    )


def brats_affine(affine: np.ndarray, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """The affine of the same grid with its first two axes reversed (R, A, S -> L, P, S)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [shape[0] - 1, shape[1] - 1]
    return affine @ flip


@lru_cache(maxsize=1)
def mni_anatomy() -> dict[str, np.ndarray]:
    """The MNI152 T1 (0..1) and tissue probabilities (grey, white, csf, brain) on the
    (240, 240, 155) grid in BraTS voxel order (L, P, S), float32, and the grid's affine."""
    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    maps = {}
    for name in ("t1", "gm", "wm"):
        img = nib.load(folder / _MNI.format(name))
        data = np.asarray(img.dataobj, dtype=np.float32)[:, :, : SHAPE[2]] / 255.0
        maps[name] = np.ascontiguousarray(np.pad(data, _PAD)[::-1, ::-1])  # R, A -> L, P
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([_PAD[0][0], _PAD[1][0], 0])
    brain = (maps["t1"] > 0).astype(np.float32)
    return {
        "t1": maps["t1"],
        "grey": maps["gm"],
        "white": maps["wm"],
        "csf": np.clip(brain - maps["gm"] - maps["wm"], 0, 1),
        "brain": brain,
        "affine": brats_affine(affine),
    }


def smooth_field(shape: tuple[int, ...], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std random field of ``shape`` varying over about ``scale`` voxels (float32).

    Made at a quarter of the resolution, blurred there, and upsampled linearly: cheap and smooth.
    """
    small_shape = tuple(max(2, -(-s // 4)) for s in shape)
    small = ndimage.gaussian_filter(rng.standard_normal(small_shape).astype(np.float32), scale / 8)
    small = (small - small.mean()) / (small.std() + 1e-6)
    return upsample_linear(small, shape)


def _linear_weights(size: int, small: int) -> np.ndarray:
    """``(size, small)`` float64: row ``i`` interpolates point ``i * (small - 1) / (size - 1)``
    of ``small`` samples linearly (``ndimage.zoom``'s grid for order 1)."""
    position = np.arange(size) * ((small - 1) / (size - 1)) if size > 1 else np.zeros(1)
    low = np.minimum(np.floor(position).astype(np.intp), small - 2)
    weights = np.zeros((size, small))
    weights[np.arange(size), low] = 1 - (position - low)
    weights[np.arange(size), low + 1] = position - low
    return weights


def upsample_linear(small: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``small`` ``(a, b, c)`` (each >= 2) resampled linearly to ``shape`` float32, corners on
    corners: ``ndimage.zoom(small, order=1)``'s values (to float32 rounding), as three matrix
    products, about ten times faster."""
    wx, wy, wz = (_linear_weights(s, t).astype(np.float32) for s, t in zip(shape, small.shape))
    out = np.tensordot(wx, small.astype(np.float32), axes=(1, 0))  # (x, b, c)
    out = np.matmul(wy, out)  # (x, y, c)
    return np.matmul(out, wz.T)  # (x, y, z)


def _anatomy_box(anatomy: dict, margin: int = 24) -> tuple[slice, slice, slice]:
    """The template brain's bounding box in the grid, grown by ``margin`` voxels."""
    from .patches import bounding_box

    return bounding_box(anatomy["brain"], margin)


def _reach(maps: list[np.ndarray]) -> np.ndarray:
    """Voxels within one voxel (26-neighbourhood) of a non-zero voxel of any of ``maps``."""
    return ndimage.binary_dilation(
        np.logical_or.reduce([m > 0 for m in maps]), np.ones((3, 3, 3), bool)
    )


@lru_cache(maxsize=1)
def _template_reach() -> np.ndarray:
    """:func:`_reach` of the template's maps: bool (240, 240, 155)."""
    anatomy = mni_anatomy()
    return _reach([anatomy[name] for name in WARPED])


WARPED = ("t1", "grey", "white", "brain")  # the maps a warp moves (CSF follows from them)


def _sample_near(
    maps: dict[str, np.ndarray], coords: np.ndarray, reach: np.ndarray, mode: str = "constant"
) -> dict[str, np.ndarray]:
    """``ndimage.map_coordinates(map, coords, order=1, mode=mode)`` of each map (float32,
    ``(N,)`` for ``coords`` ``(3, N)``), computed only at points whose nearest voxel (clamped to
    the grid) is in ``reach`` (:func:`_reach` of the maps): the others interpolate zeros."""
    flat = np.zeros(coords.shape[1], np.intp)
    for axis, n in enumerate(reach.shape):
        nearest = np.clip(coords[axis] + np.float32(0.5), 0, n - 1).astype(np.intp)
        flat = flat * n + nearest
    near = reach.reshape(-1)[flat]
    points = coords[:, near]
    sampled = {}
    for name, volume in maps.items():
        values = np.zeros(coords.shape[1], np.float32)
        values[near] = ndimage.map_coordinates(volume, points, order=1, mode=mode)
        sampled[name] = values
    return sampled


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """3x3 rotation about the three axes by ``angles_deg`` (degrees)."""
    a, b, c = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


def _warp_anatomy(
    anatomy: dict,
    box: tuple[slice, ...],
    rng: np.random.Generator,
    randomisation: Randomisation = DEFAULT,
) -> dict:
    """Tissue maps ``(bx, by, bz)`` inside ``box`` after a random affine (rotation about three
    axes, scaling per axis) and a smooth deformation of random strength and scale."""
    shape = tuple(s.stop - s.start for s in box)
    centre = np.array([(s.stop - s.start - 1) / 2 for s in box], dtype=np.float32)
    rotation = _rotation(rng.uniform(-1, 1, 3) * np.array([6.0, 6.0, 10.0]))
    scaling = np.diag(rng.uniform(0.9, 1.12, 3)).astype(np.float32)
    matrix = rotation @ scaling
    strength = rng.uniform(*randomisation.deformation)
    scale = rng.uniform(25, 50)
    # Each source coordinate is separable before the deformation: three broadcast sums.
    grid = [
        (np.arange(n, dtype=np.float32) - c).reshape([-1 if a == axis else 1 for a in range(3)])
        for axis, (n, c) in enumerate(zip(shape, centre))
    ]
    coords = np.empty((3, int(np.prod(shape))), np.float32)
    for axis in range(3):
        source = matrix[axis, 0] * grid[0] + matrix[axis, 1] * grid[1] + matrix[axis, 2] * grid[2]
        source = source + (centre[axis] + box[axis].start)
        source += np.float32(strength) * smooth_field(shape, scale, rng)
        coords[axis] = source.reshape(-1)
    # Points far from the template's tissue (about two thirds of the box) are skipped.
    sampled = _sample_near({name: anatomy[name] for name in WARPED}, coords, _template_reach())
    warped = {name: values.reshape(shape) for name, values in sampled.items()}
    # Linear interpolation commutes with sums: the CSF map needs no warp of its own.
    warped["csf"] = np.clip(warped["brain"] - warped["grey"] - warped["white"], 0, 1)
    return warped


def bias_field(
    shape: tuple[int, int, int],
    strength: float,
    rng: np.random.Generator,
    where: np.ndarray | None = None,
) -> np.ndarray:
    """A smooth multiplicative field ``(x, y, z)`` around 1: ``exp(strength * smooth field)``;
    only its values at the flat indices ``where`` (1-D), if given."""
    field = smooth_field(shape, 60, rng)
    return np.exp(strength * (field if where is None else field.reshape(-1)[where])).astype(
        np.float32
    )


def thick_slices(volume: np.ndarray, axis: int, thickness: int, phase: int) -> np.ndarray:
    """``volume`` as if acquired in slices ``thickness`` voxels thick along ``axis`` (each slice
    the mean of its voxels, starting at ``phase``) and resampled linearly to 1 mm."""
    n = volume.shape[axis]
    mean = ndimage.uniform_filter1d(volume, thickness, axis=axis, mode="nearest")
    centres = np.arange(phase % thickness, n, thickness)
    samples = np.take(mean, centres, axis=axis)
    position = np.clip((np.arange(n) - centres[0]) / thickness, 0, len(centres) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(centres) - 1)
    weight = (position - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
    return (
        np.take(samples, low, axis=axis) * (1 - weight) + np.take(samples, high, axis=axis) * weight
    )


def _mass_effect(tissue: dict, centre: np.ndarray, radius: float, strength: float) -> None:
    """Push the anatomy around ``centre`` outward in place: inside ``radius`` the tissue is
    stretched by ``1 / (1 - strength)``; beyond it the push fades over about one radius."""
    if strength <= 0:
        return
    shape = tissue["brain"].shape
    half = int(3 * radius) + 4
    box = tuple(
        slice(max(0, int(c) - half), min(s, int(c) + half + 1)) for c, s in zip(centre, shape)
    )
    local = np.indices(tuple(s.stop - s.start for s in box), dtype=np.float32)
    offset = (
        local
        + np.array([s.start for s in box], np.float32)[:, None, None, None]
        - centre[:, None, None, None]
    )
    r = np.sqrt((offset**2).sum(axis=0)) + 1e-6
    push = (
        strength
        * radius
        * np.where(r < radius, r / radius, np.exp(-(((r - radius) / radius) ** 2)))
    )
    coords = local - push * offset / r
    maps = {name: tissue[name][box] for name in WARPED}
    sampled = _sample_near(maps, coords.reshape(3, -1), _reach(list(maps.values())), "nearest")
    for name, values in sampled.items():
        tissue[name][box] = values.reshape(r.shape)
    tissue["csf"][box] = np.clip(
        tissue["brain"][box] - tissue["grey"][box] - tissue["white"][box], 0, 1
    )


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
    axes = (radius * rng.uniform(0.7, 1.3, 3)).astype(np.float32)
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


COMPARTMENTS = ("edema", "non_enhancing", "necrosis", "cyst", "enhancing")


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


def resolve_generator(generator: str | Randomisation) -> tuple[str, Randomisation]:
    """``(name, ranges)`` of a name in :data:`GENERATORS` or of a :class:`Randomisation`
    (named "custom")."""
    if isinstance(generator, Randomisation):
        return "custom", generator
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; choose from {list(GENERATORS)}")
    return generator, GENERATORS[generator]


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
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the smooth fields' small matrix products gain nothing from more, and
    # threads that wait for busy cores (other workers) cost several times the work.
    with threadpool_limits(1, user_api="blas"):
        return _synthesize(seed, index, resolve_generator(randomisation)[1])


def _synthesize(
    seed: int, index: int, randomisation: Randomisation
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    anatomy = mni_anatomy()
    box = _anatomy_box(anatomy)
    tissue = _warp_anatomy(anatomy, box, rng, randomisation)
    tumour = _tumour(tissue, rng, randomisation)

    lesion = sum(tumour[name] for name in COMPARTMENTS)
    normal = np.clip(1 - lesion, 0, 1)
    brain = tissue["brain"]
    box_shape = brain.shape
    # Tissue is non-zero only here (the grey-matter map reaches a little beyond the brain mask):
    # the mixing works on these voxels' values only, 1-D, then goes back into the box.
    support = np.flatnonzero((brain > 0) | (tissue["grey"] > 0) | (tissue["white"] > 0))

    def on_support(volume):
        return volume.reshape(-1)[support]

    normal_s = on_support(normal)
    # Vessels and dura: a random share of the sulcal CSF, in thin smooth patches.
    vessel_share = rng.uniform(*randomisation.vessels)
    vessel = (
        on_support(tissue["csf"])
        * normal_s
        * (on_support(smooth_field(box_shape, 2, rng)) > np.sqrt(2) * _erfinv(1 - 2 * vessel_share))
    )
    fractions = [
        on_support(tissue["csf"]) * normal_s - vessel,
        on_support(tissue["grey"]) * normal_s,
        on_support(tissue["white"]) * normal_s,
        *(
            on_support(tumour[name])
            for name in ("edema", "non_enhancing", "necrosis", "enhancing", "cyst")
        ),
        vessel,
    ]
    contrast = draw_contrast(rng, randomisation)
    # The template's own T1 texture (deep nuclei, cortex detail) beyond the tissue mix's.
    reference = CONTRAST_RULES[randomisation.contrast_rules].reference
    t1_mix = sum(f * c for f, c in zip(fractions[:3], reference[:3, 1]))
    detail = (on_support(tissue["t1"]) - t1_mix) * normal_s
    detail_weight = (0.4, 1.0, 0.9, -0.4)
    texture = 1 + (
        rng.uniform(*randomisation.texture) * on_support(smooth_field(box_shape, 2, rng)) * normal_s
        + rng.uniform(*randomisation.tumour_texture)
        * on_support(smooth_field(box_shape, 3, rng))
        * (on_support(lesion) > 0.01)
    )
    # Only brain voxels above one half are stored: noise and intensity curves work on them.
    stored = np.flatnonzero(brain > 0.5)
    brain_stored = brain.reshape(-1)[stored]

    image = np.zeros(SHAPE + (len(CHANNELS),), np.float32)
    for channel in range(len(CHANNELS)):
        signal = np.zeros(box_shape, np.float32)
        signal.reshape(-1)[support] = (
            sum(f * c for f, c in zip(fractions, contrast[:, channel]))
            + detail_weight[channel] * detail
        ) * texture
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
        signal = signal.reshape(-1)[stored] * bias_field(
            box_shape, rng.uniform(*randomisation.bias), rng, stored
        )
        noise = rng.uniform(*randomisation.noise)
        # Rician noise on the stored voxels only, from a stream of its own per sequence.
        real, imaginary = noise * np.random.default_rng([seed, index, 1 + channel]).standard_normal(
            (2, signal.size), np.float32
        )
        noisy = np.hypot(signal + real, imaginary)
        noisy = noisy ** float(_two_sided(rng, randomisation.gamma))
        scale = _log_uniform(rng, randomisation.scale)
        values = np.zeros(box_shape, np.float32)
        values.reshape(-1)[stored] = np.round(noisy * brain_stored * scale)
        image[box + (channel,)] = values

    classes = [
        normal,
        tumour["edema"],
        tumour["non_enhancing"] + tumour["necrosis"] + tumour["cyst"],
        tumour["enhancing"],
    ]
    label = np.zeros(SHAPE, np.uint8)
    label[box] = _argmax(classes) * (brain > 0.5)
    return image, label


def _argmax(maps: list[np.ndarray]) -> np.ndarray:
    """``np.argmax(np.stack(maps), axis=0)`` as uint8 (the first of equal maxima), without the
    stack: several times faster on a volume."""
    best, index = maps[0].copy(), np.zeros(maps[0].shape, np.uint8)
    for value, candidate in enumerate(maps[1:], start=1):
        better = candidate > best
        index[better] = value
        np.maximum(best, candidate, out=best)
    return index


def dataset_json(case_ids: list[str], description: str) -> dict:
    """The MSD Task01 ``dataset.json`` for training cases ``case_ids``."""
    return {
        "name": "BRATS",
        "description": description,
        "reference": "tumorseg synthetic phantoms built from the MNI152 2009a template (nilearn)",
        "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "numTraining": len(case_ids),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in case_ids
        ],
        "test": [],
    }


def write_dataset(
    out: str | os.PathLike,
    cases: int = 24,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    generator: str | Randomisation = "default",
) -> list[str]:
    """Write ``cases`` phantom cases in the MSD Task01 layout under ``out``; return their ids.

    ``generator`` names the ranges in :data:`GENERATORS` ("default" for training, "shifted" for
    the benchmark) or is a :class:`Randomisation` ("custom"); ``dataset.json`` records the
    ranges, and a folder of other ranges is refused. The progress bar shows on a terminal
    (tqdm's rule); ``progress=False`` hides it always.

    Cases are made in ``workers`` processes (default: :func:`default_workers`).
    ``dataset.json`` is written first and each file atomically; complete cases of the same seed
    and ranges are kept, so an interrupted run resumes (and a folder of another seed is refused,
    interrupted or not).
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    name, randomisation = resolve_generator(generator)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    out = Path(out)
    _check_same_dataset(out, seed, name, randomisation)
    ids = [f"BRATS_{i + 1:03d}" for i in range(cases)]
    # The manifest first: an interrupted folder still says which seed and ranges it holds.
    with atomic_path(out / "dataset.json") as tmp:
        description = f"tumorseg synthetic phantoms, seed {seed}, {name} generator"
        manifest = dataset_json(ids, description) | {
            "seed": seed,
            "generator": name,
            "randomisation": _ranges(randomisation),
        }
        tmp.write_text(json.dumps(manifest, indent=2))
    todo = [
        (out, seed, index, case_id, randomisation)
        for index, case_id in enumerate(ids)
        if not all(
            (out / folder / f"{case_id}.nii.gz").exists() for folder in ("imagesTr", "labelsTr")
        )
    ]
    workers = min(workers or default_workers(), max(len(todo), 1))
    bar = tqdm(
        total=cases,
        initial=cases - len(todo),
        desc="synth",
        unit="case",
        disable=None if progress else True,
    )
    with bar:
        if workers == 1:
            for job in todo:
                _write_case(*job)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_write_case, *zip(*todo)):
                    bar.update()
    return ids


WORKER_MEMORY = 1.5e9  # bytes per worker: measured peak resident 1.0-1.06 GB, writing included


def default_workers(cores: int | None = None, available: float | None = None) -> int:
    """Processes for :func:`write_dataset`: one per core (``os.cpu_count()``), but no more than
    the available memory (bytes; MemAvailable of /proc/meminfo) holds at :data:`WORKER_MEMORY`
    each; at least one."""
    cores = cores or os.cpu_count() or 1
    available = _available_memory() if available is None else available
    if available is None:
        return cores
    return max(1, min(cores, int(available // WORKER_MEMORY)))


def _available_memory() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            return next(
                int(line.split()[1]) * 1024.0
                for line in meminfo
                if line.startswith("MemAvailable:")
            )
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _ranges(randomisation: Randomisation) -> dict:
    """The ranges as JSON gives them back (tuples as lists)."""
    return json.loads(json.dumps(randomisation.to_dict()))


def _check_same_dataset(out: Path, seed: int, generator: str, randomisation: Randomisation) -> None:
    manifest = out / "dataset.json"
    if manifest.exists():
        try:
            values = json.loads(manifest.read_text())
            previous = (
                values.get("seed"),
                values.get("generator", "default"),
                values.get("randomisation"),
            )
        except (ValueError, AttributeError):
            raise InputError(manifest, "not a JSON dataset description") from None
        if previous[0] != seed:
            raise InputError(
                manifest,
                f"holds a dataset of seed {previous[0]}, not {seed}: choose another --out folder",
            )
        if previous[1] != generator:
            raise InputError(
                manifest,
                f"holds a dataset of the {previous[1]} generator, not "
                f"{generator}: choose another --out folder",
            )
        recorded = previous[2]
        if isinstance(recorded, dict):  # written before rule sets were recorded: the textbook's
            recorded = {"contrast_rules": "textbook"} | recorded
        if recorded != _ranges(randomisation):  # None: written before ranges were recorded
            raise InputError(
                manifest,
                f"holds a dataset of other {generator} generator ranges "
                f"(an earlier version?): delete the folder or choose "
                f"another --out folder",
            )


def _write_case(
    out: Path, seed: int, index: int, case_id: str, randomisation: Randomisation
) -> None:
    image, label = synthesize_case(seed, index, randomisation)
    affine = mni_anatomy()["affine"]
    save_nifti(label, out / "labelsTr" / f"{case_id}.nii.gz", _reference(affine, np.uint8))
    save_nifti(image, out / "imagesTr" / f"{case_id}.nii.gz", _reference(affine, np.float32))


def _reference(affine: np.ndarray, dtype) -> object:
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((1, 1, 1), dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img
