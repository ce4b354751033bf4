#!/usr/bin/env python
"""Time and peak memory of ``predict.py`` on very large images, against the image's pixels.

For every size of ``--sizes`` (a side, or ``ROWSxCOLUMNS``) this writes a synthetic image of that
many pixels as a tiled, zlib-compressed BigTIFF (synthetic scenes of the built-in ``cells`` or ``worms`` kind, 256
px each, written tile by tile: never more than one tile of the image in memory), then runs
``predict.py --strips always`` on it in a fresh process and measures its wall time and peak
resident memory (``ru_maxrss`` of the child, as ``bench/predict_memory.py``). It prints one
markdown table::

    | size | pixels | seconds | peak RSS MB | MB per megapixel | objects |

Memory bounded by the tile shows as a flat ``peak RSS MB`` column (and a falling MB per
megapixel); time linear in the pixels as a constant seconds per pixel. Wide, short images
(``2048x32768``) show what the width alone costs at a fraction of a square's time. Examples::

    python -m bench.big_image                                  # 2k, 8k, 16k, 32k; untrained M/16
    python -m bench.big_image --sizes 2048 --out /tmp/big      # a quick check
    python -m bench.big_image --sizes 2048x2048 2048x32768     # the cost of the width
    python -m bench.big_image --model runs/cells --sizes 10000 --output-format zarr

``--model`` defaults to an untrained UNet-M with 16 filters (the architecture, not the weights,
sets the memory and time of the network; the number of objects, and so the post-processing time,
depends on the weights: pass a trained run folder for realistic object counts). The images and
outputs go to ``--out`` (a temporary folder by default, deleted at the end); a 32k image takes
about 0.5-1 GB of disk as compressed BigTIFF plus its outputs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_SIZES = (2048, 8192, 16384, 32768)
"""Image sides measured by default."""

UNTRAINED_MODEL = dict(size="M", filters=16, head_filters=16, min_size=30)
"""The model measured without ``--model``: an untrained UNet-M/16."""

BLOCK = 256
"""Side of one synthetic scene and of a TIFF tile of the generated images."""

POOL = 64
"""Distinct synthetic scenes; the image cycles through them (generating every block would cost
more time than predicting it)."""


def parse_size(text: str) -> tuple[int, int]:
    """``"2048"`` -> ``(2048, 2048)``; ``"1024x8192"`` -> ``(1024, 8192)`` (rows x columns).

    Raises
    ------
    argparse.ArgumentTypeError
        For anything else, or sizes below 1.
    """
    parts = text.lower().split("x")
    try:
        rows, columns = (int(parts[0]), int(parts[0])) if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a side (2048) or ROWSxCOLUMNS (1024x8192)") from None
    if rows < 1 or columns < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return rows, columns


def write_synthetic_bigtiff(path: str, side: int | tuple[int, int], kind: str = "cells",
                            seed: int = 0) -> None:
    """Write a uint16 synthetic image as a tiled BigTIFF, tile by tile.

    Parameters
    ----------
    path : str
        Output ``.tif``.
    side : int or tuple of int
        Rows and columns (one number: a square).
    kind : str, optional
        Synthetic scene kind (``cells`` or ``worms``, :mod:`datasets.synthetic`).
    seed : int, optional
        Scene ``i`` of the pool uses ``default_rng([seed, i])``.
    """
    import numpy as np
    import tifffile

    from datasets.synthetic import generate_sample

    pool = []
    for index in range(POOL):
        sample = generate_sample(np.random.default_rng([seed, index]), kind, BLOCK)
        pool.append((np.clip(sample.image[..., 0], 0, None) * 1000).astype(np.uint16))
    rows, columns = (side, side) if isinstance(side, int) else side

    def tiles():
        for row in range(-(-rows // BLOCK)):
            for column in range(-(-columns // BLOCK)):
                yield pool[(row * 7919 + column * 104729) % POOL]

    tifffile.imwrite(path, tiles(), shape=(rows, columns), dtype=np.uint16, tile=(BLOCK, BLOCK),
                     bigtiff=True, compression="zlib", photometric="minisblack")


def _objects(stderr: str) -> int:
    """The object count of ``predict.py``'s summary line."""
    found = re.search(r"predicted \d+ of \d+ image\(s\), (\d+) objects", stderr)
    if not found:
        raise RuntimeError(f"no summary line in the output of predict.py: {stderr[-500:]}")
    return int(found.group(1))


def _measure(image: str, run: str, out: str, output_format: str, tile_size: str,
             overlay: bool) -> tuple[float, float, int]:
    """One measurement in a fresh helper process: ``(seconds, peak MB, objects)``."""
    command = [sys.executable, "-m", "bench.big_image", "--measure", image, run, out,
               output_format, tile_size, "1" if overlay else "0"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {image} failed: {done.stderr.strip()[-2000:]}")
    seconds, peak, objects = done.stdout.split()
    return float(seconds), float(peak), int(objects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_size, nargs="+",
                        default=[(side, side) for side in DEFAULT_SIZES], metavar="SIZE",
                        help="image sides in pixels, or ROWSxCOLUMNS (default 2048 8192 16384 "
                        "32768)")
    parser.add_argument("--model", metavar="RUN",
                        help="run folder of a trained model (default: an untrained UNet-M/16)")
    parser.add_argument("--kind", choices=("cells", "worms"), default="cells",
                        help="synthetic scenes of the image (default cells)")
    parser.add_argument("--output-format", choices=("bigtiff", "zarr"), default="bigtiff",
                        help="label stack format of predict.py (default bigtiff)")
    parser.add_argument("--tile-size", default="auto", help="predict.py --tile-size (auto)")
    parser.add_argument("--no-overlay", action="store_true",
                        help="do not write the (reduced) overlay")
    parser.add_argument("--out", metavar="DIR",
                        help="folder for the images and outputs, kept (default: a temporary "
                        "folder, deleted)")
    parser.add_argument("--measure", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # helper process: one measurement, so RUSAGE_CHILDREN sees one child
        from bench.predict_memory import measure_predict

        image, run, out, output_format, tile_size, overlay = args.measure
        extra = ("--strips", "always", "--output-format", output_format)
        seconds, peak, stderr = measure_predict(
            image, run, out, tile_size, extra + (() if overlay == "1" else ("--no-overlay",)))
        print(f"{seconds:.1f} {peak:.0f} {_objects(stderr)}")
        return 0
    folder = args.out or tempfile.mkdtemp(prefix="layernet-big-")
    os.makedirs(folder, exist_ok=True)
    try:
        run = args.model
        if run is None:
            from bench.predict_memory import write_untrained_run

            run = write_untrained_run(os.path.join(folder, "untrained-M16"), **UNTRAINED_MODEL)
        print(f"predict.py --strips always --output-format {args.output_format} --tile-size "
              f"{args.tile_size}; model {args.model or 'untrained UNet-M/16'}; {args.kind}",
              file=sys.stderr)
        print("| size | pixels | seconds | peak RSS MB | MB per megapixel | objects |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for rows, columns in args.sizes:
            name = f"{rows}" if rows == columns else f"{rows}x{columns}"
            image = os.path.join(folder, f"synthetic-{name}.tif")
            clock = time.perf_counter()
            write_synthetic_bigtiff(image, (rows, columns), args.kind)
            print(f"wrote {image} in {time.perf_counter() - clock:.0f} s", file=sys.stderr)
            out = os.path.join(folder, f"out-{name}")
            seconds, peak, objects = _measure(image, run, out, args.output_format,
                                              args.tile_size, not args.no_overlay)
            label = f"{rows:,}²" if rows == columns else f"{rows:,} x {columns:,}"
            print(f"| {label} | {rows * columns:,} | {seconds:.1f} | {peak:.0f} | "
                  f"{peak / (rows * columns / 1e6):.2f} | {objects} |", flush=True)
    finally:
        if not args.out:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
