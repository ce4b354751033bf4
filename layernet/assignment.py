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

__all__ = ["object_layer_scores", "distinct_layers", "layer_collisions"]


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


def distinct_layers(scores: np.ndarray, adjacency: np.ndarray) -> np.ndarray:
    """Assign layers so that adjacent objects differ, following each object's preference.

    Objects are taken in order of confidence (largest score first; ties by id); each gets its
    best-scoring layer that no already assigned neighbour holds, or, if its neighbours hold every
    layer, its best layer.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(K + 1, N)`` preference of each object for each layer (e.g.
        :func:`object_layer_scores`); a row of zeros marks an absent object (and row 0).
    adjacency : numpy.ndarray
        ``(K + 1, K + 1)`` boolean or 0/1 adjacency.

    Returns
    -------
    numpy.ndarray
        int32 ``(K + 1,)``: the layer of every object, -1 for index 0 and absent objects.
    """
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
        free = [int(layer) for layer in ranked if int(layer) not in taken]
        layer_of[obj] = free[0] if free else int(ranked[0])
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
