"""Which layer each object belongs to, and the per-layer targets built from it.

* :func:`object_layers`: the argmax of each object's mean embedding (the paper's phase-2
  assignment, frozen once from the phase-1 model, or the authors' online one);
  :func:`distinct_object_layers`: the same preference with adjacent objects in different layers;
  :func:`orientation_object_layers`: by each object's orientation in the crop (not from the
  network); :func:`position_object_layers`: left to right in the crop, each object in the lowest
  layer its neighbours leave free (not from the network);
  :func:`online_layer_assignment` picks one by ``config.layer_assignment``.
* :func:`overlap_targets`: each object's whole silhouette placed into its layer, the masks ``S``
  of Eq. 6 (phase 2) and of the phase-1 layer targets.

Inputs are those of :mod:`layernet.losses`; every result is gradient-free.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from layernet.assignment import (
    ISOTROPY_TOLERANCE,
    ORIENTATION_GRID,
    distinct_layers,
    orientation_layer_scores,
    position_layer_scores,
)
from layernet.config import Config
from layernet.segments import (as_tensors, check_ids, global_segments, l2_normalize,
                               overlap_free_id_map)

__all__ = ["distinct_object_layers", "object_layers", "online_layer_assignment",
           "orientation_object_layers", "position_object_layers", "overlap_targets"]



def _object_sums(embedding: tf.Tensor, stack: tf.Tensor, segments_per_image: tf.Tensor,
                 mean_mode: str) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per global segment: embedding sums over the overlap-free part and over the full
    silhouette, and both pixel counts (no gradient)."""
    embedding = tf.stop_gradient(tf.cast(embedding, tf.float32))
    stack = tf.cast(stack, tf.int32)
    shape = tf.shape(embedding)
    batch, layers = shape[0], shape[3]
    num_segments = batch * segments_per_image
    vectors = tf.reshape(embedding, [-1, layers])
    if mean_mode == "normalized":
        vectors = l2_normalize(vectors)
    segments = global_segments(overlap_free_id_map(stack), segments_per_image)
    free_count = tf.math.unsorted_segment_sum(tf.ones_like(segments, tf.float32), segments,
                                              num_segments)
    free_sums = tf.math.unsorted_segment_sum(vectors, segments, num_segments)
    slices = tf.shape(stack)[3]
    full_segments = global_segments(stack, segments_per_image)       # (B*H*W*L,)
    full_count = tf.math.unsorted_segment_sum(tf.ones_like(full_segments, tf.float32),
                                              full_segments, num_segments)
    per_slice = tf.reshape(tf.repeat(vectors, slices, axis=0), [-1, layers])
    full_sums = tf.math.unsorted_segment_sum(per_slice, full_segments, num_segments)
    return free_sums, free_count, full_sums, full_count


def _distinct_batch(scores: "np.ndarray", adjacency: "np.ndarray") -> "np.ndarray":
    """:func:`layernet.assignment.distinct_layers` for every image of a batch (NumPy)."""
    return np.stack([distinct_layers(image_scores, image_adjacency)
                     for image_scores, image_adjacency in zip(scores, adjacency)]).astype(np.int32)


@tf.function(reduce_retracing=True, autograph=False)
def _distinct_object_layers(embedding: tf.Tensor, stack: tf.Tensor,
                            adjacency: tf.Tensor, mean_mode: str) -> tf.Tensor:
    segments_per_image = tf.shape(adjacency)[1]
    batch, layers = tf.shape(embedding)[0], tf.shape(embedding)[3]
    free_sums, free_count, full_sums, full_count = _object_sums(
        embedding, stack, segments_per_image, mean_mode)
    sums = tf.where((free_count > 0)[:, None], free_sums,
                    tf.where((full_count > 0)[:, None], full_sums, tf.zeros_like(full_sums)))
    scores = tf.reshape(l2_normalize(sums), [batch, segments_per_image, layers])
    background = tf.concat([tf.zeros([batch, 1, layers]),
                            tf.ones([batch, segments_per_image - 1, layers])], axis=1)
    layer_of = tf.numpy_function(_distinct_batch, [scores * background,
                                                   tf.cast(adjacency, tf.float32)], tf.int32,
                                 stateful=False)
    return tf.reshape(layer_of, [batch, segments_per_image])


def distinct_object_layers(embedding: tf.Tensor, stack: tf.Tensor, adjacency: tf.Tensor,
                           config: Config) -> tf.Tensor:
    """Layer of every object from the current embedding, adjacent objects in different layers.

    Each object's preference is its mean embedding over its overlap-free part (its full
    silhouette if it has none), as in :func:`object_layers`; the assignment is the greedy
    colouring of :func:`layernet.assignment.distinct_layers` (most confident object first, each
    takes its best layer that no assigned neighbour holds). Computed in NumPy inside the graph
    (``tf.numpy_function``; a few dozen objects per image). No gradient flows through the result.

    Parameters
    ----------
    embedding : tf.Tensor
        Layering output ``(B, H, W, N)``.
    stack : tf.Tensor
        Label stack ``(B, H, W, L)`` with ids ``<= K``.
    adjacency : tf.Tensor
        ``(B, K + 1, K + 1)`` 0/1 adjacency.
    config : Config
        Option ``mean_mode``.

    Returns
    -------
    tf.Tensor
        Int32 ``(B, K + 1)``; -1 for index 0 (background) and for ids absent from an image.
    """
    check_ids(stack, tf.shape(adjacency)[1], "adjacency")
    embedding, stack, adjacency = as_tensors(embedding, stack, adjacency)
    return _distinct_object_layers(embedding, stack, adjacency, config.mean_mode)


def _orientation_batch(index: "np.ndarray", adjacency: "np.ndarray", layers: int,
                       spacing: int) -> "np.ndarray":
    """Scores of :func:`layernet.assignment.orientation_layer_scores` and the greedy colouring
    with ``spacing`` for every image of a batch (NumPy)."""
    return np.stack([distinct_layers(orientation_layer_scores(row, int(layers)), image_adjacency,
                                     int(spacing))
                     for row, image_adjacency in zip(index, adjacency)]).astype(np.int32)


@tf.function(reduce_retracing=True, autograph=False)
def _orientation_object_layers(stack: tf.Tensor, adjacency: tf.Tensor, layers: int,
                               spacing: int) -> tf.Tensor:
    stack = tf.cast(stack, tf.int32)
    shape = tf.shape(stack)
    batch, height, width = shape[0], shape[1], shape[2]
    segments_per_image = tf.shape(adjacency)[1]
    # centred coordinates in units of the crop side: the moments stay well inside float32
    side = tf.cast(tf.maximum(height, width), tf.float32)
    y = (tf.cast(tf.range(height), tf.float32) - tf.cast(height - 1, tf.float32) / 2.0) / side
    x = (tf.cast(tf.range(width), tf.float32) - tf.cast(width - 1, tf.float32) / 2.0) / side
    y = tf.broadcast_to(y[None, :, None, None], shape)
    x = tf.broadcast_to(x[None, None, :, None], shape)
    values = tf.reshape(tf.stack([tf.ones_like(x), x, y, x * x, y * y, x * y], axis=-1), [-1, 6])
    segments = global_segments(stack, segments_per_image)             # (B*H*W*L,)
    moments = tf.math.unsorted_segment_sum(values, segments, batch * segments_per_image)
    pixels = moments[:, 0]
    safe = tf.where(pixels > 0, pixels, tf.ones_like(pixels))
    mean_x, mean_y = moments[:, 1] / safe, moments[:, 2] / safe
    var_x = moments[:, 3] / safe - mean_x ** 2
    var_y = moments[:, 4] / safe - mean_y ** 2
    cov_xy = moments[:, 5] / safe - mean_x * mean_y
    # layernet.assignment.orientation_index in float32
    angle = 0.5 * tf.atan2(2.0 * cov_xy, var_x - var_y)
    index = tf.math.floormod(tf.round(angle / np.pi * ORIENTATION_GRID), ORIENTATION_GRID)
    anisotropy = tf.sqrt((var_x - var_y) ** 2 + (2.0 * cov_xy) ** 2)
    index = tf.where(anisotropy > ISOTROPY_TOLERANCE * (var_x + var_y), index,
                     tf.zeros_like(index))
    index = tf.reshape(tf.cast(index, tf.int32), [batch, segments_per_image])
    present = tf.reshape(pixels > 0, [batch, segments_per_image])
    present = tf.logical_and(present, tf.range(segments_per_image)[None, :] > 0)
    index = tf.where(present, index, -tf.ones_like(index))
    layer_of = tf.numpy_function(_orientation_batch,
                                 [index, tf.cast(adjacency, tf.float32), layers, spacing],
                                 tf.int32, stateful=False)
    return tf.reshape(layer_of, [batch, segments_per_image])


def orientation_object_layers(stack: tf.Tensor, adjacency: tf.Tensor, layers: int,
                              spacing: int = 0) -> tf.Tensor:
    """Layer of every object from its orientation, adjacent objects in different layers.

    Not in the paper (``Config.layer_assignment = "orientation"``): the layers split the
    orientations of the principal axis into ``N`` sectors of ``pi / N``; each object prefers the
    sector of its orientation in the (augmented) crop and the greedy colouring of
    :func:`layernet.assignment.distinct_layers` keeps adjacent objects apart
    (:func:`layernet.assignment.orientation_layer_scores`; the orientation is snapped to a
    quarter-degree grid, :func:`layernet.assignment.orientation_index`). Unlike the assignments from the
    embedding, the result does not depend on the network, so an object gets the same layer in
    every crop that shows it in the same pose, a rule the network can learn from the image.

    Parameters
    ----------
    stack : tf.Tensor
        Label stack ``(B, H, W, L)`` with ids ``<= K``.
    adjacency : tf.Tensor
        ``(B, K + 1, K + 1)`` 0/1 adjacency.
    layers : int
        ``N``.
    spacing : int, optional
        Neighbours' layers are kept more than this many sectors apart when possible
        (``Config.join_layers``, whose post-processing joins closer ones).

    Returns
    -------
    tf.Tensor
        Int32 ``(B, K + 1)``; -1 for index 0 (background) and for ids absent from an image.
    """
    check_ids(stack, tf.shape(adjacency)[1], "adjacency")
    stack, adjacency = as_tensors(stack, adjacency)
    return _orientation_object_layers(stack, adjacency, int(layers), int(spacing))


def _position_batch(column_sums: "np.ndarray", pixels: "np.ndarray", adjacency: "np.ndarray",
                    layers: int, spacing: int) -> "np.ndarray":
    """:func:`layernet.assignment.position_layer_scores` and the greedy colouring with
    ``spacing`` for every image of a batch (NumPy)."""
    return np.stack([distinct_layers(position_layer_scores(sums, count, int(layers)),
                                     image_adjacency, int(spacing))
                     for sums, count, image_adjacency in zip(column_sums, pixels, adjacency)]
                    ).astype(np.int32)


@tf.function(reduce_retracing=True, autograph=False)
def _position_object_layers(stack: tf.Tensor, adjacency: tf.Tensor, layers: int,
                            spacing: int) -> tf.Tensor:
    stack = tf.cast(stack, tf.int32)
    shape = tf.shape(stack)
    batch, width = shape[0], shape[2]
    segments_per_image = tf.shape(adjacency)[1]
    # integer sums (exact): the column of every object pixel, 0 on the background
    column = tf.broadcast_to(tf.range(width)[None, None, :, None], shape)
    column = tf.reshape(tf.where(stack > 0, column, tf.zeros_like(column)), [-1])
    segments = global_segments(stack, segments_per_image)             # (B*H*W*L,)
    total = batch * segments_per_image
    column_sums = tf.math.unsorted_segment_sum(tf.cast(column, tf.int64), segments, total)
    pixels = tf.math.unsorted_segment_sum(tf.ones_like(segments, tf.int64), segments, total)
    layer_of = tf.numpy_function(
        _position_batch, [tf.reshape(column_sums, [batch, segments_per_image]),
                          tf.reshape(pixels, [batch, segments_per_image]),
                          tf.cast(adjacency, tf.float32), layers, spacing],
        tf.int32, stateful=False)
    return tf.reshape(layer_of, [batch, segments_per_image])


def position_object_layers(stack: tf.Tensor, adjacency: tf.Tensor, layers: int,
                           spacing: int = 0) -> tf.Tensor:
    """Layer of every object by its position: left to right, the lowest free layer.

    Not in the paper (``Config.layer_assignment = "position"``), for round objects whose
    orientation says little (cells): objects are taken in order of their centroid's column in
    the (augmented) crop, and each gets the lowest layer that no neighbour taken before holds
    (:func:`layernet.assignment.position_layer_scores` with the greedy colouring of
    :func:`layernet.assignment.distinct_layers`). Like ``"orientation"`` the result does not
    depend on the network: a lone object is always in layer 0, and of two that overlap or touch
    the left one is in the lower layer.

    Parameters
    ----------
    stack : tf.Tensor
        Label stack ``(B, H, W, L)`` with ids ``<= K``.
    adjacency : tf.Tensor
        ``(B, K + 1, K + 1)`` 0/1 adjacency.
    layers : int
        ``N``.
    spacing : int, optional
        Neighbours' layers are kept more than this many layers apart when possible (cyclically).

    Returns
    -------
    tf.Tensor
        Int32 ``(B, K + 1)``; -1 for index 0 (background) and for ids absent from an image.
    """
    check_ids(stack, tf.shape(adjacency)[1], "adjacency")
    stack, adjacency = as_tensors(stack, adjacency)
    return _position_object_layers(stack, adjacency, int(layers), int(spacing))


@tf.function(reduce_retracing=True, autograph=False)
def _object_layers(embedding: tf.Tensor, stack: tf.Tensor, segments_per_image: tf.Tensor,
                   mean_mode: str, covered_objects: str) -> tf.Tensor:
    batch = tf.shape(embedding)[0]
    free_sums, free_count, full_sums, full_count = _object_sums(
        embedding, stack, segments_per_image, mean_mode)
    # argmax of a sum = argmax of the mean = argmax of the normalised mean
    free_layer = tf.argmax(free_sums, axis=-1, output_type=tf.int32)
    if covered_objects == "full":
        covered_layer = tf.argmax(full_sums, axis=-1, output_type=tf.int32)
    else:
        covered_layer = tf.zeros_like(free_layer)
    layer = tf.where(free_count > 0, free_layer,
                     tf.where(full_count > 0, covered_layer, -tf.ones_like(free_layer)))
    layer = tf.reshape(layer, [batch, segments_per_image])
    background = tf.concat([tf.ones([batch, 1], tf.bool),
                            tf.zeros([batch, segments_per_image - 1], tf.bool)], axis=1)
    return tf.where(background, -tf.ones_like(layer), layer)


def object_layers(embedding: tf.Tensor, stack: tf.Tensor, num_segments: int | tf.Tensor,
                  config: Config) -> tf.Tensor:
    """Layer of every object: argmax of the mean embedding of its overlap-free part.

    The mean uses raw or normalised pixel embeddings per ``config.mean_mode`` (the argmax of a
    mean equals the argmax of its normalised version). An object without overlap-free pixels gets
    the argmax of the mean over its full silhouette (``config.covered_objects="full"``) or layer 0
    (``"zero"``, authors). Ids absent from an image, and index 0 (background), get -1.
    No gradient flows through the result.

    Parameters
    ----------
    embedding : tf.Tensor
        Layering output ``(B, H, W, N)``.
    stack : tf.Tensor
        Label stack ``(B, H, W, L)`` with ids ``<= num_segments - 1``.
    num_segments : int or tf.Tensor
        Segments **per image**, ``K + 1`` (e.g. ``tf.shape(adjacency)[1]``).
    config : Config
        Options ``mean_mode`` and ``covered_objects``.

    Returns
    -------
    tf.Tensor
        Int32 ``(B, K + 1)``.
    """
    check_ids(stack, num_segments, "num_segments")
    embedding, stack = as_tensors(embedding, stack)
    return _object_layers(embedding, stack, tf.cast(num_segments, tf.int32), config.mean_mode,
                          config.covered_objects)


@tf.function(reduce_retracing=True, autograph=False)
def _overlap_targets(stack: tf.Tensor, layer_of: tf.Tensor, layers: int) -> tf.Tensor:
    stack = tf.cast(stack, tf.int32)
    shape = tf.shape(stack)
    flat = tf.reshape(stack, [shape[0], -1])
    layer = tf.gather(tf.cast(layer_of, tf.int32), flat, batch_dims=1)
    layer = tf.where(flat > 0, layer, -tf.ones_like(layer))              # -1 -> all-zero one-hot
    placed = tf.one_hot(layer, layers, dtype=tf.float32)               # (B, H*W*L, N)
    placed = tf.reshape(placed, tf.concat([shape, [layers]], axis=0))  # (B, H, W, L, N)
    return tf.stop_gradient(tf.reduce_max(placed, axis=3))


def overlap_targets(stack: tf.Tensor, layer_of: tf.Tensor, layers: int) -> tf.Tensor:
    """Place each object's full silhouette into its layer: the masks ``S`` of Eq. 6.

    Parameters
    ----------
    stack : tf.Tensor
        Label stack ``(B, H, W, L)``.
    layer_of : tf.Tensor
        Int ``(B, K + 1)``, layer of each object id (-1: the object is placed nowhere).
    layers : int
        ``N``.

    Returns
    -------
    tf.Tensor
        Float32 0/1 ``(B, H, W, N)``; ``S[b, y, x, n] = 1`` when an object of layer ``n`` covers
        the pixel (objects of the same layer are OR-ed). Gradient-free.
    """
    check_ids(stack, tf.shape(layer_of)[1], "layer_of")
    stack, layer_of = as_tensors(stack, layer_of)
    return _overlap_targets(stack, layer_of, int(layers))


def online_layer_assignment(embedding: tf.Tensor, stack: tf.Tensor, adjacency: tf.Tensor,
                            config: Config) -> tf.Tensor:
    """Object -> layer assignment from the current embedding, per ``config.layer_assignment``.

    ``"argmax"``: :func:`object_layers` (the authors' online phase-2 targets); ``"distinct"``:
    :func:`distinct_object_layers` (adjacent objects in different layers); ``"orientation"``:
    :func:`orientation_object_layers` (by each object's orientation, not from the embedding;
    neighbours kept more than ``join_layers`` sectors apart where possible); ``"position"``:
    :func:`position_object_layers` (left to right, the lowest free layer; with the same
    spacing).

    Parameters
    ----------
    embedding : tf.Tensor
        Layering output ``(B, H, W, N)``.
    stack : tf.Tensor
        Label stack ``(B, H, W, L)``.
    adjacency : tf.Tensor
        ``(B, K + 1, K + 1)`` 0/1 adjacency.
    config : Config
        Options ``layer_assignment``, ``mean_mode`` and ``covered_objects``.

    Returns
    -------
    tf.Tensor
        Int32 ``(B, K + 1)``, -1 for the background and absent ids. Gradient-free.
    """
    if config.layer_assignment == "distinct":
        return distinct_object_layers(embedding, stack, adjacency, config)
    if config.layer_assignment in ("orientation", "position"):
        assign = (orientation_object_layers if config.layer_assignment == "orientation"
                  else position_object_layers)
        return assign(stack, adjacency, int(embedding.shape[-1] or config.layers),
                      config.join_layers)
    return object_layers(embedding, stack, tf.shape(adjacency)[1], config)
