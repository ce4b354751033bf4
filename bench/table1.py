#!/usr/bin/env python
"""The paper's Table 1 on one dataset: UNet-2, UNet-3, StarDist and layering, same split, same budget.

    python bench/table1.py --data synthetic --minutes 5
    python bench/table1.py --data bbbc010 --data-dir data/bbbc010 --epochs 100 --size L

Every method gets the same training budget, ``--minutes`` of wall time or ``--epochs`` (one
epoch = one pass over the training images): UNet-2 and UNet-3 (``train.py --method``, same
backbone and pipeline), StarDist (``bench/stardist_baseline.py``, 32 rays, skipped with a note
when the optional package is missing) and the layering model, whose budget is split between
phase 1 and phase 2 (overlap completion, from phase 1's ``best.h5``; ``--phase2-share``). Each
trained model (its ``best.h5``) is scored on the test split (``--eval-split``) by ``evaluate.py`` with both
matchings; the table prints, for every method, our numbers (reference = the authors' evaluator
used for the paper's table, hungarian = one-to-one) and the paper's published row beside them
(synthetic worms are compared with BBBC, synthetic cells with OCC, as a rough stand-in only).
The paper's "Ours" is UNet-L; the backbone size is ``--size`` for every method here.

Run folders: ``<out>/unet2``, ``<out>/unet3``, ``<out>/layering-phase1``, ``<out>/layering``,
``<out>/stardist``. A folder that already holds a finished run is reused (delete it to
retrain). Results: ``<out>/table1.csv`` and ``<out>/table1.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from layernet.cli import parse_key_values, quiet_tensorflow, run_main, setup_logging

quiet_tensorflow()

from bench import paper_tables  # noqa: E402
from bench.paper_tables import METHOD_NAMES, METRIC_COLUMNS, MATCHINGS  # noqa: E402

logger = logging.getLogger("table1")

METHODS = ("unet2", "unet3", "stardist", "layering")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, budget and model options shared by the table runners."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="synthetic", help="dataset (default synthetic)")
    data.add_argument("--data-dir", metavar="DIR", help="dataset folder")
    data.add_argument("--data-option", metavar="KEY=VALUE", action="append", default=[],
                      help="dataset option, repeatable (e.g. kind=cells for synthetic)")
    data.add_argument("--seed", type=int, default=0, help="split / training seed (0)")
    data.add_argument("--eval-split", default="test",
                      help="split every model is scored on (default test; use val where the "
                      "test split is kept aside, as for BBBC010 row D)")
    budget = parser.add_argument_group("budget (one of them)")
    exclusive = budget.add_mutually_exclusive_group(required=True)
    exclusive.add_argument("--minutes", type=float, help="wall-time budget per method")
    exclusive.add_argument("--epochs", type=int, help="epochs per method")
    model = parser.add_argument_group("model and training (default: train.py's)")
    model.add_argument("--config", metavar="JSON", help="config.json whose fields are the base")
    model.add_argument("--recipe", choices=("paper", "cpu"), help="training recipe of every "
                       "network (train.py --recipe), applied before the options below")
    model.add_argument("--authors", action="store_true", help="authors' loss variants")
    for flag, kind, text in (("--filters", int, "filters of the first level"),
                             ("--head-filters", int, "filters of the heads"),
                             ("--patch-size", int, "training crop side"),
                             ("--batch-size", int, "images per step"),
                             ("--steps-per-epoch", int, "steps per epoch (0 = one pass)"),
                             ("--lr", float, "initial learning rate"),
                             ("--min-size", int, "smallest object in pixels")):
        model.add_argument(flag, type=kind, help=text)
    model.add_argument("--phase2-share", type=float, default=0.5,
                       help="share of the layering budget spent on phase 2 (0.5)")
    parser.add_argument("--verbose", action="store_true", help="more log output")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--size", choices=("S", "M", "L"),
                        help="backbone UNet-S/M/L for every method (default: the recipe's, M; "
                        "the paper's Ours is L)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="methods to run (default all)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default runs/table1-<data>)")
    args = parser.parse_args(argv)
    check_budget(parser, args)
    return args


def check_budget(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject non-positive budgets and shares outside (0, 1)."""
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if not 0.0 < args.phase2_share < 1.0:
        parser.error("--phase2-share must be in (0, 1)")


def base_config(args: argparse.Namespace, size: str | None):
    """The shared configuration of every network trained by a table runner."""
    from layernet.config import Config, apply_presets

    values = apply_presets(Config().to_dict(), recipe=args.recipe, authors=args.authors)
    if args.config:
        values.update(Config.load(args.config).to_dict())
    overrides = {"data": args.data, "data_dir": args.data_dir,
                 "data_options": parse_key_values(args.data_option), "seed": args.seed,
                 "split_seed": args.seed,
                 "size": size, "filters": args.filters, "head_filters": args.head_filters,
                 "patch_size": args.patch_size, "batch_size": args.batch_size,
                 "steps_per_epoch": args.steps_per_epoch, "learning_rate": args.lr,
                 "min_size": args.min_size}
    values.update({key: value for key, value in overrides.items() if value is not None})
    values["phase"] = "layering"
    return Config.from_dict(values, source="command line")


def train_layering(args: argparse.Namespace, config, out: str, prefix: str = "layering"
                   ) -> tuple[str, str]:
    """Phase 1 then phase 2 (from phase 1's best.h5) with the split budget; both run folders."""
    first_share = 1.0 - args.phase2_share
    phase1 = config.replace(method="layering", phase="layering",
                            **paper_tables.budget_kwargs(args.minutes, args.epochs, first_share))
    first = paper_tables.train_run(phase1, os.path.join(out, f"{prefix}-phase1"))
    from layernet.config import RECIPE_PHASE2

    # the recipe's phase-2 settings (an explicit --lr wins)
    recipe = {key: value for key, value in RECIPE_PHASE2.get(args.recipe or "", {}).items()
              if not (key == "learning_rate" and args.lr is not None)}
    phase2 = config.replace(method="layering", phase="overlap", **recipe,
                            **paper_tables.budget_kwargs(args.minutes, args.epochs,
                                                         args.phase2_share))
    second = paper_tables.train_run(phase2, os.path.join(out, prefix),
                                    init=os.path.join(first, "best.h5"))
    return first, second


def run_stardist(args: argparse.Namespace, config, out: str) -> dict | str:
    """Train and score StarDist; its metrics, or the reason it could not run."""
    from bench import stardist_baseline

    missing = stardist_baseline.stardist_missing()
    if missing:
        return missing
    folder = os.path.join(out, "stardist")
    metrics_path = os.path.join(folder, f"eval-{args.eval_split}", "metrics.json")
    if os.path.exists(metrics_path):
        logger.info("%s already holds StarDist results; reusing them", folder)
    else:
        argv = ["--data", args.data, "--seed", str(args.seed), "--out", folder,
                "--eval-split", args.eval_split, "--val-fraction", str(config.val_fraction),
                "--patch-size", str(config.patch_size), "--batch-size", str(config.batch_size),
                "--steps-per-epoch", str(config.steps_per_epoch),
                "--normalize-low", str(config.normalize_low),
                "--normalize-high", str(config.normalize_high)]
        argv += ["--minutes", str(args.minutes), "--epochs", "1000000"] if args.minutes else [
            "--epochs", str(args.epochs)]
        if args.data_dir:
            argv += ["--data-dir", args.data_dir]
        for item in args.data_option:
            argv += ["--data-option", item]
        code = stardist_baseline.main(argv)
        if code:
            return f"bench/stardist_baseline.py exited with code {code}"
    return paper_tables.read_metrics(metrics_path)


def table_rows(results: dict[str, dict | str], paper: str | None, paper_note: str,
               data: str) -> list[dict]:
    """Rows of the Table 1 layout: per method ours (both matchings) and the paper's row."""
    rows = []
    for method in METHODS:
        if method not in results:
            continue
        result = results[method]
        name = METHOD_NAMES[method]
        if isinstance(result, str):
            rows.append({"data": data, "method": name, "source": f"not run: {result}"})
        else:
            for matching in MATCHINGS:
                rows.append({"data": data, "method": name, "source": f"ours ({matching})",
                             **result[matching]})
        if paper is not None:
            published = paper_tables.PAPER_TABLE1[paper][method]
            rows.append({"data": data, "method": name, "source": paper_note,
                         **dict(zip(METRIC_COLUMNS, map(float, published)))})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    config = base_config(args, args.size)
    out = args.out or os.path.join("runs", f"table1-{args.data}")
    os.makedirs(out, exist_ok=True)
    results: dict[str, dict | str] = {}
    budget = paper_tables.budget_kwargs(args.minutes, args.epochs)
    for method in METHODS:
        if method not in args.methods:
            continue
        if method in ("unet2", "unet3"):
            from layernet.config import RECIPE_LAYERING, Config

            # the recipe's settings of the layers do not apply to a baseline
            defaults = {key: getattr(Config(), key)
                        for key in RECIPE_LAYERING.get(args.recipe or "", {})}
            run = paper_tables.train_run(config.replace(method=method, **defaults, **budget),
                                         os.path.join(out, method))
            results[method] = paper_tables.evaluate_run(run, args.eval_split)
        elif method == "layering":
            _, run = train_layering(args, config, out)
            results[method] = paper_tables.evaluate_run(run, args.eval_split)
        else:
            results[method] = run_stardist(args, config, out)
            if isinstance(results[method], str):
                logger.warning("StarDist skipped: %s", results[method])
    paper, note = paper_tables.paper_dataset(args.data, config.data_options)
    rows = table_rows(results, paper, note, args.data)
    columns = ("data", "method", "source") + METRIC_COLUMNS
    title = (f"Table 1 on {args.data} ({args.eval_split} split, UNet-{config.size}, budget "
             f"{paper_tables.budget_text(args.minutes, args.epochs)} per method)")
    paper_tables.report(rows, columns, out, "table1", title)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]), debug="--verbose" in sys.argv)
