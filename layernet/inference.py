"""Running a trained network on whole images: probability maps and instances.

The image is normalised exactly as in training (:func:`layernet.normalize.percentile_normalize`),
padded to a multiple of the network stride, passed through the network in inference mode, and
cropped back. Instances come from Algorithm 1 (:func:`layernet.postprocess.postprocess`).

For the baselines (``config.method`` ``"unet2"``/``"unet3"``, :mod:`layernet.baselines`) the two
maps are the foreground probability and the semantic head's class probabilities ``(H, W, C)``
in place of the layering, and instances come from the baseline's post-processing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from layernet import baselines
from layernet.config import Config
from layernet.model import SEMANTIC_CHANNELS
from layernet.normalize import percentile_normalize
from layernet.postprocess import postprocess

logger = logging.getLogger(__name__)


class Predictor:
    """Wrap a network and its configuration for whole-image prediction.

    Parameters
    ----------
    net : keras.Model
        Network built by :func:`layernet.model.build_model`.
    config : Config
        The configuration the network was trained with.
    """

    def __init__(self, net: Any, config: Config) -> None:
        self.net = net
        self.config = config
        # Traced once per input shape: Keras' bilinear up-sampling needs static spatial sizes.
        # Shapes repeat (tiles, validation images), so retracing is rare.
        self._forward = tf.function(lambda x: net(x, training=False))

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

        Returns
        -------
        foreground : numpy.ndarray
            ``(B, H, W)`` float32 foreground probability.
        layering : numpy.ndarray
            ``(B, H, W, N)`` float32 layer activations.
        """
        height, width = images.shape[1:3]
        stride = self.config.stride
        pad_h = (-height) % stride
        pad_w = (-width) % stride
        padded = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect"
                        if min(height, width) > max(pad_h, pad_w) else "constant")
        outputs = self._forward(tf.convert_to_tensor(padded, tf.float32))
        if self.config.method != "layering":
            semantic = outputs["semantic"].numpy()[:, :height, :width, :]
            return baselines.maps_from_outputs(semantic, self.config.method)
        foreground = outputs["foreground"].numpy()[:, :height, :width, 0]
        layering = outputs["layering"].numpy()[:, :height, :width, :]
        return foreground.astype(np.float32), layering.astype(np.float32)

    def maps(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probability maps of a raw ``(H, W, C)`` image (normalised here)."""
        return self.maps_normalized(self.normalize(image))

    @property
    def map_channels(self) -> int:
        """Channels of the second map: ``N`` layers, or the baseline's class count."""
        if self.config.method != "layering":
            return SEMANTIC_CHANNELS[self.config.method]
        return self.config.layers

    def instances_from_maps(self, foreground: np.ndarray, layering: np.ndarray,
                            min_size: int | None = None) -> np.ndarray:
        """Apply Algorithm 1 (or the baseline's post-processing) with the run's parameters.

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
        config = self.config
        size = config.min_size if min_size is None else int(min_size)
        if config.method != "layering":
            return baselines.instances_from_semantic(layering, config, min_size=size)
        return postprocess(foreground, layering, tau=config.tau, min_size=size,
                           overlap_layers=config.overlap_layers, connectivity=config.connectivity)

    def instances_normalized(self, image: np.ndarray) -> np.ndarray:
        """Label stack ``(N, H, W)`` of an already normalised image."""
        return self.instances_from_maps(*self.maps_normalized(image))
