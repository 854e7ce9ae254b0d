"""The seed's processed/ layout: HDF5 patches, their index and VolumeDataGenerator."""

from __future__ import annotations

import json

import numpy as np

from tumorseg.run import split_cases
from tumorseg.seed_layout import INDEX_FILE, VolumeDataGenerator, export_patches


def test_hdf5_export_round_trips(tumour_dataset, tmp_path):
    import h5py

    out = tmp_path / "processed"
    config = export_patches(
        tumour_dataset,
        out,
        patches_per_case=2,
        valid_fraction=0.34,
        patch_shape=(16, 16, 8),
        background_threshold=0.9,
        seed=0,
    )
    assert json.loads((out / "config.json").read_text()) == config
    assert len(config["train"]) == 4 and len(config["valid"]) == 2
    train_cases = {n.rsplit("_", 1)[0] for n in config["train"]}
    assert not train_cases & {n.rsplit("_", 1)[0] for n in config["valid"]}
    with h5py.File(out / "train" / config["train"][0]) as h5:
        x, y = h5["x"][()], h5["y"][()]
    assert x.shape == (16, 16, 8, 4) and y.shape == (16, 16, 8, 3)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), 0, atol=1e-4)
    assert np.mean(y.sum(-1) == 0) < 0.9

    generator = VolumeDataGenerator(
        config["train"], out / "train", batch_size=2, dim=(16, 16, 8), shuffle=False
    )
    import keras

    assert isinstance(generator, keras.utils.PyDataset) and len(generator) == 2
    X, Y = generator[0]
    assert X.shape == (2, 16, 16, 8, 4) and Y.shape == (2, 16, 16, 8, 3)
    np.testing.assert_array_equal(X[0], x)
    np.testing.assert_array_equal(Y[0], y)


def test_export_splits_cases_as_runs_do(tumour_dataset, tmp_path):
    config = export_patches(
        tumour_dataset,
        tmp_path / "p",
        patches_per_case=1,
        valid_fraction=0.34,
        patch_shape=(16, 16, 8),
        seed=3,
    )
    valid = {name.rsplit("_", 1)[0] for name in config["valid"]}
    ids = [f"BRATS_00{i}" for i in range(3)]
    assert valid == set(split_cases(ids, 0.34, 3)[1])
    assert (tmp_path / "p" / INDEX_FILE).exists()
