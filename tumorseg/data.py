"""Finding, loading, validating and writing brain-MRI cases.

Three layouts are read:

* Medical Segmentation Decathlon Task01 (``dataset.json``, ``imagesTr/*.nii.gz`` 4-D images in
  the order FLAIR, T1, T1gd, T2, ``labelsTr/*.nii.gz``, ``imagesTs/`` without labels);
* BraTS 2021 (a folder per case: ``<id>_flair/_t1/_t1ce/_t2/_seg.nii.gz``, labels 0/1/2/4);
* BraTS 2023 (a folder per case: ``<id>-t2f/-t1n/-t1c/-t2w/-seg.nii.gz``, labels 0/1/2/3).

Whatever the layout, :func:`load_case` returns a channels-last float32 image ``(x, y, z, 4)``
(FLAIR, T1, T1gd, T2, with the file's scaling applied) and a uint8 label ``(x, y, z)`` in the
seed's values: 0 background, 1 edema, 2 non-enhancing tumour, 3 enhancing tumour.
Both are C-contiguous. Arrays stay in the file's voxel order (no reorientation): BraTS files and
the synthetic phantoms are L, P, S (``nibabel.aff2axcodes``); MSD Task01 holds the same voxels
under an identity header. Values are the stored ones; :func:`clip_intensities` tames the negative
values and bright tails of real scans where a network will see them (training caches).

Every problem with an input raises :class:`~tumorseg.errors.InputError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .atomic import atomic_path
from .errors import InputError

CHANNELS = ("FLAIR", "T1", "T1gd", "T2")
LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"}
CLASS_NAMES = ("Edema", "Non-Enhancing Tumor", "Enhancing Tumor")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


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
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir() or (root / "dataset.json").exists():
        cases = _find_msd_cases(root)
    elif _case_folder_layout(root) is not None:
        cases = [_brats_case(root)]
    else:
        cases = [_brats_case(folder) for folder in sorted(root.iterdir())
                 if folder.is_dir() and _case_folder_layout(folder) is not None]
    if not cases:
        raise InputError(root, "no cases found (expected an MSD Task01 folder with imagesTr/, "
                               "BraTS case folders, or a NIfTI file)")
    return cases


def _strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI files in a folder, skipping hidden files (MSD's tarball carries '._*' resource forks)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))


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
            raise InputError(folder, f"missing BraTS sequence {channel} "
                                     f"(expected {folder.name}{suffix}.nii.gz)")
        images.append(path)
    return Case(folder.name, layout.name, tuple(images), find(layout.label_suffix))


# ----------------------------------------------------------------------------- loading


def load_case(case_or_image_file: Case | str | os.PathLike,
              label_file: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Load and validate one case.

    Args:
        case_or_image_file: a :class:`Case`, a 4-D NIfTI image file (MSD order), or a BraTS case
            folder.
        label_file: the label of a 4-D image file, in the MSD's values (ignored for a Case).

    Returns:
        image: float32 ``(x, y, z, 4)``, C-contiguous, channels FLAIR, T1, T1gd, T2.
        label: uint8 ``(x, y, z)`` in the seed's values, or None where the case has no label.
    """
    case = _as_case(case_or_image_file, label_file)
    layout = LAYOUTS[case.layout]
    image = _load_image(case, layout)
    if case.label is None:
        return image, None
    label = load_label(case.label, layout)
    if label.shape != image.shape[:3]:
        raise InputError(case.label, f"label shape {label.shape} does not match image shape "
                                     f"{image.shape[:3]} of {case.images[0].name}")
    return image, label


def _as_case(case_or_image_file, label_file) -> Case:
    if isinstance(case_or_image_file, Case):
        return case_or_image_file
    path = Path(case_or_image_file)
    if path.is_dir():
        if _case_folder_layout(path) is None:
            raise InputError(path, "not a BraTS case folder (no *_flair/-t2f NIfTI files)")
        return _brats_case(path)
    return Case(_strip_nifti_suffix(path.name), MSD.name, (path,),
                None if label_file is None else Path(label_file))


def read_nifti(path: str | os.PathLike) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The NIfTI image object and its data (scaling applied, float32 for scaled or float data)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    try:
        img = nib.load(path)
    except Exception as error:  # nibabel raises many types for foreign files
        raise InputError(path, f"not a NIfTI file ({_one_line(error, path)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI file ({type(img).__name__})")
    try:
        if np.issubdtype(img.get_data_dtype(), np.integer) and not _has_scaling(img):
            data = np.asarray(img.dataobj)
        else:
            data = img.get_fdata(dtype=np.float32)
    except Exception as error:  # EOFError, zlib.error, OSError, ValueError from a damaged file
        raise InputError(path, f"truncated or corrupt file ({_one_line(error, path)})") from None
    return img, data


def _has_scaling(img: nib.Nifti1Image) -> bool:
    slope, inter = img.dataobj.slope, img.dataobj.inter
    return not (slope in (None, 1) or np.isnan(slope)) or not (inter in (None, 0) or np.isnan(inter))


def _one_line(error: Exception, path: Path) -> str:
    """The error's message on one short line, without the path the caller names anyway."""
    text = " ".join(str(error).replace(str(path), "it").split()) or type(error).__name__
    return text if len(text) < 160 else text[:157] + "..."


def _load_image(case: Case, layout: Layout) -> np.ndarray:
    if len(case.images) == 1:
        path = case.images[0]
        _, data = read_nifti(path)
        if data.ndim != 4 or data.shape[3] != len(CHANNELS):
            raise InputError(path, f"expected a 4-D image with 4 channels (FLAIR, T1, T1gd, T2), "
                                   f"got shape {data.shape}")
        image = np.ascontiguousarray(data, dtype=np.float32)
    else:
        volumes = []
        for path in case.images:
            _, data = read_nifti(path)
            if data.ndim != 3:
                raise InputError(path, f"expected a 3-D sequence, got shape {data.shape}")
            if volumes and data.shape != volumes[0].shape:
                raise InputError(path, f"shape {data.shape} differs from {volumes[0].shape} "
                                       f"of {case.images[0].name}")
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
    raise InputError(path, f"{int(bad_per_channel.sum())} non-finite voxels (NaN or Inf) "
                           f"in channel {CHANNELS[channel]}")


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
    """Voxel size in millimetres along x, y, z."""
    return tuple(float(s) for s in nib.load(case.reference).header.get_zooms()[:3])


# ----------------------------------------------------------------------------- writing


def save_nifti(array: np.ndarray, path: str | os.PathLike,
               reference: str | os.PathLike | nib.Nifti1Image | None = None) -> Path:
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


def dataset_table(root: str | os.PathLike, progress: bool = False):
    """Load and validate every case under ``root``; a pandas table with one row per case:
    case, layout, shape, spacing (mm) and voxels per label."""
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for case in tqdm(find_cases(root), desc="info", unit="case",
                     disable=None if progress else True):
        image, label = load_case(case)
        counts = np.bincount(label.ravel(), minlength=4) if label is not None else [None] * 4
        rows.append({"case": case.id, "layout": case.layout, "shape": image.shape,
                     "spacing": voxel_spacing(case), "background": counts[0],
                     "edema": counts[1], "non-enhancing": counts[2], "enhancing": counts[3]})
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
    return np.bincount(np.asarray(label).ravel(), minlength=num_classes)[:num_classes].astype(np.int64)
