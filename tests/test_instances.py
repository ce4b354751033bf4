"""Tests of the label stack module (layernet/instances.py): hand-computed cases and slow references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from layernet.instances import (
    LabelStackError,
    compact_stack,
    coverage,
    flatten_stack,
    foreground,
    masks_from_stack,
    num_objects,
    object_ids,
    overlap_free_ids,
    pad_stack,
    relabel_stack,
    stack_from_label_image,
    stack_from_masks,
    validate_stack,
)


def _box(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


@pytest.fixture()
def overlap_stack():
    """A 4x6 stack by hand: object 1 (big, 12 px) in slice 0, object 2 (small, 4 px) in slice 1,
    overlapping object 1 on the 2 pixels (1, 3) and (2, 3); object 3 (2 px) alone in slice 0.

        slice 0          slice 1
        1 1 1 1 0 0      0 0 0 0 0 0
        1 1 1 1 0 0      0 0 0 2 2 0
        1 1 1 1 0 3      0 0 0 2 2 0
        0 0 0 0 0 3      0 0 0 0 0 0
    """
    stack = np.zeros((2, 4, 6), dtype=np.int32)
    stack[0, 0:3, 0:4] = 1
    stack[0, 2:4, 5] = 3
    stack[1, 1:3, 3:5] = 2
    return stack


# ---------------------------------------------------------------- validate_stack


def test_validate_stack_accepts_and_returns_a_valid_stack(overlap_stack):
    assert validate_stack(overlap_stack) is overlap_stack
    validate_stack(np.zeros((1, 3, 3), dtype=np.uint16))
    validate_stack(np.zeros((1, 3, 3), dtype=bool))


def test_validate_stack_rejects_an_id_in_two_slices():
    stack = np.zeros((2, 3, 3), dtype=np.int32)
    stack[0, 0, 0] = 5
    stack[1, 2, 2] = 5
    with pytest.raises(LabelStackError, match=r"my.tif: object id 5 appears in slices 0 and 1"):
        validate_stack(stack, "my.tif")


def test_validate_stack_rejects_rank_2():
    with pytest.raises(LabelStackError, match=r"rank 2"):
        validate_stack(np.zeros((3, 3), dtype=np.int32))


def test_validate_stack_rejects_float_dtype():
    with pytest.raises(LabelStackError, match=r"integer dtype, got float32"):
        validate_stack(np.zeros((1, 3, 3), dtype=np.float32))


def test_validate_stack_rejects_negative_ids():
    stack = np.zeros((1, 3, 3), dtype=np.int32)
    stack[0, 1, 1] = -2
    with pytest.raises(LabelStackError, match=r">= 0, found -2"):
        validate_stack(stack)


def test_validate_stack_rejects_non_arrays():
    with pytest.raises(LabelStackError, match=r"expected a numpy array, got list"):
        validate_stack([[[0]]])


def test_label_stack_error_is_a_value_error():
    assert issubclass(LabelStackError, ValueError)


# ---------------------------------------------------------------- ids


def test_object_ids_and_num_objects(overlap_stack):
    np.testing.assert_array_equal(object_ids(overlap_stack), [1, 2, 3])
    assert num_objects(overlap_stack) == 3
    assert num_objects(np.zeros((2, 3, 3), dtype=np.int32)) == 0


# ---------------------------------------------------------------- stack_from_masks


def test_stack_from_masks_puts_overlapping_masks_in_different_slices():
    shape = (5, 5)
    a = _box(shape, (0, 3), (0, 3))
    b = _box(shape, (2, 5), (2, 5))  # overlaps a at (2, 2)
    c = _box(shape, (0, 1), (4, 5))  # touches nothing
    stack = stack_from_masks([a, b, c])
    validate_stack(stack)
    assert stack.shape == (2, 5, 5) and stack.dtype == np.int32
    # b and a have degree 1 and come first (ties by index): a -> slice 0, b -> slice 1, c -> 0
    expected = np.zeros((2, 5, 5), dtype=np.int32)
    expected[0][a] = 1
    expected[1][b] = 2
    expected[0][c] = 3
    np.testing.assert_array_equal(stack, expected)


def test_stack_from_masks_uses_few_slices_for_a_star():
    """A centre overlapping four mutually disjoint leaves needs 2 slices (not 4 or 5)."""
    shape = (9, 9)
    leaves = [_box(shape, (0, 3), (0, 3)), _box(shape, (0, 3), (6, 9)),
              _box(shape, (6, 9), (0, 3)), _box(shape, (6, 9), (6, 9))]
    centre = _box(shape, (2, 7), (2, 7))
    stack = stack_from_masks(leaves + [centre])
    validate_stack(stack)
    assert stack.shape[0] == 2
    # the centre has the largest degree, so it is coloured first and gets slice 0
    assert set(np.unique(stack[0])) == {0, 5}
    assert set(np.unique(stack[1])) == {0, 1, 2, 3, 4}


def test_stack_from_masks_triangle_needs_three_slices():
    shape = (4, 4)
    masks = [_box(shape, (0, 2), (0, 2)), _box(shape, (1, 3), (1, 3)), _box(shape, (0, 3), (1, 2))]
    stack = stack_from_masks(masks)
    assert stack.shape[0] == 3
    validate_stack(stack)


def test_stack_from_masks_accepts_an_array_and_drops_empty_masks():
    masks = np.zeros((3, 4, 4), dtype=np.uint8)
    masks[0, 0, 0] = 7  # non-zero counts as inside
    masks[2, 3, 3] = 1  # masks[1] is empty and consumes no id
    stack = stack_from_masks(masks, dtype=np.uint16)
    assert stack.dtype == np.uint16 and stack.shape == (1, 4, 4)
    assert stack[0, 0, 0] == 1 and stack[0, 3, 3] == 2 and num_objects(stack) == 2


def test_stack_from_masks_without_masks():
    empty = stack_from_masks([], shape=(3, 4))
    np.testing.assert_array_equal(empty, np.zeros((1, 3, 4), dtype=np.int32))
    np.testing.assert_array_equal(stack_from_masks(np.zeros((0, 3, 4), bool)), empty)
    with pytest.raises(LabelStackError, match=r"needs `shape`"):
        stack_from_masks([])


def test_stack_from_masks_rejects_mismatched_shapes():
    with pytest.raises(LabelStackError, match=r"mask 1 has shape \(3, 3\)"):
        stack_from_masks([np.ones((4, 4)), np.ones((3, 3))])


def test_masks_from_stack_by_hand(overlap_stack):
    masks, ids = masks_from_stack(overlap_stack)
    np.testing.assert_array_equal(ids, [1, 2, 3])
    assert masks.dtype == bool and masks.shape == (3, 4, 6)
    np.testing.assert_array_equal(masks.sum(axis=(1, 2)), [12, 4, 2])
    np.testing.assert_array_equal(masks[1], overlap_stack[1] == 2)


small_masks = arrays(bool, st.tuples(st.integers(1, 6), st.just(7), st.just(8)),
                     elements=st.booleans())


@settings(max_examples=60, deadline=None)
@given(small_masks)
def test_round_trip_masks_stack_masks(masks):
    stack = stack_from_masks(masks)
    validate_stack(stack)
    kept = masks[masks.reshape(len(masks), -1).any(axis=1)]
    back, ids = masks_from_stack(stack)
    np.testing.assert_array_equal(ids, np.arange(1, len(kept) + 1))
    np.testing.assert_array_equal(back, kept)
    # greedy colouring never needs more slices than (maximum overlap degree + 1)
    flat = kept.reshape(len(kept), masks.shape[1] * masks.shape[2]).astype(int)
    degree = ((flat @ flat.T) > 0).sum(axis=1) - 1
    assert stack.shape[0] <= (int(degree.max()) + 1 if len(kept) else 1)


# ---------------------------------------------------------------- label image


def test_stack_from_label_image_keeps_ids():
    label = np.array([[0, 4, 4], [9, 0, 4]], dtype=np.uint8)
    stack = stack_from_label_image(label)
    assert stack.shape == (1, 2, 3) and stack.dtype == np.int32
    np.testing.assert_array_equal(stack[0], label)
    float_label = stack_from_label_image(label.astype(np.float32))
    np.testing.assert_array_equal(float_label, stack)


@pytest.mark.parametrize("label, message", [
    (np.zeros((1, 2, 2), dtype=np.int32), r"2-D"),
    (np.array([[0.5, 1.0]]), r"integer ids, got dtype float64"),
    (np.array([[0, -1]]), r">= 0, found -1"),
])
def test_stack_from_label_image_rejects_bad_input(label, message):
    with pytest.raises(LabelStackError, match=message):
        stack_from_label_image(label)


# ---------------------------------------------------------------- relabel


def test_relabel_stack_by_hand():
    stack = np.zeros((2, 2, 3), dtype=np.int64)
    stack[0, 0, 0] = 40
    stack[0, 1, 2] = 7
    stack[1, 0, 0] = 12
    out = relabel_stack(stack)
    expected = np.zeros((2, 2, 3), dtype=np.int32)
    expected[0, 1, 2] = 1  # 7 -> 1, 12 -> 2, 40 -> 3 (order kept)
    expected[1, 0, 0] = 2
    expected[0, 0, 0] = 3
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int32
    empty = relabel_stack(np.zeros((1, 2, 2), dtype=np.int32))
    np.testing.assert_array_equal(empty, np.zeros((1, 2, 2)))


# ---------------------------------------------------------------- coverage and friends


def test_foreground_coverage_and_overlap_free_ids(overlap_stack):
    expected_coverage = np.array([[1, 1, 1, 1, 0, 0],
                                  [1, 1, 1, 2, 1, 0],
                                  [1, 1, 1, 2, 1, 1],
                                  [0, 0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(coverage(overlap_stack), expected_coverage)
    np.testing.assert_array_equal(foreground(overlap_stack), expected_coverage > 0)
    expected_ids = np.array([[1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 0, 2, 0],
                             [1, 1, 1, 0, 2, 3],
                             [0, 0, 0, 0, 0, 3]])
    free = overlap_free_ids(overlap_stack)
    np.testing.assert_array_equal(free, expected_ids)
    assert free.dtype == np.int32


# ---------------------------------------------------------------- flatten


def test_flatten_smallest_gives_the_overlap_to_the_small_object(overlap_stack):
    expected = np.array([[1, 1, 1, 1, 0, 0],
                         [1, 1, 1, 2, 2, 0],
                         [1, 1, 1, 2, 2, 3],
                         [0, 0, 0, 0, 0, 3]])
    np.testing.assert_array_equal(flatten_stack(overlap_stack), expected)
    np.testing.assert_array_equal(flatten_stack(overlap_stack, "smallest"), expected)


def test_flatten_first_and_last(overlap_stack):
    first = flatten_stack(overlap_stack, "first")
    last = flatten_stack(overlap_stack, "last")
    assert first[1, 3] == 1 and first[2, 3] == 1  # slice 0 wins
    assert last[1, 3] == 2 and last[2, 3] == 2  # slice 1 wins
    # outside the overlap all rules agree
    outside = coverage(overlap_stack) < 2
    np.testing.assert_array_equal(first[outside], last[outside])
    np.testing.assert_array_equal(first[outside], overlap_free_ids(overlap_stack)[outside])


def test_flatten_smallest_is_independent_of_slice_order(overlap_stack):
    swapped = overlap_stack[::-1].copy()
    np.testing.assert_array_equal(flatten_stack(swapped), flatten_stack(overlap_stack))
    # ... whereas 'first' follows the slice order
    assert flatten_stack(swapped, "first")[1, 3] == 2


def test_flatten_single_slice_is_a_copy_and_unknown_rule_fails():
    stack = np.arange(6, dtype=np.int32).reshape(1, 2, 3)
    flat = flatten_stack(stack)
    np.testing.assert_array_equal(flat, stack[0])
    flat[0, 0] = 99
    assert stack[0, 0, 0] == 0
    with pytest.raises(ValueError, match=r"unknown flatten rule 'largest'"):
        flatten_stack(stack, "largest")


def _flatten_smallest_reference(stack: np.ndarray) -> np.ndarray:
    """Slow, obvious version: per pixel, the covering id of smallest area (lowest slice on ties)."""
    areas = {int(i): int(np.count_nonzero(stack == i)) for i in np.unique(stack) if i}
    out = np.zeros(stack.shape[1:], dtype=stack.dtype)
    for y in range(stack.shape[1]):
        for x in range(stack.shape[2]):
            best = None
            for label in stack[:, y, x]:
                if label and (best is None or areas[int(label)] < areas[best]):
                    best = int(label)
            out[y, x] = best or 0
    return out


@settings(max_examples=40, deadline=None)
@given(small_masks)
def test_flatten_smallest_matches_slow_reference(masks):
    stack = stack_from_masks(masks)
    np.testing.assert_array_equal(flatten_stack(stack), _flatten_smallest_reference(stack))


# ---------------------------------------------------------------- compact and pad


def test_compact_and_pad():
    stack = np.zeros((3, 2, 2), dtype=np.int32)
    stack[1, 0, 0] = 1
    compact = compact_stack(stack)
    assert compact.shape == (1, 2, 2) and compact[0, 0, 0] == 1
    assert compact_stack(np.zeros((3, 2, 2), dtype=np.int32)).shape == (1, 2, 2)
    padded = pad_stack(compact, 4)
    assert padded.shape == (4, 2, 2) and padded.dtype == np.int32
    np.testing.assert_array_equal(padded[0], compact[0])
    assert not padded[1:].any()
    assert pad_stack(stack, 2) is stack  # never truncates


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.uint16, np.int32, np.uint32, np.int64])
def test_object_ids_equal_the_sorted_unique_ids(dtype):
    # object_ids counts ids in a table when they are small and non-negative, else sorts them
    rng = np.random.default_rng(0)
    for high in (0, 1, 7, 120, 10 ** 6, 2 ** 40):
        high = min(high, int(np.iinfo(dtype).max))
        stack = rng.integers(0, high + 1, (3, 20, 30), dtype=np.int64).astype(dtype)
        stack[0, :2] = 0
        if np.iinfo(dtype).min < 0:
            stack[1, 0, 0] = -1
        reference = np.array(sorted({int(v) for v in stack.ravel()} - {0}), dtype=dtype)
        ids = object_ids(stack)
        assert ids.dtype == dtype
        np.testing.assert_array_equal(ids, reference)
    assert object_ids(np.zeros((0, 4, 4), np.int32)).size == 0
