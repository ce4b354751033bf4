"""Input pipeline: prepared samples (normalised image, relabelled stack, adjacency) -> tf.data.

Two steps:

1. :func:`~layernet.prepared.prepare_samples` (:mod:`layernet.prepared`, no TensorFlow) runs
   once per image, before any augmentation: percentile normalisation, relabelling of the stack
   to ids ``1..K`` and the adjacency matrix of the un-augmented objects. Prepared samples are
   held in memory (a list of :class:`~layernet.prepared.PreparedSample`) or, for datasets larger
   than memory, on disk (:class:`~layernet.prepared.CachedSamples`, one file per sample).
2. :func:`make_dataset` turns the prepared samples into batches. It streams a
   :class:`~layernet.prepared.CachedSamples` (parallel reads inside ``tf.data``) and yields
   exactly the batches of the same samples held in memory.

The names of :mod:`layernet.prepared` are importable from here too.

Batch format (every element a dict of tensors; losses and training rely on it)::

    "image"     (B, P, P, C)     float32 normalised image
    "stack"     (B, P, P, L)     int32 channels-last label stack, ids 1..K, 0 = background
    "adjacency" (B, K+1, K+1)    float32 0/1, row/column 0 (background) and diagonal zero
    "layer_of"  (B, K+1)         int32 object -> layer (phase 2), -1 where unknown
    "semantic"  (B, P, P)        int32 map, only when the samples carry one: the method's
                                 per-sample target (UNet-3's classes,
                                 :meth:`layernet.methods.Method.sample_target`); augmented
                                 with the stack

``L`` is padded to the largest stack of the batch and ``K + 1`` to the largest object count of the
batch rounded up to a multiple of :data:`OBJECT_PAD` (16), which bounds the number of distinct
shapes a ``tf.function`` sees. Padding slices and padding objects are empty (zeros, -1 in
``layer_of``).

Training batches are random ``config.patch_size`` crops. To keep augmentation cheap on big images
and unbiased at the borders, each element is a random crop of the image grown by a margin (zeros
outside the image) large enough for any rotation and the elastic displacement; it is augmented
(:func:`layernet.augment.augment`, rotation about the patch centre) and its central
``patch_size`` window is kept. Every random draw derives from ``config.seed`` (the per-epoch
order) and from the element's position in the stream (the augmentation seed), so a run is
reproducible whatever the parallelism.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from layernet.augment import augment, center_crop, random_crop
from layernet.config import Config
from layernet.model import pad_to_stride
from layernet.prepared import (CachedSamples, PipelineError, PreparedSample, load_prepared,
                               prepare_samples, save_prepared)

logger = logging.getLogger(__name__)

__all__ = ["OBJECT_PAD", "CachedSamples", "PipelineError", "PreparedSample", "load_prepared",
           "make_dataset", "prepare_samples", "patch_margin", "save_prepared"]

OBJECT_PAD = 16
"""``K + 1`` is padded to a multiple of this."""


def patch_margin(config: Config) -> int:
    """Border (px) around a training patch that augmentation may move into the patch.

    A rotation about the patch centre reads from up to ``patch_size / sqrt(2)`` px from the
    centre; the elastic field moves pixels by about ``elastic_strength`` on average (3x is used
    as a bound); a zoom by ``1 / zoom_range`` (the smallest factor) reads from ``zoom_range``
    times as far from the centre.
    """
    margin = 0
    if config.rotate:
        margin += math.ceil(config.patch_size * (math.sqrt(2.0) - 1.0) / 2.0)
    if config.elastic_probability > 0:
        margin += math.ceil(3.0 * config.elastic_strength)
    if config.zoom_probability > 0:
        reach = config.patch_size / 2.0 + margin
        margin += math.ceil(reach * (config.zoom_range - 1.0))
    return margin + 1 if margin else 0


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _element(sample: PreparedSample, layer_of: np.ndarray | None, stride: int | None
             ) -> dict[str, np.ndarray]:
    """Numpy arrays of one dataset element (channels-last stack, padded objects)."""
    image = sample.image
    stack = np.ascontiguousarray(np.moveaxis(sample.stack, 0, -1))
    semantic = None if sample.semantic is None else np.asarray(sample.semantic, np.int32)
    if stride is not None:
        image, _ = pad_to_stride(image, stride)
        stack, _ = pad_to_stride(stack, stride)
        if semantic is not None:
            semantic, _ = pad_to_stride(semantic, stride)
    segments = sample.adjacency.shape[0]
    padded = _round_up(segments, OBJECT_PAD)
    adjacency = np.zeros((padded, padded), np.float32)
    adjacency[:segments, :segments] = sample.adjacency
    adjacency[0, :] = 0.0
    adjacency[:, 0] = 0.0
    layers = np.full(padded, -1, np.int32)
    if layer_of is not None:
        layers[:segments] = layer_of
        layers[0] = -1
    element = {"image": image.astype(np.float32, copy=False), "stack": stack.astype(np.int32),
               "adjacency": adjacency, "layer_of": layers}
    if semantic is not None:
        element["semantic"] = semantic
    return element


def _check_layer_of(names: Sequence[str], num_objects: Sequence[int],
                    layer_of: Sequence[np.ndarray] | None) -> list[np.ndarray | None]:
    if layer_of is None:
        return [None] * len(names)
    if len(layer_of) != len(names):
        raise PipelineError(f"layer_of has {len(layer_of)} entries for {len(names)} samples")
    checked = []
    for name, count, layers in zip(names, num_objects, layer_of):
        layers = np.asarray(layers)
        if layers.shape != (count + 1,) or not np.issubdtype(layers.dtype, np.integer):
            raise PipelineError(
                f"sample {name!r}: layer_of must be an integer array of shape "
                f"({count + 1},) (index = object id), got {layers.dtype} {layers.shape}")
        checked.append(layers.astype(np.int32))
    return checked


def _streamed_elements(cached: CachedSamples, order: tf.data.Dataset,
                       layers: Sequence[np.ndarray | None], stride: int | None, channels: int
                       ) -> tf.data.Dataset:
    """``order`` (sample indices) mapped to the elements of :func:`_element`, each read from its
    file inside the pipeline (parallel, in order)."""
    keys = ["image", "stack", "adjacency", "layer_of"] + (["semantic"] if cached.with_semantic
                                                           else [])
    dtypes = {"image": tf.float32, "stack": tf.int32, "adjacency": tf.float32,
              "layer_of": tf.int32, "semantic": tf.int32}
    shapes = {"image": [None, None, channels], "stack": [None, None, None],
              "adjacency": [None, None], "layer_of": [None], "semantic": [None, None]}

    def read(index: np.ndarray) -> list[np.ndarray]:
        element = _element(cached[int(index)], layers[int(index)], stride)
        return [element[key] for key in keys]

    def load(index: tf.Tensor) -> dict[str, tf.Tensor]:
        values = tf.numpy_function(read, [index], [dtypes[key] for key in keys], stateful=False)
        element = {}
        for key, value in zip(keys, values):
            value.set_shape(shapes[key])
            element[key] = value
        return element

    return order.map(tf.autograph.experimental.do_not_convert(load),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_dataset(prepared: Sequence[PreparedSample], config: Config, training: bool,
                 layer_of: Sequence[np.ndarray] | None = None, start: int = 0
                 ) -> tf.data.Dataset:
    """Build the ``tf.data`` pipeline of batches described in the module docstring.

    Parameters
    ----------
    prepared : sequence of PreparedSample or CachedSamples
        Output of :func:`prepare_samples` (held in memory), or samples on disk
        (:class:`CachedSamples`, read one element at a time inside the pipeline, in parallel);
        both give the same batches.
    config : Config
        Uses ``seed``, ``patch_size``, ``batch_size``, ``stride`` and the augmentation options.
    training : bool
        True: endless stream of augmented ``patch_size`` crops in batches of
        ``config.batch_size`` (last partial batch dropped, so shapes are static), the order
        reshuffled every epoch from ``config.seed``. False: one pass over the full images in the
        given order, padded (zeros) at the bottom/right to a multiple of ``config.stride``, batch
        size 1, no augmentation.
    layer_of : sequence of numpy.ndarray or None, optional
        Per sample an integer array of length ``K + 1`` (index = object id; entry 0 ignored),
        the frozen phase-2 layer of each object, -1 where unknown. None: all -1.
    start : int, optional
        Training only: begin the stream at this element (``step * batch_size`` of a resumed
        run), so a resumed run sees the same crops and augmentations as an uninterrupted one.

    Returns
    -------
    tf.data.Dataset
        Elements are dicts with ``image``, ``stack``, ``adjacency`` and ``layer_of``.

    Raises
    ------
    PipelineError
        If there are no samples, or ``layer_of`` does not fit the samples.
    """
    if not len(prepared):
        raise PipelineError("make_dataset got no samples")
    streamed = isinstance(prepared, CachedSamples)
    if streamed:
        layers = _check_layer_of(prepared.names, prepared.num_objects, layer_of)
        with_semantic = [prepared.with_semantic] * len(prepared)
    else:
        layers = _check_layer_of([sample.name for sample in prepared],
                                 [sample.num_objects for sample in prepared], layer_of)
        with_semantic = [sample.semantic is not None for sample in prepared]
    if any(with_semantic) and not all(with_semantic):
        raise PipelineError("either every sample or none must carry a semantic class map")
    stride = None if training else config.stride
    options = tf.data.Options()
    options.deterministic = True
    count = len(prepared)
    if streamed:
        def elements(order: tf.data.Dataset) -> tf.data.Dataset:
            return _streamed_elements(prepared, order, layers, stride, config.channels)
    else:
        per_sample = [tf.data.Dataset.from_tensors(_element(sample, lay, stride))
                      for sample, lay in zip(prepared, layers)]

        def elements(order: tf.data.Dataset) -> tf.data.Dataset:
            return tf.data.Dataset.choose_from_datasets([d.repeat() for d in per_sample], order)

    if not training:
        dataset = elements(tf.data.Dataset.range(count))
        return dataset.batch(1).prefetch(tf.data.AUTOTUNE).with_options(options)

    seed = tf.constant(config.seed, tf.int64)

    def epoch_order(epoch: tf.Tensor) -> tf.data.Dataset:
        """A permutation of the samples drawn from (config.seed, epoch)."""
        keys = tf.random.stateless_uniform([count], seed=tf.stack([seed, -1 - epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.cast(tf.argsort(keys), tf.int64))

    if start < 0:
        raise PipelineError(f"start must be >= 0, got {start}")
    order = tf.data.Dataset.range(2 ** 62).flat_map(
        tf.autograph.experimental.do_not_convert(epoch_order)).skip(start)
    dataset = elements(order)
    size = config.patch_size
    margin = patch_margin(config)

    def crop_and_augment(position: tf.Tensor, element: dict[str, tf.Tensor]
                         ) -> dict[str, tf.Tensor]:
        seeds = tf.random.experimental.stateless_split(tf.stack([seed, position]), num=2)
        image, stack = element["image"], element["stack"]
        semantic = "semantic" in element
        if semantic:  # resampled exactly like the stack: one more (nearest) channel
            stack = tf.concat([stack, element["semantic"][..., None]], axis=-1)
        if margin:
            paddings = [[margin, margin], [margin, margin], [0, 0]]
            image = tf.pad(image, paddings)
            stack = tf.pad(stack, paddings)
        image, stack = random_crop(image, stack, size + 2 * margin, seeds[0])
        image, stack = augment(image, stack, config, seeds[1])
        if margin:
            image = center_crop(image, size)
            stack = center_crop(stack, size)
        result = {"image": image, "adjacency": element["adjacency"],
                  "layer_of": element["layer_of"]}
        if semantic:
            result["semantic"] = stack[..., -1]
            stack = stack[..., :-1]
        result["stack"] = stack
        return result

    dataset = dataset.enumerate(start=start).map(
        tf.autograph.experimental.do_not_convert(crop_and_augment),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    padded_shapes = {"image": [size, size, config.channels], "stack": [size, size, None],
                     "adjacency": [None, None], "layer_of": [None]}
    padding_values = {"image": 0.0, "stack": 0, "adjacency": 0.0, "layer_of": -1}
    if all(with_semantic):
        padded_shapes["semantic"] = [size, size]
        padding_values["semantic"] = 0
    dataset = dataset.padded_batch(config.batch_size, padded_shapes=padded_shapes,
                                   padding_values=padding_values, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)
