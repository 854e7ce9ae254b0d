"""What the phantom-trained model needs, measured: the `cpu` preset trained as `make run` trains
it (32 cases, the same time limit) on variants of the generator's ranges and of the patch
augmentation, each scored on held-out phantoms of its own generator and of the shifted one
(:func:`benchmarks.bench_transfer.dice_on`, no TTA).

Long (one `make run`-length training per variant: about 20 minutes each, 80 in all, on two
cores), so plain `make bench` leaves it out: `python -m benchmarks ablation`.
``TUMORSEG_ABLATION_MINUTES`` and ``TUMORSEG_ABLATION_CASES`` shorten it (defaults 15 and 32, as
`make run`). A finished variant is not trained again.
"""

from __future__ import annotations

import os
from dataclasses import replace

from .bench_transfer import HELD_OUT, dice_on, held_out
from .common import OUT, save

MINUTES = float(os.environ.get("TUMORSEG_ABLATION_MINUTES", 15))
CASES = int(os.environ.get("TUMORSEG_ABLATION_CASES", 32))
# name -> (what differs, generator overrides, patch augmentation overrides)
STRONG = {"gamma": 0.3, "bias": 0.2, "blur": 0.8}  # the patch augmentation before
VARIANTS = {
    "before": ("radius 3-24 mm, patch gamma/bias/blur 0.3/0.2/0.8 (the defaults before)",
               {"radius": (3.0, 24.0)}, STRONG),
    "radius": ("radius 8-24 mm, patch gamma/bias/blur 0.3/0.2/0.8", {}, STRONG),
    "half": ("radius 8-24 mm, patch gamma/bias/blur 0.15/0.1/0.4", {},
             {name: value / 2 for name, value in STRONG.items()}),
    "default": ("radius 8-24 mm, no patch gamma/bias/blur (the defaults now)", {},
                {name: 0.0 for name in STRONG}),
}


def train_variant(name: str) -> dict:
    """Train (or finish) variant ``name`` under build/bench/ablation/; its Dice on its own and
    the shifted generator's held-out phantoms."""
    from tumorseg.inference import Predictor
    from tumorseg.patches import Augmentation
    from tumorseg.synthetic import DEFAULT, write_dataset
    from tumorseg.train import TrainConfig, resume, train

    _, overrides, augmentation = VARIANTS[name]
    randomisation = replace(DEFAULT, **overrides)
    data = OUT / "ablation" / (f"data-{name}" if overrides else "data-default")
    write_dataset(data / "train", cases=CASES, seed=0, progress=False, generator=randomisation)
    write_dataset(data / "held-out", cases=HELD_OUT, seed=1, progress=False,
                  generator=randomisation)
    run = OUT / "ablation" / f"run-{name}"
    if (run / "config.json").exists():
        state = resume(run, verbose=0)
    else:
        config = TrainConfig.from_preset(data / "train", "cpu", time_limit_minutes=MINUTES)
        config = replace(config, augmentation=replace(Augmentation(), **augmentation))
        state = train(config, run, verbose=0)
    predictor = Predictor.from_run(run)
    return {"epochs": state["epoch"], "ended": state["ended"],
            "own": dice_on(predictor, data / "held-out"),
            "shifted": dice_on(predictor, held_out("shifted"))}


def ablation() -> dict:
    result = {"minutes": MINUTES, "cases": CASES, "held_out_cases": HELD_OUT}
    for name in VARIANTS:
        result[name] = train_variant(name)
    return save("ablation", result)


def report_ablation(r: dict) -> list[tuple[str, str, str]]:
    lines = []
    for name, (what, _, _) in VARIANTS.items():
        v = r[name]
        dice = " / ".join(" ".join(f"{v[k][region]:.3f}" for region in ("WT", "TC", "ET"))
                          for k in ("own", "shifted"))
        lines.append((f"cpu, {r['minutes']:g} min, {what}", f"Dice own / shifted {dice}",
                      f"{v['epochs']} epochs, {v['ended']}"))
    return lines
