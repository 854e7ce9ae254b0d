"""What the phantom-trained model needs, measured: the `cpu` preset trained as `make run` trains
it (32 cases, the same time limit) on variants of the generator's ranges, the patch
augmentation, the number of cases, the training time and the network's width, and on each
training lever of issue 17 (precision: ``float32`` now that bf16 is the default, region outputs,
Dice + CE, deep supervision, core-centred patches, instance normalisation, SGD + poly, XLA,
threads), on the schedule fitted to the minutes with bf16's speed spent on epochs or width
(``fitted``, ``bf16_fitted``: the default now, ``bf16_wider``, ``bf16_wider_longer``,
``bf16_widest``), on the scans seen at 2 mm (``coarse``, ``fine``, ``coarse_longer``,
``bf16_wider_longer_coarse``, ``coarse_dice_ce_core``, ``bf16_dice_ce_core``), on the
generator's contrast rules (``widened``) and on the network's width on CPUs without native
bfloat16 (``base4``, ``base6``, ``base8``: 4, 6 and 8 base filters, 8 the preset's), each
from ``SEEDS`` training seeds
(``TrainConfig.seed``: the case split, the initial weights and the patches). Each run is scored
on held-out phantoms of its own generator and of the shifted one
(:func:`benchmarks.bench_transfer.dice_on`, no TTA, the default threshold 0.5: no calibration)
and on the real development pair
(``data/real``, :mod:`tumorseg.devset`), with its training steps per second and minutes.

Long (one `make run`-length training per variant and seed: about 20 minutes each, about 10
hours in all on two cores), so plain `make bench` leaves it out: `python -m benchmarks
ablation`. Environment: ``TUMORSEG_ABLATION_MINUTES`` and ``TUMORSEG_ABLATION_CASES`` shorten
it (defaults 15 and 32, as `make run`), ``TUMORSEG_ABLATION_SEEDS`` (default 2) sets the seeds,
``TUMORSEG_ABLATION_VARIANTS`` (comma-separated names) picks variants and
``TUMORSEG_ABLATION_HELD_OUT`` (default 8) the held-out phantoms of each generator. Each run
trains in its own Python process (thread pools and XLA start fresh); a finished run is not
trained again, and a run folder whose network is not its variant's now (a preset changed since)
stops the ablation with its name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tumorseg.presets import TRAINING_PRESETS

from .bench_transfer import HELD_OUT as TRANSFER_HELD_OUT
from .common import OUT, save

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def make_run_setting(name: str) -> float:
    """A setting of `make run` (``CASES``), read from the Makefile."""
    return float(re.search(rf"^{name} \?= (\S+)$", MAKEFILE.read_text(), re.M)[1])


MAKE_RUN_MINUTES = TRAINING_PRESETS["cpu"]["time_limit_minutes"]
MINUTES = float(os.environ.get("TUMORSEG_ABLATION_MINUTES", MAKE_RUN_MINUTES))
CASES = int(os.environ.get("TUMORSEG_ABLATION_CASES", make_run_setting("CASES")))
SEEDS = int(os.environ.get("TUMORSEG_ABLATION_SEEDS", 2))
HELD_OUT = int(os.environ.get("TUMORSEG_ABLATION_HELD_OUT", TRANSFER_HELD_OUT))
STRONG = {"gamma": 0.3, "bias": 0.2, "blur": 0.8}  # the patch augmentation before
NONE = {name: 0.0 for name in STRONG}  # the defaults now
# The schedule fitted to the minutes, run to its end (no early stop): the defaults now.
FITTED = {"fit_to_time_limit": True, "early_stopping_patience": 0}
# The schedule before 2026-12-07: the preset's epochs (then 28, half of today's), cut off by the
# minutes or ended by early stopping (patience 8).
UNFITTED = {"fit_to_time_limit": False, "early_stopping_patience": 8}
REGIONS = ("WT", "TC", "ET")


@dataclass(frozen=True)
class Variant:
    """One training of the ablation: overrides of the generator's ranges, the patch
    augmentation, the network (:class:`~tumorseg.presets.ModelConfig`) and the other training
    settings (:class:`~tumorseg.run.TrainConfig`), and multiples of `make run`'s cases, epochs
    and minutes."""

    what: str
    generator: dict = field(default_factory=dict)
    augmentation: dict = field(default_factory=lambda: NONE)
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    cases: float = 1.0
    epochs: float = 1.0
    minutes: float = 1.0


VARIANTS = {
    "default": Variant(
        "the defaults now: the seed's recipe in mixed bfloat16, the scans at 2 mm, the schedule "
        "fitted to the minutes"
    ),
    "before": Variant(
        "radius 3-24 mm, patch gamma/bias/blur 0.3/0.2/0.8 (the defaults before)",
        {"radius": (3.0, 24.0)},
        STRONG,
    ),
    "radius": Variant("radius 8-24 mm, patch gamma/bias/blur 0.3/0.2/0.8", augmentation=STRONG),
    "half": Variant(
        "radius 8-24 mm, patch gamma/bias/blur 0.15/0.1/0.4",
        augmentation={name: value / 2 for name, value in STRONG.items()},
    ),
    "cases": Variant("the defaults, twice the cases", cases=2),
    "longer": Variant("the defaults, twice the epochs and minutes", epochs=2, minutes=2),
    "wider": Variant(
        "the defaults, 12 base filters (not 8), half the epochs in the same minutes",
        model={"n_base_filters": 12},
        epochs=0.5,
    ),
    # The generator's tissue rules widened to the tissue ratios measured on real scans.
    "widened": Variant(
        "rules: grey as dark as white on FLAIR, edema less bright on FLAIR, as grey on T1",
        {"contrast_rules": "widened"},
    ),
    # The training levers of issue 17, each alone on the defaults.
    # Mixed bfloat16 is the cpu preset's precision since 2026-12-07 on CPUs with native bf16
    # (the `bf16` lever then): the lever is now the seed's float32 (no change on other CPUs).
    "float32": Variant(
        "lever: float32 training, the seed's precision (not mixed bfloat16)",
        model={"precision": "float32"},
    ),
    # The schedule fitted to the minutes (TrainConfig.fit_to_time_limit): on this machine an
    # epoch of the cpu preset takes 21-42 s depending on the day (validation and checkpoint
    # included), so 15 minutes hold 21-28 epochs, not always the preset's 28. No early stop:
    # the cosine schedule runs to its end.
    "fitted": Variant(
        "schedule: fitted to the minutes, no early stopping (the defaults since 2026-12-07)",
        train=FITTED,
    ),
    # bf16 steps faster: 1.5x float32's epochs (84), shrunk to what the minutes hold (the
    # defaults since 2026-12-07, measured at 2 mm).
    "bf16_fitted": Variant(
        "schedule: mixed-bfloat16, 1.5x float32's epochs fitted to the minutes, no early stopping",
        model={"precision": "bf16"},
        train=FITTED,
    ),
    # bf16's speed spent on width instead: bf16_fitted's training Dice levels off (at most
    # 0.48) from epoch 17 of 33-37, the learning rate still about half its start.
    "bf16_wider": Variant(
        "schedule: mixed-bfloat16, 12 base filters (not 8), fitted to the minutes, no early stop",
        model={"precision": "bf16", "n_base_filters": 12},
        train=FITTED,
    ),
    # bf16_wider's 28 epochs took 11 of the 15 minutes: 1.5x the epochs, shrunk to fit.
    "bf16_wider_longer": Variant(
        "schedule: mixed-bfloat16, 12 base filters, 1.5x the epochs fitted to the minutes",
        model={"precision": "bf16", "n_base_filters": 12},
        train=FITTED,
        epochs=1.5,
    ),
    # In bf16 12 base filters stepped as fast as 8 (1.09 steps/s both): is 16 as cheap?
    "bf16_widest": Variant(
        "schedule: mixed-bfloat16, 16 base filters, 1.5x the epochs fitted to the minutes",
        model={"precision": "bf16", "n_base_filters": 16},
        train=FITTED,
        epochs=1.5,
    ),
    # On two AVX2 cores without native bf16 a float32 step of the cpu preset takes 2.7 s (12
    # epochs in make run's 15 minutes, 2026-12-07); 4 base filters step 2.7x faster there.
    # (2026-12-08: no width better on every set; the preset keeps 8, README.) ``base8`` is the
    # preset's width, named so that the three are compared under one ablation.
    "base4": Variant(
        "width: 4 base filters, more epochs in the same minutes",
        model={"n_base_filters": 4},
    ),
    "base6": Variant("width: 6 base filters", model={"n_base_filters": 6}),
    "base8": Variant("width: 8 base filters", model={"n_base_filters": 8}),
    # The network sees each 1 mm scan at 2 mm (ModelConfig.downsample, the default since
    # 2026-12-07): a 64x64x32 patch covers 128x128x64 mm, a whole tumour and its surroundings,
    # at the same cost per step. ``fine`` is the seed's own resolution, the default before.
    "coarse": Variant(
        "resolution: scans at 2 mm (2x2x2 block means), probabilities interpolated back; "
        "the schedule before (28 epochs, early stopping)",
        model={"downsample": 2, "precision": "float32"},
        train=UNFITTED,
        epochs=1 / 3,
    ),
    "fine": Variant("resolution: scans at their own 1 mm (the seed's)", model={"downsample": 1}),
    # At 2 mm the 28 epochs before took 8-11 of the 15 minutes (2026-12-07): twice the epochs,
    # shrunk to what the minutes hold (the defaults since, in float32 until bf16_fitted).
    "coarse_longer": Variant(
        "resolution: scans at 2 mm, 56 epochs fitted to the minutes, no early stopping (float32)",
        model={"downsample": 2, "precision": "float32"},
        train=FITTED,
        epochs=2 / 3,
    ),
    "bf16_wider_longer_coarse": Variant(
        "resolution: bf16_wider_longer on scans at 2 mm",
        model={"precision": "bf16", "n_base_filters": 12, "downsample": 2},
        train=FITTED,
        epochs=1.5,
    ),
    "coarse_dice_ce_core": Variant(
        "resolution: dice_ce_core (Dice + CE, 0.3 of patches on the core) on scans at 2 mm",
        model={"downsample": 2},
        train={"loss": "dice_ce", "tumour_share": 0.3, "core_share": 0.3},
    ),
    # The levers that helped alone, together at 2 mm: bf16's speed spent on epochs (84, shrunk
    # to what the minutes hold: the defaults now), Dice + CE and patches on the core.
    "bf16_dice_ce_core": Variant(
        "combined: bf16_fitted and dice_ce_core on the defaults (scans at 2 mm)",
        model={"precision": "bf16"},
        train={"loss": "dice_ce", "tumour_share": 0.3, "core_share": 0.3},
    ),
    "regions": Variant(
        "lever: region outputs WT/TC/ET (nested sigmoids)", model={"output": "regions"}
    ),
    "dice_ce": Variant("lever: Dice + binary cross-entropy", train={"loss": "dice_ce"}),
    "dice_ce_core": Variant(
        "combined: Dice + binary cross-entropy, 0.3 of patches on the core, 0.3 on any tumour",
        train={"loss": "dice_ce", "tumour_share": 0.3, "core_share": 0.3},
    ),
    "deep_supervision": Variant(
        "lever: deep supervision, 2 auxiliary outputs", train={"deep_supervision": 2}
    ),
    "core": Variant(
        "lever: 0.3 of patches on the core, 0.3 on any tumour (not 0.6)",
        train={"tumour_share": 0.3, "core_share": 0.3},
    ),
    "instance": Variant(
        "lever: instance normalisation (not batch)", model={"normalization": "instance"}
    ),
    "sgd": Variant(
        "lever: SGD, Nesterov 0.99, lr 0.01, poly 0.9 (not Adam, cosine)",
        train={"optimizer": "sgd", "schedule": "poly", "learning_rate": 0.01},
    ),
    "xla": Variant("lever: XLA-compiled training step", train={"jit_compile": True}),
    "threads": Variant(
        "lever: 1 inter-op, 2 intra-op threads",
        train={"inter_op_threads": 1, "intra_op_threads": 2},
    ),
    # The levers the BraTS winners combine (nnU-Net's recipe), together.
    "brats_recipe": Variant(
        "recipe: region outputs, Dice + CE, deep supervision, instance norm., SGD + poly",
        model={"output": "regions", "normalization": "instance"},
        train={
            "loss": "dice_ce",
            "deep_supervision": 2,
            "optimizer": "sgd",
            "schedule": "poly",
            "learning_rate": 0.01,
        },
    ),
}
CHOSEN = [
    name.strip()
    for name in os.environ.get("TUMORSEG_ABLATION_VARIANTS", "").split(",")
    if name.strip()
] or list(VARIANTS)


def folder():
    return OUT / "ablation"


def run_folder(name: str, seed: int):
    """Where variant ``name`` trains with training seed ``seed`` (the minutes in the name: a
    shorter ablation trains runs of its own)."""
    return folder() / f"run-{name}-seed{seed}-{MINUTES:g}min"


def train_data(name: str):
    """The training phantoms of variant ``name`` (shared by the variants of the default
    generator and case count), written once."""
    from tumorseg.synthetic import DEFAULT, write_dataset

    variant = VARIANTS[name]
    cases = round(CASES * variant.cases)
    shared = not variant.generator and cases == CASES
    path = folder() / ("train-default" if shared else f"train-{name}")
    generator = replace(DEFAULT, **variant.generator) if variant.generator else "default"
    write_dataset(path, cases=cases, seed=0, progress=False, generator=generator)
    return path


def held_out(name: str, generator: str = "own"):
    """Held-out phantoms (``HELD_OUT`` cases) of variant ``name``'s own generator, or of the
    shifted one: seed 1 for a training generator, 2 for the shifted one, as
    :func:`benchmarks.bench_transfer.held_out`."""
    from tumorseg.synthetic import DEFAULT, write_dataset

    variant = VARIANTS[name]
    if generator == "shifted":
        key, spec, seed = "shifted", "shifted", 2
    elif variant.generator:
        key, spec, seed = f"own-{name}", replace(DEFAULT, **variant.generator), 1
    else:
        key, spec, seed = "own-default", "default", 1
    path = folder() / f"held-out-{key}-{HELD_OUT}"
    write_dataset(path, cases=HELD_OUT, seed=seed, progress=False, generator=spec)
    return path


def train_run(name: str, seed: int) -> None:
    """Train (or finish) variant ``name`` with training seed ``seed`` under
    build/bench/ablation/ (run by :func:`ablation` in a fresh process)."""
    from tumorseg.run import is_run, read_config
    from tumorseg.train import resume, train

    run = run_folder(name, seed)
    if is_run(run):
        trained = read_config(run)
        if trained.model != variant_config(name, seed, trained.data).model:
            raise SystemExit(f"{run}: trained with another network than {name}'s now; delete it")
        resume(run, verbose=0)
        return
    train(variant_config(name, seed, train_data(name)), run, verbose=0)


def variant_config(name: str, seed: int, data):
    """The :class:`~tumorseg.run.TrainConfig` of variant ``name`` with training seed ``seed``
    on the phantoms in ``data``: the `cpu` preset as `make run` trains it, uncalibrated (every
    run is scored at the default threshold: calibrating costs a minute of the run), and the
    variant's changes."""
    from tumorseg.patches import Augmentation
    from tumorseg.run import TrainConfig

    variant = VARIANTS[name]
    # The preset's epochs fit make run's minutes; a shorter ablation shortens the schedule too.
    epochs = TRAINING_PRESETS["cpu"]["epochs"] * variant.epochs * MINUTES / MAKE_RUN_MINUTES
    config = TrainConfig.from_preset(
        data,
        "cpu",
        time_limit_minutes=MINUTES * variant.minutes,
        seed=seed,
        epochs=max(1, round(epochs)),
        calibrate=False,
    )
    return replace(
        config,
        augmentation=replace(Augmentation(), **variant.augmentation),
        model=replace(config.model, **variant.model),
        **variant.train,
    )


def score_run(name: str, seed: int) -> dict:
    """Dice WT / TC / ET of one trained run on its own and the shifted held-out phantoms and on
    the real development pair; its epochs, steps per second and minutes."""
    from tumorseg import devset
    from tumorseg.inference import Predictor
    from tumorseg.run import read_config, read_state

    from .bench_transfer import dice_on

    run = run_folder(name, seed)
    state, config = read_state(run), read_config(run)
    predictor = Predictor.from_run(run)
    steps = state["epoch"] * config.steps_per_epoch
    return {
        "seed": seed,
        "epochs": state["epoch"],
        "ended": state["ended"],
        "steps_per_second": steps / state["training_seconds"],
        "minutes": state["training_seconds"] / 60,
        "own": dice_on(predictor, held_out(name)),
        "shifted": dice_on(predictor, held_out(name, "shifted")),
        "real": dice_on(predictor, devset.LABELLED),
    }


def spread(runs: list[dict], key: str) -> dict:
    """Mean and half range over seeds of each region's Dice in ``runs[i][key]``."""
    values = {region: [run[key][region] for run in runs] for region in REGIONS}
    return {
        region: {"mean": float(np.mean(v)), "half_range": float(np.ptp(v) / 2)}
        for region, v in values.items()
    }


def scored(name: str, seed: int) -> dict:
    """:func:`score_run`, kept beside the run (``score-<held-out cases>.json``): a repeated
    ablation scores each finished run once."""
    from tumorseg.atomic import atomic_path

    path = run_folder(name, seed) / f"score-{HELD_OUT}.json"
    if path.exists():
        return json.loads(path.read_text())
    score = score_run(name, seed)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(score, indent=2))
    return score


def ablation() -> dict:
    """Train and score each chosen variant; the result (``build/bench/ablation.json``) is
    written after each variant and keeps the variants of an earlier ablation with the same
    settings."""
    settings = {"minutes": MINUTES, "cases": CASES, "seeds": SEEDS, "held_out_cases": HELD_OUT}
    unknown = [name for name in CHOSEN if name not in VARIANTS]
    if unknown:
        raise SystemExit(
            f"TUMORSEG_ABLATION_VARIANTS: unknown {unknown}; known: {', '.join(VARIANTS)}"
        )
    earlier = OUT / "ablation.json"
    result = json.loads(earlier.read_text()) if earlier.exists() else {}
    if {key: result.get(key) for key in settings} != settings:
        result = settings | {"variants": {}}
    for name in CHOSEN:
        runs = []
        for seed in range(SEEDS):
            print(f"[ablation] {name}, seed {seed}", flush=True)
            training = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"from benchmarks.bench_ablation import train_run; train_run({name!r}, {seed})",
                ]
            )
            if training.returncode:
                raise SystemExit(f"[ablation] {name}, seed {seed}: training stopped (see above)")
            runs.append(scored(name, seed))
        result["variants"][name] = {
            "runs": runs,
            "cases": round(CASES * VARIANTS[name].cases),
            **{key: spread(runs, key) for key in ("own", "shifted", "real")},
            "steps_per_second": float(np.mean([r["steps_per_second"] for r in runs])),
            "minutes": float(np.mean([r["minutes"] for r in runs])),
        }
        save("ablation", result)
    return result


def report_ablation(r: dict) -> list[tuple[str, str, str]]:
    """One row per variant: Dice WT / TC / ET (mean +- half range over seeds) on own phantoms,
    shifted phantoms and the real pair; steps per second, minutes, epochs."""
    lines = []
    for name, variant in VARIANTS.items():
        if name not in r["variants"]:
            continue
        v = r["variants"][name]
        dice = "; ".join(
            f"{k} "
            + " / ".join(f"{v[k][g]['mean']:.3f}+-{v[k][g]['half_range']:.3f}" for g in REGIONS)
            for k in ("own", "shifted", "real")
        )
        epochs = "/".join(str(run["epochs"]) for run in v["runs"])
        lines.append(
            (
                f"cpu, {variant.what} ({len(v['runs'])} seeds)",
                f"Dice WT/TC/ET {dice}",
                f"{v['steps_per_second']:.2f} steps/s, {v['minutes']:.1f} min, "
                f"{v['cases']} cases, epochs {epochs}",
            )
        )
    return lines
