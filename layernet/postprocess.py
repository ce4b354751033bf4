"""Post-processing of the network's probability maps into instances (paper Algorithm 1).

Given the foreground probability ``F_raw`` (H, W) and the layering activations ``L_raw``
(H, W, N), Algorithm 1 of Chen, Wu & Merhof (BMVC 2022) is:

1. threshold the foreground: ``F = F_raw > tau``;
2. remove connected components of ``F`` smaller than ``S_min`` pixels;
3. within ``F``, switch a pixel on in the layer holding its largest activation (argmax) and,
   when objects may overlap (lines 7-8), also in every layer whose activation exceeds ``tau``;
4. every connected component of every layer with at least ``S_min`` pixels is one object.

Thresholds use a strict ``>``, as the authors' code does (``foreground > 0.5`` and
``layering > 0.5``); the paper says "larger than" too. The size screening keeps components of
**at least** ``min_size`` pixels (the authors drop components with ``area < 250``), both for the
foreground in step 2 and for the objects in step 4. Connected components use 8-neighbourhoods
by default (``connectivity=2``, the scikit-image default the authors relied on). Argmax ties go
to the lowest layer (:func:`numpy.argmax`).

The result is a label stack (see :mod:`layernet.instances`) with one slice per layer, so objects
found in different layers may overlap. Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from layernet.instances import coverage

logger = logging.getLogger(__name__)

__all__ = ["PostprocessError", "postprocess", "postprocess_batch", "label_components"]


class PostprocessError(ValueError):
    """Raised when the probability maps or parameters given to post-processing are invalid."""


_STRUCTURES = {
    1: ndimage.generate_binary_structure(2, 1),
    2: ndimage.generate_binary_structure(2, 2),
}


def _structure(connectivity: int, ndim: int) -> np.ndarray:
    if connectivity not in _STRUCTURES:
        raise PostprocessError(
            f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}"
        )
    if ndim == 2:
        return _STRUCTURES[connectivity]
    # (N, H, W): label every slice on its own (no connection between slices).
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = _STRUCTURES[connectivity]
    return structure


def label_components(mask: np.ndarray, min_size: int = 0, connectivity: int = 2) -> np.ndarray:
    """Label the connected components of a binary mask, dropping small ones.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean ``(H, W)`` array, or ``(N, H, W)`` to label every slice separately in one call.
    min_size : int, optional
        Components with fewer pixels are removed; the others are kept (``>= min_size``).
    connectivity : int, optional
        1 for 4-neighbourhoods, 2 for 8-neighbourhoods (within a slice).

    Returns
    -------
    numpy.ndarray
        int32 label array of the shape of ``mask``, 0 = background. Ids ``1..K`` are unique over
        the whole array and numbered in raster-scan order of each component's first pixel (for
        a stack: slice by slice).
    """
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise PostprocessError(f"label_components: expected a 2-D or 3-D mask, got {mask.shape}")
    structure = _structure(connectivity, mask.ndim)
    labels, count = ndimage.label(mask, structure=structure, output=np.int32)
    if count == 0 or min_size <= 1:
        return labels
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= min_size
    keep[0] = False
    if keep[1:].all():
        return labels
    lut = np.zeros(count + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return np.take(lut, labels)


def _check_maps(foreground: np.ndarray, layering: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    foreground = np.asarray(foreground)
    layering = np.asarray(layering)
    if foreground.ndim == 3 and foreground.shape[-1] == 1:
        foreground = foreground[..., 0]
    if foreground.ndim != 2:
        raise PostprocessError(
            f"foreground: expected shape (H, W) or (H, W, 1), got {foreground.shape}"
        )
    if layering.ndim != 3 or layering.shape[-1] < 1:
        raise PostprocessError(f"layering: expected shape (H, W, N) with N >= 1, got {layering.shape}")
    if layering.shape[:2] != foreground.shape:
        raise PostprocessError(
            f"layering has spatial shape {layering.shape[:2]} but foreground has {foreground.shape}"
        )
    for name, array in (("foreground", foreground), ("layering", layering)):
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
                or array.dtype == np.bool_):
            raise PostprocessError(f"{name}: expected a numeric array, got dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise PostprocessError(f"{name}: probability map contains NaN or infinite values")
    return foreground, layering


def postprocess(
    foreground: np.ndarray,
    layering: np.ndarray,
    tau: float = 0.5,
    min_size: int = 250,
    overlap_layers: bool = True,
    connectivity: int = 2,
    join_layers: int = 0,
    join_max_area: float = 0,
) -> np.ndarray:
    """Turn foreground and layering probabilities into instances (paper Algorithm 1).

    Parameters
    ----------
    foreground : numpy.ndarray
        Foreground probability, ``(H, W)`` or ``(H, W, 1)``.
    layering : numpy.ndarray
        Layering activations, ``(H, W, N)``.
    tau : float, optional
        Threshold for the foreground and (with ``overlap_layers``) for the layers; a pixel is on
        when its value is strictly greater than ``tau`` (as in the authors' code).
    min_size : int, optional
        ``S_min``: foreground components and objects with fewer pixels are removed; components
        with ``>= min_size`` pixels are kept. 0 or 1 keeps everything.
    overlap_layers : bool, optional
        Algorithm 1 lines 7-8: besides its argmax layer, a foreground pixel is also switched on
        in every layer whose activation is ``> tau``, so objects may overlap. ``False`` gives the
        argmax-only variant (one layer per pixel, no overlaps).
    connectivity : int, optional
        2 (default) = 8-connected components, 1 = 4-connected; used for both size screenings
        and for extracting objects.
    join_layers : int, optional
        Not in the paper (0 = Algorithm 1 as published). Components of layers at most this many
        apart, counted cyclically (layer ``N - 1`` neighbours layer 0), that touch or share a
        pixel are one object (:func:`join_neighbour_layers`), screened by ``min_size`` after
        joining. Meant for models trained with ``layer_assignment="orientation"``, whose layers
        are sectors of orientation: a curved object crosses from one sector into the next along
        its body.
    join_max_area : float, optional
        With ``join_layers``: 0 (default) joins every touching pair; otherwise a join that
        would make an object of more than this many pixels is not made (see
        :func:`join_neighbour_layers`), so that two whole objects that touch stay apart.

    Returns
    -------
    numpy.ndarray
        int32 label stack ``(N, H, W)``: slice ``k`` holds the objects found in layer ``k``.
        Ids ``1..K`` are unique across slices, numbered in layer order, then in raster-scan
        order of each object's first pixel. With ``join_layers`` each joined object lies in
        the slice of its largest piece (or the next free one; the stack may then have more
        than ``N`` slices).

    Raises
    ------
    PostprocessError
        If the maps have inconsistent shapes, hold NaN/inf, or a parameter is out of range.
    """
    foreground, layering = _check_maps(foreground, layering)
    if min_size < 0:
        raise PostprocessError(f"min_size must be >= 0, got {min_size}")
    if join_layers < 0:
        raise PostprocessError(f"join_layers must be >= 0 (0 = off), got {join_layers}")
    if join_max_area < 0:
        raise PostprocessError(f"join_max_area must be >= 0 (0 = no limit), got {join_max_area}")
    _structure(connectivity, 2)
    height, width, layers = layering.shape

    fg_mask = label_components(foreground > tau, min_size, connectivity) > 0
    if not fg_mask.any():
        return np.zeros((layers, height, width), dtype=np.int32)

    # (N, H, W) layer masks restricted to the foreground: argmax layer, plus (lines 7-8) every
    # layer above tau.
    best = np.argmax(layering, axis=-1)
    if overlap_layers:
        layer_masks = np.ascontiguousarray(np.moveaxis(layering > tau, -1, 0))
    else:
        layer_masks = np.zeros((layers, height, width), dtype=bool)
    layer_masks[best, np.arange(height)[:, None], np.arange(width)[None, :]] = True
    layer_masks &= fg_mask[None]

    if join_layers:
        pieces = label_components(layer_masks, 0, connectivity)
        stack = join_neighbour_layers(pieces, join_layers, min_size, connectivity,
                                      max_area=join_max_area)
    else:
        stack = label_components(layer_masks, min_size, connectivity)
    logger.debug("postprocess: %d objects in %d layers", int(stack.max()), layers)
    return stack


def _touching_pairs(stack: np.ndarray, apart: int, connectivity: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(P, 2)`` ids of objects in slices at most ``apart`` apart (cyclically, different
    slices) that share a pixel or are neighbours under ``connectivity``, each pair once with
    the smaller id first (sorted), and ``(P,)`` their contact: how many (pixel, neighbour
    offset) pairs join them."""
    layers, height, width = stack.shape
    offsets = np.argwhere(_structure(connectivity, 2)) - 1
    base = int(stack.max(initial=0)) + 1
    positive = stack > 0
    filled = positive.reshape(layers, -1).any(axis=1)
    found = [np.zeros(0, np.int64)]
    for first in range(layers):
        for second in range(first + 1, layers):
            if (min(second - first, layers - (second - first)) > apart or not filled[first]
                    or not filled[second]):
                continue
            for dy, dx in offsets:
                first_window = np.s_[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)]
                second_window = np.s_[max(-dy, 0):height + min(-dy, 0),
                                      max(-dx, 0):width + min(-dx, 0)]
                both = positive[first][first_window] & positive[second][second_window]
                if both.any():
                    a, b = stack[first][first_window], stack[second][second_window]
                    a_ids, b_ids = a[both].astype(np.int64), b[both].astype(np.int64)
                    found.append(np.minimum(a_ids, b_ids) * base + np.maximum(a_ids, b_ids))
    codes, contact = np.unique(np.concatenate(found), return_counts=True)
    return np.stack([codes // base, codes % base], axis=1), contact


def _capped_groups(stack: np.ndarray, pairs: np.ndarray, contact: np.ndarray,
                   max_area: float) -> np.ndarray:
    """Group label of every id ``0..K`` (0 = background) after joining ``pairs`` greedily,
    largest ``contact`` first (ties: smaller ids first), skipping every join whose joined
    object would cover more than ``max_area`` pixels (a pixel in several slices counted
    once).

    The area of a joined group is the sum of its two parts' areas less the pixels they share;
    only pixels that lie in several slices can be shared, so each group keeps the set of its
    pixels among those (few: the overlaps) instead of all its pixels.
    """
    count = int(stack.max(initial=0))
    parent = list(range(count + 1))
    area = np.bincount(stack.reshape(-1), minlength=count + 1).astype(np.int64)
    several = np.flatnonzero(coverage(stack).reshape(-1) >= 2)   # pixels in >= 2 slices
    shared: dict[int, set[int]] = {}
    if several.size:
        flat = stack.reshape(stack.shape[0], -1)[:, several]    # (N, M) ids at those pixels
        slice_index, column = np.nonzero(flat)
        for index, pixel in zip(flat[slice_index, column].tolist(), several[column].tolist()):
            shared.setdefault(index, set()).add(pixel)

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    empty: set[int] = set()
    for pair in np.lexsort((pairs[:, 1], pairs[:, 0], -contact)):
        first, second = root(int(pairs[pair, 0])), root(int(pairs[pair, 1]))
        if first == second:
            continue
        first_pixels, second_pixels = shared.get(first, empty), shared.get(second, empty)
        joined_area = int(area[first] + area[second]) - len(first_pixels & second_pixels)
        if joined_area > max_area:
            continue
        first, second = min(first, second), max(first, second)
        parent[second] = first
        area[first] = joined_area
        if first_pixels or second_pixels:
            shared[first] = first_pixels | second_pixels
        shared.pop(second, None)
    return np.array([root(index) for index in range(count + 1)])


def join_neighbour_layers(stack: np.ndarray, apart: int, min_size: int = 0,
                          connectivity: int = 2, max_area: float = 0) -> np.ndarray:
    """Join objects of neighbouring layers that touch into one object (not in the paper).

    Parameters
    ----------
    stack : numpy.ndarray
        ``(N, H, W)`` label stack with one slice per layer (ids unique across slices), as
        Algorithm 1 labels the layers.
    apart : int
        Objects whose slices are at most this many apart, counted cyclically (slice ``N - 1``
        neighbours slice 0), are joined when they share a pixel or touch (``connectivity``);
        joining is transitive.
    min_size : int, optional
        Joined objects with fewer pixels (their union, a pixel counted once) are removed.
    connectivity : int, optional
        2 = 8-neighbours, 1 = 4-neighbours.
    max_area : float, optional
        0 (default): every touching pair is joined. Otherwise pairs are joined one at a time,
        the pair with the most contact (touching pixel pairs) first, and a join is skipped
        when the joined object would cover more than ``max_area`` pixels (its union, a pixel
        counted once): the pieces of one object cut where its layer changes are joined, two
        whole objects that touch are not. An object that is already larger stays as it is.

    Returns
    -------
    numpy.ndarray
        int32 label stack ``(L, H, W)``, ``L >= N``: every object in one slice, the slice of
        its largest piece if its pixels are free there, else the first slice where they are
        (a new one if none). Ids ``1..K`` in the order of each object's smallest input id.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise PostprocessError(f"expected an (N, H, W) label stack, got shape {stack.shape}")
    if apart < 0 or min_size < 0 or max_area < 0:
        raise PostprocessError(f"apart, min_size and max_area must be >= 0, got {apart}, "
                               f"{min_size} and {max_area}")
    layers, height, width = stack.shape
    count = int(stack.max(initial=0))
    result = np.zeros((layers, height, width), np.int32)
    if count == 0:
        return result
    pairs, contact = _touching_pairs(stack, apart, connectivity)
    if max_area:
        component = _capped_groups(stack, pairs, contact, max_area)
    else:
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                           shape=(count + 1, count + 1))
        _, component = connected_components(graph, directed=False)
    # groups numbered by their smallest id; group 0 = background
    first_id = np.full(component.max() + 1, count + 1)
    np.minimum.at(first_id, component[1:], np.arange(1, count + 1))
    flat = stack.reshape(layers, -1)
    present = np.bincount(flat.reshape(-1), minlength=count + 1) > 0
    order = np.argsort(first_id, kind="stable")
    rank = np.zeros(component.max() + 1, np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    group_of = rank[component]
    group_of[0] = 0
    group_of[~present] = 0
    groups = int(group_of.max())
    grouped = group_of[stack]                                   # (N, H, W)
    # the pixels that hold an object (the others add nothing to any area)
    occupied = group_of[flat[:, np.flatnonzero(np.any(flat > 0, axis=0))]]   # (N, P)
    # area of each group's union (a pixel in several slices of one group counts once)
    ordered = np.sort(occupied, axis=0)
    distinct = np.concatenate([ordered[:1] > 0, (np.diff(ordered, axis=0) != 0)
                               & (ordered[1:] > 0)], axis=0)
    area = np.bincount(ordered[distinct], minlength=groups + 1)
    # the slice of each group's largest piece
    piece_area = np.stack([np.bincount(plane, minlength=groups + 1)
                           for plane in occupied])               # (N, groups + 1)
    home = np.argmax(piece_area, axis=0)
    boxes = [ndimage.find_objects(plane, max_label=groups) for plane in grouped]
    slices = [result[index] for index in range(layers)]
    new_id = 0
    for group in range(1, groups + 1):
        if area[group] < max(min_size, 1):
            continue
        found = [box[group - 1] for box in boxes if box[group - 1] is not None]
        top = min(box[0].start for box in found)
        bottom = max(box[0].stop for box in found)
        left = min(box[1].start for box in found)
        right = max(box[1].stop for box in found)
        window = np.s_[top:bottom, left:right]
        mask = np.any(grouped[(slice(None),) + window] == group, axis=0)
        new_id += 1
        candidates = [int(home[group])] + [index for index in range(len(slices))
                                           if index != int(home[group])]
        for index in candidates:
            if not np.any(slices[index][window][mask]):
                slices[index][window][mask] = new_id
                break
        else:
            extra = np.zeros((height, width), np.int32)
            extra[window][mask] = new_id
            slices.append(extra)
    return np.stack(slices)


def postprocess_batch(
    foregrounds: Sequence[np.ndarray] | np.ndarray,
    layerings: Sequence[np.ndarray] | np.ndarray,
    tau: float = 0.5,
    min_size: int = 250,
    overlap_layers: bool = True,
    connectivity: int = 2,
) -> list[np.ndarray]:
    """Apply :func:`postprocess` to every image of a batch or list.

    Parameters
    ----------
    foregrounds : sequence of numpy.ndarray or numpy.ndarray
        Per-image foreground maps ``(H, W)`` / ``(H, W, 1)``, or a batch ``(B, H, W[, 1])``.
    layerings : sequence of numpy.ndarray or numpy.ndarray
        Per-image layering maps ``(H, W, N)``, or a batch ``(B, H, W, N)``.
    tau, min_size, overlap_layers, connectivity
        As in :func:`postprocess`.

    Returns
    -------
    list of numpy.ndarray
        One int32 label stack ``(N, H, W)`` per image.
    """
    if len(foregrounds) != len(layerings):
        raise PostprocessError(
            f"got {len(foregrounds)} foreground maps but {len(layerings)} layering maps"
        )
    return [
        postprocess(fg, layer, tau=tau, min_size=min_size, overlap_layers=overlap_layers,
                    connectivity=connectivity)
        for fg, layer in zip(foregrounds, layerings)
    ]
