"""tumorseg.model: the seed's U-Net, its options and presets."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tumorseg.model import PRESETS, ModelConfig, build_model, forward_flops, unet_model_3d


def test_seed_preset_is_the_seeds_model():
    model = build_model("seed")
    assert model.count_params() == 16_318_307
    assert model.input_shape == (None, 160, 160, 16, 4)
    assert model.output_shape == (None, 160, 160, 16, 3)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert forward_flops(model) == pytest.approx(741.92e9, rel=1e-3)


def test_architecture_levels():
    model = unet_model_3d(input_shape=(16, 16, 16, 4), n_base_filters=4)
    convs = {layer.name: layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)}
    # contracting: n then 2n filters, n doubling per level
    assert [convs[f"down{d}{ab}_conv"].filters for d in range(4) for ab in "ab"] == [
        4,
        8,
        8,
        16,
        16,
        32,
        32,
        64,
    ]
    # expanding: as many filters as the same-level contracting output
    assert [convs[f"up{d}{ab}_conv"].filters for d in (2, 1, 0) for ab in "ab"] == [
        32,
        32,
        16,
        16,
        8,
        8,
    ]
    assert all(c.kernel_size == (3, 3, 3) for n, c in convs.items() if n != "logits")
    assert convs["logits"].kernel_size == (1, 1, 1) and convs["logits"].filters == 3
    assert sum(isinstance(layer, keras.layers.MaxPooling3D) for layer in model.layers) == 3
    assert sum(isinstance(layer, keras.layers.UpSampling3D) for layer in model.layers) == 3


def test_free_input_size_and_options():
    model = unet_model_3d(
        input_shape=(None, None, None, 4),
        n_base_filters=2,
        normalization="instance",
        deconvolution=True,
    )
    for shape in ((8, 16, 24), (16, 8, 8)):
        out = model(np.zeros((1, *shape, 4), np.float32))
        assert out.shape == (1, *shape, 3)
    assert any(isinstance(layer, keras.layers.Conv3DTranspose) for layer in model.layers)
    assert any(isinstance(layer, keras.layers.GroupNormalization) for layer in model.layers)
    batch = unet_model_3d(input_shape=(8, 8, 8, 4), n_base_filters=2, normalization="batch")
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in batch.layers)
    with pytest.raises(ValueError, match="divisible by 8"):
        unet_model_3d(input_shape=(12, 16, 16, 4))


def test_bf16_keeps_float32_probabilities():
    model = build_model(ModelConfig(patch_shape=(16, 16, 16), n_base_filters=2, precision="bf16"))
    assert model.layers[1].compute_dtype == "bfloat16"
    out = model(np.random.default_rng(0).random((1, 16, 16, 16, 4)).astype(np.float32))
    assert out.dtype == "float32"
    assert np.all((np.asarray(out) >= 0) & (np.asarray(out) <= 1))


def test_cpu_preset_is_the_same_architecture_smaller():
    cpu = PRESETS["cpu"]
    assert cpu.depth == PRESETS["seed"].depth and cpu.n_labels == 3
    model = build_model("cpu")
    assert model.count_params() < 2_000_000
    assert forward_flops(model) < forward_flops(build_model("seed")) / 20


def test_config_round_trips_through_json():
    import json

    config = PRESETS["cpu"]
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# ----------------------------------------------------------------------------- training levers

LEVER_NET = ModelConfig(patch_shape=(16, 16, 8), n_base_filters=2, depth=3)


def test_region_outputs_are_recorded_in_the_network():
    from tumorseg.inference import config_from_model

    regions = build_model(ModelConfig(**{**LEVER_NET.to_dict(), "output": "regions"}))
    assert "region_probabilities" in [layer.name for layer in regions.layers]
    assert config_from_model(regions).output == "regions"
    assert config_from_model(build_model(LEVER_NET)).output == "classes"
    with pytest.raises(ValueError, match="output must be one of"):
        unet_model_3d(input_shape=(16, 16, 8, 4), output="labels")


def test_instance_normalisation_is_per_example_and_batch_normalisation_is_not():
    """In training mode an example's output does not depend on the others in its batch under
    instance normalisation; under batch normalisation it does."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16, 8, 4)).astype(np.float32)
    other = x.copy()
    other[1] = rng.normal(size=x[1].shape) * 3 + 1
    for norm, independent in (("instance", True), ("batch", False)):
        model = build_model(ModelConfig(**{**LEVER_NET.to_dict(), "normalization": norm}))
        first = np.asarray(model(x, training=True))[0]
        again = np.asarray(model(other, training=True))[0]
        assert np.allclose(first, again, atol=1e-5) == independent, norm


def test_deep_supervision_adds_full_size_outputs_and_the_saved_net_has_one(tmp_path):
    from tumorseg.model import add_deep_supervision, load_model, main_output

    model = build_model(LEVER_NET)
    assert add_deep_supervision(model, 0) is model
    twin = add_deep_supervision(model, 1)
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 8, 4)).astype(np.float32)
    outputs = twin(x)
    assert len(outputs) == 2 and all(tuple(o.shape) == (1, 16, 16, 8, 3) for o in outputs)
    assert not np.allclose(outputs[0], outputs[1])
    net = main_output(twin)
    np.testing.assert_allclose(np.asarray(net(x)), np.asarray(model(x)), atol=1e-6)
    net.save(tmp_path / "net.keras")
    loaded = load_model(tmp_path / "net.keras")
    assert len(loaded.outputs) == 1 and len(loaded.get_weights()) == len(model.get_weights())


def test_importing_tumorseg_turns_on_onednn_unless_told_otherwise():
    import os
    import subprocess
    import sys

    code = "import os, tumorseg; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    for given, expected in ((None, "1"), ("0", "0")):
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        env |= {"TF_ENABLE_ONEDNN_OPTS": given} if given else {}
        command = [sys.executable, "-c", code]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        assert result.stdout.strip() == expected, (given, result.stdout, result.stderr[-500:])
