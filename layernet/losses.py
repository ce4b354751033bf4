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

Which layer each object belongs to (phase-2 and layer targets) is decided in
:mod:`layernet.layer_targets`, re-exported here; the segment helpers are in
:mod:`layernet.segments`.
"""

from __future__ import annotations

import logging
from typing import Mapping

import tensorflow as tf

from layernet.config import Config
from layernet.layer_targets import (distinct_object_layers, object_layers,
                                    online_layer_assignment, orientation_object_layers,
                                    overlap_targets, position_object_layers)
from layernet.segments import (LossInputError, as_tensors, check_ids, l2_normalize,
                               overlap_free_id_map)

logger = logging.getLogger(__name__)

__all__ = [
    "LossInputError",
    "overlap_free_id_map",
    "foreground_loss",
    "foreground_dice_loss",
    "outline_band",
    "foreground_target",
    "weigh_outlines",
    "layering_loss",
    "combine_layering_sums",
    "object_layers",
    "distinct_object_layers",
    "orientation_object_layers",
    "position_object_layers",
    "online_layer_assignment",
    "overlap_targets",
    "overlap_loss",
    "layer_target_loss",
    "compute_losses",
]

PROBABILITY_CLIP = 1e-7  # BCE clipping, as keras.backend.epsilon()
PAIR_EPSILON = 1e-7  # authors' guard of the pair-averaged repulsion
FOREGROUND_DICE_SMOOTH = 1.0  # pixels added to both sides of the foreground Dice


# --------------------------------------------------------------------------------------------
# foreground


def foreground_target(stack: tf.Tensor) -> tf.Tensor:
    """``(B, H, W)`` float32: 1 where any object of the label stack ``(B, H, W, L)`` is."""
    return tf.cast(tf.reduce_any(tf.cast(stack, tf.int32) > 0, axis=-1), tf.float32)


def weigh_outlines(per_pixel: tf.Tensor, foreground: tf.Tensor,
                   outline_weight: float) -> tf.Tensor:
    """``per_pixel`` losses ``(B, H, W)`` with the pixels of ``foreground``'s
    :func:`outline_band` multiplied by ``outline_weight`` (returned as they are for 1)."""
    if outline_weight == 1.0:
        return per_pixel
    return per_pixel * (1.0 + (outline_weight - 1.0) * outline_band(foreground))


@tf.function(reduce_retracing=True, autograph=False)
def _foreground_bce(stack: tf.Tensor, fg_pred: tf.Tensor, outline_weight: float) -> tf.Tensor:
    target = foreground_target(stack)
    per_pixel = _binary_cross_entropy(target, fg_pred[..., 0])
    return tf.reduce_mean(weigh_outlines(per_pixel, target, outline_weight))


def outline_band(foreground: tf.Tensor) -> tf.Tensor:
    """The pixels on either side of a foreground mask's outline.

    A pixel is in the band when its 3x3 neighbourhood (the part of it inside the image) holds
    both foreground and background pixels: the outermost row of the objects and the row of
    background around them, 8-connected.

    Parameters
    ----------
    foreground : tf.Tensor
        ``(B, H, W)`` float32 mask of 0 and 1.

    Returns
    -------
    tf.Tensor
        ``(B, H, W)`` float32 mask of 0 and 1.
    """
    mask = foreground[..., tf.newaxis]
    # max pooling with "SAME" padding ignores the pixels outside the image
    dilated = tf.nn.max_pool2d(mask, 3, 1, "SAME")
    eroded = -tf.nn.max_pool2d(-mask, 3, 1, "SAME")
    return (dilated - eroded)[..., 0]


def _binary_cross_entropy(target: tf.Tensor, probability: tf.Tensor) -> tf.Tensor:
    """Per-element cross-entropy of sigmoid outputs, clipped to ``[1e-7, 1 - 1e-7]``."""
    probability = tf.clip_by_value(tf.cast(probability, tf.float32),
                                   PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return -(target * tf.math.log(probability) + (1.0 - target) * tf.math.log(1.0 - probability))


@tf.function(reduce_retracing=True, autograph=False)
def _layer_target_bce(embedding: tf.Tensor, targets: tf.Tensor, stack: tf.Tensor,
                      overlap_weight: float) -> tf.Tensor:
    covering = tf.reduce_sum(tf.cast(tf.cast(stack, tf.int32) > 0, tf.float32), axis=-1)
    foreground = tf.cast(covering > 0, tf.float32)
    weight = foreground + (overlap_weight - 1.0) * tf.cast(covering > 1, tf.float32)
    per_pixel = tf.reduce_mean(_binary_cross_entropy(tf.cast(targets, tf.float32), embedding),
                               axis=-1)
    return tf.reduce_sum(per_pixel * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def layer_target_loss(embedding: tf.Tensor, targets: tf.Tensor, stack: tf.Tensor,
                      config: Config) -> tf.Tensor:
    """Loss of the layering head against per-object layer targets ``S`` on the foreground.

    ``config.layer_target_loss = "bce"``: the binary cross-entropy of every layer's sigmoid
    output against ``S``, averaged over the ``N`` layers and the foreground pixels of the batch
    (overlaps included; 0 without foreground); with ``config.layer_target_overlap_weight``
    ``w`` the pixels covered by two or more objects count ``w`` times in that mean. Unlike the
    Dice of Eq. 6 its gradient with respect to a layer's logit is ``e - S``, so a layer that the
    network has switched off (``e`` near 0) is still pulled up where the targets want it.
    ``"dice"``: :func:`overlap_loss` (Eq. 6).

    Parameters
    ----------
    embedding : tf.Tensor
        Sigmoid output ``(B, H, W, N)``.
    targets : tf.Tensor
        ``S`` of :func:`overlap_targets`, ``(B, H, W, N)``.
    stack : tf.Tensor
        Label stack ``(B, H, W, L)`` (defines the foreground).
    config : Config
        Options ``layer_target_loss``, ``layer_target_overlap_weight`` (and those of
        :func:`overlap_loss` for ``"dice"``).

    Returns
    -------
    tf.Tensor
        Float32 scalar.
    """
    if config.layer_target_loss == "dice":
        return overlap_loss(embedding, targets, stack, config)
    return _layer_target_bce(*as_tensors(embedding, targets, stack),
                             float(config.layer_target_overlap_weight))


def foreground_loss(stack: tf.Tensor, fg_pred: tf.Tensor,
                    outline_weight: float = 1.0) -> tf.Tensor:
    """Binary cross-entropy of the foreground head over the whole image (Eq. 1, area S).

    Parameters
    ----------
    stack : tf.Tensor
        Label stack ``(B, H, W, L)``; the target is "any object" (overlaps included).
    fg_pred : tf.Tensor
        Sigmoid output ``(B, H, W, 1)``; clipped to ``[1e-7, 1 - 1e-7]``.
    outline_weight : float, optional
        Weight of the pixels of the target's :func:`outline_band` (``Config.
        foreground_outline_weight``; 1 = the paper's loss, every pixel alike).

    Returns
    -------
    tf.Tensor
        Float32 scalar, the (weighted) sum over all ``B * H * W`` pixels divided by their
        number.
    """
    stack, fg_pred = as_tensors(stack, fg_pred)
    return _foreground_bce(stack, fg_pred, float(outline_weight))


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
    stack, fg_probability = as_tensors(stack, fg_probability)
    target = foreground_target(stack)
    probability = tf.cast(fg_probability, tf.float32)
    if probability.shape.rank == 4:
        probability = probability[..., 0]
    return _foreground_dice(target, probability)


# --------------------------------------------------------------------------------------------
# layering (phase 1)


@tf.function(reduce_retracing=True, autograph=False)
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
    directions = l2_normalize(vectors)
    ones = tf.ones_like(image_of_pixel, dtype=tf.float32)

    counts = tf.math.unsorted_segment_sum(ones, segments, num_segments)
    source = directions if mean_mode == "normalized" else vectors
    sums = tf.math.unsorted_segment_sum(source, segments, num_segments)  # segment 0 unused
    centres = l2_normalize(sums / tf.maximum(counts, 1.0)[:, None])  # unit u_i, (B*(K+1), N)

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
    check_ids(stack, tf.shape(adjacency)[1], "adjacency")
    embedding, stack, adjacency = as_tensors(embedding, stack, adjacency)
    terms = _layering_terms(embedding, stack, adjacency, config.mean_mode, config.repulsion_mode,
                            config.sparsity_mode, bool(config.layering_per_image))
    terms = dict(terms)
    terms["layering"] = (terms["attraction"] + terms["repulsion"]
                         + float(config.sparsity_weight) * terms["sparsity"])
    return terms


# --------------------------------------------------------------------------------------------
# overlap completion (phase 2)


@tf.function(reduce_retracing=True, autograph=False)
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
    embedding, targets, stack = as_tensors(embedding, targets, stack)
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
    losses = {"foreground": foreground_loss(stack, outputs["foreground"],
                                            config.foreground_outline_weight)}
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
