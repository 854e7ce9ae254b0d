"""The instructor's tools, built on nbgrader's preprocessors: the learner version of the course,
and autograding of learners' notebooks.

    python notebooks/instructor.py student --out student/
    python notebooks/instructor.py grade SUBMISSIONS/

The solution notebooks carry nbgrader's cell metadata: exercise cells are ``solution`` cells
(the answer between ``### START CODE HERE ###`` and ``### END CODE HERE ###``, and the
learner's skeleton, with ``None`` placeholders, in the cell's ``skeleton`` metadata: one per
marked region), graded-check cells are ``grade`` cells with points.

``student`` runs nbgrader's ClearSolutions (each marked region replaced by its skeleton),
ClearOutput, LockCells and ComputeChecksums, and copies util.py and public_tests.py beside
the notebooks so the folder runs on its own.

``grade`` autogrades ``SUBMISSIONS/<learner>/<notebook>.ipynb`` without a course database:
for each notebook it keeps the instructor's parameters, setup and graded-check cells (the
learner's copies of those are ignored, as nbgrader's OverwriteCells does) and the learner's
exercise cells, runs them in a fresh kernel with nbgrader's Execute preprocessor (errors
allowed, a time limit per cell; ``--jobs`` notebooks at once), and reads each check's points
with nbgrader's ``determine_grade``; a notebook not submitted or unreadable scores 0 without
running, one whose kernel fails scores 0, and the message says which. Cells that only
demonstrate (training, figures) do not run; later notebooks use the library's version of an
earlier exercise the learner did not solve (``USE_LIBRARY_FALLBACK = True``), so each exercise
is graded on its own. The result is ``SUBMISSIONS/grades.csv``: learner, notebook, exercise,
points, max_points, message (the check's message on failure).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
from nbgrader import utils
from nbgrader.preprocessors import ClearOutput, ClearSolutions, ComputeChecksums, Execute, LockCells

from tumorseg.cli import POSITIVE, Parser

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HELPERS = ("util.py", "public_tests.py")
START, END = "START CODE HERE", "END CODE HERE"
CELL_TIMEOUT = 300  # seconds a grading cell may run
# Notebooks graded at once, each in its own kernel (about 1 GB with TensorFlow).
GRADING_JOBS = min(4, os.cpu_count() or 1)
GRADING_PARAMETERS = {"USE_LIBRARY_FALLBACK": True}
# The grading kernels log errors only: not the warning that each runs over local TCP.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def course_notebooks(folder: Path = HERE) -> list[Path]:
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


class ClearSolutionsToSkeleton(ClearSolutions):
    """nbgrader's ClearSolutions with the course's markers, replacing each marked region by the
    cell's own skeleton (``cell.metadata.skeleton[i]`` for the i-th region) instead of one stub
    for every cell."""

    def preprocess_cell(self, cell, resources, cell_index):
        skeletons = list(cell.metadata.get("skeleton", []))
        if cell.cell_type != "code" or not skeletons:
            return super().preprocess_cell(cell, resources, cell_index)
        regions = cell.source.count(START)
        if regions != len(skeletons):
            raise RuntimeError(
                f"cell {cell_index}: {regions} marked regions but {len(skeletons)} "
                f"skeletons in its metadata"
            )
        lines, out, skeleton = cell.source.split("\n"), [], iter(skeletons)
        inside = False
        for line in lines:
            if START in line:
                indent = re.match(r"\s*", line).group(0)
                out.extend(indent + stub if stub else "" for stub in next(skeleton).split("\n"))
                inside = True
            elif END in line:
                inside = False
            elif not inside:
                out.append(line)
        cell.source = "\n".join(out)
        del cell.metadata["skeleton"]
        return cell, resources


def learner_version(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The learner version of a solution notebook, through nbgrader's preprocessors."""
    resources: dict = {}
    clear = ClearSolutionsToSkeleton(begin_solution_delimeter=START, end_solution_delimeter=END)
    for preprocessor in (
        clear,
        ClearOutput(),
        LockCells(lock_grade_cells=True),
        ComputeChecksums(),
    ):
        notebook, resources = preprocessor.preprocess(notebook, resources)
    return notebook


def write_student(out: Path) -> list[Path]:
    """The learner version of every notebook, and the helpers beside them, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in course_notebooks():
        notebook = learner_version(nbformat.read(path, as_version=4))
        nbformat.write(notebook, out / path.name)
        written.append(out / path.name)
    for helper in HELPERS:
        shutil.copy(ROOT / helper, out / helper)
    return written


# ----------------------------------------------------------------------------- grading


class BadInput(Exception):
    """A submissions folder that cannot be graded: one line, exit status 2."""


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def grading_notebook(
    instructor: nbformat.NotebookNode, learner: nbformat.NotebookNode | None
) -> nbformat.NotebookNode:
    """The cells that grade: the instructor's parameters (with the grading settings), setup
    and graded cells, and the learner's exercise cells (matched by grade_id; a missing one
    keeps its skeleton)."""
    learner_cells = {}
    if learner is not None:
        learner_cells = {
            _grade_id(c): c for c in learner.cells if c.cell_type == "code" and utils.is_solution(c)
        }
    cells = []
    for cell in learner_version(nbformat.from_dict(instructor)).cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code":
            continue
        if "parameters" in tags:
            cell.source += "\n# set by the grader\n" + "\n".join(
                f"{name} = {value!r}" for name, value in GRADING_PARAMETERS.items()
            )
        elif utils.is_solution(cell):
            mine = learner_cells.get(_grade_id(cell))
            if mine is not None:
                cell.source = mine.source
        elif not ("setup" in tags or utils.is_grade(cell)):
            continue
        cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    graded = nbformat.v4.new_notebook(cells=cells, metadata=instructor.metadata)
    return graded


def failure_message(cell) -> str:
    """The first line of the error a graded cell raised (its check's message), or ''."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return first_line(f"{output.get('ename', 'Error')}: {output.get('evalue', '')}")
    return ""


def _workspace(folder: Path, work: Path) -> Path:
    """``work``: the instructor's checks (never the learner's copies) beside the learner's
    notebooks, from which later notebooks load earlier exercises."""
    work.mkdir(parents=True, exist_ok=True)
    for helper in HELPERS:
        shutil.copy(ROOT / helper, work / helper)
    for submitted in folder.glob("*.ipynb"):
        shutil.copy(submitted, work / submitted.name)
    return work


def grade_notebook(path: Path, folder: Path, work: Path) -> list[dict]:
    """Rows of grades for one course notebook (``path``) of the learner in ``folder``, run in
    a fresh kernel in ``work``. A notebook not submitted, not readable, or whose kernel failed
    (died, a cell over its time limit) scores 0 with that said, and does not stop the others."""
    submitted = folder / path.name
    learner, problem = None, None
    if not submitted.exists():
        problem = f"{path.name} not submitted"
    else:
        try:
            learner = nbformat.read(submitted, as_version=4)
        except Exception as error:  # whatever the file holds: one line
            problem = f"{path.name}: not a readable notebook ({type(error).__name__})"
    notebook = grading_notebook(nbformat.read(path, as_version=4), learner)
    if learner is not None:
        try:
            Execute(
                timeout=CELL_TIMEOUT, allow_errors=True, extra_arguments=KERNEL_ARGUMENTS
            ).preprocess(notebook, {"metadata": {"path": str(work)}})
        except Exception as error:  # a dead kernel, a timeout: this notebook only
            problem = f"{path.name}: {type(error).__name__}: {first_line(str(error))}"
    rows = []
    for cell in notebook.cells:
        if not utils.is_grade(cell):
            continue
        # nbgrader counts any stderr as a failure; a warning (TensorFlow's start-up lines, a
        # numpy RuntimeWarning) is not one: only an error fails a check.
        cell.outputs = [
            o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")
        ]
        points, max_points = utils.determine_grade(cell)
        rows.append(
            {
                "learner": folder.name,
                "notebook": path.stem,
                "exercise": _grade_id(cell).removeprefix("test_"),
                "points": 0.0 if problem else points,
                "max_points": max_points,
                "message": problem or failure_message(cell),
            }
        )
    return rows


def first_line(text: str) -> str:
    """The first line of ``text`` without terminal colours, or ''."""
    lines = ANSI.sub("", text).strip().splitlines()
    return lines[0] if lines else ""


def grade(submissions: Path, jobs: int = GRADING_JOBS) -> Path:
    """Autograde every learner folder under ``submissions``, ``jobs`` notebooks at a time (each
    in its own kernel); write ``grades.csv`` there."""
    if not submissions.is_dir():
        raise BadInput(f"{submissions}: no such folder of submissions")
    learners = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not learners:
        raise BadInput(f"{submissions}: no learner folders (one sub-folder per learner)")
    with tempfile.TemporaryDirectory() as scratch:
        work = {folder: _workspace(folder, Path(scratch) / folder.name) for folder in learners}
        tasks = [(path, folder, work[folder]) for folder in learners for path in course_notebooks()]
        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            graded = list(pool.map(lambda task: grade_notebook(*task), tasks))
        finally:  # on Ctrl-C, the notebooks not started yet are not started
            pool.shutdown(cancel_futures=True)
    rows = [row for notebook_rows in graded for row in notebook_rows]
    out = submissions / "grades.csv"
    tmp = out.with_name(".grades.csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("student", help="write the learner version of the course")
    student.add_argument("--out", default="student", help="learner folder (default student/)")
    graded = commands.add_parser("grade", help="autograde SUBMISSIONS/<learner>/*.ipynb")
    graded.add_argument("submissions", type=Path)
    graded.add_argument(
        "--jobs",
        type=POSITIVE,
        default=GRADING_JOBS,
        help=f"notebooks graded at once, each in its own kernel (default {GRADING_JOBS})",
    )
    args = parser.parse_args(argv)
    if args.command == "student":
        for path in write_student(Path(args.out)):
            print(path)
    else:
        try:
            out = grade(args.submissions, args.jobs)
        except BadInput as error:
            print(error, file=sys.stderr)
            return 2
        with out.open() as handle:
            total = list(csv.DictReader(handle))
        for learner in dict.fromkeys(row["learner"] for row in total):
            mine = [row for row in total if row["learner"] == learner]
            print(
                f"{learner}: {sum(float(r['points']) for r in mine):g} / "
                f"{sum(float(r['max_points']) for r in mine):g}"
            )
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
