"""Percentile normalisation of images: the one intensity normalisation of layernet.

Every image the network sees (training, evaluation, prediction) goes through
:func:`percentile_normalize` with the percentiles stored in the run's configuration
(``Config.normalize_low`` / ``Config.normalize_high``, default 1 and 99.8), so a model never sees
intensities scaled differently from those it was trained on.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NORMALIZE_EPS", "normalize_to_range", "percentile_normalize", "percentile_range"]

NORMALIZE_EPS = 1e-20
"""Smallest percentile range divided by; a constant channel maps to zeros instead of NaN/inf."""


def percentile_normalize(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Map the ``low`` and ``high`` percentiles of each channel to 0 and 1.

    Each channel ``c`` of the image becomes ``(x - p_low[c]) / max(p_high[c] - p_low[c], eps)``
    with the percentiles taken over all pixels of that channel of this image (values outside the
    percentiles are not clipped). A constant channel becomes all zeros.

    Parameters
    ----------
    image : numpy.ndarray
        Image of shape ``(H, W, C)``, any real or integer dtype.
    low : float, optional
        Lower percentile in ``[0, 100)``, mapped to 0.
    high : float, optional
        Upper percentile in ``(low, 100]``, mapped to 1.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.

    Raises
    ------
    ValueError
        If the image is not 3-D, not numeric, empty, holds NaN or infinite values, or the
        percentiles are out of order.
    """
    values = _checked_values(image, low, high)
    p_low, p_high = np.percentile(values, [low, high], axis=(0, 1))
    return normalize_to_range(values, p_low, p_high)


def percentile_range(image: np.ndarray, low: float = 1.0, high: float = 99.8
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel ``low`` and ``high`` percentiles :func:`percentile_normalize` maps to 0 and 1.

    ``normalize_to_range(image, *percentile_range(image, low, high))`` equals
    ``percentile_normalize(image, low, high)`` bit for bit, so the percentiles can be computed
    once and stored next to the raw image (the streaming cache of :mod:`layernet.streaming`).

    Parameters
    ----------
    image : numpy.ndarray
        Image of shape ``(H, W, C)``, any real or integer dtype.
    low, high : float, optional
        Percentiles, ``0 <= low < high <= 100``.

    Returns
    -------
    p_low, p_high : numpy.ndarray
        float64 arrays of shape ``(C,)``.

    Raises
    ------
    ValueError
        As :func:`percentile_normalize`.
    """
    values = _checked_values(image, low, high)
    p_low, p_high = np.percentile(values, [low, high], axis=(0, 1))
    return p_low, p_high


def normalize_to_range(image: np.ndarray, p_low: np.ndarray, p_high: np.ndarray) -> np.ndarray:
    """Map ``p_low`` and ``p_high`` (per channel) to 0 and 1: ``(x - p_low) / max(p_high - p_low,
    eps)`` computed in float64, returned as float32.

    Parameters
    ----------
    image : numpy.ndarray
        Image of shape ``(H, W, C)``.
    p_low, p_high : numpy.ndarray
        ``(C,)`` values, e.g. from :func:`percentile_range`.

    Returns
    -------
    numpy.ndarray
        float32 array of the shape of ``image``.
    """
    values = np.asarray(image).astype(np.float64, copy=False)
    scale = np.maximum(np.asarray(p_high, np.float64) - p_low, NORMALIZE_EPS)
    return ((values - p_low) / scale).astype(np.float32)


def _checked_values(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """``image`` as float64 after the checks of :func:`percentile_normalize`."""
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"percentile_normalize expects an (H, W, C) image, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"percentile_normalize expects a numeric image, got dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"percentile_normalize got an empty image of shape {array.shape}")
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low} and {high}")
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("image contains NaN or infinite values")
    return values
