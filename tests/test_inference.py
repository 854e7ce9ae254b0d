"""tumorseg.inference: label maps, sliding-window stitching, model sizes, TTA and bf16."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from tumorseg.data import clip_intensities
from tumorseg.inference import (
    Predictor,
    config_from_model,
    drop_small_enhancing,
    gaussian_weights,
    plan_axis,
    predict_volume,
    seed_tiling_predict,
    sliding_window_inference,
    to_label_map,
    window_starts,
)
from tumorseg.model import ModelConfig, build_model, unet_model_3d
from tumorseg.patches import Augmentation, standardize
from tumorseg.resample import downsample_image, upsample_probabilities

GOLDEN = Path(__file__).parent / "data" / "golden_label_map.npz"


def test_label_map_takes_the_most_probable_channel_above_threshold():
    probabilities = np.array(
        [
            [0.1, 0.2, 0.3],  # none above 0.5 -> background
            [0.9, 0.6, 0.7],  # edema most probable
            [0.6, 0.55, 0.8],  # enhancing
            [0.2, 0.51, 0.4],
        ],  # non-enhancing
        np.float32,
    ).reshape(4, 1, 1, 3)
    assert to_label_map(probabilities).ravel().tolist() == [0, 1, 3, 2]
    assert to_label_map(probabilities, threshold=0.85).ravel().tolist() == [0, 1, 0, 0]
    assert to_label_map(probabilities).dtype == np.uint8


def test_a_small_enhancing_tumour_becomes_non_enhancing():
    label_map = np.zeros((6, 5, 4), np.uint8)
    label_map[:3] = 1
    label_map[0, 0, :3] = 3  # 3 enhancing voxels
    label_map[1, 0, 0] = 2
    relabelled = label_map.copy()
    relabelled[0, 0, :3] = 2
    np.testing.assert_array_equal(drop_small_enhancing(label_map, 4), relabelled)
    for minimum in (0, 1, 3):  # 0 keeps any size; 3 voxels are not fewer than 3
        np.testing.assert_array_equal(drop_small_enhancing(label_map, minimum), label_map)
    no_enhancing = np.where(label_map == 3, 1, label_map).astype(np.uint8)
    np.testing.assert_array_equal(drop_small_enhancing(no_enhancing, 100), no_enhancing)
    assert drop_small_enhancing(label_map, 4).dtype == np.uint8


def test_window_plan_covers_the_axis():
    assert plan_axis(100, 40, 0.25, stretch=False, multiple=1) == (40, [0, 30, 60])
    assert plan_axis(30, 40, 0.25, stretch=False, multiple=1) == (40, [0])
    assert plan_axis(45, 40, 0.25, stretch=True, multiple=8) == (48, [0])
    window, starts = plan_axis(155, 32, 0.25, stretch=True, multiple=8)
    assert window == 32 and starts[0] == 0 and starts[-1] == 155 - 32
    assert all(b - a <= 24 for a, b in zip(starts, starts[1:]))


def test_window_starts_cover_the_axis_to_the_last_voxel():
    assert window_starts(100, 40, 0.25) == [0, 30, 60]
    assert window_starts(100, 40, 0.0) == [0, 40, 60]
    assert window_starts(40, 40, 0.5) == [0] and window_starts(10, 40, 0.5) == [0]
    assert window_starts(41, 40, 0.5) == [0, 1]
    assert window_starts(10, 4, 0.9) == list(range(7))  # stride at least 1
    with pytest.raises(ValueError, match="overlap"):
        window_starts(100, 40, 1.0)


def test_gaussian_weights_peak_at_the_centre():
    weights = gaussian_weights((9, 9, 5))
    assert weights[4, 4, 2] == 1.0 and weights.min() >= 1e-3
    assert weights[0, 0, 0] < weights[2, 2, 1] < weights[4, 4, 2]


def constant_model(value: float, fixed=(8, 8, 4)):
    """A model that outputs ``value`` everywhere, whatever comes in."""
    inputs = keras.Input((*fixed, 4))
    logits = keras.layers.Conv3D(
        3,
        1,
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(float(np.log(value / (1 - value)))),
    )(inputs)
    return keras.Model(inputs, keras.layers.Activation("sigmoid")(logits))


def scan(shape=(30, 26, 14), brain=(slice(5, 25), slice(3, 23), slice(2, 12))):
    image = np.zeros(shape + (4,), np.float32)
    image[brain] = np.random.default_rng(0).normal(100, 10, image[brain].shape)
    return image, brain


def first_voxel_model(fixed=(8, 8, 4)):
    """A model whose output varies per window: the sigmoid of the window's first voxel (channel
    0), everywhere in the window and in all three channels."""
    inputs = keras.Input((*fixed, 4))
    corner = keras.layers.Lambda(lambda w: keras.ops.sigmoid(w[:, :1, :1, :1, :1]))(inputs)
    outputs = keras.layers.Lambda(
        lambda c: keras.ops.broadcast_to(c, (keras.ops.shape(c)[0], *fixed, 3))
    )(corner)
    return keras.Model(inputs, outputs)


def test_stitching_is_a_weighted_average_inside_the_brain_box():
    """Each voxel inside the brain box gets the Gaussian-weighted average of the windows over
    it, each window's value differing (computed here by hand); outside the box, zero."""
    image, brain = scan()
    out = predict_volume(first_voxel_model(), image, overlap=0.5)
    crop = clip_intensities(image[brain])  # the brain box, clipped as in training
    # The documented weights, written out here: a Gaussian of sigma window/8 per axis, max 1.
    axes = [np.exp(-0.5 * ((np.arange(w) - (w - 1) / 2) / (w / 8)) ** 2) for w in (8, 8, 4)]
    weights = np.maximum(np.einsum("i,j,k->ijk", *axes) / np.prod([a.max() for a in axes]), 1e-3)
    total, norm = np.zeros(crop.shape[:3]), np.zeros(crop.shape[:3])
    for x in window_starts(crop.shape[0], 8, 0.5):
        for y in window_starts(crop.shape[1], 8, 0.5):
            for z in window_starts(crop.shape[2], 4, 0.5):
                box = (slice(x, x + 8), slice(y, y + 8), slice(z, z + 4))
                value = 1 / (1 + np.exp(-standardize(crop[box])[0, 0, 0, 0]))
                total[box] += weights * value
                norm[box] += weights
    expected = total / norm
    assert expected.std() > 0.05  # the windows disagree: the weighting decides the result
    for channel in range(3):
        np.testing.assert_allclose(out[brain][..., channel], expected, rtol=1e-4)
    inside = np.zeros(image.shape[:3], bool)
    inside[brain] = True
    assert np.all(out[~inside] == 0)


def test_a_scan_without_signal_is_background_without_running_the_network():
    """An all-zero scan: the brain box of nothing would be everything, and a network whose bias
    says 0.9 would paint it all edema; the result must be empty by construction."""
    image = np.zeros((30, 26, 14, 4), np.float32)
    model = constant_model(0.9)
    out = predict_volume(model, image)
    assert out.shape == (30, 26, 14, 3) and not out.any()
    assert not to_label_map(out).any()
    free = unet_model_3d(input_shape=(16, 16, 8, 4), n_base_filters=2, depth=3)
    assert not predict_volume(free, image, tta=True).any()


def test_unet_of_fixed_and_free_size_and_options():
    image, brain = scan((40, 36, 20), (slice(4, 36), slice(2, 30), slice(1, 19)))
    fixed = unet_model_3d(
        input_shape=(16, 16, 8, 4), n_base_filters=2, depth=3, normalization="batch"
    )
    config = config_from_model(fixed)
    assert config == ModelConfig(
        patch_shape=(16, 16, 8), n_base_filters=2, depth=3, normalization="batch"
    )
    out = predict_volume(fixed, image)
    assert out.shape == (40, 36, 20, 3) and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1)) and out[brain].min() > 0
    free = build_model(config, fixed_size=False)
    free.set_weights(fixed.get_weights())
    np.testing.assert_allclose(predict_volume(free, image, patch_shape=(16, 16, 8)), out, atol=1e-5)
    flipped = predict_volume(fixed, image, tta=True, batch_size=3)
    assert flipped.shape == out.shape and not np.allclose(flipped, out)
    bf16 = predict_volume(fixed, image, precision="bf16")
    assert np.abs(bf16 - out).max() < 0.05


def test_a_foreign_fixed_model_slides_its_own_window():
    image, brain = scan()
    out = predict_volume(constant_model(0.3, fixed=(8, 8, 4)), image, overlap=0.25)
    np.testing.assert_allclose(out[brain], 0.3, rtol=1e-5)
    with pytest.raises(ValueError, match="bf16"):
        predict_volume(constant_model(0.3), image, precision="bf16")


def test_seed_tiling_shape():
    image, brain = scan((24, 20, 10))
    out = seed_tiling_predict(
        constant_model(0.6, fixed=(8, 8, 4)), image, window=(8, 8, 4), padded_shape=(32, 24, 12)
    )
    assert out.shape == (24, 20, 10, 3)
    np.testing.assert_allclose(out, 0.6, rtol=1e-5)


# ----------------------------------------------------------------------------- stitching and TTA


def test_windows_land_where_they_were_cut():
    """A predictor that returns its input plus one, on a volume whose every voxel differs: any
    misplaced window changes the result."""
    volume = np.arange(21 * 17 * 11, dtype=np.float32).reshape(21, 17, 11, 1)
    for overlap, batch_size in ((0.0, 1), (0.5, 3), (0.75, 7)):
        out = sliding_window_inference(volume, lambda w: w + 1, (8, 6, 4), overlap, batch_size)
        np.testing.assert_allclose(out, volume + 1, rtol=0, atol=0.05)  # neighbours differ by 1+


def test_overlapping_windows_are_averaged_with_gaussian_weights():
    """A predictor whose output is one value per window (its first voxel): the result must be
    the Gaussian-weighted average of the windows covering each voxel, computed here by hand."""
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(19, 14, 9, 1)).astype(np.float32)
    window, overlap = (8, 6, 4), 0.5
    out = sliding_window_inference(
        volume, lambda w: np.broadcast_to(w[:, :1, :1, :1], w.shape), window, overlap, batch_size=2
    )
    weights = gaussian_weights(window)
    total, norm = np.zeros(volume.shape[:3]), np.zeros(volume.shape[:3])
    for x in window_starts(19, 8, overlap):
        for y in window_starts(14, 6, overlap):
            for z in window_starts(9, 4, overlap):
                box = (slice(x, x + 8), slice(y, y + 6), slice(z, z + 4))
                total[box] += weights * volume[x, y, z, 0]
                norm[box] += weights
    np.testing.assert_allclose(out[..., 0], total / norm, rtol=1e-5)


def test_tta_flips_back_what_it_flipped():
    """A model whose output is not symmetric under the left-right flip: TTA must average the
    prediction with the flipped-back prediction of the flipped scan."""
    inputs = keras.Input((8, 8, 4, 4))
    logits = keras.layers.Conv3D(
        3, 3, padding="same", kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=3)
    )(inputs)
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(logits))
    image = np.random.default_rng(1).normal(100, 20, (8, 8, 4, 4)).astype(np.float32)
    x = standardize(clip_intensities(image))[None]
    plain = model.predict_on_batch(x)[0]
    flipped_back = model.predict_on_batch(np.ascontiguousarray(x[:, ::-1]))[0][::-1]
    assert np.abs(plain - flipped_back).max() > 0.1, "the model must not be flip-symmetric"
    np.testing.assert_allclose(
        predict_volume(model, image, tta=True), (plain + flipped_back) / 2, atol=1e-5
    )
    np.testing.assert_allclose(predict_volume(model, image), plain, atol=1e-5)


# ----------------------------------------------------------------------------- golden


def golden_model_and_scan():
    """A tiny U-Net with fixed weights (drawn from numpy's generator, not Keras's) and a fixed
    scan with a bright lesion."""
    model = unet_model_3d(
        input_shape=(16, 16, 8, 4), n_base_filters=2, depth=3, normalization="batch"
    )
    rng = np.random.default_rng(2026)
    weights = []
    for variable in model.weights:
        value = rng.normal(0, 0.4, variable.shape)
        weights.append(np.abs(value) + 0.5 if "variance" in variable.path else value)
    model.set_weights([w.astype(np.float32) for w in weights])
    scan_rng = np.random.default_rng(7)
    image = np.zeros((40, 36, 20, 4), np.float32)
    image[4:36, 4:32, 2:18] = scan_rng.normal(100, 10, (32, 28, 16, 4))
    image[12:22, 10:20, 6:12] += [60, -20, 40, 50]
    return model, image


def test_golden_label_map():
    """A fixed-weight model and a fixed scan give the stored label map (regenerate it, after a
    deliberate change, with ``python tests/test_inference.py``)."""
    model, image = golden_model_and_scan()
    label_map = to_label_map(predict_volume(model, image, overlap=0.5, tta=True))
    expected = np.load(GOLDEN)["label_map"]
    assert len(np.unique(expected)) >= 3, "the golden map should hold several labels"
    mismatched = np.flatnonzero(label_map != expected)
    assert mismatched.size == 0, f"{mismatched.size} voxels differ from the golden label map"


def test_predictor_from_a_run_folder_uses_its_config_and_threshold(tmp_path):
    import json

    model, image = golden_model_and_scan()
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    config = ModelConfig(patch_shape=(16, 16, 8), n_base_filters=2, depth=3, normalization="batch")
    settings = {
        "data": "x",
        "preset": "cpu",
        "model": config.to_dict(),
        "epochs": 1,
        "steps_per_epoch": 1,
        "batch_size": 1,
        "learning_rate": 0.1,
        "augmentation": Augmentation().to_dict(),
    }
    (run / "config.json").write_text(json.dumps(settings))
    predictor = Predictor.from_run(run)
    assert predictor.note and "not calibrated" in predictor.note and predictor.threshold == 0.5
    # A run that does not calibrate uses the default threshold, and that needs no note.
    (run / "config.json").write_text(json.dumps(settings | {"calibrate": False}))
    predictor = Predictor.from_run(run)
    assert (predictor.note, predictor.threshold, predictor.threshold_source) == (
        None,
        0.5,
        "default",
    )
    (run / "state.json").write_text(json.dumps({"epoch": 1, "threshold": 0.3}))
    predictor = Predictor.from_run(run)
    assert (predictor.config, predictor.patch_shape, predictor.threshold) == (
        config,
        (16, 16, 8),
        0.3,
    )
    assert predictor.note is None and predictor.threshold_source == "calibrated"
    # calibrated before the minimum existed: none, every enhancing voxel kept
    assert (predictor.et_min_voxels, predictor.et_min_voxels_source) == (0, "default")
    probabilities = predict_volume(model, image)
    np.testing.assert_allclose(predictor.predict(image), probabilities, atol=1e-6)
    label_map = to_label_map(probabilities, 0.3)
    np.testing.assert_array_equal(predictor.segment(image), label_map)
    # The run's enhancing-tumour minimum relabels a smaller one; segment's argument overrides it.
    enhancing = int(np.count_nonzero(label_map == 3))
    assert enhancing > 0, "the golden scan's label map should hold enhancing tumour"
    state = {"epoch": 1, "threshold": 0.3, "et_min_voxels": enhancing + 1}
    (run / "state.json").write_text(json.dumps(state))
    predictor = Predictor.from_run(run)
    assert (predictor.et_min_voxels, predictor.et_min_voxels_source) == (
        enhancing + 1,
        "calibrated",
    )
    relabelled = np.where(label_map == 3, 2, label_map)
    np.testing.assert_array_equal(predictor.segment(image), relabelled)
    np.testing.assert_array_equal(predictor.segment(image, et_min_voxels=0), label_map)
    # A network that sees scans downsampled predicts the coarse scan, brought back to the grid.
    coarse = replace(config, downsample=2)
    (run / "config.json").write_text(json.dumps(settings | {"model": coarse.to_dict()}))
    predictor = Predictor.from_run(run)
    expected = upsample_probabilities(
        predict_volume(model, downsample_image(image, 2)), image.shape, 2
    )
    probabilities = predictor.predict(image)
    assert probabilities.shape == image.shape[:3] + (3,)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


if __name__ == "__main__":
    model, image = golden_model_and_scan()
    label_map = to_label_map(predict_volume(model, image, overlap=0.5, tta=True))
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, label_map=label_map)
    print(GOLDEN, np.unique(label_map, return_counts=True))


def test_region_label_map_nests_et_in_tc_in_wt():
    probabilities = np.array(
        [
            [0.1, 0.2, 0.3],  # nothing above 0.5 -> background
            [0.9, 0.2, 0.1],  # WT only -> 1
            [0.9, 0.6, 0.4],  # TC -> 2
            [0.3, 0.4, 0.7],  # ET wins whatever WT, TC say -> 3
            [0.2, 0.8, 0.1],
        ],  # TC without WT -> 2
        np.float32,
    ).reshape(5, 1, 1, 3)
    assert to_label_map(probabilities, output="regions").ravel().tolist() == [0, 1, 2, 3, 2]
    assert to_label_map(probabilities, 0.85, "regions").ravel().tolist() == [0, 1, 1, 0, 0]
    assert to_label_map(probabilities).ravel().tolist() == [0, 1, 1, 3, 2]  # the classes' rule
    with pytest.raises(ValueError, match="output"):
        to_label_map(probabilities, output="labels")
