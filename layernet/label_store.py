"""Chunked, compressed label stacks on disk: OME-Zarr and tiled BigTIFF, written in rows.

Formats of a label stack ``(L, H, W)`` (see :data:`OUTPUT_FORMATS`):

* ``tif`` — the ImageJ hyperstack TIFF of :func:`layernet.io.write_label_stack` (uint16, zlib
  compressed). For images that fit in memory.
* ``bigtiff`` — a tiled BigTIFF (``<name>.layers.tif``; uint32, tiles of :data:`TIFF_TILE`
  pixels, zlib), axes ``ZYX``, one page per slice: Fiji opens it with Bio-Formats, napari and
  :func:`layernet.io.read_label_stack` with tifffile, Dask through ``tifffile``'s zarr store.
* ``zarr`` — an OME-Zarr image (``<name>.layers.zarr``): NGFF **0.4** metadata on a zarr
  **format 2** group, the label stack as array ``0`` with axes ``z, y, x`` (uint32, chunks of
  ``1 x`` :data:`ZARR_CHUNK` ``x`` :data:`ZARR_CHUNK`, Blosc-zstd, ``/`` chunk separator) and an
  ``image-label`` entry, so napari-ome-zarr opens it as labels; Fiji's N5/Zarr reader, Dask
  (``dask.array.from_zarr(path, component="0")``) and :func:`read_label_store` read it lazily.
  NGFF 0.4 on zarr 2 is chosen because it is what napari-ome-zarr and Fiji read most widely
  today (0.5 needs zarr 3 readers).

:class:`ZarrLabelWriter` receives rows from :class:`layernet.stream_stitching.RowAssembler`
into ``<name>.layers.zarr.partial`` (a folder that no reader mistakes for a finished result) and,
once complete, trims the unused slices and renames it, or converts it to a tiled BigTIFF that is
written under a temporary name and renamed. A killed run leaves only ``*.partial`` (and
``.tmp-*``) names, never a complete-looking output.

zarr is imported lazily (the ``big`` extra). Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Iterator

import numpy as np

from layernet.files import write_atomic
from layernet.lazy_image import require_big_extra

logger = logging.getLogger(__name__)

__all__ = ["OUTPUT_FORMATS", "PARTIAL_SUFFIX", "TIFF_TILE", "ZARR_CHUNK", "ZarrLabelWriter",
           "read_label_store", "write_label_stack_as", "zarr_to_bigtiff"]

OUTPUT_FORMATS = ("tif", "bigtiff", "zarr")
"""Label-stack formats (see the module doc)."""

PARTIAL_SUFFIX = ".partial"
"""Suffix of a zarr folder still being written."""

ZARR_CHUNK = 512
"""Rows and columns of a zarr chunk of one slice."""

TIFF_TILE = 512
"""Rows and columns of a BigTIFF tile."""


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _ngff_attributes(name: str) -> dict[str, Any]:
    """OME-NGFF 0.4 metadata of a one-level label-stack image."""
    return {
        "multiscales": [{
            "version": "0.4",
            "name": name,
            "axes": [{"name": "z", "type": "space"}, {"name": "y", "type": "space"},
                     {"name": "x", "type": "space"}],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}],
        }],
        "image-label": {"version": "0.4"},
        "layernet": {"kind": "label stack", "axes": "slice, y, x",
                     "note": "every object id in exactly one slice; overlapping objects in "
                             "different slices"},
    }


class ZarrLabelWriter:
    """Write a label stack row band by row band into ``<path>.partial`` (OME-Zarr, see module).

    Parameters
    ----------
    path : str
        The final ``.zarr`` folder (written as ``path + ".partial"`` until :meth:`finish`).
    shape : tuple of int
        ``(H, W)``.
    dtype : type, optional
        Integer type of the ids.
    chunk : int, optional
        Chunk rows and columns.
    """

    def __init__(self, path: str, shape: tuple[int, int], dtype: type = np.uint32,
                 chunk: int = ZARR_CHUNK) -> None:
        zarr = require_big_extra("zarr")
        import numcodecs

        self.path = os.fspath(path)
        self.partial = self.path + PARTIAL_SUFFIX
        self.shape = (int(shape[0]), int(shape[1]))
        self.chunk = int(chunk)
        _remove(self.partial)  # left over by a killed run
        self.group = zarr.open_group(self.partial, mode="w", zarr_format=2)
        self.array = self.group.create_array(
            "0", shape=(1,) + self.shape, dtype=np.dtype(dtype),
            chunks=(1, min(self.chunk, self.shape[0]), min(self.chunk, self.shape[1])),
            compressors=numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
            fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})
        self.rows_written = 0

    def write_rows(self, top: int, layers: list[np.ndarray]) -> None:
        """Write rows ``top:top + n`` of every slice (slices are added as needed)."""
        self.write_block(top, 0, layers)

    def write_block(self, top: int, left: int, layers: list[np.ndarray]) -> None:
        """Write rows ``top:top + n``, columns ``left:left + m`` of every slice (slices are added
        as needed; all-zero blocks are left to the fill value). A band of rows counts as written
        once its block at the right edge is."""
        if len(layers) > self.array.shape[0]:
            self.array.resize((len(layers),) + self.shape)
        if not layers:
            return
        count, width = layers[0].shape
        for index, layer in enumerate(layers):
            if layer.any():
                self.array[index, top:top + count, left:left + width] = layer
        if left + width >= self.shape[1]:
            self.rows_written = max(self.rows_written, top + count)

    def finish(self, slices: int, output_format: str = "zarr", tiff_path: str | None = None
               ) -> str:
        """Trim to ``slices`` slices and publish the result; return its path.

        Parameters
        ----------
        slices : int
            Slices used.
        output_format : {"zarr", "bigtiff"}, optional
            ``zarr``: rename the folder to its final name; ``bigtiff``: write ``tiff_path`` from
            it and delete the folder.
        tiff_path : str, optional
            The BigTIFF to write (``bigtiff`` only).
        """
        if self.rows_written < self.shape[0]:
            raise RuntimeError(f"{self.path}: only {self.rows_written} of {self.shape[0]} rows "
                               "were written")
        slices = max(1, int(slices))
        if self.array.shape[0] != slices:
            self.array.resize((slices,) + self.shape)
        if output_format == "bigtiff":
            if tiff_path is None:
                raise ValueError("a BigTIFF output needs its path")
            zarr_to_bigtiff(self.array, tiff_path)
            shutil.rmtree(self.partial, ignore_errors=True)
            return tiff_path
        if output_format != "zarr":
            raise ValueError(f"unknown output format {output_format!r}")
        self.group.attrs.update(_ngff_attributes(os.path.basename(self.path)))
        _remove(self.path)
        os.replace(self.partial, self.path)
        return self.path

    def abandon(self) -> None:
        """Delete the partial folder (after an error)."""
        shutil.rmtree(self.partial, ignore_errors=True)


def _tiles(array: Any, tile: int) -> Iterator[np.ndarray]:
    """Tiles of every slice of ``array`` in TIFF order (slice, tile row, tile column), each read
    in one band of ``tile`` rows at a time."""
    slices, height, width = array.shape
    for index in range(slices):
        for y0 in range(0, height, tile):
            band = np.asarray(array[index, y0:y0 + tile])
            for x0 in range(0, width, tile):
                piece = np.zeros((tile, tile), band.dtype)
                part = band[:, x0:x0 + tile]
                piece[:part.shape[0], :part.shape[1]] = part
                yield piece


def zarr_to_bigtiff(array: Any, path: str, tile: int = TIFF_TILE) -> None:
    """Write an ``(L, H, W)`` array (zarr or NumPy) as a tiled, zlib-compressed BigTIFF with
    axes ``ZYX``, reading one band of ``tile`` rows at a time; atomically."""
    import tifffile

    shape = tuple(int(size) for size in array.shape)

    def write(temporary: str) -> None:
        tifffile.imwrite(temporary, _tiles(array, tile), shape=shape, dtype=array.dtype,
                         tile=(tile, tile), compression="zlib", bigtiff=True,
                         metadata={"axes": "ZYX"}, photometric="minisblack")

    write_atomic(path, write)


def write_label_stack_as(path: str, stack: np.ndarray, output_format: str) -> str:
    """Write an in-memory label stack as ``bigtiff`` (``path``) or ``zarr`` (``path`` is the
    ``.zarr`` folder), atomically; return the path."""
    stack = np.asarray(stack)
    if output_format not in ("bigtiff", "zarr"):
        raise ValueError(f"{path}: unknown label stack format {output_format!r}")
    if output_format == "bigtiff":
        zarr_to_bigtiff(stack.astype(np.uint32), path)
        return path
    writer = ZarrLabelWriter(path, stack.shape[1:])
    try:
        writer.write_rows(0, list(stack))
        return writer.finish(stack.shape[0], "zarr")
    except BaseException:
        writer.abandon()
        raise


def read_label_store(path: str | os.PathLike, lazy: bool = False) -> Any:
    """Read the label stack of an OME-Zarr folder written here (array ``0``).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.layers.zarr`` folder.
    lazy : bool, optional
        Return the zarr array (read on indexing) instead of a NumPy array.

    Raises
    ------
    ValueError
        One line naming the folder if it is not such a label stack (or is still ``.partial``).
    """
    zarr = require_big_extra("zarr")
    path = os.fspath(path)
    if path.endswith(PARTIAL_SUFFIX):
        raise ValueError(f"{path}: an unfinished output (the run that wrote it did not end)")
    try:
        group = zarr.open_group(path, mode="r")
        array = group["0"]
    except Exception as error:
        raise ValueError(f"{path}: not a layernet OME-Zarr label stack "
                         f"({' '.join(str(error).split()) or type(error).__name__})") from None
    if len(array.shape) != 3:
        raise ValueError(f"{path}: expected a (slices, H, W) label stack, got {array.shape}")
    return array if lazy else np.asarray(array[...])
