"""Post-processing of the network's probability maps into instances (paper Algorithm 1).

Given the foreground probability ``F_raw`` (H, W) and the layering activations ``L_raw``
(H, W, N), Algorithm 1 of Chen, Wu & Merhof (BMVC 2022) is:

1. threshold the foreground: ``F = F_raw > tau``;
2. remove connected components of ``F`` smaller than ``S_min`` pixels;
3. within ``F``, switch a pixel on in the layer holding its largest activation (argmax) and,
   when objects may overlap (lines 7-8), also in every layer whose activation exceeds ``tau``;
4. every connected component of every layer with at least ``S_min`` pixels is one object.

Thresholds use a strict ``>``, as the authors' code does (``foreground > 0.5`` and
``layering > 0.5``); the paper says "larger than" too. The size screening keeps components of
**at least** ``min_size`` pixels (the authors drop components with ``area < 250``), both for the
foreground in step 2 and for the objects in step 4. Connected components use 8-neighbourhoods
by default (``connectivity=2``, the scikit-image default the authors relied on). Argmax ties go
to the lowest layer (:func:`numpy.argmax`).

The result is a label stack (see :mod:`layernet.instances`) with one slice per layer, so objects
found in different layers may overlap. Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = ["PostprocessError", "postprocess", "postprocess_batch", "label_components"]


class PostprocessError(ValueError):
    """Raised when the probability maps or parameters given to post-processing are invalid."""


_STRUCTURES = {
    1: ndimage.generate_binary_structure(2, 1),
    2: ndimage.generate_binary_structure(2, 2),
}


def _structure(connectivity: int, ndim: int) -> np.ndarray:
    if connectivity not in _STRUCTURES:
        raise PostprocessError(
            f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}"
        )
    if ndim == 2:
        return _STRUCTURES[connectivity]
    # (N, H, W): label every slice on its own (no connection between slices).
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = _STRUCTURES[connectivity]
    return structure


def label_components(mask: np.ndarray, min_size: int = 0, connectivity: int = 2) -> np.ndarray:
    """Label the connected components of a binary mask, dropping small ones.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean ``(H, W)`` array, or ``(N, H, W)`` to label every slice separately in one call.
    min_size : int, optional
        Components with fewer pixels are removed; the others are kept (``>= min_size``).
    connectivity : int, optional
        1 for 4-neighbourhoods, 2 for 8-neighbourhoods (within a slice).

    Returns
    -------
    numpy.ndarray
        int32 label array of the shape of ``mask``, 0 = background. Ids ``1..K`` are unique over
        the whole array and numbered in raster-scan order of each component's first pixel (for
        a stack: slice by slice).
    """
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise PostprocessError(f"label_components: expected a 2-D or 3-D mask, got {mask.shape}")
    structure = _structure(connectivity, mask.ndim)
    labels, count = ndimage.label(mask, structure=structure, output=np.int32)
    if count == 0 or min_size <= 1:
        return labels
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= min_size
    keep[0] = False
    if keep[1:].all():
        return labels
    lut = np.zeros(count + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return np.take(lut, labels)


def _check_maps(foreground: np.ndarray, layering: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    foreground = np.asarray(foreground)
    layering = np.asarray(layering)
    if foreground.ndim == 3 and foreground.shape[-1] == 1:
        foreground = foreground[..., 0]
    if foreground.ndim != 2:
        raise PostprocessError(
            f"foreground: expected shape (H, W) or (H, W, 1), got {foreground.shape}"
        )
    if layering.ndim != 3 or layering.shape[-1] < 1:
        raise PostprocessError(f"layering: expected shape (H, W, N) with N >= 1, got {layering.shape}")
    if layering.shape[:2] != foreground.shape:
        raise PostprocessError(
            f"layering has spatial shape {layering.shape[:2]} but foreground has {foreground.shape}"
        )
    for name, array in (("foreground", foreground), ("layering", layering)):
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
                or array.dtype == np.bool_):
            raise PostprocessError(f"{name}: expected a numeric array, got dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise PostprocessError(f"{name}: probability map contains NaN or infinite values")
    return foreground, layering


def postprocess(
    foreground: np.ndarray,
    layering: np.ndarray,
    tau: float = 0.5,
    min_size: int = 250,
    overlap_layers: bool = True,
    connectivity: int = 2,
) -> np.ndarray:
    """Turn foreground and layering probabilities into instances (paper Algorithm 1).

    Parameters
    ----------
    foreground : numpy.ndarray
        Foreground probability, ``(H, W)`` or ``(H, W, 1)``.
    layering : numpy.ndarray
        Layering activations, ``(H, W, N)``.
    tau : float, optional
        Threshold for the foreground and (with ``overlap_layers``) for the layers; a pixel is on
        when its value is strictly greater than ``tau`` (as in the authors' code).
    min_size : int, optional
        ``S_min``: foreground components and objects with fewer pixels are removed; components
        with ``>= min_size`` pixels are kept. 0 or 1 keeps everything.
    overlap_layers : bool, optional
        Algorithm 1 lines 7-8: besides its argmax layer, a foreground pixel is also switched on
        in every layer whose activation is ``> tau``, so objects may overlap. ``False`` gives the
        argmax-only variant (one layer per pixel, no overlaps).
    connectivity : int, optional
        2 (default) = 8-connected components, 1 = 4-connected; used for both size screenings
        and for extracting objects.

    Returns
    -------
    numpy.ndarray
        int32 label stack ``(N, H, W)``: slice ``k`` holds the objects found in layer ``k``.
        Ids ``1..K`` are unique across slices, numbered in layer order, then in raster-scan
        order of each object's first pixel.

    Raises
    ------
    PostprocessError
        If the maps have inconsistent shapes, hold NaN/inf, or a parameter is out of range.
    """
    foreground, layering = _check_maps(foreground, layering)
    if min_size < 0:
        raise PostprocessError(f"min_size must be >= 0, got {min_size}")
    _structure(connectivity, 2)
    height, width, layers = layering.shape

    fg_mask = label_components(foreground > tau, min_size, connectivity) > 0
    if not fg_mask.any():
        return np.zeros((layers, height, width), dtype=np.int32)

    # (N, H, W) layer masks restricted to the foreground: argmax layer, plus (lines 7-8) every
    # layer above tau.
    best = np.argmax(layering, axis=-1)
    if overlap_layers:
        layer_masks = np.ascontiguousarray(np.moveaxis(layering > tau, -1, 0))
    else:
        layer_masks = np.zeros((layers, height, width), dtype=bool)
    layer_masks[best, np.arange(height)[:, None], np.arange(width)[None, :]] = True
    layer_masks &= fg_mask[None]

    stack = label_components(layer_masks, min_size, connectivity)
    logger.debug("postprocess: %d objects in %d layers", int(stack.max()), layers)
    return stack


def postprocess_batch(
    foregrounds: Sequence[np.ndarray] | np.ndarray,
    layerings: Sequence[np.ndarray] | np.ndarray,
    tau: float = 0.5,
    min_size: int = 250,
    overlap_layers: bool = True,
    connectivity: int = 2,
) -> list[np.ndarray]:
    """Apply :func:`postprocess` to every image of a batch or list.

    Parameters
    ----------
    foregrounds : sequence of numpy.ndarray or numpy.ndarray
        Per-image foreground maps ``(H, W)`` / ``(H, W, 1)``, or a batch ``(B, H, W[, 1])``.
    layerings : sequence of numpy.ndarray or numpy.ndarray
        Per-image layering maps ``(H, W, N)``, or a batch ``(B, H, W, N)``.
    tau, min_size, overlap_layers, connectivity
        As in :func:`postprocess`.

    Returns
    -------
    list of numpy.ndarray
        One int32 label stack ``(N, H, W)`` per image.
    """
    if len(foregrounds) != len(layerings):
        raise PostprocessError(
            f"got {len(foregrounds)} foreground maps but {len(layerings)} layering maps"
        )
    return [
        postprocess(fg, layer, tau=tau, min_size=min_size, overlap_layers=overlap_layers,
                    connectivity=connectivity)
        for fg, layer in zip(foregrounds, layerings)
    ]
