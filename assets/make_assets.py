"""The README's pictures, made by the project's own code: ``make assets`` runs

    python assets/make_assets.py

from the project root. The trained-model pictures (curves, prediction beside truth) need a run
from ``make run`` (``runs/cpu``) and its held-out cases (``data/synthetic-test``).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # util.py, the notebooks' helpers, lives in the project root

import util  # noqa: E402


def make_assets(
    folder: str | Path = ROOT / "assets",
    run: str | Path = ROOT / "runs" / "cpu",
    held_out: str | Path = ROOT / "data" / "synthetic-test",
) -> list[Path]:
    """Regenerate the README's pictures with the project's own code (``make assets``).

    The trained-model pictures (curves, prediction beside truth) need a run from ``make run``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tumorseg.figures import draw_unet, plot_case, plot_history, plot_randomisations
    from tumorseg.patches import get_sub_volume, standardize
    from tumorseg.synthetic import synthesize_case

    folder, run = Path(folder), Path(run)
    folder.mkdir(parents=True, exist_ok=True)
    image, label = synthesize_case(seed=0, index=3)
    figures = {
        "synthetic_case.png": plot_case(
            image, label, title="synthetic phantom case (seed 0, case 4)"
        ),
        "image_grid.png": util.plot_image_grid(image, label),
        "unet.png": draw_unet(),
        "randomisations.png": plot_randomisations(),
    }
    np.random.seed(0)
    X, y = get_sub_volume(image, label)
    figures["patch.png"] = util.visualize_patch(standardize(X), y)
    written = []
    for name, figure in figures.items():
        figure.savefig(folder / name, dpi=80, bbox_inches="tight", facecolor=figure.get_facecolor())
        plt.close(figure)
        written.append(folder / name)
    written.append(util.visualize_data_gif(image, label, folder / "case.gif", step=5))
    viewer = util.SliceViewer(image, label)
    (folder / "viewer.png").write_bytes(viewer.images["labels"].value)
    written.append(folder / "viewer.png")
    if (run / "model.keras").exists() and (run / "history.csv").exists():
        import pandas as pd

        from tumorseg.data import find_cases, load_case
        from tumorseg.inference import Predictor

        plot_history(pd.read_csv(run / "history.csv")).savefig(folder / "curves.png", dpi=80)
        case = find_cases(held_out)[0]
        test_image, truth = load_case(case)
        prediction = Predictor.from_run(run).segment(test_image)
        compare = util.compare_viewer(test_image, truth, prediction)
        from PIL import Image

        panels = [Image.open(io.BytesIO(view.value)) for view in compare.images.values()]
        joined = Image.new("RGB", (sum(p.width for p in panels) + 10, panels[0].height))
        joined.paste(panels[0], (0, 0))
        joined.paste(panels[1], (panels[0].width + 10, 0))
        joined.save(folder / "prediction.png")
        written += [folder / "curves.png", folder / "prediction.png"]
    return written


if __name__ == "__main__":
    for path in make_assets():
        print(path)
