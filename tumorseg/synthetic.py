"""The embedded default dataset: brain-tumour phantoms built from the MNI152 anatomy.

nilearn ships the MNI152 (ICBM 2009a, 1 mm) T1 template and grey/white-matter probability maps
inside its package, so no download is needed. Each phantom case is made in five steps:

1. the anatomy, placed in a BraTS-sized (240, 240, 155) grid, is warped by a random affine and a
   random smooth deformation;
2. a tumour is seeded in white matter at a random place with a random, lobulated shape: an
   enhancing rim (or a solid enhancing mass) around a non-enhancing / necrotic core, and edema
   that spreads mostly through white matter;
3. each voxel is a mixture of tissues (partial volume at every border), and each of FLAIR, T1,
   T1gd and T2 gives each tissue a radiologically plausible intensity: edema bright on FLAIR and
   T2, enhancing tumour bright on T1gd, necrosis dark on T1 and T1gd and bright on T2;
4. a smooth bias field, Rician noise and a random intensity scale per sequence;
5. the skull-stripped image is written like MSD Task01: float32 (240, 240, 155, 4), uint8 labels.

The same seed gives the same bytes. Case ``i`` of seed ``s`` depends on nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from .data import CHANNELS, LABELS, atomic_path, save_nifti
from .errors import InputError

SHAPE = (240, 240, 155)
_MNI = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
# MNI152 1 mm is (197, 233, 189) with the brain in z 0..154: pad x and y to 240, keep z 0..154.
_PAD = ((21, 22), (3, 4), (0, 0))

# Relative intensity of each tissue in FLAIR, T1, T1gd, T2 (rows in TISSUES order).
TISSUES = ("csf", "grey", "white", "edema", "non_enhancing", "necrosis", "enhancing")
CONTRAST = np.array([
    # FLAIR  T1    T1gd  T2
    [0.10, 0.20, 0.22, 1.00],  # CSF: dark on FLAIR (suppressed fluid), bright on T2
    [0.62, 0.55, 0.57, 0.58],  # grey matter
    [0.50, 0.80, 0.80, 0.40],  # white matter
    [0.98, 0.45, 0.47, 0.88],  # edema: bright on FLAIR and T2
    [0.82, 0.40, 0.48, 0.76],  # non-enhancing solid tumour
    [0.55, 0.18, 0.20, 0.96],  # necrosis: dark on T1/T1gd, fluid-bright on T2
    [0.76, 0.50, 1.25, 0.66],  # enhancing tumour: bright on T1gd
], dtype=np.float32)


@lru_cache(maxsize=1)
def mni_anatomy() -> dict[str, np.ndarray]:
    """The MNI152 T1 (0..1) and tissue probabilities (grey, white, csf, brain) on the 240x240x155
    grid, float32, and the grid's affine."""
    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    maps = {}
    for name in ("t1", "gm", "wm"):
        img = nib.load(folder / _MNI.format(name))
        data = np.asarray(img.dataobj, dtype=np.float32)[:, :, :SHAPE[2]] / 255.0
        maps[name] = np.pad(data, _PAD)
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([_PAD[0][0], _PAD[1][0], 0])
    brain = (maps["t1"] > 0).astype(np.float32)
    return {
        "t1": maps["t1"],
        "grey": maps["gm"],
        "white": maps["wm"],
        "csf": np.clip(brain - maps["gm"] - maps["wm"], 0, 1),
        "brain": brain,
        "affine": affine,
    }


def smooth_field(shape: tuple[int, ...], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std random field of ``shape`` varying over about ``scale`` voxels (float32).

    Made at a quarter of the resolution, blurred there, and upsampled linearly: cheap and smooth.
    """
    small_shape = tuple(max(2, -(-s // 4)) for s in shape)
    small = ndimage.gaussian_filter(rng.standard_normal(small_shape).astype(np.float32), scale / 8)
    small = (small - small.mean()) / (small.std() + 1e-6)
    field = ndimage.zoom(small, [s / t for s, t in zip(shape, small_shape)], order=1)
    return field[tuple(slice(0, s) for s in shape)]


def _brain_box(anatomy: dict, margin: int = 10) -> tuple[slice, slice, slice]:
    nonzero = np.nonzero(anatomy["brain"])
    return tuple(slice(max(0, int(i.min()) - margin), min(s, int(i.max()) + margin + 1))
                 for i, s in zip(nonzero, SHAPE))


def _warp_anatomy(anatomy: dict, box: tuple[slice, ...], rng: np.random.Generator) -> dict:
    """Tissue maps inside ``box`` after a random affine (rotation, scaling) and smooth deformation."""
    shape = tuple(s.stop - s.start for s in box)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    centre = np.array([(s.stop - s.start - 1) / 2 for s in box], dtype=np.float32)[:, None]
    angle = np.deg2rad(rng.uniform(-8, 8))
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]], dtype=np.float32)
    scaling = np.diag(rng.uniform(0.9, 1.08, 3)).astype(np.float32)
    coords = (rotation @ scaling) @ (grid - centre) + centre
    for axis in range(3):
        coords[axis] += 3.0 * smooth_field(shape, 40, rng).ravel()
        coords[axis] += box[axis].start
    warped = {name: ndimage.map_coordinates(anatomy[name], coords, order=1).reshape(shape)
              for name in ("t1", "grey", "white", "brain")}
    # Linear interpolation commutes with sums: the CSF map needs no warp of its own.
    warped["csf"] = np.clip(warped["brain"] - warped["grey"] - warped["white"], 0, 1)
    return warped


def bias_field(shape: tuple[int, int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field ``(x, y, z)`` around 1: exp of a sum of smooth 1-D curves."""
    log_field = np.zeros(shape, np.float32)
    for axis, size in enumerate(shape):
        curve = smooth_field((size,), size / 2, rng) * strength
        log_field += curve.reshape([-1 if a == axis else 1 for a in range(3)])
    return np.exp(log_field)


def _tumour(tissue: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Soft compartments (fractions 0..1) of edema, non-enhancing, necrosis and enhancing tumour."""
    shape = tissue["white"].shape
    deep_white = np.flatnonzero(ndimage.binary_erosion(tissue["white"] > 0.6, iterations=4))
    centre = np.array(np.unravel_index(rng.choice(deep_white), shape), dtype=np.float32)
    radius = float(np.exp(rng.uniform(np.log(3.0), np.log(24.0))))  # mm; small tumours included
    reach = min(rng.uniform(1.3, 3.2), 35.0 / radius)  # edema extent along white matter, in radii
    half = int(2.5 * reach * radius) + 6  # holds the farthest edema the noise terms below allow
    box = tuple(slice(max(0, int(c) - half), min(s, int(c) + half + 1)) for c, s in zip(centre, shape))
    local = tuple(np.arange(s.start, s.stop, dtype=np.float32) for s in box)
    axes = radius * rng.uniform(0.7, 1.3, 3)
    offsets = [(g - c) / a for g, c, a in zip(local, centre, axes)]
    distance = np.sqrt(offsets[0][:, None, None] ** 2 + offsets[1][None, :, None] ** 2
                       + offsets[2][None, None, :] ** 2)
    box_shape = distance.shape
    lobes = np.clip(smooth_field(box_shape, max(4.0, radius * 0.8), rng), -2, 2)
    distance = distance * (1 + 0.15 * lobes)

    edge = 0.9 / radius  # a partial-volume border about one voxel wide

    def inside(limit):
        return 1 / (1 + np.exp(np.clip((distance - limit) / edge, -30, 30)))

    tumour = inside(1.0)
    necrotic_fraction = 0.0 if rng.random() < 0.2 else rng.uniform(0.45, 0.8)
    necrosis = inside(necrotic_fraction) if necrotic_fraction else np.zeros_like(tumour)
    enhancing_share = np.clip(smooth_field(box_shape, max(4.0, radius), rng) + 0.9, 0, 1)
    enhancing = (tumour - necrosis) * enhancing_share
    non_enhancing = tumour - necrosis - enhancing

    white = tissue["white"][box]
    tissue_in_box = tissue["white"][box] + tissue["grey"][box]
    spread = (1 + (reach - 1) * white) * (1 + 0.15 * np.clip(smooth_field(box_shape, 6, rng), -2, 2))
    edema = np.clip(1 / (1 + np.exp(np.clip((distance - spread) / edge, -30, 30))) - tumour, 0, 1)
    edema *= np.clip(tissue_in_box * 1.2, 0, 1)

    full = {}
    for name, part in (("edema", edema), ("non_enhancing", non_enhancing),
                       ("necrosis", necrosis), ("enhancing", enhancing)):
        full[name] = np.zeros(shape, np.float32)
        full[name][box] = part * tissue["brain"][box]
    return full


def synthesize_case(seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Phantom case ``index`` of dataset ``seed``.

    Returns:
        image: float32 (240, 240, 155, 4), channels FLAIR, T1, T1gd, T2, integer-valued like
            scanner data, zero outside the brain.
        label: uint8 (240, 240, 155): 0 background, 1 edema, 2 non-enhancing, 3 enhancing.
    """
    rng = np.random.default_rng([seed, index])
    anatomy = mni_anatomy()
    box = _brain_box(anatomy)
    tissue = _warp_anatomy(anatomy, box, rng)
    tumour = _tumour(tissue, rng)

    lesion = tumour["edema"] + tumour["non_enhancing"] + tumour["necrosis"] + tumour["enhancing"]
    normal = np.clip(1 - lesion, 0, 1)
    fractions = [tissue["csf"] * normal, tissue["grey"] * normal, tissue["white"] * normal,
                 tumour["edema"], tumour["non_enhancing"], tumour["necrosis"], tumour["enhancing"]]
    contrast = CONTRAST * rng.uniform(0.92, 1.08, CONTRAST.shape).astype(np.float32)
    # The template's own T1 texture (deep nuclei, cortex detail) beyond what the tissue mix explains.
    t1_mix = sum(f * c for f, c in zip(fractions[:3], CONTRAST[:3, 1]))
    texture = (tissue["t1"] - t1_mix) * normal
    texture_weight = (0.4, 1.0, 0.9, -0.4)
    heterogeneity = 1 + 0.08 * smooth_field(lesion.shape, 3, rng) * (lesion > 0.01)

    brain = tissue["brain"]
    box_shape = brain.shape
    image = np.zeros(SHAPE + (len(CHANNELS),), np.float32)
    for channel in range(len(CHANNELS)):
        signal = sum(f * c for f, c in zip(fractions, contrast[:, channel]))
        signal = (signal + texture_weight[channel] * texture) * heterogeneity
        signal *= bias_field(box_shape, 0.08, rng)
        sigma = rng.uniform(0.015, 0.035)
        noisy = np.hypot(signal + sigma * rng.standard_normal(box_shape, np.float32),
                         sigma * rng.standard_normal(box_shape, np.float32))
        scale = rng.uniform(150, 1500)
        image[box + (channel,)] = np.round(noisy * brain * scale) * (brain > 0.5)

    classes = np.stack([normal, tumour["edema"], tumour["non_enhancing"] + tumour["necrosis"],
                        tumour["enhancing"]])
    label = np.zeros(SHAPE, np.uint8)
    label[box] = np.argmax(classes, axis=0).astype(np.uint8) * (brain > 0.5)
    return image, label


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
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in case_ids],
        "test": [],
    }


def write_dataset(out: str | os.PathLike, cases: int = 24, seed: int = 0, progress: bool = True,
                  workers: int | None = None) -> list[str]:
    """Write ``cases`` phantom cases in the MSD Task01 layout under ``out``; return their ids.

    The progress bar shows on a terminal (tqdm's rule); ``progress=False`` hides it always.

    Cases are made in ``workers`` processes (default: one per core). Each file is written
    atomically and complete cases of the same seed are kept, so an interrupted run resumes.
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    out = Path(out)
    _check_same_seed(out, seed)
    ids = [f"BRATS_{i + 1:03d}" for i in range(cases)]
    todo = [(out, seed, index, case_id) for index, case_id in enumerate(ids)
            if not all((out / folder / f"{case_id}.nii.gz").exists()
                       for folder in ("imagesTr", "labelsTr"))]
    workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
    bar = tqdm(total=cases, initial=cases - len(todo), desc="synth", unit="case",
               disable=None if progress else True)
    with bar:
        if workers == 1:
            for job in todo:
                _write_case(*job)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_write_case, *zip(*todo)):
                    bar.update()
    with atomic_path(out / "dataset.json") as tmp:
        description = f"tumorseg synthetic phantoms, seed {seed}"
        tmp.write_text(json.dumps(dataset_json(ids, description) | {"seed": seed}, indent=2))
    return ids


def _check_same_seed(out: Path, seed: int) -> None:
    manifest = out / "dataset.json"
    if manifest.exists():
        try:
            previous = json.loads(manifest.read_text()).get("seed")
        except (ValueError, AttributeError):
            raise InputError(manifest, "not a JSON dataset description") from None
        if previous != seed:
            raise InputError(manifest, f"holds a dataset of seed {previous}, not {seed}: "
                                       f"choose another --out folder")


def _write_case(out: Path, seed: int, index: int, case_id: str) -> None:
    image, label = synthesize_case(seed, index)
    affine = mni_anatomy()["affine"]
    save_nifti(label, out / "labelsTr" / f"{case_id}.nii.gz", _reference(affine, np.uint8))
    save_nifti(image, out / "imagesTr" / f"{case_id}.nii.gz", _reference(affine, np.float32))


def _reference(affine: np.ndarray, dtype) -> "object":
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((1, 1, 1), dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img
