"""Graded checks for the course's exercises: ``test_<exercise>(target)`` for each of the seven.

Each check runs the seed's worked examples and cases that catch the usual mistakes, prints
"All tests passed." or raises an AssertionError that says what was expected and what came back.
Arrays are channels-last: an image is ``(x, y, z, channels)``, a label ``(x, y, z, classes)``.
"""

from __future__ import annotations

import warnings

import numpy as np

CLASS_NAMES = ["Edema", "Non-Enhancing Tumor", "Enhancing Tumor"]


class _Checker:
    """Collects the context of a check so that failures read as one clear sentence."""

    def __init__(self, exercise: str):
        self.exercise = exercise

    def fail(self, message: str):
        raise AssertionError(f"{self.exercise}: {message}")

    def shape(self, got, expected: tuple, what: str, hint: str = ""):
        got_shape = np.shape(got)
        if tuple(got_shape) != tuple(expected):
            self.fail(f"{what} should have shape {expected}, got {tuple(got_shape)}. {hint}".strip())

    def close(self, got, expected: float, what: str, hint: str = "", atol: float = 1e-4):
        try:
            value = float(np.asarray(got))
        except (TypeError, ValueError):
            self.fail(f"{what} should be a single number ({expected:.4f}), got {got!r}.")
        if not np.isclose(value, expected, atol=atol, equal_nan=True):
            self.fail(f"{what}: expected {expected:.4f}, got {value:.4f}. {hint}".strip())

    @staticmethod
    def passed():
        print("\033[92mAll tests passed.\033[0m")


def _grid(values):
    """A 2x2 example as a ``(2, 2, 1)`` volume."""
    return np.array(values, dtype=np.float32).reshape(2, 2, 1)


def _stack(*examples):
    """Stack ``(2, 2, 1)`` examples as channels: ``(2, 2, 1, C)``."""
    return np.stack(examples, axis=-1)


# ----------------------------------------------------------------------------- dice and loss

_PRED = _grid([[1, 0], [0, 1]])
_HALF = _grid([[0.5, 0], [0, 0.5]])
_LABEL_A = _grid([[1, 1], [0, 0]])
_LABEL_B = _grid([[1, 1], [0, 1]])


def test_single_class_dice_coefficient(target):
    check = _Checker("single_class_dice_coefficient")
    hint_eps = "Add epsilon to both the numerator (2 * sum(p * g) + eps) and the denominator."
    check.close(target(_LABEL_A, _PRED, epsilon=1), 0.6,
                "seed example 1 (pred [[1,0],[0,1]], label [[1,1],[0,0]], epsilon=1)", hint_eps)
    check.close(target(_LABEL_B, _PRED, epsilon=1), 0.8333,
                "seed example 2 (pred [[1,0],[0,1]], label [[1,1],[0,1]], epsilon=1)", hint_eps)
    check.close(target(_LABEL_A, _HALF, epsilon=1), 0.5,
                "soft prediction 0.5 (dice uses plain sums, no squares)")
    empty = np.zeros((2, 2, 1), np.float32)
    check.close(target(empty, empty), 1.0,
                "both empty with the default epsilon (eps / eps = 1, never 0/0)", hint_eps)
    check.close(target(_LABEL_A, _PRED, epsilon=1), target(_PRED, _LABEL_A, epsilon=1),
                "Dice is symmetric: swapping y_true and y_pred must not change it")
    check.passed()


def test_dice_coefficient(target):
    check = _Checker("dice_coefficient")
    y_true, y_pred = _stack(_LABEL_A, _LABEL_B), _stack(_PRED, _PRED)
    hint = ("Sum over the spatial axes (axis=(0, 1, 2), channels-last) for each class, "
            "then take the mean over classes.")
    check.close(target(y_true, y_pred, epsilon=1), (0.6 + 5 / 6) / 2,
                "two classes (Dice 0.6 and 0.8333, epsilon=1)", hint)
    three = _stack(_LABEL_A, _LABEL_B, np.zeros((2, 2, 1), np.float32))
    check.close(target(three, _stack(_PRED, _PRED, _PRED), epsilon=1),
                (0.6 + 5 / 6 + 1 / 3) / 3, "three classes, the third predicted but absent", hint)
    check.close(target(y_true[..., :1], y_pred[..., :1], epsilon=1), 0.6,
                "one class: the mean over one class is its Dice", hint)
    check.passed()


def test_soft_dice_loss(target):
    check = _Checker("soft_dice_loss")
    hint = ("Loss = 1 - mean over classes of (2 * sum(p * g) + eps) / "
            "(sum(g**2) + sum(p**2) + eps): squares in the denominator, eps in both places.")
    single = lambda a: a[..., None]
    check.close(target(single(_LABEL_A), single(_PRED), epsilon=1), 0.4, "seed test case 1", hint)
    check.close(target(single(_LABEL_A), single(_HALF), epsilon=1), 0.4286,
                "seed test case 2 (pred 0.5: squares make the denominator 0.5, not 1)", hint)
    check.close(target(single(_LABEL_B), single(_PRED), epsilon=1), 0.1667, "seed test case 3",
                hint)
    check.close(target(_stack(_LABEL_A, _LABEL_A), _stack(_PRED, _HALF), epsilon=1),
                1 - (0.6 + 2 / 3.5) / 2, "two classes: mean of the per-class soft Dice", hint)
    perfect = _stack(_LABEL_A, _LABEL_B)
    check.close(target(perfect, perfect), 0.0, "a perfect prediction has loss 0", hint)
    check.passed()


# ----------------------------------------------------------------------------- sensitivity, specificity

# One class's voxels: TP=1, FN=2, FP=3, TN=2 -> sensitivity 1/3, specificity 0.4,
# (precision would be 0.25, negative predictive value 0.5: both differ on purpose).
_SENS_LABEL = np.array([1, 1, 1, 0, 0, 0, 0, 0], np.float32)
_SENS_PRED = np.array([1, 0, 0, 1, 1, 1, 0, 0], np.float32)


def _sens_spec_arrays():
    """pred, label ``(4, 2, 1, 3)``: the class above in channel 1; channels 0 and 2 differ."""
    def as_volume(flat):
        return flat.reshape(4, 2, 1)

    label = np.stack([as_volume(np.ones(8)), as_volume(_SENS_LABEL), as_volume(np.eye(8)[0])], -1)
    pred = np.stack([as_volume(np.eye(8)[0] + np.eye(8)[1]), as_volume(_SENS_PRED),
                     as_volume(np.eye(8)[0])], -1)
    return pred, label


def test_compute_class_sens_spec(target):
    check = _Checker("compute_class_sens_spec")
    pred, label = _sens_spec_arrays()
    result = target(pred, label, 1)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        check.fail(f"should return (sensitivity, specificity), got {result!r}.")
    sensitivity, specificity = result
    hint_channels = "Take class class_num from the last axis: pred[..., class_num] (channels-last)."
    check.close(sensitivity, 1 / 3, "sensitivity of class 1 (TP=1, FN=2, FP=3, TN=2)",
                "Sensitivity = TP / (TP + FN) (not precision TP / (TP + FP)). " + hint_channels)
    check.close(specificity, 0.4, "specificity of class 1 (TP=1, FN=2, FP=3, TN=2)",
                "Specificity = TN / (TN + FP) (not TN / (TN + FN)). " + hint_channels)
    sensitivity, specificity = target(pred, label, 0)
    check.close(sensitivity, 0.25, "sensitivity of class 0", hint_channels)
    check.close(specificity, float("nan"),
                "specificity of class 0, which has no negatives (0/0 is nan)",
                "Compute TN / (TN + FP) with numpy so that 0/0 gives nan.")
    sensitivity, specificity = target(pred, label, 2)
    check.close(sensitivity, 1.0, "sensitivity of class 2 (a perfect prediction)")
    check.close(specificity, 1.0, "specificity of class 2 (a perfect prediction)")
    check.passed()


def test_get_sens_spec_df(target):
    check = _Checker("get_sens_spec_df")
    pred, label = _sens_spec_arrays()
    table = target(pred, label)
    if list(getattr(table, "columns", [])) != CLASS_NAMES:
        check.fail(f"columns should be {CLASS_NAMES}, got {list(getattr(table, 'columns', []))}.")
    if list(getattr(table, "index", [])) != ["Sensitivity", "Specificity"]:
        check.fail(f"rows should be ['Sensitivity', 'Specificity'], got {list(table.index)}.")
    expected = {"Edema": (0.25, float("nan")), "Non-Enhancing Tumor": (0.3333, 0.4),
                "Enhancing Tumor": (1.0, 1.0)}
    for name, (sensitivity, specificity) in expected.items():
        check.close(table.loc["Sensitivity", name], sensitivity, f"Sensitivity of {name}",
                    "Fill each column with compute_class_sens_spec(pred, label, class_num), "
                    "rounded to 4 decimals.")
        check.close(table.loc["Specificity", name], specificity, f"Specificity of {name}")
    check.passed()


# ----------------------------------------------------------------------------- patches


def test_standardize(target):
    check = _Checker("standardize")
    rng = np.random.default_rng(0)
    image = rng.normal(50, 20, (6, 5, 4, 3)).astype(np.float32)
    image[..., 1] *= np.arange(1, 5, dtype=np.float32)  # each z-slice a different scale
    image[:, :, 2, 2] = 7.0  # one constant slice
    original = image.copy()
    result = np.asarray(target(image))
    check.shape(result, image.shape, "the standardised image", "Keep (x, y, z, channels).")
    if not np.array_equal(image, original):
        check.fail("the input image was modified; work on a new array.")
    if not np.isfinite(result).all():
        check.fail("the result has NaN or Inf: a constant slice (std 0) must only be centred.")
    for channel in range(image.shape[-1]):
        for z in range(image.shape[2]):
            piece = result[:, :, z, channel]
            where = f"channel {channel}, z-slice {z}"
            check.close(piece.mean(), 0.0, f"mean of {where}",
                        "Standardise each channel of each z-slice on its own: image[:, :, z, c].",
                        atol=1e-3)
            expected_std = 0.0 if (channel, z) == (2, 2) else 1.0
            check.close(piece.std(), expected_std, f"standard deviation of {where}",
                        "Divide by the slice's std, except where it is 0 (only centre those).",
                        atol=1e-3)
    check.passed()


def _coordinate_volume(shape):
    """float32 (x, y, z, 4): channels 0..2 hold each voxel's x, y, z; channel 3 is 1000 + x."""
    x, y, z = np.indices(shape, dtype=np.float32)
    return np.stack([x, y, z, 1000 + x], axis=-1)


def test_get_sub_volume(target):
    check = _Checker("get_sub_volume")
    shape = (10, 9, 6)
    image = _coordinate_volume(shape)
    label = np.zeros(shape, np.uint8)
    label[5:9, 2:6, 1:4] = 1
    label[6:8, 3:5, 2:3] = 3
    kwargs = dict(orig_x=10, orig_y=9, orig_z=6, output_x=4, output_y=3, output_z=2,
                  num_classes=4, max_tries=1000, background_threshold=0.7)
    np.random.seed(3)
    for attempt in range(20):
        result = target(image, label, **kwargs)
        if result is None:
            check.fail("returned None although qualifying windows exist.")
        X, y = (np.asarray(a) for a in result)
        check.shape(X, (4, 3, 2, 4), "X", "Cut image[x:x+4, y:y+3, z:z+2, :] (channels last).")
        check.shape(y, (4, 3, 2, 3), "y",
                    "One-hot encode the label window and drop the background channel (last axis).")
        x0, y0, z0 = (int(X[0, 0, 0, axis]) for axis in range(3))
        window = (slice(x0, x0 + 4), slice(y0, y0 + 3), slice(z0, z0 + 2))
        if not np.array_equal(X, image[window]):
            check.fail("X is not the image cut at one offset (all channels, same window).")
        one_hot = np.stack([label[window] == c for c in (1, 2, 3)], axis=-1)
        if not np.array_equal(y, one_hot):
            check.fail("y is not the one-hot label of X's window without background "
                       "(channels edema, non-enhancing, enhancing).")
        background = np.mean(label[window] == 0)
        if background >= 0.7:
            check.fail(f"the window's background fraction {background:.2f} is not below "
                       f"background_threshold 0.7.")
    empty = np.zeros(shape, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nothing = target(image, empty, **(kwargs | {"max_tries": 50}))
    if nothing is not None:
        check.fail("should return None when no window has background below the threshold.")
    check.passed()
