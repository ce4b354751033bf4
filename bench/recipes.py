#!/usr/bin/env python
"""Sweep training recipes at a short, fixed budget and write one markdown table.

Every row of a grid is a set of ``train.py`` options; every (row, seed) is trained by
``train.py --phase layering`` (or the row's ``--method``) in its own process, exactly as a user
runs it, from the common options (``--`` ...) plus the row's own, for ``--steps`` steps (equal
steps: the comparison is about what a step learns; speed is in the seconds column) or
``--minutes`` (equal wall time: also rewards cheaper steps). With ``--phase2-steps`` the layering
rows also train phase 2 from phase 1's best.h5. Scores are the training's own validation (the
validation split, reference matching, Algorithm 1 on the validation images, after every epoch):
the best epoch's meanAP / AJI, and the mean of the last two epochs' (less noisy than the best
of many noisy epochs). A row's mean and spread over seeds go in the table.

``--parallel 2`` trains two runs at once, each pinned to its own core (``taskset``) with one
TensorFlow thread: on 2 cores about the throughput of one run on both, and the two runs of a pair
see the same machine. Seconds are then per core; compare them only within one sweep.

A run folder that already finished is reused, so an interrupted sweep continues where it stopped.
Example (BBBC010, the optimiser grid, 2 seeds, 400 steps each, about 1 hour on 2 cores)::

    python bench/recipes.py --grid optimizer --seeds 0 1 --steps 400 --parallel 2 \\
        --out runs/sweep-opt -- --data bbbc010 --data-dir ../shared/data/BBBC010 \\
        --size M --filters 16 --head-filters 32 --patch-size 256 --batch-size 4

``--row NAME='--opt value ...'`` adds rows of your own (repeatable); ``--grid`` picks named grids
of :data:`GRIDS` (repeatable; ``--list`` prints them).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from layernet.runfolder import read_history  # noqa: E402

GRIDS: dict[str, dict[str, str]] = {
    "optimizer": {
        "rmsprop-1e-3-const": "--optimizer rmsprop --lr 1e-3",
        "rmsprop-1e-3-cosine": "--optimizer rmsprop --lr 1e-3 --lr-schedule cosine --warmup 0.05",
        "adam-1e-3-cosine": "--optimizer adam --lr 1e-3 --lr-schedule cosine --warmup 0.05",
        "adam-3e-3-cosine": "--optimizer adam --lr 3e-3 --lr-schedule cosine --warmup 0.05",
        "adamw-3e-3-cosine": "--optimizer adamw --weight-decay 1e-4 --lr 3e-3 "
                             "--lr-schedule cosine --warmup 0.05",
        "adam-3e-3-onecycle": "--optimizer adam --lr 3e-3 --lr-schedule onecycle --warmup 0.3",
        "adam-3e-3-cosine-ema": "--optimizer adam --lr 3e-3 --lr-schedule cosine --warmup 0.05 "
                                "--ema 0.99",
    },
    "augmentation": {
        "all": "",
        "no-elastic": "--set elastic_probability=0",
        "no-free-rotation": "--set rotate=false",
        "no-gamma": "--set gamma_probability=0",
        "flips-only": "--set elastic_probability=0 --set rotate=false --set gamma_probability=0",
        "zoom-1.25": "--set zoom_probability=0.5 --set zoom_range=1.25",
    },
    "network": {
        "M-16-h32": "--size M --filters 16 --head-filters 32",
        "S-16-h32": "--size S --filters 16 --head-filters 32",
        "M-32-h32": "--size M --filters 32 --head-filters 32",
        "M-16-h16": "--size M --filters 16 --head-filters 16",
        "bn-0.99": "--set bn_momentum=0.99",
    },
    "loss": {
        "paper": "",
        "sparsity-0.01": "--set sparsity_weight=0.01",
        "sparsity-0.3": "--set sparsity_weight=0.3",
        "mean-normalized": "--set mean_mode=normalized",
        "repulsion-pair": "--set repulsion_mode=pair",
        "sparsity-authors": "--set sparsity_mode=authors",
        "per-image": "--set layering_per_image=true",
    },
    "batch": {
        "b4-p256": "--batch-size 4 --patch-size 256",
        "b8-p192": "--batch-size 8 --patch-size 192",
        "b2-p384": "--batch-size 2 --patch-size 384",
    },
}
"""Named grids: row name -> ``train.py`` options added to the common ones."""


@dataclass
class Result:
    """Scores of one (row, seed) run."""

    row: str
    seed: int
    steps: int = 0
    seconds: float = 0.0
    best_map: float = float("nan")
    best_aji: float = float("nan")
    last_map: float = float("nan")
    last_aji: float = float("nan")
    phase2: dict = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", action="append", default=[], choices=sorted(GRIDS),
                        help="named grid (repeatable)")
    parser.add_argument("--row", action="append", default=[], metavar="NAME=OPTIONS",
                        help="a row of your own: NAME='train.py options' (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="training steps per run (phase 1)")
    budget.add_argument("--minutes", type=float, help="wall-time budget per run (phase 1)")
    parser.add_argument("--steps-per-epoch", type=int, default=100,
                        help="validation every this many steps (100)")
    parser.add_argument("--phase2-steps", type=int, default=0,
                        help="also train phase 2 for this many steps (layering rows)")
    parser.add_argument("--parallel", type=int, default=1, choices=(1, 2),
                        help="runs at once, each pinned to one core (2 on a 2-core machine)")
    parser.add_argument("--out", help="folder of the runs and of table.md")
    parser.add_argument("--list", action="store_true", help="print the grids and stop")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after --: train.py options common to every row")
    args = parser.parse_args(argv)
    if args.list:
        return args
    if not args.out:
        parser.error("--out is required")
    if args.steps is None and args.minutes is None:
        parser.error("give --steps or --minutes")
    if not args.grid and not args.row:
        parser.error("give --grid and/or --row")
    return args


def grid_rows(grids: list[str], extra: list[str]) -> dict[str, str]:
    """Rows of the named grids and of ``--row NAME=OPTIONS`` items, in order (names unique)."""
    rows: dict[str, str] = {}
    for name in grids:
        for row, options in GRIDS[name].items():
            rows[row if row not in rows else f"{name}:{row}"] = options
    for item in extra:
        if "=" not in item:
            raise SystemExit(f"--row {item!r}: expected NAME=OPTIONS")
        name, options = item.split("=", 1)
        rows[name.strip()] = options
    return rows


def budget_args(args: argparse.Namespace, steps: int | None) -> list[str]:
    """``train.py`` options of a budget of ``steps`` (or of ``args.minutes``)."""
    per_epoch = args.steps_per_epoch
    if steps is not None:
        per_epoch = min(per_epoch, steps)
        return ["--epochs", str(max(1, round(steps / per_epoch))), "--steps-per-epoch",
                str(per_epoch)]
    return ["--minutes", f"{args.minutes:g}", "--epochs", "100000", "--steps-per-epoch",
            str(per_epoch)]


def command_of(common: list[str], options: str, seed: int, budget: list[str], out: str,
               phase: list[str]) -> list[str]:
    """The ``train.py`` command of one run (common options, then the row's, which win)."""
    return [sys.executable, "train.py", *phase, *common, *shlex.split(options), "--seed",
            str(seed), *budget, "--out", out]


def finished(run_dir: str, budget: list[str]) -> bool:
    """Whether ``run_dir`` holds a run that reached its epoch count (or its time budget)."""
    history = read_history(os.path.join(run_dir, "history.csv"))
    if not history:
        return False
    if "--minutes" in budget:
        return os.path.exists(os.path.join(run_dir, "done"))
    return int(history[-1]["epoch"]) >= int(budget[budget.index("--epochs") + 1])


def scores_of(run_dir: str) -> dict[str, float]:
    """Steps, seconds, best and last-two-epoch validation meanAP / AJI of a run folder."""
    history = read_history(os.path.join(run_dir, "history.csv"))
    best = max(history, key=lambda row: (float(row["val_meanAP"]), float(row["val_AJI"])))
    tail = history[-2:]
    return {"steps": int(history[-1]["step"]),
            "seconds": sum(float(row["seconds"]) for row in history),
            "best_map": float(best["val_meanAP"]), "best_aji": float(best["val_AJI"]),
            "last_map": statistics.fmean(float(row["val_meanAP"]) for row in tail),
            "last_aji": statistics.fmean(float(row["val_AJI"]) for row in tail)}


def launch(command: list[str], log: str, core: int | None) -> subprocess.Popen:
    """Start one training; with ``core``, pinned to it with one TensorFlow thread."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if core is not None:
        env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1")
        command = ["taskset", "-c", str(core), *command]
    handle = open(log, "a", encoding="utf-8")
    handle.write("$ " + shlex.join(command) + "\n")
    handle.flush()
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)


def run_jobs(jobs: list[tuple[list[str], str, str]], parallel: int) -> None:
    """Run ``(command, log, run_dir)`` jobs, ``parallel`` at a time; a failure stops the sweep."""
    running: list[tuple[subprocess.Popen, int, str, str]] = []
    pending = list(jobs)
    free = list(range(parallel))
    while pending or running:
        while pending and free:
            command, log, run_dir = pending.pop(0)
            core = free.pop(0)
            print(f"start: {run_dir}", flush=True)
            running.append((launch(command, log, core if parallel > 1 else None), core, log,
                            run_dir))
        time.sleep(2)
        for job in list(running):
            process, core, log, run_dir = job
            if process.poll() is None:
                continue
            running.remove(job)
            free.append(core)
            if process.returncode != 0:
                for other in running:
                    other[0].terminate()
                raise SystemExit(f"{run_dir}: train.py failed (exit {process.returncode}); "
                                 f"see {log}")
            with open(os.path.join(run_dir, "done"), "w", encoding="utf-8"):
                pass
            print(f"done:  {run_dir}", flush=True)


def format_table(rows: dict[str, str], results: list[Result], common: list[str],
                 budget: list[str], phase2: bool) -> str:
    """The markdown table: one line per row (mean and spread over seeds) and its command."""
    lines = ["| row | seeds | steps | s / step | best val meanAP | best val AJI | "
             "last-2 val meanAP | last-2 val AJI |"
             + (" phase 2 best meanAP | phase 2 best AJI |" if phase2 else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if phase2 else "")]

    def cell(values: list[float]) -> str:
        if len(values) > 1:
            return f"{statistics.fmean(values):.4f} ± {statistics.pstdev(values):.4f}"
        return f"{values[0]:.4f}"

    for name in rows:
        mine = [result for result in results if result.row == name]
        if not mine:
            continue
        line = (f"| {name} | {','.join(str(r.seed) for r in mine)} | "
                f"{round(statistics.fmean(r.steps for r in mine))} | "
                f"{statistics.fmean(r.seconds / max(r.steps, 1) for r in mine):.2f} | "
                f"{cell([r.best_map for r in mine])} | {cell([r.best_aji for r in mine])} | "
                f"{cell([r.last_map for r in mine])} | {cell([r.last_aji for r in mine])} |")
        if phase2:
            line += (f" {cell([r.phase2.get('best_map', float('nan')) for r in mine])} |"
                     f" {cell([r.phase2.get('best_aji', float('nan')) for r in mine])} |")
        lines.append(line)
    lines.append("")
    lines.append("Commands (`SEED` = each seed; common options: "
                 f"`{shlex.join(common)}`):")
    lines.append("")
    for name, options in rows.items():
        lines.append(f"- {name}: `python train.py {shlex.join(common)} {options} --seed SEED "
                     f"{shlex.join(budget)}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, rows in GRIDS.items():
            print(f"{name}:")
            for row, options in rows.items():
                print(f"  {row:<24} {options}")
        return 0
    common = [item for item in args.train_args if item != "--"]
    rows = grid_rows(args.grid, args.row)
    os.makedirs(args.out, exist_ok=True)
    budget = budget_args(args, args.steps)
    jobs = []
    for name in rows:
        for seed in args.seeds:
            run_dir = os.path.join(args.out, f"{name}-s{seed}".replace(":", "-"))
            if not finished(run_dir, budget):
                jobs.append((command_of(common, rows[name], seed, budget, run_dir, []),
                             run_dir + ".log", run_dir))
    run_jobs(jobs, args.parallel)
    phase2 = args.phase2_steps > 0
    if phase2:
        budget2 = budget_args(args, args.phase2_steps)
        jobs = []
        for name in rows:
            if "--method" in shlex.split(rows[name]):
                continue
            for seed in args.seeds:
                first = os.path.join(args.out, f"{name}-s{seed}".replace(":", "-"))
                second = first + "-phase2"
                if not finished(second, budget2):
                    init = ["--phase", "overlap", "--init", os.path.join(first, "best.h5")]
                    jobs.append((command_of([], "", seed, budget2, second, init),
                                 second + ".log", second))
        run_jobs(jobs, args.parallel)
    results = []
    for name in rows:
        for seed in args.seeds:
            run_dir = os.path.join(args.out, f"{name}-s{seed}".replace(":", "-"))
            result = Result(name, seed, **scores_of(run_dir))
            if phase2 and os.path.exists(run_dir + "-phase2"):
                result.phase2 = scores_of(run_dir + "-phase2")
            results.append(result)
    table = format_table(rows, results, common, budget, phase2)
    path = os.path.join(args.out, "table.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(table)
    print(table)
    print(f"table: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
