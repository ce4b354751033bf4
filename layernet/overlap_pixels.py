"""How much of the ground truth's overlaps a prediction reproduces, counted in pixels.

meanAP and AJI score whole objects; a model that never predicts two objects on one pixel can
still score well where objects rarely overlap (BBBC010's crossing worms: 1.9% of the
foreground of its validation wells).
These counts say directly whether the overlap completion works: a pixel is an *overlap pixel* of
a label stack ``(L, H, W)`` when two or more slices are non-zero there (:func:`coverage`), that
is when two or more objects cover it (the stacks of :mod:`layernet.instances` hold every object
in one slice). :func:`overlap_pixels` counts the ground truth's overlap pixels, the prediction's
and those of both. Counts add up over images (``+``), and recall / precision are taken from the
pooled counts, as :mod:`layernet.metrics` pools its scores. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OverlapPixels", "coverage", "overlap_pixels"]


@dataclass(frozen=True)
class OverlapPixels:
    """Overlap pixels of a ground truth and a prediction (one image or pooled).

    Attributes
    ----------
    ground_truth : int
        Pixels covered by two or more ground-truth objects.
    predicted : int
        Pixels covered by two or more predicted objects.
    found : int
        Pixels that are overlap pixels of both.
    """

    ground_truth: int = 0
    predicted: int = 0
    found: int = 0

    def __add__(self, other: "OverlapPixels") -> "OverlapPixels":
        return OverlapPixels(self.ground_truth + other.ground_truth,
                             self.predicted + other.predicted, self.found + other.found)

    @classmethod
    def from_masks(cls, truth: np.ndarray, predicted: np.ndarray) -> "OverlapPixels":
        """The counts of two boolean ``(H, W)`` masks of overlap pixels."""
        if truth.shape != predicted.shape:
            raise ValueError(f"ground truth is {truth.shape[0]}x{truth.shape[1]} pixels, the "
                             f"prediction {predicted.shape[0]}x{predicted.shape[1]}")
        return cls(int(truth.sum()), int(predicted.sum()), int((truth & predicted).sum()))

    @property
    def recall(self) -> float:
        """``found / ground_truth``; 1.0 when the ground truth has no overlap pixel."""
        return self.found / self.ground_truth if self.ground_truth else 1.0

    @property
    def precision(self) -> float:
        """``found / predicted``; 1.0 when nothing is predicted as an overlap."""
        return self.found / self.predicted if self.predicted else 1.0


def coverage(stack: np.ndarray) -> np.ndarray:
    """How many objects cover each pixel of a label stack.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(L, H, W)`` label stack (0 = background), or a ``(H, W)`` label image (coverage 0 or 1).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` int32 count of the non-zero slices.
    """
    stack = np.asarray(stack)
    if stack.ndim == 2:
        return (stack != 0).astype(np.int32)
    if stack.ndim != 3:
        raise ValueError(f"expected a label stack (L, H, W) or a label image (H, W), got shape "
                         f"{stack.shape}")
    return np.count_nonzero(stack, axis=0).astype(np.int32)


def overlap_pixels(ground_truth: np.ndarray, prediction: np.ndarray) -> OverlapPixels:
    """Count the overlap pixels of one image's ground truth and prediction.

    Parameters
    ----------
    ground_truth, prediction : numpy.ndarray
        Label stacks ``(L, H, W)`` (or label images) of the same height and width; the numbers
        of slices may differ.

    Returns
    -------
    OverlapPixels
    """
    return OverlapPixels.from_masks(coverage(ground_truth) >= 2, coverage(prediction) >= 2)
