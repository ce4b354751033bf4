"""The run folder: everything needed to reuse or resume a trained model.

Layout of a run folder::

    config.json          versioned Config of the run (layernet.config)
    best.h5              weights with the best validation score (Keras legacy HDF5 model file)
    last.h5              weights after the last completed epoch
    last_optimizer.npz   optimizer variables after the last completed epoch (for --resume)
    state.json           epoch, step, best score and epoch of the last completed epoch
    history.csv          one row per completed epoch (losses, validation scores, learning rate)
    thresholds.json      post-processing parameters used for validation (tau, min_size, ...)
    layer_assignment.npz frozen phase-2 object -> layer assignment (phase "overlap" only)
    command.txt          the train.py command line(s) that made the run, one per call
    logs/                TensorBoard logs

Every file is written to a temporary name (``.tmp-*``) in the same folder and renamed, so a crash
never leaves a half-written file behind. The resume checkpoint of an epoch (``last.h5`` and
``last_optimizer.npz``) is first written under pending names (``.pending-<epoch>-last.h5``, ...),
committed by writing ``state.json`` and only then renamed (:func:`commit_pending`); after a crash,
:func:`recover` finishes or discards that last step, so the checkpoint files always belong to the
epoch ``state.json`` names.

Models by name: wherever a model is given (``predict.py --model``, ``evaluate.py --model``,
``train.py --init``, the napari widget, ``python -m layernet.export_model``), a value that is not
an existing path and is a bare name (``worms``) names a model folder ``<models>/<name>/``
(:func:`locate_model`, the one rule all of them use). The folders searched, in order: those of the
environment variable ``LAYERNET_MODELS`` (separated by ``os.pathsep``), then the models shipped
with layernet (:func:`shipped_models_folder`: ``models/`` of the repository, or its copy inside an
installed wheel). A model folder is a published run folder (``python -m layernet.model_zoo
publish``): ``config.json``, ``best.h5``, ``thresholds.json`` and ``MODEL_CARD.md``.

Nothing in this module imports TensorFlow (:func:`load_trained_model` does, when called).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import re
import zipfile
from typing import Any

import numpy as np

from layernet.config import Config, ConfigError
from layernet.files import TEMPORARY_PREFIX, write_atomic, write_bytes_atomic, write_text_atomic

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
BEST_FILE = "best.h5"
LAST_FILE = "last.h5"
OPTIMIZER_FILE = "last_optimizer.npz"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"
THRESHOLDS_FILE = "thresholds.json"
ASSIGNMENT_FILE = "layer_assignment.npz"
COMMAND_FILE = "command.txt"
LAST_EPOCH_METRIC = "last_epoch"
"""``state.json`` ``best_metric`` of a run without validation (``Config.train_on_val``): best.h5
is the last epoch's weights and ``best_score`` is no score."""
CARD_FILE = "MODEL_CARD.md"
MODELS_ENV = "LAYERNET_MODELS"
"""Environment variable: folders (``os.pathsep``-separated) searched for models by name before
the shipped ones."""
INSTALLED_MODELS = "_models"
"""Where a wheel install holds the shipped ``models/`` folder: ``layernet/_models``
(``pyproject.toml`` maps the repository's ``models/`` there)."""
MODEL_FILE_SUFFIXES = (".h5", ".hdf5", ".keras", ".onnx")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
PENDING_PREFIX = ".pending-"


class RunFolderError(ValueError):
    """Raised when a run folder or model file is missing or unusable."""


def save_model_atomic(net: Any, path: str) -> None:
    """Save a Keras model as legacy HDF5 (``model.save``) through a temporary file and a rename.

    Parameters
    ----------
    net : keras.Model
        The network to save.
    path : str
        Destination, ending in ``.h5``.
    """

    def save(temporary: str) -> None:
        os.remove(temporary)  # Keras refuses to overwrite silently in some versions
        net.save(temporary)

    write_atomic(path, save)


def save_arrays_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write a ``.npz`` file of named arrays through a temporary file and a rename."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def pending_path(run_dir: str, name: str, epoch: int) -> str:
    """Where the checkpoint file ``name`` of ``epoch`` waits for its commit by ``state.json``."""
    return os.path.join(run_dir, f"{PENDING_PREFIX}{epoch:06d}-{name}")


def _pending_files(run_dir: str) -> list[tuple[str, int, str]]:
    """``(path, epoch, final name)`` of every pending checkpoint file in ``run_dir``."""
    found = []
    for entry in sorted(os.listdir(run_dir)):
        if not entry.startswith(PENDING_PREFIX):
            continue
        epoch_text, _, name = entry[len(PENDING_PREFIX):].partition("-")
        if epoch_text.isdigit() and name:
            found.append((os.path.join(run_dir, entry), int(epoch_text), name))
    return found


def commit_pending(run_dir: str, epoch: int) -> None:
    """Rename the pending checkpoint files of ``epoch`` to their final names; drop other epochs'.

    Call after ``state.json`` records ``epoch`` (the commit point).
    """
    for path, pending_epoch, name in _pending_files(run_dir):
        if pending_epoch == epoch:
            os.replace(path, os.path.join(run_dir, name))
        else:
            os.remove(path)


def recover(run_dir: str, epoch: int) -> None:
    """Bring an interrupted run folder back to the state of its last committed ``epoch``.

    Finishes the renames of a checkpoint committed just before the crash, deletes pending files
    of an uncommitted epoch and leftover temporary files (only call this when no other process
    writes to ``run_dir``).
    """
    commit_pending(run_dir, epoch)
    for entry in os.listdir(run_dir):
        if entry.startswith(TEMPORARY_PREFIX):
            logger.info("%s: removing %s left by an interrupted write", run_dir, entry)
            os.remove(os.path.join(run_dir, entry))


def load_arrays(path: str) -> dict[str, np.ndarray]:
    """Read a ``.npz`` file written by :func:`save_arrays_atomic`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise RunFolderError(f"{path}: cannot read ({error})") from None


def save_json_atomic(path: str, values: dict[str, Any]) -> None:
    """Write a JSON file atomically."""
    write_text_atomic(path, json.dumps(values, indent=2, sort_keys=True) + "\n")


def load_json(path: str) -> dict[str, Any]:
    """Read a JSON object, raising :class:`RunFolderError` naming the file on any problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except FileNotFoundError:
        raise RunFolderError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise RunFolderError(f"{path}: expected a JSON object")
    return values


def write_history(path: str, rows: list[dict[str, Any]]) -> None:
    """Write all history rows as CSV atomically (columns = union of the rows' keys, in order)."""
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _format(row.get(key, "")) for key in columns})
    write_text_atomic(path, buffer.getvalue())


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_history(path: str) -> list[dict[str, Any]]:
    """Read ``history.csv`` rows (numbers parsed as float, ``epoch`` as int); [] if missing."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                try:
                    parsed[key] = int(value) if key == "epoch" else float(value)
                except (TypeError, ValueError):
                    parsed[key] = value
            rows.append(parsed)
    return rows


def best_validation_scores(run_dir: str) -> dict[str, Any] | None:
    """The validation scores of a run's best epoch (``state.json``, ``history.csv``).

    Parameters
    ----------
    run_dir : str
        A run folder.

    Returns
    -------
    dict or None
        ``{"epoch": int, "meanAP": float, "AJI": float or None}``, or None when the run
        records no best epoch or did not validate (``Config.train_on_val``).
    """
    try:
        with open(os.path.join(run_dir, STATE_FILE), encoding="utf-8") as handle:
            state = json.load(handle)
        epoch = int(state["best_epoch"])
        score = float(state["best_score"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if epoch < 1 or state.get("best_metric") == LAST_EPOCH_METRIC:
        return None
    rows = [row for row in read_history(os.path.join(run_dir, HISTORY_FILE))
            if row.get("epoch") == epoch]
    aji = rows[0].get("val_AJI") if rows else None
    return {"epoch": epoch, "meanAP": score, "AJI": aji if isinstance(aji, float) else None}


def config_for_model(model_path: str) -> Config:
    """Return the Config stored beside a model file (``config.json`` in the same folder).

    Parameters
    ----------
    model_path : str
        A model file, a run or model folder, or a model's name (:func:`locate_model`).

    Returns
    -------
    Config
        The run's configuration, with its tuned thresholds (:func:`with_tuned_thresholds`).

    Raises
    ------
    RunFolderError
        If there is no such model or its ``config.json`` is missing or invalid.
    """
    model_path = locate_model(model_path)
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    config_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise RunFolderError(
            f"{model_path}: no {CONFIG_FILE} beside the model; pass a file from a layernet run folder"
        )
    try:
        config = Config.load(config_path)
    except ConfigError as error:
        raise RunFolderError(str(error)) from None
    return with_tuned_thresholds(config, folder)


def with_tuned_thresholds(config: Config, folder: str) -> Config:
    """``config`` with the post-processing thresholds that training chose on the validation
    split (``thresholds.json`` with ``"tuned": true``, ``Config.tune_thresholds``), if any."""
    path = os.path.join(folder, THRESHOLDS_FILE)
    if not os.path.exists(path):
        return config
    thresholds = load_json(path)
    if not thresholds.get("tuned"):
        return config
    try:
        return config.replace(tau=float(thresholds["tau"]), min_size=int(thresholds["min_size"]))
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise RunFolderError(f"{path}: invalid tuned thresholds ({error})") from None


def shipped_models_folder() -> str | None:
    """The folder of the models shipped with layernet, or None when there is none.

    Returns
    -------
    str or None
        ``layernet/_models`` where a wheel installed it (:data:`INSTALLED_MODELS`), else
        ``models/`` of the repository that this ``layernet`` package sits in (running from a
        checkout or an editable install).
    """
    package = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(package, INSTALLED_MODELS)
    if os.path.isdir(installed):
        return installed
    root = os.path.dirname(package)
    checkout = os.path.join(root, "models")
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(checkout):
        return checkout
    return None


def model_folders() -> list[str]:
    """The folders searched for models by name, in order: those of ``$LAYERNET_MODELS``
    (:data:`MODELS_ENV`, separated by ``os.pathsep``), then :func:`shipped_models_folder`."""
    folders = [folder for folder in os.environ.get(MODELS_ENV, "").split(os.pathsep) if folder]
    shipped = shipped_models_folder()
    if shipped is not None:
        folders.append(shipped)
    return folders


def available_models() -> dict[str, str]:
    """Name -> folder of every model that can be given by name (a subfolder of one of
    :func:`model_folders` that holds a ``config.json``; the first folder wins a name)."""
    found: dict[str, str] = {}
    for folder in model_folders():
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if (name not in found and is_model_name(name)
                    and os.path.isfile(os.path.join(path, CONFIG_FILE))):
                found[name] = path
    return found


def is_model_name(text: str) -> bool:
    """Whether ``text`` can name a model: letters, digits, ``_ . -``, no path separator, not a
    model file's name (``best.h5``)."""
    return bool(_MODEL_NAME.match(text)) and not text.lower().endswith(MODEL_FILE_SUFFIXES)


def locate_model(path: str) -> str:
    """The one rule that turns what a user gives as a model into a path.

    Parameters
    ----------
    path : str
        An existing file or folder (returned as it is), or the name of a model folder in
        :func:`model_folders` (``worms`` -> ``<models>/worms``).

    Returns
    -------
    str
        The existing path.

    Raises
    ------
    RunFolderError
        One line: for a name that no folder holds, the names that are available.
    """
    if os.path.exists(path):
        return path
    if is_model_name(path):
        models = available_models()
        if path in models:
            return models[path]
        names = ", ".join(models) if models else "none"
        raise RunFolderError(
            f"{path}: no such file or folder, and no model of that name (models available: "
            f"{names}; set {MODELS_ENV} to add folders of models)")
    raise RunFolderError(f"{path}: model file not found")


def is_published_model(path: str) -> bool:
    """Whether ``path`` (a model name, folder or file) is a published model folder (one with
    a ``MODEL_CARD.md``, :mod:`layernet.model_zoo`) rather than a training run."""
    path = locate_model(path)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return os.path.isfile(os.path.join(folder, CARD_FILE))


def check_free_for_a_new_run(run_dir: str) -> None:
    """Raise :class:`RunFolderError` when ``run_dir`` already holds a run (its state file).

    Parameters
    ----------
    run_dir : str
        The folder a new training run would write.
    """
    if os.path.exists(os.path.join(run_dir, STATE_FILE)):
        raise RunFolderError(f"{run_dir} already holds a run; use --resume or another --out")


def record_command(run_dir: str, command: str) -> None:
    """Add the command line that trains in ``run_dir`` to its ``command.txt`` (one per call:
    the first training, then every ``--resume``)."""
    path = os.path.join(run_dir, COMMAND_FILE)
    earlier = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            earlier = handle.read()
    write_text_atomic(path, earlier + command.strip() + "\n")


def resolve_model_path(path: str) -> str:
    """Return the model file of a run or model folder (``best.h5``, else ``last.h5``), a model
    file, or a model's name (:func:`locate_model`).

    Raises
    ------
    RunFolderError
        If there is no such model, or the folder holds no model file.
    """
    path = locate_model(path)
    if os.path.isdir(path):
        for name in (BEST_FILE, LAST_FILE):
            candidate = os.path.join(path, name)
            if os.path.exists(candidate):
                return candidate
        raise RunFolderError(f"{path}: run folder holds neither {BEST_FILE} nor {LAST_FILE}")
    return path


def newest_run(root: str = "runs") -> str:
    """Return the most recently modified run folder under ``root`` that holds a ``best.h5``."""
    candidates = glob.glob(os.path.join(root, "**", BEST_FILE), recursive=True)
    if not candidates:
        names = ", ".join(available_models())
        raise RunFolderError(f"{root}: no trained model found (no */{BEST_FILE}); pass --model"
                             + (f" (a run, or a pretrained model: {names})" if names else ""))
    return os.path.dirname(max(candidates, key=os.path.getmtime))


def load_trained_model(path: str, precision: str | None = None) -> tuple[Any, Config]:
    """Build the network from the run's ``config.json`` and load the weights of ``path``.

    Parameters
    ----------
    path : str
        A model file (``best.h5``/``last.h5``), a run folder or a model's name.
    precision : str or None, optional
        Compute precision of the built network (``float32``, ``mixed_bfloat16``,
        ``mixed_float16``) in place of the run's; the weights are float32 in every case.

    Returns
    -------
    net : keras.Model
        The network with loaded weights.
    config : Config
        The run's configuration.
    """
    from layernet.model import build_model, load_model_weights

    model_path = resolve_model_path(path)
    config = config_for_model(model_path)
    if precision is not None:
        config = config.replace(precision=precision)
    net = build_model(config)
    load_model_weights(net, model_path)
    return net, config
