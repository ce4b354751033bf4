#!/usr/bin/env python
"""Throughput of the training input pipeline alone (tf.data, every augmentation on).

Builds the real pipeline (:func:`layernet.pipeline.make_dataset`, training mode: random crops,
flips, rotation, gamma, elastic deformation, padded batching) on synthetic images and reports the
batches per second it delivers when nothing else runs, next to the rate at which a training step
consumes batches (``bench/speed.py`` prints both in one table). Example::

    python bench/pipeline.py --patch-size 256 --batch-size 4 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pipeline_dataset(config, image_side: int = 512, count: int = 8):
    """The training ``tf.data`` pipeline of ``config`` on ``count`` synthetic images."""
    from datasets import load_dataset
    from layernet.pipeline import make_dataset, prepare_samples

    samples = load_dataset("synthetic", split="trainval", seed=config.seed, size=image_side,
                           count=count)
    return make_dataset(prepare_samples(samples, config), config, training=True)


def batches_per_second(dataset, seconds: float = 10.0, warmup: int = 3) -> float:
    """Batches per second drawn from ``dataset`` for about ``seconds`` after ``warmup`` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += 1
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-side", type=int, default=512, help="side of the source images")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    from layernet.config import Config

    config = Config(patch_size=args.patch_size, batch_size=args.batch_size).validate()
    rate = batches_per_second(pipeline_dataset(config, args.image_side), args.seconds)
    print(f"pipeline: {rate:.2f} batches/s ({rate * args.batch_size:.1f} patches/s) of "
          f"{args.batch_size} x {args.patch_size}^2, all augmentations, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
