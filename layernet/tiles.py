"""Tile planning of large images: which tiles cover an image, and which pixels each decides.

A large image is cut into tiles that overlap by ``overlap`` pixels. :func:`plan_tiles` decides
whether an image is predicted whole or tiled, and gives the tiles the shape that covers the image
with the fewest pixels within a budget of ``tile_size ** 2`` pixels per tile
(:func:`balanced_tile_shape`); :func:`tile_grid` lays them out in raster order. The tiles'
*cores* partition the image: neighbouring cores meet in the middle of the overlap of their
tiles, so every pixel is decided by the tile that sees it with the most context
(:mod:`layernet.stitching` joins the tiles' objects, :mod:`layernet.prediction` runs the network
on them).

Rectangles are ``(y0, x0, y1, x1)`` with exclusive ends, in image coordinates.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_TILE_SIZE",
    "Tile",
    "TilingError",
    "auto_tile_size",
    "balanced_tile_shape",
    "default_overlap",
    "plan_tiles",
    "rect_in_tile",
    "rect_intersection",
    "tile_grid",
    "tile_starts",
]

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


def rect_intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int]
                      ) -> tuple[int, int, int, int] | None:
    """The rectangle shared by rectangles ``a`` and ``b``, or ``None`` if they do not overlap."""
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, x0, y1, x1


def rect_in_tile(rect: tuple[int, int, int, int], origin: tuple[int, int, int, int]
                 ) -> tuple[slice, slice]:
    """Index expression of the image rectangle ``rect`` inside a tile whose rect is ``origin``."""
    return (slice(rect[0] - origin[0], rect[2] - origin[0]),
            slice(rect[1] - origin[1], rect[3] - origin[1]))
