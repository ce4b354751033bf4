"""Per-object sums over batches of label stacks with segment ops: the helpers shared by the
losses (:mod:`layernet.losses`) and the object -> layer assignments
(:mod:`layernet.layer_targets`).

Pixels are summed per object with :func:`tf.math.unsorted_segment_sum` over *global segment ids*
``b * (K + 1) + id`` (:func:`global_segments`), so no Python loop runs over the images of a batch.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["LossInputError", "NORM_EPSILON", "as_tensors", "check_ids", "global_segments",
           "l2_normalize", "overlap_free_id_map"]

NORM_EPSILON = 1e-12  # on the squared norm, as tf.math.l2_normalize


class LossInputError(ValueError):
    """Raised (in eager mode) for loss inputs that do not fit together."""


def l2_normalize(vectors: tf.Tensor) -> tf.Tensor:
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


def global_segments(ids: tf.Tensor, segments_per_image: tf.Tensor) -> tf.Tensor:
    """Flatten per-image ids ``(B, ...)`` to global segment ids ``b * (K+1) + id``."""
    batch = tf.shape(ids)[0]
    offsets = tf.range(batch, dtype=tf.int32) * segments_per_image
    offsets = tf.reshape(offsets, tf.concat([[batch], tf.ones([tf.rank(ids) - 1], tf.int32)], 0))
    return tf.reshape(ids + offsets, [-1])


def check_ids(stack: tf.Tensor, segments_per_image: int | tf.Tensor, what: str) -> None:
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


def as_tensors(*values: tf.Tensor) -> list[tf.Tensor]:
    """Read variables into tensors before a ``reduce_retracing`` function sees them.

    (TF 2.21: a ``tf.Variable`` argument of a shape-relaxed ``tf.function`` keeps the static
    shape of the first variable it was traced with, giving wrong batch sizes later.)
    """
    return [tf.convert_to_tensor(value) for value in values]
