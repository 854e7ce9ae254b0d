"""What the phantom-trained model needs, measured: the `cpu` preset trained as `make run` trains
it (32 cases, the same time limit) on variants of the generator's ranges, the patch
augmentation, the number of cases, the training time and the network's width, each scored on
held-out phantoms of its own generator and of the shifted one
(:func:`benchmarks.bench_transfer.dice_on`, no TTA), with its prediction on the real cases in
``../shared/real`` when that folder exists.

Long (one `make run`-length training or more per variant: about 20 minutes each, 2.7 hours in
all, on two cores), so plain `make bench` leaves it out: `python -m benchmarks ablation`.
``TUMORSEG_ABLATION_MINUTES`` and ``TUMORSEG_ABLATION_CASES`` shorten it (defaults 15 and 32, as
`make run`). A finished variant is not trained again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from .bench_transfer import HELD_OUT, dice_on, held_out, real_pictures
from .common import OUT, save

MINUTES = float(os.environ.get("TUMORSEG_ABLATION_MINUTES", 15))
CASES = int(os.environ.get("TUMORSEG_ABLATION_CASES", 32))
STRONG = {"gamma": 0.3, "bias": 0.2, "blur": 0.8}  # the patch augmentation before
NONE = {name: 0.0 for name in STRONG}  # the defaults now


@dataclass(frozen=True)
class Variant:
    """One training of the ablation: overrides of the generator's ranges, the patch
    augmentation, the network and the other training settings, and multiples of `make run`'s
    cases, epochs and minutes."""

    what: str
    generator: dict = field(default_factory=dict)
    augmentation: dict = field(default_factory=lambda: NONE)
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    cases: float = 1.0
    epochs: float = 1.0
    minutes: float = 1.0


VARIANTS = {
    "before": Variant("radius 3-24 mm, patch gamma/bias/blur 0.3/0.2/0.8 (the defaults before)",
                      {"radius": (3.0, 24.0)}, STRONG),
    "radius": Variant("radius 8-24 mm, patch gamma/bias/blur 0.3/0.2/0.8", augmentation=STRONG),
    "half": Variant("radius 8-24 mm, patch gamma/bias/blur 0.15/0.1/0.4",
                    augmentation={name: value / 2 for name, value in STRONG.items()}),
    "default": Variant("radius 8-24 mm, no patch gamma/bias/blur (the defaults now)"),
    "cases": Variant("the defaults, twice the cases", cases=2),
    # Early stopping's patience doubles too: with 8 it ended the 56 epochs at 27.
    "longer": Variant("the defaults, twice the epochs, minutes and early-stopping patience",
                      train={"early_stopping_patience": 16}, epochs=2, minutes=2),
    "wider": Variant("the defaults, 12 base filters (not 8), half the epochs in the same minutes",
                     model={"n_base_filters": 12}, epochs=0.5),
}


def train_variant(name: str) -> dict:
    """Train (or finish) variant ``name`` under build/bench/ablation/; its Dice on its own and
    the shifted generator's held-out phantoms, and its prediction on the real cases
    (:func:`benchmarks.bench_transfer.real_pictures`; none without ``../shared/real``)."""
    from tumorseg.inference import Predictor
    from tumorseg.patches import Augmentation
    from tumorseg.presets import TRAINING_PRESETS
    from tumorseg.run import is_run
    from tumorseg.synthetic import DEFAULT, write_dataset
    from tumorseg.train import TrainConfig, resume, train

    variant = VARIANTS[name]
    folder = OUT / "ablation"
    cases = round(CASES * variant.cases)
    if variant.generator:
        generator = replace(DEFAULT, **variant.generator)
        held_out_data = folder / f"held-out-{name}"
        write_dataset(held_out_data, cases=HELD_OUT, seed=1, progress=False, generator=generator)
    else:  # the transfer benchmark's held-out phantoms, made once for both
        generator, held_out_data = "default", held_out("default")
    shared = not variant.generator and cases == CASES
    train_data = folder / ("train-default" if shared else f"train-{name}")
    write_dataset(train_data, cases=cases, seed=0, progress=False, generator=generator)
    run = folder / f"run-{name}"
    if is_run(run):
        state = resume(run, verbose=0)
    else:
        config = TrainConfig.from_preset(
            train_data, "cpu", time_limit_minutes=MINUTES * variant.minutes,
            epochs=max(1, round(TRAINING_PRESETS["cpu"]["epochs"] * variant.epochs)),
            **variant.train)
        config = replace(config, augmentation=replace(Augmentation(), **variant.augmentation),
                         model=replace(config.model, **variant.model))
        state = train(config, run, verbose=0)
    predictor = Predictor.from_run(run)
    return {"epochs": state["epoch"], "ended": state["ended"], "cases": cases,
            "own": dice_on(predictor, held_out_data),
            "shifted": dice_on(predictor, held_out("shifted")),
            "real": real_pictures(predictor, run, folder / f"real-{name}")}


def ablation() -> dict:
    result = {"minutes": MINUTES, "cases": CASES, "held_out_cases": HELD_OUT}
    for name in VARIANTS:
        result[name] = train_variant(name)
    return save("ablation", result)


def report_ablation(r: dict) -> list[tuple[str, str, str]]:
    lines = []
    for name, variant in VARIANTS.items():
        v = r[name]
        dice = " / ".join(" ".join(f"{v[k][region]:.3f}" for region in ("WT", "TC", "ET"))
                          for k in ("own", "shifted"))
        real = "; ".join(f"real {c['edema_cm3']:.0f}/{c['non_enhancing_cm3']:.0f}/"
                         f"{c['enhancing_cm3']:.0f} cm3" for c in v["real"])
        lines.append((f"cpu, {variant.what}", f"Dice own / shifted {dice}",
                      f"{v['cases']} cases, {v['epochs']} epochs, {v['ended']}"
                      + (f"; {real}" if real else "")))
    return lines
