"""Timing, result files and the synthetic cases the benchmarks share."""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path

import numpy as np

OUT = Path("build/bench")


def timed(function, repeat: int) -> float:
    """Mean seconds per call of ``function()`` over ``repeat`` calls, after one warm-up call."""
    function()
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - start) / repeat


def save(name: str, result: dict) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    return result


@cache
def synthetic_case(index: int, seed: int = 0):
    """(image, label) of a synthetic phantom, in memory."""
    from tumorseg.synthetic import synthesize_case

    return synthesize_case(seed, index)


def tumour_voxels(index: int) -> int:
    return int(np.count_nonzero(synthetic_case(index)[1]))
