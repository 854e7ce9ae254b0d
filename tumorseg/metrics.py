"""Dice, soft Dice loss, sensitivity / specificity, BraTS regions, HD95 and the metrics table.

Arrays are channels-last. For one example ``y_true`` and ``y_pred`` are ``(x, y, z, C)`` and the
default ``axis=(0, 1, 2)`` sums over space; for a batch ``(B, x, y, z, C)`` use ``axis=(1, 2, 3)``
(per example) or ``axis=(0, 1, 2, 3)`` (pooled over the batch, what training uses).

The overlap measures work on numpy arrays (numpy in, numpy out) and on tensors (keras.ops, so
gradients flow); TensorFlow is imported only when a tensor comes in.
"""

from __future__ import annotations

import numpy as np

from .data import CLASS_NAMES
from .patches import bounding_box

REGIONS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}  # BraTS regions as sets of seed labels
BATCH_AXIS = (0, 1, 2, 3)  # sum over batch and space, per class


def _ops(x):
    """numpy for numpy input, keras.ops for tensors."""
    if isinstance(x, (np.ndarray, np.generic, list, tuple, float, int)):
        return np
    from keras import ops

    return ops


def single_class_dice_coefficient(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    r"""Dice of one class: $\frac{2\sum p\,g + \epsilon}{\sum g + \sum p + \epsilon}$.

    y_true, y_pred: ``(x, y, z)`` (or with leading/trailing axes; ``axis`` is summed over).
    """
    xp = _ops(y_pred)
    numerator = 2.0 * xp.sum(y_true * y_pred, axis=axis) + epsilon
    denominator = xp.sum(y_true, axis=axis) + xp.sum(y_pred, axis=axis) + epsilon
    return numerator / denominator


def dice_coefficient(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    """Mean over classes (and whatever ``axis`` leaves) of the per-class Dice.

    y_true, y_pred: ``(x, y, z, C)``; for a batch pass ``axis=(1, 2, 3)`` or ``(0, 1, 2, 3)``.
    """
    xp = _ops(y_pred)
    return xp.mean(single_class_dice_coefficient(y_true, y_pred, axis, epsilon))


def soft_dice_loss(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    r"""$1 - \text{mean}_c \frac{2\sum p\,g + \epsilon}{\sum g^2 + \sum p^2 + \epsilon}$.

    Squares in the denominator, as in the seed (Milletari et al., V-Net).
    y_true, y_pred: ``(x, y, z, C)`` probabilities in 0..1.
    """
    xp = _ops(y_pred)
    numerator = 2.0 * xp.sum(y_true * y_pred, axis=axis) + epsilon
    denominator = (
        xp.sum(xp.square(y_true), axis=axis) + xp.sum(xp.square(y_pred), axis=axis) + epsilon
    )
    return 1.0 - xp.mean(numerator / denominator)


def batch_dice_loss(y_true, y_pred):
    """Keras loss: soft Dice pooled over a batch ``(B, x, y, z, C)``, one value per batch."""
    return soft_dice_loss(y_true, y_pred, axis=BATCH_AXIS)


def batch_dice(y_true, y_pred):
    """Keras metric: Dice of the probabilities pooled over a batch ``(B, x, y, z, C)``."""
    return dice_coefficient(y_true, y_pred, axis=BATCH_AXIS)


def region_targets(y):
    """The seed's one-hot classes ``(..., 3)`` (edema, non-enhancing, enhancing) as the nested
    BraTS region targets ``(..., 3)``: WT = all three, TC = non-enhancing + enhancing,
    ET = enhancing (numpy or tensors)."""
    xp = _ops(y)
    edema, core, enhancing = y[..., 0:1], y[..., 1:2], y[..., 2:3]
    return xp.concatenate([edema + core + enhancing, core + enhancing, enhancing], axis=-1)


def binary_cross_entropy(y_true, y_pred, epsilon=1e-6):
    """Mean binary cross-entropy of sigmoid probabilities ``y_pred`` against 0/1 ``y_true``
    (any shape), probabilities clipped to ``[epsilon, 1 - epsilon]``."""
    xp = _ops(y_pred)
    p = xp.clip(y_pred, epsilon, 1 - epsilon)
    return -xp.mean(y_true * xp.log(p) + (1 - y_true) * xp.log(1 - p))


def batch_dice_ce_loss(y_true, y_pred):
    """Soft Dice pooled over a batch plus binary cross-entropy on the sigmoids (nnU-Net's
    loss, with sigmoids): one value per batch."""
    return batch_dice_loss(y_true, y_pred) + binary_cross_entropy(y_true, y_pred)


LOSSES = {"dice": batch_dice_loss, "dice_ce": batch_dice_ce_loss}  # TrainConfig.loss


# ----------------------------------------------------------------------------- counts


def compute_class_sens_spec(pred, label, class_num):
    """Sensitivity TP/(TP+FN) and specificity TN/(TN+FP) of channel ``class_num``.

    pred, label: binary ``(x, y, z, C)``. A class with no positives (or no negatives) gives nan
    for sensitivity (or specificity): there is nothing to find.
    """
    class_pred = np.asarray(pred)[..., class_num].astype(bool)
    class_label = np.asarray(label)[..., class_num].astype(bool)
    tp = np.count_nonzero(class_pred & class_label)
    tn = np.count_nonzero(~class_pred & ~class_label)
    fp = np.count_nonzero(class_pred & ~class_label)
    fn = np.count_nonzero(~class_pred & class_label)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.float64(tp) / (tp + fn)
        specificity = np.float64(tn) / (tn + fp)
    return float(sensitivity), float(specificity)


def get_sens_spec_df(pred, label):
    """pandas table: rows Sensitivity, Specificity; columns the three classes (4 decimals).

    pred, label: binary ``(x, y, z, 3)``.
    """
    import pandas as pd

    table = pd.DataFrame(
        index=["Sensitivity", "Specificity"], columns=list(CLASS_NAMES), dtype=float
    )
    for class_num, name in enumerate(CLASS_NAMES):
        sensitivity, specificity = compute_class_sens_spec(pred, label, class_num)
        table.loc["Sensitivity", name] = round(sensitivity, 4)
        table.loc["Specificity", name] = round(specificity, 4)
    return table


# ----------------------------------------------------------------------------- regions and HD95


def region_masks(label_map: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean ``(x, y, z)`` masks of the three classes and the BraTS regions WT, TC, ET."""
    masks = {name: label_map == value for value, name in enumerate(CLASS_NAMES, start=1)}
    for region, values in REGIONS.items():
        masks[region] = np.isin(label_map, values)
    return masks


def empty_distance(shape, spacing) -> float:
    """HD95 given when exactly one mask is empty: the volume's diagonal in mm (373.13 for
    240x240x155 at 1 mm, the BraTS convention)."""
    return float(np.sqrt(np.sum((np.asarray(shape) * np.asarray(spacing, float)) ** 2)))


def hausdorff95(pred_mask, true_mask, spacing=(1, 1, 1)) -> float:
    """95th-percentile Hausdorff distance between the surfaces of two masks, in mm.

    The convention of MONAI's ``compute_hausdorff_distance(percentile=95)``: the larger of the
    two directed 95th percentiles, each over the surface voxels of one mask (a surface voxel is
    a mask voxel with a face-neighbour outside it) of their distances to the other mask's
    surface. The official BraTS evaluator instead takes one 95th percentile over both
    directions pooled, so its values are lower on ragged masks.

    Both masks empty: 0.0. Exactly one empty: the volume's diagonal in mm
    (:func:`empty_distance`, 373.13 for 240x240x155 at 1 mm).

    Args:
        pred_mask, true_mask: ``(x, y, z)`` boolean (or 0/1) masks of the same shape.
        spacing: mm per voxel along x, y, z.
    """
    from scipy import ndimage

    pred_mask, true_mask = np.asarray(pred_mask, bool), np.asarray(true_mask, bool)
    if pred_mask.shape != true_mask.shape:
        raise ValueError(f"mask shapes differ: {pred_mask.shape} and {true_mask.shape}")
    has_pred, has_true = pred_mask.any(), true_mask.any()
    if not has_pred and not has_true:
        return 0.0
    if not has_pred or not has_true:
        return empty_distance(pred_mask.shape, spacing)
    # Crop to the union's bounding box (plus one voxel): all surface points lie inside it.
    box = bounding_box(pred_mask | true_mask, margin=1)
    pred_surface, true_surface = _surface(pred_mask[box]), _surface(true_mask[box])
    to_true = ndimage.distance_transform_edt(~true_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[true_surface]
    return float(max(np.percentile(to_true, 95), np.percentile(to_pred, 95)))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face-neighbour outside it (outside the array counts)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


# ----------------------------------------------------------------------------- tables


def case_metrics(pred_map: np.ndarray, true_map: np.ndarray, spacing=(1, 1, 1)) -> dict:
    """Dice, sensitivity, specificity and HD95 of one case for the three classes and WT/TC/ET.

    pred_map, true_map: uint8 label maps ``(x, y, z)`` in the seed's values.
    Returns a flat dict ``{"Dice Edema": ..., "HD95 WT": ...}``. Dice of two empty masks is 1.
    """
    row = {}
    pred_masks, true_masks = region_masks(pred_map), region_masks(true_map)
    for name in pred_masks:
        p, t = pred_masks[name], true_masks[name]
        tp = np.count_nonzero(p & t)
        fp, fn = np.count_nonzero(p) - tp, np.count_nonzero(t) - tp
        tn = p.size - tp - fp - fn
        row[f"Dice {name}"] = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        row[f"Sensitivity {name}"] = tp / (tp + fn) if tp + fn else float("nan")
        row[f"Specificity {name}"] = tn / (tn + fp) if tn + fp else float("nan")
        row[f"HD95 {name}"] = hausdorff95(p, t, spacing)
    return row


def metrics_table(rows: dict[str, dict]):
    """pandas table of ``{case id: case_metrics(...)}`` with a final ``mean`` row."""
    import pandas as pd

    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "case"
    table.loc["mean"] = table.mean(numeric_only=True)
    return table
