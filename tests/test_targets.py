"""Tests of layernet.targets against a brute-force all-pixel-pairs adjacency."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from layernet.instances import LabelStackError, stack_from_masks
from layernet.targets import Targets, adjacency_matrix, check_consecutive_ids, compute_targets


def brute_force_adjacency(stack: np.ndarray, distance: float) -> np.ndarray:
    """Adjacency straight from the definition: min over all pixel pairs of the Euclidean distance."""
    count = int(stack.max())
    result = np.zeros((count + 1, count + 1), dtype=bool)
    coords = {i: np.argwhere(np.any(stack == i, axis=0)) for i in range(1, count + 1)}
    for i in range(1, count + 1):
        for j in range(1, count + 1):
            if i != j and len(coords[i]) and len(coords[j]):
                result[i, j] = cdist(coords[i], coords[j]).min() < distance
    return result


def random_stack(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Random overlapping rectangles and discs as a label stack with ids 1..K."""
    masks = []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(count):
        if rng.random() < 0.5:
            r0, c0 = rng.integers(0, size, 2)
            h, w = rng.integers(1, 12, 2)
            mask = np.zeros((size, size), bool)
            mask[r0:r0 + h, c0:c0 + w] = True
        else:
            cy, cx = rng.integers(0, size, 2)
            radius = rng.uniform(0.5, 7)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        masks.append(mask)
    return stack_from_masks(masks, shape=(size, size))


def two_pixels(gap_row: int, gap_col: int, size: int = 40) -> np.ndarray:
    stack = np.zeros((1, size, size), np.int32)
    stack[0, 2, 2] = 1
    stack[0, 2 + gap_row, 2 + gap_col] = 2
    return stack


@pytest.mark.parametrize("seed", range(12))
def test_random_stacks_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    stack = random_stack(rng, size=int(rng.integers(20, 60)), count=int(rng.integers(1, 10)))
    for distance in (15.0, 5.0, 2.5, 1.0):
        np.testing.assert_array_equal(adjacency_matrix(stack, distance),
                                      brute_force_adjacency(stack, distance))


@pytest.mark.parametrize("offset, adjacent", [
    ((0, 15), False),      # exactly 15: not < 15
    ((0, 14), True),
    ((9, 12), False),      # 3-4-5 triangle: exactly 15
    ((8, 12), True),       # sqrt(208) = 14.42
    ((11, 11), False),     # 15.56
    ((10, 11), True),      # sqrt(221) = 14.87
])
def test_threshold_exactly_at_and_around_15(offset, adjacent) -> None:
    stack = two_pixels(*offset)
    result = adjacency_matrix(stack, 15.0)
    assert result[1, 2] == result[2, 1] == adjacent
    np.testing.assert_array_equal(result, brute_force_adjacency(stack, 15.0))


def test_touching_and_overlapping_objects_are_adjacent() -> None:
    stack = np.zeros((2, 30, 30), np.int32)
    stack[0, 5:10, 5:10] = 1
    stack[0, 5:10, 10:14] = 2          # touching 1
    stack[1, 7:20, 7:9] = 3            # overlaps 1
    stack[0, 28:30, 28:30] = 4         # far away from 1..3? distance from (19,8) to (28,28) > 15
    result = adjacency_matrix(stack, 15.0)
    assert result[1, 2] and result[1, 3] and result[2, 3]
    assert not result[1, 4] and not result[3, 4]
    np.testing.assert_array_equal(result, brute_force_adjacency(stack, 15.0))
    # an object entirely covered by another one is adjacent to it, even with a tiny threshold
    covered = np.zeros((2, 10, 10), np.int32)
    covered[0, 2:8, 2:8] = 1
    covered[1, 4:6, 4:6] = 2
    assert adjacency_matrix(covered, 0.5)[1, 2]


def test_structure_of_matrix() -> None:
    stack = random_stack(np.random.default_rng(99), size=50, count=8)
    result = adjacency_matrix(stack)
    assert result.dtype == bool and result.shape == (stack.max() + 1,) * 2
    assert not result[0].any() and not result[:, 0].any() and not np.diag(result).any()
    np.testing.assert_array_equal(result, result.T)


def test_single_object_and_empty() -> None:
    single = np.zeros((1, 10, 10), np.int32)
    single[0, 3:5, 3:5] = 1
    np.testing.assert_array_equal(adjacency_matrix(single), np.zeros((2, 2), bool))
    empty = np.zeros((2, 10, 10), np.int32)
    np.testing.assert_array_equal(adjacency_matrix(empty), np.zeros((1, 1), bool))
    targets = compute_targets(empty)
    assert targets.num_objects == 0 and not targets.foreground.any()
    assert targets.adjacency.shape == (1, 1)


def test_object_near_image_border() -> None:
    stack = np.zeros((1, 16, 16), np.int32)
    stack[0, 0, 0] = 1
    stack[0, 15, 15] = 2     # distance 21.2
    stack[0, 0, 14] = 3      # distance 14 from 1
    result = adjacency_matrix(stack, 15.0)
    np.testing.assert_array_equal(result, brute_force_adjacency(stack, 15.0))
    assert result[1, 3] and not result[1, 2]


def test_compute_targets_fields() -> None:
    stack = np.zeros((2, 12, 12), np.int32)
    stack[0, 1:6, 1:6] = 1
    stack[1, 4:9, 4:9] = 2
    stack[0, 10:12, 10:12] = 3
    targets = compute_targets(stack, distance=2.0)
    assert isinstance(targets, Targets)
    assert targets.num_objects == 3
    assert targets.overlap_free.dtype == np.int32
    expected_free = np.zeros((12, 12), np.int32)
    expected_free[1:6, 1:6] = 1
    expected_free[4:9, 4:9] = 2
    expected_free[4:6, 4:6] = 0
    expected_free[10:12, 10:12] = 3
    np.testing.assert_array_equal(targets.overlap_free, expected_free)
    np.testing.assert_array_equal(targets.foreground, np.any(stack > 0, axis=0))
    np.testing.assert_array_equal(targets.adjacency, brute_force_adjacency(stack, 2.0))
    # distance from (8,8) to (10,10) is 2.83 >= 2
    assert targets.adjacency[1, 2] and not targets.adjacency[2, 3]


def test_ids_must_be_consecutive() -> None:
    stack = np.zeros((1, 8, 8), np.int32)
    stack[0, 1, 1] = 1
    stack[0, 5, 5] = 3
    with pytest.raises(LabelStackError, match="1..K"):
        compute_targets(stack)
    with pytest.raises(LabelStackError, match="1..K"):
        adjacency_matrix(stack)
    with pytest.raises(LabelStackError):
        check_consecutive_ids(np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match="distance"):
        adjacency_matrix(np.zeros((1, 4, 4), np.int32), distance=0.0)
    assert check_consecutive_ids(np.zeros((1, 4, 4), np.int32)) == 0
