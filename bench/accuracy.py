#!/usr/bin/env python
"""Accuracy at a wall-clock budget: train on a dataset for ``--minutes``, then evaluate a split.

For the layering method the budget is shared between phase 1 (layering) and phase 2 (overlap
completion, started from phase 1's best.h5) by ``--phase1-share``; the baselines (``--method
unet2|unet3``) train in one phase. Training and evaluation run through the project's own command
lines (``train.py``, ``evaluate.py``), exactly as a user would run them. Prints meanAP and AJI for
both matchings and writes the training curves (``history.csv`` of every phase) to a PNG.

Example (BBBC010, 30 minutes with the CPU recipe, scored on the validation split with and
without test-time augmentation)::

    python bench/accuracy.py --data bbbc010 --data-dir ../shared/data/BBBC010 --minutes 30 \
        --tta --out runs/acc-bbbc010 -- --recipe cpu

Arguments after ``--`` go to ``train.py`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from layernet.runfolder import read_history  # noqa: E402


def run(command: list[str]) -> None:
    """Run one of the project's CLIs, streaming its output; stop on failure."""
    print("$ " + " ".join(command), flush=True)
    done = subprocess.run(command, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"command failed with exit code {done.returncode}: {' '.join(command)}")


def plot_curves(runs: list[tuple[str, str]], path: str) -> None:
    """Plot loss and validation meanAP/AJI of each phase against the global step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0.0
    for label, run_dir in runs:
        history = read_history(os.path.join(run_dir, "history.csv"))
        if not history:
            continue
        steps = [offset + row["step"] for row in history]
        left.plot(steps, [row["loss"] for row in history], marker=".", label=f"{label} loss")
        right.plot(steps, [row.get("val_meanAP", float("nan")) for row in history], marker=".",
                   label=f"{label} val meanAP")
        right.plot(steps, [row.get("val_AJI", float("nan")) for row in history], marker=".",
                   linestyle="--", label=f"{label} val AJI")
        offset = steps[-1]
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.set_yscale("log")
    left.legend()
    right.set_xlabel("step")
    right.set_ylabel("validation score")
    right.set_ylim(0, 1)
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--data-dir")
    parser.add_argument("--method", default="layering", choices=("layering", "unet2", "unet3"))
    parser.add_argument("--minutes", type=float, required=True, help="total training budget")
    parser.add_argument("--phase1-share", type=float, default=0.7,
                        help="share of the budget for phase 1 (layering method only); 1: no "
                             "phase 2, phase 1's best.h5 is scored")
    parser.add_argument("--split", default="val", help="split to evaluate (never tune on test)")
    parser.add_argument("--tta", action="store_true",
                        help="also evaluate with test-time augmentation (evaluate.py --tta)")
    parser.add_argument("--out", required=True, help="folder for the runs and the report")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after --: extra train.py options")
    args = parser.parse_args()
    if not 0.0 < args.phase1_share <= 1.0:
        parser.error(f"--phase1-share must be in (0, 1], got {args.phase1_share}")
    extra = [item for item in args.train_args if item != "--"]
    if "--train-on-val" in extra and args.split != "test":
        parser.error(f"--train-on-val trains on the validation images, so the {args.split!r} "
                     "split holds images the model has seen: use --split test")
    os.makedirs(args.out, exist_ok=True)
    data = ["--data", args.data] + (["--data-dir", args.data_dir] if args.data_dir else [])
    python = sys.executable
    start = time.perf_counter()
    runs: list[tuple[str, str]] = []
    many_epochs = ["--epochs", "100000"]
    if args.method == "layering":
        first = os.path.join(args.out, "phase1")
        second = os.path.join(args.out, "phase2")
        run([python, "train.py", "--phase", "layering", *data, "--minutes",
             f"{args.minutes * args.phase1_share:.3f}", *many_epochs, "--out", first, *extra])
        runs.append(("phase 1", first))
        model = os.path.join(first, "best.h5")
        if args.phase1_share < 1.0:
            remaining = args.minutes - (time.perf_counter() - start) / 60.0
            run([python, "train.py", "--phase", "overlap", "--init", model, "--minutes",
                 f"{max(remaining, 0.1):.3f}", *many_epochs, "--out", second, *extra])
            runs.append(("phase 2", second))
            model = os.path.join(second, "best.h5")
    else:
        first = os.path.join(args.out, args.method)
        run([python, "train.py", "--method", args.method, *data, "--minutes", f"{args.minutes:.3f}",
             *many_epochs, "--out", first, *extra])
        runs.append((args.method, first))
        model = os.path.join(first, "best.h5")
    trained = (time.perf_counter() - start) / 60.0
    steps = [int(read_history(os.path.join(run_dir, "history.csv"))[-1]["step"])
             for _, run_dir in runs]
    reports = {"": os.path.join(args.out, f"eval-{args.split}")}
    if args.tta:
        reports[" + TTA"] = os.path.join(args.out, f"eval-{args.split}-tta")
    metrics = {}
    for label, report in reports.items():
        run([python, "evaluate.py", "--model", model, *data, "--split", args.split, "--out",
             report, *(["--tta"] if label else [])])
        with open(os.path.join(report, "metrics.json"), encoding="utf-8") as handle:
            metrics[label] = json.load(handle)
    curve = os.path.join(args.out, "training_curve.png")
    plot_curves(runs, curve)
    print()
    print(f"{args.method} on {args.data} ({args.split} split), trained {trained:.1f} min "
          f"(budget {args.minutes:g} min; steps: {' + '.join(map(str, steps))}), "
          f"{os.cpu_count()} CPU cores")
    print(f"{'matching':<18} {'AP@0.5':>7} {'AP@0.7':>7} {'AP@0.9':>7} {'meanAP':>7} {'AJI':>7}"
          f" {'eval s':>7}")
    for label, result in metrics.items():
        for matching, summary in result["matchings"].items():
            print(f"{matching + label:<18} {summary['AP@0.5']:7.4f} {summary['AP@0.7']:7.4f} "
                  f"{summary['AP@0.9']:7.4f} {summary['meanAP']:7.4f} {summary['AJI']:7.4f} "
                  f"{_seconds(result):7.1f}")
    print(f"training curve: {curve}")
    print(f"reports: {', '.join(reports.values())}")


def _seconds(result: dict) -> float:
    """Seconds of an evaluate.py run's normalisation, network and post-processing, as its
    metrics.json records them."""
    return float(sum(result.get("seconds", {}).values()))


if __name__ == "__main__":
    main()
