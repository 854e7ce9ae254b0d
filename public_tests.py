"""Graded checks for the course's exercises: ``test_<exercise>(target)`` for each of the twelve.

Each check runs the seed's worked examples and cases that catch the usual mistakes, prints
"All tests passed." or raises an AssertionError that names the exercise and says what was
expected, what came back, and what to look at. The learner's function runs under a time limit
(``TIME_LIMIT`` seconds a call): an endless loop fails with a message instead of hanging, and
an error raised inside the function (a ZeroDivisionError, a TypeError from a ``None`` left in
the skeleton) becomes a message too.

Arrays are channels-last: an image is ``(x, y, z, channels)``, a label ``(x, y, z, classes)``,
a batch ``(batch, x, y, z, classes)``. The test arrays have several z-slices, so summing over
the wrong axes shows.
"""

from __future__ import annotations

import signal
import threading
import warnings

import numpy as np

CLASS_NAMES = ["Edema", "Non-Enhancing Tumor", "Enhancing Tumor"]
TIME_LIMIT = 30.0  # seconds for one call of the learner's function


class _TimeUp(BaseException):
    """Raised inside the learner's function when its time is up (BaseException: an
    ``except Exception`` in the learner's code cannot swallow it)."""


def _with_time_limit(seconds: float, function, *args, **kwargs):
    """``function(*args, **kwargs)``, stopped after ``seconds`` with :class:`_TimeUp`.

    In the main thread (a notebook's kernel, pytest) a timer signal interrupts the function; in
    another thread it runs in a daemon thread that is abandoned when the time is up.
    """
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def on_alarm(signum, frame):
            raise _TimeUp()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return function(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    result: dict = {}

    def run():
        try:
            result["value"] = function(*args, **kwargs)
        except BaseException as error:  # handed back to the caller's thread
            result["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _TimeUp()
    if "error" in result:
        raise result["error"]
    return result["value"]


_ERROR_HINTS = {
    "ZeroDivisionError": "Divide numpy numbers (np.float64(tp) / (tp + fn)) so that 0/0 gives "
                         "nan instead of an error.",
    "TypeError": "Is a None from the skeleton still there?",
}


class _Checker:
    """Collects the context of a check so that failures read as one clear sentence."""

    def __init__(self, exercise: str):
        self.exercise = exercise

    def fail(self, message: str):
        raise AssertionError(f"{self.exercise}: {message}")

    def call(self, target, *args, time_limit: float | None = None, **kwargs):
        """The learner's ``target(*args, **kwargs)`` under the time limit; an error inside it
        fails the check with its type and message."""
        seconds = TIME_LIMIT if time_limit is None else time_limit
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                return _with_time_limit(seconds, target, *args, **kwargs)
        except _TimeUp:
            self.fail(f"did not finish within {seconds:g} seconds. Is there a loop that never "
                      f"ends (a while loop without a limit, or a step of 0)?")
        except Exception as error:
            name = type(error).__name__
            hint = _ERROR_HINTS.get(name, "")
            self.fail(f"raised {name}: {error}. {hint}".strip())

    def shape(self, got, expected: tuple, what: str, hint: str = ""):
        got_shape = np.shape(got)
        if tuple(got_shape) != tuple(expected):
            self.fail(f"{what} should have shape {expected}, got {tuple(got_shape)}. {hint}".strip())

    def same(self, got, expected, what: str, hint: str = ""):
        if tuple(got) != tuple(expected):
            self.fail(f"{what} should be {tuple(expected)}, got {tuple(got)}. {hint}".strip())

    def number(self, got, what: str, hint: str = "") -> float:
        if got is None:
            self.fail(f"{what}: returned None. Is a None from the skeleton still there?")
        try:
            value = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            self.fail(f"{what} should be a single number, got {_describe(got)}. {hint}".strip())
        if value.shape != ():
            self.fail(f"{what} should be a single number, got an array of shape {value.shape}. "
                      f"Sum over every axis in `axis` (the default (0, 1, 2) covers x, y and z) "
                      f"and take the mean of what is left.")
        return float(value)

    def close(self, got, expected: float, what: str, hint: str = "", atol: float = 1e-4):
        value = self.number(got, what, hint)
        if not np.isclose(value, expected, atol=atol, equal_nan=True):
            self.fail(f"{what}: expected {expected:.4f}, got {value:.4f}. {hint}".strip())

    def allclose(self, got, expected, what: str, hint: str = "", atol: float = 1e-4):
        got = np.asarray(got, dtype=np.float64)
        self.shape(got, np.shape(expected), what, hint)
        if not np.allclose(got, expected, atol=atol, equal_nan=True):
            self.fail(f"{what}: expected {np.round(expected, 4).tolist()}, "
                      f"got {np.round(got, 4).tolist()}. {hint}".strip())

    @staticmethod
    def passed():
        print("\033[92mAll tests passed.\033[0m")


def _describe(value) -> str:
    if value is None:
        return "None"
    shape = np.shape(value) if not isinstance(value, (str, dict)) else None
    return f"{type(value).__name__} of shape {shape}" if shape else repr(value)[:80]


# ----------------------------------------------------------------------------- 01: the data


def _label_volume() -> np.ndarray:
    """uint8 (5, 4, 3): 40 background, 12 edema, 0 non-enhancing, 8 enhancing voxels; each
    z-slice holds different counts."""
    label = np.zeros((5, 4, 3), np.uint8)
    label[0:3, 0:2, 0] = 1  # 6 edema in slice 0
    label[1:4, 1:3, 1] = 1  # 6 edema in slice 1
    label[2:4, 0:4, 2] = 3  # 8 enhancing in slice 2
    return label


def test_voxels_per_class(target):
    check = _Checker("voxels_per_class")
    label = _label_volume()
    original = label.copy()
    counts = check.call(target, label)
    hint = "Count every voxel of the whole volume (all z-slices) for each value 0 .. num_classes-1."
    if counts is None:
        check.fail("returned None: return the counts as an array of num_classes numbers.")
    check.shape(counts, (4,), "the counts of a label with values 0..3",
                "One count per class, in order 0 (background), 1, 2, 3, also for a class with no "
                "voxel (np.bincount(..., minlength=num_classes)).")
    if not np.array_equal(label, original):
        check.fail("the label was modified; only count.")
    expected = [40, 12, 0, 8]
    if np.asarray(counts).tolist() != expected:
        check.fail(f"expected {expected} (background, edema, non-enhancing, enhancing), got "
                   f"{np.asarray(counts).tolist()}. {hint}")
    no_enhancing = np.where(label == 3, 0, label).astype(np.uint8)
    counts = np.asarray(check.call(target, no_enhancing))
    check.shape(counts, (4,), "the counts of a label without enhancing tumour",
                "A class with no voxel still gets its place: np.bincount(label.ravel(), "
                "minlength=num_classes).")
    if counts.tolist() != [48, 12, 0, 0]:
        check.fail(f"label without enhancing tumour: expected [48, 12, 0, 0], got {counts.tolist()}.")
    counts = np.asarray(check.call(target, label, num_classes=5))
    check.shape(counts, (5,), "the counts with num_classes=5", "Use the num_classes argument.")
    if counts.tolist() != expected + [0]:
        check.fail(f"num_classes=5: expected {expected + [0]}, got {counts.tolist()}.")
    check.passed()


# ----------------------------------------------------------------------------- 02: patches


def test_standardize(target):
    check = _Checker("standardize")
    rng = np.random.default_rng(0)
    image = rng.normal(50, 20, (6, 5, 4, 3)).astype(np.float32)
    image[..., 1] *= np.arange(1, 5, dtype=np.float32)  # each z-slice a different scale
    image[:, :, 2, 2] = 7.0  # one constant slice
    original = image.copy()
    result = check.call(target, image)
    if result is None:
        check.fail("returned None: return the standardised image.")
    result = np.asarray(result)
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
    integers = np.round(image).astype(np.int16)
    result = np.asarray(check.call(target, integers))
    if not np.issubdtype(result.dtype, np.floating):
        check.fail(f"an int16 image came back as {result.dtype}: standardised values are "
                   f"fractions, so make a float array (np.zeros(image.shape, dtype=np.float32), "
                   f"not np.zeros_like(image)).")
    check.close(result[:, :, 0, 0].std(), 1.0, "standard deviation of an int16 image's slice",
                atol=1e-3)
    check.passed()


def _coordinate_volume(shape):
    """float32 (x, y, z, 4): channels 0..2 hold each voxel's x, y, z; channel 3 is 1000 + x."""
    x, y, z = np.indices(shape, dtype=np.float32)
    return np.stack([x, y, z, 1000 + x], axis=-1)


def _sub_volume(check, target, image, label, **kwargs):
    result = check.call(target, image, label, **kwargs)
    if result is None:
        return None
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        check.fail(f"should return (X, y) or None, got {_describe(result)}.")
    return tuple(np.asarray(a) for a in result)


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
        result = _sub_volume(check, target, image, label, **kwargs)
        if result is None:
            check.fail("returned None although qualifying windows exist.")
        X, y = result
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
    # Every corner must be possible, the largest included: orig - output + 1 choices per axis.
    small = _coordinate_volume((5, 4, 3))
    tumour = np.ones((5, 4, 3), np.uint8)
    seen = [set(), set(), set()]
    np.random.seed(0)
    for attempt in range(40):
        X, _ = _sub_volume(check, target, small, tumour, orig_x=5, orig_y=4, orig_z=3, output_x=4,
                           output_y=3, output_z=2, background_threshold=0.95) or (None, None)
        if X is None or X.shape[:3] != (4, 3, 2):
            check.fail("a 5x4x3 volume that is all tumour should give a 4x3x2 window every time.")
        for axis in range(3):
            seen[axis].add(int(X[0, 0, 0, axis]))
    for axis, name in enumerate("xyz"):
        if seen[axis] != {0, 1}:
            check.fail(f"in 40 draws on a 5x4x3 volume with a 4x3x2 window, start_{name} took the "
                       f"values {sorted(seen[axis])}, never both 0 and 1 (= orig_{name} - "
                       f"output_{name}). np.random.randint(low, high) never returns high: use "
                       f"np.random.randint(0, orig_{name} - output_{name} + 1).")
    # The background share must be strictly below the threshold.
    half = np.zeros((4, 4, 2), np.uint8)
    half[:2] = 1  # background share exactly 0.5 in the only window
    whole = dict(orig_x=4, orig_y=4, orig_z=2, output_x=4, output_y=4, output_z=2, max_tries=5)
    if _sub_volume(check, target, _coordinate_volume((4, 4, 2)), half,
                   background_threshold=0.5, **whole) is not None:
        check.fail("accepted a window whose background share (0.50) equals background_threshold "
                   "(0.5): keep a window only when its share is strictly below it (<, not <=).")
    if _sub_volume(check, target, _coordinate_volume((4, 4, 2)), half,
                   background_threshold=0.51, **whole) is None:
        check.fail("returned None although the window's background share 0.50 is below the "
                   "threshold 0.51.")
    empty = np.zeros(shape, np.uint8)
    if _sub_volume(check, target, image, empty, **(kwargs | {"max_tries": 50})) is not None:
        check.fail("should return None when no window has background below the threshold.")
    check.passed()


# ----------------------------------------------------------------------------- 03: the U-Net


def _conv_parameters(k: int, c_in: int, c_out: int) -> int:
    return k**3 * c_in * c_out + c_out


def unet_parameters(channels=4, n_labels=3, depth=4, n_base_filters=32, batch_norm=False) -> int:
    """Parameters of the seed's U-Net, counted from its definition (batch norm: 4 per channel)."""
    total, previous, outputs = 0, channels, []
    norm = (lambda c: 4 * c) if batch_norm else (lambda c: 0)
    for level in range(depth):
        filters = n_base_filters * 2**level
        total += _conv_parameters(3, previous, filters) + norm(filters)
        total += _conv_parameters(3, filters, 2 * filters) + norm(2 * filters)
        previous = 2 * filters
        outputs.append(previous)
    for level in range(depth - 2, -1, -1):
        skip = outputs[level]
        total += _conv_parameters(3, previous + skip, skip) + norm(skip)
        total += _conv_parameters(3, skip, skip) + norm(skip)
        previous = skip
    return total + _conv_parameters(1, previous, n_labels)


def _layer_counts(model) -> dict:
    counts: dict = {}
    for layer in model.layers:
        counts[type(layer).__name__] = counts.get(type(layer).__name__, 0) + 1
    return counts


def _check_unet(check, model, input_shape, n_labels, depth, n_base_filters, batch_norm, what):
    import keras

    if not isinstance(model, keras.Model):
        check.fail(f"{what}: should return a keras.Model, got {_describe(model)}.")
    check.same(model.input_shape, (None, *input_shape), f"{what}: the input shape",
               "keras.Input(shape=input_shape): channels last, the batch axis is added.")
    check.same(model.output_shape, (None, *input_shape[:3], n_labels), f"{what}: the output shape",
                "Keep the input's size ('same' padding) and end with a 1x1x1 Conv3D to n_labels "
                "channels.")
    counts = _layer_counts(model)
    expectations = [("MaxPooling3D", depth - 1, "max-pooling after each contracting level but "
                     "the last"),
                    ("UpSampling3D", depth - 1, "up-sampling at the start of each expanding level"),
                    ("Concatenate", depth - 1, "a skip concatenation in each expanding level")]
    for name, expected, why in expectations:
        if counts.get(name, 0) != expected:
            check.fail(f"{what}: expected {expected} {name} layers ({why}), found "
                       f"{counts.get(name, 0)}.")
    if batch_norm and counts.get("BatchNormalization", 0) != 4 * depth - 2:
        check.fail(f"{what} with normalization='batch': expected a BatchNormalization after each "
                   f"of the {4 * depth - 2} 3x3x3 convolutions, found "
                   f"{counts.get('BatchNormalization', 0)}.")
    if not batch_norm and counts.get("BatchNormalization", 0):
        check.fail(f"{what}: normalization=None should add no BatchNormalization layer.")
    expected = unet_parameters(input_shape[-1], n_labels, depth, n_base_filters, batch_norm)
    if model.count_params() != expected:
        check.fail(f"{what}: expected {expected:,} parameters, got {model.count_params():,}. Level d "
                   f"has two 3x3x3 convolutions with n_base_filters * 2**d then twice that many "
                   f"filters; each expanding level concatenates the up-sampled features with the "
                   f"skip and convolves twice to the skip's number of channels.")


def test_unet_model_3d(target):
    check = _Checker("unet_model_3d")
    model = check.call(target, time_limit=max(TIME_LIMIT, 60))
    _check_unet(check, model, (160, 160, 16, 4), 3, 4, 32, False, "unet_model_3d()")
    small_shape = (16, 16, 8, 4)
    small = check.call(target, input_shape=small_shape, n_labels=2, depth=3, n_base_filters=4)
    _check_unet(check, small, small_shape, 2, 3, 4, False,
                "unet_model_3d(input_shape=(16, 16, 8, 4), n_labels=2, depth=3, n_base_filters=4)")
    x = np.random.default_rng(0).normal(size=(1, *small_shape)).astype(np.float32)
    probabilities = np.asarray(small(x, training=False))
    if probabilities.min() < 0 or probabilities.max() > 1:
        check.fail("the output should be probabilities in [0, 1]: end with a sigmoid activation.")
    if np.allclose(probabilities.sum(axis=-1), 1, atol=1e-4):
        check.fail("the channels sum to 1 in every voxel, as after a softmax: each class needs its "
                   "own independent probability, a sigmoid.")
    cpu = check.call(target, input_shape=(64, 64, 32, 4), n_base_filters=8, normalization="batch")
    _check_unet(check, cpu, (64, 64, 32, 4), 3, 4, 8, True,
                "unet_model_3d(input_shape=(64, 64, 32, 4), n_base_filters=8, "
                "normalization='batch')")
    check.passed()


# ----------------------------------------------------------------------------- 04: dice and loss

def _reference_dice(y_true, y_pred, axis, epsilon, squares=False):
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    numerator = 2 * np.sum(y_true * y_pred, axis=axis) + epsilon
    power = 2 if squares else 1
    denominator = np.sum(y_true**power, axis=axis) + np.sum(y_pred**power, axis=axis) + epsilon
    return numerator / denominator


def _grid(values):
    """A 2x2 example as a ``(2, 2, 1)`` volume (the seed's examples)."""
    return np.array(values, dtype=np.float32).reshape(2, 2, 1)


def _stack(*examples):
    """Stack examples as channels: ``(x, y, z, C)``."""
    return np.stack(examples, axis=-1)


_PRED = _grid([[1, 0], [0, 1]])
_HALF = _grid([[0.5, 0], [0, 0.5]])
_LABEL_A = _grid([[1, 1], [0, 0]])
_LABEL_B = _grid([[1, 1], [0, 1]])


def _volumes(seed: int, shape=(3, 2, 4, 3), soft=False):
    """Random ``y_true, y_pred`` with several z-slices (z = 4)."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random(shape) < 0.4).astype(np.float32)
    y_pred = rng.random(shape).astype(np.float32)
    return y_true, (y_pred if soft else (y_pred < 0.5).astype(np.float32))


_AXIS_HINT = ("Sum over exactly the axes given in `axis` (ops.sum(..., axis=axis)); do not "
              "hard-code them.")


def test_single_class_dice_coefficient(target):
    check = _Checker("single_class_dice_coefficient")
    hint_eps = "Add epsilon to both the numerator (2 * sum(p * g) + eps) and the denominator."
    check.close(check.call(target, _LABEL_A, _PRED, epsilon=1), 0.6,
                "seed example 1 (pred [[1,0],[0,1]], label [[1,1],[0,0]], epsilon=1)", hint_eps)
    check.close(check.call(target, _LABEL_B, _PRED, epsilon=1), 0.8333,
                "seed example 2 (pred [[1,0],[0,1]], label [[1,1],[0,1]], epsilon=1)", hint_eps)
    check.close(check.call(target, _LABEL_A, _HALF, epsilon=1), 0.5,
                "soft prediction 0.5 (dice uses plain sums, no squares)")
    empty = np.zeros((2, 2, 1), np.float32)
    check.close(check.call(target, empty, empty), 1.0,
                "both empty with the default epsilon (eps / eps = 1, never 0/0)", hint_eps)
    y_true, y_pred = _volumes(1, shape=(3, 2, 4))
    check.close(check.call(target, y_true, y_pred),
                _reference_dice(y_true, y_pred, (0, 1, 2), 1e-5),
                "a 3x2x4 volume (4 z-slices)", "Sum over x, y and z: axis=(0, 1, 2).")
    batch_true, batch_pred = _volumes(2, shape=(2, 3, 2, 4))
    check.allclose(check.call(target, batch_true, batch_pred, axis=(1, 2, 3)),
                   _reference_dice(batch_true, batch_pred, (1, 2, 3), 1e-5),
                   "a batch of 2 volumes with axis=(1, 2, 3) (one Dice per example)", _AXIS_HINT)
    check.close(check.call(target, y_true, y_pred, epsilon=1),
                check.call(target, y_pred, y_true, epsilon=1),
                "Dice is symmetric: swapping y_true and y_pred must not change it")
    check.passed()


def test_dice_coefficient(target):
    check = _Checker("dice_coefficient")
    y_true, y_pred = _stack(_LABEL_A, _LABEL_B), _stack(_PRED, _PRED)
    hint = ("Sum over the spatial axes (axis=(0, 1, 2), channels-last) for each class, "
            "then take the mean over classes.")
    check.close(check.call(target, y_true, y_pred, epsilon=1), (0.6 + 5 / 6) / 2,
                "two classes (Dice 0.6 and 0.8333, epsilon=1)", hint)
    three = _stack(_LABEL_A, _LABEL_B, np.zeros((2, 2, 1), np.float32))
    check.close(check.call(target, three, _stack(_PRED, _PRED, _PRED), epsilon=1),
                (0.6 + 5 / 6 + 1 / 3) / 3, "three classes, the third predicted but absent", hint)
    y_true, y_pred = _volumes(3)
    check.close(check.call(target, y_true, y_pred),
                np.mean(_reference_dice(y_true, y_pred, (0, 1, 2), 1e-5)),
                "three classes in a 3x2x4 volume (4 z-slices)", hint)
    batch_true, batch_pred = _volumes(4, shape=(2, 3, 2, 4, 3))
    check.close(check.call(target, batch_true, batch_pred, axis=(1, 2, 3)),
                np.mean(_reference_dice(batch_true, batch_pred, (1, 2, 3), 1e-5)),
                "a batch (2, 3, 2, 4, 3) with axis=(1, 2, 3): the mean of the 2 x 3 per-example "
                "per-class Dice values", _AXIS_HINT)
    check.close(check.call(target, batch_true, batch_pred, axis=(0, 1, 2, 3)),
                np.mean(_reference_dice(batch_true, batch_pred, (0, 1, 2, 3), 1e-5)),
                "the same batch with axis=(0, 1, 2, 3): Dice pooled over the batch, per class, "
                "then the mean over the 3 classes", _AXIS_HINT)
    check.passed()


def test_soft_dice_loss(target):
    check = _Checker("soft_dice_loss")
    hint = ("Loss = 1 - mean over classes of (2 * sum(p * g) + eps) / "
            "(sum(g**2) + sum(p**2) + eps): squares in the denominator, eps in both places.")

    def single(a):
        return a[..., None]

    check.close(check.call(target, single(_LABEL_A), single(_PRED), epsilon=1), 0.4,
                "seed test case 1", hint)
    check.close(check.call(target, single(_LABEL_A), single(_HALF), epsilon=1), 0.4286,
                "seed test case 2 (pred 0.5: squares make the denominator 0.5, not 1)", hint)
    check.close(check.call(target, single(_LABEL_B), single(_PRED), epsilon=1), 0.1667,
                "seed test case 3", hint)
    check.close(check.call(target, _stack(_LABEL_A, _LABEL_A), _stack(_PRED, _HALF), epsilon=1),
                1 - (0.6 + 2 / 3.5) / 2, "two classes: mean of the per-class soft Dice", hint)
    perfect = _stack(_LABEL_A, _LABEL_B)
    check.close(check.call(target, perfect, perfect), 0.0, "a perfect prediction has loss 0", hint)
    y_true, y_pred = _volumes(5, soft=True)
    check.close(check.call(target, y_true, y_pred),
                1 - np.mean(_reference_dice(y_true, y_pred, (0, 1, 2), 1e-5, squares=True)),
                "probabilities in a 3x2x4x3 volume (4 z-slices)", hint)
    batch_true, batch_pred = _volumes(6, shape=(2, 3, 2, 4, 3), soft=True)
    for axis, what in (((1, 2, 3), "per example"), ((0, 1, 2, 3), "pooled over the batch")):
        check.close(check.call(target, batch_true, batch_pred, axis=axis),
                    1 - np.mean(_reference_dice(batch_true, batch_pred, axis, 1e-5, squares=True)),
                    f"a batch (2, 3, 2, 4, 3) with axis={axis} ({what})", _AXIS_HINT)
    check.passed()


# ----------------------------------------------------------------------------- sensitivity, specificity

# One class's voxels: TP=1, FN=2, FP=3, TN=2 -> sensitivity 1/3, specificity 0.4,
# (precision would be 0.25, negative predictive value 0.5: both differ on purpose).
_SENS_LABEL = np.array([1, 1, 1, 0, 0, 0, 0, 0], np.float32)
_SENS_PRED = np.array([1, 0, 0, 1, 1, 1, 0, 0], np.float32)


def _sens_spec_arrays(dtype=np.float32):
    """pred, label ``(2, 2, 2, 3)``: the class above in channel 1; channels 0 and 2 differ."""
    def as_volume(flat):
        return np.asarray(flat).reshape(2, 2, 2)

    label = np.stack([as_volume(np.ones(8)), as_volume(_SENS_LABEL), as_volume(np.eye(8)[0])], -1)
    pred = np.stack([as_volume(np.eye(8)[0] + np.eye(8)[1]), as_volume(_SENS_PRED),
                     as_volume(np.eye(8)[0])], -1)
    return pred.astype(dtype), label.astype(dtype)


def test_compute_class_sens_spec(target):
    check = _Checker("compute_class_sens_spec")
    for dtype in (np.float32, np.int64):
        pred, label = _sens_spec_arrays(dtype)
        kind = "" if dtype is np.float32 else " (integer arrays)"
        result = check.call(target, pred, label, 1)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            check.fail(f"should return (sensitivity, specificity), got {_describe(result)}.")
        sensitivity, specificity = result
        hint_channels = ("Take class class_num from the last axis: pred[..., class_num] "
                         "(channels-last).")
        check.close(sensitivity, 1 / 3, f"sensitivity of class 1 (TP=1, FN=2, FP=3, TN=2){kind}",
                    "Sensitivity = TP / (TP + FN) (not precision TP / (TP + FP)). " + hint_channels)
        check.close(specificity, 0.4, f"specificity of class 1 (TP=1, FN=2, FP=3, TN=2){kind}",
                    "Specificity = TN / (TN + FP) (not TN / (TN + FN)). " + hint_channels)
        sensitivity, specificity = check.call(target, pred, label, 0)
        check.close(sensitivity, 0.25, f"sensitivity of class 0{kind}", hint_channels)
        check.close(specificity, float("nan"),
                    f"specificity of class 0, which has no negatives (0/0 is nan){kind}",
                    "Compute TN / (TN + FP) with numpy so that 0/0 gives nan.")
        sensitivity, specificity = check.call(target, pred, label, 2)
        check.close(sensitivity, 1.0, f"sensitivity of class 2 (a perfect prediction){kind}")
        check.close(specificity, 1.0, f"specificity of class 2 (a perfect prediction){kind}")
    check.passed()


def test_get_sens_spec_df(target):
    check = _Checker("get_sens_spec_df")
    pred, label = _sens_spec_arrays()
    table = check.call(target, pred, label)
    if list(getattr(table, "columns", [])) != CLASS_NAMES:
        check.fail(f"columns should be {CLASS_NAMES}, got {list(getattr(table, 'columns', []))}.")
    if list(getattr(table, "index", [])) != ["Sensitivity", "Specificity"]:
        check.fail(f"rows should be ['Sensitivity', 'Specificity'], got {list(table.index)}.")
    expected = {"Edema": (0.25, float("nan")), "Non-Enhancing Tumor": (1 / 3, 0.4),
                "Enhancing Tumor": (1.0, 1.0)}
    hint = ("Fill each column with compute_class_sens_spec(pred, label, class_num), class_num "
            "0, 1, 2 for the three columns.")
    for name, (sensitivity, specificity) in expected.items():
        check.close(table.loc["Sensitivity", name], sensitivity, f"Sensitivity of {name}", hint)
        check.close(table.loc["Specificity", name], specificity, f"Specificity of {name}", hint)
    value = check.number(table.loc["Sensitivity", "Non-Enhancing Tumor"], "Sensitivity")
    if value != round(1 / 3, 4):
        check.fail(f"Sensitivity of Non-Enhancing Tumor is {value!r}; the table shows each value "
                   f"rounded to 4 decimals ({round(1 / 3, 4)}): round(sensitivity, 4).")
    check.passed()


# ----------------------------------------------------------------------------- 05: training


def _tiny_model(seed: int = 0):
    """A small 3-D segmentation model with batch normalisation: (4, 4, 2, 4) -> (4, 4, 2, 3)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 2, 4))
    x = keras.layers.Conv3D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    outputs = keras.layers.Conv3D(3, 1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def _reference_step(model, x, y, learning_rate, training=True, axis=(0, 1, 2, 3)):
    """One SGD step on the pooled soft Dice loss; returns the loss before the update."""
    import keras
    import tensorflow as tf
    from keras import ops

    with tf.GradientTape() as tape:
        p = model(x, training=training)
        numerator = 2.0 * ops.sum(y * p, axis=axis) + 1e-5
        denominator = ops.sum(y * y, axis=axis) + ops.sum(p * p, axis=axis) + 1e-5
        loss = 1.0 - ops.mean(numerator / denominator)
    gradients = tape.gradient(loss, model.trainable_variables)
    keras.optimizers.SGD(learning_rate).apply_gradients(zip(gradients, model.trainable_variables))
    return float(loss)


def test_train_step(target):
    import keras

    check = _Checker("train_step")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 4, 2, 4)).astype(np.float32)
    y = (rng.random((3, 4, 4, 2, 3)) < 0.3).astype(np.float32)
    learning_rate = 0.5
    model, reference = _tiny_model(), _tiny_model()
    before = [v.numpy().copy() for v in model.trainable_variables]
    evaluation_loss = _reference_step(_tiny_model(), x, y, 0.0, training=False)
    per_example_loss = _reference_step(_tiny_model(), x, y, 0.0, axis=(1, 2, 3))
    expected = _reference_step(reference, x, y, learning_rate)
    loss = check.call(target, model, keras.optimizers.SGD(learning_rate), x, y)
    if loss is None:
        check.fail("returned None: return the batch's loss.")
    if np.shape(np.asarray(loss)) != ():
        check.fail(f"should return one number for the batch, got shape {np.shape(np.asarray(loss))}"
                   f": pool the soft Dice loss over the batch, soft_dice_loss(y, probabilities, "
                   f"axis=(0, 1, 2, 3)).")
    loss = float(np.asarray(loss))
    after_loss = _reference_step(_copy_of(model), x, y, 0.0)
    weights = model.get_weights()
    if all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_variables)):
        check.fail("the weights did not change: apply the gradients with "
                   "optimizer.apply_gradients(zip(gradients, model.trainable_variables)).")
    if not np.isclose(loss, expected, atol=1e-5):
        if np.isclose(loss, evaluation_loss, atol=1e-5):
            check.fail(f"returned {loss:.5f}, the loss of the model in inference mode; the forward "
                       f"pass of a training step runs in training mode (model(x, training=True)), "
                       f"expected {expected:.5f}.")
        if np.isclose(loss, per_example_loss, atol=1e-5):
            check.fail(f"returned {loss:.5f}, the loss averaged per example; training pools the "
                       f"batch: soft_dice_loss(y, probabilities, axis=(0, 1, 2, 3)), expected "
                       f"{expected:.5f}.")
        if np.isclose(loss, after_loss, atol=1e-5):
            check.fail(f"returned {loss:.5f}, the loss after the update; return the loss computed "
                       f"before apply_gradients, expected {expected:.5f}.")
        check.fail(f"returned loss {loss:.5f}, expected {expected:.5f} (the soft Dice loss of "
                   f"model(x, training=True) pooled over the batch, axis=(0, 1, 2, 3)).")
    if not all(np.allclose(a, b, atol=1e-5) for a, b in zip(weights, reference.get_weights())):
        check.fail("the weights after one step differ from one optimizer step down the gradient of "
                   "the pooled soft Dice loss: take tape.gradient(loss, model.trainable_variables) "
                   "and apply it once with the optimizer you were given.")
    check.passed()


def _copy_of(model):
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


# ----------------------------------------------------------------------------- 06: whole scans


def _reference_window_starts(length: int, window: int, overlap: float) -> list[int]:
    if length <= window:
        return [0]
    stride = max(1, int(window * (1 - overlap)))
    return list(range(0, length - window, stride)) + [length - window]


_WINDOW_CASES = [(240, 160, 0.25), (155, 16, 0.25), (100, 32, 0.0), (96, 32, 0.0),
                 (50, 10, 0.25), (40, 10, 0.5), (16, 16, 0.5), (10, 16, 0.25), (20, 16, 0.99)]


def test_window_starts(target):
    check = _Checker("window_starts")
    for length, window, overlap in _WINDOW_CASES:
        call = f"window_starts({length}, {window}, {overlap})"
        expected = _reference_window_starts(length, window, overlap)
        result = check.call(target, length, window, overlap, time_limit=min(TIME_LIMIT, 10))
        try:
            starts = [int(s) for s in result]
        except TypeError:
            check.fail(f"{call} should return a list of start positions, got {_describe(result)}.")
        if starts == expected:
            continue
        got = f"{call} returned {starts}, expected {expected}"
        if length <= window:
            check.fail(f"{got}: an axis no longer than the window needs one window, at 0.")
        if not starts or starts[0] != 0:
            check.fail(f"{got}: the first window starts at 0.")
        if starts[-1] != length - window:
            check.fail(f"{got}: the last window must end at the last voxel, so it starts at "
                       f"length - window = {length - window}.")
        if len(set(starts)) != len(starts) or starts != sorted(starts):
            check.fail(f"{got}: each start once, in increasing order (when the stride fits "
                       f"exactly, range(0, length - window, stride) already stops before the last "
                       f"start).")
        check.fail(f"{got}: the stride is max(1, int(window * (1 - overlap))), the window minus "
                   f"the part its neighbour overlaps.")
    check.passed()


def _label_map_probabilities() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """probabilities (2, 2, 2, 3) and the expected label maps at thresholds 0.5 and 0.3."""
    voxels = [
        ([0.9, 0.2, 0.1], 1, 1),    # one class above the threshold
        ([0.9, 0.7, 0.1], 1, 1),    # two above: the most probable wins, not the last channel
        ([0.2, 0.6, 0.55], 2, 2),   # two above, the middle channel most probable
        ([0.1, 0.2, 0.8], 3, 3),
        ([0.5, 0.5, 0.5], 0, 1),    # exactly at the threshold: not above it; at 0.3: argmax 0
        ([0.1, 0.2, 0.35], 0, 3),   # below 0.5, above 0.3
        ([0.0, 0.0, 0.0], 0, 0),
        ([0.45, 0.3, 0.2], 0, 1),   # below 0.5; at 0.3 only channel 0 is above
    ]
    probabilities = np.array([v[0] for v in voxels], np.float32).reshape(2, 2, 2, 3)
    at_half = np.array([v[1] for v in voxels], np.uint8).reshape(2, 2, 2)
    at_03 = np.array([v[2] for v in voxels], np.uint8).reshape(2, 2, 2)
    return probabilities, at_half, at_03


def test_to_label_map(target):
    check = _Checker("to_label_map")
    probabilities, at_half, at_03 = _label_map_probabilities()
    result = check.call(target, probabilities)
    if result is None:
        check.fail("returned None: return the label map.")
    result = np.asarray(result)
    check.shape(result, (2, 2, 2), "the label map of (2, 2, 2, 3) probabilities",
                "One label per voxel: reduce the last axis (axis=-1).")
    if result.dtype != np.uint8:
        check.fail(f"the label map should be uint8, like the labels on disk, got {result.dtype}: "
                   f".astype(np.uint8).")
    flat, want = result.ravel().tolist(), at_half.ravel().tolist()
    if flat != want:
        if flat[4] != 0:
            check.fail(f"a voxel whose highest probability is exactly the threshold (0.5) got "
                       f"label {flat[4]}: only probabilities strictly above the threshold count "
                       f"(>, not >=).")
        if flat[1] == 2:
            check.fail("a voxel with edema 0.9 and non-enhancing 0.7 got label 2: take the channel "
                       "of highest probability (np.argmax over the last axis), not the last one "
                       "above the threshold.")
        if flat[0] == 0 and flat[3] == 2:
            check.fail(f"labels are off by one (got {flat}, expected {want}): channel 0 is label "
                       f"1 (edema), so add 1 to the argmax.")
        check.fail(f"expected labels {want} (voxel by voxel), got {flat}.")
    result = np.asarray(check.call(target, probabilities, threshold=0.3))
    if result.ravel().tolist() != at_03.ravel().tolist():
        check.fail(f"with threshold=0.3 expected {at_03.ravel().tolist()}, got "
                   f"{result.ravel().tolist()}: use the threshold argument, not a fixed 0.5.")
    check.passed()


# The exercises in course order, with the notebook that holds each.
EXERCISES = {
    "voxels_per_class": "01_data_exploration",
    "get_sub_volume": "02_patch_generation",
    "standardize": "02_patch_generation",
    "unet_model_3d": "03_unet_model",
    "single_class_dice_coefficient": "04_loss_and_metrics",
    "dice_coefficient": "04_loss_and_metrics",
    "soft_dice_loss": "04_loss_and_metrics",
    "compute_class_sens_spec": "04_loss_and_metrics",
    "get_sens_spec_df": "04_loss_and_metrics",
    "train_step": "05_training",
    "window_starts": "06_whole_scan_inference",
    "to_label_map": "06_whole_scan_inference",
}
