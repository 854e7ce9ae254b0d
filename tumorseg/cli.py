"""The ``tumorseg`` command line (also ``python -m tumorseg``).

Exit status: 0 done; 2 bad input or a refused request (one line on stderr naming the file);
1 anything unexpected.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC
from pathlib import Path

from .errors import InputError
from .presets import DEFAULT_PRESET, PRECISIONS, SEED_PATCH_SHAPE


def quiet_tensorflow() -> str:
    """Import TensorFlow with its C++ start-up messages kept off the terminal: they are written
    straight to file descriptor 2 and would bury the one-line error a bad input deserves.
    Returns them (CUDA or cuDNN load errors among them, where a GPU did not load)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as log:
        try:
            os.dup2(log.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        return log.read()


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
    print(
        f"\n{len(table)} cases; mean tumour voxels per case: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in tumour.mean().items())
    )


def cmd_patches(args: argparse.Namespace) -> None:
    from .seed_layout import export_patches

    config = export_patches(
        args.data,
        args.out,
        patches_per_case=args.per_case,
        valid_fraction=args.valid_fraction,
        patch_shape=tuple(args.patch),
        seed=args.seed,
    )
    print(
        f"wrote {len(config['train'])} training and {len(config['valid'])} validation patches "
        f"to {args.out} (config.json lists them)"
    )


RESUME_FIXED = ("preset", "config", "steps_per_epoch", "batch_size", "seed")  # the run fixes


def cmd_train(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .run import CONFIG_FILE, MODEL_FILE, check_tf_config, is_run, read_config

    out = Path(args.out)
    for name in RESUME_FIXED if args.resume else ():
        if getattr(args, name) is not None:
            option = "--" + name.replace("_", "-")
            raise InputError(
                option,
                f"cannot change when resuming: {out / CONFIG_FILE} "
                "fixes it (start a new run to change it)",
            )
    if args.resume:
        if not is_run(out):
            raise InputError(out, f"no run to resume here ({CONFIG_FILE} missing)")
        config = read_config(out)
    else:
        config = new_train_config(args)
    strategy_name = args.strategy or config.strategy
    if strategy_name == "multiworker":
        check_tf_config(os.environ.get("TF_CONFIG"))
    startup_log = quiet_tensorflow()  # after the settings are checked: bad ones fail fast
    from .inference import describe_rule
    from .train import describe_devices, make_strategy, resume, train

    print(describe_devices(strategy_name, config.preset, startup_log, config.model.precision))
    if args.resume:
        strategy = make_strategy(args.strategy) if args.strategy else None
        state = resume(
            out,
            epochs=args.epochs,
            time_limit_minutes=args.time_limit,
            data=args.data,
            strategy=strategy,
        )
    else:
        state = train(config, out, strategy=make_strategy(config.strategy))
    print(
        f"{out}: {state['epoch']} epochs ({state['ended']}); best validation Dice "
        f"{state['best_val_dice']:.4f}; {describe_rule(state)}; "
        f"model: {out / MODEL_FILE}"
    )


def new_train_config(args: argparse.Namespace):
    """The validated :class:`~tumorseg.run.TrainConfig` of a new run: a preset or a --config
    file, with the options given beside it."""
    from .run import TrainConfig

    settings = {
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "time_limit_minutes": args.time_limit,
        "strategy": args.strategy,
    }
    if args.config:
        if args.preset:
            raise InputError(
                "--preset",
                f"{args.config} holds the run's settings: give --preset or --config, not both",
            )
        config = TrainConfig.load(args.config)
        config.data = args.data or config.data
        for key, value in settings.items():
            if value is not None:
                setattr(config, key, value)
    elif not args.data:
        raise InputError("--data", "a data folder is needed for a new run")
    else:
        config = TrainConfig.from_preset(args.data, args.preset or DEFAULT_PRESET, **settings)
    config.validate()
    return config


def prediction_targets(cases, out) -> tuple[list, Path]:
    """Output path per case, and the provenance file beside them: one case to a .nii/.nii.gz
    path gives that file and ``<name>.predict.json``; otherwise a folder with
    ``<case id>.nii.gz`` per case and ``predict.json``."""
    from pathlib import Path

    out = Path(out)
    if len(cases) == 1 and out.name.endswith((".nii.gz", ".nii")):
        stem = out.name.removesuffix(".gz").removesuffix(".nii")
        return [out], out.with_name(f"{stem}.predict.json")
    return [out / f"{case.id}.nii.gz" for case in cases], out / "predict.json"


def training_spacing(model: str) -> list[float] | None:
    """The voxel spacing (mm along x, y, z) a run was trained at, from the run folder's
    config.json (``--model`` names the folder or a .keras file in it); None when there is no
    run folder or the run predates the record."""
    from .run import is_run, read_config

    folder = Path(model) if Path(model).is_dir() else Path(model).parent
    return read_config(folder).spacing if is_run(folder) else None


def given_or(value, option: str, run_value, run_source: str) -> tuple:
    """A prediction setting and its source: the option's value where it was given, else the
    run's (calibrated or a default)."""
    return (value, option) if value is not None else (run_value, run_source)


def cmd_predict(args: argparse.Namespace) -> None:
    import json
    from datetime import datetime

    from tqdm.auto import tqdm

    from . import __version__
    from .atomic import atomic_path
    from .data import check_spacing, find_cases, load_scan, save_label_map, scan_grid

    cases = find_cases(args.input)
    targets, provenance = prediction_targets(cases, args.out)
    if not args.overwrite:
        for target in targets:
            if target.exists():
                raise InputError(target, "exists: pass --overwrite to replace it")
    spacing = training_spacing(args.model)
    for case in cases:  # every grid checked (headers only) before the model loads
        check_spacing(scan_grid(case), spacing)
    quiet_tensorflow()  # after the inputs are checked: bad ones fail fast
    from .inference import Predictor

    predictor = Predictor.from_run(args.model)
    if args.precision == "bf16" and predictor.config is None:
        raise InputError(
            "--precision",
            f"bf16 needs a tumorseg U-Net; {predictor.model_file} is another model (use float32)",
        )
    if predictor.note:
        print(f"tumorseg: {predictor.note}", file=sys.stderr)
    threshold, threshold_source = given_or(
        args.threshold, "--threshold", predictor.threshold, predictor.threshold_source
    )
    et_min_voxels, et_min_voxels_source = given_or(
        args.et_min_voxels,
        "--et-min-voxels",
        predictor.et_min_voxels,
        predictor.et_min_voxels_source,
    )
    record = {
        "model": str(predictor.model_file.resolve()),
        "model_sha256": predictor.model_sha256(),
        "threshold": threshold,
        "threshold_source": threshold_source,
        "et_min_voxels": et_min_voxels,
        "et_min_voxels_source": et_min_voxels_source,
        "overlap": args.overlap,
        "tta": args.tta,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "patch_shape": list(predictor.patch_shape),
        "tumorseg_version": __version__,
        "outputs": [],
    }
    for case, target in tqdm(list(zip(cases, targets)), desc="cases", unit="case", disable=None):
        image, _, grid = load_scan(case)  # in the training voxel order
        label_map = predictor.segment(
            image,
            threshold,
            et_min_voxels,
            overlap=args.overlap,
            tta=args.tta,
            precision=args.precision,
            batch_size=args.batch_size,
            progress=True,
        )
        save_label_map(label_map, target, grid)  # back in the scan's own grid and affine
        record["outputs"].append(
            {"output": target.name, "inputs": [str(path.resolve()) for path in case.images]}
        )
        print(f"{case.id}: {target}", flush=True)
    record["time"] = datetime.now(UTC).isoformat(timespec="seconds")
    with atomic_path(provenance) as tmp:
        tmp.write_text(json.dumps(record, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .atomic import atomic_path
    from .data import find_cases, load_label_map, load_scan
    from .metrics import case_metrics, metrics_table

    if args.agreement:  # refused before the long part if the folder is wrong
        from .devset import agreement, format_real

        ceiling = agreement(args.truth, args.agreement)
    rows = {}
    for case in find_cases(args.truth):
        if case.label is None:
            continue
        pred_path = Path(args.pred) / f"{case.id}.nii.gz"
        _, truth, grid = load_scan(case)  # in the training voxel order
        pred = load_label_map(pred_path, grid)  # written in the scan's own grid, as predict does
        rows[case.id] = case_metrics(pred, truth, grid.spacing)
    if not rows:
        raise InputError(args.truth, "no labelled cases to evaluate against")
    table = metrics_table(rows)
    out = Path(args.out) if args.out else Path(args.pred) / "metrics.csv"
    with atomic_path(out) as tmp:
        table.to_csv(tmp, float_format="%.4f")
    if args.agreement:
        print(
            f"Dice of {args.pred} on {args.truth}, beside the other segmentations in "
            f"{args.agreement} scored against the same labels"
        )
        print(format_real(table, ceiling))
    else:
        print(format_metrics(table))
    print(f"\nper case and mean, all measures: {out}")


def format_metrics(table) -> str:
    """Per-case Dice and HD95 of the BraTS regions, then the mean of every measure by region."""
    import pandas as pd

    from .data import CLASS_NAMES

    regions = [*CLASS_NAMES, "WT", "TC", "ET"]
    short = [f"Dice {r}" for r in ("WT", "TC", "ET")] + [f"HD95 {r}" for r in ("WT", "TC", "ET")]
    mean = table.loc["mean"]
    summary = pd.DataFrame(
        {
            measure: [mean[f"{measure} {r}"] for r in regions]
            for measure in ("Dice", "Sensitivity", "Specificity", "HD95")
        },
        index=regions,
    )
    with pd.option_context(
        "display.width", 200, "display.max_rows", None, "display.float_format", "{:.4f}".format
    ):
        return table[short].to_string() + "\n\nmean over cases (HD95 in mm)\n" + summary.to_string()


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the option and what is wrong) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(kind, low=None, high=None, high_open=False, low_open=False):
    """An argparse type: ``kind`` (int or float) within [low, high] (open where said)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a{'n integer' if kind is int else ' number'}: {text!r}"
            ) from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            bounds = (
                f"in {left}{low}, {high}{right}"
                if high is not None
                else (f"{'above' if low_open else 'at least'} {low}")
            )
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


POSITIVE = number(int, 1)
NON_NEGATIVE = number(int, 0)  # seeds (numpy takes >= 0), voxel counts
SHARE = number(float, 0, 1, high_open=True)  # 0 <= x < 1
SHARE_OPEN = number(float, 0, 1, low_open=True, high_open=True)  # 0 < x < 1


def build_parser() -> argparse.ArgumentParser:
    from .presets import STRATEGIES, TRAINING_PRESETS

    parser = Parser(prog="tumorseg", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )

    synth = commands.add_parser("synth", help="write the synthetic phantom dataset (MSD layout)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--cases", type=POSITIVE, default=24, help="number of cases (default 24)")
    synth.add_argument("--seed", type=NON_NEGATIVE, default=0, help="dataset seed (default 0)")
    synth.add_argument(
        "--workers",
        type=POSITIVE,
        default=None,
        help="processes (default: cores, as memory allows)",
    )
    synth.set_defaults(func=cmd_synth)

    info = commands.add_parser("info", help="validate every case and print a summary table")
    info.add_argument("data", metavar="DATA_DIR", help="MSD Task01 or BraTS folder")
    info.set_defaults(func=cmd_info)

    patches = commands.add_parser(
        "patches", help="export fixed patches to the seed's processed/ layout"
    )
    patches.add_argument("--data", required=True, help="MSD Task01 or BraTS folder")
    patches.add_argument("--out", required=True, help="output folder (train/, valid/, config.json)")
    patches.add_argument(
        "--per-case", type=POSITIVE, default=4, help="patches per case (default 4)"
    )
    patches.add_argument(
        "--valid-fraction", type=SHARE_OPEN, default=0.2, help="share of cases (0.2)"
    )
    patches.add_argument(
        "--patch", type=POSITIVE, nargs=3, default=SEED_PATCH_SHAPE, metavar=("X", "Y", "Z")
    )
    patches.add_argument("--seed", type=int, default=0)
    patches.set_defaults(func=cmd_patches)

    time_limits = ", ".join(
        f"{name} {settings.get('time_limit_minutes', 'none')}"
        for name, settings in TRAINING_PRESETS.items()
    )
    train = commands.add_parser(
        "train", help="train a U-Net (a run folder with config, model, logs)"
    )
    train.add_argument("--data", help="MSD Task01 or BraTS folder with labels")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument(
        "--preset",
        choices=list(TRAINING_PRESETS),
        help=f"network and training settings (default {DEFAULT_PRESET})",
    )
    train.add_argument("--config", help="a run's config.json: re-create that run")
    train.add_argument("--epochs", type=POSITIVE, help="with --resume: extend the run to this many")
    train.add_argument("--steps-per-epoch", type=POSITIVE)
    train.add_argument("--batch-size", type=POSITIVE, help="patches per replica per step")
    train.add_argument(
        "--resume",
        action="store_true",
        help="complete the run in --out (a finished run stays as it is)",
    )
    train.add_argument("--strategy", choices=STRATEGIES)
    train.add_argument("--seed", type=NON_NEGATIVE, help="run seed (at least 0)")
    train.add_argument(
        "--time-limit",
        type=number(float, 0, low_open=True),
        metavar="MINUTES",
        help="start no epoch that would end past this many minutes of training (default: the "
        f"preset's: {time_limits})",
    )
    train.set_defaults(func=cmd_train)

    predict = commands.add_parser("predict", help="segment whole scans (NIfTI uint8 out)")
    predict.add_argument("--model", required=True, help="run folder or .keras file")
    predict.add_argument("--input", required=True, help="4-D NIfTI, BraTS case folder or dataset")
    predict.add_argument("--out", required=True, help="output .nii.gz (one case) or folder")
    predict.add_argument("--overlap", type=SHARE, default=0.25, help="window overlap (0.25)")
    predict.add_argument("--tta", action="store_true", help="average with the flipped scan")
    predict.add_argument(
        "--threshold",
        type=SHARE,
        help="label-map threshold (default: the run's calibrated one, else 0.5)",
    )
    predict.add_argument(
        "--et-min-voxels",
        type=NON_NEGATIVE,
        metavar="N",
        help="relabel a predicted enhancing tumour of fewer than N voxels non-enhancing "
        "(default: the run's calibrated N, else 0: keep it)",
    )
    predict.add_argument("--precision", choices=PRECISIONS, default="float32")
    predict.add_argument("--batch-size", type=POSITIVE, default=1, help="windows per forward pass")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.set_defaults(func=cmd_predict)

    evaluate = commands.add_parser("evaluate", help="Dice, sensitivity, specificity, HD95")
    evaluate.add_argument("--pred", required=True, help="folder of <case id>.nii.gz predictions")
    evaluate.add_argument("--truth", required=True, help="the labelled dataset")
    evaluate.add_argument("--out", help="CSV path (default PRED/metrics.csv)")
    evaluate.add_argument(
        "--agreement",
        metavar="DIR",
        help="other segmentations of the cases (DIR/<case>/<name>-20.nii.gz, "
        "BraTS values): print the Dice beside theirs (data/real)",
    )
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
