"""tumorseg.patches: sub-volumes on volumes with known answers, standardisation, the pipeline."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import replace

import numpy as np
import pytest

from tumorseg import patches
from tumorseg.data import find_cases


def coordinate_volume(shape):
    """(x, y, z, 4): channels hold x, y, z and x*y*z of each voxel."""
    x, y, z = np.indices(shape, dtype=np.float32)
    return np.stack([x, y, z, x * y * z], axis=-1)


def brute_force_corners(label, window, threshold):
    """Every qualifying corner, by counting each window directly."""
    volume = np.prod(window)
    found = []
    for corner in itertools.product(*(range(s - w + 1) for s, w in zip(label.shape, window))):
        box = tuple(slice(c, c + w) for c, w in zip(corner, window))
        if np.sum(label[box] == 0) / volume < threshold:
            found.append(corner)
    return found


def test_patch_is_the_image_cut_at_one_offset_with_its_one_hot_label():
    shape = (40, 36, 20)
    image = coordinate_volume(shape)
    label = np.zeros(shape, np.uint8)
    label[10:30, 8:20, 5:15] = 1
    label[15:25, 10:15, 8:12] = 2
    label[18:22, 11:13, 9:11] = 3
    rng = np.random.default_rng(0)
    for _ in range(30):
        X, y = patches.get_sub_volume(
            image, label, *shape, 16, 16, 8, background_threshold=0.9, rng=rng
        )
        x0, y0, z0 = (int(X[0, 0, 0, a]) for a in range(3))
        box = (slice(x0, x0 + 16), slice(y0, y0 + 16), slice(z0, z0 + 8))
        np.testing.assert_array_equal(X, image[box])
        expected = np.stack([label[box] == c for c in (1, 2, 3)], -1).astype(np.float32)
        np.testing.assert_array_equal(y, expected)
        assert np.mean(label[box] == 0) < 0.9
        assert X.dtype == np.float32 and y.dtype == np.float32 and X.flags.c_contiguous


def test_exact_search_finds_the_only_qualifying_window():
    shape = (30, 30, 12)
    label = np.zeros(shape, np.uint8)
    label[3:9, 20:26, 2:6] = 3  # 144 voxels: only windows containing all of it qualify
    window, threshold = (6, 6, 4), 0.01
    assert brute_force_corners(label, window, threshold) == [(3, 20, 2)]
    for seed in range(5):
        corner = patches.find_window(
            label, window, threshold, np.random.default_rng(seed), fast_tries=0
        )
        assert corner == (3, 20, 2)
    X, y = patches.get_sub_volume(
        coordinate_volume(shape),
        label,
        *shape,
        *window,
        background_threshold=threshold,
        max_tries=1,
    )
    assert y[..., 2].all()


def test_none_only_where_no_window_qualifies():
    shape = (20, 20, 10)
    label = np.zeros(shape, np.uint8)
    label[2:4, 2:4, 2:4] = 1  # 8 voxels in a 4x4x4 window of 64: background 0.875
    assert patches.find_window(label, (4, 4, 4), 0.88) is not None
    assert brute_force_corners(label, (4, 4, 4), 0.87) == []
    with pytest.warns(UserWarning, match="no 4x4x4 window"):
        assert (
            patches.get_sub_volume(
                coordinate_volume(shape), label, *shape, 4, 4, 4, background_threshold=0.87
            )
            is None
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            patches.get_sub_volume(
                coordinate_volume(shape),
                label,
                *shape,
                4,
                4,
                4,
                background_threshold=0.88,
                max_tries=1,
            )
            is not None
        )


def test_find_window_agrees_with_brute_force_and_is_uniform():
    rng = np.random.default_rng(3)
    for trial in range(4):
        label = (rng.random((14, 12, 8)) > 0.93).astype(np.uint8)
        window, threshold = (5, 4, 3), 0.88
        expected = set(brute_force_corners(label, window, threshold))
        draws = [
            patches.find_window(label, window, threshold, rng, fast_tries=trial * 4)
            for _ in range(60 * max(len(expected), 1))
        ]
        if not expected:
            assert set(draws) == {None}
            continue
        assert set(draws) <= expected
        counts = np.array([draws.count(c) for c in sorted(expected)])
        assert counts.min() > 0  # every qualifying window can come out
        # each window has probability 1/n: counts ~ Binomial(60 n, 1/n), mean 60, sd < 8
        assert np.all(np.abs(counts - 60) < 40)


def test_window_sums_match_direct_sums():
    mask = np.random.default_rng(1).random((9, 8, 7)) > 0.5
    sums = patches.window_sums(mask, (3, 4, 2))
    assert sums.shape == (7, 5, 6)
    for corner in [(0, 0, 0), (6, 4, 5), (3, 2, 1)]:
        box = tuple(slice(c, c + w) for c, w in zip(corner, (3, 4, 2)))
        assert sums[corner] == mask[box].sum()


def test_standardize_statistics():
    rng = np.random.default_rng(0)
    image = rng.normal(300, 80, (20, 18, 6, 4)).astype(np.float32) * np.arange(1, 7)[:, None]
    image[:, :, 3, 1] = 42.0
    out = patches.standardize(image)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0, atol=1e-5)
    std = out.std(axis=(0, 1))
    assert std[3, 1] == 0 and np.all(out[:, :, 3, 1] == 0)
    std[3, 1] = 1
    np.testing.assert_allclose(std, 1, atol=1e-4)


def test_augment_switches():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 8, 4, 4)).astype(np.float32)
    y = (rng.random((8, 8, 4, 3)) > 0.5).astype(np.float32)
    same_x, same_y = patches.augment(x, y, rng, patches.NO_AUGMENTATION)
    np.testing.assert_array_equal(same_x, x)
    np.testing.assert_array_equal(same_y, y)
    flips = 0
    for _ in range(20):
        ax, ay = patches.augment(x, y, rng, replace(patches.NO_AUGMENTATION, flip=True))
        flipped = np.array_equal(ax, x[::-1])
        assert flipped or np.array_equal(ax, x)
        np.testing.assert_array_equal(ay, y[::-1] if flipped else y)
        flips += flipped
    assert 0 < flips < 20
    noisy, _ = patches.augment(x, y, rng, replace(patches.NO_AUGMENTATION, noise=0.05))
    assert not np.array_equal(noisy, x) and np.abs(noisy - x).max() < 1.0


@pytest.mark.parametrize(
    "name, value",
    [("scale", 0.1), ("shift", 0.1), ("noise", 0.05), ("gamma", 0.3), ("bias", 0.2), ("blur", 0.8)],
)
def test_each_augmentation_is_seeded_and_keeps_the_background(name, value):
    rng = np.random.default_rng(0)
    x = np.full((16, 16, 8, 2), -5.0, np.float32)  # background at the minimum
    x[3:13, 3:13] = rng.standard_normal((10, 10, 8, 2))
    y = np.zeros((16, 16, 8, 3), np.float32)
    setting = replace(patches.NO_AUGMENTATION, **{name: value})
    first, _ = patches.augment(x, y, np.random.default_rng([1, 2]), setting)
    again, _ = patches.augment(x, y, np.random.default_rng([1, 2]), setting)
    other, _ = patches.augment(x, y, np.random.default_rng([1, 3]), setting)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, x) and not np.array_equal(first, other)
    if name in ("gamma", "bias"):  # act between each channel's minimum and maximum
        np.testing.assert_allclose(first[0, 0], x[0, 0])


def test_brain_box_and_padding():
    image = np.zeros((30, 30, 20, 4), np.float32)
    image[10:20, 5:25, 8:12, 1] = 1
    box = patches.brain_box(image)
    assert box == (slice(10, 20), slice(5, 25), slice(8, 12))
    grown = patches.brain_box(image, (16, 8, 10))
    assert [s.stop - s.start for s in grown] == [16, 20, 10]
    assert grown[0].start <= 10 and grown[0].stop >= 20
    assert patches.pad_to(np.ones((3, 4, 5)), (5, 4, 6)).shape == (5, 4, 6)


def test_cache_is_cropped_memory_mapped_and_reused(tumour_dataset, tmp_path):
    case = find_cases(tumour_dataset)[0]
    cached = patches.cache_case(case, tmp_path / "cache", (16, 16, 8))
    assert isinstance(cached.image, np.memmap) and cached.image.shape == (40, 32, 20, 4)
    assert cached.label.shape == (40, 32, 20) and cached.tumour.size == np.count_nonzero(
        cached.label
    )
    folder = tmp_path / "cache" / "16x16x8-downsample1"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["BRATS_000.image.npy", "BRATS_000.label.npy", "BRATS_000.tumour.npy"]
    mtime = (folder / "BRATS_000.image.npy").stat().st_mtime_ns
    patches.cache_case(case, tmp_path / "cache", (16, 16, 8))
    assert (folder / "BRATS_000.image.npy").stat().st_mtime_ns == mtime
    # Other settings, the same cache_dir: cached anew, never the other settings' arrays.
    coarse = patches.cache_case(case, tmp_path / "cache", (16, 16, 8), downsample=2)
    assert coarse.image.shape == (20, 16, 10, 4)


def make_sampler(dataset, cache, **kwargs):
    cases = [patches.cache_case(c, cache, (16, 16, 8)) for c in find_cases(dataset)]
    return patches.PatchSampler(cases, (16, 16, 8), **kwargs)


def test_sampler_is_deterministic_and_centres_on_tumour(tumour_dataset, tmp_path):
    sampler = make_sampler(tumour_dataset, tmp_path / "cache", tumour_share=1.0, seed=4)
    again = make_sampler(tumour_dataset, tmp_path / "cache", tumour_share=1.0, seed=4)
    other = make_sampler(tumour_dataset, tmp_path / "cache", tumour_share=1.0, seed=5)
    for i in range(5):
        x, y = sampler(i)
        assert x.shape == (16, 16, 8, 4) and y.shape == (16, 16, 8, 3)
        assert y.any(), "a tumour-centred patch holds tumour"
        np.testing.assert_array_equal(x, again(i)[0])
    assert not np.array_equal(sampler(0)[0], other(0)[0])
    plain = make_sampler(
        tumour_dataset, tmp_path / "cache", tumour_share=0.0, augmentation=patches.NO_AUGMENTATION
    )
    x, _ = plain(0)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), 0, atol=1e-4)  # standardised per slice


def test_tf_pipeline_is_deterministic_and_resumable(tumour_dataset, tmp_path):
    sampler = make_sampler(tumour_dataset, tmp_path / "cache", seed=1)
    first = list(patches.training_dataset(sampler, batch_size=2, count=8).as_numpy_iterator())
    second = list(patches.training_dataset(sampler, batch_size=2, count=8).as_numpy_iterator())
    assert len(first) == 4 and first[0][0].shape == (2, 16, 16, 8, 4)
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    resumed = list(
        patches.training_dataset(sampler, batch_size=2, start=4, count=4).as_numpy_iterator()
    )
    np.testing.assert_array_equal(resumed[0][0], first[2][0])


def test_bounding_box_of_non_zero_voxels_with_margin():
    mask = np.zeros((20, 18, 12), np.float32)
    assert patches.bounding_box(mask) is None
    mask[3, 5:9, 11] = -0.5  # negative values count as non-zero
    mask[7, 6, 4] = 2.0
    assert patches.bounding_box(mask) == (slice(3, 8), slice(5, 9), slice(4, 12))
    assert patches.bounding_box(mask, margin=2) == (slice(1, 10), slice(3, 11), slice(2, 12))
    assert patches.bounding_box(mask != 0, margin=(0, 1, 9)) == (
        slice(3, 8),
        slice(4, 10),
        slice(0, 12),
    )
    label = (mask != 0).astype(np.uint8)
    assert patches.bounding_box(label) == patches.bounding_box(mask)
    assert patches.bounding_box(np.ones((4, 5))) == (slice(0, 4), slice(0, 5))


def test_core_share_centres_patches_on_the_core(tumour_dataset, tmp_path):
    """The fixture's tumour is edema around a small enhancing core (label 3): with
    ``core_share=1`` every patch holds core; tumour-centred patches often hold only edema. With
    ``core_share=0`` the patches are those of a sampler without the setting."""
    core = make_sampler(
        tumour_dataset,
        tmp_path / "cache",
        tumour_share=0.0,
        core_share=1.0,
        augmentation=patches.NO_AUGMENTATION,
    )
    assert all(core(i)[1][..., 1:].any() for i in range(12))
    tumour = make_sampler(
        tumour_dataset, tmp_path / "cache", tumour_share=1.0, augmentation=patches.NO_AUGMENTATION
    )
    assert not all(tumour(i)[1][..., 1:].any() for i in range(12))
    default = make_sampler(tumour_dataset, tmp_path / "cache", tumour_share=0.6, seed=3)
    zero = make_sampler(
        tumour_dataset, tmp_path / "cache", tumour_share=0.6, seed=3, core_share=0.0
    )
    for i in range(4):
        np.testing.assert_array_equal(default(i)[0], zero(i)[0])


def test_parallel_readers_open_arrays_one_at_a_time(tmp_path, monkeypatch):
    """The input pipeline reads patches in parallel threads; np.load parses .npy headers with
    ast, which Python 3.11 cannot run in two threads at once (it once killed a training with
    "AST constructor recursion depth mismatch"), so opening an array is serialised."""
    import threading
    import time

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"a{i}.npy")
        np.save(paths[-1], np.full(3, i))
    load, active, most = np.load, [0], [0]

    def slow_load(*args, **kwargs):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.05)
        active[0] -= 1
        return load(*args, **kwargs)

    monkeypatch.setattr(patches.np, "load", slow_load)
    patches._open_array.cache_clear()
    threads = [threading.Thread(target=patches.cached_array, args=(p,)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    patches._open_array.cache_clear()
    assert most[0] == 1
