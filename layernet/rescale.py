"""The network's scale: images resized by ``config.input_scale`` before the network, maps back.

Objects much larger than the network needs (cervical cells of 100 px and more, nuclei in a
high-magnification image) cost compute in proportion to their pixels, and the network's
receptive field covers fewer of them. With ``input_scale = s`` the network works on images resized
by ``s`` (training samples once, before augmentation; every image or tile in prediction), and its
output maps are resized back to the image before post-processing, so that label stacks, scores and
``min_size`` are always in the image's own pixels.

* :func:`scaled_shape`: the network-side shape of an image.
* :func:`resize_images`: area interpolation when shrinking (anti-aliased), bilinear when growing;
  used for the images of training samples and of prediction alike, so that both see the same
  pixels.
* :func:`resize_maps`: bilinear, for the network's maps on their way back.
* :func:`resize_stack`: nearest neighbour, for a label stack; objects that vanish are dropped
  and the ids renumbered.
* :func:`rescale_sample`: a training :class:`layernet.samples.Sample` at the network's scale.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from layernet.instances import relabel_stack
from layernet.samples import Sample

__all__ = ["rescale_sample", "resize_images", "resize_maps", "resize_stack", "scaled_shape"]

_CV2_MAX_CHANNELS = 128
"""OpenCV resizes at most this many channels in one call (128 in OpenCV 5, 512 in 4)."""


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(height, width)`` of an image of ``shape`` resized by ``scale`` (rounded, at least 1).

    Examples
    --------
    >>> scaled_shape((320, 321), 0.5)
    (160, 160)
    """
    return tuple(max(1, int(round(side * scale))) for side in shape)  # type: ignore[return-value]


def _resize_channels(image: np.ndarray, shape: tuple[int, int], interpolation: int
                     ) -> np.ndarray:
    """Resize one ``(H, W, C)`` float32 array to ``shape`` with OpenCV, any number of channels."""
    height, width = shape
    channels = image.shape[2]
    parts = []
    for first in range(0, channels, _CV2_MAX_CHANNELS):
        part = np.ascontiguousarray(image[..., first:first + _CV2_MAX_CHANNELS])
        resized = cv2.resize(part, (width, height), interpolation=interpolation)
        parts.append(resized.reshape(height, width, part.shape[2]))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def resize_images(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a batch ``(B, H, W, C)`` of images to ``shape = (height, width)`` (float32).

    Area interpolation along an axis that shrinks (every output pixel the mean of the input
    pixels it covers, no aliasing), bilinear otherwise.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"expected a batch (B, H, W, C), got shape {images.shape}")
    if images.shape[1:3] == tuple(shape):
        return images
    shrinking = shape[0] <= images.shape[1] and shape[1] <= images.shape[2]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return np.stack([_resize_channels(image, shape, interpolation) for image in images])


def resize_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a batch of network maps ``(B, h, w)`` or ``(B, h, w, C)`` bilinearly to
    ``shape = (height, width)`` (float32, same number of dimensions)."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim not in (3, 4):
        raise ValueError(f"expected maps (B, H, W) or (B, H, W, C), got shape {maps.shape}")
    if maps.shape[1:3] == tuple(shape):
        return maps
    channels = maps if maps.ndim == 4 else maps[..., None]
    resized = np.stack([_resize_channels(item, shape, cv2.INTER_LINEAR) for item in channels])
    return resized if maps.ndim == 4 else resized[..., 0]


def resize_stack(stack: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a label stack ``(L, H, W)`` to ``shape`` by nearest neighbour.

    Objects with no pixel left are dropped and the ids renumbered ``1..K'`` in order of their old
    ids (:func:`layernet.instances.relabel_stack`).
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"expected a label stack (L, H, W), got shape {stack.shape}")
    if stack.shape[1:] == tuple(shape):
        return stack
    height, width = shape
    # nearest neighbour keeps the ids exact; float32 holds every id below 2**24 exactly
    if stack.size and stack.max() >= 2 ** 24:
        raise ValueError(f"label stack has ids up to {stack.max()}; at most 2**24 - 1 can be "
                         "resized")
    slices = [cv2.resize(layer.astype(np.float32), (width, height),
                         interpolation=cv2.INTER_NEAREST) for layer in stack]
    resized = np.stack(slices).astype(stack.dtype) if slices else np.zeros(
        (0, height, width), stack.dtype)
    return relabel_stack(resized)


def rescale_sample(sample: Sample, scale: float) -> Sample:
    """``sample`` at the network's scale: image by :func:`resize_images`, stack by
    :func:`resize_stack` (``meta`` records the scale and the original shape)."""
    if scale == 1.0:
        return sample
    image = np.asarray(sample.image, dtype=np.float32)
    shape = scaled_shape(image.shape[:2], scale)
    meta = {**sample.meta, "input_scale": scale, "original_shape": tuple(image.shape[:2])}
    return dataclasses.replace(sample, image=resize_images(image[None], shape)[0],
                               stack=resize_stack(sample.stack, shape), meta=meta)
