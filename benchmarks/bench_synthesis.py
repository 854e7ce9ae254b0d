"""Seconds per phantom case: the generator before issue 17 (``tumorseg/synthetic.py`` at
``OLD_COMMIT``, read from git) and now, on the same cases, timed alternately in one process (one
worker), and how many of the cases kept their label map. The faster generator changed the noise
pattern and the per-sequence artefact draws (blur, slices, bias, gamma, scale), which followed
the noise in the case's stream; the anatomy, tumour and labels changed only by float rounding,
which can move a tumour where a voxel's white-matter fraction sits on the threshold that picks
its centre."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

from .common import save

CASES = (0, 1, 2)  # indices of seed 0, default generator
OLD_COMMIT = "ac82d5b"  # the last commit with the generator before issue 17


def generator_before():
    """``tumorseg.synthetic`` as it was at ``OLD_COMMIT``, loaded from git against today's
    library (a git checkout is needed, as for the calibration benchmark)."""
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:tumorseg/synthetic.py"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,
    ).stdout
    module = types.ModuleType("synthetic_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source.replace("from .", "from tumorseg."), OLD_COMMIT, "exec"), module.__dict__)
    return module


def synthesis() -> dict:
    from tumorseg.synthetic import synthesize_case

    before = generator_before().synthesize_case

    synthesize_case(0, 99), before(0, 99)  # warm-up: template, caches, imports
    seconds = {"before": [], "now": []}
    same_labels = 0
    for index in CASES:
        results = {}
        for name, function in (("before", before), ("now", synthesize_case)):
            start = time.perf_counter()
            results[name] = function(0, index)
            seconds[name].append(time.perf_counter() - start)
        same_labels += int(np.array_equal(results["before"][1], results["now"][1]))
    before_s, now_s = (float(np.mean(seconds[k])) for k in ("before", "now"))
    return save(
        "synthesis",
        {
            "what": "seconds per phantom case (seed 0, default generator), the generator before "
            "issue 17 and now, timed alternately on the same cases in one process",
            "cases": len(CASES),
            "before_s": before_s,
            "now_s": now_s,
            "speedup": before_s / now_s,
            "same_labels": same_labels,
            "seconds": seconds,
        },
    )


def report_synthesis(r: dict) -> list[tuple[str, str, str]]:
    return [
        (
            f"synthesis, seconds per case ({r['cases']} cases, one worker)",
            f"before {r['before_s']:.2f} s, now {r['now_s']:.2f} s; labels identical "
            f"{r['same_labels']}/{r['cases']}",
            f"{r['speedup']:.1f}x faster",
        )
    ]
