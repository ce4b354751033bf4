"""Training targets derived from a label stack: foreground, overlap-free ids, adjacency.

Paper Section 2.2: the layering loss works on the *overlap-free* part ``O_i^n`` of each object
(pixels covered by exactly one object), and repulsion acts between *adjacent* objects, i.e. objects
whose shortest pixel-to-pixel Euclidean distance is less than ``t = 15`` px. Adjacency is measured
on the full object masks (overlapping objects are adjacent, distance 0).

The adjacency here is the exact Euclidean rule of the paper. (The authors' code approximates it by
dilating both masks with a radius-7 disk, which gives a direction-dependent threshold between
13.45 and 14 px; see ``authors_code.md`` section 1.4.)

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from layernet.instances import (
    LabelStackError,
    foreground as foreground_mask,
    object_ids,
    overlap_free_ids,
    validate_stack,
)

logger = logging.getLogger(__name__)

__all__ = ["Targets", "adjacency_matrix", "compute_targets", "check_consecutive_ids"]


def check_consecutive_ids(stack: np.ndarray, name: str = "label stack") -> int:
    """Check that the object ids of ``stack`` are exactly ``1..K`` and return ``K``.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.
    name : str, optional
        What to call the array in the error message.

    Returns
    -------
    int
        The number of objects ``K`` (0 for an empty stack).

    Raises
    ------
    LabelStackError
        If the stack is not 3-D or its ids are not ``1..K`` (use
        :func:`layernet.instances.relabel_stack` first).
    """
    if not isinstance(stack, np.ndarray) or stack.ndim != 3:
        shape = getattr(stack, "shape", None)
        raise LabelStackError(f"{name}: expected a label stack of shape (L, H, W), got shape {shape}")
    ids = object_ids(stack)
    count = int(ids.size)
    if count and (int(ids[0]) != 1 or int(ids[-1]) != count):
        raise LabelStackError(
            f"{name}: object ids must be 1..K without gaps (found {count} ids between "
            f"{int(ids[0])} and {int(ids[-1])}); call layernet.instances.relabel_stack first"
        )
    return count


def adjacency_matrix(stack: np.ndarray, distance: float = 15.0) -> np.ndarray:
    """Return the object adjacency matrix of a label stack.

    Objects ``i`` and ``j`` are adjacent when the shortest Euclidean distance between a pixel of
    ``i`` and a pixel of ``j`` (pixel centres, full masks incl. overlap parts) is strictly less
    than ``distance``. Overlapping or touching objects are therefore always adjacent.

    Computed exactly: for each object, the Euclidean distance transform of its complement inside
    its bounding box grown by ``ceil(distance)`` pixels, minimised over the pixels of every other
    object in that box (a pixel outside the box is at least ``ceil(distance)`` away).

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)`` with ids ``1..K`` (0 = background).
    distance : float, optional
        Threshold ``t`` in pixels (paper: 15).

    Returns
    -------
    numpy.ndarray
        Boolean ``(K + 1, K + 1)`` array indexed by object id; row and column 0 (background) and
        the diagonal are False; symmetric.

    Raises
    ------
    LabelStackError
        If the ids are not ``1..K``.
    ValueError
        If ``distance`` is not a finite positive number.
    """
    if not (isinstance(distance, (int, float)) and math.isfinite(distance) and distance > 0):
        raise ValueError(f"adjacency distance must be a finite number > 0, got {distance!r}")
    count = check_consecutive_ids(stack)
    adjacency = np.zeros((count + 1, count + 1), dtype=bool)
    if count < 2:
        return adjacency
    height, width = stack.shape[1:]
    margin = int(math.ceil(distance))
    # bounding boxes of every object over all slices
    boxes = [None] * (count + 1)
    for layer in stack:
        for label, box in enumerate(ndimage.find_objects(layer), start=1):
            if box is None:
                continue
            rows, cols = box
            old = boxes[label]
            if old is None:
                boxes[label] = (rows.start, rows.stop, cols.start, cols.stop)
            else:
                boxes[label] = (min(old[0], rows.start), max(old[1], rows.stop),
                                min(old[2], cols.start), max(old[3], cols.stop))
    for label in range(1, count + 1):
        r0, r1, c0, c1 = boxes[label]
        r0, c0 = max(r0 - margin, 0), max(c0 - margin, 0)
        r1, c1 = min(r1 + margin, height), min(c1 + margin, width)
        window = stack[:, r0:r1, c0:c1]
        inside = np.any(window == label, axis=0)
        # distance of every window pixel to the nearest pixel of this object
        dist = ndimage.distance_transform_edt(~inside)
        nearest = np.full(count + 1, np.inf)
        for layer in window:
            occupied = layer > 0
            np.minimum.at(nearest, layer[occupied], dist[occupied])
        adjacency[label] = nearest < distance
    adjacency[0, :] = False
    adjacency[:, 0] = False
    np.fill_diagonal(adjacency, False)
    # both directions compare sqrt of the same integer squared distance: already symmetric
    return adjacency


@dataclass
class Targets:
    """Per-image targets computed once before augmentation.

    Attributes
    ----------
    foreground : numpy.ndarray
        Boolean ``(H, W)``: pixels covered by at least one object (overlaps included).
    overlap_free : numpy.ndarray
        Int32 ``(H, W)``: the object id where exactly one object covers the pixel, else 0.
    num_objects : int
        ``K``, the number of objects (ids ``1..K``).
    adjacency : numpy.ndarray
        Boolean ``(K + 1, K + 1)`` adjacency matrix (see :func:`adjacency_matrix`).
    """

    foreground: np.ndarray
    overlap_free: np.ndarray
    num_objects: int
    adjacency: np.ndarray


def compute_targets(stack: np.ndarray, distance: float = 15.0) -> Targets:
    """Compute foreground, overlap-free id map, object count and adjacency of a label stack.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)`` with ids ``1..K`` (see :func:`layernet.instances.relabel_stack`).
    distance : float, optional
        Adjacency threshold ``t`` in pixels.

    Returns
    -------
    Targets
        The targets of this image.

    Raises
    ------
    LabelStackError
        If ``stack`` is not a valid label stack or its ids are not ``1..K``.
    """
    validate_stack(stack)
    count = check_consecutive_ids(stack)
    adjacency = adjacency_matrix(stack, distance)
    return Targets(
        foreground=foreground_mask(stack),
        overlap_free=overlap_free_ids(stack),
        num_objects=count,
        adjacency=adjacency,
    )
