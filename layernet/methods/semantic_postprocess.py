"""Post-processing of the semantic baselines: class probabilities -> a label stack ``(1, H, W)``.

UNet-2 (:func:`unet2_instances`): connected components of ``P(object) > tau`` with at least
``min_size`` pixels. UNet-3 (:func:`unet3_instances`): the arg-max class map; seeds = 4-connected
components of the object class (the pseudo-boundary is an 8-connected line, which only separates
4-connected regions); the seeds grow back over the boundary class by a watershed of the boundary
probability restricted to the foreground (object or boundary class); objects with fewer than
``min_size`` pixels are dropped. Neither can represent overlaps: one slice.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import numpy as np

from layernet.methods.semantic_targets import BACKGROUND, BOUNDARY, OBJECT, BaselineError
from layernet.postprocess import label_components

__all__ = ["unet2_instances", "unet3_instances"]


def _check_probabilities(probabilities: np.ndarray, channels: int) -> np.ndarray:
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 2 and channels == 1:
        probabilities = probabilities[..., None]
    if probabilities.ndim != 3 or probabilities.shape[-1] != channels:
        raise BaselineError(f"expected class probabilities of shape (H, W, {channels}), got "
                            f"{probabilities.shape}")
    if np.issubdtype(probabilities.dtype, np.floating) and not np.isfinite(probabilities).all():
        raise BaselineError("class probabilities contain NaN or infinite values")
    return probabilities


def unet2_instances(probabilities: np.ndarray, tau: float = 0.5, min_size: int = 250,
                    connectivity: int = 2) -> np.ndarray:
    """UNet-2 instances: connected components of ``P(object) > tau``.

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(H, W)`` or ``(H, W, 1)`` object probability.
    tau : float, optional
        Threshold (strict ``>``).
    min_size : int, optional
        Components with fewer pixels are dropped.
    connectivity : int, optional
        1 = 4-, 2 = 8-connected components.

    Returns
    -------
    numpy.ndarray
        int32 label stack ``(1, H, W)``, ids ``1..K``.
    """
    probabilities = _check_probabilities(probabilities, 1)
    return label_components(probabilities[..., 0] > tau, min_size, connectivity)[None]


def unet3_instances(probabilities: np.ndarray, min_size: int = 250) -> np.ndarray:
    """UNet-3 instances: object-class seeds grown back over the boundary class.

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(H, W, 3)`` probabilities of background, object, boundary (one-hot class maps work
        too).
    min_size : int, optional
        Objects (after growing) with fewer pixels are dropped: their seeds are removed and the
        remaining seeds grow again, so fragments (e.g. a pixel left over by the thinning of a
        contour) give their pixels to their neighbours; objects still too small are dropped.

    Returns
    -------
    numpy.ndarray
        int32 label stack ``(1, H, W)``, ids ``1..K`` in raster order of the seeds.
    """
    from skimage.segmentation import watershed

    probabilities = _check_probabilities(probabilities, 3)
    classes = np.argmax(probabilities, axis=-1)
    seeds = label_components(classes == OBJECT, 0, connectivity=1)
    if seeds.max() == 0:
        return np.zeros((1,) + classes.shape, np.int32)
    foreground = classes != BACKGROUND
    elevation = probabilities[..., BOUNDARY].astype(np.float64)
    grown = watershed(elevation, markers=seeds, mask=foreground, connectivity=1)
    if min_size > 1:
        lut = _keep_large(grown, seeds.max(), min_size)
        if lut[1:].min() == 0:
            # Drop the seeds of too small objects and let the others take their pixels.
            seeds = lut[seeds]
            grown = watershed(elevation, markers=seeds, mask=foreground, connectivity=1)
            grown = _keep_large(grown, seeds.max(), min_size)[grown]
    return grown.astype(np.int32)[None]


def _keep_large(labels: np.ndarray, count: int, min_size: int) -> np.ndarray:
    """Look-up table ``0..count`` that renumbers labels with >= ``min_size`` pixels to 1..K
    (in order) and maps the others and the background to 0."""
    keep = np.bincount(labels.ravel(), minlength=count + 1) >= min_size
    keep[0] = False
    lut = np.zeros(count + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut
