"""Tests of layernet.postprocess (paper Algorithm 1)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label

from layernet.instances import coverage, masks_from_stack, validate_stack
from layernet.postprocess import (
    PostprocessError,
    label_components,
    postprocess,
    postprocess_batch,
)


def _reference_postprocess(foreground, layering, tau, min_size, overlap_layers, connectivity):
    """Slow, literal Algorithm 1: pixel loops and scikit-image labelling."""
    height, width, layers = layering.shape
    fg = foreground > tau
    fg_labels = sk_label(fg, connectivity=connectivity)
    for label in range(1, fg_labels.max() + 1):
        if (fg_labels == label).sum() < min_size:
            fg[fg_labels == label] = False
    layer_masks = np.zeros((layers, height, width), dtype=bool)
    for i in range(height):
        for j in range(width):
            if not fg[i, j]:
                continue
            values = list(layering[i, j])
            largest = values.index(max(values))
            for k in range(layers):
                if k == largest or (overlap_layers and values[k] > tau):
                    layer_masks[k, i, j] = True
    stack = np.zeros((layers, height, width), dtype=np.int32)
    next_id = 1
    for k in range(layers):
        labels = sk_label(layer_masks[k], connectivity=connectivity)
        # order of first pixel in raster scan
        firsts = []
        for label in range(1, labels.max() + 1):
            pixels = np.flatnonzero(labels == label)
            if pixels.size >= min_size:
                firsts.append((pixels[0], label))
        for _, label in sorted(firsts):
            stack[k][labels == label] = next_id
            next_id += 1
    return stack


def _crossing_maps(size: int = 40):
    """A horizontal bar in layer 0 and a vertical bar in layer 1 crossing in the middle."""
    foreground = np.full((size, size), 0.05, dtype=np.float32)
    layering = np.full((size, size, 3), 0.02, dtype=np.float32)
    horizontal = np.zeros((size, size), dtype=bool)
    horizontal[17:23, 2:38] = True
    vertical = np.zeros((size, size), dtype=bool)
    vertical[2:38, 17:23] = True
    foreground[horizontal | vertical] = 0.95
    layering[..., 0][horizontal] = 0.9
    layering[..., 1][vertical] = 0.8
    return foreground, layering, horizontal, vertical


def test_crossing_objects_overlap_in_two_layers():
    foreground, layering, horizontal, vertical = _crossing_maps()
    stack = postprocess(foreground, layering, min_size=20)
    validate_stack(stack)
    assert stack.shape == (3, 40, 40) and stack.dtype == np.int32
    masks, ids = masks_from_stack(stack)
    assert ids.tolist() == [1, 2]
    np.testing.assert_array_equal(masks[0], horizontal)
    np.testing.assert_array_equal(masks[1], vertical)
    crossing = horizontal & vertical
    assert crossing.sum() == 36
    assert (coverage(stack)[crossing] == 2).all()
    assert not stack[2].any()


def test_argmax_only_mode_gives_no_overlap():
    foreground, layering, horizontal, vertical = _crossing_maps()
    stack = postprocess(foreground, layering, min_size=20, overlap_layers=False)
    validate_stack(stack)
    assert coverage(stack).max() == 1
    # the crossing goes to layer 0 (0.9 > 0.8); the vertical bar is cut into two pieces
    crossing = horizontal & vertical
    assert (stack[0][crossing] > 0).all() and not stack[1][crossing].any()
    masks, ids = masks_from_stack(stack)
    assert ids.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(masks[0], horizontal)
    np.testing.assert_array_equal(masks[1] | masks[2], vertical & ~horizontal)
    # upper piece comes first in scan order
    assert masks[1][:17].any() and not masks[1][23:].any()


def test_small_components_removed_and_threshold_strict():
    size = 30
    foreground = np.zeros((size, size), dtype=np.float32)
    layering = np.zeros((size, size, 2), dtype=np.float32)
    foreground[2:8, 2:8] = 0.9  # 36 px object
    layering[2:8, 2:8, 0] = 0.7
    foreground[20:23, 20:23] = 0.9  # 9 px: removed by the foreground screening
    layering[20:23, 20:23, 1] = 0.7
    foreground[12:18, 12:18] = 0.5  # exactly tau: not foreground (strict >)
    layering[12:18, 12:18, 1] = 0.7
    stack = postprocess(foreground, layering, tau=0.5, min_size=10)
    masks, ids = masks_from_stack(stack)
    assert ids.tolist() == [1]
    assert masks[0].sum() == 36 and masks[0][2:8, 2:8].all()
    # min_size is inclusive: a 9 px object survives min_size=9
    stack = postprocess(foreground, layering, tau=0.5, min_size=9)
    assert sorted(np.bincount(stack[stack > 0]).tolist()[1:]) == [9, 36]


def test_layer_fragment_below_min_size_dropped_but_object_kept():
    size = 30
    foreground = np.zeros((size, size), dtype=np.float32)
    layering = np.zeros((size, size, 2), dtype=np.float32)
    foreground[5:25, 5:25] = 0.9
    layering[5:25, 5:25, 0] = 0.8
    layering[5:7, 5:7, 1] = 0.95  # 4 px fragment where layer 1 is argmax
    stack = postprocess(foreground, layering, min_size=10)
    assert not stack[1].any()
    # layer 0 is > tau everywhere, so the object keeps its full extent in layer 0
    assert (stack[0] > 0).sum() == 400
    stack = postprocess(foreground, layering, min_size=10, overlap_layers=False)
    assert (stack[0] > 0).sum() == 396 and not stack[1].any()


def test_connectivity_diagonal_touch():
    foreground = np.zeros((6, 6), dtype=np.float32)
    layering = np.zeros((6, 6, 1), dtype=np.float32)
    foreground[1:3, 1:3] = 0.9
    foreground[3:5, 3:5] = 0.9
    eight = postprocess(foreground, layering, min_size=0, connectivity=2)
    four = postprocess(foreground, layering, min_size=0, connectivity=1)
    assert eight.max() == 1 and four.max() == 2


def test_empty_foreground_gives_empty_stack():
    stack = postprocess(np.zeros((16, 20, 1)), np.random.default_rng(0).random((16, 20, 4)))
    assert stack.shape == (4, 16, 20) and not stack.any()


@pytest.mark.parametrize("overlap_layers", [True, False])
@pytest.mark.parametrize("connectivity", [1, 2])
def test_matches_literal_reference_on_random_maps(overlap_layers, connectivity):
    rng = np.random.default_rng(7 + connectivity + 10 * overlap_layers)
    for _ in range(6):
        height, width, layers = rng.integers(8, 28), rng.integers(8, 28), rng.integers(1, 5)
        foreground = ndimage.gaussian_filter(rng.random((height, width)), 1.5)
        foreground = (foreground - foreground.min()) / (np.ptp(foreground) + 1e-9)
        layering = rng.random((height, width, layers)).astype(np.float32)
        layering = ndimage.gaussian_filter(layering, (1.0, 1.0, 0))
        layering = np.clip((layering - 0.5) * 4 + 0.5, 0, 1)
        min_size = int(rng.integers(0, 12))
        expected = _reference_postprocess(foreground, layering, 0.5, min_size, overlap_layers,
                                          connectivity)
        got = postprocess(foreground, layering, 0.5, min_size, overlap_layers, connectivity)
        np.testing.assert_array_equal(got, expected)
        validate_stack(got)
        ids = np.unique(got)
        assert ids.tolist() == list(range(ids.size))


def test_label_components_stack_ids_unique_and_ordered():
    mask = np.zeros((2, 5, 5), dtype=bool)
    mask[0, 0, 3:] = True
    mask[0, 3:, 0] = True
    mask[1, 0, 0] = True
    mask[1, 2:4, 2:4] = True
    labels = label_components(mask, min_size=2)
    assert labels[0, 0, 3] == 1 and labels[0, 3, 0] == 2
    assert labels[1, 0, 0] == 0 and (labels[1, 2:4, 2:4] == 3).all()


def test_batch_matches_single():
    foreground, layering, _, _ = _crossing_maps()
    batch = postprocess_batch(np.stack([foreground, foreground[::-1]])[..., None],
                              np.stack([layering, layering[::-1]]), min_size=20)
    assert len(batch) == 2
    np.testing.assert_array_equal(batch[0], postprocess(foreground, layering, min_size=20))
    np.testing.assert_array_equal(batch[1],
                                  postprocess(foreground[::-1], layering[::-1], min_size=20))


@pytest.mark.parametrize(
    "foreground, layering, kwargs, message",
    [
        (np.zeros((4, 4, 2)), np.zeros((4, 4, 2)), {}, "foreground"),
        (np.zeros((4, 4)), np.zeros((4, 5, 2)), {}, "spatial shape"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {}, "layering"),
        (np.full((4, 4), np.nan), np.zeros((4, 4, 2)), {}, "NaN"),
        (np.zeros((4, 4)), np.zeros((4, 4, 2)), {"connectivity": 3}, "connectivity"),
        (np.zeros((4, 4)), np.zeros((4, 4, 2)), {"min_size": -1}, "min_size"),
    ],
)
def test_bad_input_raises_clear_error(foreground, layering, kwargs, message):
    with pytest.raises(PostprocessError, match=message):
        postprocess(foreground, layering, **kwargs)


def test_batch_length_mismatch():
    with pytest.raises(PostprocessError, match="foreground maps"):
        postprocess_batch([np.zeros((4, 4))], [])
