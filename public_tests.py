"""Graded checks for the course's exercises: ``test_<exercise>(target)`` for each of the twelve.

Each check runs the seed's worked examples and cases that catch the usual mistakes, prints
"All tests passed." or raises an AssertionError that names the exercise and says what was
expected, what came back, and what to look at. The learner's function runs under a time limit
(``SECONDS_PER_CALL`` seconds a call): an endless loop fails with a message instead of hanging,
an error raised inside the function (a ZeroDivisionError, a TypeError from a ``None`` left in
the skeleton) becomes a message too, and what the function prints is held back.

Each function runs the way the later notebooks use it: Dice, soft Dice and the loss also on
TensorFlow tensors inside a ``tf.GradientTape``. Each exercise is graded on its own: where a
later exercise calls an earlier one that fails its own check, the check uses the library's
version of the earlier one and says so. ``EXERCISES`` maps each exercise to its notebook and
its library module.

Arrays are channels-last: an image is ``(x, y, z, channels)``, a label ``(x, y, z, classes)``,
a batch ``(batch, x, y, z, classes)``. The test arrays have several z-slices, so summing over
the wrong axes shows.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import signal
import threading
import warnings
from typing import NamedTuple

import numpy as np

from tumorseg.data import CLASS_NAMES

SECONDS_PER_CALL = 30.0  # the longest one call of the learner's function may run


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


_SKELETON_HINT = "Is a None from the skeleton still there?"
_KERAS_OPS = (
    "keras.ops (ops.sum, ops.mean, ops.square), not numpy (np.sum, np.mean): keras.ops "
    "works on numpy arrays and on TensorFlow tensors alike"
)


def _sentences(*parts: str) -> str:
    """Parts joined into sentences: each ends with one full stop (or its own ? or !)."""
    out = []
    for part in parts:
        part = part.strip()
        if part:
            out.append(part if part.endswith((".", "?", "!")) else part + ".")
    return " ".join(out)


def _error_hint(error: BaseException, hints=()) -> str:
    """What to look at for an error raised inside the learner's function: the first of
    ``hints`` (``(error type name, text in its message, hint)``, either may be None) that fits,
    else a general hint; the skeleton hint only when a None is involved."""
    name, text = type(error).__name__, str(error)
    for kind, contains, hint in hints:
        if (kind is None or kind == name) and (contains is None or contains in text):
            return hint
    if name == "ZeroDivisionError":
        return (
            "Divide numpy numbers (np.float64(tp) / (tp + fn)) so that 0/0 gives nan instead "
            "of an error."
        )
    if "None" in text:
        return _SKELETON_HINT
    return ""


class _Checker:
    """Collects the context of a check so that failures read as one clear sentence."""

    def __init__(self, exercise: str):
        self.exercise = exercise

    def fail(self, message: str):
        raise AssertionError(f"{self.exercise}: {message}")

    def call(self, target, *args, time_limit: float | None = None, hints=(), **kwargs):
        """The learner's ``target(*args, **kwargs)`` under the time limit, with what it prints
        held back (the check prints only its verdict); an error inside it fails the check with
        its type, the first line of its message, and a hint (see :func:`_error_hint`)."""
        seconds = SECONDS_PER_CALL if time_limit is None else time_limit
        try:
            with (
                warnings.catch_warnings(),
                np.errstate(all="ignore"),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                return _with_time_limit(seconds, target, *args, **kwargs)
        except _TimeUp:
            self.fail(
                f"did not finish within {seconds:g} seconds. Is there a loop that never "
                f"ends (a while loop without a limit, or a step of 0)?"
            )
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            self.fail(
                _sentences(
                    f"raised {type(error).__name__}: {first_line}", _error_hint(error, hints)
                )
            )

    def shape(self, got, expected: tuple, what: str, hint: str = ""):
        got_shape = np.shape(got)
        if tuple(got_shape) != tuple(expected):
            self.fail(
                _sentences(f"{what} should have shape {expected}, got {tuple(got_shape)}", hint)
            )

    def same(self, got, expected, what: str, hint: str = ""):
        if tuple(got) != tuple(expected):
            self.fail(_sentences(f"{what} should be {tuple(expected)}, got {tuple(got)}", hint))

    def number(self, got, what: str, hint: str = "") -> float:
        if got is None:
            self.fail(f"{what}: returned None. {_SKELETON_HINT}")
        try:
            value = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            self.fail(_sentences(f"{what} should be a single number, got {_describe(got)}", hint))
        if value.shape != ():
            self.fail(
                f"{what} should be a single number, got an array of shape {value.shape}. "
                f"Sum over every axis in `axis` (the default (0, 1, 2) covers x, y and z) "
                f"and take the mean of what is left."
            )
        return float(value)

    def close(self, got, expected: float, what: str, hint: str = "", atol: float = 1e-4):
        value = self.number(got, what, hint)
        if not np.isclose(value, expected, atol=atol, equal_nan=True):
            self.fail(_sentences(f"{what}: expected {expected:.4f}, got {value:.4f}", hint))

    def allclose(self, got, expected, what: str, hint: str = "", atol: float = 1e-4):
        got = np.asarray(got, dtype=np.float64)
        self.shape(got, np.shape(expected), what, hint)
        if not np.allclose(got, expected, atol=atol, equal_nan=True):
            self.fail(
                _sentences(
                    f"{what}: expected {np.round(expected, 4).tolist()}, "
                    f"got {np.round(got, 4).tolist()}",
                    hint,
                )
            )

    @staticmethod
    def passed():
        print("\033[92mAll tests passed.\033[0m")


def _describe(value) -> str:
    if value is None:
        return "None"
    shape = np.shape(value) if not isinstance(value, (str, dict)) else None
    return f"{type(value).__name__} of shape {shape}" if shape else repr(value)[:80]


def _passes_quietly(name: str, function) -> bool:
    """Whether ``function`` passes the check of exercise ``name`` (nothing printed)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            globals()[f"test_{name}"](function)
    except AssertionError:
        return False
    return True


@contextlib.contextmanager
def _earlier_exercises(target, *names: str):
    """Grade a later exercise on its own: where ``target`` calls an earlier exercise (found in
    the learner's definitions, ``target.__globals__``) that fails its own check, the library's
    version stands in while this check runs, and a line says so."""
    namespace = getattr(target, "__globals__", {})
    replaced = {}
    for name in names:
        mine = namespace.get(name)
        if callable(mine) and mine is not library_version(name) and not _passes_quietly(name, mine):
            replaced[name] = mine
            namespace[name] = library_version(name)
            print(
                f"({name} does not pass its own check yet, so this check used the library's "
                f"version of it.)"
            )
    try:
        yield
    finally:
        namespace.update(replaced)


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
    check.shape(
        counts,
        (4,),
        "the counts of a label with values 0..3",
        "One count per class, in order 0 (background), 1, 2, 3, also for a class with no "
        "voxel (np.bincount(..., minlength=num_classes)).",
    )
    if not np.array_equal(label, original):
        check.fail("the label was modified; only count.")
    expected = [40, 12, 0, 8]
    if np.asarray(counts).tolist() != expected:
        check.fail(
            f"expected {expected} (background, edema, non-enhancing, enhancing), got "
            f"{np.asarray(counts).tolist()}. {hint}"
        )
    no_enhancing = np.where(label == 3, 0, label).astype(np.uint8)
    counts = np.asarray(check.call(target, no_enhancing))
    check.shape(
        counts,
        (4,),
        "the counts of a label without enhancing tumour",
        "A class with no voxel still gets its place: np.bincount(label.ravel(), "
        "minlength=num_classes).",
    )
    if counts.tolist() != [48, 12, 0, 0]:
        check.fail(
            f"label without enhancing tumour: expected [48, 12, 0, 0], got {counts.tolist()}."
        )
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
            check.close(
                piece.mean(),
                0.0,
                f"mean of {where}",
                "Standardise each channel of each z-slice on its own: image[:, :, z, c].",
                atol=1e-3,
            )
            expected_std = 0.0 if (channel, z) == (2, 2) else 1.0
            check.close(
                piece.std(),
                expected_std,
                f"standard deviation of {where}",
                "Divide by the slice's std, except where it is 0 (only centre those).",
                atol=1e-3,
            )
    integers = np.round(image).astype(np.int16)
    result = np.asarray(check.call(target, integers))
    if not np.issubdtype(result.dtype, np.floating):
        check.fail(
            f"an int16 image came back as {result.dtype}: standardised values are "
            f"fractions, so make a float array (np.zeros(image.shape, dtype=np.float32), "
            f"not np.zeros_like(image))."
        )
    check.close(
        result[:, :, 0, 0].std(), 1.0, "standard deviation of an int16 image's slice", atol=1e-3
    )
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
    kwargs = dict(
        orig_x=10,
        orig_y=9,
        orig_z=6,
        output_x=4,
        output_y=3,
        output_z=2,
        num_classes=4,
        max_tries=1000,
        background_threshold=0.7,
    )
    np.random.seed(3)
    for _ in range(20):
        result = _sub_volume(check, target, image, label, **kwargs)
        if result is None:
            check.fail("returned None although qualifying windows exist.")
        X, y = result
        check.shape(X, (4, 3, 2, 4), "X", "Cut image[x:x+4, y:y+3, z:z+2, :] (channels last).")
        check.shape(
            y,
            (4, 3, 2, 3),
            "y",
            "One-hot encode the label window and drop the background channel (last axis).",
        )
        x0, y0, z0 = (int(X[0, 0, 0, axis]) for axis in range(3))
        window = (slice(x0, x0 + 4), slice(y0, y0 + 3), slice(z0, z0 + 2))
        if not np.array_equal(X, image[window]):
            check.fail("X is not the image cut at one offset (all channels, same window).")
        one_hot = np.stack([label[window] == c for c in (1, 2, 3)], axis=-1)
        if not np.array_equal(y, one_hot):
            check.fail(
                "y is not the one-hot label of X's window without background "
                "(channels edema, non-enhancing, enhancing)."
            )
        background = np.mean(label[window] == 0)
        if background >= 0.7:
            check.fail(
                f"the window's background fraction {background:.2f} is not below "
                f"background_threshold 0.7."
            )
    # Every corner must be possible, the largest included: orig - output + 1 choices per axis.
    small = _coordinate_volume((5, 4, 3))
    tumour = np.ones((5, 4, 3), np.uint8)
    seen = [set(), set(), set()]
    np.random.seed(0)
    for _ in range(40):
        X, _ = _sub_volume(
            check,
            target,
            small,
            tumour,
            orig_x=5,
            orig_y=4,
            orig_z=3,
            output_x=4,
            output_y=3,
            output_z=2,
            background_threshold=0.95,
        ) or (None, None)
        if X is None or X.shape[:3] != (4, 3, 2):
            check.fail("a 5x4x3 volume that is all tumour should give a 4x3x2 window every time.")
        for axis in range(3):
            seen[axis].add(int(X[0, 0, 0, axis]))
    for axis, name in enumerate("xyz"):
        if seen[axis] != {0, 1}:
            check.fail(
                f"in 40 draws on a 5x4x3 volume with a 4x3x2 window, start_{name} took the "
                f"values {sorted(seen[axis])}, never both 0 and 1 (= orig_{name} - "
                f"output_{name}). np.random.randint(low, high) never returns high: use "
                f"np.random.randint(0, orig_{name} - output_{name} + 1)."
            )
    # The background share must be strictly below the threshold.
    half = np.zeros((4, 4, 2), np.uint8)
    half[:2] = 1  # background share exactly 0.5 in the only window
    whole = dict(orig_x=4, orig_y=4, orig_z=2, output_x=4, output_y=4, output_z=2, max_tries=5)
    if (
        _sub_volume(
            check, target, _coordinate_volume((4, 4, 2)), half, background_threshold=0.5, **whole
        )
        is not None
    ):
        check.fail(
            "accepted a window whose background share (0.50) equals background_threshold "
            "(0.5): keep a window only when its share is strictly below it (<, not <=)."
        )
    if (
        _sub_volume(
            check, target, _coordinate_volume((4, 4, 2)), half, background_threshold=0.51, **whole
        )
        is None
    ):
        check.fail(
            "returned None although the window's background share 0.50 is below the threshold 0.51."
        )
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
    check.same(
        model.input_shape,
        (None, *input_shape),
        f"{what}: the input shape",
        "keras.Input(shape=input_shape): channels last, the batch axis is added.",
    )
    check.same(
        model.output_shape,
        (None, *input_shape[:3], n_labels),
        f"{what}: the output shape",
        "Keep the input's size ('same' padding) and end with a 1x1x1 Conv3D to n_labels channels.",
    )
    counts = _layer_counts(model)
    expectations = [
        ("MaxPooling3D", depth - 1, "max-pooling after each contracting level but the last"),
        ("UpSampling3D", depth - 1, "up-sampling at the start of each expanding level"),
        ("Concatenate", depth - 1, "a skip concatenation in each expanding level"),
    ]
    for name, expected, why in expectations:
        if counts.get(name, 0) != expected:
            check.fail(
                f"{what}: expected {expected} {name} layers ({why}), found {counts.get(name, 0)}."
            )
    if batch_norm and counts.get("BatchNormalization", 0) != 4 * depth - 2:
        check.fail(
            f"{what} with normalization='batch': expected a BatchNormalization after each "
            f"of the {4 * depth - 2} 3x3x3 convolutions, found "
            f"{counts.get('BatchNormalization', 0)}."
        )
    if not batch_norm and counts.get("BatchNormalization", 0):
        check.fail(f"{what}: normalization=None should add no BatchNormalization layer.")
    if batch_norm:
        _check_normalise_then_relu(check, model, what)
    expected = unet_parameters(input_shape[-1], n_labels, depth, n_base_filters, batch_norm)
    if model.count_params() != expected:
        check.fail(
            f"{what}: expected {expected:,} parameters, got {model.count_params():,}. "
            f"Level d has two 3x3x3 convolutions with n_base_filters * 2**d then twice that "
            f"many filters; each expanding level concatenates the up-sampled features with "
            f"the skip and convolves twice to the skip's number of channels."
        )


def _producer(layer):
    """The layer whose output ``layer`` takes as its input (Keras 3's functional graph)."""
    history = getattr(layer.input, "_keras_history", None)
    return history[0] if history else None


def _check_normalise_then_relu(check, model, what):
    """conv_block's order with normalisation: Conv3D (no activation), BatchNormalization, ReLU."""
    order = (
        "conv_block's order is Conv3D (no activation of its own), then BatchNormalization, "
        "then ReLU: normalise the convolution's raw output, and apply ReLU after it."
    )
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        source = _producer(layer)
        if type(source).__name__ != "Conv3D":
            check.fail(
                f"{what}: a BatchNormalization follows a {type(source).__name__} "
                f"layer, not a Conv3D. {order}"
            )
        if getattr(source.activation, "__name__", "linear") != "linear":
            check.fail(
                f"{what}: a BatchNormalization follows a Conv3D with "
                f"activation={source.activation.__name__!r}. {order}"
            )


_UNET_HINTS = [
    (
        "ValueError",
        "Concatenate",
        "Each expanding level concatenates the up-sampled features with "
        "the skip of the same resolution: expanding level d takes contracting level d's output "
        "(skips[level]), and starts from the deepest skip, the last contracting level's output.",
    ),
]


def test_unet_model_3d(target):
    check = _Checker("unet_model_3d")
    model = check.call(target, time_limit=max(SECONDS_PER_CALL, 60), hints=_UNET_HINTS)
    _check_unet(check, model, (160, 160, 16, 4), 3, 4, 32, False, "unet_model_3d()")
    small_shape = (16, 16, 8, 4)
    small = check.call(
        target, input_shape=small_shape, n_labels=2, depth=3, n_base_filters=4, hints=_UNET_HINTS
    )
    _check_unet(
        check,
        small,
        small_shape,
        2,
        3,
        4,
        False,
        "unet_model_3d(input_shape=(16, 16, 8, 4), n_labels=2, depth=3, n_base_filters=4)",
    )
    x = np.random.default_rng(0).normal(size=(1, *small_shape)).astype(np.float32)
    probabilities = np.asarray(small(x, training=False))
    if probabilities.min() < 0 or probabilities.max() > 1:
        check.fail("the output should be probabilities in [0, 1]: end with a sigmoid activation.")
    if np.allclose(probabilities.sum(axis=-1), 1, atol=1e-4):
        check.fail(
            "the channels sum to 1 in every voxel, as after a softmax: each class needs its "
            "own independent probability, a sigmoid."
        )
    cpu = check.call(
        target,
        input_shape=(64, 64, 32, 4),
        n_base_filters=8,
        normalization="batch",
        hints=_UNET_HINTS,
    )
    _check_unet(
        check,
        cpu,
        (64, 64, 32, 4),
        3,
        4,
        8,
        True,
        "unet_model_3d(input_shape=(64, 64, 32, 4), n_base_filters=8, normalization='batch')",
    )
    check.passed()


# ----------------------------------------------------------------------------- 04: dice and loss


def _reference_dice(y_true, y_pred, axis, epsilon, squares=False, xp=np):
    """Per-class Dice (soft Dice with ``squares``) in numpy, or with ``xp=keras.ops`` on
    tensors."""
    if xp is np:
        y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    numerator = 2 * xp.sum(y_true * y_pred, axis=axis) + epsilon
    power = 2 if squares else 1
    denominator = xp.sum(y_true**power, axis=axis) + xp.sum(y_pred**power, axis=axis) + epsilon
    return numerator / denominator


_TENSOR_WHY = {
    "single_class_dice_coefficient": "the same code serves as a metric and inside the loss during "
    "training, on TensorFlow tensors that gradients flow through",
    "dice_coefficient": "the same code serves as a metric and inside the loss during training, on "
    "TensorFlow tensors that gradients flow through",
    "soft_dice_loss": "your train_step in notebook 5 differentiates it on TensorFlow tensors "
    "inside a tf.GradientTape",
}


def _check_on_tensors(check, target, y_true, y_pred, axis, expected, squares=False):
    """Run the learner's Dice or loss as training will: on TensorFlow tensors inside a
    ``tf.GradientTape``. It must return a tensor of the right value whose gradient with respect
    to ``y_pred`` is that of ``expected`` (a function of the tensors, keras.ops)."""
    import tensorflow as tf

    y_true, y_pred = tf.constant(y_true, tf.float32), tf.constant(y_pred, tf.float32)

    def with_gradient(function):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            value = function(y_true, y_pred, axis=axis)
        gradient = tape.gradient(value, y_pred) if tf.is_tensor(value) else None
        return value, gradient

    why = _TENSOR_WHY[check.exercise]
    hints = [("AttributeError", "Tensor", f"Write it with {_KERAS_OPS}, and {why}")]
    value, gradient = check.call(with_gradient, target, hints=hints)
    want, want_gradient = with_gradient(expected)
    what = f"on TensorFlow tensors inside a tf.GradientTape (axis={axis})"
    if not tf.is_tensor(value):
        kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
        check.fail(
            f"{what} it returned a {kind}, not a tensor, so no gradient can "
            f"flow back to the network's weights. Write it with {_KERAS_OPS}; {why}."
        )
    check.allclose(value, np.asarray(want), what)
    if gradient is None:
        check.fail(
            f"{what} it returned a tensor that no gradient flows through to y_pred: "
            f"compute it from y_pred with {_KERAS_OPS}, without a detour through numpy."
        )
    if not np.allclose(np.asarray(gradient), np.asarray(want_gradient), rtol=1e-3, atol=1e-6):
        check.fail(
            f"{what} its gradient with respect to y_pred differs from that of the "
            f"formula: {'squares in the denominator' if squares else 'plain sums'}, and "
            f"y_pred enters only through keras.ops."
        )


def _keras_ops():
    from keras import ops

    return ops


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


_AXIS_HINT = (
    "Sum over exactly the axes given in `axis` (ops.sum(..., axis=axis)); do not hard-code them."
)


def test_single_class_dice_coefficient(target):
    check = _Checker("single_class_dice_coefficient")
    hint_eps = "Add epsilon to both the numerator (2 * sum(p * g) + eps) and the denominator."
    check.close(
        check.call(target, _LABEL_A, _PRED, epsilon=1),
        0.6,
        "seed example 1 (pred [[1,0],[0,1]], label [[1,1],[0,0]], epsilon=1)",
        hint_eps,
    )
    check.close(
        check.call(target, _LABEL_B, _PRED, epsilon=1),
        0.8333,
        "seed example 2 (pred [[1,0],[0,1]], label [[1,1],[0,1]], epsilon=1)",
        hint_eps,
    )
    check.close(
        check.call(target, _LABEL_A, _HALF, epsilon=1),
        0.5,
        "soft prediction 0.5 (dice uses plain sums, no squares)",
    )
    empty = np.zeros((2, 2, 1), np.float32)
    check.close(
        check.call(target, empty, empty),
        1.0,
        "both empty with the default epsilon (eps / eps = 1, never 0/0)",
        hint_eps,
    )
    y_true, y_pred = _volumes(1, shape=(3, 2, 4))
    check.close(
        check.call(target, y_true, y_pred),
        _reference_dice(y_true, y_pred, (0, 1, 2), 1e-5),
        "a 3x2x4 volume (4 z-slices)",
        "Sum over x, y and z: axis=(0, 1, 2).",
    )
    batch_true, batch_pred = _volumes(2, shape=(2, 3, 2, 4))
    check.allclose(
        check.call(target, batch_true, batch_pred, axis=(1, 2, 3)),
        _reference_dice(batch_true, batch_pred, (1, 2, 3), 1e-5),
        "a batch of 2 volumes with axis=(1, 2, 3) (one Dice per example)",
        _AXIS_HINT,
    )
    check.close(
        check.call(target, y_true, y_pred, epsilon=1),
        check.call(target, y_pred, y_true, epsilon=1),
        "Dice is symmetric: swapping y_true and y_pred must not change it",
    )
    soft_true, soft_pred = _volumes(11, shape=(2, 3, 2, 4), soft=True)
    _check_on_tensors(
        check,
        target,
        soft_true,
        soft_pred,
        (1, 2, 3),
        lambda t, p, axis: _reference_dice(t, p, axis, 1e-5, xp=_keras_ops()),
    )
    check.passed()


def test_dice_coefficient(target):
    check = _Checker("dice_coefficient")
    y_true, y_pred = _stack(_LABEL_A, _LABEL_B), _stack(_PRED, _PRED)
    hint = (
        "Sum over the spatial axes (axis=(0, 1, 2), channels-last) for each class, "
        "then take the mean over classes."
    )
    check.close(
        check.call(target, y_true, y_pred, epsilon=1),
        (0.6 + 5 / 6) / 2,
        "two classes (Dice 0.6 and 0.8333, epsilon=1)",
        hint,
    )
    three = _stack(_LABEL_A, _LABEL_B, np.zeros((2, 2, 1), np.float32))
    check.close(
        check.call(target, three, _stack(_PRED, _PRED, _PRED), epsilon=1),
        (0.6 + 5 / 6 + 1 / 3) / 3,
        "three classes, the third predicted but absent",
        hint,
    )
    y_true, y_pred = _volumes(3)
    check.close(
        check.call(target, y_true, y_pred),
        np.mean(_reference_dice(y_true, y_pred, (0, 1, 2), 1e-5)),
        "three classes in a 3x2x4 volume (4 z-slices)",
        hint,
    )
    batch_true, batch_pred = _volumes(4, shape=(2, 3, 2, 4, 3))
    check.close(
        check.call(target, batch_true, batch_pred, axis=(1, 2, 3)),
        np.mean(_reference_dice(batch_true, batch_pred, (1, 2, 3), 1e-5)),
        "a batch (2, 3, 2, 4, 3) with axis=(1, 2, 3): the mean of the 2 x 3 per-example "
        "per-class Dice values",
        _AXIS_HINT,
    )
    check.close(
        check.call(target, batch_true, batch_pred, axis=(0, 1, 2, 3)),
        np.mean(_reference_dice(batch_true, batch_pred, (0, 1, 2, 3), 1e-5)),
        "the same batch with axis=(0, 1, 2, 3): Dice pooled over the batch, per class, "
        "then the mean over the 3 classes",
        _AXIS_HINT,
    )
    soft_true, soft_pred = _volumes(12, shape=(2, 3, 2, 4, 3), soft=True)
    _check_on_tensors(
        check,
        target,
        soft_true,
        soft_pred,
        (1, 2, 3),
        lambda t, p, axis: _keras_ops().mean(_reference_dice(t, p, axis, 1e-5, xp=_keras_ops())),
    )
    check.passed()


def test_soft_dice_loss(target):
    check = _Checker("soft_dice_loss")
    hint = (
        "Loss = 1 - mean over classes of (2 * sum(p * g) + eps) / "
        "(sum(g**2) + sum(p**2) + eps): squares in the denominator, eps in both places."
    )

    def single(a):
        return a[..., None]

    check.close(
        check.call(target, single(_LABEL_A), single(_PRED), epsilon=1),
        0.4,
        "seed test case 1",
        hint,
    )
    check.close(
        check.call(target, single(_LABEL_A), single(_HALF), epsilon=1),
        0.4286,
        "seed test case 2 (pred 0.5: squares make the denominator 0.5, not 1)",
        hint,
    )
    check.close(
        check.call(target, single(_LABEL_B), single(_PRED), epsilon=1),
        0.1667,
        "seed test case 3",
        hint,
    )
    check.close(
        check.call(target, _stack(_LABEL_A, _LABEL_A), _stack(_PRED, _HALF), epsilon=1),
        1 - (0.6 + 2 / 3.5) / 2,
        "two classes: mean of the per-class soft Dice",
        hint,
    )
    perfect = _stack(_LABEL_A, _LABEL_B)
    check.close(check.call(target, perfect, perfect), 0.0, "a perfect prediction has loss 0", hint)
    y_true, y_pred = _volumes(5, soft=True)
    check.close(
        check.call(target, y_true, y_pred),
        1 - np.mean(_reference_dice(y_true, y_pred, (0, 1, 2), 1e-5, squares=True)),
        "probabilities in a 3x2x4x3 volume (4 z-slices)",
        hint,
    )
    batch_true, batch_pred = _volumes(6, shape=(2, 3, 2, 4, 3), soft=True)
    for axis, what in (((1, 2, 3), "per example"), ((0, 1, 2, 3), "pooled over the batch")):
        check.close(
            check.call(target, batch_true, batch_pred, axis=axis),
            1 - np.mean(_reference_dice(batch_true, batch_pred, axis, 1e-5, squares=True)),
            f"a batch (2, 3, 2, 4, 3) with axis={axis} ({what})",
            _AXIS_HINT,
        )
    _check_on_tensors(
        check,
        target,
        batch_true,
        batch_pred,
        (0, 1, 2, 3),
        lambda t, p, axis: (
            1 - _keras_ops().mean(_reference_dice(t, p, axis, 1e-5, squares=True, xp=_keras_ops()))
        ),
        squares=True,
    )
    check.passed()


# ---------------------------------------------------------------------- sensitivity, specificity

# One class's voxels: TP=1, FN=2, FP=3, TN=2 -> sensitivity 1/3, specificity 0.4,
# (precision would be 0.25, negative predictive value 0.5: both differ on purpose).
_SENS_LABEL = np.array([1, 1, 1, 0, 0, 0, 0, 0], np.float32)
_SENS_PRED = np.array([1, 0, 0, 1, 1, 1, 0, 0], np.float32)


def _sens_spec_arrays(dtype=np.float32):
    """pred, label ``(2, 2, 2, 3)``: the class above in channel 1; channels 0 and 2 differ."""

    def as_volume(flat):
        return np.asarray(flat).reshape(2, 2, 2)

    label = np.stack([as_volume(np.ones(8)), as_volume(_SENS_LABEL), as_volume(np.eye(8)[0])], -1)
    pred = np.stack(
        [as_volume(np.eye(8)[0] + np.eye(8)[1]), as_volume(_SENS_PRED), as_volume(np.eye(8)[0])], -1
    )
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
        hint_channels = (
            "Take class class_num from the last axis: pred[..., class_num] (channels-last)."
        )
        check.close(
            sensitivity,
            1 / 3,
            f"sensitivity of class 1 (TP=1, FN=2, FP=3, TN=2){kind}",
            "Sensitivity = TP / (TP + FN) (not precision TP / (TP + FP)). " + hint_channels,
        )
        check.close(
            specificity,
            0.4,
            f"specificity of class 1 (TP=1, FN=2, FP=3, TN=2){kind}",
            "Specificity = TN / (TN + FP) (not TN / (TN + FN)). " + hint_channels,
        )
        sensitivity, specificity = check.call(target, pred, label, 0)
        check.close(sensitivity, 0.25, f"sensitivity of class 0{kind}", hint_channels)
        check.close(
            specificity,
            float("nan"),
            f"specificity of class 0, which has no negatives (0/0 is nan){kind}",
            "Compute TN / (TN + FP) with numpy so that 0/0 gives nan.",
        )
        sensitivity, specificity = check.call(target, pred, label, 2)
        check.close(sensitivity, 1.0, f"sensitivity of class 2 (a perfect prediction){kind}")
        check.close(specificity, 1.0, f"specificity of class 2 (a perfect prediction){kind}")
    check.passed()


_SENS_SPEC_DF_HINTS = [
    (
        "IndexError",
        None,
        "class_num is the index into the last axis of pred and label, which "
        "holds the three classes only (no background): 0, 1, 2 for the three columns.",
    ),
]


def test_get_sens_spec_df(target):
    check = _Checker("get_sens_spec_df")
    pred, label = _sens_spec_arrays()
    with _earlier_exercises(target, "compute_class_sens_spec"):
        table = check.call(target, pred, label, hints=_SENS_SPEC_DF_HINTS)
    if list(getattr(table, "columns", [])) != list(CLASS_NAMES):
        check.fail(
            f"columns should be {list(CLASS_NAMES)}, got {list(getattr(table, 'columns', []))}."
        )
    if list(getattr(table, "index", [])) != ["Sensitivity", "Specificity"]:
        check.fail(f"rows should be ['Sensitivity', 'Specificity'], got {list(table.index)}.")
    expected = dict(zip(CLASS_NAMES, [(0.25, float("nan")), (1 / 3, 0.4), (1.0, 1.0)]))
    hint = (
        "Fill each column with compute_class_sens_spec(pred, label, class_num), class_num "
        "0, 1, 2 for the three columns."
    )
    for name, (sensitivity, specificity) in expected.items():
        check.close(table.loc["Sensitivity", name], sensitivity, f"Sensitivity of {name}", hint)
        check.close(table.loc["Specificity", name], specificity, f"Specificity of {name}", hint)
    value = check.number(table.loc["Sensitivity", "Non-Enhancing Tumor"], "Sensitivity")
    if value != round(1 / 3, 4):
        check.fail(
            f"Sensitivity of Non-Enhancing Tumor is {value!r}; the table shows each value "
            f"rounded to 4 decimals ({round(1 / 3, 4)}): round(sensitivity, 4)."
        )
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
    with _earlier_exercises(target, "soft_dice_loss"):
        loss = check.call(
            target,
            model,
            keras.optimizers.SGD(learning_rate),
            x,
            y,
            hints=[
                (
                    None,
                    "No gradients provided",
                    "The tape records only what runs inside its block: compute the "
                    "probabilities and the loss inside `with tf.GradientTape() as tape:`, "
                    "then call tape.gradient after it.",
                )
            ],
        )
    if loss is None:
        check.fail("returned None: return the batch's loss.")
    if np.shape(np.asarray(loss)) != ():
        check.fail(
            f"should return one number for the batch, got shape {np.shape(np.asarray(loss))}"
            f": pool the soft Dice loss over the batch, soft_dice_loss(y, probabilities, "
            f"axis=(0, 1, 2, 3))."
        )
    loss = float(np.asarray(loss))
    after_loss = _reference_step(_copy_of(model), x, y, 0.0)
    weights = model.get_weights()
    if all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_variables)):
        check.fail(
            "the weights did not change: apply the gradients with "
            "optimizer.apply_gradients(zip(gradients, model.trainable_variables))."
        )
    if not np.isclose(loss, expected, atol=1e-5):
        if np.isclose(loss, evaluation_loss, atol=1e-5):
            check.fail(
                f"returned {loss:.5f}, the loss of the model in inference mode; the forward "
                f"pass of a training step runs in training mode (model(x, training=True)), "
                f"expected {expected:.5f}."
            )
        if np.isclose(loss, per_example_loss, atol=1e-5):
            check.fail(
                f"returned {loss:.5f}, the loss averaged per example; training pools the "
                f"batch: soft_dice_loss(y, probabilities, axis=(0, 1, 2, 3)), expected "
                f"{expected:.5f}."
            )
        if np.isclose(loss, after_loss, atol=1e-5):
            check.fail(
                f"returned {loss:.5f}, the loss after the update; return the loss computed "
                f"before apply_gradients, expected {expected:.5f}."
            )
        check.fail(
            f"returned loss {loss:.5f}, expected {expected:.5f} (the soft Dice loss of "
            f"model(x, training=True) pooled over the batch, axis=(0, 1, 2, 3))."
        )
    if not all(np.allclose(a, b, atol=1e-5) for a, b in zip(weights, reference.get_weights())):
        check.fail(
            "the weights after one step differ from one optimizer step down the gradient of "
            "the pooled soft Dice loss: take tape.gradient(loss, model.trainable_variables) "
            "and apply it once with the optimizer you were given."
        )
    check.passed()


def _copy_of(model):
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


# ----------------------------------------------------------------------------- 06: whole scans


_WINDOW_CASES = [
    (240, 160, 0.25),
    (155, 16, 0.25),
    (100, 32, 0.0),
    (96, 32, 0.0),
    (50, 10, 0.25),
    (40, 10, 0.5),
    (16, 16, 0.5),
    (10, 16, 0.25),
    (20, 16, 0.99),
]
_STRIDE = "max(1, int(window * (1 - overlap)))"
_WINDOW_HINTS = [
    (
        "ValueError",
        "must not be zero",
        f"A stride of 0: for an overlap close to 1, window * (1 - "
        f"overlap) is below 1, so take at least 1: stride = {_STRIDE}",
    ),
    (
        "TypeError",
        "float",
        f"range() takes whole numbers: the stride is {_STRIDE}, rounded down to an int",
    ),
]


def _window_plan_problem(starts: list[int], length: int, window: int, overlap: float) -> str | None:
    """What is wrong with ``starts`` as the plan of windows along an axis, or None: checked
    against the plan's properties (first at 0, each start once and increasing, inside the axis,
    every voxel covered, counted by brute force, and the stride between neighbours), not
    against another implementation."""
    if length <= window:
        return None if starts == [0] else "an axis no longer than the window needs one window, at 0"
    if not starts or starts[0] != 0:
        return "the first window starts at 0"
    if any(b <= a for a, b in zip(starts, starts[1:])):
        return (
            "each start once, in increasing order (when the stride fits exactly, "
            "range(0, length - window, stride) already stops before the last start)"
        )
    if starts[-1] + window > length:
        return (
            f"the window at {starts[-1]} reaches past the end of the axis: the last window "
            f"starts at length - window = {length - window}"
        )
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + window] = True
    if not covered.all():
        missed = np.flatnonzero(~covered)
        if starts[-1] + window < length:
            return (
                f"voxels {missed[0]} to {length - 1} are in no window: the last window must "
                f"end at the last voxel, so it starts at length - window = {length - window}"
            )
        return (
            f"voxels {missed[0]} to {missed[-1]} fall between windows: the stride is "
            f"{_STRIDE}, the window minus the part its neighbour overlaps"
        )
    stride = max(1, int(window * (1 - overlap)))
    steps = np.diff(starts)
    if (steps[:-1] != stride).any() or not 0 < steps[-1] <= stride:
        return (
            f"neighbouring starts are {sorted(set(steps.tolist()))} apart; the stride is "
            f"{_STRIDE} = {stride}, the window minus the part its neighbour overlaps (only "
            f"the last step, to length - window, may be shorter)"
        )
    return None


def test_window_starts(target):
    check = _Checker("window_starts")
    for length, window, overlap in _WINDOW_CASES:
        call = f"window_starts({length}, {window}, {overlap})"
        result = check.call(
            target,
            length,
            window,
            overlap,
            hints=_WINDOW_HINTS,
            time_limit=min(SECONDS_PER_CALL, 10),
        )
        try:
            starts = [int(s) for s in result]
        except TypeError:
            check.fail(f"{call} should return a list of start positions, got {_describe(result)}.")
        problem = _window_plan_problem(starts, length, window, overlap)
        if problem:
            check.fail(_sentences(f"{call} returned {starts}: {problem}"))
    check.passed()


def _label_map_probabilities() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """probabilities (2, 2, 2, 3) and the expected label maps at thresholds 0.5 and 0.3."""
    voxels = [
        ([0.9, 0.2, 0.1], 1, 1),  # one class above the threshold
        ([0.9, 0.7, 0.1], 1, 1),  # two above: the most probable wins, not the last channel
        ([0.2, 0.6, 0.55], 2, 2),  # two above, the middle channel most probable
        ([0.1, 0.2, 0.8], 3, 3),
        ([0.5, 0.5, 0.5], 0, 1),  # exactly at the threshold: not above it; at 0.3: argmax 0
        ([0.1, 0.2, 0.35], 0, 3),  # below 0.5, above 0.3
        ([0.0, 0.0, 0.0], 0, 0),
        ([0.45, 0.3, 0.2], 0, 1),  # below 0.5; at 0.3 only channel 0 is above
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
    check.shape(
        result,
        (2, 2, 2),
        "the label map of (2, 2, 2, 3) probabilities",
        "One label per voxel: reduce the last axis (axis=-1).",
    )
    if result.dtype != np.uint8:
        check.fail(
            f"the label map should be uint8, like the labels on disk, got {result.dtype}: "
            f".astype(np.uint8)."
        )
    flat, want = result.ravel().tolist(), at_half.ravel().tolist()
    if flat != want:
        if flat[4] != 0:
            check.fail(
                f"a voxel whose highest probability is exactly the threshold (0.5) got "
                f"label {flat[4]}: only probabilities strictly above the threshold count "
                f"(>, not >=)."
            )
        if flat[1] == 2:
            check.fail(
                "a voxel with edema 0.9 and non-enhancing 0.7 got label 2: take the channel "
                "of highest probability (np.argmax over the last axis), not the last one "
                "above the threshold."
            )
        if flat[0] == 0 and flat[3] == 2:
            check.fail(
                f"labels are off by one (got {flat}, expected {want}): channel 0 is label "
                f"1 (edema), so add 1 to the argmax."
            )
        check.fail(f"expected labels {want} (voxel by voxel), got {flat}.")
    result = np.asarray(check.call(target, probabilities, threshold=0.3))
    if result.ravel().tolist() != at_03.ravel().tolist():
        check.fail(
            f"with threshold=0.3 expected {at_03.ravel().tolist()}, got "
            f"{result.ravel().tolist()}: use the threshold argument, not a fixed 0.5."
        )
    check.passed()


class Exercise(NamedTuple):
    """Where an exercise lives: the notebook that holds the learner's version, and the library
    module that holds the production version (used only where a learner opts in)."""

    notebook: str
    library: str


# The exercises in course order: the one map of exercise, notebook and library module.
EXERCISES = {
    "voxels_per_class": Exercise("01_data_exploration", "tumorseg.data"),
    "get_sub_volume": Exercise("02_patch_generation", "tumorseg.patches"),
    "standardize": Exercise("02_patch_generation", "tumorseg.patches"),
    "unet_model_3d": Exercise("03_unet_model", "tumorseg.model"),
    "single_class_dice_coefficient": Exercise("04_loss_and_metrics", "tumorseg.metrics"),
    "dice_coefficient": Exercise("04_loss_and_metrics", "tumorseg.metrics"),
    "soft_dice_loss": Exercise("04_loss_and_metrics", "tumorseg.metrics"),
    "compute_class_sens_spec": Exercise("04_loss_and_metrics", "tumorseg.metrics"),
    "get_sens_spec_df": Exercise("04_loss_and_metrics", "tumorseg.metrics"),
    "train_step": Exercise("05_training", "tumorseg.train"),
    "window_starts": Exercise("06_whole_scan_inference", "tumorseg.inference"),
    "to_label_map": Exercise("06_whole_scan_inference", "tumorseg.inference"),
}


def library_version(name: str):
    """The library's production version of exercise ``name``."""
    return getattr(importlib.import_module(EXERCISES[name].library), name)
