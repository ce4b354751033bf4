"""Datasets: one module per dataset, each returning :class:`Sample` objects and official splits.

Every dataset module exposes ``load(data_dir, split, seed, **options) -> list[Sample]`` and
``source(data_dir, split, seed, **options) -> SampleSource``, the same samples listed without
decoding and decoded one at a time (streaming training of datasets larger than memory).
:func:`load_dataset` and :func:`load_source` dispatch by name. Every module takes the option
``val_fraction`` and splits its training pool into ``train`` and ``val`` with :func:`val_split`.

The sample types and split helpers live in the library (:mod:`layernet.samples`: this package
depends on ``layernet``, never the reverse) and are re-exported here (``from datasets import
Sample`` keeps working).
"""

from __future__ import annotations

import importlib

from layernet.samples import (DEFAULT_VAL_FRACTION, MIN_VAL_IMAGES, SPLITS, Sample, SampleSource,
                              source_key, split_indices, val_split)

__all__ = ["DATASETS", "DEFAULT_VAL_FRACTION", "MIN_VAL_IMAGES", "SPLITS", "Sample",
           "SampleSource", "load_dataset", "load_source", "source_key", "split_indices",
           "val_split"]

DATASETS = ("synthetic", "bbbc010", "occ2014", "ccdb6843", "folder")


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
