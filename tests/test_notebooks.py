"""The six notebooks run top to bottom in a real Jupyter kernel (small settings through their
parameters cell), and the learner version stops at its first graded check."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
pytestmark = pytest.mark.slow


def execute(path: Path, parameters: dict) -> nbformat.NotebookNode:
    """Run a notebook with ``parameters`` appended to its parameters cell; return it executed."""
    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n# set by the tests\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return notebook


def text_of(notebook) -> str:
    """Everything the notebook printed or displayed as text."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def displayed(notebook, mime: str) -> int:
    return sum(mime in output.get("data", {}) for cell in notebook.cells
               for output in cell.get("outputs", []))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from tumorseg.synthetic import write_dataset

    root = tmp_path_factory.mktemp("course")
    write_dataset(root / "train", cases=4, seed=0, progress=False)
    write_dataset(root / "test", cases=1, seed=1, progress=False)
    return root


def test_01_data_exploration(datasets):
    notebook = execute(NOTEBOOKS / "01_data_exploration.ipynb", {"DATA": str(datasets / "train")})
    text = text_of(notebook)
    assert "4 cases in" in text and "voxel size: (1.0, 1.0, 1.0) mm" in text
    assert "image (240, 240, 155, 4) float32" in text
    assert displayed(notebook, "image/png") >= 2  # bar plot and image grid
    assert displayed(notebook, "image/gif") == 1
    assert displayed(notebook, "application/vnd.jupyter.widget-view+json") == 1


def test_02_patch_generation(datasets):
    notebook = execute(NOTEBOOKS / "02_patch_generation.ipynb",
                       {"DATA": str(datasets / "train"), "EXPORT_CASES": 3})
    text = text_of(notebook)
    assert text.count("All tests passed.") == 2
    assert "X (160, 160, 16, 4) y (160, 160, 16, 3)" in text
    assert "batch: (2, 160, 160, 16, 4) (2, 160, 160, 16, 3)" in text


def test_03_unet_model():
    notebook = execute(NOTEBOOKS / "03_unet_model.ipynb", {"SHOW_SUMMARY": False})
    text = text_of(notebook)
    assert "16,318,307 parameters" in text and "1,023,355 parameters" in text
    assert "741.9" in text  # forward GFLOP of the seed model
    assert displayed(notebook, "image/png") >= 1


def test_04_loss_and_metrics():
    notebook = execute(NOTEBOOKS / "04_loss_and_metrics.ipynb", {})
    text = text_of(notebook)
    assert text.count("All tests passed.") == 5
    assert "dice (epsilon 1): 0.6000, soft dice loss (epsilon 1): 0.4000" in text
    assert "sensitivity 0.50, specificity 0.50" in text


@pytest.fixture(scope="module")
def trained(datasets):
    run = datasets / "run"
    notebook = execute(NOTEBOOKS / "05_training.ipynb",
                       {"DATA": str(datasets / "train"), "RUN": str(run), "EPOCHS": 1,
                        "STEPS_PER_EPOCH": 2})
    return run, notebook


def test_05_training(trained):
    run, notebook = trained
    assert (run / "model.keras").exists() and (run / "config.json").exists()
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
    assert displayed(notebook, "image/png") >= 1  # the curves
    assert "val_dice" in text_of(notebook)


def test_06_whole_scan_inference(trained, datasets):
    run, _ = trained
    notebook = execute(NOTEBOOKS / "06_whole_scan_inference.ipynb",
                       {"RUN": str(run), "TEST_DATA": str(datasets / "test"), "TEST_CASES": 1})
    text = text_of(notebook)
    assert "Sensitivity" in text and "seed tiling" in text and "sliding windows" in text
    assert "Dice WT" in text and "HD95 ET" in text
    assert displayed(notebook, "application/vnd.jupyter.widget-view+json") == 1
    assert list((run / "notebook-predictions").glob("*.nii.gz"))


@pytest.mark.parametrize("name, first_check", [
    ("02_patch_generation", "get_sub_volume: returned None although qualifying windows exist"),
    ("04_loss_and_metrics", "single_class_dice_coefficient: seed example 1"),
])
def test_learner_version_stops_at_its_first_check(tmp_path, datasets, name, first_check):
    import subprocess
    import sys

    subprocess.run([sys.executable, str(NOTEBOOKS / "make_student.py"), "--out",
                    str(tmp_path / "student")], check=True, capture_output=True)
    learner = tmp_path / "student" / f"{name}.ipynb"
    assert "### START CODE HERE ###" in learner.read_text()
    assert "np.random.randint(0, orig_x" not in learner.read_text()
    with pytest.raises(CellExecutionError) as failure:
        execute(learner, {"DATA": str(datasets / "train")})
    assert "AssertionError" in str(failure.value) and first_check in str(failure.value)
