"""The layering network: a UNet with a foreground head and a layering head (Keras 3, functional).

Architecture (paper Sec. 2 and the authors' code, see ``shared/reference/authors_code.md`` Sec. 5):

* encoder: ``depth`` levels (UNet-S/M/L = 3/4/5); level ``l`` (1-based) has
  ``filters * 2**(l-1)`` channels and two 3x3 convolutions, then a 2x2 max-pool;
* bottleneck: two 3x3 convolutions with ``filters * 2**depth`` channels;
* decoder: per level bilinear up-sampling x2, a 1x1 convolution + batch norm (the authors'
  "upConv"), concatenation with the encoder skip, two 3x3 convolutions;
* two separate heads on the shared last decoder feature map, each two 3x3 convolutions with
  ``head_filters`` channels, then a 1x1 convolution with sigmoid: ``foreground`` (1 channel) and
  ``layering`` (``layers`` = N channels). Other methods put their own heads on the same
  backbone (:meth:`layernet.methods.Method.heads`).

Block order: every convolution is **conv -> ReLU -> batch norm** (the authors' order; the BN
normalises the activations that the next convolution sees). Padding is "same", initialisation is
Keras' default (Glorot uniform, bias on). There is no normalisation layer inside the model: the
input is expected to be percentile-normalised already (:mod:`layernet.normalize`).

Every layer has an explicit, stable name (``enc1_conv1``, ``enc1_bn1``, ``dec2_upconv``,
``fg_head_conv1``, ``foreground``, ...), so weights files and activation probes can refer to
layers by name. The two output layers compute in float32 so that mixed precision
(``mixed_bfloat16`` / ``mixed_float16``) still yields float32 probabilities.

Image sides must be a multiple of ``2**depth`` (:func:`pad_to_stride`).
"""

from __future__ import annotations

import logging
import os
import warnings

import h5py
import keras
import numpy as np

from layernet.config import Config
from layernet.methods import get_method
from layernet.methods.semantic import SEMANTIC_CHANNELS  # noqa: F401  (its old home)

logger = logging.getLogger(__name__)

__all__ = [
    "ModelWeightsError",
    "build_model",
    "load_model_weights",
    "PAD_MODES",
    "pad_to_stride",
]

OUTPUT_NAMES = ("foreground", "layering")
"""Outputs of the layering method's network (other methods: :meth:`Method.output_names`)."""


class ModelWeightsError(ValueError):
    """Raised when a weights file cannot be loaded into a model."""


def _conv_relu_bn(x: keras.KerasTensor, filters: int, kernel: int, conv_name: str,
                  bn_name: str, momentum: float, synchronized: bool = False) -> keras.KerasTensor:
    """Conv (kernel x kernel, same padding) -> ReLU -> BatchNorm with the given layer names."""
    x = keras.layers.Conv2D(filters, kernel, padding="same", activation="relu",
                            name=conv_name)(x)
    return keras.layers.BatchNormalization(momentum=momentum, synchronized=synchronized,
                                           name=bn_name)(x)


def _double_conv(x: keras.KerasTensor, filters: int, name: str,
                 momentum: float, synchronized: bool = False) -> keras.KerasTensor:
    """Two 3x3 conv -> ReLU -> BN blocks."""
    x = _conv_relu_bn(x, filters, 3, f"{name}_conv1", f"{name}_bn1", momentum, synchronized)
    return _conv_relu_bn(x, filters, 3, f"{name}_conv2", f"{name}_bn2", momentum, synchronized)


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """Instruction-set flags of the first CPU in ``path`` (empty when it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def auto_precision(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The compute precision that pays on this machine: what ``--precision auto`` picks.

    ``mixed_bfloat16`` on a GPU of compute capability 8.0 or more and on a CPU with native bf16
    instructions (``avx512_bf16`` or AMX's ``amx_bf16``), ``mixed_float16`` on older GPUs,
    ``float32`` otherwise (bf16 would be emulated, slower than float32). Measured on an AMD EPYC
    with ``avx512_bf16`` and no AMX (``bench/speed.py``): training steps 1.4x and predictions
    1.3-1.6x faster than float32, at the float32 accuracy (``bench/precision_accuracy.py``).

    Parameters
    ----------
    cpuinfo : str, optional
        Where to read the CPU flags (Linux ``/proc/cpuinfo``).

    Returns
    -------
    str
        One of :data:`layernet.config.PRECISIONS`.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get(
            "compute_capability", (0, 0))
        return "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"
    native_bf16 = {"avx512_bf16", "amx_bf16"} & cpu_flags(cpuinfo)
    return "mixed_bfloat16" if native_bf16 else "float32"


def resolve_precision(precision: str | None) -> str | None:
    """A ``--precision`` option: ``auto`` becomes :func:`auto_precision` (logged), anything
    else (a precision or ``None`` = the run's) is returned as it is."""
    if precision != "auto":
        return precision
    chosen = auto_precision()
    logger.info("--precision auto: %s on this machine", chosen)
    return chosen


def precision_here(precision: str, doing: str) -> str:
    """The precision to run a model trained in ``precision`` in on this machine: ``precision``
    where it is float32 or what :func:`auto_precision` picks here, else ``"float32"`` (logged):
    a 16-bit type without native instructions is emulated, slower than float32.

    Parameters
    ----------
    precision : str
        The model's precision (``config.precision``).
    doing : str
        What the model is loaded for, for the log (``"training"``, ``"predicting"``).
    """
    if precision == "float32" or auto_precision() == precision:
        return precision
    logger.info("the model was trained in %s, which this machine would only emulate: %s in "
                "float32 (--precision %s to keep it)", precision, doing, precision)
    return "float32"


def build_model(config: Config) -> keras.Model:
    """Build the layering UNet described in the module docstring.

    Parameters
    ----------
    config : Config
        Uses ``method``, ``channels``, ``depth`` (from ``size``), ``filters``,
        ``head_filters``, ``layers``, ``bn_momentum``, ``strategy`` (synchronised batch norm
        under ``multiworker``) and ``precision``: the Keras dtype policy of every layer
        (``float32``, ``mixed_bfloat16`` or ``mixed_float16``: variables in float32,
        computation in the 16-bit type) except the two output layers and the bilinear
        upsampling layers, which always compute in float32. The global Keras policy is left
        as it was.

    Returns
    -------
    keras.Model
        Input ``"image"`` of shape ``(None, None, config.channels)``; outputs a dict
        ``{"foreground": (B, H, W, 1), "layering": (B, H, W, config.layers)}`` of float32
        sigmoid probabilities. ``H`` and ``W`` must be multiples of ``config.stride``.
        Other methods have their own heads on the same backbone
        (:meth:`layernet.methods.Method.heads` of ``config.method``): the baselines
        (``"unet2"`` / ``"unet3"``) a single head (``sem_head_*`` layers) and the output dict
        ``{"semantic": (B, H, W, 1)}`` (sigmoid object probability) or
        ``{"semantic": (B, H, W, 3)}`` (softmax over background, object, boundary).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        return _build(config)
    finally:
        keras.config.set_dtype_policy(previous)


def _build(config: Config) -> keras.Model:
    """:func:`build_model` under the dtype policy it has set."""
    depth = config.depth
    momentum = config.bn_momentum
    # Multi-worker training: batch statistics over the global batch (all workers), so every
    # worker keeps identical moving statistics and the run equals one with the global batch.
    # The weights are those of a plain BatchNormalization; outside a strategy it is one.
    synced = config.strategy == "multiworker"
    inputs = keras.Input(shape=(None, None, config.channels), name="image")
    x = inputs
    skips = []
    for level in range(1, depth + 1):
        x = _double_conv(x, config.filters * 2 ** (level - 1), f"enc{level}", momentum, synced)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _double_conv(x, config.filters * 2 ** depth, "bottleneck", momentum, synced)
    for level in range(depth, 0, -1):
        filters = config.filters * 2 ** (level - 1)
        # Bilinear resizing (and its gradient) has no fast 16-bit kernel on the CPU: in
        # bfloat16 it ran 4-5x slower than in float32 (measured, fwd+bwd); the layer has no
        # weights, so computing it in float32 costs two casts and changes no saved model.
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", dtype="float32",
                                      name=f"dec{level}_upsample")(x)
        x = _conv_relu_bn(x, filters, 1, f"dec{level}_upconv", f"dec{level}_upbn", momentum,
                           synced)
        x = keras.layers.Concatenate(axis=-1, name=f"dec{level}_concat")([x, skips[level - 1]])
        x = _double_conv(x, filters, f"dec{level}", momentum, synced)
    features = x
    method = get_method(config.method)  # the heads of the method on the shared backbone
    heads = {}
    for head in method.heads(config):
        h = _double_conv(features, config.head_filters, head.prefix, momentum, synced)
        heads[head.output] = keras.layers.Conv2D(head.channels, 1, activation=head.activation,
                                                 dtype="float32", name=head.output)(h)
    return keras.Model(inputs=inputs, outputs=heads, name=method.model_name(config))


def _saved_layer_count(path: str) -> int | None:
    """Number of layers with weights stored in a legacy Keras HDF5 file, or None if unknown."""
    try:
        with h5py.File(path, "r") as handle:
            group = handle["model_weights"] if "model_weights" in handle else handle
            names = group.attrs.get("layer_names")
            if names is None:
                return None
            return sum(1 for name in names
                       if len(group[name.decode() if isinstance(name, bytes) else name]
                              .attrs.get("weight_names", [])) > 0)
    except (OSError, KeyError):
        return None


def load_model_weights(model: keras.Model, path: str | os.PathLike) -> keras.Model:
    """Load weights from a file written by ``model.save(...)`` / ``model.save_weights(...)``.

    Accepts legacy HDF5 (``*.h5``, full model or weights), Keras 3 ``*.weights.h5`` and
    ``*.keras`` files. Any failure (missing file, not a model file, different layer count or
    weight shapes, i.e. another UNet size, filter count, channel or layer number) becomes one
    :class:`ModelWeightsError` naming the file.

    Parameters
    ----------
    model : keras.Model
        Model built with :func:`build_model` for the configuration the file was trained with.
    path : str or os.PathLike
        The weights file.

    Returns
    -------
    keras.Model
        The same model, with the weights loaded.

    Raises
    ------
    ModelWeightsError
        If the file is missing, unreadable or does not fit the model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelWeightsError(f"{path}: weights file not found")
    if path.endswith((".h5", ".hdf5")) and not h5py.is_hdf5(path):
        raise ModelWeightsError(f"{path}: not an HDF5 model/weights file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path)
        skipped = [str(w.message) for w in caught
                   if "freshly-initialized" in str(w.message) or "could not be loaded"
                   in str(w.message)]
        if skipped:
            raise ValueError(f"some weights were not loaded: {skipped[0]}")
    except (ValueError, KeyError, OSError, TypeError, AttributeError) as error:
        detail = " ".join(str(error).split())
        if len(detail) > 300:
            detail = detail[:300] + "..."
        expected = sum(1 for layer in model.layers if layer.weights)
        saved = _saved_layer_count(path) if path.endswith((".h5", ".hdf5")) else None
        if saved is not None and saved != expected:
            summary = (f"the file holds {saved} layers with weights, the model "
                       f"{model.name!r} has {expected}")
        else:
            summary = f"the weights do not fit model {model.name!r}"
        raise ModelWeightsError(
            f"{path}: cannot load weights: {summary} (different size/filters/channels/layers?); "
            f"Keras said: {detail}"
        ) from None
    logger.info("loaded weights from %s", path)
    return model


PAD_MODES = ("constant", "reflect")
"""How :func:`pad_to_stride` fills: ``constant`` with zeros (label stacks and target maps, whose
ids must not be repeated, and the training images beside them), ``reflect`` with the mirrored
image (what the network sees at prediction: image content instead of a black band at the
bottom and right borders)."""


def pad_to_stride(image: np.ndarray, stride: int, mode: str = "constant", first_axis: int = 0
                  ) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad the height and width axes at the bottom/right to multiples of ``stride``.

    The one padding rule of layernet: training pads images and label stacks with zeros,
    prediction pads images by reflection (:data:`PAD_MODES`).

    Parameters
    ----------
    image : numpy.ndarray
        Array with height and width at axes ``first_axis`` and ``first_axis + 1``, e.g.
        ``(H, W)``, ``(H, W, C)`` or a batch ``(B, H, W, C)`` with ``first_axis=1``.
    stride : int
        The multiple, ``config.stride`` = ``2**depth``.
    mode : {"constant", "reflect"}, optional
        ``"constant"`` pads with zeros; ``"reflect"`` mirrors the image at its border, or pads
        with zeros when a side of the image is not longer than the largest padding (too small to
        mirror).
    first_axis : int, optional
        Axis of the height (the width follows it).

    Returns
    -------
    padded : numpy.ndarray
        Array with ``H + pad_h`` and ``W + pad_w`` rows/columns; undo with
        ``padded[:H, :W]`` (at the same axes).
    pads : tuple of int
        ``(pad_h, pad_w)``, both in ``[0, stride)``.
    """
    image = np.asarray(image)
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if mode not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    if image.ndim < first_axis + 2:
        raise ValueError(f"pad_to_stride needs an array with at least {first_axis + 2} axes, "
                         f"got {image.shape}")
    height, width = image.shape[first_axis:first_axis + 2]
    pad_h = -height % stride
    pad_w = -width % stride
    if pad_h == 0 and pad_w == 0:
        return image, (0, 0)
    if mode == "reflect" and min(height, width) <= max(pad_h, pad_w):
        mode = "constant"
    widths = ([(0, 0)] * first_axis + [(0, pad_h), (0, pad_w)]
              + [(0, 0)] * (image.ndim - first_axis - 2))
    return np.pad(image, widths, mode=mode), (int(pad_h), int(pad_w))
