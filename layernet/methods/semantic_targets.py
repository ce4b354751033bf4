"""Targets of the semantic baselines from a label stack: UNet-3's pseudo-boundary classes and
StarDist's one label image per sample.

UNet-3's classes are background (0) / object (1) / boundary (2) (:func:`semantic_target`).
Boundaries are the object pixels whose 3x3 neighbourhood holds another id or background, slice
by slice (:func:`object_boundaries`, so the contour of an object lying on another one counts
too). Overlaps cannot be given to one object, so, as in the paper, the boundary class is the
*pseudo-boundary*: the skeleton of the overlap mask together with the boundaries
(:func:`pseudo_boundary`, :func:`skimage.morphology.skeletonize`). Skeletonising thins an
overlap region to its medial line, joined to the (thinned) object contours, so the line cuts
every overlap into two halves, each attached to one of the overlapping objects. UNet-2's target
is "any object covers the pixel" (overlaps included).

StarDist (driven by ``bench/stardist_baseline.py``) is trained on one label image per sample:
:func:`flatten_with_pseudo_boundary` splits every overlap along the same pseudo-boundary.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from layernet.instances import coverage, flatten_stack, overlap_free_ids, validate_stack

__all__ = [
    "BASELINES",
    "BACKGROUND",
    "OBJECT",
    "BOUNDARY",
    "BaselineError",
    "check_baseline",
    "object_boundaries",
    "pseudo_boundary",
    "semantic_target",
    "flatten_with_pseudo_boundary",
]

BASELINES = ("unet2", "unet3")
BACKGROUND, OBJECT, BOUNDARY = 0, 1, 2
"""Classes of the UNet-3 target and of its softmax channels."""


class BaselineError(ValueError):
    """Raised for inputs the baselines cannot use (wrong method, shapes)."""


def check_baseline(method: str) -> None:
    """Raise :class:`BaselineError` unless ``method`` is one of :data:`BASELINES`."""
    if method not in BASELINES:
        raise BaselineError(f"method {method!r} is not a baseline; use one of "
                            f"{', '.join(BASELINES)}")


def object_boundaries(stack: np.ndarray) -> np.ndarray:
    """Object pixels whose 3x3 neighbourhood holds another id or background (any slice).

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    numpy.ndarray
        Boolean ``(H, W)``. The image border is not a boundary (edge pixels are compared with
        replicated neighbours).
    """
    stack = validate_stack(np.asarray(stack))
    footprint = np.zeros((1, 3, 3), bool)
    footprint[0] = True
    largest = ndimage.maximum_filter(stack, footprint=footprint, mode="nearest")
    smallest = ndimage.minimum_filter(stack, footprint=footprint, mode="nearest")
    edge = (stack > 0) & ((largest != stack) | (smallest != stack))
    return edge.any(axis=0)


def pseudo_boundary(stack: np.ndarray) -> np.ndarray:
    """The paper's pseudo-boundary: skeleton of (overlap mask OR object boundaries).

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    numpy.ndarray
        Boolean ``(H, W)`` one-pixel-wide (8-connected) lines, a subset of the foreground.
    """
    from skimage.morphology import skeletonize

    stack = validate_stack(np.asarray(stack))
    mask = (coverage(stack) >= 2) | object_boundaries(stack)
    return skeletonize(mask)


def semantic_target(stack: np.ndarray, method: str = "unet3") -> np.ndarray:
    """Per-pixel class of a label stack for a baseline.

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.
    method : {"unet3", "unet2"}, optional
        ``"unet3"``: 0 background, 1 object, 2 boundary (:func:`pseudo_boundary`);
        ``"unet2"``: 0 background, 1 object (overlaps included).

    Returns
    -------
    numpy.ndarray
        uint8 ``(H, W)``.
    """
    check_baseline(method)
    stack = validate_stack(np.asarray(stack))
    target = (stack > 0).any(axis=0).astype(np.uint8)
    if method == "unet3":
        target[pseudo_boundary(stack)] = BOUNDARY
    return target


def flatten_with_pseudo_boundary(stack: np.ndarray) -> np.ndarray:
    """One label image per sample for StarDist: overlaps split along the pseudo-boundary.

    Overlap-free pixels keep their object. Every overlap pixel off the pseudo-boundary goes to
    the object reached first by growing the overlap-free parts through the overlaps (4-connected,
    so the pseudo-boundary line stops the growth), provided that object covers the pixel; the
    remaining overlap pixels (the line itself, or pixels reached by an object that does not
    cover them) go to the smallest covering object (:func:`layernet.instances.flatten_stack`).

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    numpy.ndarray
        Label image ``(H, W)`` of the stack's dtype and ids.
    """
    from skimage.segmentation import watershed

    stack = validate_stack(np.asarray(stack))
    flat = flatten_stack(stack, "smallest")
    overlap = coverage(stack) >= 2
    if not overlap.any():
        return flat
    free = overlap_free_ids(stack)
    passable = overlap & ~pseudo_boundary(stack)
    grown = watershed(np.zeros(free.shape), markers=free, mask=(free > 0) | passable,
                      connectivity=1)
    covers = (stack == grown[None]).any(axis=0) & (grown > 0)
    take = passable & covers
    flat[take] = grown[take].astype(flat.dtype)
    return flat
