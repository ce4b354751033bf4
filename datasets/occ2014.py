"""OCC2014: ISBI 2014 Overlapping Cervical Cytology challenge (synthetic EDF images, one mask per cell).

Supported layouts of ``data_dir`` (searched in ``data_dir`` and ``data_dir/Dataset/Synthetic``),
the training source is the first one found:

1. the challenge's ``Dataset/Synthetic`` release: ``trainset.mat`` (images, variable
   ``trainset``) + ``trainset_GT.mat`` (``train_Cytoplasm``), and the test set ``testset.mat``
   (``testset``) + ``testset_GT.mat`` (``test_Cytoplasm``). These are what the authors used;
2. the ``Train45Test90`` release: ``isbi_train.mat`` (``ISBI_Train``) + ``isbi_train_GT.mat``,
   ``isbi_test90.mat`` (``ISBI_Test90``) + ``isbi_test90_GT.mat``;
3. individual images ``IndividualImages/<k>.tif`` (k = 1, 2, ...) + ``isbi_train_GT.mat``
   (or ``trainset_GT.mat``): image ``k`` pairs with entry ``k`` (1-based) of ``train_Cytoplasm``.

``.mat`` files may be MATLAB v5 (read with :func:`scipy.io.loadmat`) or v7.3/HDF5 (read with
h5py; arrays are transposed back to MATLAB orientation). Cell arrays of cytoplasm masks may
contain one 2-D mask per cell or one ``(H, W, cells)`` array. Variable names are looked up among
the known ones, then by the words ``cytoplasm`` (ground truth) or the only variable in the file.
Nuclei are ignored (the paper segments cells).

Splits:

* with a test set (layout 1 or 2), the paper's split (authors' ``train_bmvc``/``test_bmvc``):
  ``test`` = test-set images with odd 0-based index, ``trainval`` = all training images + the
  test-set images with even 0-based index;
* without a test set (the shared development copy, layout 3): ``test`` = every 4th training image
  (0-based position 0, 4, 8, ... in the order of k), ``trainval`` = the others. This is not the
  paper's test set; it only keeps evaluation images out of training.

``train``/``val`` are the seeded split of ``trainval`` (:func:`datasets.val_split`:
``val_fraction``, 10 %, but at least 3 images; the shared copy's 11 give 8 + 3).
Images (bilinear) and masks (nearest) are resized to ``size`` x ``size`` (paper: 320; ``None``
keeps 512x512). Sample names are ``train001``... and ``test001``... (1-based, as in MATLAB).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Callable

import h5py
import numpy as np
import scipy.io

from datasets import DEFAULT_VAL_FRACTION, Sample, SampleSource, source_key
from datasets.common import DatasetError, apply_limit, as_size, make_sample, select_split
from layernet.io import as_channels, read_image

logger = logging.getLogger(__name__)

DEFAULT_SIZE = 320
TRAIN_IMAGE_FILES = ("trainset.mat", "isbi_train.mat")
TEST_IMAGE_FILES = ("testset.mat", "isbi_test90.mat")
GT_FILE = {"trainset.mat": "trainset_GT.mat", "isbi_train.mat": "isbi_train_GT.mat",
           "testset.mat": "testset_GT.mat", "isbi_test90.mat": "isbi_test90_GT.mat"}
IMAGE_VARIABLES = ("trainset", "testset", "ISBI_Train", "ISBI_Test90", "ISBI_Test", "images")
MASK_VARIABLES = ("train_Cytoplasm", "test_Cytoplasm", "Cytoplasm")
INDIVIDUAL_FOLDER = "IndividualImages"
INDIVIDUAL_GT_FILES = ("isbi_train_GT.mat", "trainset_GT.mat")


@dataclass
class _Entry:
    """One image of the dataset, loaded lazily."""

    name: str
    read: Callable[[], tuple[np.ndarray, list[np.ndarray]]]
    meta: dict


def _variables_v5(path: str) -> dict:
    try:
        content = scipy.io.loadmat(path)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read MATLAB file ({exc})") from None
    return {k: v for k, v in content.items() if not k.startswith("__")}


def _choose_variable(path: str, names: list[str], known: tuple[str, ...], word: str | None) -> str:
    for candidate in known:
        if candidate in names:
            return candidate
    if word is not None:
        matching = [n for n in names if word in n.lower()]
        if len(matching) == 1:
            return matching[0]
    if len(names) == 1:
        return names[0]
    raise DatasetError(f"{path}: none of the variables {', '.join(sorted(names))} looks like "
                       f"{'the ' + word + ' masks' if word else 'the images'} "
                       f"(expected one of {', '.join(known)})")


def _split_numeric(array: np.ndarray, path: str, index: int) -> list[np.ndarray]:
    """One cell-array entry of masks -> list of 2-D masks."""
    array = np.asarray(array)
    if array.ndim == 2:
        return [array]
    if array.ndim == 3:
        return [array[..., k] for k in range(array.shape[-1])]
    raise DatasetError(f"{path}: entry {index + 1} has shape {array.shape}; expected 2-D masks")


def read_mat_cells(path: str, known: tuple[str, ...], word: str | None,
                   nested: bool) -> list:
    """Read a MATLAB cell array of images (``nested=False``) or of mask lists (``nested=True``).

    Parameters
    ----------
    path : str
        ``.mat`` file, MATLAB v5 or v7.3 (HDF5).
    known : tuple of str
        Variable names to try first.
    word : str or None
        Fallback: the only variable whose name contains this word.
    nested : bool
        Whether each entry is itself a cell array (or 3-D array) of 2-D masks.

    Returns
    -------
    list
        One 2-D array per entry (``nested=False``) or one list of 2-D arrays per entry.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found")
    if h5py.is_hdf5(path):
        return _read_cells_hdf5(path, known, word, nested)
    variables = _variables_v5(path)
    name = _choose_variable(path, list(variables), known, word)
    cells = np.asarray(variables[name])
    if cells.dtype != object:  # a plain numeric array (H, W, K) instead of a cell array
        if nested:
            raise DatasetError(f"{path}: variable {name} is not a cell array of masks")
        return _split_numeric(cells, path, 0)
    entries = []
    for index, entry in enumerate(cells.ravel(order="F")):
        if nested:
            entry = np.asarray(entry)
            if entry.dtype == object:
                masks = [np.asarray(m) for m in entry.ravel(order="F")]
                for m in masks:
                    if m.ndim != 2:
                        raise DatasetError(f"{path}: {name} entry {index + 1} holds a mask of "
                                           f"shape {m.shape}")
            else:
                masks = _split_numeric(entry, path, index)
            entries.append(masks)
        else:
            entries.append(np.asarray(entry))
    return entries


def _read_cells_hdf5(path: str, known: tuple[str, ...], word: str | None, nested: bool) -> list:
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read MATLAB v7.3 file ({exc})") from None
    with handle:
        names = [n for n in handle.keys() if not n.startswith("#")]
        name = _choose_variable(path, names, known, word)
        dataset = handle[name]

        def deref(obj):
            if h5py.check_dtype(ref=obj.dtype) is not None:
                return [deref(handle[r]) for r in obj[()].ravel(order="F")]
            return np.asarray(obj[()]).T  # HDF5 stores MATLAB arrays transposed

        if h5py.check_dtype(ref=dataset.dtype) is None:
            data = np.asarray(dataset[()]).T
            if nested:
                raise DatasetError(f"{path}: variable {name} is not a cell array of masks")
            return _split_numeric(data, path, 0)
        entries = []
        for index, ref in enumerate(dataset[()].ravel(order="F")):
            value = deref(handle[ref])
            if nested:
                if isinstance(value, list):
                    masks = []
                    for item in value:
                        masks.extend(item if isinstance(item, list) else [item])
                else:
                    masks = _split_numeric(value, path, index)
                entries.append([np.asarray(m) for m in masks])
            else:
                entries.append(value)
        return entries


def _find(data_dir: str, file_name: str) -> str | None:
    for folder in (data_dir, os.path.join(data_dir, "Dataset", "Synthetic")):
        path = os.path.join(folder, file_name)
        if os.path.isfile(path):
            return path
    return None


def _mat_entries(image_path: str, prefix: str) -> list[_Entry]:
    """Entries of an images .mat + its ground-truth .mat."""
    gt_path = _find(os.path.dirname(image_path), GT_FILE[os.path.basename(image_path)])
    if gt_path is None:
        raise DatasetError(f"{image_path}: ground truth "
                           f"{GT_FILE[os.path.basename(image_path)]} not found next to it")
    images = read_mat_cells(image_path, IMAGE_VARIABLES, None, nested=False)
    masks = read_mat_cells(gt_path, MASK_VARIABLES, "cytoplasm", nested=True)
    if len(images) != len(masks):
        raise DatasetError(f"{gt_path}: {len(masks)} ground-truth entries for {len(images)} "
                           f"images in {image_path}")
    return [
        _Entry(f"{prefix}{k + 1:03d}", (lambda i=image, m=cells: (i, m)),
               {"source": image_path, "ground_truth": gt_path, "index": k + 1})
        for k, (image, cells) in enumerate(zip(images, masks))
    ]


def _individual_entries(data_dir: str) -> list[_Entry]:
    folder = os.path.join(data_dir, INDIVIDUAL_FOLDER)
    gt_path = next((p for p in (_find(data_dir, n) for n in INDIVIDUAL_GT_FILES) if p), None)
    if gt_path is None:
        raise DatasetError(f"{data_dir}: {INDIVIDUAL_FOLDER}/ found but no "
                           f"{' or '.join(INDIVIDUAL_GT_FILES)}")
    masks = read_mat_cells(gt_path, MASK_VARIABLES, "cytoplasm", nested=True)
    numbered = {}
    for file_name in os.listdir(folder):
        match = re.fullmatch(r"(\d+)\.(tiff?|png)", file_name, re.IGNORECASE)
        if match:
            numbered[int(match[1])] = os.path.join(folder, file_name)
    entries = []
    for k in sorted(numbered):
        if not 1 <= k <= len(masks):
            raise DatasetError(f"{numbered[k]}: no entry {k} in {gt_path} "
                               f"({len(masks)} entries)")
        entries.append(_Entry(f"train{k:03d}",
                              (lambda p=numbered[k], m=masks[k - 1]: (read_image(p), m)),
                              {"source": numbered[k], "ground_truth": gt_path, "index": k}))
    missing = sorted(set(range(1, len(masks) + 1)) - set(numbered))
    if missing:
        logger.warning("OCC2014: %d ground-truth entries of %s have no image in %s; skipped",
                       len(missing), gt_path, folder)
    if not entries:
        raise DatasetError(f"{folder}: no images named <k>.tif")
    return entries


def _first_mat_entries(data_dir: str, file_names: tuple[str, ...], prefix: str
                       ) -> list[_Entry] | None:
    """Entries of the first of ``file_names`` found (None if none is present)."""
    for file_name in file_names:
        path = _find(data_dir, file_name)
        if path is not None:
            return _mat_entries(path, prefix)
    return None


def find_sources(data_dir: str) -> tuple[list[_Entry], list[_Entry] | None]:
    """Return the training entries and the test entries (None when no test set exists)."""
    if not os.path.isdir(data_dir):
        raise DatasetError(f"{data_dir}: OCC2014 folder not found")
    train = _first_mat_entries(data_dir, TRAIN_IMAGE_FILES, "train")
    if train is None:
        if os.path.isdir(os.path.join(data_dir, INDIVIDUAL_FOLDER)):
            train = _individual_entries(data_dir)
        else:
            raise DatasetError(f"{data_dir}: no OCC2014 training data ({', '.join(TRAIN_IMAGE_FILES)}"
                               f" or {INDIVIDUAL_FOLDER}/)")
    test = _first_mat_entries(data_dir, TEST_IMAGE_FILES, "test")
    return train, test


def _to_sample(entry: _Entry, size: tuple[int, int] | None) -> Sample:
    raw_image, raw_masks = entry.read()
    source = entry.meta["source"]
    image = as_channels(raw_image, expected_channels=1, name=f"{source} [{entry.name}]")
    masks = []
    for k, mask in enumerate(raw_masks):
        if mask.shape != image.shape[:2]:
            raise DatasetError(f"{entry.meta['ground_truth']}: mask {k + 1} of {entry.name} has "
                               f"shape {mask.shape}, image has {image.shape[:2]}")
        masks.append(mask != 0)
    return make_sample(image, masks, entry.name, entry.meta, size)


def source(
    data_dir: str,
    split: str = "train",
    seed: int = 0,
    size: int | None = DEFAULT_SIZE,
    limit: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> SampleSource:
    """List one split of OCC2014 (cytoplasm masks, overlapping).

    The individual-image layout is decoded one image at a time; the images of a ``.mat`` layout
    are read with their file (MATLAB files hold the whole set).

    Parameters
    ----------
    data_dir : str
        Folder with one of the layouts of the module docstring.
    split : {"train", "val", "trainval", "test", "all"}
        See the module docstring for the rules.
    seed : int
        Seed of the train/validation split.
    size : int or None
        Output height = width (paper: 320); ``None`` keeps the native 512x512.
    limit : int, optional
        Keep only the first ``limit`` images of the split.
    val_fraction : float
        Share of ``trainval`` held out for validation (at least 3 images,
        :func:`datasets.val_split`).

    Returns
    -------
    datasets.SampleSource
        Items named ``train001``, ``test001``, ...; the files of an item are its image source
        and ground-truth file. Each decoded sample has ``image`` float32 ``(size, size, 1)`` and
        ``stack`` int32 ``(L, size, size)``.
    """
    train, test = find_sources(data_dir)
    if test is not None:
        trainval = train + [e for k, e in enumerate(test) if k % 2 == 0]
        test_entries = [e for k, e in enumerate(test) if k % 2 == 1]
    else:
        trainval = [e for k, e in enumerate(train) if k % 4 != 0]
        test_entries = [e for k, e in enumerate(train) if k % 4 == 0]
    chosen = apply_limit(select_split(trainval, test_entries, split, seed, val_fraction), limit)
    target = as_size(size)
    return SampleSource(
        names=[entry.name for entry in chosen],
        files=[(entry.meta["source"], entry.meta["ground_truth"]) for entry in chosen],
        read=lambda index: _to_sample(chosen[index], target),
        key=source_key("occ2014", size=target))


def load(data_dir: str, split: str = "train", seed: int = 0, **options) -> list[Sample]:
    """Decode every sample of ``source(data_dir, split, seed, **options)`` (see :func:`source`)."""
    return source(data_dir, split, seed, **options).load_all()


if __name__ == "__main__":
    from datasets.summary import main

    raise SystemExit(main("occ2014"))
