"""The ``tumorseg`` command line (also ``python -m tumorseg``).

Exit status: 0 done; 2 bad input or a refused request (one line on stderr naming the file);
1 anything unexpected.
"""

from __future__ import annotations

import argparse
import sys

from .errors import InputError


def quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up messages silenced: they are written straight to
    file descriptor 2 and would bury the one-line error a bad input deserves."""
    import os

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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


def cmd_train(args: argparse.Namespace) -> None:
    quiet_tensorflow()
    from pathlib import Path

    from .train import TrainConfig, make_strategy, train

    out = Path(args.out)
    if args.resume:
        config = None
    elif args.config:
        config = TrainConfig.load(args.config)
        config.data = args.data or config.data
    else:
        if not args.data:
            raise InputError("--data", "a data folder is needed for a new run")
        config = TrainConfig.from_preset(args.data, args.preset, epochs=args.epochs,
                                         steps_per_epoch=args.steps_per_epoch,
                                         batch_size=args.batch_size, seed=args.seed,
                                         time_limit_minutes=args.time_limit)
    if config is not None and args.strategy:
        config.strategy = args.strategy
    strategy = make_strategy(args.strategy) if args.strategy else None
    history = train(config, out, resume=args.resume, strategy=strategy)
    if history:
        best = max(row["val_dice"] for row in history)
        print(f"trained {len(history)} epochs; best validation Dice {best:.4f}; "
              f"model: {out / 'model.keras'}")


def prediction_targets(cases, out) -> list:
    """Output path per case: a file when one case goes to a .nii/.nii.gz path, else a folder."""
    from pathlib import Path

    out = Path(out)
    if len(cases) == 1 and out.name.endswith((".nii.gz", ".nii")):
        return [out]
    return [out / f"{case.id}.nii.gz" for case in cases]


def cmd_predict(args: argparse.Namespace) -> None:
    quiet_tensorflow()
    from tqdm.auto import tqdm

    from .data import find_cases, load_case, save_nifti
    from .inference import predict_volume, to_label_map
    from .train import load_model, run_patch_shape, run_threshold

    cases = find_cases(args.input)
    targets = prediction_targets(cases, args.out)
    if not args.overwrite:
        for target in targets:
            if target.exists():
                raise InputError(target, "exists: pass --overwrite to replace it")
    model = load_model(args.model)
    patch_shape = run_patch_shape(args.model)
    threshold = args.threshold or run_threshold(args.model) or 0.5
    for case, target in tqdm(list(zip(cases, targets)), desc="cases", unit="case", disable=None):
        image, _ = load_case(case)
        probabilities = predict_volume(model, image, overlap=args.overlap, tta=args.tta,
                                       precision=args.precision, patch_shape=patch_shape,
                                       batch_size=args.batch_size, progress=True)
        save_nifti(to_label_map(probabilities, threshold), target, case.reference)
        print(f"{case.id}: {target}", flush=True)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .data import atomic_path, find_cases, load_case, load_label, voxel_spacing
    from .metrics import case_metrics, metrics_table

    rows = {}
    for case in find_cases(args.truth):
        if case.label is None:
            continue
        pred_path = Path(args.pred) / f"{case.id}.nii.gz"
        _, truth = load_case(case)
        pred = load_label(pred_path)
        if pred.shape != truth.shape:
            raise InputError(pred_path, f"shape {pred.shape} does not match the truth "
                                        f"{truth.shape} of {case.label.name}")
        rows[case.id] = case_metrics(pred, truth, voxel_spacing(case))
    if not rows:
        raise InputError(args.truth, "no labelled cases to evaluate against")
    table = metrics_table(rows)
    out = Path(args.out) if args.out else Path(args.pred) / "metrics.csv"
    with atomic_path(out) as tmp:
        table.to_csv(tmp, float_format="%.4f")
    print(format_metrics(table))
    print(f"\nper case and mean, all measures: {out}")


def format_metrics(table) -> str:
    """Per-case Dice and HD95 of the BraTS regions, then the mean of every measure by region."""
    import pandas as pd

    regions = ["Edema", "Non-Enhancing Tumor", "Enhancing Tumor", "WT", "TC", "ET"]
    short = [f"Dice {r}" for r in ("WT", "TC", "ET")] + [f"HD95 {r}" for r in ("WT", "TC", "ET")]
    mean = table.loc["mean"]
    summary = pd.DataFrame({measure: [mean[f"{measure} {r}"] for r in regions]
                            for measure in ("Dice", "Sensitivity", "Specificity", "HD95")},
                           index=regions)
    with pd.option_context("display.width", 200, "display.max_rows", None,
                           "display.float_format", "{:.4f}".format):
        return (table[short].to_string() + "\n\nmean over cases (HD95 in mm)\n"
                + summary.to_string())


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

    fit = commands.add_parser("train", help="train a U-Net (a run folder with config, model, logs)")
    fit.add_argument("--data", help="MSD Task01 or BraTS folder with labels")
    fit.add_argument("--out", required=True, help="run folder")
    fit.add_argument("--preset", choices=("cpu", "seed"), default="cpu")
    fit.add_argument("--config", help="a run's config.json: re-create that run")
    fit.add_argument("--epochs", type=int)
    fit.add_argument("--steps-per-epoch", type=int)
    fit.add_argument("--batch-size", type=int, help="patches per replica per step")
    fit.add_argument("--resume", action="store_true", help="continue the run in --out")
    fit.add_argument("--strategy", choices=("default", "mirrored", "multiworker"))
    fit.add_argument("--seed", type=int)
    fit.add_argument("--time-limit", type=float, metavar="MINUTES",
                     help="start no epoch that would end past this many minutes")
    fit.set_defaults(func=cmd_train)

    predict = commands.add_parser("predict", help="segment whole scans (NIfTI uint8 out)")
    predict.add_argument("--model", required=True, help="run folder or .keras file")
    predict.add_argument("--input", required=True, help="4-D NIfTI, BraTS case folder or dataset")
    predict.add_argument("--out", required=True, help="output .nii.gz (one case) or folder")
    predict.add_argument("--overlap", type=float, default=0.25, help="window overlap (0.25)")
    predict.add_argument("--tta", action="store_true", help="average with the flipped scan")
    predict.add_argument("--threshold", type=float,
                         help="label-map threshold (default: the run's calibrated one, else 0.5)")
    predict.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    predict.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.set_defaults(func=cmd_predict)

    evaluate = commands.add_parser("evaluate", help="Dice, sensitivity, specificity, HD95")
    evaluate.add_argument("--pred", required=True, help="folder of <case id>.nii.gz predictions")
    evaluate.add_argument("--truth", required=True, help="the labelled dataset")
    evaluate.add_argument("--out", help="CSV path (default PRED/metrics.csv)")
    evaluate.set_defaults(func=cmd_evaluate)
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
