#!/usr/bin/env python
"""Peak memory of ``predict.py`` on a large image, tiled versus in one piece.

Writes a random 16-bit gray image of ``--side`` x ``--side`` pixels and a run folder with an
untrained model (the architecture, not the weights, sets the memory), then runs ``predict.py``
in a fresh process per tile setting and reports its wall time and peak resident memory
(``ru_maxrss`` of the child). Example::

    python bench/predict_memory.py --side 4096 --tile-sizes auto 0

Measured on the 2-core CI machine (TF 2.21 CPU, UNet-S, 4 filters, 4 layers, 4096 x 4096):
tiled (512 px tiles) 1.1 GB peak, in one piece 3.5 GB; tiled with the 768 x 768 budget
that replaced them (balanced tiles), 1.1 GB. On 2026-11-29 (AVX2 machine, overlapped
post-processing and writing) tiled: 1542, 1555 and 1564 MB in three runs, and 1678 MB once
within the full test suite. ``tests/test_memory.py`` holds tiled prediction of 4096 x 4096
under :data:`TILED_PEAK_LIMIT_MB`. Prediction in strips, whose memory is bounded by a strip of
tiles, is measured against the image size by ``bench/big_image.py``.
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

TILED_PEAK_LIMIT_MB = 1800
"""Documented bound of the peak memory of tiled prediction of a 4096 x 4096 image (tiny model)."""

TINY_MODEL = dict(size="S", filters=4, head_filters=4, layers=4, min_size=30, patch_size=32)


def write_untrained_run(run: str, seed: int = 0, **config_options: object) -> str:
    """Write a run folder with an untrained model of ``Config(**config_options)``; return it."""
    import keras

    from layernet import runfolder
    from layernet.config import Config
    from layernet.model import build_model

    os.makedirs(run, exist_ok=True)
    config = Config(**config_options).validate()
    keras.utils.set_random_seed(seed)
    config.save(os.path.join(run, runfolder.CONFIG_FILE))
    runfolder.save_model_atomic(build_model(config), os.path.join(run, runfolder.BEST_FILE))
    return run


def make_inputs(folder: str, side: int, seed: int = 0) -> tuple[str, str]:
    """Write ``image.tif`` (``side`` x ``side`` uint16) and a tiny run folder; return both paths."""
    import numpy as np
    import tifffile

    image_path = os.path.join(folder, "image.tif")
    image = np.random.default_rng(seed).random((side, side)) * 4000
    tifffile.imwrite(image_path, image.astype(np.uint16))
    run = write_untrained_run(os.path.join(folder, "run"), seed, **TINY_MODEL)
    return image_path, run


def measure_predict(image_path: str, run: str, out: str, tile_size: str = "auto",
                    extra_args: tuple[str, ...] = ("--no-overlay",)
                    ) -> tuple[float, float, str]:
    """Run ``predict.py`` in a child process; return ``(seconds, peak resident MB, stderr)``.

    ``extra_args`` are further options of ``predict.py`` (default: no overlay).

    Each measurement must run in a process whose earlier children were smaller, because
    ``RUSAGE_CHILDREN`` reports the largest child so far: call it once per fresh process, or
    compare only increasing settings (see :func:`main`, which uses one helper process per run).
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.join(REPO, "predict.py"), "--model", run, "--out", out,
               "--quiet", "--tile-size", str(tile_size), *extra_args, image_path]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"predict.py failed: {done.stderr.strip().splitlines()[-1:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, peak_kb / 1024.0, done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=4096, help="image side in pixels (4096)")
    parser.add_argument("--tile-sizes", nargs="+", default=["auto", "0"],
                        help="predict.py --tile-size values to compare (auto 0)")
    parser.add_argument("--measure", nargs=3, metavar=("IMAGE", "RUN", "TILE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # helper process: one measurement, so RUSAGE_CHILDREN sees one child
        import tifffile

        image_path, run, tile = args.measure
        with tempfile.TemporaryDirectory() as out:
            seconds, peak, _ = measure_predict(image_path, run, out, tile)
            stem = os.path.splitext(os.path.basename(image_path))[0]
            with tifffile.TiffFile(os.path.join(out, f"{stem}.layers.tif")) as result:
                shape = "x".join(str(side) for side in result.series[0].shape)
        print(f"{seconds:.1f} {peak:.0f} {shape}")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        image_path, run = make_inputs(folder, args.side)
        print(f"predict.py on {args.side} x {args.side}, UNet-S 4 filters")
        print(f"{'tile size':>10} {'seconds':>8} {'peak MB':>8}")
        for tile in args.tile_sizes:
            done = subprocess.run([sys.executable, "-m", "bench.predict_memory", "--measure",
                                   image_path, run, tile], capture_output=True, text=True,
                                  check=True, cwd=REPO)
            seconds, peak, _ = done.stdout.split()
            print(f"{tile:>10} {seconds:>8} {peak:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
