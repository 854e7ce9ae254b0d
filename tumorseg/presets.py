"""Every preset and default of a run, in one place (no TensorFlow import: the CLI reads it).

A run is a network (:class:`ModelConfig`) and the settings that train it. The ``seed`` preset is
the seed's exact configuration, for a GPU; ``cpu`` is small enough to train on two CPU cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

SEED_PATCH_SHAPE = (160, 160, 16)  # the seed's training patch (x, y, z)
DEFAULT_PRESET = "cpu"
STRATEGIES = ("default", "mirrored", "multiworker")
# Precisions by their one name; the Keras dtype policy each runs under.
KERAS_POLICIES = {"float32": "float32", "bf16": "mixed_bfloat16"}
PRECISIONS = tuple(KERAS_POLICIES)
DEFAULT_THRESHOLD = 0.5  # of a label map, where a run has none calibrated
# What the network's three sigmoids mean: the seed's classes (edema, non-enhancing, enhancing)
# or the nested BraTS regions (whole tumour, tumour core, enhancing tumour).
OUTPUTS = ("classes", "regions")
LOSSES = ("dice", "dice_ce")  # soft Dice (the seed's); plus binary cross-entropy
OPTIMIZERS = ("adam", "sgd")  # sgd: nnU-Net's, Nesterov momentum SGD_MOMENTUM
SCHEDULES = ("cosine", "poly")  # poly: nnU-Net's (1 - epoch / epochs) ** POLY_EXPONENT
SGD_MOMENTUM = 0.99
POLY_EXPONENT = 0.9
# CPU instruction sets that compute bfloat16 natively (Linux's names in /proc/cpuinfo's flags).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (:data:`BF16_FLAGS`), from ``cpuinfo`` (the
    text of /proc/cpuinfo; default: this machine's, False where there is none). Elsewhere
    TensorFlow emulates bfloat16, tens of times slower than float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {
        flag
        for line in cpuinfo.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }
    return any(flag in flags for flag in BF16_FLAGS)


# The cpu preset's precision on this machine: mixed bfloat16 where the CPU has it natively.
CPU_PRECISION = "bf16" if native_bf16() else "float32"


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a network; saved with every run (``config.json``)."""

    patch_shape: tuple[int, int, int] = SEED_PATCH_SHAPE
    n_channels: int = 4
    n_labels: int = 3
    depth: int = 4
    n_base_filters: int = 32
    normalization: str | None = None  # None, "batch" or "instance"
    deconvolution: bool = False
    precision: str = "float32"  # or "bf16" (PRECISIONS): mixed bfloat16, training included
    output: str = "classes"  # or "regions" (OUTPUTS)
    # The network sees scans at 1 / downsample of their voxels per axis (block means; its
    # probabilities interpolated back): tumorseg.resample.
    downsample: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        values = dict(values)
        values["patch_shape"] = tuple(values["patch_shape"])
        return cls(**values)


PRESETS = {
    # The seed's exact network, for a GPU.
    "seed": ModelConfig(),
    # Small enough for two CPU cores: fewer filters and a smaller patch; same architecture. The
    # scans at 2 mm: a patch covers 128x128x64 mm at the same cost per step (README, the
    # resolution ablation: own phantoms and the real tumour core up, three training seeds).
    # Mixed bfloat16 where the CPU has it (AVX-512 BF16, AMX): 1.3x the steps of float32 (README,
    # the bf16 ablation); float32 on other CPUs, which emulate bf16 (README: 60x slower).
    "cpu": ModelConfig(
        patch_shape=(64, 64, 32),
        n_base_filters=8,
        normalization="batch",
        precision=CPU_PRECISION,
        downsample=2,
    ),
}

TRAINING_PRESETS = {
    # Two CPU cores: 0.5-1.5 s per step of 4 patches of 64x64x32, validation included (one
    # machine, 2026-12-02 to 12-07). Training stops at 15 minutes; the cosine schedule shrinks to
    # the epochs they hold (69-71 of the 84 in bf16 at 2 mm, 2026-12-07) and runs to its end,
    # with no early stop (README, the resolution ablation's coarse_longer: three training seeds).
    "cpu": dict(
        epochs=84,
        steps_per_epoch=25,
        batch_size=4,
        learning_rate=2e-3,
        time_limit_minutes=15,
        fit_to_time_limit=True,
        early_stopping_patience=0,
    ),
    # The seed's full model and patches, for a GPU: batches of 3 patches, 20 steps an epoch.
    "seed": dict(epochs=100, steps_per_epoch=20, batch_size=3, learning_rate=1e-4),
}
