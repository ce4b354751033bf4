#!/usr/bin/env python
"""Balanced tiles against the square 512 px tiles used before, timed in the same run.

For each image shape (``--shapes``, default: BBBC010's 520 x 696, 1024 x 1024, 2048 x 2048 and a
1000 x 3000 strip) a synthetic cell mosaic is predicted end to end minus writing (normalise,
network, Algorithm 1, stitching) three ways:

* ``square 512``:   the former default, square 512 px tiles with a 96 px overlap whenever a side
                    exceeds 512 px (:func:`layernet.tiling.predict_tiled` with ``tile_size=512``);
* ``balanced 512``: :func:`layernet.tiling.predict_image` with a 512 x 512 pixel budget
                    (:func:`layernet.tiling.balanced_tile_shape`);
* ``balanced 768``: :func:`layernet.tiling.predict_image` with its default budget (768 x 768).

Printed per shape and way: the number of tiles, the pixels the network sees (in megapixels and
as a multiple of the image), seconds per image (median of ``--repeats`` runs after a warm-up run
that traces the network for the tile shape) and the speed-up over ``square 512``. Without
``--model`` an untrained UNet-S with 32 filters is used (the weights do not change the network
time; an untrained model's noisy maps are the slow case for post-processing). Example::

    python bench/tiling.py --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.predict import synthetic_mosaic  # noqa: E402

FORMER_TILE_SIZE = 512
"""Tile side of the former default: square tiles whenever a side exceeds it."""


def parse_shape(text: str) -> tuple[int, int]:
    """``"520x696"`` -> ``(520, 696)``."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"expected positive sides, got {text!r}")
    return height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="run folder or model file (default: untrained UNet-S/32)")
    parser.add_argument("--shapes", type=parse_shape, nargs="+",
                        default=[(520, 696), (1024, 1024), (2048, 2048), (1000, 3000)],
                        help="image shapes HEIGHTxWIDTH")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per way (default 1)")
    args = parser.parse_args(argv)

    from bench.predict import _load_predictor
    from layernet.tiling import (DEFAULT_TILE_SIZE, default_overlap, plan_tiles, predict_image,
                                 predict_tiled, tile_grid)

    predictor = _load_predictor(args.model, None if args.model else "S",
                                None if args.model else 32)
    config = predictor.config
    stride = config.stride
    former_overlap = default_overlap(FORMER_TILE_SIZE, stride)

    def square(image):
        normalized = predictor.normalize(image)
        if max(image.shape[:2]) <= FORMER_TILE_SIZE:
            return predictor.instances_normalized(normalized)
        return predict_tiled(
            normalized, predictor.maps_batch_normalized, FORMER_TILE_SIZE, former_overlap,
            min_size=config.min_size,
            instances=lambda fg, maps: predictor.instances_from_maps(fg, maps, min_size=0))

    def grid(shape, budget):
        """(tiles, network pixels) of predict_image with a budget of budget^2 pixels."""
        tiles = plan_tiles(shape, budget, default_overlap(budget, stride), stride)
        rects = [tile.rect for tile in tiles] if tiles else [(0, 0) + tuple(shape)]
        return len(rects), sum((-(-(y1 - y0) // stride) * stride) * (-(-(x1 - x0) // stride) *
                                                                   stride)
                               for y0, x0, y1, x1 in rects)

    ways = {
        f"square {FORMER_TILE_SIZE}": (square, None),
        f"balanced {FORMER_TILE_SIZE}": (
            lambda image: predict_image(predictor, image, tile_size=FORMER_TILE_SIZE).stack,
            FORMER_TILE_SIZE),
        f"balanced {DEFAULT_TILE_SIZE}": (lambda image: predict_image(predictor, image).stack,
                                          DEFAULT_TILE_SIZE),
    }
    print(f"model: {args.model or 'untrained'} UNet-{config.size}/{config.filters}, "
          f"{config.precision}; {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}; median of {args.repeats} run(s), seconds per image")
    print(f"{'image':>11} {'way':<13} {'tiles':>5} {'net Mpx':>8} {'x image':>8} {'s':>7} "
          f"{'x faster':>9} {'objects':>7}")
    for shape in args.shapes:
        image, _ = synthetic_mosaic(max(shape))
        image = image[:shape[0], :shape[1]]
        baseline = None
        for name, (run, budget) in ways.items():
            if budget is None:
                side = [-(-min(s, FORMER_TILE_SIZE) // stride) * stride for s in shape]
                tiles = (1 if max(shape) <= FORMER_TILE_SIZE else
                         len(tile_grid(shape, FORMER_TILE_SIZE, former_overlap)))
                pixels = tiles * side[0] * side[1]
            else:
                tiles, pixels = grid(shape, budget)
            stack = run(image)  # warm-up: traces the network for this tile shape
            seconds = []
            for _ in range(args.repeats):
                clock = time.perf_counter()
                stack = run(image)
                seconds.append(time.perf_counter() - clock)
            median = statistics.median(seconds)
            baseline = baseline or median
            objects = int(np.unique(stack).size - 1)
            print(f"{shape[0]:>5}x{shape[1]:<5} {name:<13} {tiles:>5} {pixels / 1e6:>8.2f} "
                  f"{pixels / (shape[0] * shape[1]):>8.2f} {median:>7.2f} "
                  f"{baseline / median:>9.2f} {objects:>7}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
