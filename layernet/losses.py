"""Losses of the layering network (paper Eqs. 1-6), batched over images with segment ops.

Every loss works on whole batches with static-rank tensors: the per-object sums of the paper run
through :func:`tf.math.unsorted_segment_sum` with the *global segment id*
``b * (K + 1) + id`` of each pixel (``K + 1`` = segments per image, taken from the shape of the
adjacency matrix), and pairwise terms are batched ``(B, K+1, K+1)`` matrix products. There is no
Python loop over images, no :func:`tf.map_fn` and no boolean masking, so the losses run inside a
compiled train step (and under XLA).

Inputs (as produced by the pipeline)
------------------------------------
embedding : ``(B, H, W, N)`` sigmoid output of the layering head.
fg_pred : ``(B, H, W, 1)`` sigmoid output of the foreground head.
stack : ``(B, H, W, L)`` int32 label stack, channels last, ids ``1..K`` (0 = background); ids may
    be absent (cropped away or padding of ``K`` over the batch).
adjacency : ``(B, K+1, K+1)`` float32 0/1 (row/column 0 = background, unused).
layer_of : ``(B, K+1)`` int32 frozen object -> layer assignment (-1 = unknown).

Conventions (defaults = the paper; the authors' code is reproduced by named options, see
:meth:`layernet.config.Config.authors` and ``authors_code.md`` section 2)
----------------------------------------------------------------------------------------------
* ``O_i^n`` (overlap-free part of object ``i``) = pixels covered by object ``i`` only. Objects with
  no overlap-free pixel in the sample are not "present": they have no mean embedding and take no
  part in attraction, repulsion or sparsity (also not as a neighbour of another object).
* Batch: with ``config.layering_per_image = False`` (default) the sums of Eqs. 2-4 run over all
  pixels / objects of the batch, as if the batch were one image (each object keeps its own mean
  and its own neighbours; objects of different images are never adjacent). With ``True`` (authors)
  each term is computed per image and averaged over the images that have overlap-free
  foreground.
* Repulsion (Eq. 3, ``repulsion_mode="object"``): ``C`` counts every present object, including
  objects without a present neighbour. Such an object's inner average ``1/|Adj| * sum`` is an
  empty sum and is taken as 0 (it lowers the average, as the literal ``1/C`` of Eq. 3 says).
* Empty cases: a mean over an empty set is 0 (every count is guarded with ``max(count, 1)``),
  so a batch without overlap-free foreground has zero layering loss and zero gradient.
* Vectors are normalised as ``x / sqrt(max(|x|^2, 1e-12))`` (as :func:`tf.math.l2_normalize`),
  so an all-zero embedding has a zero direction and finite gradients.
* All losses are computed in float32, whatever the compute dtype of the model.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import tensorflow as tf

from layernet.assignment import (
    ISOTROPY_TOLERANCE,
    ORIENTATION_GRID,
    distinct_layers,
    orientation_layer_scores,
)
from layernet.config import Config

logger = logging.getLogger(__name__)

__all__ = [
    "LossInputError",
    "overlap_free_id_map",
    "foreground_loss",
    "foreground_dice_loss",
    "layering_loss",
    "combine_layering_sums",
    "object_layers",
    "distinct_object_layers",
    "orientation_object_layers",
    "online_layer_assignment",
    "overlap_targets",
    "overlap_loss",
    "layer_target_loss",
    "compute_losses",
]

NORM_EPSILON = 1e-12  # on the squared norm, as tf.math.l2_normalize
PROBABILITY_CLIP = 1e-7  # BCE clipping, as keras.backend.epsilon()
PAIR_EPSILON = 1e-7  # authors' guard of the pair-averaged repulsion
FOREGROUND_DICE_SMOOTH = 1.0  # pixels added to both sides of the foreground Dice


class LossInputError(ValueError):
    """Raised (in eager mode) for loss inputs that do not fit together."""


# --------------------------------------------------------------------------------------------
# small tensor helpers


def _l2_normalize(vectors: tf.Tensor) -> tf.Tensor:
    """Normalise along the last axis with ``sqrt(max(|x|^2, eps))`` (finite gradient at 0)."""
    squared = tf.reduce_sum(tf.square(vectors), axis=-1, keepdims=True)
    return vectors * tf.math.rsqrt(tf.maximum(squared, NORM_EPSILON))


def overlap_free_id_map(stack: tf.Tensor) -> tf.Tensor:
    """Return the id of the only object covering each pixel, 0 for background and overlaps.

    Parameters
    ----------
    stack : tf.Tensor
        Integer label stack ``(B, H, W, L)``.

    Returns
    -------
    tf.Tensor
        Int32 ``(B, H, W)``.
    """
    stack = tf.cast(stack, tf.int32)
    count = tf.reduce_sum(tf.cast(stack > 0, tf.int32), axis=-1)
    return tf.where(count == 1, tf.reduce_max(stack, axis=-1), tf.zeros_like(count))


def _global_segments(ids: tf.Tensor, segments_per_image: tf.Tensor) -> tf.Tensor:
    """Flatten per-image ids ``(B, ...)`` to global segment ids ``b * (K+1) + id``."""
    batch = tf.shape(ids)[0]
    offsets = tf.range(batch, dtype=tf.int32) * segments_per_image
    offsets = tf.reshape(offsets, tf.concat([[batch], tf.ones([tf.rank(ids) - 1], tf.int32)], 0))
    return tf.reshape(ids + offsets, [-1])


def _check_ids(stack: tf.Tensor, segments_per_image: int | tf.Tensor, what: str) -> None:
    """In eager mode, check that every id of ``stack`` is in ``0..segments_per_image - 1``."""
    if not tf.executing_eagerly() or int(tf.size(stack)) == 0:
        return
    ids = tf.cast(stack, tf.int32)
    largest, smallest = int(tf.reduce_max(ids)), int(tf.reduce_min(ids))
    limit = int(segments_per_image)
    if smallest < 0:
        raise LossInputError(f"stack holds the negative object id {smallest}")
    if largest >= limit:
        raise LossInputError(
            f"stack holds object id {largest} but {what} has only {limit} entries per image "
            f"(ids must be <= K with K + 1 = {limit})"
        )


def _tensors(*values: tf.Tensor) -> list[tf.Tensor]:
    """Read variables into tensors before a ``reduce_retracing`` function sees them.

    (TF 2.21: a ``tf.Variable`` argument of a shape-relaxed ``tf.function`` keeps the static
    shape of the first variable it was traced with, giving wrong batch sizes later.)
    """
    return [tf.convert_to_tensor(value) for value in values]


# --------------------------------------------------------------------------------------------
# foreground


@tf.function(reduce_retracing=True)
def _foreground_bce(stack: tf.Tensor, fg_pred: tf.Tensor) -> tf.Tensor:
    target = tf.cast(tf.reduce_any(tf.cast(stack, tf.int32) > 0, axis=-1), tf.float32)
    return tf.reduce_mean(_binary_cross_entropy(target, fg_pred[..., 0]))


def _binary_cross_entropy(target: tf.Tensor, probability: tf.Tensor) -> tf.Tensor:
    """Per-element cross-entropy of sigmoid outputs, clipped to ``[1e-7, 1 - 1e-7]``."""
    probability = tf.clip_by_value(tf.cast(probability, tf.float32),
                                   PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return -(target * tf.math.log(probability) + (1.0 - target) * tf.math.log(1.0 - probability))


@tf.function(reduce_retracing=True)
def _layer_target_bce(embedding: tf.Tensor, targets: tf.Tensor, stack: tf.Tensor) -> tf.Tensor:
    foreground = tf.cast(tf.reduce_any(tf.cast(stack, tf.int32) > 0, axis=-1), tf.float32)
    per_pixel = tf.reduce_mean(_binary_cross_entropy(tf.cast(targets, tf.float32), embedding),
                               axis=-1)
    return tf.reduce_sum(per_pixel * foreground) / tf.maximum(tf.reduce_sum(foreground), 1.0)


def layer_target_loss(embedding: tf.Tensor, targets: tf.Tensor, stack: tf.Tensor,
                      config: Config) -> tf.Tensor:
    """Loss of the layering head against per-object layer targets ``S`` on the foreground.

    ``config.layer_target_loss = "bce"``: the binary cross-entropy of every layer's sigmoid
    output against ``S``, averaged over the ``N`` layers and the foreground pixels of the batch
    (overlaps included; 0 without foreground). Unlike the Dice of Eq. 6 its gradient with respect
    to a layer's logit is ``e - S``, so a layer that the network has switched off (``e`` near 0)
    is still pulled up where the targets want it. ``"dice"``: :func:`overlap_loss` (Eq. 6).

    Parameters
    ----------
    embedding : tf.Tensor
        Sigmoid output ``(B, H, W, N)``.
    targets : tf.Tensor
        ``S`` of :func:`overlap_targets`, ``(B, H, W, N)``.
    stack : tf.Tensor
        Label stack ``(B, H, W, L)`` (defines the foreground).
    config : Config
        Options ``layer_target_loss`` (and those of :func:`overlap_loss` for ``"dice"``).

    Returns
    -------
    tf.Tensor
        Float32 scalar.
    """
    if config.layer_target_loss == "dice":
        return overlap_loss(embedding, targets, stack, config)
    return _layer_target_bce(*_tensors(embedding, targets, stack))


def foreground_loss(stack: tf.Tensor, fg_pred: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy of the foreground head over the whole image (Eq. 1, area S).

    Parameters
    ----------
    stack : tf.Tensor
        Label stack ``(B, H, W, L)``; the target is "any object" (overlaps included).
    fg_pred : tf.Tensor
        Sigmoid output ``(B, H, W, 1)``; clipped to ``[1e-7, 1 - 1e-7]``.

    Returns
    -------
    tf.Tensor
        Float32 scalar, the mean over all ``B * H * W`` pixels.
    """
    return _foreground_bce(*_tensors(stack, fg_pred))


def _foreground_dice(target: tf.Tensor, probability: tf.Tensor) -> tf.Tensor:
    overlap = tf.reduce_sum(target * probability)
    total = tf.reduce_sum(target) + tf.reduce_sum(probability)
    return 1.0 - (2.0 * overlap + FOREGROUND_DICE_SMOOTH) / (total + FOREGROUND_DICE_SMOOTH)


def foreground_dice_loss(stack: tf.Tensor, fg_probability: tf.Tensor) -> tf.Tensor:
    """Soft Dice loss of a foreground probability map, pooled over the whole batch.

    ``1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1)`` with ``t`` = "any object" (overlaps
    included) and the sums over all ``B * H * W`` pixels. Not in the paper: an option
    (``Config.foreground_dice_weight``) that adds it to the cross-entropy of Eq. 1, because the
    Dice term does not shrink with the share of background pixels, so thin, faint objects are not
    given up for the easy background. The smoothing term of 1 keeps it finite (and 0) on a batch
    without foreground that is predicted empty.

    Parameters
    ----------
    stack : tf.Tensor
        Label stack ``(B, H, W, L)``.
    fg_probability : tf.Tensor
        ``(B, H, W, 1)`` or ``(B, H, W)`` probability of foreground.

    Returns
    -------
    tf.Tensor
        Float32 scalar in ``[0, 1)``.
    """
    stack, fg_probability = _tensors(stack, fg_probability)
    target = tf.cast(tf.reduce_any(tf.cast(stack, tf.int32) > 0, axis=-1), tf.float32)
    probability = tf.cast(fg_probability, tf.float32)
    if probability.shape.rank == 4:
        probability = probability[..., 0]
    return _foreground_dice(target, probability)


# --------------------------------------------------------------------------------------------
# layering (phase 1)


@tf.function(reduce_retracing=True)
def _layering_terms(embedding: tf.Tensor, stack: tf.Tensor, adjacency: tf.Tensor,
                    mean_mode: str, repulsion_mode: str, sparsity_mode: str,
                    per_image: bool) -> dict[str, tf.Tensor]:
    embedding = tf.cast(embedding, tf.float32)
    adjacency = tf.cast(adjacency, tf.float32)
    shape = tf.shape(embedding)
    batch, layers = shape[0], shape[3]
    segments_per_image = tf.shape(adjacency)[1]
    num_segments = batch * segments_per_image

    ids = overlap_free_id_map(stack)                                   # (B, H, W)
    # Work only on the overlap-free foreground pixels of the whole batch (one flat list, no
    # per-image loop): everything else contributes nothing to these terms.
    flat_ids = tf.reshape(ids, [-1])
    pixel_index = tf.where(flat_ids > 0)[:, 0]                         # (P,)
    pixels_per_image = tf.cast(shape[1] * shape[2], tf.int64)
    image_of_pixel = tf.cast(pixel_index // pixels_per_image, tf.int32)  # (P,)
    segments = image_of_pixel * segments_per_image + tf.gather(flat_ids, pixel_index)
    vectors = tf.gather(tf.reshape(embedding, [-1, layers]), pixel_index)  # (P, N)
    directions = _l2_normalize(vectors)
    ones = tf.ones_like(image_of_pixel, dtype=tf.float32)

    counts = tf.math.unsorted_segment_sum(ones, segments, num_segments)
    source = directions if mean_mode == "normalized" else vectors
    sums = tf.math.unsorted_segment_sum(source, segments, num_segments)  # segment 0 unused
    centres = _l2_normalize(sums / tf.maximum(counts, 1.0)[:, None])  # unit u_i, (B*(K+1), N)

    # attraction: 1 - D(e_p, u_i)^2 per overlap-free pixel
    cosine = tf.reduce_sum(directions * tf.gather(centres, segments), axis=-1)
    attraction_pixels = 1.0 - tf.square(cosine)
    largest = tf.reduce_max(directions, axis=-1)
    if sparsity_mode == "authors":
        sparsity_pixels = 1.0 - tf.square(largest)
    else:
        sparsity_pixels = 1.0 - largest
    attraction_image = tf.math.unsorted_segment_sum(attraction_pixels, image_of_pixel, batch)
    sparsity_image = tf.math.unsorted_segment_sum(sparsity_pixels, image_of_pixel, batch)
    pixels_image = tf.math.unsorted_segment_sum(ones, image_of_pixel, batch)

    # repulsion: D(u_i, u_j)^2 over adjacent present objects of the same image
    present = tf.reshape(tf.cast(counts > 0, tf.float32), [batch, segments_per_image])
    present = present * tf.concat(
        [tf.zeros([batch, 1]), tf.ones([batch, segments_per_image - 1])], axis=1)
    unit = tf.reshape(centres, [batch, segments_per_image, layers])
    similarity = tf.square(tf.matmul(unit, unit, transpose_b=True))     # (B, K+1, K+1)
    off_diagonal = 1.0 - tf.eye(segments_per_image, dtype=tf.float32)
    pairs = adjacency * present[:, :, None] * present[:, None, :] * off_diagonal
    if repulsion_mode == "pair":
        repulsion_image = tf.reduce_sum(pairs * similarity, axis=[1, 2])
        repulsion_count = tf.reduce_sum(pairs, axis=[1, 2])
    else:
        degree = tf.reduce_sum(pairs, axis=2)
        per_object = tf.reduce_sum(pairs * similarity, axis=2) / tf.maximum(degree, 1.0)
        repulsion_image = tf.reduce_sum(per_object, axis=1)
        repulsion_count = tf.reduce_sum(present, axis=1)

    all_pixels = tf.cast(tf.reduce_prod(shape[:3]), tf.float32)
    return combine_layering_sums(attraction_image, pixels_image, repulsion_image,
                                 repulsion_count, sparsity_image, all_pixels, repulsion_mode,
                                 sparsity_mode, per_image)


def combine_layering_sums(attraction: tf.Tensor, pixels: tf.Tensor, repulsion: tf.Tensor,
                          repulsion_count: tf.Tensor, sparsity: tf.Tensor, all_pixels: tf.Tensor,
                          repulsion_mode: str, sparsity_mode: str,
                          per_image: bool) -> dict[str, tf.Tensor]:
    """Turn per-image sums and counts ``(B,)`` into the batch's layering terms.

    Parameters
    ----------
    attraction, sparsity : tf.Tensor
        Per image, the sums over the overlap-free foreground of ``1 - D(e_p, u_i)^2`` and of the
        sparsity summand.
    pixels : tf.Tensor
        Per image, the number of overlap-free foreground pixels.
    repulsion, repulsion_count : tf.Tensor
        Per image, the repulsion numerator and its count (present objects for
        ``repulsion_mode="object"``, adjacent ordered pairs for ``"pair"``).
    all_pixels : tf.Tensor
        ``B * H * W`` (denominator of the authors' sparsity).
    repulsion_mode, sparsity_mode : str
        As in :class:`layernet.config.Config`.
    per_image : bool
        Average per-image ratios over the images with overlap-free foreground (True) or pool the
        sums over the batch (False).

    Returns
    -------
    dict of str to tf.Tensor
        Scalars ``attraction``, ``repulsion``, ``sparsity``.
    """

    def repulsion_ratio(total: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
        if repulsion_mode == "pair":
            return total / (count + PAIR_EPSILON)
        return total / tf.maximum(count, 1.0)

    if per_image:
        images = tf.maximum(tf.reduce_sum(tf.cast(pixels > 0, tf.float32)), 1.0)
        guarded_pixels = tf.maximum(pixels, 1.0)
        attraction_term = tf.reduce_sum(attraction / guarded_pixels) / images
        repulsion_term = tf.reduce_sum(repulsion_ratio(repulsion, repulsion_count)) / images
        sparsity_term = tf.reduce_sum(sparsity / guarded_pixels) / images
    else:
        guarded_pixels = tf.maximum(tf.reduce_sum(pixels), 1.0)
        attraction_term = tf.reduce_sum(attraction) / guarded_pixels
        repulsion_term = repulsion_ratio(tf.reduce_sum(repulsion), tf.reduce_sum(repulsion_count))
        sparsity_term = tf.reduce_sum(sparsity) / guarded_pixels
    if sparsity_mode == "authors":
        sparsity_term = tf.reduce_sum(sparsity) / all_pixels
    return {"attraction": attraction_term, "repulsion": repulsion_term,
            "sparsity": sparsity_term}


def layering_loss(embedding: tf.Tensor, stack: tf.Tensor, adjacency: tf.Tensor,
                  config: Config) -> dict[str, tf.Tensor]:
    """Layering loss of phase 1 (Eqs. 2-5) on the overlap-free foreground.

    Paper defaults: ``u_i`` is the mean of the raw embeddings of ``O_i^n`` (``mean_mode="raw"``),
    ``D`` the cosine similarity,

    * ``L_attr = 1 - 1/sum_i |O_i^n| * sum_i sum_{p in O_i^n} D(e_p, u_i)^2``,
    * ``L_rep = 1/C * sum_i 1/|Adj_i| * sum_{j in Adj_i} D(u_i, u_j)^2`` (``repulsion_mode="object"``;
      ``C`` = number of present objects including those without neighbours, whose term is 0),
    * ``L_sparse = 1 - mean over O^n of max(e_p/|e_p|)`` (``sparsity_mode="paper"``),
    * ``L_layering = L_attr + L_rep + lambda * L_sparse`` with ``lambda = config.sparsity_weight``.

    Authors' variants: ``mean_mode="normalized"`` (``u_i`` = normalised mean of the normalised
    embeddings); ``repulsion_mode="pair"`` (mean of ``D(u_i, u_j)^2`` over all adjacent ordered
    pairs, denominator ``+1e-7``); ``sparsity_mode="authors"`` (``1 - max(e/|e|)^2`` summed over
    the overlap-free foreground and divided by all ``B * H * W`` pixels, in both batch modes);
    ``layering_per_image=True`` (each term per image, then the mean over the images with
    overlap-free foreground). See the module docstring for the batch and empty-set conventions.

    Parameters
    ----------
    embedding : tf.Tensor
        Sigmoid output ``(B, H, W, N)``.
    stack : tf.Tensor
        Label stack ``(B, H, W, L)`` with ids ``<= K``.
    adjacency : tf.Tensor
        ``(B, K + 1, K + 1)`` 0/1 adjacency of the objects of each image.
    config : Config
        Options ``mean_mode``, ``repulsion_mode``, ``sparsity_mode``, ``layering_per_image`` and
        ``sparsity_weight``.

    Returns
    -------
    dict of str to tf.Tensor
        Float32 scalars ``attraction``, ``repulsion``, ``sparsity`` (unweighted) and
        ``layering``.
    """
    _check_ids(stack, tf.shape(adjacency)[1], "adjacency")
    embedding, stack, adjacency = _tensors(embedding, stack, adjacency)
    terms = _layering_terms(embedding, stack, adjacency, config.mean_mode, config.repulsion_mode,
                            config.sparsity_mode, bool(config.layering_per_image))
    terms = dict(terms)
    terms["layering"] = (terms["attraction"] + terms["repulsion"]
                         + float(config.sparsity_weight) * terms["sparsity"])
    return terms


# --------------------------------------------------------------------------------------------
# overlap completion (phase 2)


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
        vectors = _l2_normalize(vectors)
    segments = _global_segments(overlap_free_id_map(stack), segments_per_image)
    free_count = tf.math.unsorted_segment_sum(tf.ones_like(segments, tf.float32), segments,
                                              num_segments)
    free_sums = tf.math.unsorted_segment_sum(vectors, segments, num_segments)
    slices = tf.shape(stack)[3]
    full_segments = _global_segments(stack, segments_per_image)       # (B*H*W*L,)
    full_count = tf.math.unsorted_segment_sum(tf.ones_like(full_segments, tf.float32),
                                              full_segments, num_segments)
    per_slice = tf.reshape(tf.repeat(vectors, slices, axis=0), [-1, layers])
    full_sums = tf.math.unsorted_segment_sum(per_slice, full_segments, num_segments)
    return free_sums, free_count, full_sums, full_count


def _distinct_batch(scores: "np.ndarray", adjacency: "np.ndarray") -> "np.ndarray":
    """:func:`layernet.assignment.distinct_layers` for every image of a batch (NumPy)."""
    return np.stack([distinct_layers(image_scores, image_adjacency)
                     for image_scores, image_adjacency in zip(scores, adjacency)]).astype(np.int32)


@tf.function(reduce_retracing=True)
def _distinct_object_layers(embedding: tf.Tensor, stack: tf.Tensor,
                            adjacency: tf.Tensor, mean_mode: str) -> tf.Tensor:
    segments_per_image = tf.shape(adjacency)[1]
    batch, layers = tf.shape(embedding)[0], tf.shape(embedding)[3]
    free_sums, free_count, full_sums, full_count = _object_sums(
        embedding, stack, segments_per_image, mean_mode)
    sums = tf.where((free_count > 0)[:, None], free_sums,
                    tf.where((full_count > 0)[:, None], full_sums, tf.zeros_like(full_sums)))
    scores = tf.reshape(_l2_normalize(sums), [batch, segments_per_image, layers])
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
    _check_ids(stack, tf.shape(adjacency)[1], "adjacency")
    embedding, stack, adjacency = _tensors(embedding, stack, adjacency)
    return _distinct_object_layers(embedding, stack, adjacency, config.mean_mode)


def _orientation_batch(index: "np.ndarray", adjacency: "np.ndarray", layers: int,
                       spacing: int) -> "np.ndarray":
    """Scores of :func:`layernet.assignment.orientation_layer_scores` and the greedy colouring
    with ``spacing`` for every image of a batch (NumPy)."""
    return np.stack([distinct_layers(orientation_layer_scores(row, int(layers)), image_adjacency,
                                     int(spacing))
                     for row, image_adjacency in zip(index, adjacency)]).astype(np.int32)


@tf.function(reduce_retracing=True)
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
    segments = _global_segments(stack, segments_per_image)             # (B*H*W*L,)
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
    _check_ids(stack, tf.shape(adjacency)[1], "adjacency")
    stack, adjacency = _tensors(stack, adjacency)
    return _orientation_object_layers(stack, adjacency, int(layers), int(spacing))


@tf.function(reduce_retracing=True)
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
    _check_ids(stack, num_segments, "num_segments")
    embedding, stack = _tensors(embedding, stack)
    return _object_layers(embedding, stack, tf.cast(num_segments, tf.int32), config.mean_mode,
                          config.covered_objects)


@tf.function(reduce_retracing=True)
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
    _check_ids(stack, tf.shape(layer_of)[1], "layer_of")
    stack, layer_of = _tensors(stack, layer_of)
    return _overlap_targets(stack, layer_of, int(layers))


@tf.function(reduce_retracing=True)
def _overlap_dice(embedding: tf.Tensor, targets: tf.Tensor, stack: tf.Tensor, smooth: float,
                  per_image: bool) -> tf.Tensor:
    foreground = tf.cast(tf.reduce_any(tf.cast(stack, tf.int32) > 0, axis=-1, keepdims=True),
                         tf.float32)
    prediction = tf.cast(embedding, tf.float32) * foreground
    targets = tf.cast(targets, tf.float32) * foreground
    intersection = tf.reduce_sum(prediction * targets, axis=[1, 2, 3])
    total = tf.reduce_sum(prediction + targets, axis=[1, 2, 3])
    pixels = tf.reduce_sum(foreground, axis=[1, 2, 3])
    if not per_image:
        intersection = tf.reduce_sum(intersection, keepdims=True)
        total = tf.reduce_sum(total, keepdims=True)
        pixels = tf.reduce_sum(pixels, keepdims=True)
    nonempty = pixels > 0
    # Nothing predicted and nothing to predict on the foreground (possible with s = 0): the two
    # agree, loss 0, not 0 / 0.
    defined = nonempty & (total + smooth > 0)
    denominator = tf.where(defined, total + smooth, tf.ones_like(total))
    dice = tf.where(defined, 1.0 - (2.0 * intersection + smooth) / denominator,
                    tf.zeros_like(total))
    return tf.reduce_sum(dice) / tf.maximum(tf.reduce_sum(tf.cast(nonempty, tf.float32)), 1.0)


def overlap_loss(embedding: tf.Tensor, targets: tf.Tensor, stack: tf.Tensor,
                 config: Config) -> tf.Tensor:
    """Dice-like overlap-completion loss (Eq. 6) on the foreground including overlaps.

    ``1 - (2 * sum_p e_p . S_p + s) / (sum_p (1 . e_p + 1 . S_p) + s)`` over the foreground
    pixels ``p`` (background zeroed), with the raw sigmoid outputs ``e_p`` and the smoothing
    ``s = config.dice_smooth`` (paper 0, authors 1). Pooled over the batch, or with
    ``config.overlap_per_image`` one Dice per image averaged over the images with foreground.
    An image (or batch) without foreground contributes 0, and so does one whose prediction and
    targets are both zero on the foreground (with ``s = 0`` the formula would be 0 / 0).

    Parameters
    ----------
    embedding : tf.Tensor
        Sigmoid output ``(B, H, W, N)``.
    targets : tf.Tensor
        ``S`` of :func:`overlap_targets`, ``(B, H, W, N)``.
    stack : tf.Tensor
        Label stack ``(B, H, W, L)`` (defines the foreground).
    config : Config
        Options ``dice_smooth`` and ``overlap_per_image``.

    Returns
    -------
    tf.Tensor
        Float32 scalar.
    """
    embedding, targets, stack = _tensors(embedding, targets, stack)
    return _overlap_dice(embedding, targets, stack, float(config.dice_smooth),
                         bool(config.overlap_per_image))


# --------------------------------------------------------------------------------------------
# total


def compute_losses(outputs: Mapping[str, tf.Tensor], batch: Mapping[str, tf.Tensor],
                   config: Config, phase: str) -> dict[str, tf.Tensor]:
    """All loss terms of one training phase (Eq. 1).

    Parameters
    ----------
    outputs : mapping
        Network outputs ``"foreground"`` ``(B, H, W, 1)`` and ``"layering"`` ``(B, H, W, N)``.
    batch : mapping
        ``"stack"`` ``(B, H, W, L)``, ``"adjacency"`` ``(B, K+1, K+1)`` and, in phase
        ``"overlap"`` with ``config.overlap_targets="frozen"``, ``"layer_of"`` ``(B, K+1)``.
    config : Config
        Loss options.
    phase : str
        ``"layering"`` (phase 1) or ``"overlap"`` (phase 2).

    Returns
    -------
    dict of str to tf.Tensor
        Float32 scalars ``foreground``, ``attraction``, ``repulsion``, ``sparsity``,
        ``layering``, ``overlap`` (phase 2 only), ``layer_targets`` (phase 1 with
        ``config.layer_target_weight > 0``), ``foreground_dice`` (if
        ``config.foreground_dice_weight > 0``) and ``loss`` = ``foreground + layering
        (+ overlap_weight * overlap) (+ layer_target_weight * layer_targets)
        (+ foreground_dice_weight * foreground_dice)``.

    Notes
    -----
    Phase-2 targets: ``"frozen"`` uses ``batch["layer_of"]`` (objects marked -1 fall back to the
    argmax assignment from the current embedding); ``"online"`` recomputes the assignment from
    the current embedding at every step (:func:`online_layer_assignment`: argmax as the authors,
    or ``layer_assignment="distinct"``). ``layer_targets`` (not in the paper) is
    :func:`layer_target_loss` in phase 1 against such online targets: every object's whole silhouette is pulled into one layer, and
    with ``"distinct"`` touching objects into different ones.
    """
    if phase not in ("layering", "overlap"):
        raise ValueError(f"phase must be 'layering' or 'overlap', got {phase!r}")
    embedding = outputs["layering"]
    stack = batch["stack"]
    adjacency = batch["adjacency"]
    losses = {"foreground": foreground_loss(stack, outputs["foreground"])}
    losses.update(layering_loss(embedding, stack, adjacency, config))
    total = losses["foreground"] + losses["layering"]
    if config.foreground_dice_weight > 0:
        losses["foreground_dice"] = foreground_dice_loss(stack, outputs["foreground"])
        total = total + float(config.foreground_dice_weight) * losses["foreground_dice"]
    layers = int(embedding.shape[-1] or config.layers)
    if phase == "overlap":
        if config.overlap_targets == "frozen":
            if "layer_of" not in batch:
                raise ValueError("phase 'overlap' with frozen targets needs batch['layer_of']")
            online = object_layers(embedding, stack, tf.shape(adjacency)[1], config)
            frozen = tf.cast(batch["layer_of"], tf.int32)
            layer_of = tf.where(frozen >= 0, frozen, online)
        else:
            layer_of = online_layer_assignment(embedding, stack, adjacency, config)
        targets = overlap_targets(stack, layer_of, layers)
        losses["overlap"] = overlap_loss(embedding, targets, stack, config)
        total = total + float(config.overlap_weight) * losses["overlap"]
    elif config.layer_target_weight > 0:
        layer_of = online_layer_assignment(embedding, stack, adjacency, config)
        targets = overlap_targets(stack, layer_of, layers)
        losses["layer_targets"] = layer_target_loss(embedding, targets, stack, config)
        total = total + float(config.layer_target_weight) * losses["layer_targets"]
    losses["loss"] = total
    return losses


def online_layer_assignment(embedding: tf.Tensor, stack: tf.Tensor, adjacency: tf.Tensor,
                            config: Config) -> tf.Tensor:
    """Object -> layer assignment from the current embedding, per ``config.layer_assignment``.

    ``"argmax"``: :func:`object_layers` (the authors' online phase-2 targets); ``"distinct"``:
    :func:`distinct_object_layers` (adjacent objects in different layers); ``"orientation"``:
    :func:`orientation_object_layers` (by each object's orientation, not from the embedding;
    neighbours kept more than ``join_layers`` sectors apart where possible).

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
    if config.layer_assignment == "orientation":
        return orientation_object_layers(stack, adjacency,
                                         int(embedding.shape[-1] or config.layers),
                                         config.join_layers)
    return object_layers(embedding, stack, tf.shape(adjacency)[1], config)
