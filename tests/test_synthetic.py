"""The phantom generator's randomisations: each seeded and deterministic, each doing what it
says (orderings kept, thick slices averaged, mass effect pushing outward, several foci)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tumorseg import synthetic
from tumorseg.synthetic import DEFAULT, FIXED, SHIFTED, TISSUES


def rng(*key):
    return np.random.default_rng(list(key))


WIDENED = replace(DEFAULT, contrast_rules="widened")


@pytest.mark.parametrize(
    "randomisation", [DEFAULT, SHIFTED, WIDENED], ids=["default", "shifted", "widened"]
)
def test_drawn_contrasts_keep_every_ordering_and_vary(randomisation):
    draws = [synthetic.draw_contrast(rng(0, i), randomisation) for i in range(200)]
    assert all(synthetic.orderings_hold(c, randomisation) for c in draws)
    reference = synthetic.CONTRAST_RULES[randomisation.contrast_rules].reference
    spread = np.std(draws, axis=0) / reference
    assert (spread > 0.05).all(), "every tissue's intensity varies in every sequence"
    np.testing.assert_array_equal(draws[3], synthetic.draw_contrast(rng(0, 3), randomisation))
    t2 = synthetic.CHANNELS.index("T2")
    white, edema, csf = (TISSUES.index(n) for n in ("white", "edema", "csf"))
    assert all(c[white, t2] <= c[edema, t2] <= c[csf, t2] for c in draws)


def test_widened_rules_cover_the_real_tissue_ratios():
    """The real pair's ratios to white matter (README, "Real tissues vs phantoms") lie inside
    the widened rules' draws: grey 0.89-1.04 on FLAIR (the textbook's never fall below 1),
    edema 1.36-1.51 on FLAIR and 0.65-0.75 on T1."""
    grey, white, edema = (TISSUES.index(n) for n in ("grey", "white", "edema"))

    def ratios(randomisation, tissue, channel):
        draws = [synthetic.draw_contrast(rng(2, i), randomisation) for i in range(300)]
        return np.array([c[tissue, channel] / c[white, channel] for c in draws])

    assert ratios(DEFAULT, grey, 0).min() >= 1.0
    for randomisation in (DEFAULT, WIDENED):
        reference = synthetic.CONTRAST_RULES[randomisation.contrast_rules].reference
        assert synthetic.orderings_hold(reference, randomisation)
    for tissue, channel, (low, high) in (
        (grey, 0, (0.89, 1.04)),
        (edema, 0, (1.36, 1.51)),
        (edema, 1, (0.65, 0.75)),
    ):
        low_share, high_share = np.percentile(ratios(WIDENED, tissue, channel), (10, 90))
        assert low_share < low and high < high_share, (tissue, channel)
    with pytest.raises(ValueError, match="contrast_rules"):
        synthetic.Randomisation(contrast_rules="real")


def test_shifted_contrasts_lie_outside_the_training_range():
    def factors(r):
        return np.abs(np.log(synthetic.draw_contrast(rng(1), r) / synthetic.CONTRAST))

    assert SHIFTED.contrast[0] >= DEFAULT.contrast[1]
    for field in (
        "gamma",
        "noise",
        "blur",
        "bias",
        "radius",
        "irregularity",
        "mass_effect",
        "deformation",
        "texture",
        "scale",
    ):
        assert getattr(SHIFTED, field)[0] >= getattr(DEFAULT, field)[1], field
    assert factors(SHIFTED).mean() > factors(DEFAULT).mean()


@pytest.mark.parametrize(
    "function, args",
    [
        (synthetic.smooth_field, ((20, 18, 9), 6)),
        (synthetic.bias_field, ((20, 18, 9), 0.3)),
        (synthetic.draw_contrast, ()),
    ],
)
def test_each_random_function_is_seeded(function, args):
    a, b, c = (function(*args, rng(*key)) for key in ((5, 1), (5, 1), (5, 2)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_thick_slices_average_within_a_slice_and_keep_a_ramp():
    z = np.arange(30, dtype=np.float32)
    ramp = np.broadcast_to(z, (4, 5, 30)).copy()
    out = synthetic.thick_slices(ramp, axis=2, thickness=3, phase=1)
    np.testing.assert_allclose(out[..., 3:27], ramp[..., 3:27], atol=1e-4)  # linear survives
    stripes = np.broadcast_to((z % 2) * 2 - 1, (4, 5, 30)).astype(np.float32)
    thin = synthetic.thick_slices(stripes, axis=2, thickness=2, phase=0)
    assert np.abs(thin[..., 2:28]).max() < 1e-5  # detail finer than a slice is gone
    across = synthetic.thick_slices(np.moveaxis(ramp, 2, 0), axis=0, thickness=3, phase=1)
    np.testing.assert_allclose(np.moveaxis(across, 0, 2), out, atol=1e-5)


def test_mass_effect_pushes_the_anatomy_outward():
    shape = (40, 40, 40)
    centre = np.array([20.0, 20.0, 20.0])
    distance = np.linalg.norm(np.indices(shape) - centre[:, None, None, None], axis=0)
    ring = ((distance > 8) & (distance < 10)).astype(np.float32)
    tissue = {name: ring.copy() for name in ("t1", "grey", "white", "brain", "csf")}
    synthetic._mass_effect(tissue, centre, radius=8.0, strength=0.4)
    before = (distance * ring).sum() / ring.sum()
    after = (distance * tissue["white"]).sum() / tissue["white"].sum()
    assert after > before + 2, "the ring moved outward"
    untouched = {name: ring.copy() for name in ("t1", "grey", "white", "brain", "csf")}
    synthetic._mass_effect(untouched, centre, radius=8.0, strength=0.0)
    np.testing.assert_array_equal(untouched["white"], ring)


@pytest.fixture(scope="module")
def fixed_case():
    return synthetic.synthesize_case(0, 1, FIXED)


def test_synthesize_case_is_deterministic(fixed_case):
    image, label = synthetic.synthesize_case(0, 1, FIXED)
    np.testing.assert_array_equal(image, fixed_case[0])
    np.testing.assert_array_equal(label, fixed_case[1])
    other, _ = synthetic.synthesize_case(0, 2, FIXED)
    assert not np.array_equal(other, image)


@pytest.mark.parametrize(
    "name", ["contrast", "gamma", "thick slices", "mass effect", "vessels (T1gd)", "no enhancement"]
)
def test_each_randomisation_changes_the_case(name, fixed_case):
    """Each randomisation of the figure, on its own, changes the fixed case."""
    image, label = synthetic.synthesize_case(0, 1, replace(FIXED, **synthetic.SHOWCASE[name]))
    assert not np.array_equal(image, fixed_case[0])
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}


def test_several_foci_and_cysts_shape_the_label(fixed_case):
    from scipy import ndimage

    _, one = fixed_case
    _, three = synthetic.synthesize_case(0, 1, replace(FIXED, foci=(3, 3), radius=(10.0, 10.0)))
    _, single = synthetic.synthesize_case(0, 1, replace(FIXED, foci=(1, 1), radius=(10.0, 10.0)))
    assert np.count_nonzero(three) > np.count_nonzero(single)
    assert ndimage.label(one > 0)[1] >= 1
    _, cyst = synthetic.synthesize_case(0, 1, replace(FIXED, cyst_chance=1.0))
    assert np.count_nonzero(cyst == 2) > 0  # a cyst is tumour core (non-enhancing label)


def test_a_folder_of_other_generator_ranges_is_refused(tmp_path):
    from tumorseg.errors import InputError

    synthetic.write_dataset(tmp_path, cases=0, seed=0, progress=False, generator=FIXED)
    synthetic.write_dataset(tmp_path, cases=0, seed=0, progress=False, generator=FIXED)  # same
    with pytest.raises(InputError, match="dataset.json.*other custom generator ranges"):
        synthetic.write_dataset(
            tmp_path, cases=0, seed=0, progress=False, generator=replace(FIXED, radius=(3.0, 3.0))
        )
    with pytest.raises(InputError, match="of the custom generator, not default"):
        synthetic.write_dataset(tmp_path, cases=0, seed=0, progress=False)
    manifest = tmp_path / "dataset.json"  # as written before the contrast rules were recorded
    values = json.loads(manifest.read_text())
    del values["randomisation"]["contrast_rules"]
    manifest.write_text(json.dumps(values))
    synthetic.write_dataset(tmp_path, cases=0, seed=0, progress=False, generator=FIXED)
    manifest.write_text(json.dumps(values))
    with pytest.raises(InputError, match="other custom generator ranges"):
        widened = replace(FIXED, contrast_rules="widened")
        synthetic.write_dataset(tmp_path, cases=0, seed=0, progress=False, generator=widened)
    # as written before the ranges were recorded
    del values["randomisation"]
    manifest.write_text(json.dumps(values))
    with pytest.raises(InputError, match="other custom generator ranges"):
        synthetic.write_dataset(tmp_path, cases=0, seed=0, progress=False, generator=FIXED)


def test_an_interrupted_folder_is_refused_for_another_seed(tmp_path, monkeypatch):
    from tumorseg.errors import InputError

    written = []

    def interrupted(out, seed, index, case_id, randomisation):
        if written == ["BRATS_001"]:  # the first run stops during its second case
            written.append("stop")
            raise KeyboardInterrupt
        written.append(case_id)
        for folder in ("imagesTr", "labelsTr"):
            (out / folder).mkdir(parents=True, exist_ok=True)
            (out / folder / f"{case_id}.nii.gz").write_bytes(b"case")

    monkeypatch.setattr(synthetic, "_write_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_dataset(tmp_path, cases=3, seed=0, progress=False, workers=1)
    assert written == ["BRATS_001", "stop"]
    with pytest.raises(InputError, match="dataset.json.*seed 0, not 1"):
        synthetic.write_dataset(tmp_path, cases=3, seed=1, progress=False, workers=1)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        synthetic.write_dataset(tmp_path / "negative", cases=1, seed=-1, progress=False)


def test_synth_workers_are_bounded_by_memory_and_cores():
    gb = synthetic.WORKER_MEMORY
    assert synthetic.default_workers(cores=16, available=2.5 * gb) == 2
    assert synthetic.default_workers(cores=2, available=100 * gb) == 2
    assert synthetic.default_workers(cores=8, available=0.3 * gb) == 1
    assert synthetic.default_workers(cores=3) >= 1  # this machine's memory


def test_upsample_linear_matches_ndimage_zoom():
    from scipy import ndimage

    small = rng(3).standard_normal((5, 7, 4)).astype(np.float32)
    for shape in ((17, 26, 13), (20, 28, 16), (5, 7, 4)):
        zoomed = ndimage.zoom(small, [s / t for s, t in zip(shape, small.shape)], order=1)
        np.testing.assert_allclose(synthetic.upsample_linear(small, shape), zoomed, atol=1e-5)
