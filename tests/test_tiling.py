"""Tests of layernet.tiling: tile grid, stitching across tiles, tiled == untiled prediction.

The network is replaced by a deterministic function of the tile (no TensorFlow): the image holds
the ground-truth object ids, and the fake network puts every object it sees into a layer chosen
from what it sees in that tile (how many pixels of the object are visible), so the same object
lands in different layers in neighbouring tiles and stitching must match it by its pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from layernet.instances import masks_from_stack, stack_from_masks, validate_stack
from layernet.postprocess import postprocess
from layernet.tiling import (TileStitcher, TilingError, auto_tile_size, balanced_tile_shape,
                             default_overlap, predict_tiled, tile_grid, tile_starts)

LAYERS = 8


class FakeNetwork:
    """Maps a batch of id-encoded tiles ``(B, h, w, L_gt)`` to perfect probability maps.

    Each object visible in a tile gets one layer: objects are coloured greedily (overlapping or
    touching objects get different layers) in an order, and starting from a layer, that both
    depend on the number of visible pixels, i.e. on the tile position.
    """

    def __init__(self) -> None:
        self.layers_seen: dict[int, set[int]] = {}

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        foregrounds, layerings = [], []
        for tile in batch:
            foreground, layering = self._maps(tile.astype(np.int64))
            foregrounds.append(foreground)
            layerings.append(layering)
        return np.stack(foregrounds), np.stack(layerings)

    def _maps(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.unique(tile)
        ids = ids[ids > 0]
        masks = {int(i): np.any(tile == i, axis=-1) for i in ids}
        grown = {i: ndimage.binary_dilation(m, structure=np.ones((3, 3), bool))
                 for i, m in masks.items()}
        order = sorted(masks, key=lambda i: ((int(masks[i].sum()) * 7919) % 101, i))
        layer_of: dict[int, int] = {}
        for i in order:
            used = {layer_of[j] for j in layer_of if (grown[i] & masks[j]).any()}
            start = int(masks[i].sum()) % LAYERS
            free = [(start + k) % LAYERS for k in range(LAYERS) if (start + k) % LAYERS not in used]
            layer_of[i] = free[0]
            self.layers_seen.setdefault(i, set()).add(free[0])
        layering = np.full(tile.shape[:2] + (LAYERS,), 0.05, dtype=np.float32)
        foreground = np.full(tile.shape[:2], 0.1, dtype=np.float32)
        for i, mask in masks.items():
            layering[mask, layer_of[i]] = 0.9
            foreground[mask] = 0.9
        return foreground, layering


def _ellipse(shape, centre, radii, angle):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / radii[1]) ** 2 + (v / radii[0]) ** 2 <= 1.0


def _random_objects(shape, count, seed):
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        centre = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        radii = rng.uniform(6, 22), rng.uniform(6, 40)
        masks.append(_ellipse(shape, centre, radii, rng.uniform(0, np.pi)))
    return masks


def _as_mask_set(stack):
    masks, _ = masks_from_stack(stack)
    return sorted(tuple(np.flatnonzero(m)) for m in masks)


# ---------------------------------------------------------------------------------------- grid
def test_tile_starts_hand_computed():
    assert tile_starts(100, 100, 10) == [0]
    assert tile_starts(50, 100, 10) == [0]
    assert tile_starts(250, 100, 20) == [0, 80, 150]
    assert tile_starts(260, 100, 20) == [0, 80, 160]
    assert tile_starts(261, 100, 20) == [0, 80, 160, 161]
    with pytest.raises(TilingError):
        tile_starts(100, 32, 32)


@pytest.mark.parametrize("shape,tile,overlap", [((300, 301), 128, 32), ((64, 700), 128, 20),
                                                ((129, 129), 128, 0), ((90, 90), 128, 16)])
def test_cores_partition_the_image(shape, tile, overlap):
    tiles = tile_grid(shape, tile, overlap)
    owners = np.zeros(shape, dtype=int)
    for t in tiles:
        y0, x0, y1, x1 = t.rect
        assert (y1 - y0, x1 - x0) == (min(tile, shape[0]), min(tile, shape[1]))
        cy0, cx0, cy1, cx1 = t.core
        assert y0 <= cy0 < cy1 <= y1 and x0 <= cx0 < cx1 <= x1
        owners[cy0:cy1, cx0:cx1] += 1
    assert np.all(owners == 1)


def test_core_cuts_in_the_middle_of_the_overlap():
    tiles = tile_grid((10, 16), 10, 4)
    assert [t.rect for t in tiles] == [(0, 0, 10, 10), (0, 6, 10, 16)]
    assert [t.core for t in tiles] == [(0, 0, 10, 8), (0, 8, 10, 16)]


def test_auto_tile_size_and_overlap():
    assert auto_tile_size(16) == 768
    assert auto_tile_size(16, 512) == 512
    assert auto_tile_size(32, 500) == 480
    assert auto_tile_size(32, 20) == 128
    assert default_overlap(512, 16) == 96
    assert default_overlap(512, 16) % 16 == 0


# ------------------------------------------------------------------------- balanced tile shapes
def test_balanced_tile_shape_hand_computed():
    # BBBC010's 696 x 520 images fit a 768 px budget: one tile (four 512 px tiles before)
    assert balanced_tile_shape((520, 696), 768, 128, 16) == (520, 696)
    assert balanced_tile_shape((520, 696), 512, 96, 16) == (520, 400)  # 2 tiles, 1.15x pixels
    assert len(tile_grid((520, 696), (520, 400), 96)) == 2
    # 2048^2 with 768 / 128: 3 rows of (2048 + 2 * 128) / 3 = 768 px, 3 columns the same
    assert balanced_tile_shape((2048, 2048), 768, 128, 16) == (768, 768)
    assert len(tile_grid((2048, 2048), (768, 768), 128)) == 9
    # 512 / 96: 4 rows of 584 -> 592 px need 6 columns of 432 (24 tiles, 6,137,856 px), just
    # under 5 x 5 tiles of 496 px (6,150,400 px); square 512 px tiles took 25 x 512^2 = 6,553,600
    assert balanced_tile_shape((2048, 2048), 512, 96, 16) == (592, 432)
    assert len(tile_grid((2048, 2048), (592, 432), 96)) == 24
    # a strip: tall tiles as wide as the image
    assert balanced_tile_shape((20000, 30), 768, 128, 16) == (10064, 30)
    with pytest.raises(TilingError, match="empty"):
        balanced_tile_shape((0, 10), 64, 8)
    with pytest.raises(TilingError, match="no tile"):
        balanced_tile_shape((200, 200), 8, 16)


def _fewest_pixels_by_brute_force(shape, tile, overlap, stride):
    """(pixels, tiles) of the best grid over every tile shape (multiples of ``stride`` or the
    image's side) within the budget: the slow, obviously correct reference."""
    height, width = shape
    best = None
    heights = sorted({height, *range(stride, height, stride)})
    widths = sorted({width, *range(stride, width, stride)})
    # a grid is rows x columns: count each axis once (a one-pixel-wide image has one column)
    rows = {side: len(tile_grid((height, 1), (side, 1), overlap)) for side in heights
            if side == height or side > overlap}
    columns = {side: len(tile_grid((1, width), (1, side), overlap)) for side in widths
               if side == width or side > overlap}
    for tile_height in heights:
        for tile_width in widths:
            if tile_height * tile_width > tile * tile:
                continue
            if (tile_height < height and tile_height <= overlap) or \
                    (tile_width < width and tile_width <= overlap):
                continue
            count = rows[tile_height] * columns[tile_width]
            candidate = (count * tile_height * tile_width, count)
            best = candidate if best is None or candidate < best else best
    return best


@pytest.mark.parametrize("seed", range(4))
def test_balanced_tile_shape_is_the_fewest_pixels_within_the_budget(seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        tile = int(rng.choice([256, 512, 768]))
        overlap = default_overlap(tile, 16)
        shape = (int(rng.integers(100, 2200)), int(rng.integers(100, 2200)))
        got = balanced_tile_shape(shape, tile, overlap, 16)
        tiles = tile_grid(shape, got, overlap)
        assert got[0] * got[1] <= tile * tile
        assert (len(tiles) * got[0] * got[1], len(tiles)) == \
            _fewest_pixels_by_brute_force(shape, tile, overlap, 16), (shape, tile, got)
        owners = np.zeros(shape, dtype=int)
        for t in tiles:
            cy0, cx0, cy1, cx1 = t.core
            owners[cy0:cy1, cx0:cx1] += 1
        assert np.all(owners == 1)


def test_balanced_tile_shape_is_near_the_fewest_pixels_for_tiny_tiles():
    # with tiles of a few strides, rounding to the stride can make odd shapes slightly better
    rng = np.random.default_rng(5)
    for _ in range(60):
        stride = int(rng.choice([1, 2, 4, 8]))
        tile = int(rng.integers(8, 40))
        overlap = int(rng.integers(0, tile // 2))
        shape = (int(rng.integers(1, 150)), int(rng.integers(1, 150)))
        got = balanced_tile_shape(shape, tile, overlap, stride)
        count = len(tile_grid(shape, got, overlap))
        best, _ = _fewest_pixels_by_brute_force(shape, tile, overlap, stride)
        assert got[0] * got[1] <= tile * tile
        assert count * got[0] * got[1] <= 1.1 * best, (shape, tile, overlap, stride, got)


# ------------------------------------------------------------------------------ stitcher units
def test_bar_in_different_layers_becomes_one_object_hand_computed():
    # x: tile 0 = [0, 10) with core [0, 8); tile 1 = [6, 16) with core [8, 16)
    tiles = tile_grid((10, 16), 10, 4)
    bar = np.zeros((10, 16), dtype=bool)
    bar[2:5, 3:14] = True
    left = np.zeros((8, 10, 10), np.int32)
    left[0][bar[:, 0:10]] = 7
    right = np.zeros((8, 10, 10), np.int32)
    right[3][bar[:, 6:16]] = 2
    stitcher = TileStitcher((10, 16), tiles)
    stitcher.add(1, right)
    stitcher.add(0, left)
    stack = stitcher.finish()
    assert stack.shape == (8, 10, 16) and stack.dtype == np.uint16
    # tile 1 owns 3 x 6 pixels of the bar, tile 0 owns 3 x 5: the bar keeps tile 1's layer 3.
    expected = np.zeros((8, 10, 16), np.uint16)
    expected[3][bar] = 1
    np.testing.assert_array_equal(stack, expected)


def test_overlapping_objects_stay_apart_and_no_slice_overlaps():
    shape = (12, 20)
    tiles = tile_grid(shape, 12, 4)  # tiles x [0, 12) and [8, 20), cores [0, 10) and [10, 20)
    big = np.zeros(shape, bool)
    big[1:11, 2:18] = True
    small = np.zeros(shape, bool)
    small[4:8, 7:13] = True  # lies on the big one, crosses the tile border
    left = np.zeros((2, 12, 12), np.int32)
    left[0][big[:, :12]] = 1
    left[1][small[:, :12]] = 2
    right = np.zeros((2, 12, 12), np.int32)
    right[1][big[:, 8:]] = 5  # the layers are swapped in the second tile
    right[0][small[:, 8:]] = 9
    stitcher = TileStitcher(shape, tiles)
    stitcher.add(0, left)
    stitcher.add(1, right)
    stack = stitcher.finish()
    validate_stack(stack)
    assert _as_mask_set(stack) == sorted([tuple(np.flatnonzero(big)), tuple(np.flatnonzero(small))])


def test_small_object_missing_in_one_tile_is_not_swallowed():
    shape = (12, 20)
    tiles = tile_grid(shape, 12, 4)
    big = np.zeros(shape, bool)
    big[1:11, 2:18] = True
    small = np.zeros(shape, bool)
    small[4:8, 6:10] = True  # inside the left core (x < 10), seen only by the left tile
    left = np.zeros((2, 12, 12), np.int32)
    left[0][big[:, :12]] = 1
    left[1][small[:, :12]] = 2
    right = np.zeros((2, 12, 12), np.int32)
    right[0][big[:, 8:]] = 1
    stitcher = TileStitcher(shape, tiles)
    stitcher.add(0, left)
    stitcher.add(1, right)
    assert _as_mask_set(stitcher.finish()) == sorted(
        [tuple(np.flatnonzero(big)), tuple(np.flatnonzero(small))])


def test_min_size_applies_to_stitched_objects():
    tiles = tile_grid((10, 16), 10, 4)
    bar = np.zeros((10, 16), dtype=bool)
    bar[2:4, 2:14] = True  # 24 pixels, 12 + 12 owned per tile
    left = np.zeros((1, 10, 10), np.int32)
    left[0][bar[:, :10]] = 1
    right = np.zeros((1, 10, 10), np.int32)
    right[0][bar[:, 6:]] = 1
    for min_size, count in ((24, 1), (25, 0)):
        stitcher = TileStitcher((10, 16), tiles, min_size=min_size)
        stitcher.add(0, left)
        stitcher.add(1, right)
        assert int((stitcher.finish() > 0).any(axis=0).sum()) == 24 * count


def test_stitcher_rejects_bad_tiles():
    tiles = tile_grid((10, 16), 10, 4)
    stitcher = TileStitcher((10, 16), tiles)
    with pytest.raises(TilingError, match="shape"):
        stitcher.add(0, np.zeros((1, 9, 10), np.int32))
    stitcher.add(0, np.zeros((1, 10, 10), np.int32))
    with pytest.raises(TilingError, match="twice"):
        stitcher.add(0, np.zeros((1, 10, 10), np.int32))
    with pytest.raises(TilingError, match="never added"):
        stitcher.finish()


# --------------------------------------------------------------------- tiled versus untiled
def _untiled(image, network, min_size):
    foreground, layering = network(image[None])
    return postprocess(foreground[0], layering[0], min_size=min_size)


@pytest.mark.parametrize("seed,shape,tile,overlap,batch", [
    (0, (300, 330), 128, 32, 1),
    (1, (256, 400), 96, 24, 3),
    (2, (200, 200), 64, 16, 4),
    (3, (256, 300), (96, 160), 24, 2),  # rectangular tiles (balanced_tile_shape)
])
def test_tiled_prediction_equals_untiled(seed, shape, tile, overlap, batch):
    objects = _random_objects(shape, 22, seed)
    gt = stack_from_masks(objects)
    image = np.moveaxis(gt, 0, -1).astype(np.float32)
    network = FakeNetwork()
    reference = _untiled(image, network, min_size=30)
    network.layers_seen.clear()
    tiled = predict_tiled(image, network, tile, overlap, min_size=30, batch_size=batch)
    validate_stack(tiled)
    assert tiled.shape[0] >= LAYERS
    assert any(len(layers) > 1 for layers in network.layers_seen.values()), \
        "the test must put some object into different layers in different tiles"
    assert len(_as_mask_set(reference)) >= 15
    assert _as_mask_set(tiled) == _as_mask_set(reference)


def test_object_cut_into_pieces_by_a_tile_border_stays_whole():
    # A "C" opening to the left: the left tile sees its two arms as two separate pieces.
    shape = (64, 112)
    yy, xx = np.mgrid[:64, :112]
    radius = np.hypot(yy - 32, xx - 72)
    arc = (radius >= 14) & (radius <= 24) & ~((xx < 72) & (np.abs(yy - 32) < 14))
    arc &= xx >= 40
    image = arc[..., None].astype(np.float32)
    tiles = tile_grid(shape, 64, 16)
    assert len(tiles) == 2
    left_view = ndimage.label(arc[:, :64])[1]
    assert left_view == 2  # really cut in two by the border of the left tile
    network = FakeNetwork()
    tiled = predict_tiled(image, network, 64, 16, min_size=10)
    assert _as_mask_set(tiled) == [tuple(np.flatnonzero(arc))]


def test_timings_are_recorded_and_one_tile_image():
    objects = _random_objects((60, 70), 5, 3)
    image = np.moveaxis(stack_from_masks(objects), 0, -1).astype(np.float32)
    timings: dict[str, float] = {}
    network = FakeNetwork()
    tiled = predict_tiled(image, network, 128, 32, min_size=20, timings=timings)
    assert set(timings) == {"network", "postprocess"} and all(v >= 0 for v in timings.values())
    assert _as_mask_set(tiled) == _as_mask_set(_untiled(image, network, 20))
