"""Tiled prediction of large images, re-exported from the modules that do it.

The code moved (issue 13): tile planning to :mod:`layernet.tiles`, the stitcher to
:mod:`layernet.stitching`, and whole-image prediction (whole or tiled) to
:mod:`layernet.prediction`. This module keeps ``from layernet.tiling import ...`` working for
the names it always exported.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

from layernet.prediction import (MapsFunction, Prediction, predict_image, predict_tiled,
                                 submit_prediction)
from layernet.stitching import TileStitcher
from layernet.tiles import (DEFAULT_TILE_SIZE, Tile, TilingError, auto_tile_size,
                            balanced_tile_shape, default_overlap, plan_tiles, tile_grid,
                            tile_starts)

__all__ = [
    "DEFAULT_TILE_SIZE",
    "MapsFunction",
    "Tile",
    "TilingError",
    "TileStitcher",
    "auto_tile_size",
    "default_overlap",
    "balanced_tile_shape",
    "plan_tiles",
    "tile_grid",
    "tile_starts",
    "predict_tiled",
    "Prediction",
    "predict_image",
    "submit_prediction",
]
