"""tumorseg.inference: label maps, sliding-window stitching, model sizes, TTA and bf16."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tumorseg.inference import (config_from_model, gaussian_weights, plan_axis, predict_volume,
                                seed_tiling_predict, to_label_map)
from tumorseg.model import ModelConfig, build_model, unet_model_3d


def test_label_map_takes_the_most_probable_channel_above_threshold():
    probabilities = np.array([[0.1, 0.2, 0.3],    # none above 0.5 -> background
                              [0.9, 0.6, 0.7],    # edema most probable
                              [0.6, 0.55, 0.8],   # enhancing
                              [0.2, 0.51, 0.4]],  # non-enhancing
                             np.float32).reshape(4, 1, 1, 3)
    assert to_label_map(probabilities).ravel().tolist() == [0, 1, 3, 2]
    assert to_label_map(probabilities, threshold=0.85).ravel().tolist() == [0, 1, 0, 0]
    assert to_label_map(probabilities).dtype == np.uint8


def test_window_plan_covers_the_axis():
    assert plan_axis(100, 40, 0.25, stretch=False, multiple=1) == (40, [0, 30, 60])
    assert plan_axis(30, 40, 0.25, stretch=False, multiple=1) == (40, [0])
    assert plan_axis(45, 40, 0.25, stretch=True, multiple=8) == (48, [0])
    window, starts = plan_axis(155, 32, 0.25, stretch=True, multiple=8)
    assert window == 32 and starts[0] == 0 and starts[-1] == 155 - 32
    assert all(b - a <= 24 for a, b in zip(starts, starts[1:]))


def test_gaussian_weights_peak_at_the_centre():
    weights = gaussian_weights((9, 9, 5))
    assert weights[4, 4, 2] == 1.0 and weights.min() >= 1e-3
    assert weights[0, 0, 0] < weights[2, 2, 1] < weights[4, 4, 2]


def constant_model(value: float, fixed=(8, 8, 4)):
    """A model that outputs ``value`` everywhere, whatever comes in."""
    inputs = keras.Input((*fixed, 4))
    logits = keras.layers.Conv3D(3, 1, kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant(
                                     float(np.log(value / (1 - value)))))(inputs)
    return keras.Model(inputs, keras.layers.Activation("sigmoid")(logits))


def scan(shape=(30, 26, 14), brain=(slice(5, 25), slice(3, 23), slice(2, 12))):
    image = np.zeros(shape + (4,), np.float32)
    image[brain] = np.random.default_rng(0).normal(100, 10, image[brain].shape)
    return image, brain


def test_stitching_is_a_weighted_average_inside_the_brain_box():
    image, brain = scan()
    out = predict_volume(constant_model(0.7), image, overlap=0.5)
    inside = np.zeros(image.shape[:3], bool)
    inside[brain] = True
    np.testing.assert_allclose(out[inside], 0.7, rtol=1e-5)
    assert np.all(out[~inside] == 0)


def test_unet_of_fixed_and_free_size_and_options():
    image, brain = scan((40, 36, 20), (slice(4, 36), slice(2, 30), slice(1, 19)))
    fixed = unet_model_3d(input_shape=(16, 16, 8, 4), n_base_filters=2, depth=3,
                          normalization="batch")
    config = config_from_model(fixed)
    assert config == ModelConfig(patch_shape=(16, 16, 8), n_base_filters=2, depth=3,
                                 normalization="batch")
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
    out = seed_tiling_predict(constant_model(0.6, fixed=(8, 8, 4)), image, window=(8, 8, 4),
                              padded_shape=(32, 24, 12))
    assert out.shape == (24, 20, 10, 3)
    np.testing.assert_allclose(out, 0.6, rtol=1e-5)
