"""Disk and memory of the training cache against the number of cases (README, "Datasets of any
size"): ``python -m benchmarks.cache_scale [REAL_BRATS2021_DIR]`` (a few minutes; not part of
``make bench``). Writes ``build/bench/cache_scale.json``.

A scaled-down simulation: 1,000 MSD-layout cases at a quarter of a BraTS scan's size along each
axis (60 x 60 x 39, a brain of 35 x 43 x 35, a tumour of 12 x 10 x 8 voxels), cached with a
quarter of the seed's patch (40 x 40 x 4). Once the cache is written, for the first 100, 300 and
1,000 cases a fresh process opens their cache, draws 2,000 patches and reports its peak resident
memory, its open files and the memory its CachedCase objects hold. With a real BraTS 2021
folder, the cache of its cases at the seed's patch (160 x 160 x 16) gives the disk a real case
needs.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from .common import OUT, save

SHAPE, BRAIN, PATCH, COUNTS = (60, 60, 39), (35, 43, 35), (40, 40, 4), (100, 300, 1000)


def write_cases(root: Path, count: int) -> Path:
    import nibabel as nib

    if (root / "done").exists():
        return root
    rng = np.random.default_rng(0)
    affine = np.diag([-4.0, -4.0, 4.0, 1.0])
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    lo = [(s - b) // 2 for s, b in zip(SHAPE, BRAIN)]
    brain = tuple(slice(a, a + b) for a, b in zip(lo, BRAIN))
    for i in range(count):
        image = np.zeros(SHAPE + (4,), np.float32)
        image[brain] = rng.normal(100, 10, BRAIN + (4,))
        label = np.zeros(SHAPE, np.uint8)
        x = lo[0] + 2 + i % 20
        label[x : x + 12, 20:30, 15:23] = 1
        name = f"BRATS_{i:04d}.nii"
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
    (root / "done").touch()
    return root


def measure(data: str, cache: str, count: int) -> dict:
    """In this process: cache the first ``count`` cases, draw 2,000 patches."""
    import tracemalloc

    from tumorseg.data import find_cases
    from tumorseg.patches import PatchSampler, cache_case

    cases = find_cases(data)[:count]
    tracemalloc.start()
    cached = [cache_case(case, cache, PATCH) for case in cases]
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    sampler = PatchSampler(cached, PATCH, seed=1)
    for i in range(2000):
        sampler(i)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "cases": count,
        "peak_rss_mib": peak_kib / 1024,
        "open_files": len(os.listdir("/proc/self/fd")),
        "cached_case_objects_kib": held / 1024,
    }


def real_case_disk(folder: Path) -> dict:
    """Cache bytes per real case at the seed's patch, and the cases' brain boxes."""
    import tempfile

    from tumorseg.data import find_cases
    from tumorseg.patches import cache_case

    sizes, shapes = [], []
    with tempfile.TemporaryDirectory() as cache:
        for case in find_cases(folder):
            cached = cache_case(case, cache, (160, 160, 16))
            sizes.append(sum(cached.path(p).stat().st_size for p in ("image", "label", "tumour")))
            shapes.append(cached.shape)
    return {
        "cases": len(sizes),
        "cache_mib_per_case": float(np.mean(sizes)) / 2**20,
        "cropped_shapes": shapes,
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["--measure"]:
        print(json.dumps(measure(argv[1], argv[2], int(argv[3]))))
        return 0
    root = OUT / "cache_scale"
    data = write_cases(root / "data", max(COUNTS))
    rows = []
    for count in (max(COUNTS),) + COUNTS:  # the first run writes the cache; the others read it
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.cache_scale",
                "--measure",
                str(data),
                str(root / "cache"),
                str(count),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    rows = rows[1:]
    files = list((root / "cache").rglob("BRATS_0*.npy"))
    disk = sum(p.stat().st_size for p in files) / (len(files) / 3)
    result = {"simulation": rows, "simulated_cache_mib_per_case": disk / 2**20}
    if argv:
        result["real"] = real_case_disk(Path(argv[0]))
    print(json.dumps(result, indent=2))
    save("cache_scale", result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
