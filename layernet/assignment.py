"""Object -> layer assignment for the phase-2 targets, computed once from the phase-1 model.

The paper puts every object into the layer where the phase-1 embedding of its overlap-free part
is largest (``Config.layer_assignment = "argmax"``; :func:`layernet.losses.object_layers`). When
phase 1 has not converged (a training of minutes), two touching objects can share that layer;
phase 2 then trains them into one layer map, where Algorithm 1 merges them. The option
``"distinct"`` keeps each object's preference but gives adjacent objects (the repulsion's
neighbours, closer than ``adjacency_distance``) different layers while a free layer exists: a
greedy colouring of the adjacency graph, the most confident object first.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["object_layer_scores", "orientation_index", "object_orientations",
           "orientation_layer_scores", "position_layer_scores", "distinct_layers",
           "layer_collisions"]

ORIENTATION_FLOOR = 1e-3
"""Added to every score of :func:`orientation_layer_scores`, so that a present object's row is
never all zero (a zero row marks an absent object)."""

ORIENTATION_GRID = 720
"""Orientations are snapped to multiples of ``pi / ORIENTATION_GRID`` (a quarter degree), so that
the float32 computation inside training and the float64 one here agree, ties included."""

ISOTROPY_TOLERANCE = 1e-4
"""An object whose two principal spreads differ by less than this fraction of their sum (a disc,
a square) has no main axis; it counts as horizontal (index 0)."""

def object_layer_scores(layering: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """Mean embedding of every object over its overlap-free part (its full silhouette if it has
    none), normalised to unit length.

    Parameters
    ----------
    layering : numpy.ndarray
        ``(H, W, N)`` layer activations of one image.
    stack : numpy.ndarray
        ``(L, H, W)`` label stack with ids ``1..K``.

    Returns
    -------
    numpy.ndarray
        float64 ``(K + 1, N)``; row 0 (background) and rows of absent ids are zero.
    """
    layering = np.asarray(layering, np.float64)
    stack = np.asarray(stack)
    layers = layering.shape[-1]
    count = int(stack.max(initial=0)) + 1
    vectors = layering.reshape(-1, layers)
    covered = (stack > 0).sum(axis=0).reshape(-1)
    free_ids = stack.max(axis=0).reshape(-1) * (covered == 1)
    sums = np.zeros((count, layers))
    np.add.at(sums, free_ids, vectors)
    free_pixels = np.bincount(free_ids, minlength=count)
    full = np.zeros((count, layers))
    for plane in stack.reshape(stack.shape[0], -1):
        np.add.at(full, plane, vectors)
    sums = np.where(free_pixels[:, None] > 0, sums, full)
    sums[0] = 0.0
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)


def orientation_index(var_x: np.ndarray, var_y: np.ndarray, cov_xy: np.ndarray
                      ) -> np.ndarray:
    """Orientation of the main axis from the second moments, snapped to the grid.

    Parameters
    ----------
    var_x, var_y, cov_xy : numpy.ndarray
        Variances of the column (x) and row (y) coordinates of each object's pixels and their
        covariance.

    Returns
    -------
    numpy.ndarray
        int64 in ``[0, ORIENTATION_GRID)``: the angle of the axis of largest spread, measured from
        the x axis towards the y axis, in units of ``pi / ORIENTATION_GRID``; 0 for objects
        without a main axis (:data:`ISOTROPY_TOLERANCE`).
    """
    var_x, var_y, cov_xy = (np.asarray(value, np.float64) for value in (var_x, var_y, cov_xy))
    angle = 0.5 * np.arctan2(2.0 * cov_xy, var_x - var_y)
    index = np.mod(np.round(angle / np.pi * ORIENTATION_GRID), ORIENTATION_GRID).astype(np.int64)
    anisotropy = np.hypot(var_x - var_y, 2.0 * cov_xy)
    return np.where(anisotropy > ISOTROPY_TOLERANCE * (var_x + var_y), index, 0)


def object_orientations(stack: np.ndarray) -> np.ndarray:
    """Orientation of every object's principal axis, from its whole silhouette (overlaps
    included).

    Parameters
    ----------
    stack : numpy.ndarray
        ``(L, H, W)`` label stack with ids ``1..K``.

    Returns
    -------
    numpy.ndarray
        int64 ``(K + 1,)``: :func:`orientation_index` of every object, -1 for absent ids and
        row 0.
    """
    stack = np.asarray(stack)
    count = int(stack.max(initial=0)) + 1
    _, height, width = stack.shape
    rows, cols = np.mgrid[0:height, 0:width]
    x = cols.reshape(-1).astype(np.float64)
    y = rows.reshape(-1).astype(np.float64)
    moments = np.zeros((count, 6))
    for plane in stack:
        ids = plane.reshape(-1)
        for column, values in enumerate((np.ones_like(x), x, y, x * x, y * y, x * y)):
            moments[:, column] += np.bincount(ids, weights=values, minlength=count)
    pixels = moments[:, 0]
    safe = np.where(pixels > 0, pixels, 1.0)
    mean_x, mean_y = moments[:, 1] / safe, moments[:, 2] / safe
    index = orientation_index(moments[:, 3] / safe - mean_x ** 2,
                              moments[:, 4] / safe - mean_y ** 2,
                              moments[:, 5] / safe - mean_x * mean_y)
    present = pixels > 0
    present[0] = False
    return np.where(present, index, -1)


def orientation_layer_scores(index: np.ndarray, layers: int) -> np.ndarray:
    """Preference of each object for each layer by its orientation (not in the paper).

    Layer ``n`` stands for the orientations around ``(n + 0.5) * pi / N``. An object's score for
    it falls linearly with the angular distance ``d`` (at most ``pi / 2``) between the object's
    orientation and that centre: ``1 - d / (pi / 2) + ORIENTATION_FLOOR``. The best layer is the
    sector of the orientation, and the most confident objects are those nearest a sector's
    centre. With :func:`distinct_layers` every object gets the layer of its orientation, and of
    two adjacent objects in one sector (parallel worms) the second the neighbouring sector.

    Parameters
    ----------
    index : numpy.ndarray
        ``(K + 1,)`` orientations from :func:`object_orientations`; -1 marks absent objects.
    layers : int
        ``N``.

    Returns
    -------
    numpy.ndarray
        float64 ``(K + 1, N)``; rows of absent objects are zero.
    """
    index = np.asarray(index, np.int64)
    centres = (np.arange(layers) + 0.5) * ORIENTATION_GRID / layers
    difference = np.abs(index[:, None] - centres[None, :])
    distance = np.minimum(difference, ORIENTATION_GRID - difference)
    scores = 1.0 - distance / (ORIENTATION_GRID / 2) + ORIENTATION_FLOOR
    return np.where((index >= 0)[:, None], scores, 0.0)


def position_layer_scores(column_sums: np.ndarray, pixels: np.ndarray, layers: int
                          ) -> np.ndarray:
    """Preference of each object for each layer by its position (not in the paper).

    For objects without a main axis (round cells), whose orientation is close to arbitrary.
    Objects are ranked by the column of their centroid (left first; ties by id), and every
    object prefers the lower layers. With :func:`distinct_layers`, which takes the objects in
    order of their best score, the objects are coloured from left to right and each gets the
    lowest layer that its neighbours to the left leave free: of two overlapping cells the left
    one is in the lower layer, a rule the network can read from the image around a cell.

    Parameters
    ----------
    column_sums : numpy.ndarray
        ``(K + 1,)`` integer sum of the column indices of each object's pixels (all slices).
    pixels : numpy.ndarray
        ``(K + 1,)`` integer pixel counts; 0 marks an absent object (index 0 is never present).
    layers : int
        ``N``.

    Returns
    -------
    numpy.ndarray
        float64 ``(K + 1, N)``: for the object of rank ``r`` (0 = leftmost) among ``P`` present
        ones, ``(P - r) * (N + 1) + (N - n)`` for layer ``n``; rows of absent objects are zero.
    """
    pixels = np.asarray(pixels, np.int64)
    present = pixels > 0
    present[0] = False
    # quotients of exact integers: equal centroids give equal float64 values, ties go by id
    centre = np.where(present, np.asarray(column_sums, np.float64) / np.maximum(pixels, 1), 0.0)
    ids = np.flatnonzero(present)
    ranked = ids[np.lexsort((ids, centre[ids]))]
    scores = np.zeros((len(pixels), layers))
    rank_score = (len(ranked) - np.arange(len(ranked)))[:, None] * (layers + 1)
    scores[ranked] = rank_score + (layers - np.arange(layers))[None, :]
    return scores


def distinct_layers(scores: np.ndarray, adjacency: np.ndarray, spacing: int = 0
                    ) -> np.ndarray:
    """Assign layers so that adjacent objects differ, following each object's preference.

    Objects are taken in order of confidence (largest score first; ties by id); each gets its
    best-scoring layer that no already assigned neighbour holds, or, if its neighbours hold every
    layer, its best layer. With ``spacing`` > 0 a neighbour's layer also rules out the layers
    up to ``spacing`` away from it, counted cyclically (for layers that are sectors of
    orientation, joined in post-processing when they are that close: ``Config.join_layers``);
    when that leaves no layer, the rule without spacing applies.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(K + 1, N)`` preference of each object for each layer (e.g.
        :func:`object_layer_scores`); a row of zeros marks an absent object (and row 0).
    adjacency : numpy.ndarray
        ``(K + 1, K + 1)`` boolean or 0/1 adjacency.
    spacing : int, optional
        Smallest cyclic distance kept between the layers of neighbours beyond "different"
        (0: only different).

    Returns
    -------
    numpy.ndarray
        int32 ``(K + 1,)``: the layer of every object, -1 for index 0 and absent objects.
    """
    if spacing < 0:
        raise ValueError(f"spacing must be >= 0, got {spacing}")
    scores = np.asarray(scores, np.float64)
    adjacency = np.asarray(adjacency) > 0
    count, layers = scores.shape
    if adjacency.shape != (count, count):
        raise ValueError(f"adjacency {adjacency.shape} does not match scores {scores.shape}")
    present = np.any(scores != 0, axis=1)
    present[0] = False
    layer_of = np.full(count, -1, np.int32)
    order = sorted(np.flatnonzero(present), key=lambda obj: (-scores[obj].max(), obj))
    for obj in order:
        taken = {int(layer_of[other]) for other in np.flatnonzero(adjacency[obj])
                 if other != obj and layer_of[other] >= 0}
        ranked = np.argsort(-scores[obj], kind="stable")
        near = {(layer + step) % layers for layer in taken
                for step in range(-spacing, spacing + 1)}
        spaced = [int(layer) for layer in ranked if int(layer) not in near]
        free = [int(layer) for layer in ranked if int(layer) not in taken]
        layer_of[obj] = spaced[0] if spaced else free[0] if free else int(ranked[0])
    return layer_of


def layer_collisions(assignments: list[np.ndarray], adjacencies: list[np.ndarray],
                     layers: int) -> dict[str, object]:
    """How well an object -> layer assignment separates neighbours, over several images.

    Parameters
    ----------
    assignments : list of numpy.ndarray
        Per image, ``(K + 1,)`` layer of every object (-1 = none; index 0 unused).
    adjacencies : list of numpy.ndarray
        Per image, the ``(K + 1, K + 1)`` adjacency.
    layers : int
        Number of layers ``N``.

    Returns
    -------
    dict
        ``pairs`` (adjacent object pairs), ``shared`` (of them, pairs in one layer) and
        ``objects_per_layer`` (list of ``N`` counts).
    """
    pairs = shared = 0
    per_layer = np.zeros(layers, np.int64)
    for layer_of, adjacency in zip(assignments, adjacencies):
        layer_of = np.asarray(layer_of)
        upper = np.triu(np.asarray(adjacency) > 0, 1)
        upper[0, :] = False
        first, second = np.nonzero(upper)
        pairs += len(first)
        shared += int(np.sum((layer_of[first] == layer_of[second]) & (layer_of[first] >= 0)))
        assigned = layer_of[1:][layer_of[1:] >= 0]
        per_layer += np.bincount(assigned, minlength=layers)[:layers]
    return {"pairs": pairs, "shared": shared, "objects_per_layer": per_layer.tolist()}
