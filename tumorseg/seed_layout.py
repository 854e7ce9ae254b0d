"""The seed's ``processed/`` layout: fixed, standardised patches as HDF5 files, a
``config.json`` that lists them, and ``VolumeDataGenerator``, the seed's Keras generator that
reads them back. Training itself samples patches on the fly (:mod:`tumorseg.patches`); this
layout is for the course and for users of the seed's code.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .patches import get_sub_volume, standardize
from .presets import SEED_PATCH_SHAPE
from .run import split_cases

INDEX_FILE = "config.json"  # the train and valid file lists, as the seed names it


def export_patches(
    data_dir,
    out_dir,
    patches_per_case: int = 4,
    valid_fraction: float = 0.2,
    patch_shape=SEED_PATCH_SHAPE,
    background_threshold: float = 0.95,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Cut fixed, standardised patches into the seed's ``processed/`` layout.

    Writes ``out_dir/train/<case>_<k>.h5`` and ``out_dir/valid/<case>_<k>.h5`` (datasets ``x``
    ``(px, py, pz, 4)`` float32 and ``y`` ``(px, py, pz, 3)`` float32, channels-last) and
    ``out_dir/config.json`` (:data:`INDEX_FILE`) with the ``train`` and ``valid`` file lists.
    Whole cases go to one split (:func:`tumorseg.run.split_cases`). Every file is written
    atomically. Returns the config.
    """
    import h5py
    from tqdm.auto import tqdm

    from .data import find_cases, load_case

    out_dir = Path(out_dir)
    cases = [case for case in find_cases(data_dir) if case.label is not None]
    valid_ids = set(split_cases([case.id for case in cases], valid_fraction, seed)[1])
    rng = np.random.default_rng(seed)
    config = {"train": [], "valid": []}
    for case in tqdm(cases, desc="patches", unit="case", disable=None if progress else True):
        image, label = load_case(case)
        split = "valid" if case.id in valid_ids else "train"
        shape = tuple(min(p, s) for p, s in zip(patch_shape, label.shape))
        for k in range(patches_per_case):
            result = get_sub_volume(
                image,
                label,
                *label.shape,
                *shape,
                background_threshold=background_threshold,
                rng=rng,
            )
            if result is None:
                break
            x, y = result
            name = f"{case.id}_{k}.h5"
            with atomic_path(out_dir / split / name) as tmp:
                with h5py.File(tmp, "w") as h5:
                    h5.create_dataset("x", data=standardize(x), compression="lzf")
                    h5.create_dataset("y", data=y.astype(np.uint8), compression="lzf")
            config[split].append(name)
    with atomic_path(out_dir / INDEX_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    return config


def __getattr__(name):
    """``VolumeDataGenerator`` is made on first use: importing this module does not load Keras."""
    if name == "VolumeDataGenerator":
        return _volume_data_generator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@lru_cache(maxsize=1)
def _volume_data_generator_class():
    import keras

    class VolumeDataGenerator(keras.utils.PyDataset):
        """The seed's generator as a Keras dataset: batches ``X (B, x, y, z, C)`` and
        ``y (B, x, y, z, classes)`` read from the HDF5 patches named in ``sample_list``."""

        def __init__(
            self,
            sample_list,
            base_dir,
            batch_size=1,
            shuffle=True,
            dim=SEED_PATCH_SHAPE,
            num_channels=4,
            num_classes=3,
            seed=0,
            **kwargs,
        ):
            super().__init__(**kwargs)
            self.sample_list, self.base_dir = list(sample_list), Path(base_dir)
            self.batch_size, self.shuffle = batch_size, shuffle
            self.dim, self.num_channels, self.num_classes = tuple(dim), num_channels, num_classes
            self.rng = np.random.default_rng(seed)
            self.indexes = np.arange(len(self.sample_list))
            self.on_epoch_end()

        def __len__(self):
            return len(self.sample_list) // self.batch_size

        def on_epoch_end(self):
            if self.shuffle:
                self.rng.shuffle(self.indexes)

        def __getitem__(self, index):
            import h5py

            picks = self.indexes[index * self.batch_size : (index + 1) * self.batch_size]
            X = np.zeros((len(picks), *self.dim, self.num_channels), np.float32)
            y = np.zeros((len(picks), *self.dim, self.num_classes), np.float32)
            for row, pick in enumerate(picks):
                with h5py.File(self.base_dir / self.sample_list[pick], "r") as h5:
                    X[row], y[row] = h5["x"][()], h5["y"][()]
            return X, y

    return VolumeDataGenerator
