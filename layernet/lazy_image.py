"""Images read lazily, strip by strip: TIFF/BigTIFF (tiled or not), zarr arrays and OME-Zarr.

:func:`open_lazy_image` opens an image without reading its pixels; :class:`LazyImage` then reads
any band of rows (``strip``) as the ``(h, W, C)`` float32 image the model sees, with the channel
choices of :func:`layernet.io.as_channels`. :func:`streamed_percentile_range` gives the
normalisation percentiles of the whole image from one pass over its strips, so that memory stays
bounded by a strip:

* 8- and 16-bit integer (and boolean) images: a histogram per channel, from which the
  percentiles are computed with NumPy's own ``linear`` interpolation formula, so the result is
  **bit for bit** :func:`layernet.normalize.percentile_range` of the whole image (tested);
* other pixel types (32-bit integers, floats): percentiles of a regular sub-sample of at most
  :data:`SAMPLE_PIXELS` pixels per channel (every ``k``-th row and column); exact when the image
  has no more pixels than that. On larger float images the percentiles, and so the normalised
  values, can differ slightly from those of the whole image.

TIFF files are read through tifffile's zarr store (``TiffPageSeries.aszarr``): a tiled or
strip-organised TIFF is read tile by tile / strip by strip; an uncompressed one is memory-mapped
(tifffile writes a plain TIFF as a single strip); a compressed one stored in strips of
:data:`WHOLE_CHUNK_ROWS` rows or more is read whole (with a warning). zarr inputs are a zarr
array or an OME-Zarr image group (the first dataset of its first ``multiscales`` entry, axes from
its metadata). zarr is imported only here, lazily (the ``big`` extra).

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
import mmap
import os
from typing import Any

import numpy as np

from layernet.io import _TIFF_MAGIC, ImageReadError, _is_grayscale_copy

logger = logging.getLogger(__name__)

__all__ = ["READ_PIXELS", "SAMPLE_PIXELS", "WHOLE_CHUNK_ROWS", "LazyImage", "describe", "is_zarr_path",
           "open_lazy_image", "require_big_extra", "streamed_percentile_range", "tiff_pixels"]

SAMPLE_PIXELS = 16_000_000
"""Pixels per channel from which the percentiles of a non-8/16-bit image are estimated."""

READ_PIXELS = 1_000_000
"""Pixels read at a time by the passes over a whole image (percentiles, overlay)."""

WHOLE_CHUNK_ROWS = 4096
"""A compressed TIFF stored in strips of at least this many rows is read whole (each read of a
few rows would decode a whole strip again); uncompressed TIFFs are memory-mapped instead."""

_HISTOGRAM_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.bool_)


def require_big_extra(module: str = "zarr") -> Any:
    """Import an optional dependency of large-image prediction, or fail in one line.

    Parameters
    ----------
    module : str
        ``"zarr"``, ``"dask"`` or ``"distributed"``.

    Returns
    -------
    module

    Raises
    ------
    layernet.backends.MissingPackageError
        One line naming the extra, when the module is not installed.
    """
    import importlib

    from layernet.backends import MissingPackageError

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(f"{module} is needed for very large images and Dask; install "
                                  "the extra: pip install 'layernet[big]'") from None


def is_zarr_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr array or group folder (``.zarr`` metadata inside)."""
    path = os.fspath(path)
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name))
        for name in (".zarray", ".zgroup", "zarr.json"))


class LazyImage:
    """A 2-D image (one or more channels) whose pixels are read on demand.

    Parameters
    ----------
    array : array-like
        Anything indexable like a NumPy array (a zarr array, a NumPy array).
    axes : str
        One letter per axis of ``array``: ``Y`` and ``X`` and at most one channel axis (``C``
        or ``S``) of more than one element; other axes must have one element.
    name : str
        What to call the image in messages (its path).
    """

    def __init__(self, array: Any, axes: str, name: str) -> None:
        axes = axes.upper()
        if len(axes) != len(array.shape) or "Y" not in axes or "X" not in axes:
            raise ImageReadError(f"{name}: cannot tell the Y and X axes (axes {axes!r}, shape "
                                 f"{tuple(array.shape)})")
        others = [index for index, axis in enumerate(axes)
                  if axis not in "YX" and array.shape[index] > 1]
        if len(others) > 1 or (others and axes[others[0]] not in "SC"):
            raise ImageReadError(f"{name}: image has axes {axes} (shape {tuple(array.shape)}); "
                                 "expected one 2-D image or a multi-channel image (a stack of "
                                 "planes is not one image)")
        self.array = array
        self.name = name
        self.axes = axes
        self._y, self._x = axes.index("Y"), axes.index("X")
        self._channel_axis = others[0] if others else None
        self.height, self.width = int(array.shape[self._y]), int(array.shape[self._x])
        self.raw_channels = 1 if self._channel_axis is None else int(
            array.shape[self._channel_axis])
        self.dtype = np.dtype(array.dtype)
        self.channels: list[int] = list(range(self.raw_channels))
        self._grayscale_check = False
        self.handle: Any = None  # an open file the array reads from (kept open with the image)
        if self.height < 1 or self.width < 1:
            raise ImageReadError(f"{name}: image has no pixels (shape {tuple(array.shape)})")
        if not (np.issubdtype(self.dtype, np.integer) or np.issubdtype(self.dtype, np.floating)
                or self.dtype == np.bool_):
            raise ImageReadError(f"{name}: unsupported pixel type {self.dtype}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of the image the model sees (after :meth:`select_channels`)."""
        return self.height, self.width, len(self.channels)

    def select_channels(self, channel: int | None, expected_channels: int | None) -> None:
        """Choose the channels as :func:`layernet.io.as_channels` does.

        A colour image whose channels are identical copies is read as one channel when the
        model expects one; that is verified on every strip by :func:`streamed_percentile_range`.
        """
        count = self.raw_channels
        if channel is not None:
            if not -count <= channel < count:
                kind = "grayscale (1 channel)" if count == 1 else f"{count} channels"
                raise ImageReadError(f"{self.name}: channel {channel} requested but the image "
                                     f"is {kind}")
            self.channels = [channel % count]
        if expected_channels is not None and len(self.channels) != expected_channels:
            if expected_channels == 1 and len(self.channels) in (3, 4):
                self.channels, self._grayscale_check = [0], True
            else:
                raise ImageReadError(f"{self.name}: has {len(self.channels)} channel(s), "
                                     f"expected {expected_channels}")

    def raw(self, y0: int, y1: int, x0: int = 0, x1: int | None = None, step: int = 1
            ) -> np.ndarray:
        """Raw pixels of rows ``y0:y1`` and columns ``x0:x1`` (every ``step``-th), as
        ``(h, w, raw channels)`` in the file's pixel type."""
        x1 = self.width if x1 is None else x1
        index: list[Any] = [0] * len(self.axes)
        index[self._y] = slice(y0, y1, step)
        index[self._x] = slice(x0, x1, step)
        if self._channel_axis is not None:
            index[self._channel_axis] = slice(None)
        for position, axis in enumerate(self.axes):
            if position not in (self._y, self._x, self._channel_axis):
                index[position] = 0
        data = np.array(self.array[tuple(index)])
        self._release_mapped_pages()
        kept = [axis for position, axis in enumerate(self.axes)
                if position in (self._y, self._x, self._channel_axis)]
        if self._channel_axis is None:
            data = data[..., None]
            kept.append("C")
        order = [kept.index("Y"), kept.index("X")] + [
            position for position, axis in enumerate(kept) if axis not in "YX"]
        return np.transpose(data, order)

    def _release_mapped_pages(self) -> None:
        """Drop the pages of a memory-mapped file from this process's resident memory (the
        data is copied out already), so that reading every strip of a mapped image does not
        make the process hold the whole file."""
        mapping = getattr(self.array, "_mmap", None)
        if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)

    def strip(self, y0: int, y1: int, x0: int = 0, x1: int | None = None, step: int = 1
              ) -> np.ndarray:
        """Rows ``y0:y1`` (columns ``x0:x1``) as the float32 ``(h, w, C)`` image the model sees.

        Raises
        ------
        ImageReadError
            For NaN or infinite values, or (when the channels were reduced to one) colour
            channels that are not identical copies.
        """
        return self.model_input(self.raw(y0, y1, x0, x1, step))

    def model_input(self, raw: np.ndarray) -> np.ndarray:
        """Raw pixels (:meth:`raw`, any part of the image) as the float32 ``(h, w, C)`` image
        the model sees; raises as :meth:`strip` does."""
        if self._grayscale_check and not _is_grayscale_copy(raw):
            raise ImageReadError(f"{self.name}: has {self.raw_channels} channel(s) (colour), "
                                 f"expected 1 (grayscale); pick one channel")
        data = raw[..., self.channels]
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        data = data.astype(np.float32)
        if not np.all(np.isfinite(data)):
            raise ImageReadError(f"{self.name}: contains NaN or infinite values")
        return data


def _ome_zarr_axes(attributes: dict, name: str) -> tuple[str, str]:
    """``(dataset path, axes)`` of the full-resolution level of an OME-Zarr image group."""
    multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
    if not multiscales:
        raise ImageReadError(f"{name}: zarr group without OME-Zarr 'multiscales' metadata")
    first = multiscales[0]
    datasets = first.get("datasets") or []
    if not datasets:
        raise ImageReadError(f"{name}: OME-Zarr 'multiscales' lists no datasets")
    axes = first.get("axes")
    if axes is None:  # NGFF 0.1-0.3: always TCZYX
        letters = "TCZYX"
    else:
        letters = "".join((axis["name"] if isinstance(axis, dict) else axis)[0].upper()
                          for axis in axes)
    return datasets[0]["path"], letters


def open_lazy_image(source: Any, name: str | None = None) -> LazyImage:
    """Open an image for strip-by-strip reading.

    Parameters
    ----------
    source : str, os.PathLike, numpy.ndarray or zarr array
        A TIFF file (any TIFF tifffile reads, tiled or not, BigTIFF), a zarr array or OME-Zarr
        image folder, or an in-memory ``(H, W)`` / ``(H, W, C)`` array.
    name : str, optional
        What to call the image in messages (default: the path).

    Returns
    -------
    LazyImage

    Raises
    ------
    ImageReadError
        One line naming the file for a missing, unreadable or unsupported image.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = name or path
        if not os.path.exists(path):
            raise ImageReadError(f"{name}: file not found")
        if os.path.isdir(path):
            return _open_zarr(path, name)
        return _open_tiff(path, name)
    array = source
    name = name or "image"
    if hasattr(array, "attrs") and hasattr(array, "shape") and len(array.shape) > 3:
        raise ImageReadError(f"{name}: expected a 2-D or (H, W, C) array, got {array.shape}")
    if len(array.shape) == 2:
        return LazyImage(array, "YX", name)
    if len(array.shape) == 3:
        return LazyImage(array, "YXC", name)
    raise ImageReadError(f"{name}: expected a 2-D or (H, W, C) array, got shape {array.shape}")


def tiff_pixels(path: str | os.PathLike) -> int | None:
    """Pixels (rows x columns) of the first image of a TIFF file, read from its header only;
    ``None`` if it cannot be read (the reader reports why)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return int(series.shape[series.axes.index("Y")] * series.shape[series.axes.index("X")])
    except Exception:  # tifffile raises many types for broken files
        return None


def _open_tiff(path: str, name: str) -> LazyImage:
    import tifffile

    zarr = require_big_extra("zarr")
    try:
        with open(path, "rb") as handle:
            if handle.read(4) not in _TIFF_MAGIC:
                raise ImageReadError(f"{name}: not a TIFF file; very large images are read "
                                     "from TIFF/BigTIFF or zarr")
        tif = tifffile.TiffFile(path)
        if not tif.series:
            raise ImageReadError(f"{name}: TIFF holds no image data")
        series = tif.series[0]
        axes = series.axes
        if series.dataoffset is not None:  # uncompressed and contiguous: map it
            array = tifffile.memmap(path, series=0, mode="r")
        else:
            array = zarr.open(series.aszarr(level=0), mode="r")
            rows = array.chunks[axes.index("Y")] if "Y" in axes else 0
            if rows >= WHOLE_CHUNK_ROWS:
                logger.warning("%s: stored as compressed strips of %d rows: read whole into "
                               "memory (write it as a tiled TIFF to read it in strips)", name,
                               rows)
                array = np.asarray(array[...])
    except ImageReadError:
        raise
    except Exception as error:  # tifffile raises many types for broken files
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageReadError(f"{name}: cannot read TIFF (truncated or corrupt?): {message}"
                             ) from None
    image = LazyImage(array, axes, name)
    image.handle = tif
    return image


def _open_zarr(path: str, name: str) -> LazyImage:
    zarr = require_big_extra("zarr")
    try:
        node = zarr.open(path, mode="r")
    except Exception as error:
        raise ImageReadError(f"{name}: cannot open zarr ({' '.join(str(error).split())})"
                             ) from None
    if hasattr(node, "shape"):
        axes = "YX" if len(node.shape) == 2 else "CYX" if len(node.shape) == 3 else ""
        return LazyImage(node, axes, name)
    dataset, axes = _ome_zarr_axes(dict(node.attrs), name)
    return LazyImage(node[dataset], axes, name)


def _histogram_percentiles(counts: np.ndarray, offset: int, percentiles: tuple[float, float]
                           ) -> np.ndarray:
    """``np.percentile(values, percentiles)`` (method ``linear``) from a histogram of integer
    values ``offset + index``, with NumPy's own formulas (bit for bit)."""
    total = int(counts.sum())
    cumulative = np.cumsum(counts)
    quantiles = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    virtual = (total - 1) * quantiles  # NumPy's virtual index of method "linear"
    result = []
    for index in virtual.tolist():
        below = float(np.floor(index))
        if index >= total - 1:
            below, rank_below, rank_above = -1.0, total - 1, total - 1
        elif index < 0:
            below, rank_below, rank_above = 0.0, 0, 0
        else:
            rank_below, rank_above = int(below), int(below) + 1
        gamma = np.float64(index) - np.float64(below)
        a = np.float64(offset + int(np.searchsorted(cumulative, rank_below, side="right")))
        b = np.float64(offset + int(np.searchsorted(cumulative, rank_above, side="right")))
        difference = b - a
        result.append(b - difference * (1 - gamma) if gamma >= 0.5 else a + difference * gamma)
    return np.asarray(result, dtype=np.float64)


def streamed_percentile_range(image: LazyImage, low: float, high: float,
                              strip_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``low`` / ``high`` percentiles of a lazily read image (see module doc).

    Parameters
    ----------
    image : LazyImage
        The image (channels already chosen).
    low, high : float
        Percentiles, ``0 <= low < high <= 100``.
    strip_rows : int or None, optional
        Rows read at a time (default: about :data:`READ_PIXELS` pixels' worth).

    Returns
    -------
    p_low, p_high : numpy.ndarray
        float64 ``(C,)``, as :func:`layernet.normalize.percentile_range`.
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low} and {high}")
    strip_rows = strip_rows or max(1, READ_PIXELS // image.width)
    channels = image.shape[2]
    if image.dtype.type in _HISTOGRAM_TYPES:
        info = np.iinfo(image.dtype) if image.dtype != np.bool_ else None
        offset = int(info.min) if info is not None else 0
        bins = (int(info.max) - offset + 1) if info is not None else 2
        counts = np.zeros((channels, bins), dtype=np.int64)
        for y0 in range(0, image.height, strip_rows):
            values = image.strip(y0, min(y0 + strip_rows, image.height))
            for channel in range(channels):
                counts[channel] += np.bincount(
                    (values[..., channel].reshape(-1).astype(np.int64) - offset), minlength=bins)
        ranges = np.stack([_histogram_percentiles(counts[c], offset, (low, high))
                           for c in range(channels)])
        return ranges[:, 0], ranges[:, 1]
    pixels = image.height * image.width
    step = max(1, int(np.ceil(np.sqrt(pixels / SAMPLE_PIXELS))))
    rows = []
    for y0 in range(0, image.height, strip_rows * step):
        rows.append(image.strip(y0, min(y0 + strip_rows * step, image.height), step=step))
    sample = np.concatenate(rows).astype(np.float64)
    if step > 1:
        logger.info("%s: normalisation percentiles estimated from every %d-th row and column "
                    "(%d pixels)", image.name, step, sample.shape[0] * sample.shape[1])
    p_low, p_high = np.percentile(sample, [low, high], axis=(0, 1))
    return p_low, p_high


def describe(image: LazyImage) -> str:
    """One line about a lazy image: size, channels, pixel type."""
    return (f"{image.name}: {image.width} x {image.height} px, {len(image.channels)} channel(s), "
            f"{image.dtype}")

