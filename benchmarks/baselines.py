"""The seed's own implementations, kept verbatim in meaning (channels-last), to measure against."""

from __future__ import annotations

import numpy as np


def seed_get_sub_volume(
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
    """The seed's rejection loop: a random corner and a one-hot of the window on every try."""
    import keras

    tries = 0
    while tries < max_tries:
        start_x = np.random.randint(0, orig_x - output_x + 1)
        start_y = np.random.randint(0, orig_y - output_y + 1)
        start_z = np.random.randint(0, orig_z - output_z + 1)
        y = label[
            start_x : start_x + output_x, start_y : start_y + output_y, start_z : start_z + output_z
        ]
        y = keras.utils.to_categorical(y, num_classes=num_classes)
        bgrd_ratio = np.sum(y[:, :, :, 0]) / (output_x * output_y * output_z)
        tries += 1
        if bgrd_ratio < background_threshold:
            X = np.copy(
                image[
                    start_x : start_x + output_x,
                    start_y : start_y + output_y,
                    start_z : start_z + output_z,
                    :,
                ]
            )
            return X, y[..., 1:]
    print(f"Tried {tries} times to find a sub-volume. Giving up...")
    return None
