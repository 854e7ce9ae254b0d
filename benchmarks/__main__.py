"""Run the benchmarks: `python -m benchmarks [NAME ...]`; print a table; JSON in build/bench/.

Without names: all but ``ablation`` (about 10 hours of training) and ``calibration`` (a
before/after comparison that needs the git history); name them to run them."""

from __future__ import annotations

import sys

from . import (
    bench_ablation,
    bench_calibration,
    bench_et_minimum,
    bench_inference,
    bench_model,
    bench_patches,
    bench_precision,
    bench_synthesis,
    bench_tissues,
    bench_transfer,
    bench_viewer,
)

BENCHMARKS = {
    "patches": (bench_patches.sampling, bench_patches.report_sampling),
    "input": (bench_patches.input_wait, bench_patches.report_input_wait),
    "flops": (bench_model.flops, bench_model.report_flops),
    "precision": (bench_precision.precision, bench_precision.report_precision),
    "viewer": (bench_viewer.viewer, bench_viewer.report_viewer),
    "inference": (bench_inference.inference, bench_inference.report_inference),
    "synthesis": (bench_synthesis.synthesis, bench_synthesis.report_synthesis),
    "transfer": (bench_transfer.transfer, bench_transfer.report_transfer),
    "tissues": (bench_tissues.tissues, bench_tissues.report_tissues),
    "ablation": (bench_ablation.ablation, bench_ablation.report_ablation),
    "calibration": (bench_calibration.calibration, bench_calibration.report_calibration),
    "et_minimum": (bench_et_minimum.et_minimum, bench_et_minimum.report_et_minimum),
}
LONG = ("ablation", "calibration")  # run only when named


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    rows = []
    for name in names or [n for n in BENCHMARKS if n not in LONG]:
        run, report = BENCHMARKS[name]
        print(f"[bench] {name} ...", flush=True)
        rows += report(run())
    width = max(len(r[0]) for r in rows)
    print()
    for what, measured, ratio in rows:
        print(f"{what:<{width}}  {measured:<44}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
