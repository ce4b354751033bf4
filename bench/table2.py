#!/usr/bin/env python
"""The paper's Table 2 on one dataset: meanAP of UNet-S/M/L without and with overlap completion.

    python bench/table2.py --data synthetic --minutes 10
    python bench/table2.py --data occ2014 --data-dir data/occ2014 --epochs 100 --sizes S M L

For every size the layering model trains phase 1 (without overlap completion, "w/o OC") and
then phase 2 from phase 1's ``best.h5`` ("w/ OC"), splitting the per-size budget (``--minutes``
or ``--epochs``) by ``--phase2-share``. Both ``best.h5`` are scored on the test split (``--eval-split``) with
``evaluate.py``; the table shows meanAP with the reference matching (the paper's) and, in the
CSV, also with the hungarian matching, next to the paper's published numbers (synthetic worms
are compared with BBBC, synthetic cells with OCC, as a rough stand-in only).

Run folders: ``<out>/<size>-phase1`` and ``<out>/<size>``; finished runs are reused.
Results: ``<out>/table2.csv`` and ``<out>/table2.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from layernet.cli import quiet_tensorflow, run_main, setup_logging

quiet_tensorflow()

from bench import paper_tables  # noqa: E402
from bench.table1 import add_common_arguments, base_config, check_budget, train_layering  # noqa: E402

logger = logging.getLogger("table2")

SIZES = ("S", "M", "L")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES),
                        help="UNet sizes to run (default S M L)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default runs/table2-<data>)")
    args = parser.parse_args(argv)
    check_budget(parser, args)
    return args


def table_rows(results: dict[str, dict[str, dict]], sizes: list[str], paper: str | None,
               note: str) -> list[dict]:
    """Rows of the Table 2 layout (one per OC setting and source, one column per size)."""
    rows = []
    for setting, label in (("without", "w/o OC"), ("with", "w/ OC")):
        for matching in paper_tables.MATCHINGS:
            row = {"setting": label, "source": f"ours ({matching})"}
            for size in sizes:
                row[f"UNet-{size}"] = results[size][setting][matching]["meanAP"]
            rows.append(row)
        if paper is not None:
            published = paper_tables.PAPER_TABLE2[paper][setting]
            rows.append({"setting": label, "source": note,
                         **{f"UNet-{size}": float(published[size]) for size in sizes}})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    out = args.out or os.path.join("runs", f"table2-{args.data}")
    os.makedirs(out, exist_ok=True)
    sizes = [size for size in SIZES if size in args.sizes]
    results: dict[str, dict[str, dict]] = {}
    for size in sizes:
        config = base_config(args, size)
        first, second = train_layering(args, config, out, prefix=size)
        results[size] = {"without": paper_tables.evaluate_run(first, args.eval_split),
                         "with": paper_tables.evaluate_run(second, args.eval_split)}
    config = base_config(args, sizes[0])
    paper, note = paper_tables.paper_dataset(args.data, config.data_options)
    rows = table_rows(results, sizes, paper, note)
    columns = ("setting", "source") + tuple(f"UNet-{size}" for size in sizes)
    title = (f"Table 2 on {args.data}: {args.eval_split} meanAP (budget "
             f"{paper_tables.budget_text(args.minutes, args.epochs)} per size)")
    paper_tables.report(rows, columns, out, "table2", title)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]), debug="--verbose" in sys.argv)
