"""The label stack: the one representation of (possibly overlapping) instances in layernet.

A label stack is an integer array of shape ``(L, H, W)``; 0 is background. Every object id
appears in exactly one slice, and the slices hold no overlaps within themselves (a pixel of a
slice carries at most one id by construction). Objects that overlap sit in different slices.

Conversions provided here:

* per-object binary masks -> stack (:func:`stack_from_masks`, greedy colouring of the overlap
  graph, so that few slices are used);
* label image -> stack (:func:`stack_from_label_image`, ``L = 1``);
* stack -> per-object masks (:func:`masks_from_stack`);
* stack -> flat label image (:func:`flatten_stack`, overlap pixels go to the smallest object,
  see its docstring for the rule);
* :func:`relabel_stack` renumbers ids to ``1..K`` consecutively.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "LabelStackError",
    "validate_stack",
    "stack_from_masks",
    "greedy_colouring",
    "first_free_slice",
    "object_crops",
    "pack_stack",
    "stack_from_label_image",
    "masks_from_stack",
    "object_ids",
    "id_pixel_counts",
    "num_objects",
    "median_object_area",
    "relabel_stack",
    "flatten_stack",
    "foreground",
    "coverage",
    "overlap_free_ids",
    "compact_stack",
    "pad_stack",
]


class LabelStackError(ValueError):
    """Raised when an array is not a valid label stack."""


def validate_stack(stack: np.ndarray, name: str = "label stack") -> np.ndarray:
    """Check that ``stack`` is a valid label stack and return it unchanged.

    Parameters
    ----------
    stack : numpy.ndarray
        Candidate label stack, integer array of shape ``(L, H, W)``.
    name : str, optional
        What to call the array in error messages (for example a file name).

    Returns
    -------
    numpy.ndarray
        The same array.

    Raises
    ------
    LabelStackError
        If the array is not 3-D, not of an integer dtype, holds negative ids, or an id appears in
        more than one slice.
    """
    if not isinstance(stack, np.ndarray):
        raise LabelStackError(f"{name}: expected a numpy array, got {type(stack).__name__}")
    if stack.ndim != 3:
        raise LabelStackError(
            f"{name}: a label stack has shape (L, H, W), got an array of rank {stack.ndim} "
            f"with shape {stack.shape}"
        )
    if not (np.issubdtype(stack.dtype, np.integer) or stack.dtype == np.bool_):
        raise LabelStackError(f"{name}: a label stack must have an integer dtype, got {stack.dtype}")
    if stack.size and stack.min() < 0:
        raise LabelStackError(f"{name}: label ids must be >= 0, found {int(stack.min())}")
    if stack.shape[0] > 1:
        seen: dict[int, int] = {}
        for index, layer in enumerate(stack):
            for label in np.unique(layer):
                label = int(label)
                if label == 0:
                    continue
                if label in seen:
                    raise LabelStackError(
                        f"{name}: object id {label} appears in slices {seen[label]} and {index}; "
                        "every id must live in exactly one slice"
                    )
                seen[label] = index
    return stack


def id_pixel_counts(stack: np.ndarray) -> np.ndarray | None:
    """Pixels per id of a label stack (index = id, ``0`` = background), from a histogram.

    ``None`` when the stack is empty, not of an integer dtype, holds negative ids, or ids too
    large for a table of bounded memory (more than ``2 * stack.size + 65536``).
    """
    stack = np.asarray(stack)
    if stack.size == 0 or not np.issubdtype(stack.dtype, np.integer):
        return None
    if int(stack.min()) < 0 or int(stack.max()) > 2 * stack.size + 65536:
        return None
    return np.bincount(stack.reshape(-1).astype(np.intp, copy=False))


def object_ids(stack: np.ndarray) -> np.ndarray:
    """Return the sorted, unique non-zero ids of a label stack (in the stack's dtype)."""
    stack = np.asarray(stack)
    counts = id_pixel_counts(stack)  # a histogram is 5-10x faster than np.unique's sort/hash
    if counts is not None:
        counts[0] = 0
        return np.flatnonzero(counts).astype(stack.dtype)
    ids = np.unique(stack)
    return ids[ids != 0]


def num_objects(stack: np.ndarray) -> int:
    """Return the number of objects (distinct non-zero ids) in a label stack."""
    return int(object_ids(stack).size)


def median_object_area(stacks: Iterable[np.ndarray]) -> int:
    """Median area in pixels of the objects of several label stacks (0 if none has objects).

    Parameters
    ----------
    stacks : iterable of numpy.ndarray
        Label stacks ``(L, H, W)``, read one at a time (a generator keeps memory at one
        stack plus one number per object).

    Returns
    -------
    int
        The median object area, rounded to the nearest pixel.
    """
    areas = []
    for stack in stacks:
        stack = np.asarray(stack)
        counts = id_pixel_counts(stack)
        if counts is None:
            _, counts = np.unique(stack[stack != 0], return_counts=True)
        else:
            counts = counts[1:]
        areas.append(counts[counts > 0])
    every = np.concatenate(areas) if areas else np.zeros(0)
    return int(round(float(np.median(every)))) if every.size else 0


def greedy_colouring(adjacent: list[set[int]], order: Sequence[int]) -> list[int]:
    """Colour a graph greedily: each node in ``order`` takes the smallest colour unused by its
    already coloured neighbours.

    Parameters
    ----------
    adjacent : list of set of int
        ``adjacent[k]`` holds the neighbours of node ``k``.
    order : sequence of int
        The order in which nodes are coloured.

    Returns
    -------
    list of int
        The colour (0, 1, ...) of every node.
    """
    colour = [-1] * len(adjacent)
    for node in order:
        used = {colour[other] for other in adjacent[node] if colour[other] >= 0}
        c = 0
        while c in used:
            c += 1
        colour[node] = c
    return colour


def _overlap_graph(masks: Sequence[np.ndarray]) -> list[set[int]]:
    """Which masks share a pixel, from the sparse (pixel, object) pairs: memory grows with the
    objects' areas, not with objects x image size."""
    pixels = [np.flatnonzero(mask) for mask in masks]
    owners = np.concatenate([np.full(p.size, k, dtype=np.int64) for k, p in enumerate(pixels)])
    pixels_all = np.concatenate(pixels)
    order = np.argsort(pixels_all, kind="stable")
    pixels_all, owners = pixels_all[order], owners[order]
    adjacent: list[set[int]] = [set() for _ in masks]
    lag = 1
    while lag < pixels_all.size:  # objects sharing a pixel sit in one run of the sorted pixels
        same = np.flatnonzero(pixels_all[lag:] == pixels_all[:-lag])
        if not same.size:
            break
        pairs = np.unique(np.stack([owners[same], owners[same + lag]], axis=1), axis=0)
        for first, second in pairs.tolist():
            adjacent[first].add(second)
            adjacent[second].add(first)
        lag += 1
    return adjacent


def stack_from_masks(
    masks: Sequence[np.ndarray] | np.ndarray,
    shape: tuple[int, int] | None = None,
    dtype: type = np.int32,
) -> np.ndarray:
    """Build a label stack from per-object binary masks (which may overlap).

    Objects are numbered ``1..K`` in the order of ``masks`` (empty masks are dropped and do not
    consume an id). Slices are chosen by greedy colouring of the overlap graph, largest degree
    first, so that overlapping objects land in different slices and few slices are used.

    Parameters
    ----------
    masks : sequence of numpy.ndarray or numpy.ndarray
        ``K`` boolean (or 0/non-zero) arrays of shape ``(H, W)``, or one array ``(K, H, W)``.
    shape : tuple of int, optional
        ``(H, W)``; required only when ``masks`` is an empty sequence (an empty
        ``(0, H, W)`` array gives the shape itself).
    dtype : type, optional
        Integer dtype of the result.

    Returns
    -------
    numpy.ndarray
        Label stack of shape ``(L, H, W)`` with ``L >= 1``.
    """
    if shape is None and isinstance(masks, np.ndarray) and masks.ndim == 3:
        shape = masks.shape[1:]  # an empty (0, H, W) array still tells the image shape
    masks_list = [np.asarray(m) != 0 for m in masks]
    if masks_list:
        shape0 = masks_list[0].shape
        for index, mask in enumerate(masks_list):
            if mask.ndim != 2 or mask.shape != shape0:
                raise LabelStackError(
                    f"mask {index} has shape {mask.shape}, expected a 2-D mask of shape {shape0}"
                )
        shape = shape0  # type: ignore[assignment]
    elif shape is None:
        raise LabelStackError("stack_from_masks needs `shape` when no mask is given")
    masks_list = [m for m in masks_list if m.any()]
    height, width = shape  # type: ignore[misc]
    if not masks_list:
        return np.zeros((1, height, width), dtype=dtype)
    count = len(masks_list)
    adjacent = _overlap_graph(masks_list)
    order = sorted(range(count), key=lambda k: (-len(adjacent[k]), k))
    colour = greedy_colouring(adjacent, order)
    stack = np.zeros((max(colour) + 1, height, width), dtype=dtype)
    for k, (mask, c) in enumerate(zip(masks_list, colour)):
        stack[c][mask] = k + 1
    return stack


def stack_from_label_image(label_image: np.ndarray, dtype: type = np.int32) -> np.ndarray:
    """Wrap a 2-D label image (no overlaps possible) as a label stack with ``L = 1``.

    Parameters
    ----------
    label_image : numpy.ndarray
        Integer array ``(H, W)``, 0 = background.
    dtype : type, optional
        Integer dtype of the result.

    Returns
    -------
    numpy.ndarray
        Label stack ``(1, H, W)`` with the ids of ``label_image`` (not renumbered).
    """
    label_image = np.asarray(label_image)
    if label_image.ndim != 2:
        raise LabelStackError(f"a label image is 2-D, got shape {label_image.shape}")
    if not np.issubdtype(label_image.dtype, np.integer):
        if np.issubdtype(label_image.dtype, np.floating) and np.all(
            np.mod(label_image, 1) == 0
        ):
            label_image = label_image.astype(np.int64)
        else:
            raise LabelStackError(
                f"a label image must hold integer ids, got dtype {label_image.dtype}"
            )
    if label_image.size and label_image.min() < 0:
        raise LabelStackError(f"label ids must be >= 0, found {int(label_image.min())}")
    return label_image[None].astype(dtype)


def masks_from_stack(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a label stack into one boolean mask per object.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    masks : numpy.ndarray
        Boolean array ``(K, H, W)``, one mask per object, in increasing id order.
    ids : numpy.ndarray
        The ``K`` object ids, sorted.
    """
    ids = object_ids(stack)
    masks = np.zeros((ids.size,) + stack.shape[1:], dtype=bool)
    for k, label in enumerate(ids):
        masks[k] = np.any(stack == label, axis=0)
    return masks, ids


def relabel_stack(stack: np.ndarray, dtype: type = np.int32) -> np.ndarray:
    """Renumber the ids of a label stack to ``1..K`` consecutively, keeping their order.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.
    dtype : type, optional
        Integer dtype of the result.

    Returns
    -------
    numpy.ndarray
        Label stack of the same shape with ids ``1..K``.
    """
    ids = object_ids(stack)
    lut_size = int(ids.max()) + 1 if ids.size else 1
    lut = np.zeros(lut_size, dtype=dtype)
    lut[ids] = np.arange(1, ids.size + 1, dtype=dtype)
    return lut[stack]


def foreground(stack: np.ndarray) -> np.ndarray:
    """Return the union of all objects, a boolean ``(H, W)`` array."""
    return np.any(stack > 0, axis=0)


def coverage(stack: np.ndarray) -> np.ndarray:
    """Return how many objects cover each pixel, an integer ``(H, W)`` array."""
    return np.count_nonzero(stack > 0, axis=0).astype(np.int32)


def overlap_free_ids(stack: np.ndarray) -> np.ndarray:
    """Return the overlap-free id map: the id where exactly one object covers a pixel, else 0.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    numpy.ndarray
        Integer ``(H, W)`` array; 0 marks background and pixels covered by two or more objects.
    """
    single = coverage(stack) == 1
    return np.where(single, stack.max(axis=0), 0).astype(np.int32)


def flatten_stack(stack: np.ndarray, rule: str = "smallest") -> np.ndarray:
    """Collapse a label stack into a single label image.

    Where objects overlap only one id can be kept. Rules:

    * ``"smallest"`` (default): the pixel goes to the smallest covering object, so small objects
      lying on big ones stay visible and every object keeps its overlap-free part;
    * ``"first"``: the object of the lowest slice wins;
    * ``"last"``: the object of the highest slice wins.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.
    rule : {"smallest", "first", "last"}, optional
        How overlap pixels are resolved.

    Returns
    -------
    numpy.ndarray
        Label image ``(H, W)`` with the stack's ids.
    """
    if rule not in ("smallest", "first", "last"):
        raise ValueError(f"unknown flatten rule {rule!r}; use 'smallest', 'first' or 'last'")
    stack = np.asarray(stack)
    if stack.shape[0] == 1:
        return stack[0].copy()
    if rule == "first":
        order = range(stack.shape[0] - 1, -1, -1)
    elif rule == "last":
        order = range(stack.shape[0])
    else:
        order = None
    out = np.zeros(stack.shape[1:], dtype=stack.dtype)
    if order is not None:
        for index in order:
            layer = stack[index]
            out = np.where(layer > 0, layer, out)
        return out
    ids = object_ids(stack)
    if ids.size == 0:
        return out
    areas = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    for layer in stack:
        areas += np.bincount(layer.ravel(), minlength=areas.size)[: areas.size]
    best_area = np.full(stack.shape[1:], np.iinfo(np.int64).max, dtype=np.int64)
    for layer in stack:
        layer_area = np.where(layer > 0, areas[layer], np.iinfo(np.int64).max)
        better = layer_area < best_area
        out = np.where(better, layer, out)
        best_area = np.where(better, layer_area, best_area)
    return out


def compact_stack(stack: np.ndarray) -> np.ndarray:
    """Drop empty slices (keeping at least one) and return the shorter stack."""
    keep = [index for index in range(stack.shape[0]) if stack[index].any()]
    if not keep:
        return stack[:1].copy()
    return stack[keep]


def pad_stack(stack: np.ndarray, layers: int) -> np.ndarray:
    """Pad a stack with empty slices to ``layers`` slices (never truncates)."""
    if stack.shape[0] >= layers:
        return stack
    pad = np.zeros((layers - stack.shape[0],) + stack.shape[1:], dtype=stack.dtype)
    return np.concatenate([stack, pad], axis=0)


def object_crops(stack: np.ndarray) -> list[tuple[int, int, tuple[slice, slice], np.ndarray]]:
    """Every object of a label stack as ``(id, slice index, bounding box, boolean crop)``.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    list of tuple
        Sorted by id; the bounding box indexes the image, the crop is the mask inside it.
    """
    from scipy import ndimage

    stack = np.asarray(stack)
    objects = []
    for layer_index, layer in enumerate(stack):
        if not layer.any():
            continue
        labels = layer.astype(np.int64, copy=False)
        for label, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is not None:
                objects.append((label, layer_index, box, layer[box] == label))
    objects.sort(key=lambda item: item[0])
    return objects


def first_free_slice(layers: Sequence[np.ndarray], window: tuple[slice, slice],
                     mask: np.ndarray) -> int | None:
    """Index of the first of ``layers`` where the object ``mask`` (at ``window``) overlaps no
    object, or ``None`` when every slice is taken there."""
    for index, layer in enumerate(layers):
        if not layer[window][mask].any():
            return index
    return None


def pack_stack(stack: np.ndarray) -> np.ndarray:
    """Move every object, in increasing id order, to the first slice where it overlaps nothing.

    Ids and masks stay; the result has as few slices as this greedy (first-fit) colouring
    gives, at least one, and no empty slice. A prediction whose objects sit in 2 of the
    network's 8 layers is written with 2 slices (or 1 when nothing overlaps).

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    numpy.ndarray
        Label stack ``(L', H, W)`` of the same dtype, ``1 <= L' <= L``.
    """
    stack = np.asarray(stack)
    if not (coverage(stack) > 1).any():  # nothing overlaps: first fit puts all in one slice
        return stack.max(axis=0, initial=0)[None]
    packed: list[np.ndarray] = []
    for label, _, box, mask in object_crops(stack):
        index = first_free_slice(packed, box, mask)
        if index is None:
            packed.append(np.zeros(stack.shape[1:], stack.dtype))
            index = len(packed) - 1
        packed[index][box][mask] = label
    if not packed:
        return np.zeros((1,) + stack.shape[1:], stack.dtype)
    return np.stack(packed)
