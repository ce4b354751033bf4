"""Tiled prediction of large images with objects stitched across tile borders.

A large image is cut into tiles that overlap by ``overlap`` pixels: :func:`predict_image` gives
them the shape that covers the image with the fewest pixels within a budget of ``tile_size ** 2``
pixels per tile (:func:`balanced_tile_shape`). The network runs on batches of tiles, and every
tile is post-processed on its own (Algorithm 1, :func:`layernet.postprocess.postprocess`). The
per-tile instances are then stitched:

* **ownership** — the tiles' *cores* partition the image: neighbouring cores meet in the middle of
  the overlap of their tiles, so every pixel is decided by the tile that sees it with the most
  context. An object's pixels in the core of a tile come from that tile.
* **matching** — the layer an object lands in is decided by context, so the same object can sit in
  layer 2 of one tile and layer 5 of the next. Instances are therefore matched by their pixels,
  not by their layer: in the region shared by two tiles, instance pairs are matched one-to-one by
  decreasing IoU (within the shared region, IoU >= ``match_iou``); a remaining instance that lies
  mostly (>= half of its shared pixels) inside a matched instance of the other tile, and does not
  overlap that instance's partner, is a piece of the same object cut off by the tile border and
  joins it. Matches are merged transitively (union-find), so an object spanning many tiles
  becomes one instance.
* **placement** — each merged object is the union of its parts in the owning cores; objects with
  fewer than ``min_size`` pixels are dropped, and the others are placed into the slices of the
  output label stack so that no slice holds overlaps: an object goes to the layer it held in the
  tile that owns most of it when that slice is free there, else to the first free slice (a new
  slice is added when none is free). Ids ``1..K`` follow the raster order of each object's first
  pixel.

Tiles are post-processed with ``min_size = 0``; the size screening is applied to the stitched
objects. For Algorithm 1 this is the same result (every object is a connected component of a layer
inside the foreground, and a component of at least ``min_size`` pixels always lies in a foreground
component of at least ``min_size`` pixels), but objects cut by a tile border are not lost.

Memory stays bounded: only the parts of each tile's label stack that lie in regions shared with
tiles not yet processed are kept, plus one boolean crop per object part in the owning core.

Nothing in this module imports TensorFlow; the network is any callable mapping a batch of
normalised tiles to probability maps (see :data:`MapsFunction`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from layernet.instances import id_pixel_counts, relabel_stack
from layernet.ordered_worker import OrderedWorker
from layernet.postprocess import postprocess

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TILE_SIZE",
    "MapsFunction",
    "Tile",
    "TilingError",
    "TileStitcher",
    "auto_tile_size",
    "default_overlap",
    "balanced_tile_shape",
    "plan_tiles",
    "tile_grid",
    "tile_starts",
    "predict_tiled",
    "Prediction",
    "predict_image",
    "submit_prediction",
]

MapsFunction = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``maps(tiles (B, h, w, C) float32) -> (foreground (B, h, w), layering (B, h, w, N))``."""

DEFAULT_TILE_SIZE = 768
"""Tile budget chosen by :func:`auto_tile_size`: tiles hold at most 768 x 768 pixels, and images
of at most that many pixels are predicted whole. Measured here, one forward pass of the default
UNet-M/64 adds about 340 MB of memory at 512 x 512 and about 750 MB at 752 x 752."""


class TilingError(ValueError):
    """Raised for invalid tiling parameters or tile results of the wrong shape."""


@dataclass(frozen=True)
class Tile:
    """One tile: its rectangle in the image and its core (the pixels it decides).

    Rectangles are ``(y0, x0, y1, x1)`` with exclusive ends, in image coordinates.
    """

    index: int
    rect: tuple[int, int, int, int]
    core: tuple[int, int, int, int]

    @property
    def slices(self) -> tuple[slice, slice]:
        """Index expression of the tile in the image."""
        y0, x0, y1, x1 = self.rect
        return slice(y0, y1), slice(x0, x1)


def auto_tile_size(stride: int, tile_size: int = DEFAULT_TILE_SIZE) -> int:
    """Return ``tile_size`` rounded down to a multiple of ``stride`` (at least ``4 * stride``)."""
    if stride < 1:
        raise TilingError(f"stride must be >= 1, got {stride}")
    return max(4 * stride, tile_size // stride * stride)


def default_overlap(tile_size: int, stride: int = 1) -> int:
    """Default overlap of neighbouring tiles: about ``tile_size / 6``, rounded up to ``stride``.

    Every tile then decides only pixels at least ``overlap / 2`` pixels away from its inner
    borders, so the network sees that much context around every pixel it decides.
    """
    overlap = -(-max(tile_size // 6, 1) // stride) * stride
    return min(overlap, tile_size // 2)


def tile_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)`` with at least ``overlap`` shared pixels.

    Tiles step by ``tile_size - overlap``; the last tile is moved back to end at ``length`` (so
    it may overlap its neighbour by more). A length not larger than ``tile_size`` gives ``[0]``.
    """
    if tile_size < 1 or overlap < 0 or overlap >= tile_size:
        raise TilingError(
            f"need tile size >= 1 and 0 <= overlap < tile size, got tile size {tile_size} "
            f"and overlap {overlap}"
        )
    if length <= tile_size:
        return [0]
    step = tile_size - overlap
    starts = list(range(0, length - tile_size, step))
    starts.append(length - tile_size)
    return starts


def _axis_starts(length: int, side: int, overlap: int) -> list[int]:
    """:func:`tile_starts`, or ``[0]`` when one tile spans the axis (whatever the overlap)."""
    return [0] if side >= length else tile_starts(length, side, overlap)


def _balanced_side(length: int, count: int, overlap: int, stride: int) -> int:
    """Smallest side (a multiple of ``stride``, at most ``length``) of ``count`` tiles covering
    ``length`` pixels with ``overlap`` shared pixels between neighbours."""
    if count == 1:
        return length
    side = -(-(length + (count - 1) * overlap) // count)
    return min(length, -(-side // stride) * stride)


def balanced_tile_shape(shape: tuple[int, int], tile_size: int, overlap: int, stride: int = 1
                        ) -> tuple[int, int]:
    """Tile shape that covers an image with the fewest network pixels, within a pixel budget.

    Tiles hold at most ``tile_size ** 2`` pixels but need not be square: for every number of
    tile rows, the tile height is the smallest that covers the image with ``overlap`` pixels
    shared between neighbours (rounded up to ``stride``), the width the largest that fits the
    budget, and the shape whose grid (:func:`tile_grid`) has the fewest pixels in all wins (ties:
    fewer tiles). An image of at most ``tile_size ** 2`` pixels is one tile. A 696 x 520 image
    and a 768 px budget give one tile (four 512 px tiles before: 2.9x its pixels); 2048 x 2048
    with the default 128 px overlap gives nine 768 x 768 tiles (1.27x its pixels, 1.56x with
    the square 512 px tiles used before).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the image.
    tile_size : int
        The budget: tiles hold at most ``tile_size * tile_size`` pixels.
    overlap : int
        Minimum number of pixels shared by neighbouring tiles.
    stride : int, optional
        Tile sides are multiples of it (the network's stride), unless they span the image.

    Returns
    -------
    tuple of int
        ``(tile height, tile width)``, each at most the image's side.
    """
    height, width = shape
    if height < 1 or width < 1:
        raise TilingError(f"cannot tile an empty image of shape {shape}")
    if tile_size < 1 or stride < 1 or overlap < 0:
        raise TilingError(f"need tile size >= 1, stride >= 1 and overlap >= 0, got tile size "
                          f"{tile_size}, stride {stride} and overlap {overlap}")
    budget = tile_size * tile_size
    if height * width <= budget:
        return height, width
    best: tuple[int, int, int, int] | None = None  # (pixels, tiles, tile height, tile width)
    for rows in range(1, height + 1):
        if best is not None and (height + (rows - 1) * overlap) * width >= best[0]:
            break  # more rows can only cost more pixels
        tile_height = _balanced_side(height, rows, overlap, stride)
        if rows > 1 and tile_height <= overlap:
            break
        if tile_height * min(width, overlap + 1) > budget:
            continue  # no tile of this height fits the budget
        columns = max(1, -(-width // (budget // tile_height)))
        tile_width = _balanced_side(width, columns, overlap, stride)
        while tile_height * tile_width > budget or (columns > 1 and tile_width <= overlap):
            columns += 1
            tile_width = _balanced_side(width, columns, overlap, stride)
            if columns > width:
                break
        if tile_height * tile_width > budget or (columns > 1 and tile_width <= overlap):
            continue
        count = (len(_axis_starts(height, tile_height, overlap))
                 * len(_axis_starts(width, tile_width, overlap)))
        candidate = (count * tile_height * tile_width, count, tile_height, tile_width)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    if best is None:
        raise TilingError(f"no tile of at most {tile_size} x {tile_size} pixels covers a "
                          f"{height} x {width} image with an overlap of {overlap}")
    return best[2], best[3]


def plan_tiles(shape: tuple[int, int], tile_size: int, overlap: int, stride: int = 1
               ) -> list[Tile] | None:
    """How :func:`predict_image` cuts an image: ``None`` to predict it whole, else its tiles.

    Whole when ``tile_size`` is 0 or the image, padded to ``stride``, holds at most
    ``tile_size ** 2`` pixels; else the grid of :func:`balanced_tile_shape`.
    """
    height, width = shape
    padded_area = (-(-height // stride) * stride) * (-(-width // stride) * stride)
    if not tile_size or padded_area <= tile_size * tile_size:
        return None
    return tile_grid(shape, balanced_tile_shape(shape, tile_size, overlap, stride), overlap)


def _core_bounds(starts: list[int], extent: int, length: int) -> list[tuple[int, int]]:
    """Core interval of each tile along one axis: cuts in the middle of each overlap."""
    cuts = [0]
    for first, second in zip(starts[:-1], starts[1:]):
        cuts.append((second + first + extent) // 2)
    cuts.append(length)
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


def tile_grid(shape: tuple[int, int], tile_size: int | tuple[int, int], overlap: int
              ) -> list[Tile]:
    """Cut an image of ``shape = (H, W)`` into overlapping tiles in raster order.

    All tiles have the same shape ``(min(H, tile height), min(W, tile width))``; their cores
    partition the image.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the image.
    tile_size : int or tuple of int
        Side of a square tile, or ``(height, width)`` (e.g. from :func:`balanced_tile_shape`).
    overlap : int
        Minimum number of pixels shared by neighbouring tiles, ``0 <= overlap < tile_size``.

    Returns
    -------
    list of Tile
    """
    height, width = shape
    if height < 1 or width < 1:
        raise TilingError(f"cannot tile an empty image of shape {shape}")
    tile_height, tile_width = ((tile_size, tile_size) if np.isscalar(tile_size)
                               else (int(tile_size[0]), int(tile_size[1])))
    extent_y, extent_x = min(height, tile_height), min(width, tile_width)
    starts_y = _axis_starts(height, tile_height, overlap)
    starts_x = _axis_starts(width, tile_width, overlap)
    cores_y = _core_bounds(starts_y, extent_y, height)
    cores_x = _core_bounds(starts_x, extent_x, width)
    tiles = []
    for (y0, (cy0, cy1)) in zip(starts_y, cores_y):
        for (x0, (cx0, cx1)) in zip(starts_x, cores_x):
            tiles.append(Tile(len(tiles), (y0, x0, y0 + extent_y, x0 + extent_x),
                              (cy0, cx0, cy1, cx1)))
    return tiles


def _intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int]
                  ) -> tuple[int, int, int, int] | None:
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, x0, y1, x1


def _local(rect: tuple[int, int, int, int], origin: tuple[int, int, int, int]
           ) -> tuple[slice, slice]:
    """Index expression of the image rectangle ``rect`` inside a tile whose rect is ``origin``."""
    return (slice(rect[0] - origin[0], rect[2] - origin[0]),
            slice(rect[1] - origin[1], rect[3] - origin[1]))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, count: int) -> None:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))

    def find(self, item: int) -> int:
        parent = self.parent
        root = item
        while parent[root] != root:
            root = parent[root]
        while parent[item] != root:
            parent[item], item = root, parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


@dataclass
class _Part:
    """The pixels of one tile instance inside its tile's core."""

    fragment: int
    layer: int
    top_left: tuple[int, int]
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def _pair_codes(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Unique codes ``a * base + b`` of id pairs co-occurring at a pixel, with pixel counts."""
    base = int(second.max()) + 1 if second.size else 1
    codes = []
    for layer_a in first:
        on_a = layer_a > 0
        if not on_a.any():
            continue
        for layer_b in second:
            both = on_a & (layer_b > 0)
            if both.any():
                codes.append(layer_a[both] * base + layer_b[both])
    if not codes:
        empty = np.zeros(0, np.int64)
        return empty, empty, base
    pairs, counts = np.unique(np.concatenate(codes), return_counts=True)
    return pairs, counts, base


def _overlapping_pairs(stack: np.ndarray) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a != b``, of ids of one label stack that share a pixel (both orders)."""
    result: set[tuple[int, int]] = set()
    for index in range(stack.shape[0] - 1):
        pairs, _, base = _pair_codes(stack[index:index + 1], stack[index + 1:])
        for a, b in zip((pairs // base).tolist(), (pairs % base).tolist()):
            result.add((a, b))
            result.add((b, a))
    return result


class TileStitcher:
    """Collect the label stacks of the tiles of one image and stitch them into one label stack.

    Add the tiles in any order with :meth:`add`, then call :meth:`finish`.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the image.
    tiles : list of Tile
        The tile grid (:func:`tile_grid`).
    min_size : int, optional
        Stitched objects with fewer pixels are dropped.
    match_iou : float, optional
        Two instances of neighbouring tiles are the same object when their IoU inside the region
        shared by the tiles is at least this.
    layers : int or None, optional
        Minimum number of slices of the result (default: the most slices of any added tile).
    """

    def __init__(self, shape: tuple[int, int], tiles: list[Tile], min_size: int = 0,
                 match_iou: float = 0.5, layers: int | None = None) -> None:
        if not 0.0 < match_iou <= 1.0:
            raise TilingError(f"match_iou must be in (0, 1], got {match_iou}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.tiles = list(tiles)
        self.min_size = int(min_size)
        self.match_iou = float(match_iou)
        self.layers = layers or 0
        self._added: set[int] = set()
        self._pending: dict[tuple[int, int], np.ndarray] = {}
        self._neighbours = {
            tile.index: [(other.index, shared) for other in self.tiles if other.index != tile.index
                         for shared in [_intersection(tile.rect, other.rect)] if shared]
            for tile in self.tiles
        }
        self._union = _UnionFind()
        self._parts: list[_Part] = []

    def add(self, tile_index: int, stack: np.ndarray) -> None:
        """Add the label stack ``(L, h, w)`` of one tile (ids unique across its slices)."""
        tile = self.tiles[tile_index]
        y0, x0, y1, x1 = tile.rect
        stack = np.asarray(stack)
        if stack.ndim != 3 or stack.shape[1:] != (y1 - y0, x1 - x0):
            raise TilingError(f"tile {tile_index}: expected a label stack (L, {y1 - y0}, "
                              f"{x1 - x0}), got shape {stack.shape}")
        if tile_index in self._added:
            raise TilingError(f"tile {tile_index} was added twice")
        self._added.add(tile_index)
        self.layers = max(self.layers, stack.shape[0])

        areas = id_pixel_counts(stack)
        if areas is not None and areas.size > 1 and areas[1:].all():
            local = stack  # ids are 1..K already (Algorithm 1's output): no renumbering pass
        else:
            local = relabel_stack(stack, dtype=np.int64)
            areas = id_pixel_counts(local)
        count = int(local.max()) if local.size else 0
        dropped = (self._small_interior(tile, local, areas) if self.min_size > 1 and count
                   else np.zeros(count + 1, dtype=bool))
        offset = len(self._union.parent)
        self._union.add(count)

        core = _local(tile.core, tile.rect)
        for layer_index, layer in enumerate(local):
            core_labels = layer[core]
            boxes = ndimage.find_objects(core_labels.astype(np.int32, copy=False),
                                         max_label=count)
            for label, box in enumerate(boxes, start=1):
                if box is None or dropped[label]:
                    continue
                mask = core_labels[box] == label
                self._parts.append(_Part(
                    offset + label - 1, layer_index,
                    (tile.core[0] + box[0].start, tile.core[1] + box[1].start), mask))

        for other, shared in self._neighbours[tile_index]:
            crop = local[(slice(None),) + _local(shared, tile.rect)].astype(np.int64)
            crop = np.where(crop > 0, crop + offset, 0)  # global fragment id + 1, 0 = none
            if other in self._added:
                self._match(self._pending.pop((other, tile_index)), crop)
            else:
                self._pending[(tile_index, other)] = crop

    def _small_interior(self, tile: Tile, local: np.ndarray, areas: np.ndarray) -> np.ndarray:
        """Which ids of ``local`` (pixel counts ``areas``, index = id) are smaller than
        ``min_size`` and seen by no other tile (boolean, like ``areas``).

        Such an instance lies in this tile's core only, so it is final as it is and would be
        dropped after stitching anyway; skipping it early saves memory and time.
        """
        seen_elsewhere = np.zeros(areas.size, dtype=bool)
        for _, shared in self._neighbours[tile.index]:
            seen_elsewhere[local[(slice(None),) + _local(shared, tile.rect)].reshape(-1)] = True
        drop = (areas < self.min_size) & ~seen_elsewhere
        drop[0] = False
        return drop

    def _match(self, first: np.ndarray, second: np.ndarray) -> None:
        """Merge the instances of two tiles seen in their shared region (ids shifted by +1)."""
        pairs, inter, base = _pair_codes(first, second)
        if pairs.size == 0:
            return
        ids_a, ids_b = pairs // base, pairs % base
        area_a = np.bincount(first.reshape(-1), minlength=int(ids_a.max()) + 1)
        area_b = np.bincount(second.reshape(-1), minlength=base)
        iou = inter / (area_a[ids_a] + area_b[ids_b] - inter)
        candidates = np.flatnonzero(iou >= self.match_iou)
        order = candidates[np.lexsort((ids_b[candidates], ids_a[candidates], -iou[candidates]))]
        partner: dict[tuple[int, int], int] = {}
        for a, b in zip(ids_a[order].tolist(), ids_b[order].tolist()):
            if (0, a) in partner or (1, b) in partner:
                continue
            partner[(0, a)], partner[(1, b)] = b, a
            self._union.union(a - 1, b - 1)
        # Pieces of an object cut apart by the tile border join the piece they lie in: for every
        # instance, its partner of largest intersection (ties: the lowest id).
        best_a = self._best_partners(ids_a, ids_b, inter, area_a)
        best_b = self._best_partners(ids_b, ids_a, inter, area_b)
        overlapping: dict[int, set[tuple[int, int]]] = {}
        for side, best, own in ((0, best_a, first), (1, best_b, second)):
            for item, other in best:
                if (side, item) in partner:
                    continue
                sibling = partner.get((1 - side, other))
                if sibling is None:
                    continue
                if side not in overlapping:
                    overlapping[side] = _overlapping_pairs(own)
                if (item, sibling) in overlapping[side]:
                    continue  # a different object overlapping the matched one
                self._union.union(item - 1, other - 1)

    @staticmethod
    def _best_partners(ids: np.ndarray, others: np.ndarray, inter: np.ndarray,
                       areas: np.ndarray) -> list[tuple[int, int]]:
        """``(id, partner)`` for ids whose largest-intersection partner holds >= half of them."""
        order = np.lexsort((others, -inter, ids))
        first = order[np.r_[True, ids[order][1:] != ids[order][:-1]]]
        contained = 2 * inter[first] >= areas[ids[first]]
        first = first[contained]
        return list(zip(ids[first].tolist(), others[first].tolist()))

    def finish(self, dtype: type | None = None) -> np.ndarray:
        """Stitch the added tiles into one label stack.

        Parameters
        ----------
        dtype : type, optional
            Integer dtype of the result; default uint16, or uint32 beyond 65535 objects.

        Returns
        -------
        numpy.ndarray
            Label stack ``(L, H, W)`` with ``L >= layers``, ids ``1..K`` in raster order of each
            object's first pixel.
        """
        missing = sorted(set(tile.index for tile in self.tiles) - self._added)
        if missing:
            raise TilingError(f"tiles {missing[:5]} were never added")
        groups: dict[int, list[_Part]] = {}
        for part in self._parts:
            groups.setdefault(self._union.find(part.fragment), []).append(part)
        objects = []
        for parts in groups.values():
            area = sum(part.area for part in parts)
            if area < max(self.min_size, 1):
                continue
            top = min(part.top_left[0] for part in parts)
            left = min(part.top_left[1] for part in parts)
            bottom = max(part.top_left[0] + part.mask.shape[0] for part in parts)
            right = max(part.top_left[1] + part.mask.shape[1] for part in parts)
            mask = np.zeros((bottom - top, right - left), dtype=bool)
            for part in parts:
                py, px = part.top_left[0] - top, part.top_left[1] - left
                mask[py:py + part.mask.shape[0], px:px + part.mask.shape[1]] |= part.mask
            first_row = int(np.argmax(mask.any(axis=1)))
            first_col = int(np.argmax(mask[first_row]))
            layer = max(parts, key=lambda part: (part.area, -part.fragment)).layer
            objects.append(((top + first_row, left + first_col), layer, (top, left), mask))
        objects.sort(key=lambda item: item[0])
        if dtype is None:
            dtype = np.uint16 if len(objects) <= np.iinfo(np.uint16).max else np.uint32
        slices = [np.zeros(self.shape, dtype=dtype) for _ in range(max(self.layers, 1))]
        for number, (_, layer, (top, left), mask) in enumerate(objects, start=1):
            window = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))
            order = [layer] + [index for index in range(len(slices)) if index != layer]
            for index in order:
                if index < len(slices) and not slices[index][window][mask].any():
                    break
            else:
                slices.append(np.zeros(self.shape, dtype=dtype))
                index = len(slices) - 1
            slices[index][window][mask] = number
        logger.debug("stitched %d objects from %d tiles into %d slices", len(objects),
                     len(self.tiles), len(slices))
        return np.stack(slices)


def _start_tiled(
    image: np.ndarray,
    maps: MapsFunction,
    tiles: list[Tile],
    instances: Callable[[np.ndarray, np.ndarray], np.ndarray],
    min_size: int,
    batch_size: int,
    match_iou: float,
    spent: dict[str, float],
    maps_out: tuple[np.ndarray, np.ndarray] | None,
    worker: OrderedWorker,
    on_tiles: Callable[[int, int], None] | None = None,
) -> Future:
    """Run the network on the tile batches here and hand their post-processing to ``worker``.

    ``on_tiles(done, total)`` is called here after the network's every batch of tiles.

    Returns the future of the stitched label stack. Once a batch fails, the later batches are
    neither run nor post-processed and the future raises that error.
    """
    stitcher = TileStitcher(image.shape[:2], tiles, min_size=min_size, match_iou=match_iou)
    failed: list[BaseException] = []

    def post_batch(batch_tiles: list[Tile], foregrounds: np.ndarray, layerings: np.ndarray
                   ) -> None:
        if failed:
            return
        clock = time.perf_counter()
        try:
            for tile, foreground, layering in zip(batch_tiles, foregrounds, layerings):
                if maps_out is not None:
                    core = _local(tile.core, tile.rect)
                    y0, x0, y1, x1 = tile.core
                    maps_out[0][y0:y1, x0:x1] = np.asarray(foreground).reshape(
                        layering.shape[:2])[core]
                    maps_out[1][y0:y1, x0:x1] = layering[core]
                stitcher.add(tile.index, instances(foreground, layering))
        except BaseException as error:
            failed.append(error)
            raise
        finally:
            spent["postprocess"] += time.perf_counter() - clock

    def stitch() -> np.ndarray:
        if failed:
            raise failed[0]
        clock = time.perf_counter()
        result = stitcher.finish()
        spent["postprocess"] += time.perf_counter() - clock
        return result

    for start in range(0, len(tiles), batch_size):
        if failed:
            break
        batch_tiles = tiles[start:start + batch_size]
        batch = np.stack([image[tile.slices] for tile in batch_tiles])
        clock = time.perf_counter()
        foregrounds, layerings = maps(batch)
        spent["network"] += time.perf_counter() - clock
        worker.submit(post_batch, batch_tiles, foregrounds, layerings)
        if on_tiles is not None:
            on_tiles(start + len(batch_tiles), len(tiles))
    return worker.submit(stitch)


def predict_tiled(
    image: np.ndarray,
    maps: MapsFunction,
    tile_size: int,
    overlap: int,
    tau: float = 0.5,
    min_size: int = 250,
    overlap_layers: bool = True,
    connectivity: int = 2,
    batch_size: int = 1,
    match_iou: float = 0.5,
    timings: dict[str, float] | None = None,
    maps_out: tuple[np.ndarray, np.ndarray] | None = None,
    instances: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    worker: OrderedWorker | None = None,
) -> np.ndarray:
    """Instances of a normalised image predicted tile by tile and stitched (see module doc).

    Parameters
    ----------
    image : numpy.ndarray
        Normalised image ``(H, W, C)``.
    maps : MapsFunction
        The network: a batch of tiles ``(B, h, w, C)`` -> foreground ``(B, h, w)`` (or
        ``(B, h, w, 1)``) and layering ``(B, h, w, N)``.
    tile_size : int
        Side of a tile (a multiple of the network stride is fastest).
    overlap : int
        Minimum number of pixels shared by neighbouring tiles.
    tau, min_size, overlap_layers, connectivity
        Algorithm 1 parameters, as in :func:`layernet.postprocess.postprocess`.
    batch_size : int, optional
        Tiles per network call.
    match_iou : float, optional
        See :class:`TileStitcher`.
    timings : dict, optional
        If given, seconds spent in ``"network"`` and ``"postprocess"`` (tile post-processing and
        stitching) are added to it.
    maps_out : tuple of numpy.ndarray, optional
        ``(foreground (H, W), layering (H, W, N))`` arrays that receive the maps of each tile's
        core. Note that the layer semantics may change from one core to the next (the network
        decides layers per tile).
    instances : callable, optional
        Post-processing of one tile's maps into a label stack, called as
        ``instances(foreground, layering)`` with no size screening (it is applied after
        stitching). Default: Algorithm 1 with ``tau``, ``overlap_layers``, ``connectivity``.
    worker : layernet.ordered_worker.OrderedWorker, optional
        Runs the post-processing of each tile batch; a threaded worker post-processes batch
        ``k`` while the network runs on batch ``k + 1`` (same result). Default: one after the
        other in this thread.

    Returns
    -------
    numpy.ndarray
        Label stack ``(L, H, W)``, ``L >= N`` (uint16, uint32 beyond 65535 objects).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise TilingError(f"expected an (H, W, C) image, got shape {image.shape}")
    if batch_size < 1:
        raise TilingError(f"batch size must be >= 1, got {batch_size}")
    tiles = tile_grid(image.shape[:2], tile_size, overlap)
    if instances is None:
        def instances(foreground: np.ndarray, layering: np.ndarray) -> np.ndarray:
            return postprocess(foreground, layering, tau=tau, min_size=0,
                               overlap_layers=overlap_layers, connectivity=connectivity)
    spent = {"network": 0.0, "postprocess": 0.0}
    result = _start_tiled(image, maps, tiles, instances, min_size, batch_size, match_iou, spent,
                          maps_out, worker or OrderedWorker(threaded=False)).result()
    logger.debug("tiled prediction: %d tiles of %d px, overlap %d", len(tiles), tile_size, overlap)
    if timings is not None:
        for key, value in spent.items():
            timings[key] = timings.get(key, 0.0) + value
    return result


@dataclass
class Prediction:
    """Result of :func:`predict_image`.

    Attributes
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``, ``L >= N``.
    foreground, layering : numpy.ndarray or None
        The probability maps ``(H, W)`` and ``(H, W, N)`` when requested.
    tiles : int
        Number of tiles the image was cut into (1 = predicted whole).
    """

    stack: np.ndarray
    foreground: np.ndarray | None = None
    layering: np.ndarray | None = None
    tiles: int = 1


def submit_prediction(
    predictor: Any,
    image: np.ndarray,
    worker: OrderedWorker,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 1,
    keep_maps: bool = False,
    timings: dict[str, float] | None = None,
    on_tiles: Callable[[int, int], None] | None = None,
) -> Future:
    """Start predicting one raw image: network here, post-processing on ``worker``.

    Normalisation and the network (of the whole image, or of every batch of tiles) run in the
    calling thread; post-processing and stitching are submitted to ``worker``. With a threaded
    :class:`~layernet.ordered_worker.OrderedWorker` this returns as soon as the network is done,
    so the caller can run the network on the next image while this one is post-processed.
    Parameters are those of :func:`predict_image`.

    Returns
    -------
    concurrent.futures.Future
        Resolves to the :class:`Prediction` (or raises the post-processing error). ``timings``
        is updated when it resolves.

    Raises
    ------
    TilingError
        For a tile size smaller than twice the network stride. Errors of the network are
        raised here too.
    """
    config = predictor.config
    stride = config.stride
    spent = {"normalize": 0.0, "network": 0.0, "postprocess": 0.0}
    clock = time.perf_counter()
    normalized = predictor.normalize(image)
    spent["normalize"] += time.perf_counter() - clock
    height, width = normalized.shape[:2]
    if tile_size is None:
        tile_size = auto_tile_size(stride)
    elif tile_size:
        if tile_size < 2 * stride:
            raise TilingError(f"tile size {tile_size} is too small; use at least {2 * stride} "
                              f"(the network stride is {stride})")
        tile_size = tile_size // stride * stride

    def finish(result: Prediction) -> Prediction:
        if timings is not None:
            for key, value in spent.items():
                timings[key] = timings.get(key, 0.0) + value
        return result

    if overlap is None and tile_size:
        overlap = default_overlap(tile_size, stride)
    tiles = plan_tiles((height, width), tile_size, overlap or 0, stride)
    if tiles is None:
        clock = time.perf_counter()
        foreground, layering = predictor.maps_batch_normalized(normalized[None])
        foreground, layering = foreground[0], layering[0]
        spent["network"] += time.perf_counter() - clock

        def post_whole() -> Prediction:
            clock = time.perf_counter()
            stack = predictor.instances_from_maps(foreground, layering)
            spent["postprocess"] += time.perf_counter() - clock
            return finish(Prediction(stack, foreground if keep_maps else None,
                                     layering if keep_maps else None, 1))

        return worker.submit(post_whole)
    maps_out = None
    if keep_maps:
        channels = getattr(predictor, "map_channels", config.layers)
        maps_out = (np.zeros((height, width), np.float32),
                    np.zeros((height, width, channels), np.float32))
    stitched = _start_tiled(
        normalized, predictor.maps_batch_normalized, tiles,
        lambda fg, maps: predictor.instances_from_maps(fg, maps, min_size=0), config.min_size,
        batch_size, 0.5, spent, maps_out, worker, on_tiles)
    logger.debug("tiled prediction: %d tiles of %d x %d px, overlap %d", len(tiles),
                 tiles[0].rect[2] - tiles[0].rect[0], tiles[0].rect[3] - tiles[0].rect[1], overlap)
    return worker.submit(lambda: finish(Prediction(stitched.result(),
                                                   *(maps_out or (None, None)), len(tiles))))


def predict_image(
    predictor: Any,
    image: np.ndarray,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 1,
    keep_maps: bool = False,
    timings: dict[str, float] | None = None,
    worker: OrderedWorker | None = None,
    on_tiles: Callable[[int, int], None] | None = None,
) -> Prediction:
    """Predict the instances of one raw image, tiled when it is larger than a tile.

    The image is normalised once as a whole (exactly as in training), then predicted whole when
    it fits into one tile and with :func:`predict_tiled` otherwise.

    Parameters
    ----------
    predictor : layernet.inference.Predictor
        The network and its configuration (``normalize``, ``maps_batch_normalized``,
        ``instances_from_maps`` and ``config`` are used).
    image : numpy.ndarray
        Raw ``(H, W, C)`` image.
    tile_size : int or None, optional
        Tile budget: tiles hold at most ``tile_size ** 2`` pixels and an image of at most that
        many pixels (padded to the stride) is predicted whole; larger images are cut into the
        tiles of :func:`balanced_tile_shape`. ``None`` chooses :func:`auto_tile_size`, 0 never
        tiles. Rounded down to a multiple of the network stride.
    overlap : int or None, optional
        Overlap of neighbouring tiles; ``None`` chooses :func:`default_overlap`.
    batch_size : int, optional
        Tiles per network call.
    keep_maps : bool, optional
        Also return the probability maps.
    timings : dict, optional
        Seconds spent in ``"normalize"``, ``"network"`` and ``"postprocess"`` are added to it.
    worker : layernet.ordered_worker.OrderedWorker, optional
        Runs the post-processing; a threaded worker overlaps the post-processing of each tile
        batch with the network on the next (same result). Default: one after the other in this
        thread. To overlap whole images, use :func:`submit_prediction`.
    on_tiles : callable, optional
        Progress of a tiled image: called as ``on_tiles(done, total)`` after the network has run
        on every batch of tiles (not called for an image predicted whole).

    Returns
    -------
    Prediction
    """
    return submit_prediction(predictor, image, worker or OrderedWorker(threaded=False),
                             tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                             keep_maps=keep_maps, timings=timings, on_tiles=on_tiles).result()
