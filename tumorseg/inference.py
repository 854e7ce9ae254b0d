"""Whole-scan prediction by sliding windows over the brain's bounding box, and label maps.

The windows are standardised exactly as training patches are (each channel of each z-slice to
mean 0, std 1, over the window), predicted in batches, weighted by a Gaussian that trusts window
centres more than their borders, and averaged where they overlap. Only the bounding box of the
non-zero voxels is predicted; the zero background outside it is background.

A U-Net built by :mod:`tumorseg.model` is fully convolutional, so whatever input size it was
saved with, prediction runs its free-size twin (same weights): windows keep the training patch's
size, stretched by up to a quarter along an axis to cover the brain in one window there rather
than two that mostly overlap. Other models slide their fixed input size.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .patches import brain_box, standardize

STRETCH = 1.25  # a window may grow this much to cover an axis in one piece (free-size models)


def config_from_model(model):
    """The :class:`~tumorseg.model.ModelConfig` of a U-Net built by :func:`unet_model_3d`, read
    off its layers, or None for another model."""
    import keras

    from .model import ModelConfig

    if model.name != "unet3d" or "down0a_conv" not in [layer.name for layer in model.layers]:
        return None
    names = [layer.name for layer in model.layers]
    norm = ("batch" if any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
            else "instance" if any(isinstance(l, keras.layers.GroupNormalization)
                                   for l in model.layers) else None)
    compute = model.get_layer("down0a_conv").dtype_policy.name
    return ModelConfig(
        patch_shape=tuple(model.input_shape[1:4]),
        n_channels=model.input_shape[-1],
        n_labels=model.output_shape[-1],
        depth=sum(name.startswith("pool") for name in names) + 1,
        n_base_filters=model.get_layer("down0a_conv").filters,
        normalization=norm,
        deconvolution=any(name.startswith("upconv") for name in names),
        precision="float32" if compute == "float32" else compute,
    )


def inference_model(model, precision: str = "float32", patch_shape=None):
    """The model to predict with, and its training patch shape.

    Our U-Nets become their free-size twin (same weights), in ``precision`` ("float32" or
    "bf16"). Other models are returned as they are (``precision`` must then be float32).
    """
    from .model import build_model

    config = config_from_model(model)
    if config is None:
        if precision != "float32":
            raise ValueError("bf16 prediction needs a tumorseg U-Net")
        return model, tuple(model.input_shape[1:4])
    policy = "mixed_bfloat16" if precision in ("bf16", "mixed_bfloat16") else "float32"
    if patch_shape is None:
        patch_shape = config.patch_shape if None not in config.patch_shape else (160, 160, 16)
    twin = build_model(replace(config, precision=policy), fixed_size=False)
    twin.set_weights(model.get_weights())
    return twin, tuple(patch_shape)


def plan_axis(length: int, window: int, overlap: float, stretch: bool, multiple: int):
    """Window size and start positions along one axis of ``length`` voxels."""
    if stretch and length <= window * STRETCH:
        return max(multiple, math.ceil(length / multiple) * multiple), [0]
    if length <= window:
        return window, [0]
    stride = max(1, int(window * (1 - overlap)))
    starts = list(range(0, length - window, stride)) + [length - window]
    return window, starts


def gaussian_weights(window: tuple[int, int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """``(wx, wy, wz)`` float32 weights: a Gaussian of sigma window/8 per axis, max 1, min 1e-3."""
    axes = [np.exp(-0.5 * ((np.arange(w) - (w - 1) / 2) / max(w * sigma_scale, 1e-6)) ** 2)
            for w in window]
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weights / weights.max(), 1e-3).astype(np.float32)


def predict_volume(model, image: np.ndarray, overlap: float = 0.25, tta: bool = False,
                   batch_size: int = 1, precision: str = "float32", patch_shape=None,
                   progress: bool = False) -> np.ndarray:
    """Probabilities for a whole scan.

    Args:
        model: a Keras model mapping ``(B, x, y, z, 4)`` to ``(B, x, y, z, 3)`` (fixed or free size).
        image: ``(X, Y, Z, 4)`` float32 in the channel order FLAIR, T1, T1gd, T2.
        overlap: share of a window its neighbours overlap (0 <= overlap < 1).
        tta: also predict the left-right flipped scan and average.
        batch_size: windows per forward pass.
        precision: "float32" or "bf16" (mixed bfloat16; our U-Nets only).
        patch_shape: the training patch (x, y, z); default the model's own input size.

    Returns:
        float32 ``(X, Y, Z, 3)`` sigmoid probabilities (edema, non-enhancing, enhancing); zero
        outside the brain's bounding box.
    """
    from tqdm.auto import tqdm

    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    image = np.asarray(image, dtype=np.float32)
    net, patch = inference_model(model, precision, patch_shape)
    free = net.input_shape[1] is None
    multiple = 2 ** (sum(l.name.startswith("pool") for l in net.layers)) if free else 1
    box = brain_box(image)
    crop = image[box]
    base = patch
    plans = [plan_axis(length, size, overlap, free, multiple)
             for length, size in zip(crop.shape[:3], base)]
    window = tuple(size for size, _ in plans)
    padded = np.zeros(tuple(max(w, s) for w, s in zip(window, crop.shape[:3])) + (crop.shape[3],),
                      np.float32)
    padded[:crop.shape[0], :crop.shape[1], :crop.shape[2]] = crop
    weights = gaussian_weights(window)
    total = np.zeros(padded.shape[:3] + (net.output_shape[-1],), np.float32)
    norm = np.zeros(padded.shape[:3], np.float32)
    corners = [(x, y, z) for x in plans[0][1] for y in plans[1][1] for z in plans[2][1]]
    flips = [False, True] if tta else [False]
    bar = tqdm(total=len(corners) * len(flips), desc="predict", unit="window",
               disable=None if progress else True)
    for start in range(0, len(corners), batch_size):
        chunk = corners[start:start + batch_size]
        boxes = [tuple(slice(c, c + w) for c, w in zip(corner, window)) for corner in chunk]
        batch = np.stack([standardize(padded[b]) for b in boxes])
        probabilities = np.zeros(batch.shape[:4] + (net.output_shape[-1],), np.float32)
        for flip in flips:
            inputs = batch[:, ::-1] if flip else batch
            out = np.asarray(net.predict_on_batch(np.ascontiguousarray(inputs)), np.float32)
            probabilities += out[:, ::-1] if flip else out
            bar.update(len(chunk))
        probabilities /= len(flips)
        for b, p in zip(boxes, probabilities):
            total[b] += p * weights[..., None]
            norm[b] += weights
    bar.close()
    result = np.zeros(image.shape[:3] + (total.shape[-1],), np.float32)
    result[box] = (total / np.maximum(norm, 1e-12)[..., None])[:crop.shape[0], :crop.shape[1],
                                                               :crop.shape[2]]
    return result


def to_label_map(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 ``(x, y, z)`` label map from ``(x, y, z, 3)`` probabilities: each voxel takes the
    channel of highest probability among those above ``threshold`` (1 edema, 2 non-enhancing,
    3 enhancing); none above it means background 0."""
    probabilities = np.asarray(probabilities)
    best = np.argmax(probabilities, axis=-1).astype(np.uint8) + 1
    return np.where(probabilities.max(axis=-1) > threshold, best, 0).astype(np.uint8)


def seed_tiling_predict(model, image: np.ndarray, window=(160, 160, 16),
                        padded_shape=(320, 320, 160)) -> np.ndarray:
    """The seed's whole-scan prediction: the scan zero-padded to ``padded_shape`` and cut into
    non-overlapping ``window`` tiles, each standardised and predicted alone (for comparison)."""
    padded = np.zeros(tuple(padded_shape) + (image.shape[-1],), np.float32)
    padded[:image.shape[0], :image.shape[1], :image.shape[2]] = image
    result = np.zeros(tuple(padded_shape) + (model.output_shape[-1],), np.float32)
    for x in range(0, padded_shape[0], window[0]):
        for y in range(0, padded_shape[1], window[1]):
            for z in range(0, padded_shape[2], window[2]):
                box = (slice(x, x + window[0]), slice(y, y + window[1]), slice(z, z + window[2]))
                tile = standardize(padded[box])[None]
                result[box] = np.asarray(model.predict_on_batch(tile))[0]
    return result[:image.shape[0], :image.shape[1], :image.shape[2]]
