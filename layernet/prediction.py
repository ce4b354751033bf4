"""Prediction of one whole image: normalised once, run whole or tile by tile, post-processed.

:func:`predict_image` (and :func:`submit_prediction`, which hands the post-processing to a
worker so that the network can start on the next image) normalise the raw image exactly as in
training, then predict it whole when it fits into one tile, else cut it into the tiles of
:func:`layernet.tiles.plan_tiles`, run the network on batches of tiles, post-process every tile
on its own (Algorithm 1, :func:`layernet.postprocess.postprocess`) and stitch the tiles'
instances (:class:`layernet.stitching.TileStitcher`). :func:`predict_tiled` is the tiled path
for a normalised image and any network function.

Tiles are post-processed with ``min_size = 0``; the size screening is applied to the stitched
objects. For Algorithm 1 this is the same result (every object is a connected component of a layer
inside the foreground, and a component of at least ``min_size`` pixels always lies in a foreground
component of at least ``min_size`` pixels), but objects cut by a tile border are not lost.

Nothing in this module imports TensorFlow; the network is any callable mapping a batch of
normalised tiles to probability maps (see :data:`MapsFunction`), or a predictor
(:class:`layernet.inference.Predictor`) that holds one.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from layernet.ordered_worker import OrderedWorker
from layernet.postprocess import postprocess
from layernet.stitching import TileStitcher
from layernet.tiles import (DEFAULT_TILE_SIZE, Tile, TilingError, auto_tile_size, default_overlap,
                            plan_tiles, rect_in_tile, tile_grid)

logger = logging.getLogger(__name__)

__all__ = ["MapsFunction", "Prediction", "image_tiles", "predict_image", "predict_tiled",
           "submit_prediction"]

MapsFunction = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``maps(tiles (B, h, w, C) float32) -> (foreground (B, h, w), layering (B, h, w, N))``."""


def _start_tiled(
    image: np.ndarray,
    maps: MapsFunction,
    tiles: list[Tile],
    instances: Callable[[np.ndarray, np.ndarray], np.ndarray],
    min_size: int,
    batch_size: int,
    match_iou: float,
    spent: dict[str, float],
    maps_out: tuple[np.ndarray, np.ndarray] | None,
    worker: OrderedWorker,
    on_tiles: Callable[[int, int], None] | None = None,
) -> Future:
    """Run the network on the tile batches here and hand their post-processing to ``worker``.

    ``on_tiles(done, total)`` is called here after the network's every batch of tiles.

    Returns the future of the stitched label stack. Once a batch fails, the later batches are
    neither run nor post-processed and the future raises that error.
    """
    stitcher = TileStitcher(image.shape[:2], tiles, min_size=min_size, match_iou=match_iou)
    failed: list[BaseException] = []

    def post_batch(batch_tiles: list[Tile], foregrounds: np.ndarray, layerings: np.ndarray
                   ) -> None:
        if failed:
            return
        clock = time.perf_counter()
        try:
            for tile, foreground, layering in zip(batch_tiles, foregrounds, layerings):
                if maps_out is not None:
                    core = rect_in_tile(tile.core, tile.rect)
                    y0, x0, y1, x1 = tile.core
                    maps_out[0][y0:y1, x0:x1] = np.asarray(foreground).reshape(
                        layering.shape[:2])[core]
                    maps_out[1][y0:y1, x0:x1] = layering[core]
                stitcher.add(tile.index, instances(foreground, layering))
        except BaseException as error:
            failed.append(error)
            raise
        finally:
            spent["postprocess"] += time.perf_counter() - clock

    def stitch() -> np.ndarray:
        if failed:
            raise failed[0]
        clock = time.perf_counter()
        result = stitcher.finish()
        spent["postprocess"] += time.perf_counter() - clock
        return result

    for start in range(0, len(tiles), batch_size):
        if failed:
            break
        batch_tiles = tiles[start:start + batch_size]
        batch = np.stack([image[tile.slices] for tile in batch_tiles])
        clock = time.perf_counter()
        foregrounds, layerings = maps(batch)
        spent["network"] += time.perf_counter() - clock
        worker.submit(post_batch, batch_tiles, foregrounds, layerings)
        if on_tiles is not None:
            on_tiles(start + len(batch_tiles), len(tiles))
    return worker.submit(stitch)


def predict_tiled(
    image: np.ndarray,
    maps: MapsFunction,
    tile_size: int,
    overlap: int,
    tau: float = 0.5,
    min_size: int = 250,
    overlap_layers: bool = True,
    connectivity: int = 2,
    batch_size: int = 1,
    match_iou: float = 0.5,
    timings: dict[str, float] | None = None,
    maps_out: tuple[np.ndarray, np.ndarray] | None = None,
    instances: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    worker: OrderedWorker | None = None,
) -> np.ndarray:
    """Instances of a normalised image predicted tile by tile and stitched (see module doc).

    Parameters
    ----------
    image : numpy.ndarray
        Normalised image ``(H, W, C)``.
    maps : MapsFunction
        The network: a batch of tiles ``(B, h, w, C)`` -> foreground ``(B, h, w)`` (or
        ``(B, h, w, 1)``) and layering ``(B, h, w, N)``.
    tile_size : int
        Side of a tile (a multiple of the network stride is fastest).
    overlap : int
        Minimum number of pixels shared by neighbouring tiles.
    tau, min_size, overlap_layers, connectivity
        Algorithm 1 parameters, as in :func:`layernet.postprocess.postprocess`.
    batch_size : int, optional
        Tiles per network call.
    match_iou : float, optional
        See :class:`TileStitcher`.
    timings : dict, optional
        If given, seconds spent in ``"network"`` and ``"postprocess"`` (tile post-processing and
        stitching) are added to it.
    maps_out : tuple of numpy.ndarray, optional
        ``(foreground (H, W), layering (H, W, N))`` arrays that receive the maps of each tile's
        core. Note that the layer semantics may change from one core to the next (the network
        decides layers per tile).
    instances : callable, optional
        Post-processing of one tile's maps into a label stack, called as
        ``instances(foreground, layering)`` with no size screening (it is applied after
        stitching). Default: Algorithm 1 with ``tau``, ``overlap_layers``, ``connectivity``.
    worker : layernet.ordered_worker.OrderedWorker, optional
        Runs the post-processing of each tile batch; a threaded worker post-processes batch
        ``k`` while the network runs on batch ``k + 1`` (same result). Default: one after the
        other in this thread.

    Returns
    -------
    numpy.ndarray
        Label stack ``(L, H, W)``, ``L >= N`` (uint16, uint32 beyond 65535 objects).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise TilingError(f"expected an (H, W, C) image, got shape {image.shape}")
    if batch_size < 1:
        raise TilingError(f"batch size must be >= 1, got {batch_size}")
    tiles = tile_grid(image.shape[:2], tile_size, overlap)
    if instances is None:
        def instances(foreground: np.ndarray, layering: np.ndarray) -> np.ndarray:
            return postprocess(foreground, layering, tau=tau, min_size=0,
                               overlap_layers=overlap_layers, connectivity=connectivity)
    spent = {"network": 0.0, "postprocess": 0.0}
    result = _start_tiled(image, maps, tiles, instances, min_size, batch_size, match_iou, spent,
                          maps_out, worker or OrderedWorker(threaded=False)).result()
    logger.debug("tiled prediction: %d tiles of %d px, overlap %d", len(tiles), tile_size, overlap)
    if timings is not None:
        for key, value in spent.items():
            timings[key] = timings.get(key, 0.0) + value
    return result


@dataclass
class Prediction:
    """Result of :func:`predict_image`.

    Attributes
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``, ``L >= N``.
    foreground, layering : numpy.ndarray or None
        The probability maps ``(H, W)`` and ``(H, W, N)`` when requested.
    tiles : int
        Number of tiles the image was cut into (1 = predicted whole).
    """

    stack: np.ndarray
    foreground: np.ndarray | None = None
    layering: np.ndarray | None = None
    tiles: int = 1


def image_tiles(shape: tuple[int, int], stride: int, tile_size: int | None = None,
                overlap: int | None = None, scale: float = 1.0
                ) -> tuple[list[Tile] | None, int]:
    """The tiles :func:`predict_image` cuts an image of ``shape`` into (``None``: whole).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)``.
    stride : int
        The network's stride.
    tile_size, overlap : int or None, optional
        As in :func:`predict_image`, in the image's pixels.
    scale : float, optional
        The run's ``input_scale``: the network sees every tile resized by it, so the automatic
        tile size is that of scale 1 divided by it (the network's tiles keep their size) and
        tile sides are rounded to the stride in the image's pixels, ``ceil(stride / scale)``.

    Returns
    -------
    tiles : list of Tile or None
        The tiles, or ``None`` to predict the image whole.
    overlap : int
        The overlap used.

    Raises
    ------
    TilingError
        For a tile size smaller than twice the network stride.
    """
    image_stride = max(1, math.ceil(stride / scale - 1e-9))
    if tile_size is None:
        tile_size = auto_tile_size(image_stride, int(round(DEFAULT_TILE_SIZE / scale)))
    elif tile_size:
        if tile_size < 2 * image_stride:
            at_scale = f" at input scale {scale:g}" if scale != 1.0 else ""
            raise TilingError(f"tile size {tile_size} is too small; use at least "
                              f"{2 * image_stride} (the network stride is {image_stride} image "
                              f"pixels{at_scale})")
        tile_size = tile_size // image_stride * image_stride
    if overlap is None and tile_size:
        overlap = default_overlap(tile_size, image_stride)
    overlap = overlap or 0
    return plan_tiles(shape, tile_size, overlap, image_stride), overlap


def submit_prediction(
    predictor: Any,
    image: np.ndarray,
    worker: OrderedWorker,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 1,
    keep_maps: bool = False,
    timings: dict[str, float] | None = None,
    on_tiles: Callable[[int, int], None] | None = None,
) -> Future:
    """Start predicting one raw image: network here, post-processing on ``worker``.

    Normalisation and the network (of the whole image, or of every batch of tiles) run in the
    calling thread; post-processing and stitching are submitted to ``worker``. With a threaded
    :class:`~layernet.ordered_worker.OrderedWorker` this returns as soon as the network is done,
    so the caller can run the network on the next image while this one is post-processed.
    Parameters are those of :func:`predict_image`.

    Returns
    -------
    concurrent.futures.Future
        Resolves to the :class:`Prediction` (or raises the post-processing error). ``timings``
        is updated when it resolves.

    Raises
    ------
    TilingError
        For a tile size smaller than twice the network stride. Errors of the network are
        raised here too.
    """
    config = predictor.config
    stride = config.stride
    spent = {"normalize": 0.0, "network": 0.0, "postprocess": 0.0}
    clock = time.perf_counter()
    normalized = predictor.normalize(image)
    spent["normalize"] += time.perf_counter() - clock
    height, width = normalized.shape[:2]
    tiles, overlap = image_tiles((height, width), stride, tile_size, overlap,
                                 scale=config.input_scale)

    def finish(result: Prediction) -> Prediction:
        if timings is not None:
            for key, value in spent.items():
                timings[key] = timings.get(key, 0.0) + value
        return result

    if tiles is None:
        clock = time.perf_counter()
        foreground, layering = predictor.maps_batch_normalized(normalized[None])
        foreground, layering = foreground[0], layering[0]
        spent["network"] += time.perf_counter() - clock

        def post_whole() -> Prediction:
            clock = time.perf_counter()
            stack = predictor.instances_from_maps(foreground, layering)
            spent["postprocess"] += time.perf_counter() - clock
            return finish(Prediction(stack, foreground if keep_maps else None,
                                     layering if keep_maps else None, 1))

        return worker.submit(post_whole)
    maps_out = None
    if keep_maps:
        channels = getattr(predictor, "map_channels", config.layers)
        maps_out = (np.zeros((height, width), np.float32),
                    np.zeros((height, width, channels), np.float32))
    stitched = _start_tiled(
        normalized, predictor.maps_batch_normalized, tiles,
        lambda fg, maps: predictor.instances_from_maps(fg, maps, min_size=0), config.min_size,
        batch_size, 0.5, spent, maps_out, worker, on_tiles)
    logger.debug("tiled prediction: %d tiles of %d x %d px, overlap %d", len(tiles),
                 tiles[0].rect[2] - tiles[0].rect[0], tiles[0].rect[3] - tiles[0].rect[1], overlap)
    return worker.submit(lambda: finish(Prediction(stitched.result(),
                                                   *(maps_out or (None, None)), len(tiles))))


def predict_image(
    predictor: Any,
    image: np.ndarray,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 1,
    keep_maps: bool = False,
    timings: dict[str, float] | None = None,
    worker: OrderedWorker | None = None,
    on_tiles: Callable[[int, int], None] | None = None,
) -> Prediction:
    """Predict the instances of one raw image, tiled when it is larger than a tile.

    The image is normalised once as a whole (exactly as in training), then predicted whole when
    it fits into one tile and with :func:`predict_tiled` otherwise.

    Parameters
    ----------
    predictor : layernet.inference.Predictor
        The network and its configuration (``normalize``, ``maps_batch_normalized``,
        ``instances_from_maps`` and ``config`` are used).
    image : numpy.ndarray
        Raw ``(H, W, C)`` image.
    tile_size : int or None, optional
        Tile budget: tiles hold at most ``tile_size ** 2`` pixels and an image of at most that
        many pixels (padded to the stride) is predicted whole; larger images are cut into the
        tiles of :func:`balanced_tile_shape`. ``None`` chooses :func:`auto_tile_size`, 0 never
        tiles. Rounded down to a multiple of the network stride.
    overlap : int or None, optional
        Overlap of neighbouring tiles; ``None`` chooses :func:`default_overlap`.
    batch_size : int, optional
        Tiles per network call.
    keep_maps : bool, optional
        Also return the probability maps.
    timings : dict, optional
        Seconds spent in ``"normalize"``, ``"network"`` and ``"postprocess"`` are added to it.
    worker : layernet.ordered_worker.OrderedWorker, optional
        Runs the post-processing; a threaded worker overlaps the post-processing of each tile
        batch with the network on the next (same result). Default: one after the other in this
        thread. To overlap whole images, use :func:`submit_prediction`.
    on_tiles : callable, optional
        Progress of a tiled image: called as ``on_tiles(done, total)`` after the network has run
        on every batch of tiles (not called for an image predicted whole).

    Returns
    -------
    Prediction
    """
    return submit_prediction(predictor, image, worker or OrderedWorker(threaded=False),
                             tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                             keep_maps=keep_maps, timings=timings, on_tiles=on_tiles).result()
