"""The graded checks pass the library's functions and the solution notebooks' functions, and
reject, per exercise, the typical wrong implementations with a message that names the exercise
and says what to look at."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import public_tests
import util
from tumorseg import data, inference, metrics, patches

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


LIBRARY = {name: public_tests.library_version(name) for name in public_tests.EXERCISES}


def test_there_is_one_check_per_exercise():
    checks = {name[5:] for name in dir(public_tests) if name.startswith("test_")}
    assert checks == set(public_tests.EXERCISES)
    for name, exercise in public_tests.EXERCISES.items():
        assert LIBRARY[name].__module__ == exercise.library  # defined there, not re-exported
        assert (NOTEBOOKS / f"{exercise.notebook}.ipynb").exists()


def test_parameter_count_by_hand():
    assert public_tests.unet_parameters() == 16_318_307
    assert public_tests.unet_parameters(n_base_filters=8, batch_norm=True) == 1_023_355


@pytest.mark.parametrize("exercise", sorted(LIBRARY))
def test_library_passes(exercise, capsys):
    getattr(public_tests, f"test_{exercise}")(LIBRARY[exercise])
    assert "All tests passed." in capsys.readouterr().out


@pytest.fixture(scope="module")
def solutions():
    """The solution notebooks' exercise cells, run in order into one namespace."""
    namespace: dict = {"__name__": "solutions"}
    for notebook in dict.fromkeys(e.notebook for e in public_tests.EXERCISES.values()):
        util.load_exercise_cells(NOTEBOOKS / f"{notebook}.ipynb", namespace)
    return namespace


@pytest.mark.parametrize("exercise", sorted(LIBRARY))
def test_solution_notebooks_pass(exercise, solutions, capsys):
    getattr(public_tests, f"test_{exercise}")(solutions[exercise])
    assert "All tests passed." in capsys.readouterr().out


# ----------------------------------------------------------------------------- 01


def voxels_unique(label, num_classes=4):
    return np.unique(label, return_counts=True)[1]


def voxels_first_slice(label, num_classes=4):
    return np.bincount(label[:, :, 0].ravel(), minlength=num_classes)


def voxels_bincount_no_minlength(label, num_classes=4):
    return np.bincount(label.ravel())


def voxels_no_background(label, num_classes=4):
    return np.array([np.sum(label == c) for c in range(1, num_classes)])


def voxels_skeleton(label, num_classes=4):
    counts = np.zeros(num_classes, dtype=np.int64)
    for c in range(None):
        counts[c] = None
    return counts


# ----------------------------------------------------------------------------- 02


def standardize_whole_channel(image):
    mean, std = image.mean(axis=(0, 1, 2)), image.std(axis=(0, 1, 2))
    return (image - mean) / np.where(std > 0, std, 1)


def standardize_divides_by_zero(image):
    return (image - image.mean(axis=(0, 1), keepdims=True)) / image.std(axis=(0, 1), keepdims=True)


def standardize_x_slices(image):
    mean, std = image.mean(axis=(1, 2), keepdims=True), image.std(axis=(1, 2), keepdims=True)
    return (image - mean) / np.where(std > 0, std, 1)


def standardize_in_place(image):
    image[...] = patches.standardize(image)
    return image


def standardize_zeros_like(image):
    out = np.zeros_like(image)
    for c in range(image.shape[3]):
        for z in range(image.shape[2]):
            piece = image[:, :, z, c] - image[:, :, z, c].mean()
            std = piece.std()
            out[:, :, z, c] = piece / std if std else piece
    return out


def sub_volume_channels_first(image, label, **kwargs):
    X, y = patches.get_sub_volume(image, label, **kwargs)
    return np.moveaxis(X, -1, 0), np.moveaxis(y, -1, 0)


def sub_volume_background_kept(image, label, **kwargs):
    X, y = patches.get_sub_volume(image, label, **kwargs)
    return X, np.concatenate([1 - y.sum(-1, keepdims=True), y], -1)[..., :3]


def seed_loop(corner_high=1, accept=lambda share, threshold: share < threshold, endless=False):
    """The seed's rejection loop with a chosen upper bound of the corner and acceptance test."""

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
    ):
        tries = 0
        while endless or tries < max_tries:
            tries += 1
            x, y, z = (
                np.random.randint(0, o - w + corner_high)
                for o, w in ((orig_x, output_x), (orig_y, output_y), (orig_z, output_z))
            )
            box = (slice(x, x + output_x), slice(y, y + output_y), slice(z, z + output_z))
            encoded = np.eye(num_classes)[label[box]]
            if accept(encoded[..., 0].mean(), background_threshold):
                return image[box].copy(), encoded[..., 1:]
        return None

    return get_sub_volume


sub_volume_corner_off_by_one = seed_loop(corner_high=0)
sub_volume_threshold_inclusive = seed_loop(accept=lambda share, threshold: share <= threshold)
sub_volume_endless_loop = seed_loop(endless=True)


def sub_volume_label_off_by_one(
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
):
    for _ in range(max_tries):
        x, y, z = (
            np.random.randint(0, o - w + 1)
            for o, w in ((orig_x, output_x), (orig_y, output_y), (orig_z, output_z))
        )
        window = label[x + 1 : x + 1 + output_x, y : y + output_y, z : z + output_z]
        if window.shape[0] == output_x and np.mean(window == 0) < background_threshold:
            X = image[x : x + output_x, y : y + output_y, z : z + output_z]
            return X, patches.one_hot(window, num_classes)
    return None


def sub_volume_ignores_threshold(
    image,
    label,
    orig_x=240,
    orig_y=240,
    orig_z=155,
    output_x=160,
    output_y=160,
    output_z=16,
    num_classes=4,
    **_,
):
    x, y, z = (
        np.random.randint(0, o - w + 1)
        for o, w in ((orig_x, output_x), (orig_y, output_y), (orig_z, output_z))
    )
    box = (slice(x, x + output_x), slice(y, y + output_y), slice(z, z + output_z))
    return image[box], patches.one_hot(label[box], num_classes)


# ----------------------------------------------------------------------------- 03


def unet_variant(
    skip=True,
    output="sigmoid",
    pool_last=False,
    doubling=True,
    fixed_depth=None,
    batch_norm=True,
    relu_first=False,
    skip_offset=0,
):
    """The seed's U-Net with one thing changed."""

    def unet_model_3d(
        input_shape=(160, 160, 16, 4), n_labels=3, depth=4, n_base_filters=32, normalization=None
    ):
        import keras
        from keras import layers

        depth = fixed_depth or depth

        def block(x, filters):
            x = layers.Conv3D(filters, 3, padding="same")(x)
            if relu_first:
                x = layers.Activation("relu")(x)
            if normalization == "batch" and batch_norm:
                x = layers.BatchNormalization()(x)
            return x if relu_first else layers.Activation("relu")(x)

        inputs = keras.Input(input_shape)
        x, skips = inputs, []
        for level in range(depth):
            filters = n_base_filters * 2**level
            x = block(block(x, filters), 2 * filters if doubling else filters)
            skips.append(x)
            if level < depth - 1 or pool_last:
                x = layers.MaxPooling3D(2)(x)
        if pool_last:
            x = layers.UpSampling3D(2)(x)
        for level in range(depth - 2, -1, -1):
            x = layers.UpSampling3D(2)(x)
            if skip:
                x = layers.Concatenate()([x, skips[level + skip_offset]])
            x = block(block(x, skips[level].shape[-1]), skips[level].shape[-1])
        return keras.Model(inputs, layers.Conv3D(n_labels, 1, activation=output)(x))

    return unet_model_3d


# ----------------------------------------------------------------------------- 04


def dice_eps_numerator_only(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return (2 * np.sum(y_true * y_pred, axis) + epsilon) / (
        np.sum(y_true, axis) + np.sum(y_pred, axis)
    )


def dice_eps_denominator_only(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return (
        2 * np.sum(y_true * y_pred, axis) / (np.sum(y_true, axis) + np.sum(y_pred, axis) + epsilon)
    )


def dice_with_squares(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return (2 * np.sum(y_true * y_pred, axis) + epsilon) / (
        np.sum(y_true**2, axis) + np.sum(y_pred**2, axis) + epsilon
    )


def dice_ignores_axis(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return metrics.single_class_dice_coefficient(y_true, y_pred, (0, 1, 2), epsilon)


def dice_xy_only(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return metrics.single_class_dice_coefficient(y_true, y_pred, (0, 1), epsilon)


def dice_sums_everything(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return metrics.single_class_dice_coefficient(y_true, y_pred, None, epsilon)


def mean_dice_channels_first(y_true, y_pred, axis=(1, 2, 3), epsilon=1e-5):
    return np.mean(metrics.single_class_dice_coefficient(y_true, y_pred, axis, epsilon))


def mean_dice_pooled(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return metrics.single_class_dice_coefficient(y_true, y_pred, (0, 1, 2, 3), epsilon)


def mean_dice_ignores_axis(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return metrics.dice_coefficient(y_true, y_pred, (0, 1, 2), epsilon)


def mean_dice_sums_classes(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return np.sum(metrics.single_class_dice_coefficient(y_true, y_pred, axis, epsilon))


def loss_no_squares(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return 1 - metrics.dice_coefficient(y_true, y_pred, axis, epsilon)


def loss_eps_once(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    num = 2 * np.sum(y_true * y_pred, axis)
    den = np.sum(y_true**2, axis) + np.sum(y_pred**2, axis) + epsilon
    return 1 - np.mean(num / den)


def loss_returns_dice(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return 1 - metrics.soft_dice_loss(y_true, y_pred, axis, epsilon)


def loss_ignores_axis(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return metrics.soft_dice_loss(y_true, y_pred, (0, 1, 2), epsilon)


def dice_numpy(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return (2 * np.sum(y_true * y_pred, axis) + epsilon) / (
        np.sum(y_true, axis) + np.sum(y_pred, axis) + epsilon
    )


def mean_dice_numpy(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return np.mean(dice_numpy(y_true, y_pred, axis, epsilon))


def loss_numpy(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    numerator = 2 * np.sum(y_true * y_pred, axis=axis) + epsilon
    denominator = np.sum(y_true**2, axis=axis) + np.sum(y_pred**2, axis=axis) + epsilon
    return 1 - np.mean(numerator / denominator)


def loss_array_methods(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    numerator = 2 * (y_true * y_pred).sum(axis=axis) + epsilon
    denominator = (y_true**2).sum(axis=axis) + (y_pred**2).sum(axis=axis) + epsilon
    return 1 - (numerator / denominator).mean()


def sens_spec_precision(pred, label, class_num):
    p, truth = pred[..., class_num], label[..., class_num]
    tp, fp = np.sum(p * truth), np.sum(p * (1 - truth))
    tn = np.sum((1 - p) * (1 - truth))
    return tp / (tp + fp), tn / (tn + fp)


def sens_spec_channels_first(pred, label, class_num):
    p, truth = pred[class_num], label[class_num]
    tp, fn = np.sum(p * truth), np.sum((1 - p) * truth)
    tn, fp = np.sum((1 - p) * (1 - truth)), np.sum(p * (1 - truth))
    return tp / (tp + fn), tn / (tn + fp)


def sens_spec_npv(pred, label, class_num):
    p, truth = pred[..., class_num], label[..., class_num]
    tp, fn = np.sum(p * truth), np.sum((1 - p) * truth)
    tn = np.sum((1 - p) * (1 - truth))
    return tp / (tp + fn), tn / (tn + fn)


def sens_spec_python_division(pred, label, class_num):
    p, truth = pred[..., class_num] == 1, label[..., class_num] == 1
    tp, fn = int(np.sum(p & truth)), int(np.sum(~p & truth))
    tn, fp = int(np.sum(~p & ~truth)), int(np.sum(p & ~truth))
    return tp / (tp + fn), tn / (tn + fp)


def sens_spec_df_swapped_rows(pred, label):
    return metrics.get_sens_spec_df(pred, label).iloc[::-1].set_axis(["Sensitivity", "Specificity"])


def sens_spec_df_wrong_columns(pred, label):
    table = metrics.get_sens_spec_df(pred, label)
    table.columns = ["edema", "non-enhancing", "enhancing"]
    return table


def sens_spec_df_background_kept(pred, label):
    table = pd.DataFrame(index=["Sensitivity", "Specificity"], columns=list(data.CLASS_NAMES))
    for i, name in enumerate(data.CLASS_NAMES):
        sens, spec = metrics.compute_class_sens_spec(pred, label, max(i - 1, 0))
        table.loc["Sensitivity", name], table.loc["Specificity", name] = sens, spec
    return table


def sens_spec_df_class_plus_one(pred, label):
    table = pd.DataFrame(
        index=["Sensitivity", "Specificity"], columns=list(data.CLASS_NAMES), dtype=float
    )
    for i, name in enumerate(data.CLASS_NAMES):
        table.loc["Sensitivity", name], table.loc["Specificity", name] = (
            metrics.compute_class_sens_spec(pred, label, i + 1)
        )
    return table


def sens_spec_df_not_rounded(pred, label):
    table = pd.DataFrame(
        index=["Sensitivity", "Specificity"], columns=list(data.CLASS_NAMES), dtype=float
    )
    for i, name in enumerate(data.CLASS_NAMES):
        table.loc["Sensitivity", name], table.loc["Specificity", name] = (
            metrics.compute_class_sens_spec(pred, label, i)
        )
    return table


# ----------------------------------------------------------------------------- 05


def step_variant(
    training=True, axis=(0, 1, 2, 3), apply=True, sign=1.0, after=False, reduce=True, taped=True
):
    def train_step(model, optimizer, x, y):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            p = model(x, training=training) if taped else tf.stop_gradient(model(x))
            loss = (
                metrics.soft_dice_loss(y, p, axis=axis)
                if reduce
                else 1
                - (2 * tf.reduce_sum(y * p, axis=(1, 2, 3)) + 1e-5)
                / (tf.reduce_sum(y * y + p * p, axis=(1, 2, 3)) + 1e-5)
            )
        gradients = tape.gradient(loss, model.trainable_variables)
        if apply:
            optimizer.apply_gradients(
                (g if sign == 1.0 else sign * g, v)
                for g, v in zip(gradients, model.trainable_variables)
            )
        if after:
            return metrics.soft_dice_loss(y, model(x, training=True), axis=axis)
        return loss

    return train_step


# ----------------------------------------------------------------------------- 06


def starts_without_last(length, window, overlap):
    stride = max(1, int(window * (1 - overlap)))
    return list(range(0, max(length - window, 0) + 1, stride))


def starts_last_twice(length, window, overlap):
    if length <= window:
        return [0]
    stride = max(1, int(window * (1 - overlap)))
    return list(range(0, length - window + 1, stride)) + [length - window]


def starts_stride_is_overlap(length, window, overlap):
    return inference.window_starts(length, window, 1 - overlap if overlap else 0.0)


def starts_rounded_stride(length, window, overlap):
    if length <= window:
        return [0]
    stride = max(1, round(window * (1 - overlap)))
    return list(range(0, length - window, stride)) + [length - window]


def starts_short_axis_negative(length, window, overlap):
    stride = max(1, int(window * (1 - overlap)))
    return list(range(0, length - window, stride)) + [length - window]


def starts_stride_without_max(length, window, overlap):
    if length <= window:
        return [0]
    return list(range(0, length - window, int(window * (1 - overlap)))) + [length - window]


def starts_float_stride(length, window, overlap):
    if length <= window:
        return [0]
    return list(range(0, length - window, window * (1 - overlap))) + [length - window]


def starts_endless(length, window, overlap):
    starts, start = [], 0
    stride = int(window * (1 - overlap))
    while start < length - window:
        starts.append(start)
        start += stride
    return starts + [max(length - window, 0)]


def label_map_inclusive(probabilities, threshold=0.5):
    best = np.argmax(probabilities, axis=-1) + 1
    return np.where(probabilities.max(axis=-1) >= threshold, best, 0).astype(np.uint8)


def label_map_no_plus_one(probabilities, threshold=0.5):
    best = np.argmax(probabilities, axis=-1)
    return np.where(probabilities.max(axis=-1) > threshold, best, 0).astype(np.uint8)


def label_map_last_wins(probabilities, threshold=0.5):
    label = np.zeros(probabilities.shape[:-1], np.uint8)
    for channel in range(3):
        label[probabilities[..., channel] > threshold] = channel + 1
    return label


def label_map_fixed_threshold(probabilities, threshold=0.5):
    return inference.to_label_map(probabilities, 0.5)


def label_map_int64(probabilities, threshold=0.5):
    return inference.to_label_map(probabilities, threshold).astype(np.int64)


WRONG = [
    ("voxels_per_class", voxels_unique, "One count per class"),
    ("voxels_per_class", voxels_first_slice, "all z-slices"),
    ("voxels_per_class", voxels_bincount_no_minlength, "minlength"),
    ("voxels_per_class", voxels_no_background, "in order 0 (background)"),
    ("voxels_per_class", voxels_skeleton, "Is a None from the skeleton still there?"),
    ("standardize", standardize_whole_channel, "each channel of each z-slice"),
    ("standardize", standardize_divides_by_zero, "NaN or Inf"),
    ("standardize", standardize_x_slices, "image[:, :, z, c]"),
    ("standardize", standardize_in_place, "was modified"),
    ("standardize", standardize_zeros_like, "np.zeros_like"),
    ("get_sub_volume", sub_volume_channels_first, "channels last"),
    ("get_sub_volume", sub_volume_background_kept, "without background"),
    ("get_sub_volume", sub_volume_label_off_by_one, "one-hot label of X's window"),
    ("get_sub_volume", sub_volume_ignores_threshold, "not below background_threshold"),
    ("get_sub_volume", sub_volume_corner_off_by_one, "orig_x - output_x + 1"),
    ("get_sub_volume", sub_volume_threshold_inclusive, "(<, not <=)"),
    ("get_sub_volume", sub_volume_endless_loop, "did not finish within"),
    ("unet_model_3d", unet_variant(skip=False), "Concatenate"),
    ("unet_model_3d", unet_variant(output="softmax"), "sigmoid"),
    ("unet_model_3d", unet_variant(pool_last=True), "MaxPooling3D"),
    ("unet_model_3d", unet_variant(doubling=False), "parameters"),
    ("unet_model_3d", unet_variant(fixed_depth=4), "depth=3"),
    ("unet_model_3d", unet_variant(batch_norm=False), "BatchNormalization"),
    ("unet_model_3d", unet_variant(relu_first=True), "apply ReLU after it"),
    ("unet_model_3d", unet_variant(skip_offset=1), "the skip of the same resolution"),
    ("single_class_dice_coefficient", dice_eps_numerator_only, "epsilon"),
    ("single_class_dice_coefficient", dice_eps_denominator_only, "epsilon"),
    ("single_class_dice_coefficient", dice_with_squares, "no squares"),
    ("single_class_dice_coefficient", dice_ignores_axis, "axis=(1, 2, 3)"),
    ("single_class_dice_coefficient", dice_xy_only, "covers x, y and z"),
    ("single_class_dice_coefficient", dice_sums_everything, "axis=(1, 2, 3)"),
    ("single_class_dice_coefficient", dice_numpy, "Write it with keras.ops"),
    ("dice_coefficient", mean_dice_channels_first, "mean over classes"),
    ("dice_coefficient", mean_dice_pooled, "mean over classes"),
    ("dice_coefficient", mean_dice_ignores_axis, "axis=(1, 2, 3)"),
    ("dice_coefficient", mean_dice_sums_classes, "mean over classes"),
    ("dice_coefficient", mean_dice_numpy, "Write it with keras.ops"),
    ("soft_dice_loss", loss_no_squares, "squares in the denominator"),
    ("soft_dice_loss", loss_eps_once, "eps in both places"),
    ("soft_dice_loss", loss_returns_dice, "Loss = 1 - mean"),
    ("soft_dice_loss", loss_ignores_axis, "axis=(1, 2, 3)"),
    ("soft_dice_loss", loss_numpy, "Write it with keras.ops"),
    ("soft_dice_loss", loss_array_methods, "Write it with keras.ops"),
    ("compute_class_sens_spec", sens_spec_precision, "not precision"),
    ("compute_class_sens_spec", sens_spec_channels_first, "last axis"),
    ("compute_class_sens_spec", sens_spec_npv, "not TN / (TN + FN)"),
    ("compute_class_sens_spec", sens_spec_python_division, "ZeroDivisionError"),
    ("get_sens_spec_df", sens_spec_df_swapped_rows, "compute_class_sens_spec"),
    ("get_sens_spec_df", sens_spec_df_wrong_columns, "columns should be"),
    ("get_sens_spec_df", sens_spec_df_background_kept, "class_num 0, 1, 2"),
    ("get_sens_spec_df", sens_spec_df_not_rounded, "rounded to 4 decimals"),
    ("get_sens_spec_df", sens_spec_df_class_plus_one, "0, 1, 2 for the three columns"),
    ("train_step", step_variant(training=False), "training=True"),
    ("train_step", step_variant(axis=(1, 2, 3)), "axis=(0, 1, 2, 3)"),
    ("train_step", step_variant(apply=False), "apply the gradients"),
    ("train_step", step_variant(sign=-1.0), "down the gradient"),
    ("train_step", step_variant(after=True), "before apply_gradients"),
    ("train_step", step_variant(reduce=False), "one number for the batch"),
    ("train_step", step_variant(taped=False), "inside `with tf.GradientTape() as tape:`"),
    ("window_starts", starts_without_last, "last window must end at the last voxel"),
    ("window_starts", starts_last_twice, "each start once"),
    ("window_starts", starts_stride_is_overlap, "stride is max(1, int(window * (1 - overlap)))"),
    ("window_starts", starts_rounded_stride, "int(window * (1 - overlap))"),
    ("window_starts", starts_short_axis_negative, "one window, at 0"),
    ("window_starts", starts_endless, "did not finish within"),
    ("window_starts", starts_stride_without_max, "A stride of 0"),
    ("window_starts", starts_float_stride, "range() takes whole numbers"),
    ("to_label_map", label_map_inclusive, "(>, not >=)"),
    ("to_label_map", label_map_no_plus_one, "add 1"),
    ("to_label_map", label_map_last_wins, "highest probability"),
    ("to_label_map", label_map_fixed_threshold, "threshold argument"),
    ("to_label_map", label_map_int64, "uint8"),
]


def _name(wrong) -> str:
    return getattr(wrong, "__qualname__", repr(wrong))


@pytest.mark.parametrize(
    "exercise, wrong, says", WRONG, ids=[f"{e}-{i}" for i, (e, _, _) in enumerate(WRONG)]
)
def test_wrong_versions_fail_with_a_message(exercise, wrong, says, monkeypatch):
    monkeypatch.setattr(public_tests, "SECONDS_PER_CALL", 2.0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AssertionError) as caught:
            getattr(public_tests, f"test_{exercise}")(wrong)
    message = str(caught.value)
    assert message.startswith(f"{exercise}:"), message
    assert says in message, message
    assert not re.search(r"[^.\s]\.\.(\s|$)", message), message  # no doubled full stop
    if "skeleton" not in says:  # the skeleton hint only where a None is involved
        assert "None from the skeleton" not in message, message


def test_every_exercise_has_wrong_versions():
    assert {exercise for exercise, _, _ in WRONG} == set(LIBRARY)


def _exercise_cell(notebook: str, grade_id: str) -> str:
    cells = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"]
    return next(
        "".join(c["source"])
        for c in cells
        if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id
    )


@pytest.mark.parametrize(
    "later, earlier, wrong_earlier",
    [
        ("get_sens_spec_df", "compute_class_sens_spec", sens_spec_precision),
        ("train_step", "soft_dice_loss", loss_numpy),
    ],
)
def test_a_later_exercise_is_graded_on_its_own(later, earlier, wrong_earlier, capsys):
    """The solution of a later exercise whose earlier one (in its namespace) is wrong passes:
    its check uses the library's version of the earlier one and says so, then puts the
    learner's back."""
    namespace = {"__name__": "learner", earlier: wrong_earlier}
    exec(_exercise_cell(public_tests.EXERCISES[later].notebook, later), namespace)
    getattr(public_tests, f"test_{later}")(namespace[later])
    out = capsys.readouterr().out
    assert (
        f"({earlier} does not pass its own check yet, so this check used the library's "
        f"version of it.)"
    ) in out
    assert "All tests passed." in out
    assert namespace[earlier] is wrong_earlier


def test_a_check_prints_only_its_verdict(capsys):
    """What the learner's function prints (the skeleton's "Giving up" line) stays out."""

    def chatty_get_sub_volume(*args, **kwargs):
        print("Tried 5 times to find a sub-volume. Giving up...")
        return patches.get_sub_volume(*args, **kwargs)

    public_tests.test_get_sub_volume(chatty_get_sub_volume)
    assert capsys.readouterr().out.strip() == "\033[92mAll tests passed.\033[0m"


def test_failure_message_says_expected_and_got():
    with pytest.raises(AssertionError, match=r"expected 0\.4286, got 0\.5000"):
        public_tests.test_soft_dice_loss(loss_no_squares)


def test_a_hang_in_another_thread_also_stops(monkeypatch):
    """Outside the main thread the check abandons the learner's function after the time limit;
    this one waits until the test ends (an abandoned loop that allocates would run on for the
    rest of the suite)."""
    import threading

    monkeypatch.setattr(public_tests, "SECONDS_PER_CALL", 1.0)
    caught, release = {}, threading.Event()

    def hangs(length, window, overlap):
        release.wait()
        return [0]

    def run():
        try:
            public_tests.test_window_starts(hangs)
        except AssertionError as error:
            caught["message"] = str(error)

    worker = threading.Thread(target=run)
    try:
        worker.start()
        worker.join(10)
    finally:
        release.set()
    assert "did not finish within 1 seconds" in caught["message"]
