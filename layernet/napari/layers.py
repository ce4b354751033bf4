"""napari layer data of a label stack: one Labels layer per slice and one Shapes layer of outlines.

napari's Labels layers cannot hold overlapping objects, but a label stack never overlaps within a
slice, so every slice becomes a Labels layer of its own (``<name> slice <k>``, 1-based as in Fiji
and in ``predict.py``'s ROI names). Where objects overlap, the upper Labels layer hides the lower
one; the Shapes layer (``<name> outlines``) draws every object's outline as a polygon on top, so
both objects of a crossing stay visible. Each object has one colour in all layers: the colour of
its id in :func:`layernet.viz.object_colours`, the same as in ``predict.py``'s overlay PNG.

The polygons are those of :func:`layernet.export.object_polygons` (the ROIs of ``--save-rois``):
they run between object and background pixel centres, so napari's rasterisation
(``Shapes.to_masks``) gives back exactly the object's pixels (holes filled; an object in several
pieces gets one polygon per piece, all with its id and colour).

The functions return napari "layer data tuples" ``(data, kwargs, layer_type)`` and do not import
napari, so they are usable (and testable) without it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from layernet.export import object_crops, object_polygons
from layernet.instances import object_ids, validate_stack
from layernet.viz import object_colours

logger = logging.getLogger(__name__)

__all__ = [
    "LayerData",
    "id_colours",
    "outline_polygons",
    "object_outlines",
    "prediction_layer_data",
    "image_layer_data",
]

LayerData = tuple[Any, dict[str, Any], str]
"""napari layer data tuple: ``(data, keyword arguments of viewer.add_<type>, layer type)``."""

TRANSPARENT = np.zeros(4, dtype=np.float32)

LABELS_OPACITY = 0.55
"""Opacity of the Labels layers: the image and lower slices show through."""

OUTLINE_WIDTH = 1.0
"""Width of the outlines in pixels of the image."""


def id_colours(stack: np.ndarray) -> dict[int, np.ndarray]:
    """RGBA colour (float32, 0-1) of every object id of a label stack.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    dict of int to numpy.ndarray
        ``id -> (4,)`` colour; the colour of the id in :func:`layernet.viz.object_colours`.
    """
    ids = object_ids(stack)
    table = object_colours(int(ids.max()) if ids.size else 0)
    return {int(label): np.append(table[label] / 255.0, 1.0).astype(np.float32)
            for label in ids}


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Remove the vertices of a closed polygon that lie on the line through their neighbours
    (the outline keeps exactly its shape; straight runs of pixels become one edge)."""
    previous = np.roll(points, 1, axis=0)
    following = np.roll(points, -1, axis=0)
    first = points - previous
    second = following - points
    cross = first[:, 0] * second[:, 1] - first[:, 1] * second[:, 0]
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def object_outlines(mask: np.ndarray, offset: tuple[int, int]) -> list[np.ndarray]:
    """Outline polygons of one object's mask in napari's ``(row, column)`` pixel-centre
    coordinates (one per connected piece), float32 ``(P, 2)``.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean crop of the object.
    offset : tuple of int
        ``(row, column)`` of the crop's top left pixel in the image.
    """
    return [_drop_collinear(points[:, ::-1].astype(np.float64) - 0.5).astype(np.float32)
            for points in object_polygons(mask, offset)]


def outline_polygons(stack: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray,
                                                  np.ndarray]:
    """Outline polygons of every object of a label stack, in napari's ``(row, column)`` order.

    napari puts pixel ``(r, c)``'s centre at ``(r, c)``; the outlines of
    :func:`layernet.export.object_polygons` (ImageJ coordinates, pixel ``(x, y)`` covering
    ``[x, x + 1) x [y, y + 1)``) are shifted by half a pixel accordingly.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    polygons : list of numpy.ndarray
        float32 ``(P, 2)`` vertex arrays, one per connected piece of each object, by id.
    ids : numpy.ndarray
        int64 object id of every polygon.
    slices : numpy.ndarray
        int64 slice (1-based) of every polygon's object.
    areas : numpy.ndarray
        int64 pixel count of every polygon's object.
    """
    polygons: list[np.ndarray] = []
    ids: list[int] = []
    slices: list[int] = []
    areas: list[int] = []
    for label, layer_index, box, crop in object_crops(stack):
        for outline in object_outlines(crop, (box[0].start, box[1].start)):
            polygons.append(outline)
            ids.append(int(label))
            slices.append(layer_index + 1)
            areas.append(int(crop.sum()))
    return (polygons, np.asarray(ids, dtype=np.int64), np.asarray(slices, dtype=np.int64),
            np.asarray(areas, dtype=np.int64))


def image_layer_data(image: np.ndarray, name: str, visible: bool = True,
                     spatial: dict[str, Any] | None = None) -> LayerData:
    """Layer data of a raw image as read by :func:`layernet.io.read_image`.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``: 3 or 4 channels are shown as RGB(A), one as gray, other
        counts as one layer per channel (``channel_axis``).
    name : str
        Layer name.
    visible : bool, optional
        Whether the layer is shown.
    spatial : dict, optional
        ``scale`` / ``translate`` of the image's two spatial axes.

    Returns
    -------
    LayerData
    """
    image = np.asarray(image)
    kwargs: dict[str, Any] = {"name": name, "visible": visible, **(spatial or {})}
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] in (3, 4):
        kwargs["rgb"] = True
    elif image.ndim == 3:
        kwargs["channel_axis"] = 2
    return image, kwargs, "image"


def prediction_layer_data(stack: np.ndarray, name: str, image: np.ndarray | None = None,
                          visible: bool = True, all_slices: bool = False,
                          spatial: dict[str, Any] | None = None,
                          metadata: dict[str, Any] | None = None) -> list[LayerData]:
    """napari layers of a predicted label stack, bottom to top.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)`` (e.g. a ``*.layers.tif`` of ``predict.py``).
    name : str
        Base name of the layers: ``<name>`` (image), ``<name> slice <k>``, ``<name> outlines``.
    image : numpy.ndarray, optional
        The image the stack was predicted from, added first (below the objects).
    visible : bool, optional
        Whether the layers are shown.
    all_slices : bool, optional
        One Labels layer for every slice, empty ones included. By default empty slices are left
        out (``predict.py`` now writes only the slices the objects need; older predictions hold
        N = 8 slices, of which a model usually fills two to four); a
        stack without any object still gives the Labels layer of slice 1.
    spatial : dict, optional
        ``scale`` / ``translate`` of the two spatial axes, given to every layer (so the layers
        line up with an image layer that has them).
    metadata : dict, optional
        Stored in every layer's ``metadata["layernet"]``.

    Returns
    -------
    list of LayerData
        ``[image,] slice layers..., outlines``.

    Raises
    ------
    layernet.instances.LabelStackError
        If ``stack`` is not a valid label stack.
    """
    stack = validate_stack(np.asarray(stack), name=name)
    if stack.shape[0] == 0 or 0 in stack.shape[1:]:
        raise ValueError(f"{name}: the label stack is empty (shape {stack.shape})")
    spatial = dict(spatial or {})
    meta = {"layernet": dict(metadata or {})}
    colours = id_colours(stack)
    layers: list[LayerData] = []
    if image is not None:
        layers.append(image_layer_data(image, name, visible, spatial))
    filled = [index for index in range(stack.shape[0]) if stack[index].any()]
    shown = range(stack.shape[0]) if all_slices else (filled or [0])
    for index in shown:
        labels = stack[index]
        colour_dict: dict[int | None, np.ndarray] = {0: TRANSPARENT, None: TRANSPARENT}
        colour_dict.update({label: colours[label] for label in object_ids(labels[None])})
        layers.append((labels, {
            "name": f"{name} slice {index + 1}", "colormap": colour_dict,
            "opacity": LABELS_OPACITY, "blending": "translucent", "visible": visible,
            "metadata": {"layernet": {**meta["layernet"], "slice": index + 1}}, **spatial,
        }, "labels"))
    polygons, ids, slices, areas = outline_polygons(stack)
    shapes: dict[str, Any] = {
        "name": f"{name} outlines", "shape_type": "polygon", "edge_width": OUTLINE_WIDTH,
        "face_color": TRANSPARENT, "visible": visible, "metadata": meta,
        "features": {"id": ids, "slice": slices, "area": areas}, **spatial,
    }
    if polygons:
        shapes["edge_color"] = np.stack([colours[label] for label in ids])
    layers.append((polygons, shapes, "shapes"))
    logger.debug("%s: %d objects in %d slices, %d outline polygons", name, len(colours),
                 len(filled), len(polygons))
    return layers

