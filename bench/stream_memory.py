#!/usr/bin/env python
"""Peak memory of training on a folder dataset, streamed from the disk cache versus in memory.

Writes a folder dataset (``images/<stem>.png`` 8-bit, ``masks/<stem>.png`` label images with a
few disks) of ``--count`` images of ``--side`` x ``--side`` pixels and a small version of it
(the first ``--small-count`` images), then trains a tiny model for a few steps on each, every run
in a fresh process, and reports the wall time and the process's peak resident memory
(``ru_maxrss``). Example::

    python bench/stream_memory.py --count 64 --side 1024 --modes on off

Streaming prepares every image once into ``<run>/cache`` and reads one image at a time, so its
peak should not grow with the number of images; in memory, the peak grows with the dataset.
``tests/test_stream_memory.py`` asserts the first.

Measured on the 2-core CI machine (TF 2.21 CPU, defaults: 4 and 64 images of 1024 x 1024, of which
2 and 62 trained, one validation image each; 32 and 512 MB decoded): streamed 975 and 983 MB peak,
in memory 1008 and 2780 MB. Since the validation split holds at least 3 images (or all but one of a
smaller pool), 1 and 60 images train.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_TRAINING = dict(size="S", filters=4, head_filters=4, layers=4, patch_size=64, batch_size=2,
                     epochs=1, steps_per_epoch=2, min_size=30)
"""The model and schedule of a measurement (small: the data, not the network, should count)."""

DATA_OPTIONS = {"test_fraction": 0.01}
"""One test image at the sizes used here (equal for both dataset sizes)."""
VAL_FRACTION = 0.01
"""The fewest validation images (``datasets.MIN_VAL_IMAGES``, or all but one of a smaller pool)."""


def decoded_megabytes(count: int, side: int) -> float:
    """Decoded size in MB of ``count`` images as the loaders return them: a float32 image and a
    one-slice int32 label stack of ``side`` x ``side`` pixels each (the disks never overlap)."""
    return count * side * side * 8 / 2 ** 20


def write_folder_dataset(root: str, count: int, side: int, disks: int = 6, seed: int = 0) -> None:
    """Write ``count`` images with label masks in the folder-dataset layout under ``root``.

    Image ``k`` depends only on ``(seed, k)``, so a smaller dataset is the start of a larger one.
    Each image is a smooth background with ``disks`` bright non-overlapping disks and noise
    (8-bit PNG); its mask is the label image of the disks (8-bit PNG, ids ``1..disks``).
    """
    import numpy as np

    from layernet.io import write_image_atomic

    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    rows = np.arange(side, dtype=np.float32)[:, None]
    cols = np.arange(side, dtype=np.float32)[None, :]
    background = 40.0 + 30.0 * (rows + cols) / (2 * side)
    radius = side / (4.0 * disks)
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        labels = np.zeros((side, side), np.uint8)
        for label, centre in enumerate(np.linspace(2 * radius, side - 2 * radius, disks), 1):
            y = rng.uniform(2 * radius, side - 2 * radius)
            labels[(rows - y) ** 2 + (cols - centre) ** 2 <= radius ** 2] = label
        noise = rng.integers(0, 8, size=(side, side), dtype=np.uint8)
        image = (background + 120.0 * (labels > 0)).astype(np.uint8) + noise
        write_image_atomic(os.path.join(root, "images", f"img{index:05d}.png"), image)
        write_image_atomic(os.path.join(root, "masks", f"img{index:05d}.png"), labels)


def measure_training(data_dir: str, run_dir: str, streaming: str) -> tuple[float, float, int]:
    """Train :data:`TINY_TRAINING` on a folder dataset in this process.

    Returns
    -------
    seconds : float
        Wall time of :func:`layernet.training.train` (data preparation included).
    peak_mb : float
        Peak resident memory of this process (``ru_maxrss``) in MB.
    images : int
        Training images.
    """
    from datasets import load_source
    from layernet.cli import setup_logging
    from layernet.config import Config
    from layernet.training import train

    setup_logging()
    config = Config(data="folder", data_dir=data_dir, data_options=dict(DATA_OPTIONS),
                    val_fraction=VAL_FRACTION, streaming=streaming, **TINY_TRAINING).validate()
    start = time.perf_counter()
    train(config, run_dir, verbose=0, load_source=load_source)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    images = len(load_source("folder", data_dir, "train", config.split_seed, VAL_FRACTION,
                             **DATA_OPTIONS))
    return seconds, peak_mb, images


def start_measurement(data_dir: str, run_dir: str, streaming: str) -> subprocess.Popen:
    """Start :func:`measure_training` in a fresh Python process (several may run at once: each
    reports its own peak); :func:`finish_measurement` collects its numbers."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "bench.stream_memory", "--measure", data_dir,
                             run_dir, streaming], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)


def finish_measurement(process: subprocess.Popen) -> tuple[float, float, int]:
    """Wait for a :func:`start_measurement` process; return its seconds, peak MB and images."""
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"measurement failed: {stderr.strip()[-2000:]}")
    seconds, peak_mb, images = stdout.split()[-3:]
    return float(seconds), float(peak_mb), int(images)


def run_measurement(data_dir: str, run_dir: str, streaming: str) -> tuple[float, float, int]:
    """:func:`measure_training` in a fresh Python process; returns its three numbers."""
    return finish_measurement(start_measurement(data_dir, run_dir, streaming))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64, help="images of the big dataset (64)")
    parser.add_argument("--small-count", type=int, default=4,
                        help="images of the small dataset (4)")
    parser.add_argument("--side", type=int, default=1024, help="image side in pixels (1024)")
    parser.add_argument("--modes", nargs="+", choices=("on", "off"), default=["on"],
                        help="streaming on (train.py --stream) and/or off (--no-stream, in "
                        "memory); default on")
    parser.add_argument("--measure", nargs=3, metavar=("DATA", "RUN", "STREAMING"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # helper process: one measurement
        seconds, peak_mb, images = measure_training(*args.measure)
        print(f"{seconds:.1f} {peak_mb:.0f} {images}")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        runs = [(name, count, mode) for mode in args.modes
                for name, count in (("small", args.small_count), ("big", args.count))]
        start = time.perf_counter()
        for name, count in (("small", args.small_count), ("big", args.count)):
            write_folder_dataset(os.path.join(folder, name), count, args.side)
        print(f"wrote {args.small_count} + {args.count} images of {args.side} x {args.side} in "
              f"{time.perf_counter() - start:.1f} s")
        print(f"{'dataset':>8} {'images':>7} {'decoded MB':>11} {'mode':>10} {'seconds':>8} "
              f"{'peak MB':>8}")
        for index, (name, count, streaming) in enumerate(runs):
            seconds, peak_mb, images = run_measurement(
                os.path.join(folder, name), os.path.join(folder, f"run{index}"), streaming)
            mode = "streamed" if streaming == "on" else "in memory"
            print(f"{name:>8} {images:>7} {decoded_megabytes(count, args.side):>11.0f} "
                  f"{mode:>10} {seconds:>8.1f} {peak_mb:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
