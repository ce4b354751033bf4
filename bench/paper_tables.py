"""Shared parts of the paper-table runners (``bench/table1.py``, ``bench/table2.py``).

* the paper's published numbers (Tables 1 and 2 of Chen, Wu & Merhof, BMVC 2022), and which of
  its datasets a run is compared with;
* training one method with a budget (epochs or wall-time minutes) into a run folder, reusing a
  run folder that already holds a finished run;
* scoring a run folder's ``best.h5`` (or a StarDist prediction folder) on the test split with
  ``evaluate.py`` (both matchings) and reading its ``metrics.json``;
* writing a result table as CSV and Markdown.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from typing import Any, Sequence

METRIC_COLUMNS = ("AP@0.5", "AP@0.6", "AP@0.7", "AP@0.8", "AP@0.9", "meanAP", "AJI")
MATCHINGS = ("reference", "hungarian")

logger = logging.getLogger(__name__)

PAPER_TABLE1: dict[str, dict[str, tuple[float, ...]]] = {
    # AP@0.5, AP@0.6, AP@0.7, AP@0.8, AP@0.9, meanAP, AJI (paper Table 1)
    "BBBC": {"unet2": (.5455, .4645, .4497, .4212, .2355, .4233, .5327),
             "unet3": (.8863, .8197, .7412, .5795, .2717, .6597, .7786),
             "stardist": (.3098, .1410, .0372, .0011, .000, .0978, .4499),
             "layering": (.9357, .9188, .8648, .7606, .2904, .7541, .8442)},
    "OCC": {"unet2": (.1548, .1303, .1129, .1055, .1048, .1217, .2058),
            "unet3": (.7010, .6071, .5097, .3767, .1950, .4779, .5802),
            "stardist": (.6556, .5566, .4346, .2970, .1547, .4197, .6927),
            "layering": (.9230, .8768, .8007, .6788, .4349, .7429, .8353)},
    "CCDB": {"unet2": (.3698, .3360, .3049, .2763, .2228, .3020, .1185),
             "unet3": (.7307, .6774, .6210, .5153, .2838, .5656, .7148),
             "stardist": (.7428, .6532, .4958, .2685, .0326, .4386, .6903),
             "layering": (.7968, .7467, .6767, .4889, .2230, .5864, .7601)},
}
"""Published Table 1 rows per paper dataset and method (``layering`` = "Ours")."""

PAPER_TABLE2: dict[str, dict[str, dict[str, float]]] = {
    # meanAP without / with overlap completion (OC) for UNet-S/M/L (paper Table 2)
    "BBBC": {"without": {"S": .4655, "M": .6670, "L": .7120},
             "with": {"S": .5406, "M": .7162, "L": .7541}},
    "OCC": {"without": {"S": .4359, "M": .5273, "L": .5441},
            "with": {"S": .4815, "M": .6841, "L": .7429}},
    "CCDB": {"without": {"S": .5229, "M": .5569, "L": .5743},
             "with": {"S": .5234, "M": .5614, "L": .5864}},
}
"""Published Table 2 meanAP per paper dataset, OC setting and UNet size."""

METHOD_NAMES = {"unet2": "UNet-2", "unet3": "UNet-3", "stardist": "StarDist",
                "layering": "Ours (layering)"}


def paper_dataset(data: str, options: dict[str, Any]) -> tuple[str | None, str]:
    """The paper dataset a run is compared with, and a note saying how it was chosen.

    ``bbbc010``/``occ2014``/``ccdb6843`` map to their own rows; synthetic worms stand in for
    BBBC and synthetic cells for OCC (the generator imitates them; the numbers are only a point
    of reference); anything else has no paper row.
    """
    direct = {"bbbc010": "BBBC", "occ2014": "OCC", "ccdb6843": "CCDB"}
    if data in direct:
        return direct[data], "paper"
    if data == "synthetic":
        kind = options.get("kind", "worms")
        stand_in = {"worms": "BBBC", "cells": "OCC"}.get(kind)
        if stand_in:
            return stand_in, f"paper {stand_in} (synthetic {kind} are only a stand-in)"
    return None, "no paper row for this dataset"


def budget_kwargs(minutes: float | None, epochs: int | None, share: float = 1.0
                  ) -> dict[str, Any]:
    """Config changes for a training budget: a share of ``minutes`` or of ``epochs``.

    With minutes, ``epochs`` is set so high that the time budget always ends the run.
    """
    if minutes:
        return {"time_budget_minutes": float(minutes) * share, "epochs": 1_000_000}
    if not epochs:
        raise ValueError("give a training budget: --minutes or --epochs")
    return {"time_budget_minutes": 0.0, "epochs": max(1, int(math.ceil(epochs * share)))}


def train_run(config: Any, run_dir: str, init: str | None = None) -> str:
    """Train ``config`` into ``run_dir`` (from ``init``), or reuse a finished run there.

    Returns
    -------
    str
        ``run_dir``.
    """
    import keras

    from datasets import load_source
    from layernet import runfolder
    from layernet.training import train

    if os.path.exists(os.path.join(run_dir, runfolder.STATE_FILE)) and os.path.exists(
            os.path.join(run_dir, runfolder.BEST_FILE)):
        logger.info("%s already holds a trained run; reusing it (delete it to retrain)", run_dir)
        return run_dir
    keras.backend.clear_session()
    logger.info("training %s (method %s, phase %s, UNet-%s) into %s", config.data,
                config.method, config.phase, config.size, run_dir)
    train(config, run_dir, init=init, verbose=2, load_source=load_source)
    return run_dir


def evaluate_run(run_dir: str, split: str = "test") -> dict[str, dict[str, float]]:
    """Score a run folder's ``best.h5`` on ``split`` with ``evaluate.py``; both matchings.

    The report goes to ``<run_dir>/eval-<split>/`` (reused when it is newer than ``best.h5``).

    Returns
    -------
    dict
        ``{"reference": {...}, "hungarian": {...}}`` with the :data:`METRIC_COLUMNS`.
    """
    out = os.path.join(run_dir, f"eval-{split}")
    metrics_path = os.path.join(out, "metrics.json")
    best = os.path.join(run_dir, "best.h5")
    if not (os.path.exists(metrics_path)
            and os.path.getmtime(metrics_path) >= os.path.getmtime(best)):
        from layernet_commands import evaluate

        evaluate.main(["--model", run_dir, "--split", split, "--out", out, "--worst", "0"])
    return read_metrics(metrics_path)


def read_metrics(path: str) -> dict[str, dict[str, float]]:
    """The :data:`METRIC_COLUMNS` of both matchings from an ``evaluate.py`` ``metrics.json``."""
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    return {matching: {column: float(report["matchings"][matching][column])
                       for column in METRIC_COLUMNS} for matching in MATCHINGS}


def format_number(value: float | None) -> str:
    """``.1234`` style (as the paper prints), ``-`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}".lstrip("0") if value < 1 else f"{value:.4f}"


def write_tables(rows: Sequence[dict[str, Any]], columns: Sequence[str], csv_path: str,
                 markdown_path: str, title: str) -> str:
    """Write ``rows`` as CSV and as a Markdown table; return the Markdown text.

    Numbers are written with 4 decimals; missing values as empty CSV cells / ``-``.
    """
    from layernet.files import write_text_atomic

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{row[key]:.4f}" if isinstance(row.get(key), float)
                               and not math.isnan(row[key]) else
                               ("" if isinstance(row.get(key), float) else row.get(key, "")))
                         for key in columns})
    write_text_atomic(csv_path, buffer.getvalue())
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [format_number(row.get(key)) if isinstance(row.get(key), float)
                 else str(row.get(key, "")) for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(markdown_path, text)
    return text


def format_console(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Fixed-width console table of ``rows``."""
    cells = [[format_number(row.get(key)) if isinstance(row.get(key), float)
              else str(row.get(key, "")) for key in columns] for row in rows]
    widths = [max(len(column), *(len(line[index]) for line in cells))
              for index, column in enumerate(columns)]
    out = ["  ".join(column.ljust(width) for column, width in zip(columns, widths))]
    for line in cells:
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))
    return "\n".join(out)


def budget_text(minutes: float | None, epochs: int | None) -> str:
    """``"5 min"`` or ``"100 epochs"``."""
    return f"{minutes:g} min" if minutes else f"{epochs} epochs"


def report(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: str, stem: str,
           title: str) -> None:
    """Write ``<out>/<stem>.csv`` and ``.md`` and print the title, the table and the paths."""
    csv_path, md_path = os.path.join(out, f"{stem}.csv"), os.path.join(out, f"{stem}.md")
    write_tables(rows, columns, csv_path, md_path, title)
    print(title)
    print(format_console(rows, columns))
    print(f"wrote {csv_path} and {md_path}")
