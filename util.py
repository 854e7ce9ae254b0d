"""Helpers the course notebooks import: slice viewers (ipywidgets), the image grid, the GIF
through the three axes, and the patch view. Arrays are channels-last: an image is
``(x, y, z, 4)`` (FLAIR, T1, T1gd, T2), a label ``(x, y, z)`` with 0 background, 1 edema,
2 non-enhancing tumour, 3 enhancing tumour. Colours: red edema, green non-enhancing, blue
enhancing.
"""

from __future__ import annotations

import contextlib
import io
import json
import linecache
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tumorseg.data import CHANNELS
from tumorseg.figures import LABEL_COLOURS, PLANES, legend_handles, normalise, overlay, to_display
from tumorseg.figures import take_slice as figures_take_slice


def quiet_tensorflow() -> None:
    """Import TensorFlow without its C++ start-up lines (oneDNN, CUDA, CPU features), and keep
    its later C++ log lines (such as a failed cuInit on a machine without a GPU) out of the
    notebook. Call it before anything imports TensorFlow or Keras."""
    import os

    from tumorseg.cli import quiet_tensorflow as import_quietly

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # read by TensorFlow's C++ logging when it starts
    import_quietly()


def make_synthetic_dataset(folder: str | Path, cases: int, seed: int) -> None:
    """``tumorseg.synthetic.write_dataset`` with a progress bar in the notebook (its own bar
    shows on a terminal only): it runs in a thread, one process per core, and the bar counts
    the cases written. Complete cases already there are kept."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from tumorseg.synthetic import write_dataset

    labels = Path(folder) / "labelsTr"

    def written() -> int:
        return sum(not p.name.startswith(".") for p in labels.glob("*.nii.gz"))

    with (
        ThreadPoolExecutor(1) as pool,
        tqdm(total=cases, desc="synthetic cases", unit="case") as bar,
    ):
        job = pool.submit(write_dataset, folder, cases=cases, seed=seed, progress=False)
        while not job.done():
            time.sleep(1)
            bar.update(min(written(), cases) - bar.n)
        job.result()
        bar.update(cases - bar.n)


def take_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2-D slice ``index`` of ``volume`` (first three axes x, y, z in BraTS voxel order
    L, P, S) in ``plane``, turned for display as 3D Slicer and ITK-SNAP show it: front of the
    head at the top of axial views, top of the head at the top of the others, the patient's
    left on the image's right (see :func:`tumorseg.figures.to_display`)."""
    return figures_take_slice(volume, plane, index)


def render_png(
    grey: np.ndarray, label: np.ndarray | None = None, opacity: float = 0.5, scale: int = 2
) -> bytes:
    """PNG bytes of a 0..1 grey slice with the label's colours blended in (nearest-neighbour
    upscaled ``scale`` times). Pure numpy + Pillow: a few milliseconds."""
    from PIL import Image

    rgb = overlay(grey, label, opacity) if label is not None else np.repeat(grey[..., None], 3, -1)
    pixels = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class SliceViewer:
    """An interactive viewer: plane, slice, sequence, label overlay on/off and its opacity.

    ``SliceViewer(image, label).widget`` is the ipywidgets box to display; ``render()`` redraws.
    Several labels (``labels={"truth": a, "prediction": b}``) show side by side with shared
    controls.
    """

    def __init__(
        self,
        image: np.ndarray,
        label: np.ndarray | None = None,
        labels: dict[str, np.ndarray] | None = None,
        scale: int = 2,
    ):
        import ipywidgets as widgets

        self.image = image
        self.labels = labels if labels is not None else {"labels": label}
        self.scale = scale
        # Each sequence is normalised once over the whole volume, so slices compare.
        self.normalised = [normalise(image[..., c]) for c in range(image.shape[-1])]
        tumour = next((m for m in self.labels.values() if m is not None and m.any()), None)
        start = (
            int(np.argmax((tumour > 0).sum(axis=(0, 1))))
            if tumour is not None
            else image.shape[2] // 2
        )
        self.plane = widgets.Dropdown(options=list(PLANES), value="axial", description="plane")
        self.slice = widgets.IntSlider(
            value=start, min=0, max=image.shape[2] - 1, description="slice", continuous_update=True
        )
        self.sequence = widgets.Dropdown(
            options=list(CHANNELS), value="FLAIR", description="sequence"
        )
        self.show_labels = widgets.Checkbox(value=True, description="label overlay")
        self.opacity = widgets.FloatSlider(
            value=0.5, min=0, max=1, step=0.05, description="opacity"
        )
        self.images = {name: widgets.Image(format="png") for name in self.labels}
        panels = [widgets.VBox([widgets.Label(name), view]) for name, view in self.images.items()]
        controls = widgets.VBox(
            [self.plane, self.slice, self.sequence, self.show_labels, self.opacity]
        )
        self.widget = widgets.VBox([controls, widgets.HBox(panels)])
        self.plane.observe(self._plane_changed, names="value")
        for control in (self.slice, self.sequence, self.show_labels, self.opacity):
            control.observe(lambda _: self.render(), names="value")
        self.render()

    def _plane_changed(self, change) -> None:
        size = self.image.shape[PLANES[change["new"]]]
        self.slice.max = size - 1
        self.slice.value = min(self.slice.value, size - 1)
        self.render()

    def render(self) -> None:
        """Redraw every panel for the controls' current values."""
        channel = CHANNELS.index(self.sequence.value)
        grey = take_slice(self.normalised[channel], self.plane.value, self.slice.value)
        for name, label in self.labels.items():
            shown = None
            if label is not None and self.show_labels.value:
                shown = take_slice(label, self.plane.value, self.slice.value)
            self.images[name].value = render_png(grey, shown, self.opacity.value, self.scale)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def slice_viewer(image: np.ndarray, label: np.ndarray | None = None) -> SliceViewer:
    """The interactive slice viewer of one case."""
    return SliceViewer(image, label)


def compare_viewer(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> SliceViewer:
    """Ground truth and prediction side by side, with shared controls."""
    return SliceViewer(image, labels={"ground truth": truth, "prediction": prediction})


def plot_image_grid(image: np.ndarray, label: np.ndarray | None = None):
    """The seed's grid: for each plane, the middle slice of each sequence, and the labels."""
    import matplotlib.pyplot as plt

    centre = [s // 2 for s in image.shape[:3]]
    if label is not None and label.any():
        centre = [int(np.mean(i)) for i in np.nonzero(label)]
    rows = list(PLANES)
    columns = len(CHANNELS) + (label is not None)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(2.6 * columns, 2.6 * len(rows)), facecolor="black"
    )
    for r, plane in enumerate(rows):
        index = centre[PLANES[plane]]
        for c, name in enumerate(CHANNELS):
            axes[r, c].imshow(take_slice(normalise(image[..., c]), plane, index), cmap="gray")
            axes[r, c].set_title(f"{name}, {plane}", color="white", fontsize=9)
        if label is not None:
            grey = take_slice(normalise(image[..., 0]), plane, index)
            axes[r, -1].imshow(overlay(grey, take_slice(label, plane, index), 0.6))
            axes[r, -1].set_title(f"labels, {plane}", color="white", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.legend(
        handles=legend_handles(), loc="lower center", ncol=3, frameon=False, labelcolor="white"
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def visualize_data_gif(
    image: np.ndarray, label: np.ndarray, path: str | Path = "case.gif", step: int = 3
) -> Path:
    """An animated GIF sweeping through the three axes side by side (FLAIR with the labels);
    returns its path. Show it with ``IPython.display.Image(filename=path)``."""
    from PIL import Image

    grey = normalise(image[..., 0])
    frames = []
    sizes = [image.shape[axis] for axis in (0, 1, 2)]
    for t in np.linspace(0, 1, max(sizes) // step):
        panels = []
        for plane in ("sagittal", "coronal", "axial"):
            index = min(int(t * sizes[PLANES[plane]]), sizes[PLANES[plane]] - 1)
            rgb = overlay(take_slice(grey, plane, index), take_slice(label, plane, index), 0.5)
            panel = np.zeros((max(sizes), max(sizes), 3))
            panel[: rgb.shape[0], : rgb.shape[1]] = rgb
            panels.append(panel)
        frames.append(Image.fromarray((np.hstack(panels) * 255).astype(np.uint8)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=60, loop=0)
    return path


def visualize_patch(X: np.ndarray, y: np.ndarray, z: int | None = None):
    """A patch ``X (px, py, pz, 4)`` and its label ``y (px, py, pz, 3)``: FLAIR of slice ``z``
    and the one-hot label as colours (the seed's patch view)."""
    import matplotlib.pyplot as plt

    z = int(np.argmax(y.sum(axis=(0, 1, 3)))) if z is None else z
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.6))
    left.imshow(to_display(X[:, :, z, 0]), cmap="gray")
    left.set_title(f"FLAIR (standardised), z = {z}")
    right.imshow(to_display(np.clip(y[:, :, z, :], 0, 1) @ LABEL_COLOURS[1:]))
    right.set_title("labels: edema, non-enhancing, enhancing")
    for ax in (left, right):
        ax.axis("off")
    fig.tight_layout()
    return fig


def visualize_patch_prediction(
    X: np.ndarray, truth: np.ndarray, prediction: np.ndarray, z: int | None = None
):
    """A patch ``X (px, py, pz, 4)``, its label ``truth`` and a ``prediction`` (both one-hot
    ``(px, py, pz, 3)``) side by side: FLAIR of slice ``z``, the truth and the prediction as
    colours (the seed's patch prediction view)."""
    import matplotlib.pyplot as plt

    z = int(np.argmax(truth.sum(axis=(0, 1, 3)))) if z is None else z
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    axes[0].imshow(to_display(X[:, :, z, 0]), cmap="gray")
    axes[0].set_title(f"FLAIR (standardised), z = {z}")
    for ax, one_hot, title in (
        (axes[1], truth, "ground truth"),
        (axes[2], prediction, "prediction"),
    ):
        ax.imshow(to_display(np.clip(one_hot[:, :, z, :], 0, 1) @ LABEL_COLOURS[1:]))
        ax.set_title(title)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_truth_and_prediction(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, z: int | None = None
):
    """A whole scan's axial slice ``z`` (default: the one with most tumour in ``truth``): FLAIR
    with the ground truth beside FLAIR with the prediction (the seed's whole-scan view).
    image ``(x, y, z, 4)``; truth, prediction label maps ``(x, y, z)``."""
    import matplotlib.pyplot as plt

    z = int(np.argmax((truth > 0).sum(axis=(0, 1)))) if z is None else z
    grey = take_slice(normalise(image[..., 0]), "axial", z)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    for ax, label, title in ((axes[0], truth, "ground truth"), (axes[1], prediction, "prediction")):
        ax.imshow(overlay(grey, take_slice(label, "axial", z), 0.6))
        ax.set_title(f"{title}, axial slice {z}")
        ax.axis("off")
    fig.legend(handles=legend_handles(), loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def tumour_region(label: np.ndarray, window: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """The tumour's bounding box grown by half a ``window`` on each side (and to at least the
    window), within the volume: a region where random windows mostly hold tumour.
    label: ``(x, y, z)``; the whole volume when it has no tumour."""
    from tumorseg.patches import bounding_box

    tumour = bounding_box(label, margin=tuple(w // 2 for w in window))
    if tumour is None:
        return tuple(slice(0, size) for size in np.shape(label))
    box = []
    for (size, w), extent in zip(zip(np.shape(label), window), tumour):
        lo, hi = extent.start, extent.stop
        if hi - lo < w:
            lo = max(0, min(lo, size - w))
            hi = min(size, lo + w)
        box.append(slice(lo, hi))
    return tuple(box)


# ----------------------------------------------------------------------------- the learner's code


class NotSolvedYet(Exception):
    """An earlier exercise the notebook needs is unsolved or fails its check. Shown as its one
    line in a notebook (no traceback)."""

    def _render_traceback_(self):
        return [f"\033[91m{self}\033[0m"]


def solution_cells(notebook: str | Path) -> list[str]:
    """The sources of a notebook's exercise cells (nbgrader ``solution`` cells), in order."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    return [
        "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for cell in cells
        if cell["cell_type"] == "code" and cell["metadata"].get("nbgrader", {}).get("solution")
    ]


def _registered(source: str, name: str) -> str:
    """``name`` for code compiled from ``source``, with the source registered in ``linecache``
    so that ``inspect.getsource`` (and so AutoGraph, and tracebacks) find it."""
    linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)
    return name


def load_exercise_cells(notebook: str | Path, namespace: dict | None = None) -> dict:
    """Run the exercise cells of ``notebook`` (a learner's definitions) in ``namespace`` (a new
    one by default) and return it. Only the tagged exercise cells run, nothing else; each is
    compiled under the name ``<NOTEBOOK.ipynb, exercise cell N>`` with its source registered."""
    namespace = {"__name__": f"learner_{Path(notebook).stem}"} if namespace is None else namespace
    for number, source in enumerate(solution_cells(notebook), start=1):
        name = _registered(source, f"<{Path(notebook).name}, exercise cell {number}>")
        exec(compile(source, name, "exec"), namespace)
    return namespace


def _course_folder(folder) -> Path:
    """The folder of the learner's notebooks: the given one, else the running notebook's."""
    return Path(folder) if folder is not None else Path.cwd()


def _check_quietly(name: str, function) -> str | None:
    """None when ``function`` passes the graded check of exercise ``name``, else its message."""
    import public_tests

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            getattr(public_tests, f"test_{name}")(function)
        except AssertionError as failure:
            return str(failure).splitlines()[0]
    return None


def learner_functions(
    *names: str, folder=None, use_library_fallback: bool = False, namespace: dict | None = None
) -> SimpleNamespace:
    """The learner's own functions ``names`` from the earlier notebooks of the course.

    Each exercise's notebook (``public_tests.EXERCISES``) is found in ``folder`` (default: the
    folder of the running notebook), its exercise cells are run, and each function must pass
    its graded check. One that is missing or fails is replaced by the library's version only
    with ``use_library_fallback=True`` (one line says so); otherwise :class:`NotSolvedYet`
    names in one line every one to finish, and why the first fails. ``namespace`` receives the
    definitions (default: a new dict); returns them as attributes, e.g. ``mine.get_sub_volume``.
    """
    import public_tests

    folder = _course_folder(folder)
    namespace = {"__name__": "learner"} if namespace is None else namespace
    loaded: dict[str, str | None] = {}
    for notebook in dict.fromkeys(public_tests.EXERCISES[name].notebook for name in names):
        path = folder / f"{notebook}.ipynb"
        try:
            load_exercise_cells(path, namespace)
            loaded[notebook] = None
        except FileNotFoundError:
            loaded[notebook] = f"{path.name} is not in {folder}"
        except Exception as error:  # the learner's cell does not run
            loaded[notebook] = (
                f"its exercise cells in {path.name} raise {type(error).__name__}: {error}"
            )
    functions, unsolved = {}, []
    for name in names:
        notebook = public_tests.EXERCISES[name].notebook
        problem = loaded[notebook]
        if problem is None:
            function = namespace.get(name)
            problem = (
                f"{notebook}.ipynb defines no function {name}"
                if not callable(function)
                else _check_quietly(name, function)
            )
        if problem is None:
            functions[name] = namespace[name]
            continue
        where = f"{name} ({notebook})"
        if not use_library_fallback:
            unsolved.append((where, problem))
            continue
        print(f"{where}: {problem}; using the library's version, as USE_LIBRARY_FALLBACK asks.")
        functions[name] = namespace[name] = public_tests.library_version(name)
    if unsolved:
        (where, problem), others = unsolved[0], [w for w, _ in unsolved[1:]]
        also = f" (nor is {', '.join(others)})" if others else ""
        ends = "" if problem.endswith((".", "?", "!")) else "."
        raise NotSolvedYet(
            f"{where} is not solved yet{also}: {problem}{ends} Finish it there, or set "
            f"USE_LIBRARY_FALLBACK = True in the parameters cell to go on with "
            f"the library's version."
        )
    return SimpleNamespace(**functions)
