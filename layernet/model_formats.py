"""The trained network in other formats: a TensorFlow SavedModel and an ONNX file.

Both take a batch of already normalised images, float32 ``(B, H, W, C)`` with ``H`` and ``W``
any multiples of ``config.stride`` (dynamic, as is ``B``), and return the maps of the Keras
model by name (the heads of the run's method, :mod:`layernet.methods`): ``foreground``
``(B, H, W, 1)`` and ``layering`` ``(B, H, W, N)``, or the baselines' ``semantic``
``(B, H, W, C)``. They compute in float32 whatever the run's training
precision (the weights are float32 in every case). Normalisation, padding to the stride and
post-processing (Algorithm 1) stay with the caller: :class:`layernet.inference.Predictor` does
them for the ONNX file (:class:`layernet.backends.OnnxBackend`).

Keras' ``UpSampling2D`` computes its output size with Python comparisons, so it cannot be traced
for a dynamic height and width. :func:`serving_network` therefore clones the network with every
up-sampling layer replaced by :class:`DynamicUpSampling`, which resizes by ``tf.shape`` with the
same kernel (``tf.image.resize``, bilinear, half-pixel centres): the same function of the same
weights, traceable once for every size. The SavedModel is that clone's ``model.export``; the
ONNX file is converted from its ``tf.function`` by ``tf2onnx`` (optional package,
``requirements-export.txt``).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from layernet.backends import require
from layernet.config import Config
from layernet.files import write_bytes_atomic
from layernet.methods import MERGED_NAME, get_method

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "DynamicUpSampling",
    "MERGED_NAME",
    "export_onnx",
    "export_savedmodel",
    "largest_difference",
    "output_names",
    "serving_network",
]

INPUT_NAME = "image"
"""Name of the input of the SavedModel signature and of the ONNX graph."""

DEFAULT_OPSET = 17
"""ONNX opset of the exported file (tf2onnx 1.17 converts up to 18; ONNX Runtime runs 7-23)."""


def output_names(config: Config, merged: bool = False) -> tuple[str, ...]:
    """Names of the exported network's outputs, in the order of the exported files.

    Parameters
    ----------
    config : Config
        ``method`` of the run.
    merged : bool, optional
        The layering maps merged into one output (:func:`serving_network`).

    Returns
    -------
    tuple of str
        ``("foreground", "layering")``, ``("maps",)`` when merged, or ``("semantic",)`` for the
        baselines (:meth:`layernet.methods.Method.export_outputs`).
    """
    return get_method(config.method).export_outputs(config, merged)


class DynamicUpSampling(keras.layers.Layer):
    """Bilinear up-sampling by an integer factor for inputs of any (dynamic) height and width.

    Computes ``tf.image.resize(x, (factor * H, factor * W), "bilinear")``, as Keras'
    ``UpSampling2D(factor, interpolation="bilinear")`` does for static sizes.

    Parameters
    ----------
    factor : int, optional
        Up-sampling factor of both axes.
    **kwargs
        Passed to :class:`keras.layers.Layer` (``name``, ``dtype``).
    """

    def __init__(self, factor: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs: Any) -> Any:
        """Resize ``inputs`` ``(B, H, W, C)`` to ``(B, factor * H, factor * W, C)``."""
        shape = tf.shape(inputs)
        size = tf.stack([shape[1] * self.factor, shape[2] * self.factor])
        return tf.image.resize(inputs, size, method="bilinear")

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """The input shape with height and width multiplied by ``factor`` (None stays None)."""
        batch, height, width, channels = input_shape
        return (batch, None if height is None else height * self.factor,
                None if width is None else width * self.factor, channels)

    def get_config(self) -> dict[str, Any]:
        """Layer configuration (with ``factor``)."""
        return {**super().get_config(), "factor": self.factor}


def serving_network(net: keras.Model, merged: Sequence[str] = ()) -> keras.Model:
    """A copy of ``net`` that accepts a dynamic height and width (module docstring).

    Parameters
    ----------
    net : keras.Model
        Network built by :func:`layernet.model.build_model`.
    merged : sequence of str, optional
        Outputs concatenated, in this order, into one output ``maps`` (the method's
        :attr:`~layernet.methods.Method.merged_outputs`; layering: ``maps`` ``(B, H, W, 1 + N)``,
        the foreground in channel 0 and the N layers after it, in place of two); empty: the
        outputs as they are. Tools that match a SavedModel's outputs by position (bioimage.io)
        need this: TensorFlow restores a SavedModel's output dictionary in an order that
        changes from process to process.

    Returns
    -------
    keras.Model
        Same layers and weights, every bilinear ``UpSampling2D`` replaced by a
        :class:`DynamicUpSampling` of the same name, factor and dtype.

    Raises
    ------
    ValueError
        If ``net`` has an up-sampling layer that is not bilinear with equal factors.
    """
    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.layers.UpSampling2D):
            factors = tuple(layer.size)
            if layer.interpolation != "bilinear" or factors[0] != factors[1]:
                raise ValueError(f"layer {layer.name}: only bilinear up-sampling with equal "
                                 f"factors can be exported, got {layer.interpolation} {factors}")
            return DynamicUpSampling(factors[0], name=layer.name, dtype=layer.dtype_policy)
        return layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(net, clone_function=clone_layer)
    clone.set_weights(net.get_weights())
    if not merged:
        return clone
    maps = keras.layers.Concatenate(axis=-1, name=MERGED_NAME, dtype="float32")(
        [clone.output[name] for name in merged])
    return keras.Model(clone.input, {MERGED_NAME: maps}, name=f"{clone.name}_merged")


def _merged_outputs(config: Config, merged: bool) -> tuple[str, ...]:
    """The outputs :func:`serving_network` merges for a (merged) export of the run's method."""
    return get_method(config.method).merged_outputs if merged else ()


def _input_spec(config: Config) -> tf.TensorSpec:
    return tf.TensorSpec([None, None, None, config.channels], tf.float32, name=INPUT_NAME)


def export_savedmodel(net: keras.Model, config: Config, path: str, merged: bool = False) -> None:
    """Write ``net`` as a TensorFlow SavedModel for TensorFlow Serving.

    The ``serving_default`` signature (and the ``serve`` endpoint) takes ``image``, float32
    ``(B, H, W, C)`` normalised as in training, ``H`` and ``W`` multiples of ``config.stride``,
    and returns the maps of :func:`output_names` by name.

    Parameters
    ----------
    net : keras.Model
        Network built by :func:`layernet.model.build_model` (float32 precision).
    config : Config
        Its configuration (``channels``).
    path : str
        The SavedModel folder to create (it may exist if empty).
    merged : bool, optional
        One output ``maps`` (:func:`serving_network`).
    """
    serving = serving_network(net, _merged_outputs(config, merged))
    serving.export(path, format="tf_saved_model", input_signature=[_input_spec(config)],
                   verbose=False)
    logger.debug("wrote SavedModel %s", path)


def export_onnx(net: keras.Model, config: Config, path: str, opset: int = DEFAULT_OPSET,
                merged: bool = False) -> None:
    """Convert ``net`` to an ONNX file with dynamic batch, height and width (tf2onnx).

    The graph's input is ``image`` ``(batch, height, width, C)`` and its outputs are those of
    :func:`output_names`, in that order, ``(batch, height, width, channels)``. The file is
    written to a temporary name and renamed.

    Parameters
    ----------
    net : keras.Model
        Network built by :func:`layernet.model.build_model` (float32 precision).
    config : Config
        Its configuration.
    path : str
        The ``.onnx`` file to write.
    opset : int, optional
        ONNX opset.
    merged : bool, optional
        One output ``maps`` (:func:`serving_network`).

    Raises
    ------
    layernet.backends.MissingPackageError
        If ``tf2onnx`` or ``onnx`` is not installed.
    RuntimeError
        If the conversion fails (e.g. an opset that tf2onnx cannot write).
    """
    onnx = require("onnx")
    tf2onnx = require("tf2onnx")
    from tf2onnx import verbose_logging

    verbose_logging.set_level(logging.ERROR)
    serving = serving_network(net, _merged_outputs(config, merged))
    function = tf.function(lambda image: serving(image, training=False))
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=[_input_spec(config)],
                                                 opset=opset)
        _name_axes(proto, output_names(config, merged))
        onnx.checker.check_model(proto)
    except Exception as error:  # tf2onnx and onnx raise many types; say it on one line
        detail = " ".join(str(error).split())[:300] or type(error).__name__
        raise RuntimeError(f"tf2onnx {tf2onnx.__version__} could not convert the network at "
                           f"opset {opset} ({detail}); try another --opset") from None
    write_bytes_atomic(path, proto.SerializeToString())
    logger.debug("wrote ONNX model %s (opset %d)", path, opset)


def _name_axes(proto: Any, outputs: tuple[str, ...]) -> None:
    """Put the graph's outputs in the order ``outputs`` and name the dynamic axes of the input
    and outputs ``batch``, ``height`` and ``width`` (tf2onnx leaves them ``unk__<n>``)."""
    graph = proto.graph
    by_name = {output.name: output for output in graph.output}
    if set(by_name) != set(outputs):
        raise ValueError(f"the converted ONNX graph has outputs {sorted(by_name)}, "
                         f"expected {list(outputs)}")
    ordered = [by_name[name] for name in outputs]
    copies = [type(output)() for output in ordered]
    for copy, output in zip(copies, ordered):
        copy.CopyFrom(output)
    del graph.output[:]
    graph.output.extend(copies)
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims, ("batch", "height", "width")):
            dim.dim_param = name


def largest_difference(net: keras.Model, other: Any, config: Config,
                       shape: tuple[int, int] | None = None, seed: int = 0) -> float:
    """Largest absolute difference between the maps of ``net`` and another backend.

    Both run on the same random normalised batch of two images of ``shape`` (default: 3 x 5
    strides, so that height and width differ).

    Parameters
    ----------
    net : keras.Model
        The Keras network.
    other : callable
        A :class:`layernet.backends.Backend` (or any callable with its signature), e.g. an
        :class:`~layernet.backends.OnnxBackend` of the exported file.
    config : Config
        The network's configuration.
    shape : tuple of int, optional
        Height and width, multiples of ``config.stride``.
    seed : int, optional
        Seed of the random batch.

    Returns
    -------
    float
        The maximum over all outputs and pixels.
    """
    from layernet.backends import KerasBackend

    height, width = shape or (3 * config.stride, 5 * config.stride)
    batch = np.random.default_rng(seed).normal(0.5, 0.5, (2, height, width, config.channels))
    batch = batch.astype(np.float32)
    expected = KerasBackend(net)(batch)
    got = other(batch)
    return max(float(np.max(np.abs(expected[name] - got[name]))) for name in expected)
