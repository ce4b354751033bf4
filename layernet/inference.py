"""Running a trained network on whole images: probability maps and instances.

The image is normalised exactly as in training (:func:`layernet.normalize.percentile_normalize`),
resized by ``config.input_scale`` (:mod:`layernet.rescale`; maps are resized back),
padded to a multiple of the network stride, passed through the network in inference mode (by its
backend: the Keras model, or its ONNX export run by ONNX Runtime, :mod:`layernet.backends`), and
cropped back. Instances come from Algorithm 1 (:func:`layernet.postprocess.postprocess`).

Which maps and which post-processing is the run's method's (:mod:`layernet.methods`): for the
baselines (``config.method`` ``"unet2"``/``"unet3"``) the two maps are the foreground probability
and the semantic head's class probabilities ``(H, W, C)`` in place of the layering, and instances
come from the baseline's post-processing.

Test-time augmentation (``Predictor(..., tta=True)``): the padded input goes through the network
in each of its 8 dihedral orientations (:func:`dihedral_transform`), each output map is turned
back (:func:`dihedral_inverse`) and the 8 are averaged before post-processing. This costs 8
forward passes per image or tile batch. The layering maps are the exception: which layer an
object lands in is the network's free choice, and a turned image may get another one, so an
average mixes the layers of an object (measured on BBBC010 validation, 200-step model: meanAP
0.252 without TTA, 0.197 averaging everything, 0.241 with the 8 layerings aligned by one best
layer permutation per image, 0.292 averaging the foreground only). With the layering method the
foreground is averaged over the 8 orientations and the layering comes from the image as it is
(:meth:`layernet.methods.Method.averaged_outputs`). The network is fully convolutional, so a
quarter turn of a padded ``H x W`` input (both multiples of the stride) is simply a ``W x H``
input.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

from layernet.backends import Backend, KerasBackend
from layernet.config import Config
from layernet.methods import Method, get_method
from layernet.model import pad_to_stride
from layernet.normalize import percentile_normalize
from layernet.rescale import resize_images, resize_maps, scaled_shape

logger = logging.getLogger(__name__)

DIHEDRAL_COUNT = 8
"""Number of elements of the dihedral group D4: 4 rotations, each with and without a flip."""


def dihedral_transform(array: np.ndarray, index: int, axes: tuple[int, int] = (1, 2)
                       ) -> np.ndarray:
    """Element ``index`` of the dihedral group D4 applied to the plane ``axes`` of ``array``.

    Element ``k`` (0-7) rotates by ``k % 4`` quarter turns (:func:`numpy.rot90`, from the first
    axis towards the second) and then, for ``k >= 4``, flips the first axis. Element 0 is the
    identity; 1-3 are the rotations, 4-7 the flips (a flip of the first axis, the
    anti-transpose, a flip of the second axis, the transpose). Undone by :func:`dihedral_inverse`.

    Parameters
    ----------
    array : numpy.ndarray
        Array with (at least) the two spatial axes ``axes``, e.g. a batch ``(B, H, W, C)``.
    index : int
        Which of the 8 transforms, ``0 <= index < 8``.
    axes : tuple of int, optional
        The two spatial axes (default ``(1, 2)``: height and width of a batch).

    Returns
    -------
    numpy.ndarray
        A view of ``array``; its two spatial sizes are swapped for odd ``index % 4``.
    """
    if not 0 <= index < DIHEDRAL_COUNT:
        raise ValueError(f"dihedral transform index must be in 0..7, got {index}")
    turned = np.rot90(array, index % 4, axes=axes)
    return np.flip(turned, axis=axes[0]) if index >= 4 else turned


def dihedral_inverse(array: np.ndarray, index: int, axes: tuple[int, int] = (1, 2)
                     ) -> np.ndarray:
    """Undo :func:`dihedral_transform`: ``dihedral_inverse(dihedral_transform(a, k), k)`` is ``a``.

    Parameters
    ----------
    array : numpy.ndarray
        A transformed array, e.g. the network's output for a transformed input.
    index : int
        The transform to undo, ``0 <= index < 8``.
    axes : tuple of int, optional
        The two spatial axes (default ``(1, 2)``).

    Returns
    -------
    numpy.ndarray
        A view of ``array`` in the original orientation.
    """
    if not 0 <= index < DIHEDRAL_COUNT:
        raise ValueError(f"dihedral transform index must be in 0..7, got {index}")
    unflipped = np.flip(array, axis=axes[0]) if index >= 4 else array
    return np.rot90(unflipped, -(index % 4), axes=axes)


def instances_from_maps(foreground: np.ndarray, layering: np.ndarray, config: Config,
                        min_size: int | None = None) -> np.ndarray:
    """Apply Algorithm 1 (or the method's post-processing) to one image's maps.

    Parameters
    ----------
    foreground, layering : numpy.ndarray
        Maps of one image, as returned by :meth:`Predictor.maps_normalized`.
    config : Config
        ``method`` (:meth:`layernet.methods.Method.instances`), ``tau``, ``min_size``,
        ``overlap_layers``, ``connectivity``, ``join_layers`` and :attr:`Config.join_max_area`.
    min_size : int or None, optional
        Overrides ``config.min_size``.

    Returns
    -------
    numpy.ndarray
        Label stack: ``(N, H, W)`` for layering, ``(1, H, W)`` for the baselines.
    """
    size = config.min_size if min_size is None else int(min_size)
    return get_method(config.method).instances(foreground, layering, config, size)


class Predictor:
    """Wrap a network and its configuration for whole-image prediction.

    Parameters
    ----------
    net : keras.Model or layernet.backends.Backend
        Network built by :func:`layernet.model.build_model` (run by a
        :class:`~layernet.backends.KerasBackend`), or a backend that runs the forward pass
        (e.g. :class:`~layernet.backends.OnnxBackend`). Padding, test-time augmentation and
        post-processing are the same for every backend.
    config : Config
        The configuration the network was trained with.
    tta : bool, optional
        Test-time augmentation: average the network's maps over the 8 dihedral transforms of
        the input (8 forward passes per call of :meth:`maps_batch_normalized`).
    """

    def __init__(self, net: Any, config: Config, tta: bool = False) -> None:
        self.net = net
        self.config = config
        self.tta = bool(tta)
        self.backend: Backend = KerasBackend(net) if isinstance(net, keras.Model) else net

    @property
    def method(self) -> Method:
        """The method of the run (:func:`layernet.methods.get_method` of ``config.method``)."""
        return get_method(self.config.method)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Percentile-normalise a raw ``(H, W, C)`` image with the run's percentiles."""
        return percentile_normalize(image, self.config.normalize_low, self.config.normalize_high)

    def maps_normalized(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probability maps of an already normalised ``(H, W, C)`` image.

        Returns
        -------
        foreground : numpy.ndarray
            ``(H, W)`` float32 foreground probability.
        layering : numpy.ndarray
            ``(H, W, N)`` float32 layer activations.
        """
        foreground, layering = self.maps_batch_normalized(np.asarray(image)[None])
        return foreground[0], layering[0]

    def maps_batch_normalized(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probability maps of a batch ``(B, H, W, C)`` of already normalised images.

        With ``tta`` the maps are the mean over the 8 dihedral transforms of the padded batch
        (each output turned back before averaging). With ``config.input_scale`` other than 1
        the network sees the batch resized by it and its maps are resized back
        (:mod:`layernet.rescale`).

        Returns
        -------
        foreground : numpy.ndarray
            ``(B, H, W)`` float32 foreground probability.
        layering : numpy.ndarray
            ``(B, H, W, N)`` float32 layer activations.
        """
        height, width = images.shape[1:3]
        scale = self.config.input_scale
        if scale != 1.0:
            images = resize_images(images, scaled_shape((height, width), scale))
        net_height, net_width = images.shape[1:3]
        padded, _ = pad_to_stride(images, self.config.stride, mode="reflect", first_axis=1)
        outputs = self._outputs_tta(padded) if self.tta else self._outputs(padded)
        cropped = {name: value[:, :net_height, :net_width] for name, value in outputs.items()}
        if scale != 1.0:
            cropped = {name: resize_maps(value, (height, width))
                       for name, value in cropped.items()}
        return self.method.maps(cropped, self.config)

    def _outputs(self, padded: np.ndarray) -> dict[str, np.ndarray]:
        """The network's float32 output maps of a padded batch, by output name."""
        return self.backend(padded)

    def _outputs_tta(self, padded: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`_outputs` averaged over the 8 dihedral transforms of ``padded`` (the outputs
        of the method's :meth:`~layernet.methods.Method.averaged_outputs`; the others are those
        of the untransformed batch)."""
        averaged = self.method.averaged_outputs(self.config)
        total: dict[str, np.ndarray] = {}
        for index in range(DIHEDRAL_COUNT):
            turned = np.ascontiguousarray(dihedral_transform(padded, index))
            for name, value in self._outputs(turned).items():
                if name not in averaged:
                    if index == 0:
                        total[name] = value
                    continue
                back = dihedral_inverse(value, index)
                if name in total:
                    total[name] += back
                else:
                    total[name] = back.copy()
        return {name: value / DIHEDRAL_COUNT if name in averaged else value
                for name, value in total.items()}

    def maps(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probability maps of a raw ``(H, W, C)`` image (normalised here)."""
        return self.maps_normalized(self.normalize(image))

    @property
    def map_channels(self) -> int:
        """Channels of the second map: ``N`` layers, or the baseline's class count."""
        return self.method.map_channels(self.config)

    def instances_from_maps(self, foreground: np.ndarray, layering: np.ndarray,
                            min_size: int | None = None) -> np.ndarray:
        """Apply Algorithm 1 (or the method's post-processing) with the run's parameters.

        Parameters
        ----------
        foreground, layering : numpy.ndarray
            Maps of one image, as returned by :meth:`maps_normalized`.
        min_size : int or None, optional
            Overrides ``config.min_size`` (e.g. 0 for tiles that are screened after stitching).

        Returns
        -------
        numpy.ndarray
            Label stack: ``(N, H, W)`` for layering, ``(1, H, W)`` for the baselines.
        """
        return instances_from_maps(foreground, layering, self.config, min_size=min_size)

    def instances_normalized(self, image: np.ndarray) -> np.ndarray:
        """Label stack ``(N, H, W)`` of an already normalised image."""
        return self.instances_from_maps(*self.maps_normalized(image))
