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

``publish`` fills the card with what the run folder knows: the commands of ``command.txt`` (and
those of the ``--init`` run before them, where its folder is still there), the
configuration, the validation scores of ``thresholds.json`` and ``history.csv``, and the data's
citation for the datasets it knows (BBBC010, OCC2014, the synthetic data). What only a person
can write (intended use, limitations, the citation of other data) is left as a line starting
with ``FILL IN``; ``--card-from FILE`` fills those sections from a Markdown file (its ``## ``
sections of the same titles; its other sections are appended), for example the card of the
previous version of the model. The card must have no ``FILL IN`` left before the model ships
(``tests/test_shipped_models.py`` checks it).

The folder is written next to its final place and renamed, so a name is never half-published;
``--force`` replaces an existing model of that name. A model whose files exceed ``--max-mb``
(default 10 MB: the cpu recipe's UNet-M/16 is 7.4 MB) is refused.

Nothing in this module imports TensorFlow (the weights are copied with h5py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass

import h5py
import numpy as np

from layernet import PAPER, PAPER_URL
from layernet import runfolder
from layernet.cli import run_main, setup_logging
from layernet.config import Config, ConfigError

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
FILL_IN = "FILL IN"
"""What starts a line of a model card that a person still has to write."""
_PUBLISHED_FILES = (runfolder.CONFIG_FILE, runfolder.THRESHOLDS_FILE)
_DROPPED_GROUPS = ("optimizer_weights",)
_DROPPED_ATTRIBUTES = ("training_config",)


class ModelZooError(ValueError):
    """A run that cannot be published, or a model folder that cannot be written."""


@dataclass(frozen=True)
class DataCitation:
    """How a model card names and cites a dataset.

    Attributes
    ----------
    title : str
        The dataset's name and what it shows.
    citation : str
        The publications of its authors, to cite when using a model trained on it ("" for
        generated data).
    page : str
        Its official page ("" if none).
    """

    title: str
    citation: str
    page: str = ""


DATA_CITATIONS: dict[str, DataCitation] = {
    "bbbc010": DataCitation(
        title="BBBC010, C. elegans live/dead assay (Broad Bioimage Benchmark Collection): "
              "bright-field images of wells with 11-15 worms each, one mask per worm (worms "
              "cross, so the masks overlap)",
        citation="Ljosa V, Sokolnicki KL, Carpenter AE. Annotated high-throughput microscopy "
                 "image sets for validation. Nature Methods 9:637 (2012). Images by Fred "
                 "Ausubel: Moy TI et al., ACS Chemical Biology 4:527 (2009). Per-worm "
                 "annotations: Wählby C et al., Nature Methods 9:714 (2012).",
        page="https://bbbc.broadinstitute.org/BBBC010"),
    "occ2014": DataCitation(
        title="OCC2014, ISBI 2014 Overlapping Cervical Cytology challenge: synthetic "
              "extended-depth-of-field images of cervical cells, one mask per cell (cells "
              "overlap heavily)",
        citation="Lu Z, Carneiro G, Bradley AP. An improved joint optimization of multiple "
                 "level set functions for the segmentation of overlapping cervical cells. IEEE "
                 "Transactions on Image Processing 24:1261 (2015). Lu Z et al. Evaluation of "
                 "three algorithms for the segmentation of overlapping cervical cells. IEEE "
                 "Journal of Biomedical and Health Informatics 21:441 (2017)."),
    "synthetic": DataCitation(
        title="synthetic images generated by layernet (datasets/synthetic.py)", citation=""),
}
"""Citations filled in automatically, by ``Config.data``."""


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
        The new file: the same layers and weights (byte for byte), the model's architecture
        attributes, without optimizer state or training configuration.

    Returns
    -------
    int
        The number of weights (parameters) copied.

    Raises
    ------
    ModelZooError
        If ``source`` is not such a file (one line naming it).
    """
    try:
        with h5py.File(source, "r") as original, h5py.File(destination, "w") as copy:
            weights = original["model_weights"] if "model_weights" in original else original
            if weights.attrs.get("layer_names") is None:
                raise ModelZooError(f"{source}: not a Keras HDF5 model file (no layer_names)")
            for key, value in original.attrs.items():
                if key not in _DROPPED_ATTRIBUTES:
                    copy.attrs[key] = value
            for name in original:
                if name not in _DROPPED_GROUPS:
                    original.copy(original[name], copy, name=name)
            count = 0
            for dataset in _datasets(weights):
                count += int(dataset.size)
    except OSError as error:
        raise ModelZooError(f"{source}: cannot read as HDF5 ({error})") from None
    if not _same_weights(source, destination):
        raise ModelZooError(f"{destination}: the copied weights differ from {source}")
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


def _read_optional_json(path: str) -> dict:
    return runfolder.load_json(path) if os.path.exists(path) else {}


def _recorded_command(run_dir: str, depth: int = 0) -> str | None:
    """The train.py commands of ``command.txt``, preceded by those of the run that ``--init``
    started from (phase 1 of a phase-2 run) where that run folder is still there."""
    path = os.path.join(run_dir, runfolder.COMMAND_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    try:
        words = shlex.split(lines[0]) if lines else []
    except ValueError:  # not a command line shlex can read
        words = []
    if "--init" in words[:-1] and depth < 3:
        try:
            init = runfolder.resolve_model_path(words[words.index("--init") + 1])
        except runfolder.RunFolderError:
            init = None
        earlier = (_recorded_command(os.path.dirname(os.path.abspath(init)), depth + 1)
                   if init else None)
        if earlier:
            lines = [earlier] + lines
    return "\n".join(lines) or None


def _validation_section(run_dir: str, name: str, config: Config, source: str) -> str:
    """The card's validation scores: tuned thresholds (``thresholds.json``) and the training's
    best epoch (``state.json``, ``history.csv``)."""
    configured = Config.load(os.path.join(run_dir, runfolder.CONFIG_FILE))  # before tuning
    lines = []
    thresholds = _read_optional_json(os.path.join(run_dir, runfolder.THRESHOLDS_FILE))
    if thresholds.get("tuned") and "val_meanAP" in thresholds:
        lines.append(
            f"- **meanAP {float(thresholds['val_meanAP']):.4f}, AJI "
            f"{float(thresholds['val_AJI']):.4f}** with the thresholds this folder uses (tau "
            f"{float(thresholds['tau']):g}, min_size {int(thresholds['min_size'])}), chosen on "
            f"the {thresholds.get('tuned_on', 'validation split')}: chosen and scored on the "
            "same images, so somewhat optimistic.")
        scores = thresholds.get("configured")
        if isinstance(scores, dict) and "meanAP" in scores:
            lines.append(f"- meanAP {float(scores['meanAP']):.4f}, AJI "
                         f"{float(scores['AJI']):.4f} with the configured thresholds (tau "
                         f"{configured.tau:g}, min_size {configured.min_size}) on the same "
                         "images.")
    best = runfolder.best_validation_scores(run_dir)
    if best is not None:
        text = f"- During training: best validation meanAP {best['meanAP']:.4f}"
        if best.get("AJI") is not None:
            text += f", AJI {best['AJI']:.4f}"
        lines.append(text + f" at epoch {best['epoch']}" + (
            " (the model in this folder)." if source == runfolder.BEST_FILE else
            f"; this folder holds the run's {source} instead."))
    if not lines:
        return (f"{FILL_IN}: the model's validation scores (meanAP, AJI), e.g. from "
                f"`python evaluate.py --model {name} --split val`.\n")
    data = config.data + (f" ({json.dumps(config.data_options)})" if config.data_options else "")
    split = (f"Validation split: {data}, seed {config.split_seed}, validation fraction "
             f"{config.val_fraction:g} of the training images (`evaluate.py --model {name} "
             "--split val` scores the same images). meanAP: mean over IoU 0.5-0.9 of "
             "TP / (TP + FP + FN), the paper's Table 1 metric (reference matching); AJI: "
             "aggregated Jaccard index; both pooled over the images, overlaps included.")
    return "\n".join(lines) + "\n\n" + split + "\n"


def _training_section(run_dir: str, config: Config) -> str:
    command = _recorded_command(run_dir)
    text = ("The command that trained it (from the repository's root; relative paths are "
            "relative to it):\n\n```bash\n" + command + "\n```\n" if command else
            f"{FILL_IN}: the exact train.py command that reproduces the model (the run folder "
            "has no command.txt).\n")
    state = _read_optional_json(os.path.join(run_dir, runfolder.STATE_FILE))
    facts = []
    if "step" in state:
        facts.append(f"{int(state['step'])} steps of batch {config.batch_size}")
    if "epoch" in state:
        facts.append(f"{int(state['epoch'])} epoch" + ("" if int(state["epoch"]) == 1 else "s"))
    if "train_seconds" in state:
        facts.append(f"{float(state['train_seconds']) / 60:.1f} minutes of training")
    if facts:
        text += "\nTraining: " + ", ".join(facts) + f" (phase `{config.phase}`, precision " \
                f"`{config.precision}`, learning rate {config.learning_rate:g}, " \
                f"`{config.optimizer}`, schedule `{config.lr_schedule}`).\n"
    text += ("\nEvery setting is in `config.json` beside this card (versioned; "
             "`train.py --config config.json` reuses them).\n")
    return text


def _data_section(config: Config) -> str:
    known = DATA_CITATIONS.get(config.data)
    options = f", options {json.dumps(config.data_options)}" if config.data_options else ""
    where = (f"Dataset `{config.data}`{options}: the training split (split seed "
             f"{config.split_seed}, validation fraction {config.val_fraction:g}).")
    if known is None:
        return (f"{where}\n\n{FILL_IN}: what the images are, who made them, and the "
                "citation of the data's authors (and its official page).\n")
    if not known.citation:
        return f"{where}\n\n{known.title}: generated data, no data citation is needed.\n"
    page = f" Official page: {known.page}." if known.page else ""
    return f"{where}\n\n{known.title}.\n\nPlease cite the data's authors: {known.citation}{page}\n"


def _model_section(config: Config, parameters: int, size_bytes: int) -> str:
    what = ("foreground and N layer maps; the connected components of each layer are objects, "
            "and objects of different layers may overlap" if config.method == "layering" else
            "the semantic classes of the paper's baseline")
    rows = [
        ("method", f"`{config.method}` ({what})"),
        ("network", f"UNet-{config.size}, {config.filters} base filters, "
                    f"{config.head_filters}-filter heads, {parameters:,} parameters "
                    f"({size_bytes / 1e6:.1f} MB)"),
        ("layers N", str(config.layers)),
        ("input", f"{config.channels} channel(s), any size (padded to a multiple of "
                  f"{config.stride}; larger than 768 px is predicted in tiles); each image and "
                  f"channel normalised by its {config.normalize_low:g} and "
                  f"{config.normalize_high:g} percentiles"),
        ("Algorithm 1", f"tau {config.tau:g}, min_size {config.min_size}, join_layers "
                        f"{config.join_layers}"),
    ]
    table = "| | |\n|---|---|\n" + "".join(f"| {key} | {value} |\n" for key, value in rows)
    return table


def model_card(run_dir: str, name: str, config: Config, parameters: int,
               size_bytes: int, source: str = runfolder.BEST_FILE) -> str:
    """The Markdown model card of a run published as ``name``.

    Parameters
    ----------
    run_dir : str
        The run folder (its ``command.txt``, ``state.json``, ``history.csv`` and
        ``thresholds.json`` are read when present).
    name : str
        The model's name.
    config : Config
        The run's configuration (tuned thresholds applied).
    parameters : int
        The network's number of weights.
    size_bytes : int
        The size of the published folder's weights file.
    source : str, optional
        The name of the run's model file that is published (``best.h5``, or ``last.h5``).

    Returns
    -------
    str
        The card; sections the run cannot tell have a line starting with :data:`FILL_IN`.
    """
    known = DATA_CITATIONS.get(config.data)
    subject = known.title.split(":")[0].split(",")[0] if known else config.data
    return (
        f"# {name}: layernet model trained on {subject}\n\n"
        "Instance segmentation of dense and overlapping objects by layering: "
        f"{PAPER} {PAPER_URL}\n\n"
        "## Use\n\n"
        "```bash\n"
        f"python predict.py --model {name} images/ --save-rois   # label stacks, Fiji ROIs\n"
        f"python evaluate.py --model {name} --split val"
        + ("" if config.data == "synthetic" else " --data-dir DIR") +
        "   # its validation images" + ("" if config.data == "synthetic" else
                                          f" (DIR: the {config.data} download)") + "\n"
        f"python train.py --init {name} --data folder --data-dir mine --minutes 10   "
        "# fine-tune on your images\n"
        "```\n\n"
        "## Intended use\n\n"
        f"{FILL_IN}: the images this model is for (modality, magnification, object kind and "
        "size) and what it is not for.\n\n"
        "## Model\n\n" + _model_section(config, parameters, size_bytes) + "\n"
        "## Training\n\n" + _training_section(run_dir, config) + "\n"
        "## Data\n\n" + _data_section(config) + "\n"
        "## Validation scores\n\n" + _validation_section(run_dir, name, config, source) + "\n"
        "## Limitations\n\n"
        f"{FILL_IN}: what the model gets wrong (measured), and on which images it was not "
        "tested.\n\n"
        "## Citation\n\n"
        f"The method: {PAPER} {PAPER_URL}\n"
        + (f"\nThe data: {known.citation}\n" if known and known.citation else ""))


_SECTION = re.compile(r"^## +(.+?) *$", re.MULTILINE)


def _sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first ``## `` heading and the (title, body) of every section."""
    matches = list(_SECTION.finditer(text))
    if not matches:
        return text, []
    head = text[:matches[0].start()]
    sections = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        sections.append((match.group(1), text[match.end():end].strip("\n")))
    return head, sections


def merge_card(card: str, filled: str) -> str:
    """Fill the :data:`FILL_IN` sections of ``card`` from the sections of ``filled`` with the
    same titles (case-insensitive); ``filled``'s sections that ``card`` lacks are appended.

    Parameters
    ----------
    card : str
        A card written by :func:`model_card`.
    filled : str
        Markdown with ``## Title`` sections, e.g. an earlier card of the model.

    Returns
    -------
    str
        The merged card (generated sections keep the run's values).
    """
    head, sections = _sections(card)
    offered = {title.lower(): body for title, body in _sections(filled)[1]}
    titles = {title.lower() for title, _ in sections}
    merged = []
    for title, body in sections:
        replacement = offered.get(title.lower())
        if FILL_IN in body and replacement and FILL_IN not in replacement:
            body = replacement
        merged.append((title, body))
    merged += [(title, body) for title, body in _sections(filled)[1]
               if title.lower() not in titles]
    return head + "".join(f"## {title}\n\n{body}\n\n" for title, body in merged).rstrip() + "\n"


def unfilled_sections(card: str) -> list[str]:
    """Titles of the sections of a card that still hold a :data:`FILL_IN` line."""
    return [title for title, body in _sections(card)[1]
            if any(line.startswith(FILL_IN) for line in body.splitlines())]


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
        (:func:`merge_card`).
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
    staging = tempfile.mkdtemp(prefix=runfolder.TEMPORARY_PREFIX + name + "-", dir=models_dir)
    try:
        parameters = copy_weights(model_path, os.path.join(staging, runfolder.BEST_FILE))
        for file in _PUBLISHED_FILES:
            if os.path.exists(os.path.join(run_dir, file)):
                shutil.copy2(os.path.join(run_dir, file), os.path.join(staging, file))
        weights_bytes = os.path.getsize(os.path.join(staging, runfolder.BEST_FILE))
        card = model_card(run_dir, name, config, parameters, weights_bytes,
                          os.path.basename(model_path))
        if filled is not None:
            card = merge_card(card, filled)
        with open(os.path.join(staging, runfolder.CARD_FILE), "w", encoding="utf-8") as handle:
            handle.write(card)
        total = sum(os.path.getsize(os.path.join(staging, file)) for file in os.listdir(staging))
        if total > max_mb * 1e6:
            raise ModelZooError(
                f"{run}: the model folder would take {total / 1e6:.1f} MB, more than "
                f"{max_mb:g} MB ({parameters:,} weights, UNet-{config.size}/{config.filters}); "
                "train a smaller network (--recipe cpu: UNet-M/16, 7.4 MB) or raise --max-mb")
        _replace_folder(staging, destination)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    logger.info("published %s as %s (%.1f MB, %s weights)", model_path, destination,
                total / 1e6, f"{parameters:,}")
    missing = unfilled_sections(card)
    if missing:
        logger.warning("%s: sections still to fill in before the model ships: %s",
                       os.path.join(destination, runfolder.CARD_FILE), ", ".join(missing))
    return destination


def _replace_folder(staging: str, destination: str) -> None:
    """Rename ``staging`` to ``destination``, moving an existing one aside first."""
    old = None
    if os.path.exists(destination):
        old = tempfile.mkdtemp(prefix=runfolder.TEMPORARY_PREFIX + "old-",
                               dir=os.path.dirname(destination))
        os.rmdir(old)
        os.replace(destination, old)
    os.replace(staging, destination)
    if old is not None:
        shutil.rmtree(old)


def describe_models() -> list[str]:
    """One line per model available by name: name, folder, network, data, validation score."""
    lines = []
    for name, folder in runfolder.available_models().items():
        try:
            config = runfolder.config_for_model(folder)
        except runfolder.RunFolderError as error:
            lines.append(f"{name}  {folder}  unusable: {error}")
            continue
        thresholds = _read_optional_json(os.path.join(folder, runfolder.THRESHOLDS_FILE))
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
