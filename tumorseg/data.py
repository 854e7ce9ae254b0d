"""Finding, loading, validating and writing brain-MRI cases.

Three layouts are read:

* Medical Segmentation Decathlon Task01 (``dataset.json``, ``imagesTr/*.nii.gz`` 4-D images in
  the order FLAIR, T1, T1gd, T2, ``labelsTr/*.nii.gz``, ``imagesTs/`` without labels);
* BraTS 2021 (a folder per case: ``<id>_flair/_t1/_t1ce/_t2/_seg.nii.gz``, labels 0/1/2/4);
* BraTS 2023 (a folder per case: ``<id>-t2f/-t1n/-t1c/-t2w/-seg.nii.gz``, labels 0/1/2/3).

Whatever the layout, :func:`load_case` returns a channels-last float32 image ``(x, y, z, 4)``
(FLAIR, T1, T1gd, T2, with the file's scaling applied) and a uint8 label ``(x, y, z)`` in the
seed's values: 0 background, 1 edema, 2 non-enhancing tumour, 3 enhancing tumour.
Both are C-contiguous and in one voxel order whatever the file's: L, P, S (BraTS's; the first
axis toward the patient's left, the second toward the back), as nibabel's ``io_orientation`` /
``ornt_transform`` / ``apply_orientation``, MONAI's ``Orientationd`` and nnU-Net do it. The file's
affine says how its voxels lie, with two exceptions taken as L, P, S as stored: an MSD-layout
file whose affine has an identity rotation-zoom part (MSD Task01 ships its files so, over L, P, S
voxels; reorienting them by that header would mirror them against BraTS scans), and a file
without a spatial header (qform and sform codes 0). :class:`Grid` records a scan's stored grid,
so a prediction is written back in the scan's own voxel order and affine
(:func:`save_label_map`). Sequences of one case must share one grid (shape and affine). Values
are the stored ones; :func:`clip_intensities` tames the negative values and bright tails of real
scans where a network will see them (training caches).

Every problem with an input raises :class:`~tumorseg.errors.InputError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from .atomic import atomic_path
from .errors import InputError

CHANNELS = ("FLAIR", "T1", "T1gd", "T2")
LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"}
CLASS_NAMES = ("Edema", "Non-Enhancing Tumor", "Enhancing Tumor")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
TRAINING_AXES = ("L", "P", "S")  # the voxel order every scan is brought to on load (BraTS's)
AFFINE_TOLERANCE = 1e-3  # mm: affines closer than this are one grid
SPACING_TOLERANCE = 0.10  # a scan's spacing may differ this much (relative) from training's


@dataclass(frozen=True)
class Layout:
    """How one dataset layout names its files and codes its labels."""

    name: str
    sequence_suffixes: tuple[str, ...]  # per channel, in CHANNELS order (BraTS only)
    label_suffix: str
    label_map: dict[int, int]  # file value -> seed value


MSD = Layout("msd", (), "", {0: 0, 1: 1, 2: 2, 3: 3})
BRATS2021 = Layout("brats2021", ("_flair", "_t1", "_t1ce", "_t2"), "_seg", {0: 0, 1: 2, 2: 1, 4: 3})
BRATS2023 = Layout("brats2023", ("-t2f", "-t1n", "-t1c", "-t2w"), "-seg", {0: 0, 1: 2, 2: 1, 3: 3})
LAYOUTS = {layout.name: layout for layout in (MSD, BRATS2021, BRATS2023)}


@dataclass(frozen=True)
class Case:
    """One scan: its image file(s) in channel order and its label file (None if unlabelled)."""

    id: str
    layout: str
    images: tuple[Path, ...]
    label: Path | None = None

    @property
    def reference(self) -> Path:
        """The file whose affine and header a prediction for this case carries."""
        return self.images[0]


# ----------------------------------------------------------------------------- finding cases


def find_cases(root: str | os.PathLike) -> list[Case]:
    """All cases under ``root``: an MSD Task01 folder, a folder of BraTS case folders, one BraTS
    case folder, or one 4-D NIfTI file. Sorted by id; raises InputError when there are none."""
    root = Path(root)
    if not root.exists():
        raise InputError(root, "no such file or directory")
    if root.is_file():
        return [Case(_strip_nifti_suffix(root.name), MSD.name, (root,))]
    if (
        (root / "imagesTr").is_dir()
        or (root / "imagesTs").is_dir()
        or (root / "dataset.json").exists()
    ):
        cases = _find_msd_cases(root)
    elif _case_folder_layout(root) is not None:
        cases = [_brats_case(root)]
    else:
        cases = [
            _brats_case(folder)
            for folder in sorted(root.iterdir())
            if folder.is_dir() and _case_folder_layout(folder) is not None
        ]
    if not cases:
        raise InputError(
            root,
            "no cases found (expected an MSD Task01 folder with imagesTr/, "
            "BraTS case folders, or a NIfTI file)",
        )
    return cases


def _strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI files in a folder, skipping hidden files (MSD's tarball has '._*' resource forks)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".")
    )


def _find_msd_cases(root: Path) -> list[Case]:
    if not (root / "imagesTr").is_dir() and not (root / "imagesTs").is_dir():
        raise InputError(root, "dataset.json found but no imagesTr/ or imagesTs/ folder")
    cases = []
    for image in _nifti_files(root / "imagesTr"):
        label = root / "labelsTr" / image.name
        if not label.exists():
            raise InputError(label, f"label file missing for training image {image.name}")
        cases.append(Case(_strip_nifti_suffix(image.name), MSD.name, (image,), label))
    for image in _nifti_files(root / "imagesTs"):
        cases.append(Case(_strip_nifti_suffix(image.name), MSD.name, (image,)))
    return cases


def _case_folder_layout(folder: Path) -> Layout | None:
    """The BraTS layout whose file names appear in ``folder``, or None."""
    names = [_strip_nifti_suffix(p.name) for p in _nifti_files(folder)]
    for layout in (BRATS2021, BRATS2023):
        suffixes = layout.sequence_suffixes + (layout.label_suffix,)
        if any(name.endswith(suffixes) for name in names):
            return layout
    return None


def _brats_case(folder: Path) -> Case:
    layout = _case_folder_layout(folder)
    files = {_strip_nifti_suffix(p.name): p for p in _nifti_files(folder)}

    def find(suffix: str) -> Path | None:
        matches = [path for name, path in files.items() if name.endswith(suffix)]
        return matches[0] if matches else None

    images = []
    for suffix, channel in zip(layout.sequence_suffixes, CHANNELS):
        path = find(suffix)
        if path is None:
            raise InputError(
                folder, f"missing BraTS sequence {channel} (expected {folder.name}{suffix}.nii.gz)"
            )
        images.append(path)
    return Case(folder.name, layout.name, tuple(images), find(layout.label_suffix))


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class Grid:
    """A scan's voxel grid as stored, and the map between its voxel order and the training
    order :data:`TRAINING_AXES`.

    ``to_training`` is a nibabel orientation ``(3, 2)``: row ``i`` says which training axis
    stored axis ``i`` becomes and whether it is flipped (-1).
    """

    path: Path  # the file whose affine and header a prediction carries
    shape: tuple[int, int, int]  # (x, y, z) as stored
    affine: np.ndarray  # (4, 4) as stored
    to_training: np.ndarray  # (3, 2) orientation, stored -> training order
    spacing: tuple[float, float, float]  # mm along the training axes

    @property
    def to_stored(self) -> np.ndarray:
        """The inverse orientation ``(3, 2)``: training -> stored order."""
        inverse = np.zeros((3, 2))
        for axis, (target, flip) in enumerate(self.to_training):
            inverse[int(target)] = (axis, flip)
        return inverse

    @property
    def training_shape(self) -> tuple[int, int, int]:
        """``(x, y, z)`` in the training voxel order."""
        return tuple(self.shape[int(axis)] for axis in self.to_stored[:, 0])

    def is_identity(self) -> bool:
        return bool(np.array_equal(self.to_training, [[0, 1], [1, 1], [2, 1]]))

    def training_order(self, array: np.ndarray) -> np.ndarray:
        """``(x, y, z, ...)`` as stored -> C-contiguous in the training voxel order."""
        if self.is_identity():
            return np.ascontiguousarray(array)
        return np.ascontiguousarray(apply_orientation(array, self.to_training))

    def stored_order(self, array: np.ndarray) -> np.ndarray:
        """``(x, y, z, ...)`` in the training voxel order -> C-contiguous as stored."""
        if self.is_identity():
            return np.ascontiguousarray(array)
        return np.ascontiguousarray(apply_orientation(array, self.to_stored))


def training_orientation(
    affine: np.ndarray, layout: str, path: Path, spatial_header: bool = True
) -> np.ndarray:
    """The orientation ``(3, 2)`` that brings a file's voxels to :data:`TRAINING_AXES`.

    An MSD-layout file whose affine has an identity rotation-zoom part is L, P, S already
    (MSD Task01's headers say R, A, S over BraTS voxels), and so is a file without a spatial
    header (``spatial_header`` False: qform and sform codes 0, nibabel's affine a guess); every
    other file is reoriented by its affine (the nearest axes of an oblique one)."""
    if not spatial_header or (layout == MSD.name and np.allclose(affine[:3, :3], np.eye(3))):
        return np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    stored = io_orientation(affine)
    if np.isnan(stored).any():
        raise InputError(path, "degenerate affine: its voxel axes do not span space")
    return ornt_transform(stored, axcodes2ornt(TRAINING_AXES))


def scan_grid(case_or_image_file: Case | str | os.PathLike) -> Grid:
    """A case's grid, from the headers alone; raises InputError when its sequences (or its
    label) do not share one shape and affine, naming both files."""
    case = _as_case(case_or_image_file, None)
    return _grid(
        case,
        [_open_nifti(path) for path in case.images],
        None if case.label is None else _open_nifti(case.label),
    )


def _grid(case: Case, images: list[nib.Nifti1Image], label: nib.Nifti1Image | None) -> Grid:
    first, first_path = images[0], case.images[0]
    shape = tuple(int(n) for n in first.shape[:3])
    others = list(zip(case.images[1:], images[1:]))
    for path, img in others + ([(case.label, label)] if label is not None else []):
        if tuple(img.shape[:3]) != shape:
            what = "label shape" if path == case.label else "shape"
            raise InputError(
                path,
                f"{what} {tuple(img.shape[:3])} does not match image shape "
                f"{shape} of {first_path.name}",
            )
        if not np.allclose(img.affine, first.affine, rtol=0, atol=AFFINE_TOLERANCE):
            raise InputError(
                path,
                f"affine ({_axcodes(img.affine)}) differs from that of "
                f"{first_path.name} ({_axcodes(first.affine)}): the files of "
                f"one case must share one voxel grid",
            )
    spatial = bool(first.header["qform_code"] or first.header["sform_code"])
    to_training = training_orientation(first.affine, case.layout, first_path, spatial)
    zooms = [float(z) for z in first.header.get_zooms()[:3]]
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(to_training):
        spacing[int(target)] = zooms[axis]
    return Grid(first_path, shape, np.array(first.affine), to_training, tuple(spacing))


def _axcodes(affine: np.ndarray) -> str:
    return "".join(str(code) for code in nib.aff2axcodes(affine))


def load_case(
    case_or_image_file: Case | str | os.PathLike, label_file: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load and validate one case, in the training voxel order (L, P, S).

    Args:
        case_or_image_file: a :class:`Case`, a 4-D NIfTI image file (MSD order), or a BraTS case
            folder.
        label_file: the label of a 4-D image file, in the MSD's values (ignored for a Case).

    Returns:
        image: float32 ``(x, y, z, 4)``, C-contiguous, channels FLAIR, T1, T1gd, T2.
        label: uint8 ``(x, y, z)`` in the seed's values, or None where the case has no label.
    """
    image, label, _ = load_scan(case_or_image_file, label_file)
    return image, label


def load_scan(
    case_or_image_file: Case | str | os.PathLike, label_file: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray | None, Grid]:
    """:func:`load_case` and the case's :class:`Grid` (how to write a prediction back)."""
    case = _as_case(case_or_image_file, label_file)
    layout = LAYOUTS[case.layout]
    grid = scan_grid(case)
    image = grid.training_order(_load_image(case, layout))
    if case.label is None:
        return image, None, grid
    return image, grid.training_order(load_label(case.label, layout)), grid


def check_spacing(grid: Grid, training_spacing) -> None:
    """Refuse a scan whose voxel spacing differs by more than :data:`SPACING_TOLERANCE` from
    ``training_spacing`` (mm along x, y, z; None: no check) along any axis."""
    if training_spacing is None:
        return
    spacing, trained = np.asarray(grid.spacing), np.asarray(training_spacing, dtype=float)
    off = np.abs(spacing - trained) > SPACING_TOLERANCE * trained
    if off.any():
        axis = "xyz"[int(np.argmax(off))]
        raise InputError(
            grid.path,
            f"voxel spacing {_mm(spacing)} mm differs by more than "
            f"{SPACING_TOLERANCE:.0%} from the training spacing "
            f"{_mm(trained)} mm (along {axis}); resample the scan to "
            f"the training spacing first",
        )


def _mm(spacing) -> str:
    return " x ".join(f"{float(s):g}" for s in spacing)


def _as_case(case_or_image_file, label_file) -> Case:
    if isinstance(case_or_image_file, Case):
        return case_or_image_file
    path = Path(case_or_image_file)
    if path.is_dir():
        if _case_folder_layout(path) is None:
            raise InputError(path, "not a BraTS case folder (no *_flair/-t2f NIfTI files)")
        return _brats_case(path)
    return Case(
        _strip_nifti_suffix(path.name),
        MSD.name,
        (path,),
        None if label_file is None else Path(label_file),
    )


def read_nifti(path: str | os.PathLike) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The NIfTI image object and its data (scaling applied, float32 for scaled or float data)."""
    path = Path(path)
    img = _open_nifti(path)
    try:
        if np.issubdtype(img.get_data_dtype(), np.integer) and not _has_scaling(img):
            data = np.asarray(img.dataobj)
        else:
            data = img.get_fdata(dtype=np.float32)
    except Exception as error:  # EOFError, zlib.error, OSError, ValueError from a damaged file
        raise InputError(path, f"truncated or corrupt file ({_one_line(error, path)})") from None
    return img, data


def _open_nifti(path: Path) -> nib.Nifti1Image:
    """The NIfTI image object (header read, data not yet), validated as a NIfTI file."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    try:
        img = nib.load(path)
    except Exception as error:  # nibabel raises many types for foreign files
        raise InputError(path, f"not a NIfTI file ({_one_line(error, path)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI file ({type(img).__name__})")
    return img


def _has_scaling(img: nib.Nifti1Image) -> bool:
    slope, inter = img.dataobj.slope, img.dataobj.inter
    return not (slope in (None, 1) or np.isnan(slope)) or not (
        inter in (None, 0) or np.isnan(inter)
    )


def _one_line(error: Exception, path: Path) -> str:
    """The error's message on one short line, without the path the caller names anyway."""
    text = " ".join(str(error).replace(str(path), "it").split()) or type(error).__name__
    return text if len(text) < 160 else text[:157] + "..."


def _load_image(case: Case, layout: Layout) -> np.ndarray:
    if len(case.images) == 1:
        path = case.images[0]
        _, data = read_nifti(path)
        if data.ndim != 4 or data.shape[3] != len(CHANNELS):
            raise InputError(
                path,
                f"expected a 4-D image with 4 channels (FLAIR, T1, T1gd, T2), "
                f"got shape {data.shape}",
            )
        image = np.ascontiguousarray(data, dtype=np.float32)
    else:
        volumes = []
        for path in case.images:
            _, data = read_nifti(path)
            if data.ndim != 3:
                raise InputError(path, f"expected a 3-D sequence, got shape {data.shape}")
            if volumes and data.shape != volumes[0].shape:
                raise InputError(
                    path,
                    f"shape {data.shape} differs from {volumes[0].shape} of {case.images[0].name}",
                )
            volumes.append(data)
        image = np.stack(volumes, axis=-1).astype(np.float32, copy=False)
    _check_finite(image, case.images)
    return image


def _check_finite(image: np.ndarray, paths: tuple[Path, ...]) -> None:
    finite = np.isfinite(image)
    if finite.all():
        return
    bad_per_channel = (~finite).reshape(-1, image.shape[-1]).sum(axis=0)
    channel = int(np.argmax(bad_per_channel))
    path = paths[channel] if len(paths) > 1 else paths[0]
    raise InputError(
        path,
        f"{int(bad_per_channel.sum())} non-finite voxels (NaN or Inf) "
        f"in channel {CHANNELS[channel]}",
    )


def load_label(path: str | os.PathLike, layout: Layout | str = MSD) -> np.ndarray:
    """A label file as uint8 ``(x, y, z)`` in the seed's values, mapped from ``layout``'s values."""
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    path = Path(path)
    _, data = read_nifti(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3-D label, got shape {data.shape}")
    allowed = sorted(layout.label_map)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise InputError(path, f"label values must be integers in {allowed}")
    values = np.asarray(data).astype(np.int64, copy=False)
    low, high = int(values.min()), int(values.max())
    if high - low < 1024:  # bincount is several times faster than np.unique on a volume
        present = {int(v) + low for v in np.flatnonzero(np.bincount((values - low).ravel()))}
    else:
        present = set(np.unique(values).tolist())
    unexpected = sorted(present - set(allowed))
    if unexpected:
        raise InputError(path, f"label values {unexpected} outside the {layout.name} set {allowed}")
    lookup = np.zeros(max(allowed) + 1, dtype=np.uint8)
    for source, target in layout.label_map.items():
        lookup[source] = target
    return np.ascontiguousarray(lookup[values])


def clip_intensities(image: np.ndarray, upper_percentile: float = 99.9) -> np.ndarray:
    """Real scans' intensities made sane for a network: each channel's brain voxels clipped to
    ``[0, its upper_percentile]``.

    Registration and resampling leave small negative values inside the brain, and a few voxels
    (vessels, fat, artefacts) are many times brighter than tissue. The brain is the voxels non-zero
    in any channel (BraTS and MSD files are zero outside the skull-stripped brain); the background
    stays exactly zero, so the brain box and the viewers still find the brain.

    image: ``(x, y, z, C)``. Returns a new float32 array of the same shape.
    """
    image = np.array(image, dtype=np.float32)
    brain = np.any(image != 0, axis=-1)
    if not brain.any():
        return image
    for channel in range(image.shape[-1]):
        values = image[..., channel][brain]
        top = float(np.percentile(values, upper_percentile))
        image[..., channel][brain] = np.clip(values, 0, max(top, 0))
    return image


def voxel_spacing(case: Case) -> tuple[float, float, float]:
    """Voxel size in millimetres along x, y, z of the training voxel order (as loaded)."""
    return scan_grid(case).spacing


# ----------------------------------------------------------------------------- writing


def save_nifti(
    array: np.ndarray,
    path: str | os.PathLike,
    reference: str | os.PathLike | nib.Nifti1Image | None = None,
) -> Path:
    """Write ``array`` as NIfTI atomically, with the affine and header of ``reference``.

    Without a reference the affine is the identity (1 mm voxels). The data type is the array's.
    """
    if reference is None:
        header, affine = None, np.eye(4)
    else:
        ref = reference if isinstance(reference, nib.Nifti1Image) else nib.load(reference)
        header, affine = ref.header.copy(), ref.affine
        header.set_data_dtype(array.dtype)
    img = nib.Nifti1Image(array, affine, header)
    img.header.set_slope_inter(1, 0)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def save_label_map(label_map: np.ndarray, path: str | os.PathLike, grid: Grid) -> Path:
    """Write a uint8 ``(x, y, z)`` label map in the training voxel order back in the scan's own
    grid: its stored voxel order, with its file's affine and header (atomically)."""
    label_map = np.asarray(label_map, dtype=np.uint8)
    if label_map.shape != grid.training_shape:
        raise ValueError(
            f"label map {label_map.shape} does not fit the grid of {grid.path} "
            f"({grid.training_shape} in training order)"
        )
    return save_nifti(grid.stored_order(label_map), path, grid.path)


def load_label_map(path: str | os.PathLike, grid: Grid) -> np.ndarray:
    """A predicted label map written in a scan's own grid (as :func:`save_label_map` writes it,
    seed values), checked against that ``grid`` and returned uint8 ``(x, y, z)`` in the training
    voxel order; raises InputError naming ``path`` when its shape or affine differ."""
    path = Path(path)
    label = load_label(path)
    if label.shape != grid.shape:
        raise InputError(
            path, f"shape {label.shape} does not match the scan's {grid.shape} ({grid.path.name})"
        )
    affine = _open_nifti(path).affine
    if not np.allclose(affine, grid.affine, rtol=0, atol=AFFINE_TOLERANCE):
        raise InputError(
            path,
            f"affine ({_axcodes(affine)}) differs from that of "
            f"{grid.path.name} ({_axcodes(grid.affine)}): not on the scan's "
            f"grid",
        )
    return grid.training_order(label)


def dataset_table(root: str | os.PathLike, progress: bool = False):
    """Load and validate every case under ``root``; a pandas table with one row per case:
    case, layout, shape, spacing (mm) and voxels per label."""
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for case in tqdm(
        find_cases(root), desc="info", unit="case", disable=None if progress else True
    ):
        image, label = load_case(case)
        counts = np.bincount(label.ravel(), minlength=4) if label is not None else [None] * 4
        rows.append(
            {
                "case": case.id,
                "layout": case.layout,
                "shape": image.shape,
                "spacing": voxel_spacing(case),
                "background": counts[0],
                "edema": counts[1],
                "non-enhancing": counts[2],
                "enhancing": counts[3],
            }
        )
    return pd.DataFrame(rows)


def voxels_per_class(label: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """How many voxels carry each label value.

    Args:
        label: integer label map ``(x, y, z)`` with values 0 .. num_classes-1.
        num_classes: classes including background (4: background, edema, non-enhancing,
            enhancing).

    Returns:
        int64 ``(num_classes,)``: the count of value 0, 1, ... (0 for a value that is absent).
    """
    return np.bincount(np.asarray(label).ravel(), minlength=num_classes)[:num_classes].astype(
        np.int64
    )
