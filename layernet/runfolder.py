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
    logs/                TensorBoard logs

Every file is written to a temporary name (``.tmp-*``) in the same folder and renamed, so a crash
never leaves a half-written file behind. The resume checkpoint of an epoch (``last.h5`` and
``last_optimizer.npz``) is first written under pending names (``.pending-<epoch>-last.h5``, ...),
committed by writing ``state.json`` and only then renamed (:func:`commit_pending`); after a crash,
:func:`recover` finishes or discards that last step, so the checkpoint files always belong to the
epoch ``state.json`` names.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
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


def config_for_model(model_path: str) -> Config:
    """Return the Config stored beside a model file (``config.json`` in the same folder)."""
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


def resolve_model_path(path: str) -> str:
    """Accept a run folder or a model file and return the model file (``best.h5`` for a folder)."""
    if os.path.isdir(path):
        for name in (BEST_FILE, LAST_FILE):
            candidate = os.path.join(path, name)
            if os.path.exists(candidate):
                return candidate
        raise RunFolderError(f"{path}: run folder holds neither {BEST_FILE} nor {LAST_FILE}")
    if not os.path.exists(path):
        raise RunFolderError(f"{path}: model file not found")
    return path


def newest_run(root: str = "runs") -> str:
    """Return the most recently modified run folder under ``root`` that holds a ``best.h5``."""
    candidates = glob.glob(os.path.join(root, "**", BEST_FILE), recursive=True)
    if not candidates:
        raise RunFolderError(f"{root}: no trained model found (no */{BEST_FILE}); pass --model")
    return os.path.dirname(max(candidates, key=os.path.getmtime))


def load_trained_model(path: str, precision: str | None = None) -> tuple[Any, Config]:
    """Build the network from the run's ``config.json`` and load the weights of ``path``.

    Parameters
    ----------
    path : str
        A model file (``best.h5``/``last.h5``) or a run folder.
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
