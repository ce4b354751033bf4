"""Datasets: one module per dataset, each returning :class:`Sample` objects and official splits.

Every dataset module exposes ``load(data_dir, split, seed, **options) -> list[Sample]`` and
``source(data_dir, split, seed, **options) -> SampleSource``, the same samples listed without
decoding and decoded one at a time (streaming training of datasets larger than memory).
:func:`load_dataset` and :func:`load_source` dispatch by name.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

DATASETS = ("synthetic", "bbbc010", "occ2014", "ccdb6843", "folder")
SPLITS = ("train", "val", "test", "trainval", "all")


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
                **options) -> SampleSource:
    """List the samples of one split of a dataset by name, without decoding them.

    Parameters are those of :func:`load_dataset`; ``load_source(...).load_all()`` equals
    ``load_dataset(...)``.

    Returns
    -------
    SampleSource
    """
    return _dataset_module(name, split).source(data_dir=data_dir, split=split, seed=seed,
                                               **options)


def load_dataset(name: str, data_dir: str | None = None, split: str = "train", seed: int = 0,
                 **options) -> list[Sample]:
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
    **options
        Dataset-specific keyword options.

    Returns
    -------
    list of Sample
    """
    return _dataset_module(name, split).load(data_dir=data_dir, split=split, seed=seed, **options)


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random train/validation split of ``count`` items.

    Returns
    -------
    train, val : numpy.ndarray
        Sorted index arrays; ``val`` has ``max(1, round(count * val_fraction))`` items when
        ``count >= 2`` (none otherwise).
    """
    order = np.random.default_rng(seed).permutation(count)
    n_val = 0 if count < 2 else max(1, int(round(count * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])
