"""The paper's semantic-segmentation baselines UNet-2 and UNet-3 (Sec. 3.3), and StarDist's labels.

Both baselines use the layering network's backbone (:func:`layernet.model.build_model` with
``config.method`` ``"unet2"`` / ``"unet3"``) with a single ``"semantic"`` head, the same training
loop, pipeline, run folder and command-line tools. Everything specific to them lives here:

UNet-2 (``method="unet2"``)
    Classes object / background. Target: "any object covers the pixel" (overlaps included),
    computed in the graph from the label stack. Loss: binary cross-entropy of the sigmoid head
    (:func:`layernet.losses.foreground_loss`). Instances: connected components of
    ``P(object) > tau`` with at least ``min_size`` pixels (``config.connectivity``).

UNet-3 (``method="unet3"``)
    Classes background (0) / object (1) / boundary (2) (:func:`semantic_target`). Boundaries are
    the object pixels whose 3x3 neighbourhood holds another id or background, slice by slice
    (:func:`object_boundaries`, so the contour of an object lying on another one counts too).
    Overlaps cannot be given to one object, so, as in the paper, the boundary class is the
    *pseudo-boundary*: the skeleton of the overlap mask together with the boundaries
    (:func:`pseudo_boundary`, :func:`skimage.morphology.skeletonize`). Skeletonising thins an
    overlap region to its medial line, joined to the (thinned) object contours, so the line cuts
    every overlap into two halves, each attached to one of the overlapping objects. The target is
    computed once per un-augmented image (:func:`attach_semantic_targets`) and augmented with the
    stack (nearest neighbour) by the pipeline. Loss: categorical cross-entropy of the softmax
    head. Instances (:func:`unet3_instances`): the arg-max class map; seeds = 4-connected
    components of the object class (the skeleton is an 8-connected line, which only separates
    4-connected regions); the seeds grow back over the boundary class by a watershed of the
    boundary probability restricted to the foreground (object or boundary class); objects with
    fewer than ``min_size`` pixels are dropped.

Both return a label stack with one slice ``(1, H, W)``: these methods cannot represent overlaps.

StarDist (driven by ``bench/stardist_baseline.py``) is trained on one label image per sample:
:func:`flatten_with_pseudo_boundary` splits every overlap along the same pseudo-boundary.

Nothing here but the losses imports TensorFlow at call time.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from layernet.config import Config
from layernet.instances import coverage, flatten_stack, overlap_free_ids, validate_stack
from layernet.postprocess import label_components

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "BACKGROUND",
    "OBJECT",
    "BOUNDARY",
    "LOSS_NAMES",
    "BaselineError",
    "object_boundaries",
    "pseudo_boundary",
    "semantic_target",
    "attach_semantic_targets",
    "semantic_losses",
    "maps_from_outputs",
    "foreground_of",
    "map_names",
    "unet2_instances",
    "unet3_instances",
    "instances_from_semantic",
    "flatten_with_pseudo_boundary",
]

BASELINES = ("unet2", "unet3")
BACKGROUND, OBJECT, BOUNDARY = 0, 1, 2
"""Classes of the UNet-3 target and of its softmax channels."""
LOSS_NAMES = ("loss", "semantic")
"""Loss terms reported while training a baseline."""
PROBABILITY_CLIP = 1e-7


class BaselineError(ValueError):
    """Raised for inputs the baselines cannot use (wrong method, shapes)."""


def _check_method(method: str) -> None:
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
    _check_method(method)
    stack = validate_stack(np.asarray(stack))
    target = (stack > 0).any(axis=0).astype(np.uint8)
    if method == "unet3":
        target[pseudo_boundary(stack)] = BOUNDARY
    return target


def attach_semantic_targets(samples: Sequence, config: Config) -> list:
    """Set ``sample.semantic`` (the UNet-3 class map) of prepared samples, in place.

    Parameters
    ----------
    samples : sequence of layernet.pipeline.PreparedSample
        Prepared (relabelled, un-augmented) samples.
    config : Config
        Only ``method == "unet3"`` needs the map; for other methods nothing is changed.

    Returns
    -------
    list
        The same samples.
    """
    if config.method == "unet3":
        for sample in samples:
            sample.semantic = semantic_target(sample.stack, "unet3")
        logger.info("computed UNet-3 targets (pseudo-boundaries) of %d samples", len(samples))
    return list(samples)


def semantic_losses(outputs: Mapping, batch: Mapping, config: Config,
                    phase: str = "layering") -> dict:
    """Cross-entropy of a baseline's semantic head (same signature as ``compute_losses``).

    Parameters
    ----------
    outputs : mapping
        ``"semantic"``: ``(B, H, W, 1)`` sigmoid (UNet-2) or ``(B, H, W, 3)`` softmax (UNet-3).
    batch : mapping
        ``"stack"`` ``(B, H, W, L)`` (UNet-2 target: any object) or ``"semantic"``
        ``(B, H, W)`` class map (UNet-3, :func:`semantic_target`).
    config : Config
        ``method`` selects the loss.
    phase : str, optional
        Must be ``"layering"`` (the baselines have one phase).

    Returns
    -------
    dict of str to tf.Tensor
        Float32 scalars ``semantic`` (the cross-entropy, mean over all pixels),
        ``foreground_dice`` (if ``config.foreground_dice_weight > 0``; the foreground of UNet-3
        is ``1 - P(background)``) and ``loss`` = ``semantic + foreground_dice_weight *
        foreground_dice``.
    """
    import tensorflow as tf

    from layernet.losses import foreground_dice_loss, foreground_loss

    _check_method(config.method)
    if phase != "layering":
        raise BaselineError(f"method {config.method!r} has no phase {phase!r}")
    if config.method == "unet2":
        loss = foreground_loss(batch["stack"], outputs["semantic"])
    else:
        if "semantic" not in batch:
            raise BaselineError("UNet-3 training needs batch['semantic'] (attach_semantic_targets)")
        probability = tf.clip_by_value(tf.cast(outputs["semantic"], tf.float32),
                                       PROBABILITY_CLIP, 1.0)
        target = tf.one_hot(tf.cast(batch["semantic"], tf.int32), 3, dtype=tf.float32)
        loss = tf.reduce_mean(-tf.reduce_sum(target * tf.math.log(probability), axis=-1))
    losses = {"semantic": loss}
    if config.foreground_dice_weight > 0:
        foreground = foreground_of(tf.cast(outputs["semantic"], tf.float32), config.method)
        losses["foreground_dice"] = foreground_dice_loss(batch["stack"], foreground)
        loss = loss + float(config.foreground_dice_weight) * losses["foreground_dice"]
    losses["loss"] = loss
    return losses


def maps_from_outputs(semantic: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Split a baseline's head output into a foreground map and the class probabilities.

    Parameters
    ----------
    semantic : numpy.ndarray
        ``(B, H, W, C)`` output of the ``"semantic"`` head.
    method : {"unet2", "unet3"}

    Returns
    -------
    foreground : numpy.ndarray
        ``(B, H, W)`` float32: P(object) (UNet-2) or 1 - P(background) (UNet-3).
    probabilities : numpy.ndarray
        ``(B, H, W, C)`` float32, the head output itself.
    """
    _check_method(method)
    semantic = np.asarray(semantic, np.float32)
    return foreground_of(semantic, method), semantic


def foreground_of(semantic: Any, method: str) -> Any:
    """P(object) from a baseline's head output ``(..., C)`` (a NumPy array or a tensor): the
    sigmoid channel (UNet-2) or ``1 - P(background)`` (UNet-3)."""
    if method == "unet2":
        return semantic[..., 0]
    return 1.0 - semantic[..., BACKGROUND]


def map_names(config: Config) -> list[str] | None:
    """Captions of the second map of :meth:`layernet.inference.Predictor.maps` for pictures.

    None for the layering method (``layer 1`` ... ``layer N``), the class names for baselines.
    """
    if config.method == "unet2":
        return ["object"]
    if config.method == "unet3":
        return ["background", "object", "boundary"]
    return None


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


def instances_from_semantic(probabilities: np.ndarray, config: Config,
                            min_size: int | None = None) -> np.ndarray:
    """Instances of a baseline from its class probabilities, with the run's parameters.

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(H, W, C)`` output of the semantic head for one image.
    config : Config
        ``method``, ``tau``, ``min_size`` and ``connectivity`` (UNet-2).
    min_size : int or None, optional
        Overrides ``config.min_size`` (tiled prediction screens sizes after stitching).

    Returns
    -------
    numpy.ndarray
        int32 label stack ``(1, H, W)``.
    """
    _check_method(config.method)
    size = config.min_size if min_size is None else int(min_size)
    if config.method == "unet2":
        return unet2_instances(probabilities, config.tau, size, config.connectivity)
    return unet3_instances(probabilities, size)


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
