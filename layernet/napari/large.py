"""napari layers of label stacks too large to read whole: read lazily, shown as pyramids.

``predict.py`` writes the label stack of a very large image as an OME-Zarr folder
(``<name>.layers.zarr``) or a tiled BigTIFF (``<name>.layers.tif``), see
:mod:`layernet.label_store`. Read whole, a 32,000² stack of three slices is 12 GB. Here such a
stack stays on disk:

* every slice becomes a *multiscale* Labels layer: level ``k`` is the slice sampled every
  ``2**k`` pixels (nearest neighbour, so ids stay ids), a lazy Dask array over the zarr array,
  down to a level whose longer side is at most :data:`SMALLEST_LEVEL`; napari reads only the
  chunks of the level and region on screen;
* the outlines (the Shapes layer of :mod:`layernet.napari.layers`) are computed object by
  object: one pass over the stack in bands of :data:`BAND_ROWS` rows finds every object's
  bounding box, then each object's box is read and outlined. Memory is bounded by a band and the
  largest object, not by the image. Above ``max_outlines`` objects no outlines are made (napari
  draws tens of thousands of polygons slowly) and a warning says so.

The layer names, colours and metadata are those of
:func:`layernet.napari.layers.prediction_layer_data`. zarr and Dask come with the ``big`` extra.
This module does not import napari.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np

from layernet.lazy_image import require_big_extra
from layernet.napari.layers import (LABELS_OPACITY, OUTLINE_WIDTH, TRANSPARENT, LayerData,
                                    object_outlines)
from layernet.viz import object_colours

logger = logging.getLogger(__name__)

__all__ = ["LAZY_PIXELS", "SMALLEST_LEVEL", "BAND_ROWS", "MAX_OUTLINES", "open_stack_lazily",
           "label_pyramid", "as_layer_data", "object_boxes", "lazy_outline_polygons", "large_prediction_layer_data"]

LAZY_PIXELS = 8192 * 8192
"""Slices with more pixels than this (or any ``.layers.zarr``) are read lazily."""

SMALLEST_LEVEL = 1024
"""The coarsest pyramid level's longer side is at most this many pixels."""

BAND_ROWS = 1024
"""Rows of the stack read at once when the objects' bounding boxes are found."""

MAX_OUTLINES = 20000
"""Default limit on the objects outlined in the Shapes layer."""


class _Box:
    """Bounding box and slice of one object, grown band by band."""

    __slots__ = ("layer", "top", "bottom", "left", "right")

    def __init__(self, layer: int, top: int, bottom: int, left: int, right: int) -> None:
        self.layer, self.top, self.bottom, self.left, self.right = layer, top, bottom, left, right


def open_stack_lazily(path: str | os.PathLike) -> Any:
    """The label stack of a ``.layers.zarr`` folder or a TIFF as an array read on indexing.

    Parameters
    ----------
    path : str or os.PathLike
        An OME-Zarr label stack of :mod:`layernet.label_store` or a TIFF label stack (tiled
        BigTIFF or an ImageJ stack; uncompressed files are memory-mapped).

    Returns
    -------
    array-like
        ``(L, H, W)`` zarr (or memory-mapped) array.

    Raises
    ------
    ValueError
        One line naming the file if it is not a label stack that can be read lazily.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from layernet.label_store import read_label_store

        return read_label_store(path, lazy=True)
    import tifffile

    zarr = require_big_extra("zarr")
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        array = zarr.open(series.aszarr(level=0), mode="r")
    except Exception as error:  # tifffile raises many types for broken files
        text = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"{path}: cannot read the TIFF lazily ({text})") from None
    if not np.issubdtype(np.dtype(array.dtype), np.integer):
        raise ValueError(f"{path}: a label stack holds integer ids, not {array.dtype}")
    if len(array.shape) == 2:
        return _Expanded(array)
    if len(array.shape) != 3:
        raise ValueError(f"{path}: expected a (slices, H, W) label stack, got axes "
                         f"{series.axes} {tuple(array.shape)}")
    return array


class _Expanded:
    """A 2-D array seen as a stack of one slice (indexing only)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = (1, *array.shape)
        self.dtype = array.dtype
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        plane = np.asarray(self.array[rest] if rest else self.array[...])[None]
        return plane[first] if not isinstance(first, (int, np.integer)) else plane[0]


def label_pyramid(plane: Any, smallest: int | None = None) -> list[Any]:
    """Lazy nearest-neighbour pyramid of one label slice.

    Parameters
    ----------
    plane : array-like
        ``(H, W)`` ids, or any ``(H, W, ...)`` array (a Dask array, or anything
        :func:`dask.array.from_array` takes); only the first two axes are subsampled.
    smallest : int or None, optional
        Stop at the first level whose longer side is at most this (None: :data:`SMALLEST_LEVEL`).

    Returns
    -------
    list of dask.array.Array
        Level ``k`` is ``plane[::2**k, ::2**k]``.
    """
    da = require_big_extra("dask.array")
    base = plane if isinstance(plane, da.Array) else da.from_array(plane)
    smallest = SMALLEST_LEVEL if smallest is None else smallest
    levels = [base]
    step = 1
    while max(levels[-1].shape[:2]) > smallest:
        step *= 2
        levels.append(base[::step, ::step])
    return levels


def as_layer_data(pyramid: list[Any]) -> tuple[Any, bool]:
    """A pyramid as napari layer data: the list and ``multiscale=True``, or its one level and
    ``False`` (napari 0.9 cannot make a multiscale Labels layer of a single level)."""
    return (pyramid, True) if len(pyramid) > 1 else (pyramid[0], False)


def object_boxes(stack: Any, band_rows: int = BAND_ROWS) -> dict[int, _Box]:
    """Slice and bounding box of every object of a label stack, reading ``band_rows`` at once.

    Parameters
    ----------
    stack : array-like
        ``(L, H, W)`` ids, indexable like a NumPy array.
    band_rows : int, optional
        Rows read per slice at once.

    Returns
    -------
    dict of int to box
        ``id -> box`` with ``layer`` (0-based slice), ``top``, ``bottom``, ``left``, ``right``
        (half-open pixel ranges).
    """
    from scipy import ndimage

    boxes: dict[int, _Box] = {}
    slices, height = int(stack.shape[0]), int(stack.shape[1])
    for layer in range(slices):
        for top in range(0, height, band_rows):
            band = np.asarray(stack[layer, top:top + band_rows])
            if not band.any():
                continue
            ids = np.unique(band)
            ids = ids[ids > 0]
            # compact the ids of the band so find_objects' list is as long as the band's objects
            compact = np.searchsorted(ids, band).astype(np.int64) + 1
            compact[band == 0] = 0
            for index, found in enumerate(ndimage.find_objects(compact)):
                if found is None:
                    continue
                label = int(ids[index])
                rows, cols = found
                box = boxes.get(label)
                if box is not None and box.layer != layer:
                    raise ValueError(f"id {label} is in slices {box.layer + 1} and {layer + 1}"
                                     " (not a label stack)")
                if box is None:
                    boxes[label] = _Box(layer, top + rows.start, top + rows.stop, cols.start,
                                        cols.stop)
                else:
                    box.bottom = max(box.bottom, top + rows.stop)
                    box.left = min(box.left, cols.start)
                    box.right = max(box.right, cols.stop)
    return boxes


def lazy_outline_polygons(stack: Any, boxes: dict[int, _Box]
                          ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """:func:`layernet.napari.layers.outline_polygons` of a lazily read stack, object by object.

    Parameters
    ----------
    stack : array-like
        ``(L, H, W)`` ids.
    boxes : dict
        :func:`object_boxes` of ``stack``.

    Returns
    -------
    polygons, ids, slices, areas
        As :func:`layernet.napari.layers.outline_polygons` (objects in id order).
    """
    polygons: list[np.ndarray] = []
    ids: list[int] = []
    slices: list[int] = []
    areas: list[int] = []
    for label in sorted(boxes):
        box = boxes[label]
        crop = np.asarray(stack[box.layer, box.top:box.bottom, box.left:box.right]) == label
        area = int(crop.sum())
        for outline in object_outlines(crop, (box.top, box.left)):
            polygons.append(outline)
            ids.append(label)
            slices.append(box.layer + 1)
            areas.append(area)
    return (polygons, np.asarray(ids, dtype=np.int64), np.asarray(slices, dtype=np.int64),
            np.asarray(areas, dtype=np.int64))


def large_prediction_layer_data(stack: Any, name: str, visible: bool = True,
                                max_outlines: int = MAX_OUTLINES,
                                metadata: dict[str, Any] | None = None,
                                source: str | None = None) -> list[LayerData]:
    """napari layers of a lazily read label stack: multiscale Labels per slice, outlines.

    Parameters
    ----------
    stack : array-like
        ``(L, H, W)`` ids read on indexing (:func:`open_stack_lazily`).
    name : str
        Base name of the layers (``<name> slice <k>``, ``<name> outlines``).
    visible : bool, optional
        Whether the layers are shown.
    max_outlines : int, optional
        Outline at most this many objects; with more, the Shapes layer is left out (warning).
    metadata : dict, optional
        Stored in every layer's ``metadata["layernet"]``.
    source : str, optional
        What to name in warnings (the file).

    Returns
    -------
    list of LayerData
        Slice layers (only slices holding objects; slice 1 when there are none), then the
        outlines when there are at most ``max_outlines`` objects.
    """
    da = require_big_extra("dask.array")
    meta = {"layernet": dict(metadata or {})}
    boxes = object_boxes(stack)
    if not boxes:
        warnings.warn(f"{source or name}: the prediction holds no objects", stacklevel=2)
    table = object_colours(max(boxes) if boxes else 0)
    colours = {label: np.append(table[label] / 255.0, 1.0).astype(np.float32)
               for label in boxes}
    filled = sorted({box.layer for box in boxes.values()}) or [0]
    whole = da.from_array(stack, chunks=_chunks(stack))
    layers: list[LayerData] = []
    for index in filled:
        colour_dict: dict[int | None, np.ndarray] = {0: TRANSPARENT, None: TRANSPARENT}
        colour_dict.update({label: colours[label] for label, box in boxes.items()
                            if box.layer == index})
        data, multiscale = as_layer_data(label_pyramid(whole[index]))
        layers.append((data, {
            "name": f"{name} slice {index + 1}", "colormap": colour_dict,
            "opacity": LABELS_OPACITY, "blending": "translucent", "visible": visible,
            "multiscale": multiscale,
            "metadata": {"layernet": {**meta["layernet"], "slice": index + 1}},
        }, "labels"))
    if len(boxes) > max_outlines:
        warnings.warn(f"{source or name}: {len(boxes)} objects, more than {max_outlines}: "
                      "no outlines layer (overlapping objects show on their slice layers)",
                      stacklevel=2)
        return layers
    polygons, ids, slices, areas = lazy_outline_polygons(stack, boxes)
    shapes: dict[str, Any] = {
        "name": f"{name} outlines", "shape_type": "polygon", "edge_width": OUTLINE_WIDTH,
        "face_color": TRANSPARENT, "visible": visible, "metadata": meta,
        "features": {"id": ids, "slice": slices, "area": areas},
    }
    if polygons:
        shapes["edge_color"] = np.stack([colours[label] for label in ids])
    layers.append((polygons, shapes, "shapes"))
    logger.info("%s: %d objects in %d slices read lazily, %d outline polygons", name,
                len(boxes), len(filled), len(polygons))
    return layers


def _chunks(stack: Any) -> tuple[int, int, int]:
    """Dask chunks following the stored chunks (one slice deep), or 1 x 1024 x 1024."""
    stored = getattr(stack, "chunks", None)
    if stored is not None and len(stored) == 3 and all(isinstance(c, int) for c in stored):
        return (1, max(stored[1], 256), max(stored[2], 256))
    return (1, 1024, 1024)
