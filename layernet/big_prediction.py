"""Prediction of images too large for memory: read in strips, stitched and written as it goes.

:func:`predict_big_image` predicts one image (a TIFF/BigTIFF, a zarr array or OME-Zarr image, or
an array) with memory bounded by a strip of tiles, not by the image:

1. the image is opened lazily (:func:`layernet.lazy_image.open_lazy_image`) and the
   normalisation percentiles are taken in one pass over its strips
   (:func:`layernet.lazy_image.streamed_percentile_range`: bit for bit those of the whole image
   for 8/16-bit images);
2. the tiles are those :func:`layernet.prediction.predict_image` uses (same tile grid, same
   overlap); each tile row (a *strip*) is read, normalised, run through the network in batches
   and post-processed tile by tile (Algorithm 1, as today);
3. the tiles' instances are stitched by :class:`layernet.stream_stitching.StreamingStitcher`
   (the matching of :class:`layernet.stitching.TileStitcher`, so objects spanning many tiles come
   out whole) and every object is placed as soon as no later tile can change it;
4. finished rows go to a chunked, compressed OME-Zarr store (``.partial`` until complete); at the
   end it becomes the ``.layers.zarr`` or a tiled ``.layers.tif`` BigTIFF
   (:mod:`layernet.label_store`). COCO annotations and ImageJ ROIs are made per object as it is
   placed (exact); the overlay is drawn at a reduced size (longest side at most
   :data:`OVERLAY_SIDE`).

The objects are the same as those of whole-image tiled prediction (:func:`predict_image` with the
same tiles); ids and slices differ (ids follow the order in which objects become final, slices are
packed first fit). :func:`predict_strips` is the core for any network function.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from layernet.instances import pack_stack
from layernet.lazy_image import LazyImage, describe, open_lazy_image, streamed_percentile_range
from layernet.normalize import normalize_to_range
from layernet.ordered_worker import OrderedWorker
from layernet.prediction import MapsFunction, image_tiles
from layernet.stream_stitching import RowAssembler, StreamingStitcher
from layernet.tiles import Tile, tile_grid

logger = logging.getLogger(__name__)

__all__ = ["MMAP_THRESHOLD", "OVERLAY_SIDE", "BigPrediction", "LAYERS_SUFFIXES",
           "StripInstances", "TileRunner", "local_strip_instances", "map_large_allocations",
           "predict_big_image", "predict_strips", "reduced_overlay", "small_tile_stack",
           "stitch_strips", "tile_rows"]

OVERLAY_SIDE = 4096
"""Longest side of the overlay PNG of a large image (it is drawn at a reduced size)."""

LAYERS_SUFFIXES = {"bigtiff": ".layers.tif", "zarr": ".layers.zarr"}  # as export.OUTPUT_SUFFIXES
"""File name suffix of the label stack of each large-image output format."""


@dataclass
class BigPrediction:
    """Result of :func:`predict_big_image`: the written paths and a few counts."""

    paths: list[str] = field(default_factory=list)
    objects: int = 0
    slices: int = 1
    tiles: int = 1
    timings: dict[str, float] = field(default_factory=dict)


StripInstances = Iterator[list[tuple[Tile, np.ndarray]]]
"""Groups of ``(tile, label stack of the tile)`` in raster order of the tiles: a whole tile row
(strip) or a batch of its tiles per group."""

TileRunner = Callable[[Any, "int | None", list[Tile], tuple[np.ndarray, np.ndarray], int,
                       "Callable[[int, int], None] | None"], StripInstances]
"""``runner(source, channel, tiles, (p_low, p_high), batch_size, on_tiles)``: the instances of
every tile of the image ``source`` (normalised with the percentiles ``p_low``, ``p_high``), strip
by strip, computed elsewhere, as :func:`local_strip_instances` computes them here."""


MMAP_THRESHOLD = 1 << 20
"""Allocations of at least this many bytes are served by ``mmap`` during large-image prediction
(see :func:`map_large_allocations`)."""


def map_large_allocations(threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc serve every allocation of ``threshold`` bytes or more by ``mmap`` (Linux).

    glibc raises its mmap threshold (up to 32 MB) each time a mapped block is freed, after which
    the network's activations and the tiles' maps (1-40 MB each, freed after every tile) come
    from the heap, where blocks that live on between them (stitching, rows waiting to be
    written) keep freed memory from going back to the system: the peak memory of a strip-by-strip
    prediction crept up by about 0.5 GB over the first hundred tiles. A fixed threshold returns
    such blocks on ``free`` (measured on a 4096² image: peak RSS 1,685 -> 1,499 MB, same time).
    The setting is process-wide and lasts; it is what ``MALLOC_MMAP_THRESHOLD_`` sets.

    Returns
    -------
    bool
        Whether the setting was made (``False`` off glibc, where nothing is changed).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def tile_rows(tiles: list[Tile]) -> list[list[Tile]]:
    """The tiles of a grid (:func:`layernet.tiles.tile_grid`) grouped by row, top to bottom."""
    rows: dict[int, list[Tile]] = {}
    for tile in tiles:
        rows.setdefault(tile.rect[0], []).append(tile)
    return [rows[top] for top in sorted(rows)]


def small_tile_stack(stack: np.ndarray) -> np.ndarray:
    """A tile's label stack in as few slices as first fit gives (one when nothing overlaps), as
    uint16 when its ids fit.

    The stitcher matches objects by their pixels, not by their layers, and the strip-by-strip
    path places them first fit: the same objects, and a fraction of the memory while a strip of
    tiles waits to be stitched (a tile of 768² with objects in 8 layers: 9.4 MB as 8 uint16
    slices, 1.2 MB as one).
    """
    stack = pack_stack(stack)
    return stack.astype(np.uint16) if stack.max(initial=0) <= np.iinfo(np.uint16).max else stack


def local_strip_instances(
    image: LazyImage,
    normalize: Callable[[np.ndarray], np.ndarray],
    maps: MapsFunction,
    instances: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tiles: list[Tile],
    batch_size: int = 1,
    on_tiles: Callable[[int, int], None] | None = None,
    spent: dict[str, float] | None = None,
    worker: OrderedWorker | None = None,
) -> StripInstances:
    """The instances of every tile, batch by batch, computed in this process.

    Each strip is read once, in the file's pixel type; its tiles are converted, normalised and
    run through ``maps`` in batches of ``batch_size`` (in this thread) and post-processed one by
    one with ``instances`` on ``worker``. With a threaded
    :class:`~layernet.ordered_worker.OrderedWorker` the post-processing of a batch runs while
    the network runs on the next one, and a batch is handed out only once the network has run
    on the next one (same results). Only the raw strip, two batches and their label stacks are
    held, whatever the image's width. Parameters are those of :func:`predict_strips`;
    ``spent`` receives seconds of ``"read"``, ``"network"`` and ``"postprocess"`` (summed over
    threads).
    """
    spent = spent if spent is not None else {}
    for key in ("read", "network", "postprocess"):
        spent.setdefault(key, 0.0)
    worker = worker or OrderedWorker(threaded=False)

    def post_batch(batch_tiles: list[Tile], foregrounds: np.ndarray, layerings: np.ndarray
                   ) -> list[tuple[Tile, np.ndarray]]:
        clock = time.perf_counter()
        result = [(tile, small_tile_stack(instances(foreground, layering)))
                  for tile, foreground, layering in zip(batch_tiles, foregrounds, layerings)]
        spent["postprocess"] += time.perf_counter() - clock
        return result

    done = 0
    pending: Future | None = None
    for row in tile_rows(tiles):
        clock = time.perf_counter()
        raw = image.raw(row[0].rect[0], row[0].rect[2])  # in the file's pixel type
        spent["read"] += time.perf_counter() - clock
        for start in range(0, len(row), batch_size):
            batch_tiles = row[start:start + batch_size]
            clock = time.perf_counter()
            batch = normalize(np.stack([image.model_input(raw[:, tile.rect[1]:tile.rect[3]])
                                        for tile in batch_tiles]))
            spent["read"] += time.perf_counter() - clock
            clock = time.perf_counter()
            foregrounds, layerings = maps(batch)
            spent["network"] += time.perf_counter() - clock
            del batch
            future = worker.submit(post_batch, batch_tiles, foregrounds, layerings)
            del foregrounds, layerings
            done += len(batch_tiles)
            if on_tiles is not None:
                on_tiles(done, len(tiles))
            if pending is not None:
                yield pending.result()
            pending = future
        del raw
    if pending is not None:
        yield pending.result()


def stitch_strips(strips: StripInstances, shape: tuple[int, int], tiles: list[Tile],
                  assembler: RowAssembler, min_size: int = 0, match_iou: float = 0.5,
                  spent: dict[str, float] | None = None) -> int:
    """Stitch the tiles' instances strip by strip into ``assembler``; return the object count.

    The groups of ``strips`` come in raster order of the tiles; after every completed tile row
    the objects that no later tile can change are placed and the rows above every unfinished
    object are flushed (:class:`StreamingStitcher`, :class:`RowAssembler`).
    ``spent["postprocess"]`` receives the seconds spent here.
    """
    spent = spent if spent is not None else {}
    stitcher = StreamingStitcher(shape, tiles, min_size=min_size, match_iou=match_iou)
    row_ends = {row[-1].index for row in tile_rows(tiles)}
    for results in strips:
        clock = time.perf_counter()
        ends_row = False
        for tile, stack in results:
            stitcher.add(tile.index, stack)
            ends_row = ends_row or tile.index in row_ends
        if ends_row:
            for _, _, top_left, mask in stitcher.pop_final():
                assembler.place(top_left, mask)
            assembler.flush(stitcher.open_top())
            logger.debug("%d objects so far, %d rows waiting", assembler.objects,
                         assembler.rows)
        spent["postprocess"] = spent.get("postprocess", 0.0) + time.perf_counter() - clock
    assembler.flush(shape[0])
    return assembler.objects


def predict_strips(
    image: LazyImage,
    normalize: Callable[[np.ndarray], np.ndarray],
    maps: MapsFunction,
    instances: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tiles: list[Tile],
    assembler: RowAssembler,
    min_size: int = 0,
    batch_size: int = 1,
    match_iou: float = 0.5,
    on_tiles: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
    worker: OrderedWorker | None = None,
) -> int:
    """Predict a lazily read image strip by strip into ``assembler``; return the object count.

    Parameters
    ----------
    image : LazyImage
        The image (channels chosen).
    normalize : callable
        Maps a batch of raw float32 tiles ``(B, h, w, C)`` to what the network sees (pixel by
        pixel).
    maps : MapsFunction
        The network on a batch of tiles.
    instances : callable
        ``instances(foreground, layering)`` of one tile, without size screening.
    tiles : list of Tile
        The tile grid (raster order).
    assembler : RowAssembler
        Receives every final object; its rows are flushed as they become final.
    min_size : int, optional
        Stitched objects with fewer pixels are dropped.
    batch_size : int, optional
        Tiles per network call (within a strip).
    match_iou : float, optional
        See :class:`layernet.stitching.TileStitcher`.
    on_tiles : callable, optional
        ``on_tiles(done, total)`` after every network call.
    timings : dict, optional
        Seconds of ``"read"`` (reading and normalising), ``"network"`` and ``"postprocess"``
        (post-processing, stitching and writing) are added to it.
    worker : layernet.ordered_worker.OrderedWorker, optional
        Runs the tiles' post-processing (a threaded one overlaps it with the network; same
        result). Default: in this thread.
    """
    spent = {"read": 0.0, "network": 0.0, "postprocess": 0.0}
    strips = local_strip_instances(image, normalize, maps, instances, tiles, batch_size,
                                   on_tiles, spent, worker)
    count = stitch_strips(strips, (image.height, image.width), tiles, assembler, min_size,
                          match_iou, spent)
    if timings is not None:
        for key, value in spent.items():
            timings[key] = timings.get(key, 0.0) + value
    return count


def reduced_overlay(image: LazyImage, stack: Any, side: int = OVERLAY_SIDE, band: int = 1024
                    ) -> tuple[np.ndarray, int]:
    """The outline overlay of an image and its label stack, with the longest side at most
    ``side`` (every ``step``-th pixel of both), drawn in bands of ``band`` rows.

    The picture is :func:`layernet.viz.outline_overlay` of :func:`layernet.viz.display_image`
    of the reduced image (the same as drawn whole: each band sees one row more on either side
    for the outlines); only a band of the label stack is read and drawn at a time.

    Parameters
    ----------
    image : LazyImage
        The image.
    stack : array-like
        Its label stack ``(L, H, W)`` (zarr or NumPy), read band by band.
    side : int, optional
        Longest side of the overlay.
    band : int, optional
        Rows of the overlay drawn at a time.

    Returns
    -------
    picture : numpy.ndarray
        uint8 RGB overlay.
    step : int
        Reduction factor (1 = full size).
    """
    from layernet.viz import display_image, display_limits, outline_overlay

    step = max(1, -(-max(image.height, image.width) // side))
    reduced = np.concatenate([image.strip(y0, min(y0 + band * step, image.height), step=step)
                              for y0 in range(0, image.height, band * step)])
    limits = display_limits(reduced)  # of the whole reduced image; stretched band by band
    height = reduced.shape[0]
    picture = np.empty((height, reduced.shape[1], 3), np.uint8)
    for y0 in range(0, height, band):
        picture[y0:y0 + band] = display_image(reduced[y0:y0 + band], limits=limits)
    del reduced
    for y0 in range(0, height, band):
        y1 = min(y0 + band, height)
        top, bottom = max(0, y0 - 1), min(height, y1 + 1)  # a row of context for the outlines
        labels = np.asarray(stack[:, top * step:bottom * step:step, ::step])
        drawn = outline_overlay(picture[top:bottom], labels)
        picture[y0:y1] = drawn[y0 - top:y1 - top]
    return picture, step


class _ObjectOutputs:
    """COCO annotations and ImageJ ROIs made per object as it is placed (exact)."""

    def __init__(self, shape: tuple[int, int], coco: bool, rois: bool) -> None:
        self.shape = shape
        self.coco = coco
        self.rois = rois
        self.annotations: list[dict[str, Any]] = []
        self.roi_list: list[Any] = []

    def __call__(self, number: int, layer: int, box: tuple[slice, slice], mask: np.ndarray
                 ) -> None:
        from layernet.export import coco_annotation, object_rois

        if self.coco:
            self.annotations.append(coco_annotation(number, number, layer, box, mask,
                                                    self.shape))
        if self.rois:
            self.roi_list.extend(object_rois(number, layer, box, mask))


def predict_big_image(
    predictor: Any,
    source: Any,
    prefix: str,
    output_format: str = "bigtiff",
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 1,
    channel: int | None = None,
    overlay: bool = True,
    rois: bool = False,
    coco: bool = False,
    file_name: str | None = None,
    overlay_side: int = OVERLAY_SIDE,
    on_tiles: Callable[[int, int], None] | None = None,
    tile_runner: TileRunner | None = None,
    overlapped: bool = True,
) -> BigPrediction:
    """Predict one large image with memory bounded by a strip of tiles; write its outputs.

    Parameters
    ----------
    predictor : layernet.inference.Predictor
        The model (``config``, ``maps_batch_normalized`` and ``instances_from_maps`` are used).
    source : str, os.PathLike, numpy.ndarray or zarr array
        The image: a TIFF/BigTIFF file, a zarr array or OME-Zarr folder, or an array.
    prefix : str
        Output path without suffix (``out/slide`` -> ``out/slide.layers.tif``, ...).
    output_format : {"bigtiff", "zarr"}, optional
        The label stack as a tiled BigTIFF or an OME-Zarr folder (:mod:`layernet.label_store`).
    tile_size, overlap, batch_size
        Tiling, as in :func:`layernet.prediction.predict_image` (same tiles).
    channel : int or None, optional
        Use only this channel.
    overlay : bool, optional
        Write ``<prefix>.overlay.png`` at a reduced size (longest side ``overlay_side``).
    rois, coco : bool, optional
        Also write the Fiji ROI zip / COCO JSON (exact, made object by object).
    file_name : str, optional
        Image name recorded in the COCO file (default: the prefix's base name).
    overlay_side : int, optional
        Longest side of the overlay.
    on_tiles : callable, optional
        Progress: ``on_tiles(done, total)`` after every network call.
    tile_runner : TileRunner, optional
        Computes the tiles' instances elsewhere (e.g. on a Dask cluster,
        :class:`layernet.distributed.DaskTileRunner`); then ``predictor`` needs only its
        ``config``. Default: in this process with ``predictor``.
    overlapped : bool, optional
        Post-process tiles in a background thread while the network runs on the next ones
        (in this process; the same files).

    Returns
    -------
    BigPrediction
    """
    from layernet.export import OUTPUT_SUFFIXES, coco_document, write_coco, write_rois
    from layernet.io import write_image_atomic
    from layernet.label_store import ZarrLabelWriter

    if output_format not in LAYERS_SUFFIXES:
        raise ValueError(f"output format {output_format!r} is not one for large images; "
                         f"choose {' or '.join(LAYERS_SUFFIXES)}")
    config = predictor.config
    if map_large_allocations():
        logger.debug("allocations of %d bytes or more are mapped (mallopt)", MMAP_THRESHOLD)
    image = open_lazy_image(source)
    image.select_channels(channel, config.channels)
    shape = (image.height, image.width)
    logger.info("%s: predicted in strips, label stack as %s", describe(image), output_format)
    result = BigPrediction()
    clock = time.perf_counter()
    logger.info("%s: normalisation percentiles (one pass over the image)", image.name)
    p_low, p_high = streamed_percentile_range(image, config.normalize_low, config.normalize_high)
    result.timings["normalize"] = time.perf_counter() - clock
    tiles, _ = image_tiles(shape, config.stride, tile_size, overlap, scale=config.input_scale)
    if tiles is None:
        tiles = tile_grid(shape, shape, 0)
    result.tiles = len(tiles)
    layers_path = prefix + LAYERS_SUFFIXES[output_format]
    writer = ZarrLabelWriter(prefix + LAYERS_SUFFIXES["zarr"], shape)
    outputs = _ObjectOutputs(shape, coco, rois)
    assembler = RowAssembler(shape, writer, flush_rows=writer.chunk,
                             on_object=outputs if (coco or rois) else None)
    try:
        with OrderedWorker(threaded=overlapped and tile_runner is None) as worker:
            if tile_runner is None:
                strips = local_strip_instances(
                    image, lambda batch: normalize_to_range(batch, p_low, p_high),
                    predictor.maps_batch_normalized,
                    lambda foreground, layering: predictor.instances_from_maps(
                        foreground, layering, min_size=0),
                    tiles, batch_size, on_tiles, result.timings, worker)
            else:
                strips = tile_runner(source, channel, tiles, (p_low, p_high), batch_size,
                                     on_tiles)
            result.objects = stitch_strips(strips, shape, tiles, assembler, config.min_size,
                                           spent=result.timings)
        result.slices = assembler.slices
        if overlay:
            picture, step = reduced_overlay(image, writer.array, overlay_side)
            path = prefix + OUTPUT_SUFFIXES["overlay"]
            write_image_atomic(path, picture)
            if step > 1:
                logger.info("%s: overlay drawn at 1/%d size (%d x %d px)", path, step,
                            picture.shape[1], picture.shape[0])
            result.paths.append(path)
        result.paths.insert(0, writer.finish(result.slices, output_format, layers_path))
    except BaseException:
        writer.abandon()
        raise
    if rois:
        path = prefix + OUTPUT_SUFFIXES["rois"]
        write_rois(path, outputs.roi_list)
        result.paths.append(path)
    if coco:
        path = prefix + OUTPUT_SUFFIXES["coco"]
        write_coco(path, coco_document(outputs.annotations,
                                       file_name or os.path.basename(prefix), shape))
        result.paths.append(path)
    logger.info("%s: %d objects in %d slices, %d tiles", layers_path, result.objects,
                result.slices, result.tiles)
    logger.debug("at most %d rows of the label stack were held at once", assembler.peak_rows)
    return result

