"""Datasets: one module per dataset, each returning :class:`Sample` objects and official splits.

Every dataset module exposes ``load(data_dir, split, seed, **options) -> list[Sample]``.
:func:`load_dataset` dispatches by name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

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
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    module = importlib.import_module(f"datasets.{name}")
    return module.load(data_dir=data_dir, split=split, seed=seed, **options)


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
