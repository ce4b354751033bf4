"""Any dataset given as a folder of images and masks (for users' own data).

Layout::

    <data_dir>/images/<stem>.<tif|tiff|png|jpg|jpeg|bmp>
    <data_dir>/masks/...            the objects of image <stem>, in one of these forms:
        masks/<stem>.<ext>          (a) a 2-D label image (0 = background, one id per object), or
                                    (c) a multi-page TIFF (K, H, W): a stack of binary masks (every
                                        page holds one non-zero value) or a label stack (L, H, W)
                                        whose pages hold several ids (overlapping objects on
                                        different pages)
        masks/<stem>/<any>.<ext>    (b) one binary mask file per object (0/1 or 0/255)
    <data_dir>/test/images, <data_dir>/test/masks   optional test split, same rules

Objects may overlap (forms b and c). Images and masks are matched by file stem. Problems are
reported naming the file: a mask whose size differs from its image, a "binary" mask that is not
binary and duplicate stems are errors; an empty mask is dropped with a warning; an image without
masks (or masks without image) is skipped with a warning; no pair at all is an error.

Splits: ``test`` = ``<data_dir>/test`` if present; otherwise a fixed random ``test_fraction`` of
the images (sorted by stem, drawn with seed 0 whatever ``seed`` is, so the test set does not move
between training runs). ``train``/``val`` = seeded split of the rest (``val_fraction``, at least 3
images: :func:`datasets.val_split`).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from datasets import DEFAULT_VAL_FRACTION, Sample, SampleSource, source_key, split_indices
from datasets.common import (DatasetError, apply_limit, as_size, make_sample, require_folder,
                             select_split)
from layernet.files import folder_images, visible_entries
from layernet.instances import LabelStackError, masks_from_stack, validate_stack
from layernet.io import as_channels, read_image, read_label_image, read_mask

logger = logging.getLogger(__name__)

TEST_SEED = 0


def _image_files(folder: str) -> dict[str, str]:
    """stem -> path of the image files of ``folder``; duplicate stems are an error."""
    files: dict[str, str] = {}
    for path in folder_images(folder):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in files:
            raise DatasetError(f"{path}: duplicate stem {stem!r} (also {files[stem]})")
        files[stem] = path
    return files


def find_pairs(root: str) -> list[tuple[str, str, str]]:
    """Return ``(stem, image_path, mask_path_or_folder)`` for every image of ``root/images``.

    Images without masks and masks without images are skipped with a warning.
    """
    image_folder = require_folder(os.path.join(root, "images"), "images")
    mask_folder = require_folder(os.path.join(root, "masks"), "masks")
    images = _image_files(image_folder)
    mask_files = _image_files(mask_folder)
    mask_dirs = {os.path.basename(path): path for path in visible_entries(mask_folder)
                 if os.path.isdir(path)}
    clashes = sorted(set(mask_files) & set(mask_dirs))
    if clashes:
        stem = clashes[0]
        raise DatasetError(f"{mask_dirs[stem]}: duplicate stem {stem!r} (also "
                           f"{mask_files[stem]}); keep either the file or the folder")
    pairs = []
    for stem, image_path in images.items():
        masks = mask_files.get(stem) or mask_dirs.get(stem)
        if masks is None:
            logger.warning("%s: no masks/%s file or masks/%s/ folder; image skipped",
                           image_path, stem, stem)
            continue
        pairs.append((stem, image_path, masks))
    for stem in sorted((set(mask_files) | set(mask_dirs)) - set(images)):
        logger.warning("%s: no image with stem %r in %s; masks ignored",
                       mask_files.get(stem) or mask_dirs[stem], stem, image_folder)
    return pairs


def _masks_from_folder(folder: str, shape: tuple[int, int]) -> list[np.ndarray]:
    masks = []
    for path in folder_images(folder):
        mask = read_mask(path)
        if mask.shape != shape:
            raise DatasetError(f"{path}: mask size {mask.shape} differs from image size {shape}")
        if not mask.any():
            logger.warning("%s: empty mask; dropped", path)
            continue
        masks.append(mask)
    return masks


def _masks_from_stack(path: str, stack: np.ndarray) -> list[np.ndarray]:
    if not (np.issubdtype(stack.dtype, np.integer) or stack.dtype == np.bool_):
        if np.any(np.mod(stack, 1) != 0):
            raise DatasetError(f"{path}: mask stack holds non-integer values")
    if stack.size and stack.min() < 0:
        raise DatasetError(f"{path}: mask stack holds negative values")
    stack = stack.astype(np.int64)
    per_page = [np.unique(page[page != 0]) for page in stack]
    if all(values.size <= 1 for values in per_page):  # a stack of binary masks
        masks = []
        for index, page in enumerate(stack):
            if not page.any():
                logger.warning("%s: page %d is an empty mask; dropped", path, index)
                continue
            masks.append(page != 0)
        return masks
    try:
        validate_stack(stack, name=path)
    except LabelStackError as exc:
        raise DatasetError(str(exc)) from None
    return list(masks_from_stack(stack)[0])


def read_objects(path: str, shape: tuple[int, int]) -> list[np.ndarray]:
    """Read the per-object boolean masks of one image from a mask file or a folder of masks.

    Parameters
    ----------
    path : str
        ``masks/<stem>.<ext>`` (label image or mask/label stack) or ``masks/<stem>/``.
    shape : tuple of int
        ``(H, W)`` of the image; masks must have it.

    Returns
    -------
    list of numpy.ndarray
        Non-empty boolean ``(H, W)`` masks (may overlap).
    """
    if os.path.isdir(path):
        return _masks_from_folder(path, shape)
    data = read_image(path)
    if data.ndim == 3 and data.shape[1:] == shape and data.shape[:2] != shape:
        return _masks_from_stack(path, data)
    if data.shape[:2] != shape:
        raise DatasetError(f"{path}: mask size {data.shape} differs from image size {shape}")
    labels = read_label_image(path)
    return [labels == value for value in np.unique(labels) if value != 0]


def _load_pair(stem: str, image_path: str, mask_path: str, channel: int | None,
               size: tuple[int, int] | None) -> Sample:
    image = as_channels(read_image(image_path), channel=channel, name=image_path)
    masks = read_objects(mask_path, image.shape[:2])
    if not masks:
        logger.warning("%s: no object in the masks of %s", mask_path, image_path)
    return make_sample(image, masks, stem, {"image_path": image_path, "mask_path": mask_path},
                       size)


def source(
    data_dir: str,
    split: str = "train",
    seed: int = 0,
    size: int | None = None,
    channel: int | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    limit: int | None = None,
) -> SampleSource:
    """List one split of a folder dataset without reading any image.

    Parameters
    ----------
    data_dir : str
        Folder with ``images/`` and ``masks/`` (and optionally ``test/images``, ``test/masks``).
    split : {"train", "val", "trainval", "test", "all"}
        See the module docstring.
    seed : int
        Seed of the train/validation split.
    size : int or None
        Resize to ``size`` x ``size`` (bilinear image, nearest masks); ``None`` keeps sizes.
    channel : int or None
        Keep only this image channel; ``None`` keeps all.
    test_fraction, val_fraction : float
        Shares of the test split (without ``test/``; at least 1 image) and of the validation
        split (of the rest; at least 3 images, :func:`datasets.val_split`).
    limit : int, optional
        Keep only the first ``limit`` images of the split.

    Returns
    -------
    datasets.SampleSource
        Items named by stem; the files of an item are its image and its mask file or folder.
    """
    require_folder(data_dir, "dataset")
    pairs = find_pairs(data_dir)
    test_root = os.path.join(data_dir, "test")
    if os.path.isdir(test_root):
        test = find_pairs(test_root)
        trainval = pairs
    else:
        rest, held_out = split_indices(len(pairs), test_fraction, TEST_SEED)
        test = [pairs[i] for i in held_out]
        trainval = [pairs[i] for i in rest]
    if not trainval and not test:
        raise DatasetError(f"{data_dir}: no image with masks (expected images/<stem>.<ext> and "
                           "masks/<stem>.<ext> or masks/<stem>/)")
    chosen = apply_limit(select_split(trainval, test, split, seed, val_fraction), limit)
    target = as_size(size)
    return SampleSource(
        names=[stem for stem, _, _ in chosen],
        files=[(image_path, mask_path) for _, image_path, mask_path in chosen],
        read=lambda index: _load_pair(*chosen[index], channel=channel, size=target),
        key=source_key("folder", size=target, channel=channel))


def load(data_dir: str, split: str = "train", seed: int = 0, **options) -> list[Sample]:
    """Decode every sample of ``source(data_dir, split, seed, **options)`` (see :func:`source`);
    raise :class:`DatasetError` if their channel counts differ."""
    samples = source(data_dir, split, seed, **options).load_all()
    if samples:
        channels = samples[0].image.shape[-1]
        for sample in samples[1:]:
            if sample.image.shape[-1] != channels:
                raise DatasetError(f"{sample.meta['image_path']}: {sample.image.shape[-1]} "
                                   f"channel(s), but {samples[0].meta['image_path']} has "
                                   f"{channels}; pass channel= to pick one")
    return samples


if __name__ == "__main__":
    from datasets.summary import main

    raise SystemExit(main("folder"))
