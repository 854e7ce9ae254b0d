"""The graded checks pass the library's own functions and fail deliberately wrong versions."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import public_tests
from tumorseg import metrics, patches

LIBRARY = {
    "single_class_dice_coefficient": metrics.single_class_dice_coefficient,
    "dice_coefficient": metrics.dice_coefficient,
    "soft_dice_loss": metrics.soft_dice_loss,
    "compute_class_sens_spec": metrics.compute_class_sens_spec,
    "get_sens_spec_df": metrics.get_sens_spec_df,
    "standardize": patches.standardize,
    "get_sub_volume": patches.get_sub_volume,
}


def test_there_is_one_check_per_exercise():
    checks = {name[5:] for name in dir(public_tests) if name.startswith("test_")}
    assert checks == set(LIBRARY)


@pytest.mark.parametrize("exercise", sorted(LIBRARY))
def test_library_passes(exercise, capsys):
    getattr(public_tests, f"test_{exercise}")(LIBRARY[exercise])
    assert "All tests passed." in capsys.readouterr().out


# ----------------------------------------------------------------------------- wrong versions


def dice_eps_numerator_only(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return (2 * np.sum(y_true * y_pred, axis) + epsilon) / (np.sum(y_true, axis) + np.sum(y_pred, axis))


def dice_eps_denominator_only(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return 2 * np.sum(y_true * y_pred, axis) / (np.sum(y_true, axis) + np.sum(y_pred, axis) + epsilon)


def dice_with_squares(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return (2 * np.sum(y_true * y_pred, axis) + epsilon) / (
        np.sum(y_true**2, axis) + np.sum(y_pred**2, axis) + epsilon)


def mean_dice_channels_first(y_true, y_pred, axis=(1, 2, 3), epsilon=1e-5):
    return np.mean(metrics.single_class_dice_coefficient(y_true, y_pred, axis, epsilon))


def mean_dice_pooled(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return metrics.single_class_dice_coefficient(y_true, y_pred, (0, 1, 2, 3), epsilon)


def loss_no_squares(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return 1 - metrics.dice_coefficient(y_true, y_pred, axis, epsilon)


def loss_eps_once(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    num = 2 * np.sum(y_true * y_pred, axis)
    den = np.sum(y_true**2, axis) + np.sum(y_pred**2, axis) + epsilon
    return 1 - np.mean(num / den)


def loss_returns_dice(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    return 1 - metrics.soft_dice_loss(y_true, y_pred, axis, epsilon)


def sens_spec_precision(pred, label, class_num):
    p, l = pred[..., class_num], label[..., class_num]
    tp, fp = np.sum(p * l), np.sum(p * (1 - l))
    tn = np.sum((1 - p) * (1 - l))
    return tp / (tp + fp), tn / (tn + fp)


def sens_spec_channels_first(pred, label, class_num):
    p, l = pred[class_num], label[class_num]
    tp, fn = np.sum(p * l), np.sum((1 - p) * l)
    tn, fp = np.sum((1 - p) * (1 - l)), np.sum(p * (1 - l))
    return tp / (tp + fn), tn / (tn + fp)


def sens_spec_npv(pred, label, class_num):
    p, l = pred[..., class_num], label[..., class_num]
    tp, fn = np.sum(p * l), np.sum((1 - p) * l)
    tn = np.sum((1 - p) * (1 - l))
    return tp / (tp + fn), tn / (tn + fn)


def sens_spec_df_swapped_rows(pred, label):
    return metrics.get_sens_spec_df(pred, label).iloc[::-1].set_axis(["Sensitivity", "Specificity"])


def sens_spec_df_wrong_columns(pred, label):
    table = metrics.get_sens_spec_df(pred, label)
    table.columns = ["edema", "non-enhancing", "enhancing"]
    return table


def sens_spec_df_background_kept(pred, label):
    table = pd.DataFrame(index=["Sensitivity", "Specificity"], columns=public_tests.CLASS_NAMES)
    for i, name in enumerate(public_tests.CLASS_NAMES):
        sens, spec = metrics.compute_class_sens_spec(pred, label, max(i - 1, 0))
        table.loc["Sensitivity", name], table.loc["Specificity", name] = sens, spec
    return table


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


def sub_volume_channels_first(image, label, **kwargs):
    X, y = patches.get_sub_volume(image, label, **kwargs)
    return np.moveaxis(X, -1, 0), np.moveaxis(y, -1, 0)


def sub_volume_background_kept(image, label, **kwargs):
    X, y = patches.get_sub_volume(image, label, **kwargs)
    return X, np.concatenate([1 - y.sum(-1, keepdims=True), y], -1)[..., :3]


def sub_volume_label_off_by_one(image, label, orig_x=240, orig_y=240, orig_z=155, output_x=160,
                                output_y=160, output_z=16, num_classes=4, max_tries=1000,
                                background_threshold=0.95):
    for _ in range(max_tries):
        x, y, z = (np.random.randint(0, o - w) for o, w in ((orig_x, output_x), (orig_y, output_y),
                                                             (orig_z, output_z)))
        window = label[x + 1:x + 1 + output_x, y:y + output_y, z:z + output_z]
        if window.shape[0] == output_x and np.mean(window == 0) < background_threshold:
            X = image[x:x + output_x, y:y + output_y, z:z + output_z]
            return X, patches.one_hot(window, num_classes)
    return None


def sub_volume_ignores_threshold(image, label, orig_x=240, orig_y=240, orig_z=155, output_x=160,
                                 output_y=160, output_z=16, num_classes=4, **_):
    x, y, z = (np.random.randint(0, o - w + 1) for o, w in ((orig_x, output_x), (orig_y, output_y),
                                                             (orig_z, output_z)))
    box = (slice(x, x + output_x), slice(y, y + output_y), slice(z, z + output_z))
    return image[box], patches.one_hot(label[box], num_classes)


WRONG = [
    ("single_class_dice_coefficient", dice_eps_numerator_only),
    ("single_class_dice_coefficient", dice_eps_denominator_only),
    ("single_class_dice_coefficient", dice_with_squares),
    ("dice_coefficient", mean_dice_channels_first),
    ("dice_coefficient", mean_dice_pooled),
    ("soft_dice_loss", loss_no_squares),
    ("soft_dice_loss", loss_eps_once),
    ("soft_dice_loss", loss_returns_dice),
    ("compute_class_sens_spec", sens_spec_precision),
    ("compute_class_sens_spec", sens_spec_channels_first),
    ("compute_class_sens_spec", sens_spec_npv),
    ("get_sens_spec_df", sens_spec_df_swapped_rows),
    ("get_sens_spec_df", sens_spec_df_wrong_columns),
    ("get_sens_spec_df", sens_spec_df_background_kept),
    ("standardize", standardize_whole_channel),
    ("standardize", standardize_divides_by_zero),
    ("standardize", standardize_x_slices),
    ("standardize", standardize_in_place),
    ("get_sub_volume", sub_volume_channels_first),
    ("get_sub_volume", sub_volume_background_kept),
    ("get_sub_volume", sub_volume_label_off_by_one),
    ("get_sub_volume", sub_volume_ignores_threshold),
]


@pytest.mark.parametrize("exercise, wrong", WRONG, ids=[w.__name__ for _, w in WRONG])
def test_wrong_versions_fail_with_a_message(exercise, wrong):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AssertionError) as caught:
            getattr(public_tests, f"test_{exercise}")(wrong)
    message = str(caught.value)
    assert message.startswith(f"{exercise}:") and len(message) > len(exercise) + 20, message


def test_failure_message_says_expected_and_got():
    with pytest.raises(AssertionError, match=r"expected 0\.4286, got 0\.5000"):
        public_tests.test_soft_dice_loss(loss_no_squares)
