"""tumorseg.metrics: the seed's formulas on numpy and tensors, BraTS regions, HD95, tables."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from tumorseg import metrics


def random_pair(shape=(6, 5, 4, 3), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) > 0.6).astype(np.float32), rng.random(shape).astype(np.float32)


def test_formulas_by_hand():
    y_true, y_pred = random_pair()
    eps = 1e-5
    per_class = [
        (2 * (y_true[..., c] * y_pred[..., c]).sum() + eps)
        / (y_true[..., c].sum() + y_pred[..., c].sum() + eps)
        for c in range(3)
    ]
    np.testing.assert_allclose(
        metrics.single_class_dice_coefficient(y_true[..., 1], y_pred[..., 1]),
        per_class[1],
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        metrics.dice_coefficient(y_true, y_pred), np.mean(per_class), rtol=1e-5
    )
    soft = [
        (2 * (y_true[..., c] * y_pred[..., c]).sum() + eps)
        / ((y_true[..., c] ** 2).sum() + (y_pred[..., c] ** 2).sum() + eps)
        for c in range(3)
    ]
    np.testing.assert_allclose(metrics.soft_dice_loss(y_true, y_pred), 1 - np.mean(soft), rtol=1e-5)


def test_tensors_give_the_same_values_and_gradients():
    import tensorflow as tf

    y_true, y_pred = random_pair()
    expected = metrics.soft_dice_loss(y_true, y_pred)
    t_true, t_pred = tf.constant(y_true), tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        loss = metrics.soft_dice_loss(t_true, t_pred)
    assert isinstance(loss, tf.Tensor)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    gradient = tape.gradient(loss, t_pred)
    assert gradient is not None and np.isfinite(gradient.numpy()).all()
    np.testing.assert_allclose(
        metrics.dice_coefficient(t_true, t_pred).numpy(),
        metrics.dice_coefficient(y_true, y_pred),
        rtol=1e-5,
    )


def test_batch_loss_and_metric_pool_over_the_batch():
    y_true, y_pred = random_pair((2, 6, 5, 4, 3))
    pooled = metrics.soft_dice_loss(y_true.reshape(12, 5, 4, 3), y_pred.reshape(12, 5, 4, 3))
    np.testing.assert_allclose(metrics.batch_dice_loss(y_true, y_pred), pooled, rtol=1e-5)
    np.testing.assert_allclose(
        metrics.batch_dice(y_true, y_pred),
        metrics.dice_coefficient(y_true.reshape(12, 5, 4, 3), y_pred.reshape(12, 5, 4, 3)),
        rtol=1e-5,
    )


def test_usable_as_keras_loss_and_metric():
    import keras

    inputs = keras.Input((4, 4, 4, 1))
    outputs = keras.layers.Conv3D(3, 1, activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=metrics.batch_dice_loss, metrics=[metrics.batch_dice])
    x = np.random.default_rng(0).random((4, 4, 4, 4, 1)).astype(np.float32)
    y = (x > 0.5).astype(np.float32).repeat(3, axis=-1)
    history = model.fit(x, y, epochs=2, batch_size=2, verbose=0)
    assert set(history.history) >= {"loss", "batch_dice"}


def test_sens_spec_counts():
    pred = np.zeros((4, 1, 1, 3))
    label = np.zeros((4, 1, 1, 3))
    pred[:3, 0, 0, 0] = 1  # class 0: TP 2, FP 1, FN 0, TN 1
    label[:2, 0, 0, 0] = 1
    assert metrics.compute_class_sens_spec(pred, label, 0) == (1.0, 0.5)
    table = metrics.get_sens_spec_df(pred, label)
    assert table.loc["Specificity", "Edema"] == 0.5
    assert np.isnan(table.loc["Sensitivity", "Enhancing Tumor"])  # no positives to find


def test_region_masks():
    label = np.array([0, 1, 2, 3]).reshape(4, 1, 1)
    masks = metrics.region_masks(label)
    assert masks["WT"].ravel().tolist() == [False, True, True, True]
    assert masks["TC"].ravel().tolist() == [False, False, True, True]
    assert masks["ET"].ravel().tolist() == [False, False, False, True]
    assert masks["Edema"].ravel().tolist() == [False, True, False, False]


def ball(shape, centre, radius, spacing=(1, 1, 1)):
    grid = np.indices(shape).astype(float)
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= radius**2


def brute_force_hd95(a, b, spacing):
    """Independent computation: KD-trees over surface-voxel coordinates in mm."""
    from scipy import ndimage

    def surface_points(mask):
        surface = mask & ~ndimage.binary_erosion(mask)
        return np.argwhere(surface) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    return max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))


def test_hd95_concentric_balls():
    shape = (48, 48, 48)
    inner, outer = ball(shape, (24, 24, 24), 8), ball(shape, (24, 24, 24), 14)
    assert metrics.hausdorff95(inner, outer) == pytest.approx(6.0, abs=1.01)
    assert metrics.hausdorff95(inner, inner) == 0.0


def test_hd95_anisotropic_spacing():
    shape = (40, 40, 40)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[10:20, 10:20, 10:20] = True
    b[10:20, 10:20, 14:24] = True  # shifted by 4 voxels along z
    spacing = (1.0, 1.0, 2.5)
    assert metrics.hausdorff95(a, b, spacing) == pytest.approx(4 * 2.5)
    assert metrics.hausdorff95(a, b) == pytest.approx(4.0)


def test_hd95_matches_an_independent_computation():
    rng = np.random.default_rng(1)
    from scipy import ndimage

    for _ in range(3):
        a = ndimage.gaussian_filter(rng.random((30, 28, 20)), 2) > 0.52
        b = ndimage.gaussian_filter(rng.random((30, 28, 20)), 2) > 0.52
        spacing = (1.0, 0.8, 2.0)
        assert metrics.hausdorff95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing))


def test_hd95_empty_masks():
    empty, full = np.zeros((240, 240, 155), bool), np.zeros((240, 240, 155), bool)
    full[100:110, 100:110, 70:80] = True
    assert metrics.hausdorff95(empty, empty) == 0.0
    assert metrics.hausdorff95(empty, full) == pytest.approx(373.13, abs=0.01)
    assert metrics.hausdorff95(full, empty) == pytest.approx(373.13, abs=0.01)


def test_case_metrics_and_table():
    truth = np.zeros((20, 20, 10), np.uint8)
    truth[5:15, 5:15, 2:8] = 1
    truth[8:12, 8:12, 4:6] = 3
    pred = truth.copy()
    pred[8:12, 8:12, 4:6] = 2  # enhancing called non-enhancing
    row = metrics.case_metrics(pred, truth)
    assert row["Dice WT"] == 1.0 and row["Dice TC"] == 1.0
    assert row["Dice ET"] == 0.0 and row["Dice Non-Enhancing Tumor"] == 0.0
    assert row["Dice Edema"] == 1.0 and row["HD95 Edema"] == 0.0
    assert row["HD95 ET"] == pytest.approx(metrics.empty_distance(truth.shape, (1, 1, 1)))
    table = metrics.metrics_table({"a": row, "b": metrics.case_metrics(truth, truth)})
    assert list(table.index) == ["a", "b", "mean"]
    assert table.loc["mean", "Dice ET"] == 0.5


def test_region_targets_nest_the_classes():
    classes = np.eye(4)[[0, 1, 2, 3]][:, 1:]  # background, edema, non-enhancing, enhancing
    regions = metrics.region_targets(classes)
    assert regions.tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]]  # WT, TC, ET


def test_dice_ce_loss_adds_binary_cross_entropy():
    y, p = random_pair()
    y = (y > 0.5).astype(np.float64)
    batch_y, batch_p = y[None], p[None]
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(metrics.binary_cross_entropy(y, p), bce, rtol=1e-6)
    np.testing.assert_allclose(
        metrics.batch_dice_ce_loss(batch_y, batch_p),
        metrics.batch_dice_loss(batch_y, batch_p) + bce,
        rtol=1e-6,
    )
    assert set(metrics.LOSSES) == {"dice", "dice_ce"}
