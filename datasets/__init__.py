"""Datasets: one module per dataset, each returning :class:`Sample` objects and official splits.

Every dataset module exposes ``load(data_dir, split, seed, **options) -> list[Sample]`` and
``source(data_dir, split, seed, **options) -> SampleSource``, the same samples listed without
decoding and decoded one at a time (streaming training of datasets larger than memory).
:func:`load_dataset` and :func:`load_source` dispatch by name. Every module takes the option
``val_fraction`` and splits its training pool into ``train`` and ``val`` with :func:`val_split`.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

DATASETS = ("synthetic", "bbbc010", "occ2014", "ccdb6843", "folder")
SPLITS = ("train", "val", "test", "trainval", "all")
#: Default share of the training pool held out for validation (``Config.val_fraction``).
DEFAULT_VAL_FRACTION = 0.1
#: Fewest validation images of a training pool of ``n >= 2`` images: ``min(MIN_VAL_IMAGES, n - 1)``.
#: best.h5 is the epoch with the best validation meanAP; scored on one image (10 % of OCC2014's 11
#: training images), that choice follows the quirks of one image. Three images still leave most
#: of a small pool for training (OCC2014: 8 + 3) and do not change larger splits (BBBC010's 74
#: wells: 67 + 7, synthetic 48: 43 + 5, as with 10 % alone).
MIN_VAL_IMAGES = 3


@dataclass
class Sample:
    """One image with its instances.

    Attributes
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` float32 image in its original intensity units (not normalised).
    stack : numpy.ndarray
        ``(L, H, W)`` int32 label stack, ids ``1..K``; 0 = background.
    name : str
        A short identifier (file stem or well name) used in logs and outputs.
    meta : dict
        Free-form extra information (source paths, original size, ...).
    """

    image: np.ndarray
    stack: np.ndarray
    name: str
    meta: dict = field(default_factory=dict)


@dataclass
class SampleSource:
    """The items of one split of a dataset: listed without decoding, decoded one at a time.

    Attributes
    ----------
    names : list of str
        The sample names, in the order of the split (as :func:`load_dataset` returns them).
    files : list of tuple of str
        Per item, the files or folders it is decoded from; their sizes and modification times
        identify the decoded sample in caches (empty for generated data).
    read : callable
        ``read(index) -> Sample`` decodes item ``index``.
    key : str
        Everything else that decides the decoded samples: the dataset and its decoding options
        (and the seed of generated data).
    """

    names: list[str]
    files: list[tuple[str, ...]]
    read: Callable[[int], Sample]
    key: str

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> Sample:
        """Decode item ``index`` (``0 <= index < len(self)``)."""
        if not 0 <= index < len(self.names):
            raise IndexError(f"sample index {index} out of range for {len(self.names)} items")
        return self.read(index)

    def load_all(self) -> list[Sample]:
        """Decode every item, in order."""
        return [self.read(index) for index in range(len(self.names))]


def source_key(dataset: str, **options) -> str:
    """The :attr:`SampleSource.key` of ``dataset`` decoded with ``options`` (canonical JSON)."""
    return json.dumps({"dataset": dataset, **options}, sort_keys=True, default=repr)


def _dataset_module(name: str, split: str):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return importlib.import_module(f"datasets.{name}")


def load_source(name: str, data_dir: str | None = None, split: str = "train", seed: int = 0,
                val_fraction: float = DEFAULT_VAL_FRACTION, **options) -> SampleSource:
    """List the samples of one split of a dataset by name, without decoding them.

    Parameters are those of :func:`load_dataset`; ``load_source(...).load_all()`` equals
    ``load_dataset(...)``.

    Returns
    -------
    SampleSource
    """
    return _dataset_module(name, split).source(data_dir=data_dir, split=split, seed=seed,
                                               val_fraction=val_fraction, **options)


def load_dataset(name: str, data_dir: str | None = None, split: str = "train", seed: int = 0,
                 val_fraction: float = DEFAULT_VAL_FRACTION, **options) -> list[Sample]:
    """Load the samples of one split of a dataset by name.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    data_dir : str or None
        Folder of the dataset (ignored by ``synthetic``).
    split : str
        One of :data:`SPLITS`.
    seed : int
        Seed of the train/validation split (and of the synthetic generator).
    val_fraction : float
        Share of the training pool held out for validation (see :func:`val_split`).
    **options
        Dataset-specific keyword options.

    Returns
    -------
    list of Sample
    """
    return _dataset_module(name, split).load(data_dir=data_dir, split=split, seed=seed,
                                             val_fraction=val_fraction, **options)


def split_indices(count: int, fraction: float, seed: int, minimum: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``count`` items into kept and held-out items.

    Parameters
    ----------
    count : int
        Number of items.
    fraction : float
        Share of the items held out.
    seed : int
        Seed of the random permutation; the held-out items are its first ones, so a larger
        share holds out more items of the same order.
    minimum : int, optional
        Fewest items held out when ``count >= 2``, but no more than ``count - 1``, so that one
        item is kept.

    Returns
    -------
    kept, held_out : numpy.ndarray
        Sorted index arrays; ``held_out`` has ``max(min(minimum, count - 1),
        round(count * fraction))`` items when ``count >= 2`` (none otherwise).
    """
    order = np.random.default_rng(seed).permutation(count)
    held = 0 if count < 2 else max(min(minimum, count - 1), int(round(count * fraction)))
    return np.sort(order[held:]), np.sort(order[:held])


def val_split(count: int, val_fraction: float, seed: int, log: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of a training pool of ``count`` items.

    The validation part holds ``round(count * val_fraction)`` items, but at least
    ``min(MIN_VAL_IMAGES, count - 1)`` (:func:`split_indices`).

    Parameters
    ----------
    count : int
        Items of the training pool (in a fixed order).
    val_fraction : float
        Share held out for validation, in ``[0, 1)``.
    seed : int
        Split seed.
    log : bool, optional
        Log the sizes of the two parts (INFO).

    Returns
    -------
    train, val : numpy.ndarray
        Sorted index arrays.

    Raises
    ------
    ValueError
        If ``val_fraction`` is outside ``[0, 1)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train, val = split_indices(count, val_fraction, seed, MIN_VAL_IMAGES)
    if log:
        wanted = int(round(count * val_fraction))
        raised = (f" gives {wanted}, raised to the minimum of {min(MIN_VAL_IMAGES, count - 1)}"
                  if len(val) > wanted else "")
        logger.info("train/validation split (split seed %d): %d of %d images for validation "
                    "(val_fraction %g%s), %d for training", seed, len(val), count, val_fraction,
                    raised, len(train))
    return train, val
