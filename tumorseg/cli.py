"""The ``tumorseg`` command line (also ``python -m tumorseg``).

Exit status: 0 done; 2 bad input or a refused request (one line on stderr naming the file);
1 anything unexpected.
"""

from __future__ import annotations

import argparse
import sys

from .errors import InputError


def cmd_synth(args: argparse.Namespace) -> None:
    from .data import find_cases
    from .synthetic import write_dataset

    write_dataset(args.out, cases=args.cases, seed=args.seed, workers=args.workers)
    print(f"wrote {len(find_cases(args.out))} synthetic cases (seed {args.seed}) to {args.out}")


def cmd_info(args: argparse.Namespace) -> None:
    import pandas as pd

    from .data import dataset_table

    table = dataset_table(args.data, progress=True)
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(table.to_string(index=False))
    tumour = table[["edema", "non-enhancing", "enhancing"]]
    print(f"\n{len(table)} cases; mean tumour voxels per case: "
          + ", ".join(f"{k} {v:,.0f}" for k, v in tumour.mean().items()))


def cmd_patches(args: argparse.Namespace) -> None:
    from .patches import export_patches

    config = export_patches(args.data, args.out, patches_per_case=args.per_case,
                            valid_fraction=args.valid_fraction, patch_shape=tuple(args.patch),
                            seed=args.seed)
    print(f"wrote {len(config['train'])} training and {len(config['valid'])} validation patches "
          f"to {args.out} (config.json lists them)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tumorseg", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="write the synthetic phantom dataset (MSD layout)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--cases", type=int, default=24, help="number of cases (default 24)")
    synth.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    synth.set_defaults(func=cmd_synth)

    info = commands.add_parser("info", help="validate every case and print a summary table")
    info.add_argument("data", metavar="DATA_DIR", help="MSD Task01 or BraTS folder")
    info.set_defaults(func=cmd_info)

    cut = commands.add_parser("patches", help="export fixed patches to the seed's processed/ layout")
    cut.add_argument("--data", required=True, help="MSD Task01 or BraTS folder")
    cut.add_argument("--out", required=True, help="output folder (train/, valid/, config.json)")
    cut.add_argument("--per-case", type=int, default=4, help="patches per case (default 4)")
    cut.add_argument("--valid-fraction", type=float, default=0.2, help="share of cases (0.2)")
    cut.add_argument("--patch", type=int, nargs=3, default=(160, 160, 16), metavar=("X", "Y", "Z"))
    cut.add_argument("--seed", type=int, default=0)
    cut.set_defaults(func=cmd_patches)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as error:
        print(f"tumorseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tumorseg: interrupted", file=sys.stderr)
        return 130
    return 0
