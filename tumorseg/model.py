"""The seed's 3-D U-Net (channels-last) and its presets.

Contracting level ``d`` (0..depth-1): two 3x3x3 convolutions with ReLU, with
``n_base_filters * 2**d`` then twice that many filters, then 2x2x2 max-pooling (not after the
last level). Expanding level ``d`` (depth-2..0): 2x2x2 up-sampling (or a transposed convolution),
concatenation with contracting level ``d``'s output, two 3x3x3 convolutions with ReLU, each with
as many filters as that output. A 1x1x1 convolution to 3 channels and a sigmoid end the network.
With the defaults this is the seed's model: input (160, 160, 16, 4), 16,318,307 parameters.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import keras
from keras import layers

from .errors import InputError
from .presets import KERAS_POLICIES, PRESETS, SEED_PATCH_SHAPE, ModelConfig  # noqa: F401


def unet_model_3d(
    input_shape=(*SEED_PATCH_SHAPE, 4),
    n_labels=3,
    depth=4,
    n_base_filters=32,
    pool_size=(2, 2, 2),
    deconvolution=False,
    normalization=None,
    activation_name="sigmoid",
    dtype_policy=None,
    output="classes",
) -> keras.Model:
    """Build the seed's 3-D U-Net.

    Args:
        input_shape: ``(x, y, z, channels)``; spatial sizes may be None (any size divisible by
            ``2**(depth-1)``).
        n_labels: output channels (edema, non-enhancing, enhancing).
        depth: number of resolution levels.
        n_base_filters: filters of the first convolution; doubles per level.
        deconvolution: transposed convolution instead of up-sampling in the expanding path.
        normalization: None, "batch" or "instance", after each convolution, before the ReLU.
        dtype_policy: a Keras policy, e.g. "mixed_bfloat16"; the sigmoid output stays float32.
        output: "classes" (the seed's) or "regions" (WT, TC, ET); the output layer's name
            records it (``probabilities`` or ``region_probabilities``).

    Returns:
        An uncompiled Keras model mapping ``(B, x, y, z, channels)`` to ``(B, x, y, z, n_labels)``.
    """
    if normalization not in (None, "batch", "instance"):
        raise ValueError(
            f"normalization must be None, 'batch' or 'instance', not {normalization!r}"
        )
    if output not in OUTPUT_LAYERS:
        raise ValueError(f"output must be one of {list(OUTPUT_LAYERS)}, not {output!r}")
    factor = 2 ** (depth - 1)
    for size in input_shape[:3]:
        if size is not None and size % factor:
            raise ValueError(f"input size {input_shape[:3]} must be divisible by {factor}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    current = inputs
    levels = []
    for level in range(depth):
        filters = n_base_filters * 2**level
        current = _conv_block(current, filters, normalization, dtype_policy, f"down{level}a")
        current = _conv_block(current, filters * 2, normalization, dtype_policy, f"down{level}b")
        levels.append(current)
        if level < depth - 1:
            current = layers.MaxPooling3D(pool_size, dtype=dtype_policy, name=f"pool{level}")(
                current
            )
    for level in range(depth - 2, -1, -1):
        skip = levels[level]
        if deconvolution:
            up = layers.Conv3DTranspose(
                current.shape[-1],
                pool_size,
                strides=pool_size,
                dtype=dtype_policy,
                name=f"upconv{level}",
            )(current)
        else:
            up = layers.UpSampling3D(pool_size, dtype=dtype_policy, name=f"up{level}")(current)
        current = layers.Concatenate(axis=-1, dtype=dtype_policy, name=f"concat{level}")([up, skip])
        current = _conv_block(current, skip.shape[-1], normalization, dtype_policy, f"up{level}a")
        current = _conv_block(current, skip.shape[-1], normalization, dtype_policy, f"up{level}b")
    logits = layers.Conv3D(n_labels, 1, dtype=dtype_policy, name="logits")(current)
    outputs = layers.Activation(activation_name, dtype="float32", name=OUTPUT_LAYERS[output])(
        logits
    )
    return keras.Model(inputs, outputs, name="unet3d")


OUTPUT_LAYERS = {"classes": "probabilities", "regions": "region_probabilities"}


def add_deep_supervision(model: keras.Model, levels: int) -> keras.Model:
    """The training twin of a U-Net: its output, then ``levels`` auxiliary sigmoid outputs of
    the decoder levels 1..levels (a 1x1x1 convolution, then nearest up-sampling to full size),
    sharing every layer of ``model``. ``levels=0`` returns ``model`` itself.

    Outputs: ``[(B, x, y, z, C)] * (levels + 1)``, the main one first."""
    if levels == 0:
        return model
    outputs = [model.output]
    n_labels = model.output.shape[-1]
    policy = model.get_layer("down0a_conv").dtype_policy
    for level in range(1, levels + 1):
        features = model.get_layer(f"up{level}b_relu").output
        logits = layers.Conv3D(n_labels, 1, dtype=policy, name=f"aux{level}_logits")(features)
        up = layers.UpSampling3D(2**level, dtype=policy, name=f"aux{level}_up")(logits)
        outputs.append(layers.Activation("sigmoid", dtype="float32", name=f"aux{level}")(up))
    return keras.Model(model.input, outputs, name="unet3d_deep_supervision")


def main_output(model: keras.Model) -> keras.Model:
    """The one-output U-Net inside a training twin (:func:`add_deep_supervision`), same
    layers; a one-output model as it is."""
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.input, model.outputs[0], name="unet3d")


def _conv_block(x, filters, normalization, dtype_policy, name):
    """3x3x3 convolution, optional normalisation, ReLU."""
    x = layers.Conv3D(filters, 3, padding="same", dtype=dtype_policy, name=f"{name}_conv")(x)
    if normalization == "batch":
        # synchronized: one set of batch statistics across tf.distribute replicas
        x = layers.BatchNormalization(synchronized=True, dtype=dtype_policy, name=f"{name}_bn")(x)
    elif normalization == "instance":
        x = layers.GroupNormalization(groups=-1, dtype=dtype_policy, name=f"{name}_in")(x)
    return layers.Activation("relu", dtype=dtype_policy, name=f"{name}_relu")(x)


def build_model(config: ModelConfig | str = "cpu", fixed_size: bool = True) -> keras.Model:
    """The U-Net of a preset name or a :class:`ModelConfig`; ``fixed_size=False`` leaves the
    spatial input size free (for whole-scan inference)."""
    config = PRESETS[config] if isinstance(config, str) else config
    spatial = config.patch_shape if fixed_size else (None, None, None)
    policy = None if config.precision == "float32" else KERAS_POLICIES[config.precision]
    return unet_model_3d(
        input_shape=(*spatial, config.n_channels),
        n_labels=config.n_labels,
        depth=config.depth,
        n_base_filters=config.n_base_filters,
        deconvolution=config.deconvolution,
        normalization=config.normalization,
        dtype_policy=policy,
        output=config.output,
    )


def forward_flops(model: keras.Model) -> float:
    """Floating-point operations (a multiply-add counts 2) of one forward pass of one example
    through the convolutions, which dominate. The model needs a fixed input size."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv3D, layers.Conv3DTranspose)):
            out_voxels = math.prod(layer.output.shape[1:4])
            kx, ky, kz, *channels = layer.kernel.shape
            taps = 1 if isinstance(layer, layers.Conv3DTranspose) else kx * ky * kz
            total += 2.0 * out_voxels * taps * math.prod(channels)
    return total


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """A Keras model from a ``.keras`` file, in safe mode (no arbitrary code runs).

    Bad files raise :class:`~tumorseg.errors.InputError` naming the file.
    """
    from .metrics import batch_dice, batch_dice_ce_loss, batch_dice_loss

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a .keras file")
    try:
        return keras.models.load_model(
            path,
            compile=compile,
            safe_mode=True,
            custom_objects={
                "batch_dice_loss": batch_dice_loss,
                "batch_dice": batch_dice,
                "batch_dice_ce_loss": batch_dice_ce_loss,
            },
        )
    except Exception as error:  # zip, h5 and deserialisation errors of a foreign file
        message = " ".join(str(error).split())[:150]
        raise InputError(path, f"not a Keras model file ({message})") from None
