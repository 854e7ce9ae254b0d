"""`make student` writes the learner version through nbgrader, and `make grade` autogrades
learners' folders into grades.csv: the solution notebooks get full marks, the unsolved learner
version zero with one message per exercise."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import public_tests

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
pytestmark = pytest.mark.slow


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    make("student", f"STUDENT_DIR={out}")
    return out


def test_make_student_writes_skeletons_with_nbgrader_metadata(student):
    names = sorted(p.name for p in student.iterdir())
    assert names == sorted(
        [p.name for p in NOTEBOOKS.glob("0*.ipynb")] + ["public_tests.py", "util.py"]
    )
    graded, solutions = set(), set()
    for path in student.glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            meta = cell["metadata"].get("nbgrader", {})
            source = "".join(cell["source"])
            if meta.get("solution"):
                solutions.add(meta["grade_id"])
                assert "REPLACE INSTANCES OF 'None'" in source and "None" in source
                assert "skeleton" not in cell["metadata"]
                compile(source.replace("%matplotlib inline", ""), path.name, "exec")  # valid Python
            if meta.get("grade"):
                graded.add(meta["grade_id"].removeprefix("test_"))
                assert meta["points"] > 0 and meta["locked"] and meta.get("checksum")
            assert not cell.get("outputs")
    assert graded == set(public_tests.EXERCISES)
    assert set(public_tests.EXERCISES) <= solutions


# A soft_dice_loss that passes on numpy arrays but breaks training: numpy instead of keras.ops.
NUMPY_LOSS = """import numpy as np


def soft_dice_loss(y_true, y_pred, axis=(0, 1, 2), epsilon=1e-5):
    numerator = 2.0 * np.sum(y_true * y_pred, axis=axis) + epsilon
    denominator = np.sum(y_true**2, axis=axis) + np.sum(y_pred**2, axis=axis) + epsilon
    return 1.0 - np.mean(numerator / denominator)
"""
TENSORFLOW_LOG = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\S+\s+\d+ \S+:\d+\]|absl::InitializeLog", re.MULTILINE
)


@pytest.fixture(scope="module")
def graded(student, tmp_path_factory) -> tuple[list[dict], str]:
    """grades.csv of three learners (the unsolved learner version, the solutions, and only
    notebooks 4 and 5 solved with a numpy soft_dice_loss), and what make grade printed."""
    submissions = tmp_path_factory.mktemp("submissions")
    shutil.copytree(student, submissions / "unsolved", ignore=shutil.ignore_patterns("*.py"))
    for learner, names in (("solved", "0*.ipynb"), ("numpy_loss", "0[45]_*.ipynb")):
        (submissions / learner).mkdir()
        for path in NOTEBOOKS.glob(names):
            shutil.copy(path, submissions / learner / path.name)
    path = submissions / "numpy_loss" / "04_loss_and_metrics.ipynb"
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["metadata"].get("nbgrader", {}).get("grade_id") == "soft_dice_loss":
            cell["source"] = NUMPY_LOSS
    path.write_text(json.dumps(notebook))
    done = make("grade", f"SUBMISSIONS={submissions}")
    with (submissions / "grades.csv").open() as handle:
        return list(csv.DictReader(handle)), done.stdout + done.stderr


@pytest.fixture(scope="module")
def grades(graded) -> list[dict]:
    return graded[0]


def test_make_grade_prints_no_tensorflow_log(graded):
    assert not TENSORFLOW_LOG.search(graded[1]), graded[1]
    assert "WARNING" not in graded[1], graded[1]  # nor the kernels' warnings


def test_each_exercise_is_graded_on_its_own(grades):
    """A numpy soft_dice_loss fails its own check with the keras.ops message; train_step, which
    uses it, gets full marks (with the library's loss), and so does the rest of notebooks 4
    and 5. The notebooks not submitted score 0 and say so."""
    rows = {row["exercise"]: row for row in grades if row["learner"] == "numpy_loss"}
    assert set(rows) == set(public_tests.EXERCISES)
    loss = rows.pop("soft_dice_loss")
    assert float(loss["points"]) == 0
    assert loss["message"].startswith("AssertionError: soft_dice_loss: on TensorFlow tensors")
    assert "keras.ops" in loss["message"]
    for row in rows.values():
        if row["notebook"][:2] in ("04", "05"):
            assert float(row["points"]) == float(row["max_points"]) > 0, row
        else:
            assert float(row["points"]) == 0 < float(row["max_points"]), row
            assert row["message"] == f"{row['notebook']}.ipynb not submitted", row


def test_solution_notebooks_get_full_marks(grades):
    rows = [row for row in grades if row["learner"] == "solved"]
    assert {row["exercise"] for row in rows} == set(public_tests.EXERCISES)
    for row in rows:
        assert float(row["points"]) == float(row["max_points"]) > 0, row
        assert row["message"] == "", row
        assert row["notebook"] == public_tests.EXERCISES[row["exercise"]].notebook


def test_unsolved_learner_version_gets_zero_with_one_message_each(grades):
    rows = [row for row in grades if row["learner"] == "unsolved"]
    assert len(rows) == len(public_tests.EXERCISES)
    for row in rows:
        assert float(row["points"]) == 0, row
        assert row["message"].startswith(f"AssertionError: {row['exercise']}:"), row
        assert "\n" not in row["message"]


@pytest.fixture(scope="module")
def instructor():
    """notebooks/instructor.py as a module (``make student`` and ``make grade`` run it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("instructor", NOTEBOOKS / "instructor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_notebook_that_cannot_run_scores_0_and_says_why(instructor, tmp_path, monkeypatch):
    """Not submitted or unreadable: 0 without a kernel; a kernel that dies: 0 with its error,
    for that notebook only (grade_notebook returns rows, it does not raise)."""
    from nbclient.exceptions import DeadKernelError

    path = NOTEBOOKS / "04_loss_and_metrics.ipynb"
    exercises = {e for e, info in public_tests.EXERCISES.items() if info.notebook == path.stem}
    folder = tmp_path / "ada"
    folder.mkdir()

    def kernel(*args, **kwargs):
        raise DeadKernelError("Kernel died\nwhile running a cell")

    monkeypatch.setattr(instructor.Execute, "preprocess", kernel)
    submitted = folder / path.name
    for content, says in (
        (None, f"{path.name} not submitted"),
        ("{not json", f"{path.name}: not a readable notebook (NotJSONError)"),
        (path.read_text(), f"{path.name}: DeadKernelError: Kernel died"),
    ):
        if content is not None:
            submitted.write_text(content)
        rows = instructor.grade_notebook(path, folder, tmp_path)
        assert {row["exercise"] for row in rows} == exercises
        for row in rows:
            assert row["points"] == 0 < row["max_points"] and row["message"] == says, row


@pytest.mark.parametrize(
    "make_folder, says", [(True, "no learner folders"), (False, "no such folder of submissions")]
)
def test_grade_bad_submissions_folder_is_one_line(instructor, tmp_path, capsys, make_folder, says):
    folder = tmp_path / "submissions"
    if make_folder:
        folder.mkdir()
    assert instructor.main(["grade", str(folder)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"{folder}: {says}") and "\n" not in error


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_grade_bad_jobs_is_one_line(instructor, tmp_path, capsys, jobs):
    with pytest.raises(SystemExit) as exit:
        instructor.main(["grade", str(tmp_path), "--jobs", jobs])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "argument --jobs:" in error and jobs in error and "\n" not in error
