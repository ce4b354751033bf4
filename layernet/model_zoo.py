"""Pretrained models by name: publish a training run as a model folder, list the models.

    python -m layernet.model_zoo publish runs/bbbc-l worms
    python -m layernet.model_zoo publish runs/occ-l cells --card-from notes/cells.md
    python -m layernet.model_zoo list

A model folder ``<models>/<name>/`` is what ``predict.py --model NAME``, ``evaluate.py --model
NAME``, ``train.py --init NAME``, the napari widget and ``python -m layernet.export_model NAME``
use (:func:`layernet.runfolder.locate_model` says where names are looked up: the folders of
``$LAYERNET_MODELS``, then ``models/`` shipped with layernet). It holds:

    config.json      the run's configuration (architecture, normalisation, Algorithm 1)
    best.h5          the weights of the run's best.h5 (or the model file given), nothing else:
                     no optimizer state, no last.h5, logs or caches
    thresholds.json  the post-processing thresholds, tuned on the validation split if the
                     run tuned them
    MODEL_CARD.md    what the model is, how it was trained (the recorded train.py command),
                     on which data (with its authors' citation), its validation scores

``publish`` fills the card with what the run folder knows (:mod:`layernet.model_card` writes
it): the commands of ``command.txt`` (and those of the ``--init`` run before them, where its
folder is still there), the configuration, the validation scores of ``thresholds.json`` and
``history.csv``, and the data's citation for the datasets it knows (BBBC010, OCC2014, the
synthetic data). What only a person can write (intended use, limitations, the citation of other
data) is left as a line starting with ``FILL IN``; ``--card-from FILE`` fills those sections from a Markdown file (its ``## ``
sections of the same titles; its other sections are appended), for example the card of the
previous version of the model. The card must have no ``FILL IN`` left before the model ships
(``tests/test_shipped_models.py`` checks it).

The folder is written next to its final place and renamed
(:func:`layernet.files.atomic_output`, with the permissions of every file layernet writes), so a
name is never half-published; ``--force`` replaces an existing model of that name. A model whose files exceed ``--max-mb``
(default 10 MB: the cpu recipe's UNet-M/16 is 7.4 MB) is refused.

The card's names (:func:`~layernet.model_card.model_card`, ``merge_card``,
``unfilled_sections``, ``DATA_CITATIONS``, ``FILL_IN``, ``DataCitation``) are re-exported here.
Nothing in this module imports TensorFlow (the weights are copied with h5py).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

import h5py
import numpy as np

from layernet import runfolder
from layernet.cli import run_main, setup_logging
from layernet.config import ConfigError
from layernet.files import atomic_output, write_atomic, write_text_atomic
from layernet.model_card import (DATA_CITATIONS, FILL_IN, DataCitation, merge_card, model_card,
                                 unfilled_sections)

logger = logging.getLogger(__name__)

__all__ = [
    "DATA_CITATIONS",
    "DEFAULT_MAX_MB",
    "FILL_IN",
    "DataCitation",
    "ModelZooError",
    "copy_weights",
    "describe_models",
    "merge_card",
    "model_card",
    "publish",
    "publishing_folder",
    "unfilled_sections",
]

DEFAULT_MAX_MB = 10.0
"""Largest model folder ``publish`` writes, in MB (10^6 bytes)."""
_PUBLISHED_FILES = (runfolder.CONFIG_FILE, runfolder.THRESHOLDS_FILE)
_DROPPED_GROUPS = ("optimizer_weights",)
_DROPPED_ATTRIBUTES = ("training_config",)


class ModelZooError(ValueError):
    """A run that cannot be published, or a model folder that cannot be written."""


def publishing_folder(models_dir: str | None = None) -> str:
    """Where ``publish`` writes model folders.

    Parameters
    ----------
    models_dir : str or None, optional
        An explicit folder (created if missing).

    Returns
    -------
    str
        ``models_dir``, else the first folder of ``$LAYERNET_MODELS``, else ``models/`` of the
        repository that this layernet runs from.

    Raises
    ------
    ModelZooError
        If none is given and layernet does not run from a checkout (an installed wheel's
        models are not a place to write).
    """
    if models_dir:
        return models_dir
    folders = [folder for folder in os.environ.get(runfolder.MODELS_ENV, "").split(os.pathsep)
               if folder]
    if folders:
        return folders[0]
    shipped = runfolder.shipped_models_folder()
    if shipped is None or os.path.basename(shipped) == runfolder.INSTALLED_MODELS:
        raise ModelZooError(f"no models folder to publish into: give --models-dir DIR or set "
                            f"{runfolder.MODELS_ENV}")
    return shipped


def copy_weights(source: str, destination: str) -> int:
    """Copy the network's weights of a Keras HDF5 model file, and nothing else.

    Parameters
    ----------
    source : str
        A legacy Keras ``.h5`` model or weights file (a run's ``best.h5``).
    destination : str
        The new file (written atomically, :func:`layernet.files.write_atomic`): the same layers
        and weights (byte for byte), the model's architecture attributes, without optimizer
        state or training configuration.

    Returns
    -------
    int
        The number of weights (parameters) copied.

    Raises
    ------
    ModelZooError
        If ``source`` is not such a file (one line naming it); ``destination`` is not written.
    """
    count = 0

    def write(temporary: str) -> None:
        nonlocal count
        try:
            with h5py.File(source, "r") as original, h5py.File(temporary, "w") as copy:
                weights = original["model_weights"] if "model_weights" in original else original
                if weights.attrs.get("layer_names") is None:
                    raise ModelZooError(f"{source}: not a Keras HDF5 model file (no "
                                        "layer_names)")
                for key, value in original.attrs.items():
                    if key not in _DROPPED_ATTRIBUTES:
                        copy.attrs[key] = value
                for name in original:
                    if name not in _DROPPED_GROUPS:
                        original.copy(original[name], copy, name=name)
                count = sum(int(dataset.size) for dataset in _datasets(weights))
        except OSError as error:
            raise ModelZooError(f"{source}: cannot read as HDF5 ({error})") from None
        if not _same_weights(source, temporary):
            raise ModelZooError(f"{destination}: the copied weights differ from {source}")

    write_atomic(destination, write)
    return count


def _datasets(group: h5py.Group) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    group.visititems(lambda _, item: found.append(item) if isinstance(item, h5py.Dataset)
                     else None)
    return found


def _same_weights(first: str, second: str) -> bool:
    """Whether the ``model_weights`` datasets of two files are equal, name by name."""
    with h5py.File(first, "r") as a, h5py.File(second, "r") as b:
        group_a = a["model_weights"] if "model_weights" in a else a
        group_b = b["model_weights"] if "model_weights" in b else b
        names_a = {item.name for item in _datasets(group_a)}
        names_b = {item.name for item in _datasets(group_b)}
        return names_a == names_b and all(
            np.array_equal(group_a.file[name][()], group_b.file[name][()]) for name in names_a)


def publish(run: str, name: str, models_dir: str | None = None, card_from: str | None = None,
            force: bool = False, max_mb: float = DEFAULT_MAX_MB) -> str:
    """Write the model folder ``<models_dir>/<name>/`` from a training run.

    Parameters
    ----------
    run : str
        A run folder (its ``best.h5``, else ``last.h5``) or a model file in a run folder.
    name : str
        The model's name (letters, digits, ``_ . -``), as it will be given to ``--model``.
    models_dir : str or None, optional
        Where to write (default :func:`publishing_folder`).
    card_from : str or None, optional
        A Markdown file whose sections fill the card's :data:`FILL_IN` sections
        (:func:`layernet.model_card.merge_card`).
    force : bool, optional
        Replace an existing model of that name.
    max_mb : float, optional
        Refuse a model folder larger than this (MB).

    Returns
    -------
    str
        The model folder written.

    Raises
    ------
    ModelZooError
        For a bad name, run or card file, an existing model without ``force``, or a model
        larger than ``max_mb`` (nothing is written then).
    """
    if not runfolder.is_model_name(name):
        raise ModelZooError(f"{name!r}: a model name is letters, digits, '_', '.' and '-', "
                            "starting with a letter or digit, and not a file name like best.h5")
    try:
        model_path = runfolder.resolve_model_path(run)
        config = runfolder.config_for_model(model_path)
    except (runfolder.RunFolderError, ConfigError) as error:
        raise ModelZooError(str(error)) from None
    run_dir = os.path.dirname(os.path.abspath(model_path))
    if runfolder.is_published_model(run_dir):
        raise ModelZooError(f"{run}: is a published model folder already; publish its run")
    filled = None
    if card_from is not None:
        try:
            with open(card_from, encoding="utf-8") as handle:
                filled = handle.read()
        except (OSError, UnicodeDecodeError) as error:
            raise ModelZooError(f"{card_from}: cannot read the card text ({error})") from None
    models_dir = publishing_folder(models_dir)
    destination = os.path.join(models_dir, name)
    if os.path.exists(destination) and not force:
        raise ModelZooError(f"{destination}: a model of that name exists (--force replaces it)")
    os.makedirs(models_dir, exist_ok=True)
    # the whole folder is staged beside its place and renamed (replacing an old one) at the end
    with atomic_output(destination, folder=True) as staging:
        parameters = copy_weights(model_path, os.path.join(staging, runfolder.BEST_FILE))
        for file in _PUBLISHED_FILES:
            if os.path.exists(os.path.join(run_dir, file)):
                shutil.copyfile(os.path.join(run_dir, file), os.path.join(staging, file))
        weights_bytes = os.path.getsize(os.path.join(staging, runfolder.BEST_FILE))
        card = model_card(run_dir, name, config, parameters, weights_bytes,
                          os.path.basename(model_path))
        if filled is not None:
            card = merge_card(card, filled)
        write_text_atomic(os.path.join(staging, runfolder.CARD_FILE), card)
        total = sum(os.path.getsize(os.path.join(staging, file)) for file in os.listdir(staging))
        if total > max_mb * 1e6:
            raise ModelZooError(
                f"{run}: the model folder would take {total / 1e6:.1f} MB, more than "
                f"{max_mb:g} MB ({parameters:,} weights, UNet-{config.size}/{config.filters}); "
                "train a smaller network (--recipe cpu: UNet-M/16, 7.4 MB) or raise --max-mb")
    logger.info("published %s as %s (%.1f MB, %s weights)", model_path, destination,
                total / 1e6, f"{parameters:,}")
    missing = unfilled_sections(card)
    if missing:
        logger.warning("%s: sections still to fill in before the model ships: %s",
                       os.path.join(destination, runfolder.CARD_FILE), ", ".join(missing))
    return destination


def describe_models() -> list[str]:
    """One line per model available by name: name, folder, network, data, validation score."""
    lines = []
    for name, folder in runfolder.available_models().items():
        try:
            config = runfolder.config_for_model(folder)
        except runfolder.RunFolderError as error:
            lines.append(f"{name}  {folder}  unusable: {error}")
            continue
        path = os.path.join(folder, runfolder.THRESHOLDS_FILE)
        thresholds = runfolder.load_json(path) if os.path.exists(path) else {}
        score = (f", validation meanAP {float(thresholds['val_meanAP']):.4f} / AJI "
                 f"{float(thresholds['val_AJI']):.4f}" if "val_meanAP" in thresholds else "")
        lines.append(f"{name}  {folder}  UNet-{config.size}/{config.filters}, "
                     f"{config.channels} channel(s), trained on {config.data}{score}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m layernet.model_zoo``."""
    parser = argparse.ArgumentParser(
        prog="python -m layernet.model_zoo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    publisher = commands.add_parser("publish", help="write a model folder from a run")
    publisher.add_argument("run", metavar="RUN", help="run folder (its best.h5) or model file")
    publisher.add_argument("name", metavar="NAME", help="the model's name, e.g. worms")
    publisher.add_argument("--models-dir", metavar="DIR", help="where to write (default: the "
                           f"first folder of ${runfolder.MODELS_ENV}, else the repository's "
                           "models/)")
    publisher.add_argument("--card-from", metavar="MD", help="Markdown file whose '## ' "
                           "sections fill the card's FILL IN sections (e.g. the model's "
                           "earlier card)")
    publisher.add_argument("--force", action="store_true", help="replace a model of that name")
    publisher.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB,
                           help=f"refuse a larger model folder (default {DEFAULT_MAX_MB:g})")
    commands.add_parser("list", help="the models available by name")
    parser.add_argument("--verbose", action="store_true", help="more log output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run ``publish`` or ``list`` as ``argv`` (default ``sys.argv[1:]``) says.

    Returns
    -------
    int
        The exit code, 0; errors raise :class:`ModelZooError` (one line).
    """
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "publish":
        folder = publish(args.run, args.name, args.models_dir, args.card_from, args.force,
                         args.max_mb)
        logger.info("use it as --model %s%s", args.name, "" if args.models_dir is None else
                    f" with {runfolder.MODELS_ENV}={os.path.abspath(args.models_dir)}")
    else:
        lines = describe_models()
        logger.info("%s", "\n".join(lines) if lines else "no models (looked in: "
                    f"{', '.join(runfolder.model_folders()) or 'nothing'})")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]), debug="--verbose" in sys.argv)
