"""The one exception for bad input: the CLI prints it as one line and exits with status 2."""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad input or a refused request, tied to the file it concerns.

    ``str(error)`` is the one line the user sees: ``"<path>: <what is wrong>"``.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
