"""Stitching that hands out every object as soon as it is final, and a label stack built in rows.

:class:`StreamingStitcher` is :class:`layernet.stitching.TileStitcher` (same matching, same
objects) for tiles added in raster order, one strip (tile row) after the other. A tile is
*closed* once all tiles that overlap it have been added; an object is *final* once every tile
that holds a piece of it is closed, because only pieces in open tiles can still be matched to
pieces of tiles not yet added. :meth:`StreamingStitcher.pop_final` returns the final objects and
forgets them, so the stitcher holds only the objects of the last strips, however long the image.

:class:`RowAssembler` places the final objects into a band of label-stack rows, first fit: an
object goes to the first slice where it overlaps nothing (a slice is added when none is free), so
the stack has as few slices as greedy colouring gives (often 1 or 2, never the network's N
unused slices). Rows that no later object can reach are handed to a writer
(:class:`layernet.label_store.ZarrLabelWriter`) and dropped, so memory is bounded by the band
(about two tile rows, plus the height of the tallest object).

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

import numpy as np

from layernet.instances import first_free_slice
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
        start = len(self._union.parent)
        super().add(tile_index, stack)
        self._fragments[tile_index] = range(start, len(self._union.parent))
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
        open_roots = {find(fragment) for tile in self._open for fragment in self._fragments[tile]}
        kept, groups = [], {}
        for part in self._parts:
            root = find(part.fragment)
            if root in open_roots:
                kept.append(part)
            else:
                groups.setdefault(root, []).append(part)
        self._parts = kept
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
    """Receives finished rows of a label stack (see :class:`RowAssembler`)."""

    def write_rows(self, top: int, layers: list[np.ndarray]) -> None:
        """Write ``layers[s]`` (rows ``top:top + n`` of slice ``s``) for every slice."""


class RowAssembler:
    """Place final objects into a band of label-stack rows and flush finished rows.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the image.
    writer : RowWriter
        Receives the finished rows.
    flush_rows : int, optional
        Rows are flushed in multiples of this (the writer's chunk height), except at the end.
    dtype : type, optional
        Integer type of the ids.
    on_object : callable, optional
        Called as ``on_object(id, slice, box, mask)`` for every placed object (``box``: the
        ``(rows, columns)`` slices of its bounding box in the image).

    Attributes
    ----------
    peak_rows : int
        The most rows the band held at once (its memory is ``peak_rows x W x slices`` ids).
    """

    def __init__(self, shape: tuple[int, int], writer: RowWriter, flush_rows: int = 1024,
                 dtype: type = np.uint32,
                 on_object: Callable[[int, int, tuple[slice, slice], np.ndarray], None] | None
                 = None) -> None:
        self.height, self.width = int(shape[0]), int(shape[1])
        self.writer = writer
        self.flush_rows = max(1, int(flush_rows))
        self.dtype = dtype
        self.on_object = on_object
        self.top = 0
        self.rows = 0
        self.band: list[np.ndarray] = []
        self.objects = 0
        self.peak_rows = 0

    @property
    def slices(self) -> int:
        """Slices used so far (at least 1)."""
        return max(1, len(self.band))

    def _grow(self, rows: int) -> None:
        if rows <= self.rows:
            return
        rows = min(-(-rows // self.flush_rows) * self.flush_rows, self.height - self.top)
        for index, layer in enumerate(self.band):
            grown = np.zeros((rows, self.width), self.dtype)
            grown[:self.rows] = layer[:self.rows]
            self.band[index] = grown
        self.rows = rows
        self.peak_rows = max(self.peak_rows, rows)

    def place(self, top_left: tuple[int, int], mask: np.ndarray) -> int:
        """Place one object (its mask with top-left pixel ``top_left``); return its id."""
        top, left = top_left
        if top < self.top:
            raise RuntimeError(f"object at row {top} above the flushed rows (< {self.top})")
        self._grow(top - self.top + mask.shape[0])
        window = (slice(top - self.top, top - self.top + mask.shape[0]),
                  slice(left, left + mask.shape[1]))
        index = first_free_slice(self.band, window, mask)
        if index is None:
            self.band.append(np.zeros((self.rows, self.width), self.dtype))
            index = len(self.band) - 1
        self.objects += 1
        if self.objects > np.iinfo(self.dtype).max:
            raise RuntimeError(f"more than {np.iinfo(self.dtype).max} objects")
        self.band[index][window][mask] = self.objects
        if self.on_object is not None:
            box = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))
            self.on_object(self.objects, index, box, mask)
        return self.objects

    def flush(self, bound: int) -> None:
        """Hand the rows above ``bound`` (rounded down to ``flush_rows`` unless it is the image
        height) to the writer and drop them from the band."""
        if bound < self.height:
            bound = bound // self.flush_rows * self.flush_rows
        count = min(bound, self.height) - self.top
        if count <= 0:
            return
        self._grow(count)
        if not self.band:
            self.band.append(np.zeros((self.rows, self.width), self.dtype))
        self.writer.write_rows(self.top, [layer[:count] for layer in self.band])
        self.band = [layer[count:].copy() for layer in self.band]  # frees the flushed rows
        self.rows -= count
        self.top += count
