#!/usr/bin/env python
"""StarDist baseline (paper Sec. 3.3): 32 rays, trained from scratch on the same split as layernet.

    python bench/stardist_baseline.py --data synthetic --out runs/stardist-synthetic --minutes 5

Steps: load the dataset's train / val / test splits exactly as ``train.py`` does (same name,
folder, options and seed); normalise every image with the same percentiles; flatten each label
stack into one label image, splitting overlaps along the paper's pseudo-boundary
(:func:`layernet.baselines.flatten_with_pseudo_boundary`); train ``StarDist2D`` (32 rays, grid
2x2, StarDist's own augmentation-free defaults) for ``--epochs`` or until the ``--minutes``
budget is used up; tune its probability / NMS thresholds on the validation images; predict the
test images into label images ``<out>/pred/<name>.tif``; and score them with ``evaluate.py``
(both matchings) into ``<out>/eval/metrics.json``.

StarDist is an optional dependency (``pip install -r requirements-bench.txt``); without it the
script stops with a one-line message and exit code 3.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time

from layernet.cli import parse_key_values, quiet_tensorflow, run_main, setup_logging

quiet_tensorflow()

import numpy as np  # noqa: E402

logger = logging.getLogger("stardist_baseline")

N_RAYS = 32
MISSING_EXIT_CODE = 3


def stardist_missing() -> str | None:
    """Return why StarDist cannot be used (a one-line message), or None when it can."""
    for module in ("stardist", "csbdeep"):
        if importlib.util.find_spec(module) is None:
            return (f"the optional package {module!r} is not installed; StarDist baselines need "
                    f"'pip install -r requirements-bench.txt'")
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic", help="dataset name (default synthetic)")
    parser.add_argument("--data-dir", metavar="DIR", help="dataset folder")
    parser.add_argument("--data-option", metavar="KEY=VALUE", action="append", default=[],
                        help="dataset option, repeatable")
    parser.add_argument("--seed", type=int, default=0, help="split / training seed (0)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="validation share of the training pool, as train.py's (0.1)")
    parser.add_argument("--out", metavar="DIR", required=True, help="output folder")
    parser.add_argument("--eval-split", default="test",
                        help="split to predict and score (default test)")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="training wall-time budget in minutes (0 = no limit)")
    parser.add_argument("--epochs", type=int, default=400,
                        help="epochs (StarDist's default 400); with --minutes, an upper bound")
    parser.add_argument("--steps-per-epoch", type=int, default=0,
                        help="steps per epoch; 0 = one pass over the training images, as "
                        "train.py (StarDist's own default is 100)")
    parser.add_argument("--patch-size", type=int, default=256,
                        help="training patch side, reduced to fit the smallest image (256)")
    parser.add_argument("--batch-size", type=int, default=4, help="patches per step (4)")
    parser.add_argument("--normalize-low", type=float, default=1.0, help="low percentile (1)")
    parser.add_argument("--normalize-high", type=float, default=99.8,
                        help="high percentile (99.8)")
    parser.add_argument("--no-optimize-thresholds", action="store_true",
                        help="keep StarDist's default thresholds instead of tuning them on val")
    parser.add_argument("--verbose", action="store_true", help="more log output")
    return parser.parse_args(argv)


def prepare(samples: list, low: float, high: float) -> tuple[list, list, list[str]]:
    """Normalised ``(H, W, C)`` images, flattened label images and names of ``samples``."""
    from layernet.baselines import flatten_with_pseudo_boundary
    from layernet.instances import relabel_stack
    from layernet.normalize import percentile_normalize

    from stardist import fill_label_holes

    images, labels, names = [], [], []
    for sample in samples:
        images.append(percentile_normalize(sample.image, low, high).astype(np.float32))
        flat = flatten_with_pseudo_boundary(relabel_stack(sample.stack))
        labels.append(fill_label_holes(flat.astype(np.int32)))
        names.append(sample.name)
    return images, labels, names


def patch_side(images: list, wanted: int, multiple: int = 16) -> int:
    """Largest multiple of ``multiple`` that is <= ``wanted`` and fits every image."""
    side = min(wanted, *(min(image.shape[:2]) for image in images))
    side = side // multiple * multiple
    if side < multiple:
        raise ValueError(f"images are too small for StarDist patches (smallest side "
                         f"{min(min(image.shape[:2]) for image in images)} px)")
    return side


def train_and_predict(args: argparse.Namespace) -> dict:
    """Train, tune, predict the test split and score it; return the summary."""
    import keras

    from datasets import load_dataset
    from layernet.io import write_label_stack
    from layernet.training import TimeBudget
    from stardist.models import Config2D, StarDist2D

    options = parse_key_values(args.data_option)
    splits = {split: load_dataset(args.data, args.data_dir, split, args.seed, args.val_fraction,
                                  **options)
              for split in dict.fromkeys(("train", "val", args.eval_split))}
    for split, samples in splits.items():
        if not samples:
            raise ValueError(f"dataset {args.data!r} has no {split} images")
    x_train, y_train, _ = prepare(splits["train"], args.normalize_low, args.normalize_high)
    x_val, y_val, _ = prepare(splits["val"], args.normalize_low, args.normalize_high)
    x_test, _, test_names = prepare(splits[args.eval_split], args.normalize_low,
                                    args.normalize_high)
    channels = x_train[0].shape[-1]
    side = patch_side(x_train + x_val, args.patch_size)
    steps = args.steps_per_epoch or max(1, -(-len(x_train) // args.batch_size))
    keras.utils.set_random_seed(args.seed)
    config = Config2D(n_rays=N_RAYS, grid=(2, 2), n_channel_in=channels,
                      train_patch_size=(side, side), train_batch_size=args.batch_size,
                      train_epochs=args.epochs, train_steps_per_epoch=steps,
                      train_tensorboard=False, use_gpu=False)
    os.makedirs(args.out, exist_ok=True)
    model = StarDist2D(config, name="model", basedir=args.out)
    model.prepare_for_training()
    if args.minutes > 0:
        model.callbacks.append(TimeBudget(args.minutes))
    start = time.perf_counter()
    model.train(x_train, y_train, validation_data=(x_val, y_val), seed=args.seed,
                epochs=args.epochs, steps_per_epoch=steps)
    train_seconds = time.perf_counter() - start
    if not args.no_optimize_thresholds:
        model.optimize_thresholds(x_val, y_val)

    pred_dir = os.path.join(args.out, "pred")
    os.makedirs(pred_dir, exist_ok=True)
    for name, image in zip(test_names, x_test):
        labels, _ = model.predict_instances(image if channels > 1 else image[..., 0])
        write_label_stack(os.path.join(pred_dir, f"{name}.tif"), labels[None])

    from layernet_commands import evaluate

    eval_dir = os.path.join(args.out, f"eval-{args.eval_split}")
    argv = ["--pred", pred_dir, "--data", args.data, "--split", args.eval_split, "--split-seed",
            str(args.seed), "--val-fraction", str(args.val_fraction), "--out", eval_dir,
            "--worst", "0"]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    for item in args.data_option:
        argv += ["--data-option", item]
    evaluate.main(argv)
    with open(os.path.join(eval_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    metrics["train_seconds"] = train_seconds
    metrics["patch_size"] = side
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    missing = stardist_missing()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return MISSING_EXIT_CODE
    metrics = train_and_predict(args)
    reference = metrics["matchings"]["reference"]
    print(f"StarDist ({N_RAYS} rays) trained {metrics['train_seconds'] / 60:.1f} min; "
          f"{args.eval_split} meanAP {reference['meanAP']:.4f}, AJI {reference['AJI']:.4f} (reference matching); "
          f"report in {os.path.join(args.out, 'eval-' + args.eval_split)}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]), debug="--verbose" in sys.argv)
