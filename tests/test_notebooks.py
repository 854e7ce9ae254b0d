"""The six notebooks run top to bottom in a real Jupyter kernel (small settings through their
parameters cell), each "Expected output" block matches what its cell printed, and the learner
version stops at its first graded check with that check's message."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tumorseg.presets import PRESETS
from tumorseg.run import read_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What a learner should never see: TensorFlow's C++ log lines (I0000 00:00:... port.cc:153] ...),
# absl's note before them, AutoGraph's warning about code it cannot read, the skeleton's chatter.
NOISE = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\S+\s+\d+ \S+:\d+\]|absl::InitializeLog|AutoGraph|"
    r"Giving up|^WARNING:tensorflow",
    re.MULTILINE,
)
pytestmark = pytest.mark.slow


def execute(path: Path, parameters: dict, cwd: Path | None = None) -> nbformat.NotebookNode:
    """Run a notebook with ``parameters`` appended to its parameters cell; return it executed."""
    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n# set by the tests\n" + "\n".join(
        f"{k} = {v!r}" for k, v in parameters.items()
    )
    client = NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd or path.parent)}},
    )
    # Without PYTEST_CURRENT_TEST the kernel puts what is written to its file descriptors
    # (TensorFlow's C++ log lines) into the notebook, as it does in JupyterLab.
    client.execute(env={k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"})
    keep = os.environ.get("TUMORSEG_EXECUTED_NOTEBOOKS")  # a folder to keep them in, for a look
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, Path(keep) / path.name)
    return notebook


def output_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return ANSI.sub("", "\n".join(parts))


def text_of(notebook) -> str:
    """Everything the notebook printed or displayed as text; asserts that none of it is noise
    (every notebook test reads its text through here)."""
    text = "\n".join(output_text(cell) for cell in notebook.cells)
    noise = NOISE.search(text)
    assert noise is None, text[max(0, noise.start() - 200) : noise.end() + 200]
    return text


def displayed(notebook, mime: str) -> int:
    return sum(
        mime in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )


def check_expected_outputs(notebook) -> int:
    """Each "Expected output" block holds exactly what the code cell before it printed."""
    blocks = 0
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown" or "**Expected output**" not in cell.source:
            continue
        expected = re.search(r"```\n(.*?)\n```", cell.source, re.DOTALL).group(1)
        previous = next(c for c in reversed(notebook.cells[:index]) if c.cell_type == "code")
        printed = output_text(previous).strip()
        assert printed == expected.strip(), (expected, printed)
        blocks += 1
    return blocks


def graded_passes(notebook) -> int:
    return sum(
        "All tests passed." in output_text(cell)
        for cell in notebook.cells
        if cell.metadata.get("nbgrader", {}).get("grade")
    )


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
    assert graded_passes(notebook) == 1 and check_expected_outputs(notebook) == 1
    assert "tumour share" in text  # the table made with the learner's voxels_per_class
    assert displayed(notebook, "image/png") >= 2  # bar plot and image grid
    assert displayed(notebook, "image/gif") == 1
    # The slice viewer, then a phantom's and a real glioma's side by side (data/real).
    assert displayed(notebook, "application/vnd.jupyter.widget-view+json") == 2
    assert "real     OtherEXampleFromTCIA  image (240, 240, 155, 4), voxel order LPS" in text


def test_02_patch_generation(datasets):
    notebook = execute(
        NOTEBOOKS / "02_patch_generation.ipynb",
        {"DATA": str(datasets / "train"), "EXPORT_CASES": 3},
    )
    text = text_of(notebook)
    assert graded_passes(notebook) == 2 and check_expected_outputs(notebook) == 2
    assert "X (160, 160, 16, 4) y (160, 160, 16, 3)" in text
    assert "batch: (2, 160, 160, 16, 4) (2, 160, 160, 16, 3)" in text


def test_03_unet_model():
    notebook = execute(NOTEBOOKS / "03_unet_model.ipynb", {"SHOW_SUMMARY": False})
    text = text_of(notebook)
    assert graded_passes(notebook) == 1 and check_expected_outputs(notebook) == 1
    assert "16,318,307 parameters, output (None, 160, 160, 16, 3)" in text
    assert "summed from the formula: 16,318,307, counted by Keras: 16,318,307" in text
    assert "1,023,355 parameters" in text  # the learner's function builds the cpu preset
    assert "741.9" in text  # forward GFLOP of the seed model
    assert displayed(notebook, "image/png") >= 1


def test_04_loss_and_metrics():
    notebook = execute(NOTEBOOKS / "04_loss_and_metrics.ipynb", {})
    text = text_of(notebook)
    assert graded_passes(notebook) == 5 and check_expected_outputs(notebook) == 5
    per_example = float(re.search(r"per example, then mean: ([\d.]+)", text).group(1))
    pooled = float(re.search(r"pooled over the batch:  ([\d.]+)", text).group(1))
    assert per_example < pooled  # the markdown's claim: stray voxels in an empty patch
    # The HD95 demonstration: Dice and HD95 rank A and B oppositely; the tiny blob is ignored.
    assert "Dice prefers A | HD95 (lower is better) prefers B" in text
    assert re.search(r"tiny: 2x2x2 blob\s+[\d.]+\s+0\.0+\n", text), text


@pytest.fixture(scope="module")
def trained(datasets):
    run = datasets / "run"
    notebook = execute(
        NOTEBOOKS / "05_training.ipynb",
        {
            "DATA": str(datasets / "train"),
            "RUN": str(run),
            "EPOCHS": 40,  # more than the minutes hold: the plan shrinks, as make run's does
            "MINUTES": 0.75,  # on slow cores the first epoch (compiling the step) nears 0.4 min
            "STEPS_PER_EPOCH": 2,
            "BATCH_SIZE": 2,
            "VALIDATION_PATCHES": 2,
        },
    )
    return run, notebook


def test_05_training(trained):
    run, notebook = trained
    text = text_of(notebook)
    assert graded_passes(notebook) == 1 and check_expected_outputs(notebook) == 1
    assert (
        "ready: get_sub_volume, standardize, unet_model_3d, soft_dice_loss, dice_coefficient"
        in text
    )
    assert "first epoch:" in text  # the time, measured
    fitted = int(re.search(r"0.75 minutes hold (\d+) epochs on this machine", text).group(1))
    assert "validation cases at 1/2 of their voxels per axis" in text  # the cpu preset's 2 mm
    assert (run / "model.keras").exists() and (run / "history.csv").exists()
    # The run's settings, as tumorseg train writes them: what notebook 6 predicts with.
    config = read_config(run)
    # The cpu preset's network, in the precision the learner's U-Net computes in.
    assert config.model == replace(PRESETS["cpu"], precision="float32") and not config.calibrate
    trained_epochs = len(pd.read_csv(run / "history.csv"))
    assert 2 <= trained_epochs == config.epochs <= fitted < 40
    assert displayed(notebook, "image/png") >= 1  # the curves
    assert displayed(notebook, "application/vnd.jupyter.widget-view+json") >= 1  # progress bar
    difference = float(re.search(r"largest weight difference after 3 steps: (\S+)", text).group(1))
    assert difference < 1e-4


def test_06_whole_scan_inference(trained, datasets):
    run, _ = trained
    notebook = execute(
        NOTEBOOKS / "06_whole_scan_inference.ipynb",
        {"RUN": str(run), "TEST_DATA": str(datasets / "test"), "TEST_CASES": 1},
    )
    text = text_of(notebook)
    assert graded_passes(notebook) == 2 and check_expected_outputs(notebook) == 2
    # the learner's model from notebook 5, at the cpu preset's resolution
    assert "patches (64, 64, 32), threshold 0.5, scans at 1/2" in text
    assert "Sensitivity" in text and "seed tiling" in text and "sliding windows" in text
    assert "Dice WT" in text and "HD95 ET" in text
    # notebook 5's run is not calibrated: no enhancing-tumour minimum, every voxel kept
    assert "no enhancing-tumour minimum calibrated" in text and "enhancing voxels marked" in text
    assert displayed(notebook, "image/png") >= 2  # truth beside prediction: a patch, a whole scan
    # the progress bar over the held-out cases, and the slice viewer
    assert displayed(notebook, "application/vnd.jupyter.widget-view+json") == 2
    assert list((run / "notebook-predictions").glob("*.nii.gz"))
    # The real case: Dice beside the phantoms' and the algorithms' agreement, then the lesson.
    assert "OtherEXampleFromTCIA: segmented in" in text and "algorithms vs vote" in text
    assert "0.91-0.98" in text  # the five algorithms' WT Dice against their vote
    assert re.search(r"WT: found [\d.]+ of the label's 30\.2 cm3", text), text
    assert "Dice lower here than on the phantoms:" in text


def test_notebooks_find_the_real_pair_through_the_library():
    """data/real is the project's, not the notebook folder's: a learner version elsewhere
    (make student) reaches it through tumorseg.devset's paths, never ROOT / "data" / "real"."""
    for path in NOTEBOOKS.glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                assert not re.search(r'"real"\s*/|labelled-algorithms"', source), path.name


def test_no_notebook_imports_an_exercise_from_the_library():
    import public_tests

    for path in NOTEBOOKS.glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            for line in source.splitlines():
                if line.lstrip().startswith(("from tumorseg", "import tumorseg")):
                    imported = re.split(r"[\s,()]+", line.split(" import ", 1)[-1])
                    assert not set(imported) & set(public_tests.EXERCISES), (path.name, line)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("student")
    subprocess.run(
        [sys.executable, str(NOTEBOOKS / "instructor.py"), "student", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def test_learner_version_has_skeletons_and_no_solutions(student):
    for name in ("02_patch_generation", "06_whole_scan_inference"):
        text = (student / f"{name}.ipynb").read_text()
        assert "### START CODE HERE (REPLACE INSTANCES OF 'None' with your code) ###" in text
        assert "start_x = np.random.randint(0, orig_x - output_x + 1)" not in text
        assert "stride = max(1, int(window * (1 - overlap)))" not in text
    notebook = nbformat.read(student / "03_unet_model.ipynb", as_version=4)
    assert all("outputs" not in c or not c.outputs for c in notebook.cells)
    assert (student / "util.py").exists() and (student / "public_tests.py").exists()


@pytest.mark.parametrize(
    "name, first_check",
    [
        ("02_patch_generation", "get_sub_volume: raised TypeError"),
        ("04_loss_and_metrics", "single_class_dice_coefficient: seed example 1"),
    ],
)
def test_learner_version_stops_at_its_first_check(student, datasets, name, first_check):
    with pytest.raises(CellExecutionError) as failure:
        execute(student / f"{name}.ipynb", {"DATA": str(datasets / "train")})
    message = ANSI.sub("", str(failure.value))
    assert "AssertionError" in message and first_check in message
    assert "Is a None from the skeleton still there?" in message


def test_later_notebook_says_in_one_line_what_is_unsolved(student):
    with pytest.raises(CellExecutionError) as failure:
        execute(student / "05_training.ipynb", {})
    message = ANSI.sub("", str(failure.value))
    assert failure.value.ename == "NotSolvedYet"
    assert (
        "get_sub_volume (02_patch_generation) is not solved yet (nor is standardize "
        "(02_patch_generation), unet_model_3d (03_unet_model), soft_dice_loss "
        "(04_loss_and_metrics), dice_coefficient (04_loss_and_metrics)): get_sub_volume: raised "
        "TypeError" in message
    )
    assert "USE_LIBRARY_FALLBACK = True" in message
