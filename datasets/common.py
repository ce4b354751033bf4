"""Helpers shared by the real-data loaders: resizing, sample assembly (and the library's
:func:`~layernet.samples.select_split` and :data:`~layernet.files.IMAGE_EXTENSIONS`,
re-exported)."""

from __future__ import annotations

import logging
import os
from typing import Sequence, TypeVar

import cv2
import numpy as np

from layernet.files import IMAGE_EXTENSIONS
from layernet.instances import stack_from_masks
from layernet.samples import Sample, select_split

__all__ = ["IMAGE_EXTENSIONS", "DatasetError", "apply_limit", "as_size", "make_sample",
           "require_folder", "resize_image", "resize_masks", "select_split"]

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class DatasetError(ValueError):
    """Raised when a dataset folder is missing files or holds inconsistent data."""


def apply_limit(items: Sequence[Item], limit: int | None) -> list[Item]:
    """Keep the first ``limit`` items (all when ``limit`` is None)."""
    if limit is None:
        return list(items)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return list(items)[:limit]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W, C)`` float image bilinearly to ``size = (height, width)``."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, image.shape[2]).astype(np.float32)


def resize_masks(masks: Sequence[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Resize boolean ``(H, W)`` masks with nearest-neighbour interpolation."""
    height, width = size
    return [
        mask if mask.shape == (height, width)
        else cv2.resize(mask.astype(np.uint8), (width, height),
                        interpolation=cv2.INTER_NEAREST).astype(bool)
        for mask in masks
    ]


def as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """Normalise a ``size`` option (``None``, an int, or ``(height, width)``)."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive int or (height, width), got {size}")
    return size  # type: ignore[return-value]


def make_sample(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    name: str,
    meta: dict,
    size: tuple[int, int] | None = None,
) -> Sample:
    """Resize (optionally) and assemble one :class:`~layernet.samples.Sample`.

    Masks that are empty (after resizing) are dropped; the stack holds ids ``1..K`` in the order
    of the remaining masks.
    """
    meta = dict(meta, original_shape=tuple(image.shape[:2]))
    if size is not None:
        image = resize_image(image, size)
        masks = resize_masks(masks, size)
    kept = [mask for mask in masks if mask.any()]
    if len(kept) < len(masks):
        logger.debug("%s: %d empty mask(s) dropped", name, len(masks) - len(kept))
    stack = stack_from_masks(kept, shape=image.shape[:2], dtype=np.int32)
    return Sample(image=image.astype(np.float32), stack=stack, name=name, meta=meta)


def require_folder(path: str, what: str) -> str:
    """Return ``path`` if it is a folder, else raise :class:`DatasetError` naming it."""
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: {what} folder not found")
    return path
