#!/usr/bin/env python
"""Time and peak memory of opening a very large prediction with layernet's napari reader.

For every side of ``--sizes`` this writes a synthetic OME-Zarr label stack
(``<side>.layers.zarr``, as ``predict.py --output-format zarr`` writes them) band by band: discs
of ``--radius`` pixels on a grid in slice 1 and on the grid shifted by half a period in slice 2,
so that every disc of slice 2 overlaps four of slice 1. Then, in a fresh process per side, it
runs :func:`layernet.napari.read_prediction` on it (the reader napari calls: lazy multiscale
Labels layers and the outline polygons of every object) and reads the coarsest pyramid level of
every slice (what napari draws first), and reports wall time and peak resident memory
(``ru_maxrss`` of the child). One markdown table::

    | side | pixels | objects | outline polygons | read s | first view s | peak RSS MB |

Example::

    python -m bench.napari_large --sizes 4096 16384 --out /tmp/napari-large
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

BAND = 512
"""Rows generated and written at once."""


def write_disc_stack(path: str, side: int, radius: int = 26, period: int = 64) -> int:
    """Write a ``(2, side, side)`` OME-Zarr label stack of overlapping discs; return the count.

    Parameters
    ----------
    path : str
        The ``.layers.zarr`` folder.
    side : int
        Rows and columns.
    radius, period : int, optional
        Disc radius and grid period in pixels (period > 2 * radius: discs of a slice do not
        touch; radius > period / (2 * sqrt(2)): each disc overlaps its diagonal neighbours of
        the other slice).
    """
    from layernet.label_store import ZarrLabelWriter

    per_row = side // period
    writer = ZarrLabelWriter(path, (side, side))
    yy, xx = np.mgrid[0:BAND, 0:side]
    for top in range(0, side, BAND):
        rows = min(BAND, side - top)
        layers = []
        for shift, first_id in ((0, 1), (period // 2, per_row * per_row + 1)):
            y = yy[:rows] + top - shift
            x = xx[:rows] - shift
            cell_y, cell_x = np.floor_divide(y, period), np.floor_divide(x, period)
            dy = y - cell_y * period - period // 2
            dx = x - cell_x * period - period // 2
            inside = ((dy * dy + dx * dx) <= radius * radius) & (cell_y >= 0) & (cell_x >= 0) & (
                cell_y < per_row) & (cell_x < per_row)
            ids = np.where(inside, first_id + cell_y * per_row + cell_x, 0)
            layers.append(ids.astype(np.uint32))
        writer.write_rows(top, layers)
    writer.finish(2, "zarr")
    return 2 * per_row * per_row


def measure(path: str) -> dict:
    """Open ``path`` with the napari reader in this process; return the numbers."""
    from layernet.napari import read_prediction

    start = time.perf_counter()
    layers = read_prediction(path, with_image=False)
    read_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for data, kwargs, kind in layers:
        if kind == "labels":
            coarsest = data[-1] if kwargs.get("multiscale") else data
            np.asarray(coarsest)
    first_view = time.perf_counter() - start
    shapes = [layer for layer in layers if layer[2] == "shapes"]
    return {"objects": int(len(set(shapes[0][1]["features"]["id"].tolist()))) if shapes else -1,
            "polygons": len(shapes[0][0]) if shapes else 0,
            "read": read_seconds, "first_view": first_view,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[4096, 16384])
    parser.add_argument("--radius", type=int, default=26, help="disc radius in pixels (26)")
    parser.add_argument("--period", type=int, default=64, help="grid period in pixels (64)")
    parser.add_argument("--out", help="folder of the stacks (a temporary one, deleted, if not "
                        "given)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # child process: one stack
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    out = args.out or tempfile.mkdtemp(prefix="layernet-napari-large-")
    os.makedirs(out, exist_ok=True)
    print("| side | pixels | objects written | objects outlined | outline polygons | read s "
          "| first view s | peak RSS MB |\n|---|---|---|---|---|---|---|---|", flush=True)
    try:
        for side in args.sizes:
            path = os.path.join(out, f"{side}.layers.zarr")
            written = write_disc_stack(path, side, args.radius, args.period)
            done = subprocess.run([sys.executable, "-m", "bench.napari_large", "--measure",
                                   path], capture_output=True, text=True)
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {side} | {side * side / 1e6:.0f} M | {written} | {result['objects']} | "
                  f"{result['polygons']} | {result['read']:.1f} | {result['first_view']:.2f} | "
                  f"{result['peak_mb']:.0f} |", flush=True)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
