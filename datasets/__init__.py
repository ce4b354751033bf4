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
import inspect
from typing import Any, Mapping

from layernet.samples import (DEFAULT_VAL_FRACTION, MIN_VAL_IMAGES, SPLITS, Sample, SampleSource,
                              source_key, split_indices, val_split)

__all__ = ["DATASETS", "DEFAULT_VAL_FRACTION", "MIN_VAL_IMAGES", "SPLITS", "Sample",
           "SampleSource", "check_options", "dataset_options", "load_dataset", "load_source",
           "source_key", "split_indices", "val_split"]

DATASETS = ("synthetic", "bbbc010", "occ2014", "ccdb6843", "folder")


_COMMON_PARAMETERS = ("data_dir", "split", "seed", "val_fraction")
"""Parameters of every dataset's ``source``, given by the dispatchers, not dataset options."""


GENERATED = ("synthetic",)
"""Datasets made by a generator, without a data folder."""


def _dataset_module(name: str, split: str = "train"):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return importlib.import_module(f"datasets.{name}")


def _checked_module(name: str, split: str, data_dir: str | None, options: Mapping[str, Any]):
    """The module of dataset ``name`` once the split, the folder and the options are checked."""
    module = _dataset_module(name, split)
    if data_dir is None and name not in GENERATED:
        raise ValueError(f"dataset {name!r} reads files: give its folder (--data-dir)")
    check_options(name, options)
    return module


def dataset_options(name: str) -> tuple[str, ...]:
    """The options (``--data-option KEY=VALUE``) that dataset ``name`` takes.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.

    Returns
    -------
    tuple of str
        The keyword parameters of the dataset's ``source`` besides the common ones, and for a
        dataset with free options (``synthetic``) the names it lists in ``OPTION_NAMES``.
    """
    module = _dataset_module(name)
    parameters = inspect.signature(module.source).parameters.values()
    named = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD
             or p.kind is p.KEYWORD_ONLY]
    return tuple(name for name in named if name not in _COMMON_PARAMETERS) + tuple(
        getattr(module, "OPTION_NAMES", ()))


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming every option that dataset ``name`` does not take.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    options : mapping
        Dataset options (``Config.data_options``).

    Raises
    ------
    ValueError
        For an unknown dataset, or options it does not take (one line, with the known ones).
    """
    known = dataset_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown option(s) {', '.join(unknown)}; its "
                         f"options are {', '.join(known)}")


def load_source(name: str, data_dir: str | None = None, split: str = "train", seed: int = 0,
                val_fraction: float = DEFAULT_VAL_FRACTION, **options) -> SampleSource:
    """List the samples of one split of a dataset by name, without decoding them.

    Parameters are those of :func:`load_dataset`; ``load_source(...).load_all()`` equals
    ``load_dataset(...)``.

    Returns
    -------
    SampleSource
    """
    module = _checked_module(name, split, data_dir, options)
    return module.source(data_dir=data_dir, split=split, seed=seed, val_fraction=val_fraction,
                         **options)


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
        Dataset-specific keyword options (:func:`dataset_options`); another is an error.

    Returns
    -------
    list of Sample

    Raises
    ------
    ValueError
        For an unknown dataset, split or option, or a dataset of files without ``data_dir``.
    """
    module = _checked_module(name, split, data_dir, options)
    return module.load(data_dir=data_dir, split=split, seed=seed, val_fraction=val_fraction,
                       **options)
