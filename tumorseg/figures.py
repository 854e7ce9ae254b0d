"""Static figures drawn with matplotlib: sequences with label overlays, training curves and
the U-Net diagram. Colours follow the seed: red edema, green non-enhancing tumour, blue
enhancing tumour.
"""

from __future__ import annotations

import numpy as np

from .data import CHANNELS
from .presets import SEED_PATCH_SHAPE

LABEL_COLOURS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)


PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}


def to_display(slice_2d: np.ndarray, plane: str = "axial") -> np.ndarray:
    """A 2-D slice of a volume in BraTS voxel order (L, P, S) turned for display, the way
    3D Slicer and ITK-SNAP show it by default (radiological convention).

    slice_2d: ``(x, y, ...)`` for ``plane="axial"``, ``(x, z, ...)`` coronal, ``(y, z, ...)``
    sagittal; trailing axes (e.g. RGB) are kept. Returns ``(rows, columns, ...)``:

    * axial: the front of the head at the top, the patient's left on the image's right;
    * coronal: the top of the head at the top, the patient's left on the image's right;
    * sagittal: the top of the head at the top, the front of the head on the left.

    MSD Task01 files hold the same voxels under an identity header and show the same way.
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {list(PLANES)}, not {plane!r}")
    turned = np.swapaxes(slice_2d, 0, 1)  # rows follow the second voxel axis, columns the first
    return turned if plane == "axial" else turned[::-1]


def take_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """Slice ``index`` of ``volume`` (first axes x, y, z in L, P, S order) in ``plane``, turned
    for display by :func:`to_display`."""
    return to_display(np.take(volume, index, axis=PLANES[plane]), plane)


def normalise(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Intensities of ``image`` mapped to 0..1 between percentiles of its non-zero voxels.

    Real scans carry heavy tails (a few very bright vessels) and small negative values from
    registration: percentiles of the brain's voxels (non-zero) ignore both, and the result is
    clipped to 0..1, so neither the zero background nor the tails set the grey scale."""
    values = image[image != 0]
    if values.size == 0:
        return np.zeros_like(image, dtype=np.float32)
    lo, hi = np.percentile(values, [low, high])
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def overlay(grey: np.ndarray, label: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """RGB ``(..., 3)`` of a 0..1 grey image with the label's colours blended in at ``opacity``."""
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    mask = (label > 0)[..., None]
    colour = LABEL_COLOURS[label]
    return np.where(mask, (1 - opacity) * rgb + opacity * colour, rgb)


def best_slice(label: np.ndarray, axis: int = 2) -> int:
    """Index along ``axis`` with the most tumour voxels (the middle when there is no tumour)."""
    if not label.any():
        return label.shape[axis] // 2
    other = tuple(a for a in range(3) if a != axis)
    return int(np.argmax((label > 0).sum(axis=other)))


def plot_case(
    image: np.ndarray,
    label: np.ndarray | None = None,
    z: int | None = None,
    title: str | None = None,
):
    """A figure with the four sequences of axial slice ``z`` and, if given, the label overlay.

    image: ``(x, y, z, 4)``; label: ``(x, y, z)`` in the seed's values.
    """
    import matplotlib.pyplot as plt

    if z is None:
        z = best_slice(label) if label is not None else image.shape[2] // 2
    panels = len(CHANNELS) + (label is not None)
    fig, axes = plt.subplots(1, panels, figsize=(3 * panels, 3.3), facecolor="black")
    for channel, name in enumerate(CHANNELS):
        axes[channel].imshow(to_display(normalise(image[:, :, z, channel])), cmap="gray")
        axes[channel].set_title(name, color="white")
    if label is not None:
        flair = normalise(image[:, :, z, 0])
        axes[-1].imshow(to_display(overlay(flair, label[:, :, z], opacity=0.6)))
        axes[-1].set_title("labels on FLAIR", color="white")
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout()
    return fig


def legend_handles():
    """Matplotlib legend patches for the three tumour classes."""
    from matplotlib.patches import Patch

    names = ("edema", "non-enhancing tumour", "enhancing tumour")
    return [Patch(color=LABEL_COLOURS[i + 1], label=name) for i, name in enumerate(names)]


def plot_history(history):
    """Training curves from a history table (columns epoch, loss, val_loss, dice, val_dice)."""
    from matplotlib.figure import Figure  # no pyplot: safe in worker threads and servers

    figure = Figure(figsize=(9, 3.4))
    loss_axis, dice_axis = figure.subplots(1, 2)
    for column, axis in (("loss", loss_axis), ("dice", dice_axis)):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + column in history:
                axis.plot(
                    history["epoch"],
                    history[prefix + column],
                    style,
                    label=("validation " if prefix else "training ") + column,
                )
        axis.set_xlabel("epoch")
        axis.set_title("soft Dice loss" if column == "loss" else "Dice")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def draw_unet(depth: int = 4, n_base_filters: int = 32, patch_shape=SEED_PATCH_SHAPE):
    """A diagram of the U-Net: one box per convolution block with its filters and size,
    max-pooling down, up-sampling up, and the skip connections across."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, Rectangle

    figure = Figure(figsize=(11, 0.8 + 0.9 * depth))
    ax = figure.subplots()
    ax.set_xlim(0, 4 * depth + 1)
    ax.set_ylim(-depth + 0.5, 1.1)
    ax.axis("off")

    def block(x, y, text, colour):
        ax.add_patch(Rectangle((x, y - 0.35), 1.6, 0.7, facecolor=colour, edgecolor="black"))
        ax.text(x + 0.8, y, text, ha="center", va="center", fontsize=8)

    def arrow(start, end, colour, style="-|>"):
        ax.add_patch(
            FancyArrowPatch(start, end, arrowstyle=style, color=colour, mutation_scale=10, lw=1.2)
        )

    right = 4 * depth - 1.6
    for level in range(depth):
        y = -level
        size = "x".join(str(s // 2**level) for s in patch_shape)
        filters = n_base_filters * 2**level
        x_down = level * 1.9
        block(x_down, y, f"{filters}, {filters * 2}\n{size}", "#9ecae1")
        if level < depth - 1:
            arrow((x_down + 0.8, y - 0.35), (x_down + 2.7, y - 0.65), "tab:red")
            x_up = right - level * 1.9
            block(x_up, y, f"{filters * 2}, {filters * 2}\n{size}", "#a1d99b")
            arrow((x_down + 1.6, y), (x_up, y), "grey", "-|>")
            below = (level + 1) * 1.9 if level + 1 == depth - 1 else right - (level + 1) * 1.9
            arrow((below + 1.6, y - 1 + 0.2), (x_up + 0.8, y - 0.35), "tab:green")
    ax.text(right + 1.7, 0, "1x1x1 conv\n3 sigmoid", fontsize=8, va="center")
    ax.text(
        0,
        0.85,
        "two 3x3x3 conv + ReLU per box (filters; size)   "
        "red: 2x2x2 max-pool   green: 2x2x2 up-sampling   grey: concatenate",
        fontsize=8,
    )
    figure.tight_layout()
    return figure


def plot_prediction(image: np.ndarray, prediction: np.ndarray, title: str | None = None):
    """T1gd, FLAIR, and the label map on FLAIR in the three planes through the centre of the
    predicted tumour (the middle of the volume when none is predicted).

    image: ``(x, y, z, 4)``; prediction: uint8 ``(x, y, z)`` in the seed's values.
    """
    from matplotlib.figure import Figure

    centre = (
        [int(np.median(i)) for i in np.nonzero(prediction)]
        if prediction.any()
        else [s // 2 for s in prediction.shape]
    )
    grey = {name: normalise(image[..., CHANNELS.index(name)]) for name in ("T1gd", "FLAIR")}
    figure = Figure(figsize=(9, 8.4), facecolor="black")
    axes = figure.subplots(3, 3)
    for column, plane in enumerate(PLANES):
        index = centre[PLANES[plane]]
        rows = (
            ("T1gd", take_slice(grey["T1gd"], plane, index)),
            ("FLAIR", take_slice(grey["FLAIR"], plane, index)),
            (
                "prediction on FLAIR",
                overlay(
                    take_slice(grey["FLAIR"], plane, index),
                    take_slice(prediction, plane, index),
                    0.5,
                ),
            ),
        )
        for row, (name, picture) in enumerate(rows):
            axes[row, column].imshow(picture, cmap="gray")
            axes[row, column].set_title(f"{name}, {plane} {index}", color="white", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    figure.legend(
        handles=legend_handles(), loc="lower center", ncol=3, frameon=False, labelcolor="white"
    )
    figure.suptitle(title or "prediction", color="white")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


def plot_randomisations(seed: int = 0, index: int = 0):
    """What each randomisation of the phantom generator does: case ``index`` of ``seed`` made
    with every randomisation fixed, then with one at a time at the edge of its training range,
    and from the shifted generator. Each panel: FLAIR axial, FLAIR coronal, T1gd axial through
    the tumour's centre."""
    from dataclasses import replace

    from matplotlib.figure import Figure

    from .synthetic import FIXED, SHIFTED, SHOWCASE, synthesize_case

    names = list(SHOWCASE)
    columns = 4
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(4.2 * columns, 1.75 * rows + 0.4), facecolor="black")
    axes = figure.subplots(rows, columns)
    for ax, name in zip(axes.ravel(), names):
        changes = SHOWCASE[name]
        randomisation = SHIFTED if changes is None else replace(FIXED, **changes)
        image, label = synthesize_case(seed, index, randomisation)
        centre = [int(np.median(i)) for i in np.nonzero(label)] if label.any() else [120, 120, 77]
        flair, t1gd = normalise(image[..., 0]), normalise(image[..., 2])
        panels = [
            take_slice(flair, "axial", centre[2]),
            take_slice(flair, "coronal", centre[1]),
            take_slice(t1gd, "axial", centre[2]),
        ]
        height = max(p.shape[0] for p in panels)
        joined = np.hstack([np.pad(p, ((0, height - p.shape[0]), (0, 2))) for p in panels])
        ax.imshow(joined, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, color="white", fontsize=10)
    for ax in axes.ravel():
        ax.axis("off")
    figure.suptitle(
        "phantom generator, one randomisation at a time (FLAIR axial, FLAIR coronal, T1gd axial)",
        color="white",
    )
    figure.tight_layout()
    return figure
