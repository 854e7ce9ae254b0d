"""Write the learner version of the course: every exercise solution (between the
``### START CODE HERE ###`` and ``### END CODE HERE ###`` markers) replaced by a placeholder.

    python notebooks/make_student.py --out student/

The learner folder also gets util.py and public_tests.py, so it runs on its own.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
START, END = "### START CODE HERE ###", "### END CODE HERE ###"
PLACEHOLDER = "return None  # replace this line with your code"
SOLUTION = re.compile(rf"^([ \t]*){re.escape(START)}\n.*?^[ \t]*{re.escape(END)}[ \t]*$",
                      re.MULTILINE | re.DOTALL)


def strip_solutions(source: str) -> str:
    """Replace each solution block with the markers around a placeholder."""
    return SOLUTION.sub(lambda m: f"{m[1]}{START}\n{m[1]}{PLACEHOLDER}\n{m[1]}{END}", source)


def write_student(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(HERE.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.source = strip_solutions(cell.source)
                cell.outputs, cell.execution_count = [], None
        nbformat.write(notebook, out / path.name)
        written.append(out / path.name)
    for helper in ("util.py", "public_tests.py"):
        shutil.copy(HERE.parent / helper, out / helper)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="student", help="learner folder (default student/)")
    for path in write_student(Path(parser.parse_args().out)):
        print(path)
