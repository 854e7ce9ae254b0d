"""How long the slice viewer takes to redraw after a slider step (the widget's own work:
slicing, colouring, PNG encoding; the browser's drawing is on top)."""

from __future__ import annotations

import time

from .common import save, synthetic_case


def viewer() -> dict:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import util

    image, label = synthetic_case(2)
    rows = {}
    for name, view in (
        ("single", util.slice_viewer(image, label)),
        ("side by side", util.compare_viewer(image, label, label)),
    ):
        for plane in ("axial", "coronal", "sagittal"):
            view.plane.value = plane
            start = time.perf_counter()
            steps = 0
            for value in range(10, view.slice.max, 5):
                view.slice.value = value
                steps += 1
            rows[f"{name}, {plane}"] = (time.perf_counter() - start) / steps * 1e3
    return save(
        "viewer",
        {
            "what": "ms per slider step, 240x240x155 case",
            "ms_per_step": rows,
            "worst_ms": max(rows.values()),
            "target_ms": 100,
        },
    )


def report_viewer(r: dict) -> list[tuple[str, str, str]]:
    return [
        (
            "slice viewer redraw per slider step (worst of planes, single / side by side)",
            f"{r['worst_ms']:.1f} ms",
            "target < 100 ms",
        )
    ]
