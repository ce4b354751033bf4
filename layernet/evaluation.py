"""Evaluation plumbing shared by ``evaluate.py``: reading instances from disk, reports, tables.

Predictions (and ground truth) of any tool can be read from disk by :func:`read_instances`:

* a label-stack TIFF ``(L, H, W)`` such as ``<name>.layers.tif`` written by ``predict.py``
  (every id in one page; overlapping objects on different pages);
* a multi-page TIFF whose pages repeat ids (e.g. one binary mask per page): every page is taken
  as its own layer of objects and its ids are renumbered;
* a 2-D label image (PNG/TIFF, 0 = background), as written by StarDist, Cellpose, ...;
* a folder of per-object binary masks (one file per object; ``<name>.masks/`` of ``predict.py``).

Files are found by image name (:func:`index_by_name`): ``<name>.layers.tif``, ``<name>.tif``,
``<name>.png``, ... or a folder ``<name>/`` / ``<name>.masks/``.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from typing import Any, Sequence

import numpy as np

from layernet.files import collect_inputs, folder_images, is_image_file, write_text_atomic
from layernet.instances import LabelStackError, validate_stack
from layernet.io import ImageReadError, read_image, read_label_image, read_mask
from layernet.metrics import ImageScores, per_image_table
from layernet.runfolder import save_json_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluationError",
    "INSTANCE_SUFFIXES",
    "index_by_name",
    "read_instances",
    "stack_from_mask_files",
    "format_table",
    "worst_images",
    "write_report",
]

INSTANCE_SUFFIXES = (".layers.tif", ".layers.tiff", ".flat.tif", ".masks", ".tif", ".tiff",
                     ".png")
"""Suffixes stripped from file names to get the image name, in order of preference."""


class EvaluationError(ValueError):
    """Raised for missing or unusable prediction / ground-truth files."""


def _name_of(path: str) -> tuple[str, int]:
    """Image name of a file or folder and the rank of its suffix (lower = preferred)."""
    base = os.path.basename(os.path.normpath(path))
    for rank, suffix in enumerate(INSTANCE_SUFFIXES):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)], rank
    if os.path.isdir(path):
        return base, len(INSTANCE_SUFFIXES)
    return os.path.splitext(base)[0], len(INSTANCE_SUFFIXES) + 1


def index_by_name(spec: str) -> dict[str, str]:
    """Map image names to instance files found in a folder or by a glob pattern.

    Parameters
    ----------
    spec : str
        A folder (its files and sub-folders are candidates) or a glob pattern.

    Returns
    -------
    dict
        name -> path; when several candidates share a name, ``.layers.tif`` wins over a flat
        label image, which wins over a mask folder (order of :data:`INSTANCE_SUFFIXES`).

    Raises
    ------
    EvaluationError
        If nothing is found.
    """
    candidates, _ = collect_inputs([spec], accept=lambda path: os.path.isdir(path)
                                   or is_image_file(path))
    best: dict[str, tuple[int, str]] = {}
    for path in candidates:
        name, rank = _name_of(path)
        if name not in best or rank < best[name][0]:
            best[name] = (rank, path)
    if not best:
        raise EvaluationError(f"{spec}: no label stacks, label images or mask folders found")
    return {name: path for name, (_, path) in best.items()}


def stack_from_mask_files(paths: Sequence[str]) -> np.ndarray:
    """Label stack of per-object binary mask files (object ``k`` = file ``k``, ids ``1..K``).

    Each object goes into the first slice where it overlaps nothing (memory: one slice per level
    of overlap, never one array per object).
    """
    slices: list[np.ndarray] = []
    shape = None
    for number, path in enumerate(paths, start=1):
        mask = read_mask(path)
        if shape is None:
            shape = mask.shape
        elif mask.shape != shape:
            raise EvaluationError(f"{path}: mask of size {mask.shape}, but {paths[0]} is {shape}")
        if not mask.any():
            logger.warning("%s: empty mask ignored", path)
            continue
        for layer in slices:
            if not layer[mask].any():
                layer[mask] = number
                break
        else:
            slices.append(np.where(mask, number, 0).astype(np.int32))
    if shape is None:
        raise EvaluationError("no mask files")
    return np.stack(slices) if slices else np.zeros((1,) + shape, np.int32)


def read_instances(path: str) -> np.ndarray:
    """Read the instances of one image from a file or a folder of masks (module docstring).

    Parameters
    ----------
    path : str
        Label-stack TIFF, multi-page mask TIFF, 2-D label image, or folder of mask files.

    Returns
    -------
    numpy.ndarray
        int32 label stack ``(L, H, W)``.

    Raises
    ------
    EvaluationError
        If the file or folder cannot be read or holds no valid instances.
    """
    if os.path.isdir(path):
        files = folder_images(path)
        if not files:
            raise EvaluationError(f"{path}: folder holds no mask files")
        try:
            return stack_from_mask_files(files)
        except ImageReadError as error:
            raise EvaluationError(str(error)) from None
    try:
        raw = read_image(path)
        if raw.ndim == 2 or (raw.ndim == 3 and raw.shape[-1] in (3, 4)):
            return read_label_image(path)[None]
    except ImageReadError as error:
        raise EvaluationError(str(error)) from None
    if raw.ndim != 3 or not (np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.bool_):
        raise EvaluationError(f"{path}: expected integer labels, got {raw.dtype} {raw.shape}")
    stack = raw.astype(np.int64)
    if stack.size and stack.min() < 0:
        raise EvaluationError(f"{path}: label ids must be >= 0")
    try:
        validate_stack(stack)
    except LabelStackError:
        # the pages repeat ids (one mask per page, or one label image per page): renumber
        offset = 0
        for page in stack:
            on = page > 0
            page[on] += offset
            offset = int(page.max()) if on.any() else offset
    if stack.size and stack.max() > np.iinfo(np.int32).max:
        raise EvaluationError(f"{path}: too many ids for int32")
    return stack.astype(np.int32)


def format_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Table-1-style text: one row per matching with AP at every threshold, meanAP and AJI."""
    first = next(iter(summaries.values()))
    keys = [f"AP@{t:g}" for t in first["thresholds"]]
    header = ["matching", "images"] + keys + ["meanAP", "AJI"]
    rows = [header]
    for matching, summary in summaries.items():
        rows.append([matching, str(summary["n_images"])]
                    + [f"{summary[key]:.4f}" for key in keys + ["meanAP", "AJI"]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(row, widths)))
                     for row in rows)


def worst_images(scores: Sequence[ImageScores], count: int) -> list[str]:
    """Names of the ``count`` images with the lowest meanAP (ties: lower AJI, then name)."""
    ranked = sorted(scores, key=lambda item: (item.mean_ap, item.aji, item.name))
    return [item.name for item in ranked[:max(count, 0)]]


def write_report(out_dir: str, summaries: dict[str, dict[str, Any]],
                 scores: dict[str, list[ImageScores]], meta: dict[str, Any]) -> tuple[str, str]:
    """Write ``metrics.json`` (pooled summaries + ``meta``) and per-image ``metrics.csv``.

    The CSV has one row per image and matching (column ``matching``).

    Returns
    -------
    tuple of str
        Paths of the JSON and CSV files.
    """
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "metrics.json")
    csv_path = os.path.join(out_dir, "metrics.csv")
    save_json_atomic(json_path, dict(meta, matchings=summaries))
    rows = []
    for matching, items in scores.items():
        for row in per_image_table(items):
            rows.append(dict(name=row.pop("name"), matching=matching, **row))
    buffer = io.StringIO()
    columns = list(rows[0]) if rows else ["name", "matching"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.6g}" if isinstance(value, float) else value)
                         for key, value in row.items()})
    write_text_atomic(csv_path, buffer.getvalue())
    return json_path, csv_path
