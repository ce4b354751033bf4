"""Tests of the built-in synthetic dataset (datasets/synthetic.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from datasets import load_dataset
from datasets.synthetic import SyntheticOptionError, generate_sample, load, main
from layernet.instances import coverage, masks_from_stack, validate_stack

BATCH = 8


@pytest.fixture(scope="module")
def worms():
    return load(split="trainval", seed=3, kind="worms", count=BATCH)


@pytest.fixture(scope="module")
def cells():
    return load(split="trainval", seed=3, kind="cells", count=BATCH)


def _all(worms, cells):
    return list(worms) + list(cells)


def test_same_seed_gives_identical_samples():
    first = generate_sample(np.random.default_rng(11), "worms")
    second = generate_sample(np.random.default_rng(11), "worms")
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.stack, second.stack)
    a = load(split="val", seed=5, kind="cells", count=20)
    b = load(split="val", seed=5, kind="cells", count=20)
    assert [s.name for s in a] == [s.name for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.stack, y.stack)


def test_different_seed_gives_different_samples():
    for kind in ("worms", "cells"):
        a = generate_sample(np.random.default_rng(1), kind)
        b = generate_sample(np.random.default_rng(2), kind)
        assert not np.array_equal(a.image, b.image)
        assert a.stack.shape != b.stack.shape or not np.array_equal(a.stack, b.stack)
    a = load(split="test", seed=0, count=2)
    b = load(split="test", seed=1, count=2)
    assert not np.array_equal(a[0].image, b[0].image)


def test_shapes_dtypes_ranges_and_valid_stacks(worms, cells):
    for sample, top in [(s, 4095) for s in worms] + [(s, 255) for s in cells]:
        assert sample.image.shape == (192, 192, 1)
        assert sample.image.dtype == np.float32
        assert sample.image.min() >= 0 and sample.image.max() <= top
        assert np.all(sample.image == np.rint(sample.image))  # integer camera values
        assert sample.stack.dtype == np.int32
        assert sample.stack.ndim == 3 and sample.stack.shape[1:] == (192, 192)
        validate_stack(sample.stack, sample.name)
        ids = np.unique(sample.stack)
        count = ids.size - 1
        assert count >= 3
        np.testing.assert_array_equal(ids, np.arange(count + 1))  # ids 1..K
    # the 12-bit worms really use the upper range, the 8-bit cells do not exceed 255
    assert max(s.image.max() for s in worms) > 1500


def test_other_size_and_options():
    sample = generate_sample(np.random.default_rng(0), "cells", size=128, object_count=(2, 3),
                             object_size=0.9)
    assert sample.image.shape == (128, 128, 1)
    assert sample.stack.shape[1:] == (128, 128)
    assert 1 <= sample.stack.max() <= 3
    sparse = generate_sample(np.random.default_rng(0), "worms", object_count=(3, 3),
                             density=0.0, overlap=0.0)
    assert sparse.stack.max() <= 3


def test_every_object_has_at_least_min_area(worms, cells):
    for sample in _all(worms, cells):
        masks, _ = masks_from_stack(sample.stack)
        assert masks.reshape(len(masks), -1).sum(axis=1).min() >= 250, sample.name
    big = generate_sample(np.random.default_rng(4), "cells", min_area=900)
    masks, _ = masks_from_stack(big.stack)
    assert masks.reshape(len(masks), -1).sum(axis=1).min() >= 900


def test_cells_overlap(cells):
    overlapping = [s for s in cells if (coverage(s.stack) >= 2).any()]
    assert len(overlapping) >= BATCH // 2
    assert max(s.stack.shape[0] for s in cells) >= 2
    # pixels covered by two cells are darker than pixels of one cell (multiplicative light)
    sample = overlapping[0]
    cover = coverage(sample.stack)
    image = sample.image[:, :, 0]
    assert image[cover == 2].mean() < image[cover == 1].mean() < image[cover == 0].mean()


def _crossing_pairs(sample) -> int:
    """Pairs (a, b) where b cuts a in two: a minus b has at least two connected parts."""
    masks, _ = masks_from_stack(sample.stack)
    pairs = 0
    for i, a in enumerate(masks):
        for j, b in enumerate(masks):
            if i != j and (a & b).any():
                _, parts = ndimage.label(a & ~b)
                pairs += parts >= 2
    return pairs


def test_crossing_worms_exist_in_a_batch(worms):
    assert sum(_crossing_pairs(s) > 0 for s in worms) >= BATCH // 2


def test_scenes_are_dense(worms, cells):
    """Most objects have another object within 15 px (the paper's adjacency distance)."""
    for sample in _all(worms, cells):
        masks, _ = masks_from_stack(sample.stack)
        near = 0
        for k, mask in enumerate(masks):
            others = np.any(np.delete(masks, k, axis=0), axis=0)
            distance = ndimage.distance_transform_edt(~others)
            near += distance[mask].min() <= 15
        assert near >= len(masks) / 2, sample.name


def test_objects_are_darker_than_their_surroundings(worms, cells):
    for sample in _all(worms, cells):
        image = sample.image[:, :, 0]
        masks, ids = masks_from_stack(sample.stack)
        for label, mask in zip(ids, masks):
            ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
            assert image[mask].mean() < image[ring].mean(), (sample.name, label)


def test_splits_are_disjoint_and_sized():
    train = load(split="train", seed=2, kind="worms")
    val = load(split="val", seed=2, kind="worms")
    trainval = load(split="trainval", seed=2, kind="worms")
    test = load(split="test", seed=2, kind="worms")
    assert (len(train), len(val), len(trainval), len(test)) == (43, 5, 48, 16)
    train_names = {s.name for s in train}
    val_names = {s.name for s in val}
    assert not train_names & val_names
    assert train_names | val_names == {s.name for s in trainval}
    assert all(s.name.startswith("synthetic-worms-test-") for s in test)
    assert "synthetic-worms-test-0007" in {s.name for s in test}
    # the same image under its name in every split
    by_name = {s.name: s for s in trainval}
    for sample in val:
        np.testing.assert_array_equal(sample.image, by_name[sample.name].image)
    # test images come from an independent stream: none equals a trainval image
    for sample in test[:4]:
        assert not any(np.array_equal(sample.image, other.image) for other in trainval[:4])


def test_all_is_trainval_then_test_and_pool_size_does_not_change_images():
    everything = load(split="all", seed=0, kind="cells", count=6)
    assert len(everything) == 6 + 2
    assert [s.meta["pool"] for s in everything] == ["trainval"] * 6 + ["test"] * 2
    small = load(split="test", seed=0, kind="cells", count=2)
    larger = load(split="test", seed=0, kind="cells", count=3)
    np.testing.assert_array_equal(small[1].image, larger[1].image)
    np.testing.assert_array_equal(everything[7].stack, larger[1].stack)


def test_mixed_alternates_kinds_and_load_dataset_dispatches():
    samples = load_dataset("synthetic", None, "trainval", 0, kind="mixed", count=4)
    assert [s.meta["kind"] for s in samples] == ["worms", "cells", "worms", "cells"]
    assert samples[0].name.startswith("synthetic-worms-")
    assert samples[1].name.startswith("synthetic-cells-")
    assert samples[0].image.max() > 255 >= samples[1].image.max()


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "blobs"}, "unknown kind"),
    ({"split": "training"}, "unknown split"),
    ({"count": 0}, "count must be"),
    ({"size": 32}, "size must be"),
    ({"object_count": (5, 2)}, "object_count"),
    ({"density": 1.5}, "density"),
    ({"overlap": -0.1}, "overlap"),
    ({"colour": "red"}, "unknown option"),
])
def test_bad_options_raise_one_clear_error(kwargs, message):
    with pytest.raises(SyntheticOptionError, match=message):
        load(**{"count": 2, **kwargs})


def test_preview_command_writes_png_and_summary(tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert main(["--kind", "cells", "--count", "2", "--out", str(out)]) == 0
    import cv2

    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] == 2 * 192
    assert picture.shape[0] >= 2 * 192
    text = capsys.readouterr().out
    assert "images: 2" in text and "objects per image" in text and "overlap" in text
