"""Stitching of the per-tile instances of one image into one label stack.

Every tile of :func:`layernet.tiles.tile_grid` is post-processed on its own; :class:`TileStitcher`
joins the results:

* **ownership** — the tiles' *cores* partition the image (:class:`layernet.tiles.Tile`). An
  object's pixels in the core of a tile come from that tile.
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

Memory stays bounded: only the parts of each tile's label stack that lie in regions shared with
tiles not yet added are kept (only the layers holding objects there, 4 bytes per id), plus one
boolean crop per object part in the owning core.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from layernet.instances import id_pixel_counts, relabel_stack
from layernet.tiles import Tile, TilingError, rect_in_tile, rect_intersection

logger = logging.getLogger(__name__)

__all__ = ["TileStitcher"]


class _UnionFind:
    """Disjoint sets of the fragment ids ``0..size-1``.

    Only merged fragments take memory: ``parent`` holds an entry for every fragment that is not
    the root of its set (the root of a set is its smallest id), so the thousands of fragments per
    tile that are never matched cost nothing, and :meth:`trim` forgets the fragments that can no
    longer be asked about.
    """

    def __init__(self) -> None:
        self.size = 0
        self.parent: dict[int, int] = {}

    def add(self, count: int) -> int:
        """Add ``count`` new singleton fragments; return the first new id."""
        start = self.size
        self.size += int(count)
        return start

    def find(self, item: int) -> int:
        parent = self.parent
        root = item
        while root in parent:
            root = parent[root]
        while item != root:  # path compression: every fragment on the way points at the root
            parent[item], item = root, parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)

    def trim(self, keep: set[int]) -> None:
        """Forget every fragment but those in ``keep`` (and the roots of their sets).

        Afterwards :meth:`find` of a kept fragment gives the same root as before, and so do later
        unions of kept or new fragments; other fragments must not be asked about again.
        """
        for item in keep:
            self.find(item)  # now points straight at its root, or is one
        self.parent = {item: self.parent[item] for item in keep if item in self.parent}


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


def _fragment_ids(crop: np.ndarray, offset: int) -> np.ndarray:
    """A tile's label crop with its ids ``1..K`` turned into fragment ids ``offset + id``, the
    background kept 0 (int64: fragment id + 1, as :meth:`TileStitcher._match` takes them)."""
    return np.where(crop > 0, crop.astype(np.int64) + offset, 0)


def _neighbours(tiles: list[Tile]) -> dict[int, list[tuple[int, tuple[int, int, int, int]]]]:
    """For every tile, the other tiles it overlaps and the shared rectangle (in tile order).

    Tiles of a grid share row and column spans, so only the tiles of overlapping spans are
    compared: time grows with tiles x (rows + columns), not tiles squared.
    """
    grid: dict[tuple[int, int], dict[tuple[int, int], list[Tile]]] = {}
    for tile in tiles:
        y0, x0, y1, x1 = tile.rect
        grid.setdefault((y0, y1), {}).setdefault((x0, x1), []).append(tile)
    result = {}
    for tile in tiles:
        y0, x0, y1, x1 = tile.rect
        found = []
        for (row_start, row_end), columns in grid.items():
            if row_start >= y1 or row_end <= y0:
                continue
            for (column_start, column_end), others in columns.items():
                if column_start >= x1 or column_end <= x0:
                    continue
                for other in others:
                    shared = rect_intersection(tile.rect, other.rect)
                    if other.index != tile.index and shared:
                        found.append((other.index, shared))
        result[tile.index] = sorted(found)
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
        self._pending: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
        self._neighbours = _neighbours(self.tiles)
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
        offset = self._union.add(count)
        small = np.min_scalar_type(count)  # the tile's own ids, kept for later neighbours

        core = rect_in_tile(tile.core, tile.rect)
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
            crop = local[(slice(None),) + rect_in_tile(shared, tile.rect)]
            crop = crop[crop.reshape(len(crop), -1).any(axis=1)]  # the layers holding objects
            if other in self._added:
                self._match(_fragment_ids(*self._pending.pop((other, tile_index))),
                            _fragment_ids(crop, offset))
            else:  # kept with the tile's own ids, in as few bytes as they fit
                self._pending[(tile_index, other)] = (crop.astype(small), offset)

    def _small_interior(self, tile: Tile, local: np.ndarray, areas: np.ndarray) -> np.ndarray:
        """Which ids of ``local`` (pixel counts ``areas``, index = id) are smaller than
        ``min_size`` and seen by no other tile (boolean, like ``areas``).

        Such an instance lies in this tile's core only, so it is final as it is and would be
        dropped after stitching anyway; skipping it early saves memory and time.
        """
        seen_elsewhere = np.zeros(areas.size, dtype=bool)
        for _, shared in self._neighbours[tile.index]:
            seen_elsewhere[local[(slice(None),) + rect_in_tile(shared, tile.rect)].reshape(-1)] = True
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

    def _assemble(self, parts: list[_Part]
                  ) -> tuple[tuple[int, int], int, tuple[int, int], np.ndarray] | None:
        """One stitched object from its parts: ``(first pixel, layer, top-left, mask)``, or
        ``None`` when it has fewer than ``min_size`` pixels. ``layer`` is the layer it held in
        the tile that owns most of it."""
        area = sum(part.area for part in parts)
        if area < max(self.min_size, 1):
            return None
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
        return (top + first_row, left + first_col), layer, (top, left), mask

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
        objects = [item for item in map(self._assemble, groups.values()) if item is not None]
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
