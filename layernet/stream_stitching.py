"""Stitching that hands out every object as soon as it is final, and a label stack built in rows.

:class:`StreamingStitcher` is :class:`layernet.stitching.TileStitcher` (same matching, same
objects) for tiles added in raster order, one strip (tile row) after the other. A tile is
*closed* once all tiles that overlap it have been added; an object is *final* once every tile
that holds a piece of it is closed, because only pieces in open tiles can still be matched to
pieces of tiles not yet added. :meth:`StreamingStitcher.pop_final` returns the final objects and
forgets them, and the fragment ids of the closed tiles with them, so the stitcher holds only the
objects of the last strips, however long the image.

:class:`RowAssembler` gives the final objects ids and slices, first fit: an object goes to the
first slice where it overlaps nothing (a slice is added when none is free), so the stack has as
few slices as greedy colouring gives (often 1 or 2, never the network's N unused slices). The
objects wait as masks until no later object can reach their rows; those rows are then drawn
block by block and handed to a writer (:class:`layernet.label_store.ZarrLabelWriter`), so memory
follows the waiting objects (about two tile rows of them, plus the tallest object), not the
image's width.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import bisect
import logging
from typing import Callable, Protocol

import numpy as np

from layernet.stitching import TileStitcher
from layernet.tiles import Tile

logger = logging.getLogger(__name__)

__all__ = ["FinalObject", "RowAssembler", "RowWriter", "StreamingStitcher"]

FinalObject = tuple[tuple[int, int], int, tuple[int, int], np.ndarray]
"""``(first pixel (y, x), layer in its main tile, top-left (y, x), boolean mask)``."""


class StreamingStitcher(TileStitcher):
    """A :class:`~layernet.stitching.TileStitcher` whose final objects can be taken out early.

    Parameters are those of :class:`~layernet.stitching.TileStitcher`. Tiles may be added in any
    order, but memory stays bounded only in raster order.
    """

    def __init__(self, shape: tuple[int, int], tiles: list[Tile], min_size: int = 0,
                 match_iou: float = 0.5, layers: int | None = None) -> None:
        super().__init__(shape, tiles, min_size=min_size, match_iou=match_iou, layers=layers)
        self._fragments: dict[int, range] = {}
        self._open: set[int] = set()

    def add(self, tile_index: int, stack: np.ndarray) -> None:
        """Add the label stack ``(L, h, w)`` of one tile (see :meth:`TileStitcher.add`)."""
        start = self._union.size
        super().add(tile_index, stack)
        self._fragments[tile_index] = range(start, self._union.size)
        self._open.add(tile_index)
        for tile in [tile_index] + [other for other, _ in self._neighbours[tile_index]]:
            if tile in self._open and all(other in self._added
                                          for other, _ in self._neighbours[tile]):
                self._open.discard(tile)
                del self._fragments[tile]

    def pop_final(self) -> list[FinalObject]:
        """Take out the objects that no tile still to come can change, in raster order of their
        first pixel; objects with fewer than ``min_size`` pixels are dropped."""
        find = self._union.find
        ranges = sorted((self._fragments[tile].start, self._fragments[tile].stop)
                        for tile in self._open)
        starts = [start for start, _ in ranges]

        def is_open(fragment: int) -> bool:
            """Whether the fragment belongs to an open tile (its ids are a range per tile)."""
            index = bisect.bisect_right(starts, fragment) - 1
            return index >= 0 and fragment < ranges[index][1]

        # A set is open when it holds a fragment of an open tile: such a fragment is either its
        # root or was merged (so it has a parent entry); the thousands of never-merged fragments
        # of a tile are not visited one by one.
        merged_open = {fragment for fragment in self._union.parent if is_open(fragment)}
        open_roots = {find(fragment) for fragment in merged_open}
        kept, groups = [], {}
        for part in self._parts:
            root = find(part.fragment)
            if root in open_roots or is_open(root):
                kept.append(part)
            else:
                groups.setdefault(root, []).append(part)
        self._parts = kept
        # Only fragments of open tiles can still be matched, and only waiting parts looked up.
        self._union.trim(merged_open | {part.fragment for part in kept})
        objects = [item for item in map(self._assemble, groups.values()) if item is not None]
        objects.sort(key=lambda item: item[0])
        return objects

    def open_top(self) -> int:
        """First row that an object not yet taken out may still reach (the image height when
        every tile was added and every object taken out)."""
        tops = [part.top_left[0] for part in self._parts]
        tops += [tile.core[0] for tile in self.tiles if tile.index not in self._added]
        return min(tops, default=self.shape[0])


class RowWriter(Protocol):
    """Receives finished blocks of a label stack (see :class:`RowAssembler`)."""

    def write_block(self, top: int, left: int, layers: list[np.ndarray]) -> None:
        """Write ``layers[s]`` (rows ``top:top + n``, columns ``left:left + m`` of slice ``s``)
        for every slice; the blocks of a band of rows come left to right."""


class _Pending:
    """An object placed in :class:`RowAssembler` whose lowest rows are not written yet."""

    __slots__ = ("number", "layer", "top", "left", "mask")

    def __init__(self, number: int, layer: int, top: int, left: int, mask: np.ndarray) -> None:
        self.number, self.layer, self.top, self.left, self.mask = number, layer, top, left, mask

    @property
    def bottom(self) -> int:
        return self.top + self.mask.shape[0]

    @property
    def right(self) -> int:
        return self.left + self.mask.shape[1]

    def overlaps(self, top: int, left: int, mask: np.ndarray) -> bool:
        """Whether ``mask`` (top-left pixel ``(top, left)``) shares a pixel with this object."""
        y0, x0 = max(top, self.top), max(left, self.left)
        y1 = min(top + mask.shape[0], self.bottom)
        x1 = min(left + mask.shape[1], self.right)
        if y0 >= y1 or x0 >= x1:
            return False
        own = self.mask[y0 - self.top:y1 - self.top, x0 - self.left:x1 - self.left]
        other = mask[y0 - top:y1 - top, x0 - left:x1 - left]
        return bool((own & other).any())


class RowAssembler:
    """Place final objects into label-stack slices, first fit, and write finished rows.

    The placed objects wait as masks (a boolean crop each, found again through a grid of
    :data:`BUCKET` pixel cells), not as image-wide rows of ids: memory follows the objects of
    the open rows, not the image's width. Rows that no later object can reach are drawn block by
    block (``flush_rows`` x ``block_columns`` ids per slice) and handed to the writer.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the image.
    writer : RowWriter
        Receives the finished blocks.
    flush_rows : int, optional
        Rows are flushed in multiples of this (the writer's chunk height), except at the end.
    dtype : type, optional
        Integer type of the ids.
    on_object : callable, optional
        Called as ``on_object(id, slice, box, mask)`` for every placed object (``box``: the
        ``(rows, columns)`` slices of its bounding box in the image).
    block_columns : int, optional
        Columns of a written block (rounded up to a multiple of ``flush_rows``, the chunk side).

    Attributes
    ----------
    peak_rows : int
        The most rows between the first unwritten row and the lowest waiting object.
    peak_pixels : int
        The most mask pixels (bytes) of waiting objects held at once.
    """

    BUCKET = 64
    """Side of the grid cells that index the waiting objects by position."""

    def __init__(self, shape: tuple[int, int], writer: RowWriter, flush_rows: int = 1024,
                 dtype: type = np.uint32,
                 on_object: Callable[[int, int, tuple[slice, slice], np.ndarray], None] | None
                 = None, block_columns: int = 2048) -> None:
        self.height, self.width = int(shape[0]), int(shape[1])
        self.writer = writer
        self.flush_rows = max(1, int(flush_rows))
        self.block_columns = -(-max(1, int(block_columns)) // self.flush_rows) * self.flush_rows
        self.dtype = dtype
        self.on_object = on_object
        self.top = 0
        self.objects = 0
        self.peak_rows = 0
        self.peak_pixels = 0
        self._slices = 0
        self._pending: list[_Pending] = []
        self._pixels = 0
        self._buckets: dict[tuple[int, int], list[_Pending]] = {}

    @property
    def slices(self) -> int:
        """Slices used so far (at least 1)."""
        return max(1, self._slices)

    @property
    def rows(self) -> int:
        """Rows from the first unwritten row to the bottom of the lowest waiting object."""
        return max((item.bottom for item in self._pending), default=self.top) - self.top

    def _cells(self, top: int, left: int, bottom: int, right: int) -> list[tuple[int, int]]:
        size = self.BUCKET
        return [(row, column) for row in range(top // size, (bottom - 1) // size + 1)
                for column in range(left // size, (right - 1) // size + 1)]

    def _index(self, item: _Pending) -> None:
        for cell in self._cells(item.top, item.left, item.bottom, item.right):
            self._buckets.setdefault(cell, []).append(item)

    def _first_free_slice(self, top: int, left: int, mask: np.ndarray) -> int:
        bottom, right = top + mask.shape[0], left + mask.shape[1]
        taken: set[int] = set()
        seen: set[int] = set()
        for cell in self._cells(top, left, bottom, right):
            for item in self._buckets.get(cell, ()):
                if (item.layer in taken or item.number in seen or item.top >= bottom
                        or item.left >= right or item.bottom <= top or item.right <= left):
                    continue
                seen.add(item.number)
                if item.overlaps(top, left, mask):
                    taken.add(item.layer)
        return next(index for index in range(len(taken) + 1) if index not in taken)

    def place(self, top_left: tuple[int, int], mask: np.ndarray) -> int:
        """Place one object (its mask with top-left pixel ``top_left``); return its id."""
        top, left = int(top_left[0]), int(top_left[1])
        if top < self.top:
            raise RuntimeError(f"object at row {top} above the flushed rows (< {self.top})")
        mask = np.asarray(mask, dtype=bool)
        if self.objects + 1 > np.iinfo(self.dtype).max:
            raise RuntimeError(f"more than {np.iinfo(self.dtype).max} objects")
        index = self._first_free_slice(top, left, mask)
        self.objects += 1
        self._slices = max(self._slices, index + 1)
        item = _Pending(self.objects, index, top, left, mask)
        self._pending.append(item)
        self._index(item)
        self._pixels += mask.size
        self.peak_pixels = max(self.peak_pixels, self._pixels)
        self.peak_rows = max(self.peak_rows, item.bottom - self.top)
        if self.on_object is not None:
            box = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))
            self.on_object(self.objects, index, box, mask)
        return self.objects

    def flush(self, bound: int) -> None:
        """Write the rows above ``bound`` (rounded down to ``flush_rows`` unless it is the image
        height) block by block and forget them."""
        if bound < self.height:
            bound = bound // self.flush_rows * self.flush_rows
        bound = min(bound, self.height)
        count = bound - self.top
        if count <= 0:
            return
        columns = self.block_columns
        reaching: list[list[_Pending]] = [[] for _ in range(-(-self.width // columns))]
        for item in self._pending:
            if item.top < bound:
                for block in range(item.left // columns, (item.right - 1) // columns + 1):
                    reaching[block].append(item)
        for block, items in enumerate(reaching):
            left, right = block * columns, min((block + 1) * columns, self.width)
            layers = [np.zeros((count, right - left), self.dtype) for _ in range(self.slices)]
            for item in items:
                y1 = min(item.bottom, bound)
                x0, x1 = max(item.left, left), min(item.right, right)
                part = item.mask[:y1 - item.top, x0 - item.left:x1 - item.left]
                layers[item.layer][item.top - self.top:y1 - self.top, x0 - left:x1 - left][
                    part] = item.number
            self.writer.write_block(self.top, left, layers)
        kept = []
        for item in self._pending:
            if item.bottom <= bound:
                continue
            if item.top < bound:
                item.mask = item.mask[bound - item.top:].copy()  # frees the written rows
                item.top = bound
            kept.append(item)
        self._pending = kept
        self._pixels = sum(item.mask.size for item in kept)
        self._buckets = {}
        for item in kept:
            self._index(item)
        self.top = bound
