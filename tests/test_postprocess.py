"""Tests of layernet.postprocess (paper Algorithm 1)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label

from layernet.instances import coverage, masks_from_stack, validate_stack
from layernet.config import Config, ConfigError
from layernet.postprocess import (
    PostprocessError,
    join_neighbour_layers,
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


# --------------------------------------------------------------------------------------------
# join_layers (not in the paper)


def _reference_join(stack: np.ndarray, apart: int, min_size: int, connectivity: int
                    ) -> set[frozenset]:
    """Slow join: union-find over every pair of pixels of slices at most ``apart`` apart
    (cyclically) that coincide or are neighbours; objects as sets of pixels, small ones
    dropped."""
    layers, height, width = stack.shape
    parent = {int(i): int(i) for i in np.unique(stack) if i > 0}

    def find(item: int) -> int:
        while parent[item] != item:
            item = parent[item]
        return item

    reach = 1 if connectivity == 1 else 2
    for a in range(layers):
        for b in range(layers):
            gap = abs(a - b)
            if a == b or min(gap, layers - gap) > apart:
                continue
            for y in range(height):
                for x in range(width):
                    if not stack[a, y, x]:
                        continue
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            if abs(dy) + abs(dx) > reach:
                                continue
                            yy, xx = y + dy, x + dx
                            if 0 <= yy < height and 0 <= xx < width and stack[b, yy, xx]:
                                parent[find(int(stack[a, y, x]))] = find(int(stack[b, yy, xx]))
    objects: dict[int, set] = {}
    for k in range(layers):
        for y, x in zip(*np.nonzero(stack[k])):
            objects.setdefault(find(int(stack[k, y, x])), set()).add((int(y), int(x)))
    return {frozenset(pixels) for pixels in objects.values() if len(pixels) >= max(min_size, 1)}


def _random_piece_stacks(rng: np.random.Generator, count: int, density: float,
                         connectivity: int) -> list[np.ndarray]:
    """``count`` stacks of 2-5 random layers of 6-15 px sides, each pixel on with probability
    ``density``, labelled by connected components (ids unique across slices)."""
    stacks = []
    for _ in range(count):
        layers = int(rng.integers(2, 6))
        height, width = rng.integers(6, 16, 2)
        stacks.append(label_components(rng.random((layers, height, width)) < density, 0,
                                       connectivity))
    return stacks


def _objects(stack: np.ndarray) -> set[frozenset]:
    """Every object of a label stack as the set of its ``(row, column)`` pixels."""
    return {frozenset((int(y), int(x)) for y, x in zip(*np.nonzero((stack == label).any(0))))
            for label in np.unique(stack) if label > 0}


def _bent_object_maps() -> tuple[np.ndarray, np.ndarray]:
    """An L-shaped object whose arms are in layers 0 and 1 (of 8), a bar in layer 4 touching
    its corner, and a bar split between layers 7 and 0 (neighbours cyclically)."""
    foreground = np.zeros((20, 30), np.float32)
    layering = np.zeros((20, 30, 8), np.float32)
    for rows, cols, layer in ((np.s_[2:4], np.s_[2:12], 0), (np.s_[4:14], np.s_[10:12], 1),
                              (np.s_[14:16], np.s_[10:16], 4),
                              (np.s_[17:19], np.s_[2:12], 7), (np.s_[17:19], np.s_[12:22], 0)):
        foreground[rows, cols] = 0.9
        layering[rows, cols, layer] = 0.9
    return foreground, layering


def test_join_layers_hand_case():
    foreground, layering = _bent_object_maps()
    plain = postprocess(foreground, layering, min_size=0)
    assert len(_objects(plain)) == 5
    joined = postprocess(foreground, layering, min_size=0, join_layers=1)
    validate_stack(joined)
    objects = sorted(_objects(joined), key=len)
    assert [len(obj) for obj in objects] == [12, 40, 40]
    # the L (layers 0 + 1), the cyclic pair (7 + 0) joined; the layer-4 bar stays alone
    # although it touches the L: layer 4 is 3 layers from layer 1
    assert objects[0] == frozenset((y, x) for y in (14, 15) for x in range(10, 16))
    assert joined.shape[0] == 8 and joined.max() == 3
    # each joined object lies in the slice of its largest piece, ids by smallest input id
    assert set(np.unique(joined[0])) == {0, 1, 2} and set(np.unique(joined[4])) == {0, 3}
    # min_size counts the joined object: 12 px alone is dropped, 40 px pieces of 20 kept
    dropped = postprocess(foreground, layering, min_size=21, join_layers=1)
    assert sorted(len(obj) for obj in _objects(dropped)) == [40, 40]
    assert len(_objects(postprocess(foreground, layering, min_size=21))) == 0
    # a wider join also takes the layer-4 bar (4 is 3 layers from 1)
    assert len(_objects(postprocess(foreground, layering, min_size=0, join_layers=3))) == 2


@pytest.mark.parametrize("connectivity", [1, 2])
def test_join_matches_slow_reference_on_random_stacks(connectivity):
    rng = np.random.default_rng(11 + connectivity)
    for stack in _random_piece_stacks(rng, 8, 0.25, connectivity):
        layers = stack.shape[0]
        apart, min_size = int(rng.integers(0, 3)), int(rng.integers(0, 6))
        got = join_neighbour_layers(stack, apart, min_size, connectivity)
        validate_stack(got)
        assert got.shape[0] >= layers
        assert _objects(got) == _reference_join(stack, apart, min_size, connectivity)
        ids = np.unique(got)
        assert ids.tolist() == list(range(ids.size))


def test_join_without_touching_neighbours_is_algorithm_1():
    foreground, layering = _crossing_maps()[:2]
    # the crossing bars are in layers 0 and 1 of 3: joined as neighbours; apart they stay two
    np.testing.assert_array_equal(postprocess(foreground, layering, min_size=5, join_layers=0),
                                  postprocess(foreground, layering, min_size=5))
    assert len(_objects(postprocess(foreground, layering, min_size=5, join_layers=1))) == 1
    rng = np.random.default_rng(5)
    for _ in range(5):
        layering = np.zeros((12, 12, 6), np.float32)
        foreground = np.zeros((12, 12), np.float32)
        for layer in (0, 2, 4):               # layers 2 apart: no neighbours for join_layers=1
            rows, cols = rng.integers(0, 9, 2)
            layering[rows:rows + 3, cols:cols + 3, layer] = 0.9
            foreground[rows:rows + 3, cols:cols + 3] = 0.9
        np.testing.assert_array_equal(
            postprocess(foreground, layering, min_size=4, join_layers=1),
            postprocess(foreground, layering, min_size=4))


def test_join_layers_checks():
    with pytest.raises(PostprocessError, match="join_layers"):
        postprocess(*_bent_object_maps(), join_layers=-1)
    with pytest.raises(PostprocessError, match="label stack"):
        join_neighbour_layers(np.zeros((4, 4), np.int32), 1)
    Config(join_layers=1).validate()
    for bad in (-1, 8, 1.5):
        with pytest.raises(ConfigError, match="join_layers"):
            Config(join_layers=bad).validate()


def _reference_capped_join(stack: np.ndarray, apart: int, min_size: int, connectivity: int,
                           max_area: float) -> set[frozenset]:
    """Slow join with an area limit: count every (pixel, neighbour) contact between objects
    of slices at most ``apart`` apart with loops, then join pairs one at a time, most contact
    first (ties: smaller ids), unless the joined pixel set would exceed ``max_area``."""
    layers, height, width = stack.shape
    reach = 1 if connectivity == 1 else 2
    contact: dict[tuple[int, int], int] = {}
    pixels: dict[int, set] = {}
    for k in range(layers):
        for y in range(height):
            for x in range(width):
                if stack[k, y, x]:
                    pixels.setdefault(int(stack[k, y, x]), set()).add((y, x))
    for a in range(layers):
        for b in range(a + 1, layers):
            gap = b - a
            if min(gap, layers - gap) > apart:
                continue
            for y in range(height):
                for x in range(width):
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            yy, xx = y + dy, x + dx
                            if (abs(dy) + abs(dx) > reach or not 0 <= yy < height
                                    or not 0 <= xx < width):
                                continue
                            first, second = int(stack[a, y, x]), int(stack[b, yy, xx])
                            if first and second:
                                key = (min(first, second), max(first, second))
                                contact[key] = contact.get(key, 0) + 1
    group = {label: label for label in pixels}
    members = {label: set(found) for label, found in pixels.items()}
    for (first, second), _ in sorted(contact.items(), key=lambda item: (-item[1], item[0])):
        left, right = group[first], group[second]
        if left == right or len(members[left] | members[right]) > max_area:
            continue
        for label, owner in group.items():
            if owner == right:
                group[label] = left
        members[left] |= members.pop(right)
    return {frozenset(found) for found in members.values() if len(found) >= max(min_size, 1)}


def test_join_area_limit_hand_case():
    """Two whole bars of neighbouring layers that touch along their length stay apart under
    the limit; a bar cut in two where its layer changes is joined."""
    foreground = np.zeros((20, 30), np.float32)
    layering = np.zeros((20, 30, 8), np.float32)
    for rows, cols, layer in ((np.s_[2:4], np.s_[2:22], 0), (np.s_[4:6], np.s_[2:22], 1),
                              (np.s_[10:12], np.s_[2:12], 3), (np.s_[10:12], np.s_[12:22], 4)):
        foreground[rows, cols] = 0.9
        layering[rows, cols, layer] = 0.9
    unlimited = postprocess(foreground, layering, min_size=0, join_layers=1)
    assert sorted(len(obj) for obj in _objects(unlimited)) == [40, 80]
    limited = postprocess(foreground, layering, min_size=0, join_layers=1, join_max_area=60)
    assert sorted(len(obj) for obj in _objects(limited)) == [40, 40, 40]
    assert frozenset((y, x) for y in (10, 11) for x in range(2, 22)) in _objects(limited)
    # the limit is the joined object's area: exactly 80 may be joined, 79 not
    assert len(_objects(postprocess(foreground, layering, min_size=0, join_layers=1,
                                    join_max_area=80))) == 2
    assert len(_objects(postprocess(foreground, layering, min_size=0, join_layers=1,
                                    join_max_area=79))) == 3


def test_join_area_limit_joins_most_contact_first():
    """A (layer 0) touches B (layer 1) along 10 px, B touches C (layer 2) at one corner: with
    room for two pieces, A and B are joined, C stays alone."""
    stack = np.zeros((3, 12, 12), np.int32)
    stack[0, 0:2, 0:10] = 1      # A, 20 px
    stack[1, 2:4, 0:10] = 2      # B, 20 px, touches A along 10 columns
    stack[2, 4:6, 10:12] = 3     # C, 4 px, touches B's corner only
    joined = join_neighbour_layers(stack, 1, 0, 2, max_area=40)
    assert sorted(len(obj) for obj in _objects(joined)) == [4, 40]
    assert sorted(len(obj) for obj in _objects(join_neighbour_layers(stack, 1, 0, 2))) == [44]
    # a piece larger than the limit by itself is kept as it is
    assert sorted(len(obj) for obj in _objects(join_neighbour_layers(stack, 1, 0, 2,
                                                                    max_area=10))) == [4, 20, 20]


@pytest.mark.parametrize("connectivity", [1, 2])
def test_join_area_limit_matches_slow_reference(connectivity):
    rng = np.random.default_rng(23 + connectivity)
    for stack in _random_piece_stacks(rng, 10, 0.3, connectivity):
        apart, min_size = int(rng.integers(1, 3)), int(rng.integers(0, 6))
        max_area = float(rng.integers(3, 40))
        got = join_neighbour_layers(stack, apart, min_size, connectivity, max_area=max_area)
        validate_stack(got)
        assert _objects(got) == _reference_capped_join(stack, apart, min_size, connectivity,
                                                       max_area)
        # a limit no join can reach is no limit
        np.testing.assert_array_equal(
            join_neighbour_layers(stack, apart, min_size, connectivity, max_area=stack.size),
            join_neighbour_layers(stack, apart, min_size, connectivity))


def test_join_area_limit_checks_and_config():
    with pytest.raises(PostprocessError, match="join_max_area"):
        postprocess(*_bent_object_maps(), join_layers=1, join_max_area=-1)
    with pytest.raises(PostprocessError, match="max_area"):
        join_neighbour_layers(np.zeros((2, 4, 4), np.int32), 1, max_area=-1)
    config = Config(join_layers=1, join_max_area_ratio=1.5, object_area=1000).validate()
    assert config.join_max_area == 1500
    assert Config(join_layers=1).join_max_area == 0
    with pytest.raises(ConfigError, match="object_area"):
        Config(join_layers=1, join_max_area_ratio=1.5).validate().join_max_area
    with pytest.raises(ConfigError, match="needs join_layers"):
        Config(join_max_area_ratio=1.5).validate()
    for bad in (dict(join_max_area_ratio=-1.0), dict(object_area=-5),
                dict(join_max_area_ratio=float("nan"))):
        with pytest.raises(ConfigError, match="join_max_area_ratio and object_area"):
            Config(join_layers=1, **bad).validate()
