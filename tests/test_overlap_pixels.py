"""Overlap pixels of label stacks (layernet.overlap_pixels) and bench/overlaps.py."""

from __future__ import annotations

import numpy as np
import pytest

from layernet.overlap_pixels import OverlapPixels, coverage, overlap_pixels


def stack_of(*masks: np.ndarray) -> np.ndarray:
    """One object per slice, ids 1..K."""
    return np.stack([np.where(mask, index + 1, 0) for index, mask in enumerate(masks)])


def box(y0: int, y1: int, x0: int, x1: int, shape=(6, 6)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_hand_counted_case() -> None:
    # ground truth: two 3x3 boxes sharing a 1x3 row (3 overlap pixels)
    truth = stack_of(box(0, 3, 0, 3), box(2, 5, 0, 3))
    # prediction: boxes sharing rows 1-2 of columns 0-1 (4 pixels), of which (2, 0), (2, 1) true
    predicted = stack_of(box(0, 3, 0, 2), box(1, 5, 0, 2), box(0, 1, 4, 6))
    assert coverage(truth).sum() == 9 + 9
    counts = overlap_pixels(truth, predicted)
    assert counts == OverlapPixels(ground_truth=3, predicted=4, found=2)
    assert counts.recall == pytest.approx(2 / 3) and counts.precision == pytest.approx(0.5)


def test_three_objects_on_a_pixel_count_once_and_empty_cases() -> None:
    truth = stack_of(box(0, 2, 0, 2), box(1, 3, 1, 3), box(1, 2, 0, 3))
    assert int((coverage(truth) >= 2).sum()) == 3                # (1,0) (1,1) (1,2)
    assert coverage(truth)[1, 1] == 3
    label_image = np.zeros((6, 6), int)
    label_image[:2, :2] = 1
    nothing = overlap_pixels(label_image, label_image)           # a 2-D label image: no overlap
    assert nothing == OverlapPixels(0, 0, 0) and nothing.recall == nothing.precision == 1.0
    missed = overlap_pixels(truth, label_image)
    assert (missed.recall, missed.predicted) == (0.0, 0)


def test_counts_pool_over_images_before_the_ratios() -> None:
    pooled = OverlapPixels(10, 0, 0) + OverlapPixels(2, 4, 2)
    assert pooled == OverlapPixels(12, 4, 2)
    assert pooled.recall == pytest.approx(2 / 12) and pooled.precision == pytest.approx(0.5)


def test_matches_a_per_pixel_loop_on_random_stacks() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        truth = rng.integers(0, 3, size=(3, 7, 9)) * (rng.random((3, 7, 9)) < 0.5)
        predicted = rng.integers(0, 4, size=(2, 7, 9))
        found = ground = guessed = 0
        for y in range(7):
            for x in range(9):
                in_truth = sum(1 for slice_ in truth if slice_[y, x]) >= 2
                in_prediction = sum(1 for slice_ in predicted if slice_[y, x]) >= 2
                ground += in_truth
                guessed += in_prediction
                found += in_truth and in_prediction
        assert overlap_pixels(truth, predicted) == OverlapPixels(ground, guessed, found)


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="6x6 pixels, the prediction 5x6"):
        overlap_pixels(np.zeros((2, 6, 6), int), np.zeros((1, 5, 6), int))
    with pytest.raises(ValueError, match="label stack"):
        coverage(np.zeros(5, int))


def test_second_highest_layer() -> None:
    from bench.overlaps import second_highest

    layering = np.random.default_rng(0).random((4, 5, 8))
    expected = np.sort(layering, axis=-1)[..., -2]
    np.testing.assert_array_equal(second_highest(layering), expected)


def test_overlaps_bench_counts_the_models_own_split(tiny_run, capsys) -> None:
    from bench import overlaps
    from datasets import load_dataset
    from layernet.config import Config

    result = overlaps.main([tiny_run, "--split", "val", "--tau", "0.3"])
    config = Config.load(f"{tiny_run}/config.json")
    samples = load_dataset(config.data, None, "val", config.split_seed, config.val_fraction,
                           **config.data_options)
    truth = sum(int((coverage(sample.stack) >= 2).sum()) for sample in samples)
    assert result["images"] == len(samples) and result["tau"] == 0.3
    for counts in (result["instances"], result["maps"]):
        assert counts.ground_truth == truth
        assert 0 <= counts.found <= min(counts.ground_truth, counts.predicted)
    assert f"ground-truth overlap pixels {truth}" in capsys.readouterr().out
