"""CCDB6843 (Cell Image Library, MP6843 neuroblastoma cells): one mask per cell, cells may overlap.

Layout (as published)::

    <data_dir>/MP6843_img_full/<key>w1.TIF      e.g. F01_120w1.TIF (channel w1; w2 files skipped)
    <data_dir>/MP6843_seg/<key>_GT_01.tif       cells
    <data_dir>/MP6843_seg/<key>_GT_02.tif       optional: the cells overlapping those of GT_01

File-name matching ignores case (``.tif``/``.TIF``/``.tiff``).

Objects of one ground-truth file (a colour file uses its first channel):

* if the file holds **several distinct non-zero values** it is a label image: each id is one cell
  (so cells that touch are not merged);
* otherwise (a binary 0/1, 0/255 file) each 8-connected component of ``gt > 0`` is one cell, as
  in the authors' code.

Objects smaller than ``min_size`` pixels (100) are dropped. The objects of ``_GT_01`` and
``_GT_02`` are concatenated, so cells of the two files may overlap.

Splits (authors' ``train_bmvc``/``test_bmvc``): ``test`` = keys starting with ``F04``;
``trainval`` = the others; ``train``/``val`` = seeded split of the sorted ``trainval`` keys
(:func:`datasets.val_split`: ``val_fraction``, 10 %, but at least 3 images).
Images (bilinear) and masks (nearest) are resized to ``size`` x ``size`` (448; ``None`` keeps the
native size).
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
from scipy import ndimage

from datasets import DEFAULT_VAL_FRACTION, Sample, SampleSource, source_key
from datasets.common import (DatasetError, apply_limit, as_size, make_sample, require_folder,
                             select_split)
from layernet.io import as_channels, read_image

logger = logging.getLogger(__name__)

IMAGE_FOLDER = "MP6843_img_full"
MASK_FOLDER = "MP6843_seg"
DEFAULT_SIZE = 448
MIN_SIZE = 100
TEST_PREFIX = "F04"
_IMAGE_NAME = re.compile(r"^(?P<key>.+)w(?P<channel>\d)\.tiff?$", re.IGNORECASE)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def objects_from_ground_truth(gt: np.ndarray, min_size: int = MIN_SIZE) -> list[np.ndarray]:
    """Split one ground-truth array into per-cell boolean masks.

    Parameters
    ----------
    gt : numpy.ndarray
        ``(H, W)`` label image or binary mask (a colour ``(H, W, C)`` array uses channel 0).
    min_size : int, optional
        Objects with fewer pixels are dropped.

    Returns
    -------
    list of numpy.ndarray
        Boolean ``(H, W)`` masks: one per id for a label image (several non-zero values), one per
        8-connected component of ``gt > 0`` for a binary file.
    """
    gt = np.asarray(gt)
    if gt.ndim == 3:
        gt = gt[..., 0]
    values = np.unique(gt)
    values = values[values != 0]
    if values.size > 1:
        masks = [gt == v for v in values]
    else:
        components, count = ndimage.label(gt != 0, structure=_EIGHT_CONNECTED)
        masks = [components == k for k in range(1, count + 1)]
    return [m for m in masks if int(m.sum()) >= min_size]


def _find_file(folder: str, file_name: str) -> str | None:
    wanted = file_name.lower()
    stem = os.path.splitext(wanted)[0]
    for candidate in os.listdir(folder):
        lower = candidate.lower()
        if lower == wanted or lower in (stem + ".tif", stem + ".tiff"):
            return os.path.join(folder, candidate)
    return None


def scan(data_dir: str) -> dict[str, str]:
    """Return key -> w1 image path for every image of ``MP6843_img_full``."""
    folder = require_folder(os.path.join(data_dir, IMAGE_FOLDER), "CCDB6843 image")
    images = {}
    for file_name in sorted(os.listdir(folder)):
        match = _IMAGE_NAME.match(file_name)
        if match and match["channel"] == "1":
            images[match["key"]] = os.path.join(folder, file_name)
    if not images:
        raise DatasetError(f"{folder}: no CCDB6843 images named <key>w1.TIF")
    return images


def _ground_truth_paths(key: str, mask_folder: str) -> list[str]:
    """The ``<key>_GT_01.tif`` / ``_GT_02.tif`` files of ``key`` that exist."""
    return [p for p in (_find_file(mask_folder, f"{key}_GT_{n}.tif") for n in ("01", "02")) if p]


def _load_key(key: str, image_path: str, gt_paths: list[str], min_size: int,
              size: tuple[int, int] | None) -> Sample:
    image = as_channels(read_image(image_path), expected_channels=1, name=image_path)
    masks = []
    for path in gt_paths:
        gt = read_image(path)
        if gt.shape[:2] != image.shape[:2]:
            raise DatasetError(f"{path}: ground truth shape {gt.shape[:2]} differs from image "
                               f"shape {image.shape[:2]} ({image_path})")
        masks.extend(objects_from_ground_truth(gt, min_size))
    meta = {"image_path": image_path, "mask_paths": gt_paths}
    return make_sample(image, masks, key, meta, size)


def source(
    data_dir: str,
    split: str = "train",
    seed: int = 0,
    size: int | None = DEFAULT_SIZE,
    min_size: int = MIN_SIZE,
    limit: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> SampleSource:
    """List one split of CCDB6843 without reading any image.

    Images without ``<key>_GT_01.tif`` are skipped with a warning.

    Parameters
    ----------
    data_dir : str
        Folder holding ``MP6843_img_full`` and ``MP6843_seg``.
    split : {"train", "val", "trainval", "test", "all"}
        ``test`` = keys starting with ``F04``; see the module docstring.
    seed : int
        Seed of the train/validation split.
    size : int or None
        Output height = width (448); ``None`` keeps the native size.
    min_size : int
        Smallest object kept, in pixels of the native resolution.
    limit : int, optional
        Keep only the first ``limit`` images of the split.
    val_fraction : float
        Share of ``trainval`` held out for validation (at least 3 images,
        :func:`datasets.val_split`).

    Returns
    -------
    datasets.SampleSource
        Items named by key; the files of an item are its image and ground-truth files.
    """
    images = scan(data_dir)
    mask_folder = require_folder(os.path.join(data_dir, MASK_FOLDER), "CCDB6843 ground-truth")
    keys = sorted(images)
    test = [k for k in keys if k.startswith(TEST_PREFIX)]
    trainval = [k for k in keys if not k.startswith(TEST_PREFIX)]
    chosen = []
    for key in apply_limit(select_split(trainval, test, split, seed, val_fraction), limit):
        gt_paths = _ground_truth_paths(key, mask_folder)
        if not gt_paths:
            logger.warning("CCDB6843 %s: no %s_GT_01.tif in %s; image skipped", key, key,
                           mask_folder)
            continue
        chosen.append((key, images[key], gt_paths))
    target = as_size(size)
    return SampleSource(
        names=[key for key, _, _ in chosen],
        files=[(image_path, *gt_paths) for _, image_path, gt_paths in chosen],
        read=lambda index: _load_key(*chosen[index], min_size, target),
        key=source_key("ccdb6843", size=target, min_size=min_size))


def load(data_dir: str, split: str = "train", seed: int = 0, **options) -> list[Sample]:
    """Decode every sample of ``source(data_dir, split, seed, **options)`` (see :func:`source`)."""
    return source(data_dir, split, seed, **options).load_all()


if __name__ == "__main__":
    from datasets.summary import main

    raise SystemExit(main("ccdb6843"))
