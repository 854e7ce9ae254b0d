"""Whole-scan prediction by sliding windows over the brain's bounding box, label maps, and
:class:`Predictor`, a trained run restored for prediction.

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

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .data import clip_intensities
from .patches import brain_box, standardize
from .presets import DEFAULT_THRESHOLD, KERAS_POLICIES, PRECISIONS, SEED_PATCH_SHAPE, ModelConfig
from .resample import downsample_image, upsample_probabilities
from .run import CONFIG_FILE, MODEL_FILE, is_run, read_config, read_state, write_state

STRETCH = 1.25  # a window may grow this much to cover an axis in one piece (free-size models)


# ----------------------------------------------------------------------------- window plans


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start positions of sliding windows along one axis, covering it to the last voxel.

    Args:
        length: voxels along the axis.
        window: window size along the axis.
        overlap: share of a window its neighbour overlaps, 0 <= overlap < 1.

    Returns:
        Increasing starts from 0 to ``length - window`` (just ``[0]`` when the window covers the
        axis), a stride of ``int(window * (1 - overlap))`` (at least 1) apart but for the last.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= window:
        return [0]
    stride = max(1, int(window * (1 - overlap)))
    return list(range(0, length - window, stride)) + [length - window]


def plan_axis(length: int, window: int, overlap: float, stretch: bool, multiple: int):
    """Window size and start positions along one axis of ``length`` voxels; with ``stretch`` the
    window may grow (to a ``multiple``) by up to :data:`STRETCH` to cover the axis at once."""
    if stretch and length <= window * STRETCH:
        return max(multiple, math.ceil(length / multiple) * multiple), [0]
    return window, window_starts(length, window, overlap)


def gaussian_weights(window: tuple[int, int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """``(wx, wy, wz)`` float32 weights: a Gaussian of sigma window/8 per axis, max 1, min 1e-3."""
    axes = [
        np.exp(-0.5 * ((np.arange(w) - (w - 1) / 2) / max(w * sigma_scale, 1e-6)) ** 2)
        for w in window
    ]
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weights / weights.max(), 1e-3).astype(np.float32)


# ----------------------------------------------------------------------------- the inferer


def sliding_window_inference(
    volume: np.ndarray,
    predictor: Callable[[np.ndarray], np.ndarray],
    window: tuple[int, int, int],
    overlap: float = 0.25,
    batch_size: int = 1,
    stretch: bool = False,
    multiple: int = 1,
    progress: bool = False,
) -> np.ndarray:
    """Gaussian-weighted average of ``predictor`` over sliding windows of ``volume``.

    Args:
        volume: ``(X, Y, Z, C)``; zero-padded at the end where an axis is shorter than a window.
        predictor: any callable mapping windows ``(B, wx, wy, wz, C)`` to ``(B, wx, wy, wz, K)``.
        window: the window size; with ``stretch``, grown per axis as :func:`plan_axis` says.
        overlap: share of a window its neighbours overlap (0 <= overlap < 1).
        batch_size: windows per predictor call.

    Returns:
        float32 ``(X, Y, Z, K)``: at each voxel, the average of every window's output there,
        weighted by :func:`gaussian_weights` of the window.
    """
    from tqdm.auto import tqdm

    plans = [
        plan_axis(length, size, overlap, stretch, multiple)
        for length, size in zip(volume.shape[:3], window)
    ]
    window = tuple(size for size, _ in plans)
    padded_shape = tuple(max(w, s) for w, s in zip(window, volume.shape[:3]))
    padded = np.zeros(padded_shape + volume.shape[3:], np.float32)
    padded[: volume.shape[0], : volume.shape[1], : volume.shape[2]] = volume
    weights = gaussian_weights(window)
    total, norm = None, np.zeros(padded_shape, np.float32)
    corners = [(x, y, z) for x in plans[0][1] for y in plans[1][1] for z in plans[2][1]]
    bar = tqdm(
        total=len(corners), desc="predict", unit="window", disable=None if progress else True
    )
    for first in range(0, len(corners), batch_size):
        boxes = [
            tuple(slice(c, c + w) for c, w in zip(corner, window))
            for corner in corners[first : first + batch_size]
        ]
        outputs = np.asarray(predictor(np.stack([padded[b] for b in boxes])), np.float32)
        if total is None:
            total = np.zeros(padded_shape + outputs.shape[-1:], np.float32)
        for box, output in zip(boxes, outputs):
            total[box] += output * weights[..., None]
            norm[box] += weights
        bar.update(len(boxes))
    bar.close()
    average = total / np.maximum(norm, 1e-12)[..., None]
    return average[: volume.shape[0], : volume.shape[1], : volume.shape[2]]


# ----------------------------------------------------------------------------- Keras models


def config_from_model(model) -> ModelConfig | None:
    """The :class:`~tumorseg.presets.ModelConfig` of a U-Net built by :func:`unet_model_3d`, read
    off its layers (for a bare ``.keras`` file; a run folder's config.json says it), or None
    for another model."""
    import keras

    names = [layer.name for layer in model.layers]
    if model.name != "unet3d" or "down0a_conv" not in names:
        return None
    norm = (
        "batch"
        if any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
        else "instance"
        if any(isinstance(layer, keras.layers.GroupNormalization) for layer in model.layers)
        else None
    )
    policy = model.get_layer("down0a_conv").dtype_policy.name
    precision = {keras_policy: name for name, keras_policy in KERAS_POLICIES.items()}.get(policy)
    if precision is None:
        return None
    return ModelConfig(
        patch_shape=tuple(model.input_shape[1:4]),
        n_channels=model.input_shape[-1],
        n_labels=model.output_shape[-1],
        depth=sum(name.startswith("pool") for name in names) + 1,
        n_base_filters=model.get_layer("down0a_conv").filters,
        normalization=norm,
        deconvolution=any(name.startswith("upconv") for name in names),
        precision=precision,
        output="regions" if "region_probabilities" in names else "classes",
    )


def inference_model(
    model, precision: str = "float32", patch_shape=None, config: ModelConfig | None = None
):
    """The model to predict with and its window: ``(net, patch_shape)``.

    A U-Net (``config``, or read off ``model``) becomes its free-size twin with the same
    weights, in ``precision`` ("float32" or "bf16"), sliding ``patch_shape`` windows (default:
    its training patch). Another model is returned as it is, sliding its own input size; it
    must be float32.
    """
    from .model import build_model

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    config = config or config_from_model(model)
    if config is None:
        if precision != "float32":
            raise ValueError("bf16 prediction needs a tumorseg U-Net")
        return model, tuple(model.input_shape[1:4])
    if patch_shape is None:
        patch_shape = config.patch_shape if None not in config.patch_shape else SEED_PATCH_SHAPE
    twin = build_model(replace(config, precision=precision), fixed_size=False)
    twin.set_weights(model.get_weights())
    return twin, tuple(patch_shape)


def keras_predictor(net, tta: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """``windows (B, wx, wy, wz, 4) -> (B, wx, wy, wz, 3)``: each window standardised as in
    training, then predicted; with ``tta`` also left-right flipped, flipped back and averaged."""

    def predict(windows: np.ndarray) -> np.ndarray:
        batch = np.stack([standardize(w) for w in windows])
        out = np.asarray(net.predict_on_batch(batch), np.float32)
        if tta:
            flipped = np.asarray(
                net.predict_on_batch(np.ascontiguousarray(batch[:, ::-1])), np.float32
            )
            out = (out + flipped[:, ::-1]) / 2
        return out

    return predict


def _slide(
    net, patch_shape, image: np.ndarray, overlap: float, tta: bool, batch_size: int, progress: bool
) -> np.ndarray:
    """Probabilities of ``net`` over the brain box of ``image`` (its intensities clipped as for
    training), zero outside it; all zero, without running ``net``, for a scan without signal."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    image = np.asarray(image, dtype=np.float32)
    if not image.any():  # no signal: background by construction, without running the network
        return np.zeros(image.shape[:3] + (net.output_shape[-1],), np.float32)
    free = net.input_shape[1] is None
    multiple = 2 ** sum(layer.name.startswith("pool") for layer in net.layers) if free else 1
    box = brain_box(image)
    crop = clip_intensities(image[box])  # as training caches each case
    inside = sliding_window_inference(
        crop,
        keras_predictor(net, tta),
        patch_shape,
        overlap,
        batch_size,
        stretch=free,
        multiple=multiple,
        progress=progress,
    )
    result = np.zeros(image.shape[:3] + inside.shape[-1:], np.float32)
    result[box] = inside
    return result


def predict_volume(
    model,
    image: np.ndarray,
    overlap: float = 0.25,
    tta: bool = False,
    batch_size: int = 1,
    precision: str = "float32",
    patch_shape=None,
    progress: bool = False,
) -> np.ndarray:
    """Probabilities for a whole scan.

    Args:
        model: a Keras model, ``(B, x, y, z, 4)`` to ``(B, x, y, z, 3)`` (fixed or free size).
        image: ``(X, Y, Z, 4)`` float32 in the channel order FLAIR, T1, T1gd, T2.
        overlap: share of a window its neighbours overlap (0 <= overlap < 1).
        tta: also predict the left-right flipped scan and average.
        batch_size: windows per forward pass.
        precision: "float32" or "bf16" (mixed bfloat16; our U-Nets only).
        patch_shape: the training patch (x, y, z); default the model's own input size.

    Returns:
        float32 ``(X, Y, Z, 3)`` sigmoid probabilities (edema, non-enhancing, enhancing); zero
        outside the brain's bounding box, and everywhere for an all-zero scan (the network is
        not run: empty input, empty output).
    """
    net, patch = inference_model(model, precision, patch_shape)
    return _slide(net, patch, image, overlap, tta, batch_size, progress)


def to_label_map(
    probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD, output: str = "classes"
) -> np.ndarray:
    """uint8 ``(x, y, z)`` label map from ``(x, y, z, 3)`` probabilities.

    ``output="classes"`` (the seed's): each voxel takes the channel of highest probability among
    those above ``threshold`` (1 edema, 2 non-enhancing, 3 enhancing); none above it means
    background 0. ``output="regions"`` (nested WT, TC, ET sigmoids): ET above ``threshold`` ->
    3, else TC -> 2, else WT -> 1, else 0."""
    probabilities = np.asarray(probabilities)
    if output == "regions":
        above = probabilities > threshold
        return np.select([above[..., 2], above[..., 1], above[..., 0]], [3, 2, 1], 0).astype(
            np.uint8
        )
    if output != "classes":
        raise ValueError(f"output must be 'classes' or 'regions', got {output!r}")
    best = np.argmax(probabilities, axis=-1).astype(np.uint8) + 1
    return np.where(probabilities.max(axis=-1) > threshold, best, 0).astype(np.uint8)


def drop_small_enhancing(label_map: np.ndarray, min_voxels: int) -> np.ndarray:
    """uint8 ``(x, y, z)`` label map whose enhancing tumour (3) becomes non-enhancing (2) when
    it has fewer than ``min_voxels`` voxels in all; 0 keeps every enhancing voxel.

    Isensee et al.'s BraTS 2020 post-processing: in a scan without enhancement a few predicted
    enhancing voxels score enhancing-tumour Dice 0, the costliest error there is; relabelled
    non-enhancing they stay in the tumour core and whole tumour."""
    enhancing = label_map == 3
    if 0 < np.count_nonzero(enhancing) < min_voxels:
        return np.where(enhancing, np.uint8(2), label_map).astype(np.uint8)
    return label_map


def seed_tiling_predict(
    model, image: np.ndarray, window=SEED_PATCH_SHAPE, padded_shape=(320, 320, 160)
) -> np.ndarray:
    """The seed's whole-scan prediction: the scan zero-padded to ``padded_shape`` and cut into
    non-overlapping ``window`` tiles, each predicted alone (for comparison).

    The seed fed its tiles unstandardised; a model trained on standardised patches needs them
    standardised, so each tile is standardised here (and an all-zero tile stays zero)."""
    padded = np.zeros(tuple(padded_shape) + (image.shape[-1],), np.float32)
    padded[: image.shape[0], : image.shape[1], : image.shape[2]] = image
    result = np.zeros(tuple(padded_shape) + (model.output_shape[-1],), np.float32)
    for x in range(0, padded_shape[0], window[0]):
        for y in range(0, padded_shape[1], window[1]):
            for z in range(0, padded_shape[2], window[2]):
                box = (slice(x, x + window[0]), slice(y, y + window[1]), slice(z, z + window[2]))
                tile = standardize(padded[box])[None]
                result[box] = np.asarray(model.predict_on_batch(tile))[0]
    return result[: image.shape[0], : image.shape[1], : image.shape[2]]


# ----------------------------------------------------------------------------- a trained run


@dataclass
class Predictor:
    """A trained model restored for prediction: the model, its architecture, the patch shape it
    was trained on and its label-map threshold (nnU-Net's "initialise from a trained model
    folder").

    Make one with :meth:`from_run`; ``note`` says which defaults stood in for a run folder's
    settings (None when the run folder gave them all).
    """

    model: object
    model_file: Path
    config: ModelConfig | None  # None: not a tumorseg U-Net
    patch_shape: tuple[int, int, int]
    threshold: float
    threshold_source: str  # "calibrated" (on the run's validation scans) or "default"
    note: str | None = None
    # Enhancing tumour smaller than this becomes non-enhancing; 0 keeps every enhancing voxel.
    et_min_voxels: int = 0
    et_min_voxels_source: str = "default"  # "calibrated" (with the threshold) or "default"
    _nets: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_run(cls, path: str | os.PathLike) -> Predictor:
        """Restore a run folder (its best ``model.keras``), or a ``.keras`` file: inside a run
        folder it takes that run's settings; alone, the model's own input size, threshold 0.5
        and no enhancing-tumour minimum. Reads ``config.json`` (architecture, patch shape) and
        ``state.json`` (calibrated threshold and enhancing-tumour minimum; a run calibrated
        before the minimum existed has none); loads the model in safe mode."""
        from .model import load_model, main_output

        path = Path(path)
        model_file = path / MODEL_FILE if path.is_dir() else path
        model = main_output(load_model(model_file))  # a checkpoint's deep supervision: dropped
        run = model_file.parent
        if is_run(run):
            run_config = read_config(run)
            config = run_config.model
            state = read_state(run) or {}
            threshold = state.get("threshold")
            note = (
                None
                if threshold is not None or not run_config.calibrate
                else (
                    f"{run}: the run's threshold is not calibrated yet (tumorseg train --out {run} "
                    f"--resume calibrates it); using {DEFAULT_THRESHOLD}"
                )
            )
            if threshold is None:
                return cls(
                    model,
                    model_file,
                    config,
                    config.patch_shape,
                    DEFAULT_THRESHOLD,
                    "default",
                    note,
                )
            return cls(
                model,
                model_file,
                config,
                config.patch_shape,
                threshold,
                "calibrated",
                et_min_voxels=state.get("et_min_voxels", 0),
                # a run calibrated before the minimum existed has none: every voxel kept
                et_min_voxels_source="calibrated" if "et_min_voxels" in state else "default",
            )
        config = config_from_model(model)
        patch = tuple(model.input_shape[1:4])
        if None in patch:
            patch = SEED_PATCH_SHAPE
        note = (
            f"{model_file}: no run folder ({CONFIG_FILE}) beside it; using windows of "
            f"{'x'.join(map(str, patch))} at the scan's own grid (no downsampling) and threshold "
            f"{DEFAULT_THRESHOLD}"
        )
        return cls(model, model_file, config, patch, DEFAULT_THRESHOLD, "default", note)

    def predict(
        self,
        image: np.ndarray,
        overlap: float = 0.25,
        tta: bool = False,
        batch_size: int = 1,
        precision: str = "float32",
        progress: bool = False,
    ) -> np.ndarray:
        """``(X, Y, Z, 4)`` scan -> float32 ``(X, Y, Z, 3)`` probabilities; options as in
        :func:`predict_volume`. A network that sees scans downsampled
        (``ModelConfig.downsample``) predicts the downsampled scan, brought back to its grid."""
        factor = self.downsample
        coarse = _slide(
            self.net(precision),
            self.patch_shape,
            downsample_image(image, factor),
            overlap,
            tta,
            batch_size,
            progress,
        )
        return upsample_probabilities(coarse, image.shape, factor)

    def net(self, precision: str = "float32"):
        """The network that predicts: a U-Net's free-size twin in ``precision`` (made once),
        or the model itself."""
        if precision not in self._nets:
            self._nets[precision] = inference_model(
                self.model, precision, self.patch_shape, self.config
            )[0]
        return self._nets[precision]

    def segment(
        self,
        image: np.ndarray,
        threshold: float | None = None,
        et_min_voxels: int | None = None,
        **options,
    ) -> np.ndarray:
        """``(X, Y, Z, 4)`` scan -> uint8 ``(X, Y, Z)`` label map at ``threshold``, enhancing
        tumour under ``et_min_voxels`` voxels relabelled non-enhancing (defaults: the run's);
        ``options`` go to :meth:`predict`."""
        return self.label_map(self.predict(image, **options), threshold, et_min_voxels)

    def label_map(
        self,
        probabilities: np.ndarray,
        threshold: float | None = None,
        et_min_voxels: int | None = None,
    ) -> np.ndarray:
        """uint8 ``(X, Y, Z)`` label map of :meth:`predict`'s ``(X, Y, Z, 3)`` probabilities,
        by the run's rule (or the ``threshold`` and ``et_min_voxels`` given)."""
        label_map = to_label_map(
            probabilities, self.threshold if threshold is None else threshold, self.output
        )
        minimum = self.et_min_voxels if et_min_voxels is None else et_min_voxels
        return drop_small_enhancing(label_map, minimum)

    @property
    def output(self) -> str:
        """What the network's sigmoids are: "classes" or "regions" (its label-map rule)."""
        return self.config.output if self.config is not None else "classes"

    @property
    def downsample(self) -> int:
        """The factor per axis by which the network sees scans coarser (1: at their own grid)."""
        return self.config.downsample if self.config is not None else 1

    def model_sha256(self) -> str:
        """SHA-256 of the model file, for provenance."""
        digest = hashlib.sha256()
        with open(self.model_file, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


# ----------------------------------------------------------------------------- calibration

THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
ET_MINIMUMS = (0, 50, 100, 200, 300, 500, 750, 1000)  # voxels of predicted enhancing tumour
TOLERANCE = 0.005
CALIBRATED_REGIONS = ("WT", "TC", "ET")


def region_dices(pred_map: np.ndarray, true_map: np.ndarray) -> tuple[float, float, float]:
    """Dice of the BraTS regions WT, TC and ET of two ``(x, y, z)`` label maps (two empty
    masks agree: Dice 1)."""
    from .metrics import REGIONS

    scores = []
    for region in CALIBRATED_REGIONS:
        values = REGIONS[region]
        p, t = np.isin(pred_map, values), np.isin(true_map, values)
        total = np.count_nonzero(p) + np.count_nonzero(t)
        scores.append(1.0 if total == 0 else 2 * np.count_nonzero(p & t) / total)
    return tuple(scores)


def describe_rule(state: dict) -> str:
    """The label-map rule a run's ``state.json`` holds, in words."""
    if "threshold" not in state:
        return "threshold not calibrated"
    minimum = state.get("et_min_voxels", 0)
    return f"threshold {state['threshold']}; " + (
        f"enhancing tumour under {minimum} voxels relabelled non-enhancing"
        if minimum
        else "enhancing tumour kept at any size"
    )


def calibrate_label_map(run: str | os.PathLike, valid_cases: list, tta: bool = True) -> dict:
    """Choose the label map's rule on the run's whole validation scans and record it in
    state.json: the probability threshold with the best mean Dice of WT, TC and ET, then, at
    that threshold, the smallest enhancing tumour kept (:data:`ET_MINIMUMS`, see
    :func:`drop_small_enhancing`) with the best mean ET Dice. Returns both, with the test-time
    flip setting ``tta`` they were chosen under (predict with the same).

    Soft-Dice-trained networks give probabilities that are not calibrated, so 0.5 is not
    always best; the choice uses validation cases only, never the cases evaluated later. Each
    optimum is flat over a few cases: the highest threshold and the smallest minimum within
    :data:`TOLERANCE` of the best are taken. One :class:`Predictor` predicts every case.
    """
    from .data import load_case

    predictor = Predictor.from_run(run)
    # Per threshold, per case: WT, TC, ET Dice, predicted ET voxels, ET Dice with ET dropped.
    cases = {threshold: [] for threshold in THRESHOLDS}
    for case in valid_cases:
        image, label = load_case(case)
        probabilities = predictor.predict(image, tta=tta)
        dice_without_et = 0.0 if np.any(label == 3) else 1.0
        for threshold in THRESHOLDS:
            label_map = to_label_map(probabilities, threshold, predictor.output)
            et_voxels = np.count_nonzero(label_map == 3)
            cases[threshold].append((*region_dices(label_map, label), et_voxels, dice_without_et))
    means = {t: float(np.mean([c[:3] for c in rows])) for t, rows in cases.items()}
    threshold = max(t for t in THRESHOLDS if means[t] >= max(means.values()) - TOLERANCE)
    rows = cases[threshold]
    et_means = {
        m: float(np.mean([dropped if 0 < voxels < m else et for *_, et, voxels, dropped in rows]))
        for m in ET_MINIMUMS
    }
    et_min_voxels = min(m for m in ET_MINIMUMS if et_means[m] >= max(et_means.values()) - TOLERANCE)
    chosen = {"threshold": threshold, "threshold_tta": tta, "et_min_voxels": et_min_voxels}
    write_state(
        run,
        read_state(run)
        | chosen
        | {
            "threshold_scores": {str(t): m for t, m in means.items()},
            "et_min_scores": {str(m): d for m, d in et_means.items()},
        },
    )
    return chosen
