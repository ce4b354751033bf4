"""What a dataset gives the library: samples, lazily decoded sources of them, and the splits.

:class:`Sample` is one image with its label stack; :class:`SampleSource` lists the samples of one
split without decoding them and decodes one at a time (streamed training of data larger than
memory). :func:`val_split` and :func:`select_split` cut a training pool into ``train`` and
``val`` the same way for every dataset (seeded, at least :data:`MIN_VAL_IMAGES` validation
images). :class:`SourceLoader` is the signature of a function that returns the source of a
dataset by name (``datasets.load_source``): the library's training takes one as an argument, so
the library never imports the dataset readers (the package ``datasets`` depends on this module,
not the other way round).

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_VAL_FRACTION", "MIN_VAL_IMAGES", "SPLITS", "Sample", "SampleSource",
           "SourceLoader", "select_split", "source_key", "split_indices", "val_split"]

SPLITS = ("train", "val", "test", "trainval", "all")
#: Default share of the training pool held out for validation (``Config.val_fraction``).
DEFAULT_VAL_FRACTION = 0.1
#: Fewest validation images of a training pool of ``n >= 2`` images: ``min(MIN_VAL_IMAGES, n - 1)``.
#: best.h5 is the epoch with the best validation meanAP; scored on one image (10 % of OCC2014's 11
#: training images), that choice follows the quirks of one image. Three images still leave most
#: of a small pool for training (OCC2014: 8 + 3) and do not change larger splits (BBBC010's 74
#: wells: 67 + 7, synthetic 48: 43 + 5, as with 10 % alone).
MIN_VAL_IMAGES = 3

Item = TypeVar("Item")


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
        The sample names, in the order of the split (as the dataset's loader returns them).
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


class SourceLoader(Protocol):
    """A function that lists one split of a dataset by name (``datasets.load_source``)."""

    def __call__(self, name: str, data_dir: str | None = None, split: str = "train",
                 seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION,
                 **options: Any) -> SampleSource:
        """Return the :class:`SampleSource` of ``split`` of dataset ``name``.

        Parameters
        ----------
        name : str
            The dataset's name (``Config.data``).
        data_dir : str or None, optional
            Folder of the dataset.
        split : str, optional
            One of :data:`SPLITS`.
        seed : int, optional
            Seed of the train/validation split (and of generated data).
        val_fraction : float, optional
            Share of the training pool held out for validation (:func:`val_split`).
        **options
            Dataset-specific options (``Config.data_options``).

        Returns
        -------
        SampleSource
        """
        ...


def source_key(dataset: str, **options: Any) -> str:
    """The :attr:`SampleSource.key` of ``dataset`` decoded with ``options`` (canonical JSON)."""
    return json.dumps({"dataset": dataset, **options}, sort_keys=True, default=repr)


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


def select_split(
    trainval: Sequence[Item],
    test: Sequence[Item],
    split: str,
    seed: int,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> list[Item]:
    """Return the items of one split.

    Parameters
    ----------
    trainval, test : sequence
        The items of the training pool (in a fixed, sorted order) and of the test set.
    split : str
        ``"train"`` / ``"val"`` (seeded :func:`val_split` of ``trainval``; the sizes of the
        split are logged for ``"val"``), ``"trainval"``, ``"test"`` or ``"all"`` (``trainval``
        then ``test``).
    seed : int
        Seed of the train/validation split.
    val_fraction : float, optional
        Share of ``trainval`` used for validation (at least
        ``min(MIN_VAL_IMAGES, len(trainval) - 1)`` items).

    Returns
    -------
    list
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "test":
        return list(test)
    if split == "trainval":
        return list(trainval)
    if split == "all":
        return list(trainval) + list(test)
    train_index, val_index = val_split(len(trainval), val_fraction, seed, log=split == "val")
    chosen = train_index if split == "train" else val_index
    return [trainval[i] for i in chosen]
