#!/usr/bin/env python
"""Does bf16 training reach the float32 accuracy? Same seeds, same steps, one table.

For every seed and precision, ``train.py --phase layering`` trains the same model on the same
data for the same number of steps (defaults: the README demo's phase 1 on synthetic worms), each
in its own process, exactly as a user runs it. The table gives, per run, the best validation
meanAP and the AJI at that epoch (``history.csv``) and the training seconds; the last lines give
the mean over seeds per precision and the seed-to-seed spread of float32, which is the noise a
difference between precisions must be compared with. Example (about 12 minutes on 2 cores)::

    python bench/precision_accuracy.py --seeds 0 1 --out runs/precision-accuracy

Arguments after ``--`` replace the default ``train.py`` model and budget options.

``--model RUN`` instead scores one trained model's predictions in each precision
(``evaluate.py --precision``) on ``--split`` of its dataset (``--data`` / ``--data-dir``, default
the run's): does a float32-trained model predict as well in bf16? Example::

    python bench/precision_accuracy.py --model runs/bbbc-o --split val --out runs/prec-predict
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from layernet.runfolder import read_history  # noqa: E402

DEFAULT_TRAIN_ARGS = ["--size", "S", "--filters", "16", "--head-filters", "32",
                      "--patch-size", "128", "--batch-size", "4", "--lr", "1e-3",
                      "--epochs", "10", "--steps-per-epoch", "40"]


def best_epoch(history: list[dict]) -> dict:
    """The row of the best validation meanAP (the epoch whose weights are ``best.h5``)."""
    return max(history, key=lambda row: float(row["val_meanAP"]))


def score_predictions(args: argparse.Namespace) -> int:
    """``--model``: one ``evaluate.py`` per precision; print meanAP, AJI and seconds."""
    import json

    print(f"{'precision':<16} {'images':>6} {'meanAP':>8} {'AJI':>7} {'network s':>10} "
          f"{'total s':>8}", flush=True)
    for precision in args.precisions:
        out = os.path.join(args.out, f"eval-{precision}")
        command = [sys.executable, os.path.join(REPO, "evaluate.py"), "--model", args.model,
                   "--split", args.split, "--precision", precision, "--out", out]
        command += ["--data", args.data] if args.data else []
        command += ["--data-dir", args.data_dir] if args.data_dir else []
        subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as handle:
            metrics = json.load(handle)
        pooled, seconds = metrics["matchings"]["reference"], metrics.get("seconds", {})
        print(f"{precision:<16} {metrics['n_images']:>6} {pooled['meanAP']:>8.4f} "
              f"{pooled['AJI']:>7.4f} {seconds.get('network', 0.0):>10.2f} "
              f"{sum(seconds.values()):>8.2f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, DEFAULT_TRAIN_ARGS)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"],
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--data", help="dataset (default: synthetic; with --model the run's)")
    parser.add_argument("--out", required=True, help="folder of the run folders")
    parser.add_argument("--model", help="score this trained model's predictions instead")
    parser.add_argument("--data-dir", help="with --model: dataset folder (default: the run's)")
    parser.add_argument("--split", default="val", help="with --model: split to score (val)")
    args = parser.parse_args(own)
    if args.model:
        return score_predictions(args)
    args.data = args.data or "synthetic"
    results: dict[str, list[tuple[float, float, float]]] = {p: [] for p in args.precisions}
    print(f"{'precision':<16} {'seed':>4} {'steps':>6} {'best val meanAP':>16} {'AJI':>7} "
          f"{'train s':>8}", flush=True)
    for seed in args.seeds:
        for precision in args.precisions:
            run = os.path.join(args.out, f"{precision}-seed{seed}")
            if not os.path.exists(os.path.join(run, "history.csv")):
                command = [sys.executable, os.path.join(REPO, "train.py"), "--phase", "layering",
                           "--data", args.data, "--seed", str(seed), "--precision", precision,
                           "--out", run, *train_args]
                subprocess.run(command, check=True, cwd=REPO)
            history = read_history(os.path.join(run, "history.csv"))
            best = best_epoch(history)
            seconds = sum(float(row["seconds"]) for row in history)
            results[precision].append((float(best["val_meanAP"]), float(best["val_AJI"]),
                                       seconds))
            print(f"{precision:<16} {seed:>4} {int(history[-1]['step']):>6} "
                  f"{float(best['val_meanAP']):>16.4f} {float(best['val_AJI']):>7.4f} "
                  f"{seconds:>8.0f}", flush=True)
    for precision, rows in results.items():
        print(f"mean {precision:<11} {'':>11} {statistics.mean(r[0] for r in rows):>16.4f} "
              f"{statistics.mean(r[1] for r in rows):>7.4f} "
              f"{statistics.mean(r[2] for r in rows):>8.0f}")
    if "float32" in results and len(results["float32"]) > 1:
        scores = [r[0] for r in results["float32"]]
        print(f"float32 seed-to-seed spread of best val meanAP: {max(scores) - min(scores):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
