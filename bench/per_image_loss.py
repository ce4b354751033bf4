"""Per-image formulation of the phase-1 layering loss, in the style of the authors' code.

For benchmarking only: the same mathematics as :func:`layernet.losses.layering_loss` (every
option of the config is honoured), but written the way the authors' implementation is organised
(``authors_code.md`` section 2.1): :func:`tf.map_fn` over the images of the batch, and per image
:func:`tf.boolean_mask` of the overlap-free foreground and :func:`tf.unique_with_counts` of its
ids, so all per-image shapes are dynamic. ``bench/train_step.py`` times it against the batched
segment-op version.
"""

from __future__ import annotations

import tensorflow as tf

from layernet.config import Config
from layernet.losses import combine_layering_sums, overlap_free_id_map

__all__ = ["per_image_layering_loss"]

_EPS = 1e-12


def _unit(vectors: tf.Tensor) -> tf.Tensor:
    return vectors * tf.math.rsqrt(
        tf.maximum(tf.reduce_sum(vectors * vectors, axis=-1, keepdims=True), _EPS))


def _image_sums(embedding: tf.Tensor, labels: tf.Tensor, adjacency: tf.Tensor,
                config: Config) -> tf.Tensor:
    """Sums and counts of one image: [attraction, pixels, repulsion, repulsion count, sparsity]."""
    inside = labels > 0
    pixels = tf.boolean_mask(embedding, inside)                  # (P, N), dynamic P
    object_of_pixel = tf.boolean_mask(labels, inside)            # (P,)
    present, index, sizes = tf.unique_with_counts(object_of_pixel)
    directions = _unit(pixels)
    source = directions if config.mean_mode == "normalized" else pixels
    objects = tf.size(present)
    totals = tf.math.unsorted_segment_sum(source, index, objects)
    centre = _unit(totals / tf.cast(sizes, tf.float32)[:, None])  # (C, N)

    agreement = tf.reduce_sum(directions * tf.gather(centre, index), axis=-1)
    attraction = tf.reduce_sum(1.0 - agreement * agreement)
    peak = tf.reduce_max(directions, axis=-1)
    if config.sparsity_mode == "authors":
        sparsity = tf.reduce_sum(1.0 - peak * peak)
    else:
        sparsity = tf.reduce_sum(1.0 - peak)

    neighbours = tf.gather(tf.gather(adjacency, present, axis=0), present, axis=1)
    neighbours = neighbours * (1.0 - tf.eye(objects))
    closeness = tf.square(tf.matmul(centre, centre, transpose_b=True))
    if config.repulsion_mode == "pair":
        repulsion = tf.reduce_sum(neighbours * closeness)
        repulsion_count = tf.reduce_sum(neighbours)
    else:
        degree = tf.reduce_sum(neighbours, axis=1)
        repulsion = tf.reduce_sum(
            tf.reduce_sum(neighbours * closeness, axis=1) / tf.maximum(degree, 1.0))
        repulsion_count = tf.cast(objects, tf.float32)
    pixel_count = tf.cast(tf.size(object_of_pixel), tf.float32)
    return tf.stack([attraction, pixel_count, repulsion, repulsion_count, sparsity])


def per_image_layering_loss(embedding: tf.Tensor, stack: tf.Tensor, adjacency: tf.Tensor,
                            config: Config) -> tf.Tensor:
    """Phase-1 layering loss ``attr + rep + lambda * sparse`` computed image by image.

    Parameters
    ----------
    embedding : tf.Tensor
        Sigmoid output ``(B, H, W, N)``.
    stack : tf.Tensor
        Label stack ``(B, H, W, L)``.
    adjacency : tf.Tensor
        ``(B, K + 1, K + 1)`` 0/1 adjacency.
    config : Config
        Loss options, as for :func:`layernet.losses.layering_loss`.

    Returns
    -------
    tf.Tensor
        Float32 scalar equal to ``layering_loss(...)["layering"]``.
    """
    embedding = tf.cast(embedding, tf.float32)
    adjacency = tf.cast(adjacency, tf.float32)
    labels = overlap_free_id_map(stack)
    sums = tf.map_fn(lambda item: _image_sums(item[0], item[1], item[2], config),
                     (embedding, labels, adjacency),
                     fn_output_signature=tf.TensorSpec([5], tf.float32))
    attraction, pixels, repulsion, repulsion_count, sparsity = tf.unstack(sums, axis=1)
    all_pixels = tf.cast(tf.reduce_prod(tf.shape(labels)), tf.float32)
    terms = combine_layering_sums(attraction, pixels, repulsion, repulsion_count, sparsity,
                                  all_pixels, config.repulsion_mode, config.sparsity_mode,
                                  bool(config.layering_per_image))
    return (terms["attraction"] + terms["repulsion"]
            + float(config.sparsity_weight) * terms["sparsity"])
