"""napari reader of layernet predictions: ``*.layers.tif`` files and folders of them.

``predict.py`` writes ``<name>.layers.tif`` (a uint16 label stack ``L x H x W``) beside each input
image or into ``--out``. Reading one gives the layers of
:func:`layernet.napari.layers.prediction_layer_data`: one Labels layer per slice holding objects
(``<name> slice <k>``) and one Shapes layer with every object's outline (``<name> outlines``),
plus the input image (``<name>``) when it sits in the same folder under the same name
(``<name>.tif``, ``<name>.png``, ...). A folder gives the layers of every ``*.layers.tif`` in it,
sorted by name; only the first prediction's layers are shown at first.

Very large predictions (``predict.py --output-format zarr`` writes ``<name>.layers.zarr``,
``--output-format bigtiff`` a tiled ``<name>.layers.tif``) are not read whole: an OME-Zarr stack,
and a TIFF whose slices have more than :data:`layernet.napari.large.LAZY_PIXELS` pixels, open as
lazy multiscale Labels layers with outlines computed object by object
(:mod:`layernet.napari.large`; needs the ``big`` extra), and the image beside them as a lazy
pyramid too.

A file that cannot be read, or holds no valid label stack, raises an error of one line that
names it (napari shows it as a notification). A stack without objects opens with a warning.

This module does not import napari: :func:`read_prediction` returns layer data tuples, and
:func:`open_prediction` adds them to any viewer with napari's ``add_<layer type>`` methods.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from layernet.backends import MissingPackageError
from layernet.export import OUTPUT_SUFFIXES
from layernet.instances import num_objects
from layernet.files import IMAGE_EXTENSIONS, visible_entries
from layernet.io import ImageReadError, read_image, read_label_stack
from layernet.lazy_image import open_lazy_image, require_big_extra, tiff_pixels
from layernet.napari import large
from layernet.napari.layers import LayerData, prediction_layer_data

logger = logging.getLogger(__name__)

__all__ = [
    "PREDICTION_SUFFIXES",
    "PredictionReadError",
    "is_prediction_file",
    "prediction_files",
    "source_image",
    "read_prediction",
    "napari_get_reader",
    "open_prediction",
    "add_layer_data",
]

PREDICTION_SUFFIXES = (OUTPUT_SUFFIXES["layers"], ".layers.tiff", OUTPUT_SUFFIXES["layers_zarr"])
"""File (and OME-Zarr folder) name endings of label stacks written by ``predict.py`` (lower
case)."""

PathLike = str | os.PathLike


class PredictionReadError(ValueError):
    """A prediction file or folder cannot be opened; the message is one line naming it."""


def is_prediction_file(path: PathLike) -> bool:
    """Whether ``path`` is named like a label stack of ``predict.py`` (``*.layers.tif``, or a
    ``*.layers.zarr`` folder)."""
    return os.path.basename(os.fspath(path).rstrip("/\\")).lower().endswith(PREDICTION_SUFFIXES)


def _is_zarr_prediction(path: str) -> bool:
    return os.path.isdir(path) and is_prediction_file(path)


def prediction_files(folder: PathLike) -> list[str]:
    """The ``*.layers.tif`` files and ``*.layers.zarr`` folders of a folder, sorted by name
    (hidden files left out).

    Parameters
    ----------
    folder : str or os.PathLike
        A folder, e.g. the ``--out`` folder of ``predict.py``.

    Returns
    -------
    list of str
        Paths of the prediction files; empty when there are none.
    """
    return [path for path in visible_entries(folder)
            if is_prediction_file(path) and (os.path.isfile(path) or _is_zarr_prediction(path))]


def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip("/\\"))
    for suffix in PREDICTION_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return os.path.splitext(name)[0]


def source_image(path: PathLike) -> str | None:
    """The input image of a prediction when it sits beside it: ``<name>.<image extension>``.

    Parameters
    ----------
    path : str or os.PathLike
        A ``<name>.layers.tif``.

    Returns
    -------
    str or None
        Path of the image (extensions of :data:`layernet.files.IMAGE_EXTENSIONS`, in that order,
        any case), or ``None``.
    """
    path = os.fspath(path).rstrip("/\\")
    folder = os.path.dirname(os.path.abspath(path))
    stem = _stem(path)
    candidates = {}
    for name in os.listdir(folder):
        base, extension = os.path.splitext(name)
        if base == stem and extension.lower() in IMAGE_EXTENSIONS:
            candidates[extension.lower()] = os.path.join(folder, name)
    for extension in IMAGE_EXTENSIONS:
        if extension in candidates and os.path.isfile(candidates[extension]):
            return candidates[extension]
    return None


def _image_beside(path: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The input image of ``path`` if there is one of the stack's size; a warning otherwise."""
    image_path = source_image(path)
    if image_path is None:
        return None
    try:
        image = read_image(image_path)
    except ImageReadError as error:
        warnings.warn(f"{path}: not showing the image beside it ({error})", stacklevel=3)
        return None
    if image.ndim not in (2, 3) or image.shape[:2] != shape:
        warnings.warn(f"{path}: not showing {os.path.basename(image_path)}: its shape "
                      f"{image.shape} does not match the prediction's {shape}", stacklevel=3)
        return None
    return image


def _is_large(path: str) -> bool:
    """Whether a prediction is read lazily: an OME-Zarr folder, or a TIFF of large slices."""
    if _is_zarr_prediction(path):
        return True
    pixels = tiff_pixels(path)
    return pixels is not None and pixels > large.LAZY_PIXELS


def _read_large(path: str, with_image: bool, visible: bool) -> list[LayerData] | None:
    """Layers of a large prediction read lazily; ``None`` for a TIFF when zarr and Dask (the
    ``big`` extra) are missing, so that it is read whole as before."""
    try:
        stack = large.open_stack_lazily(path)
        layers = large.large_prediction_layer_data(
            stack, _stem(path), visible=visible, metadata={"source": os.path.abspath(path)},
            source=path)
    except MissingPackageError as error:
        if _is_zarr_prediction(path):
            raise PredictionReadError(f"{path}: {error}") from None
        warnings.warn(f"{path}: read whole into memory ({error})", stacklevel=3)
        return None
    except (ImageReadError, OSError, ValueError) as error:
        raise PredictionReadError(" ".join(str(error).split())) from None
    if with_image:
        image = _lazy_image_beside(path, tuple(stack.shape[1:]), visible)
        if image is not None:
            layers.insert(0, image)
    return layers


def _lazy_image_beside(path: str, shape: tuple[int, ...], visible: bool) -> LayerData | None:
    """The input image of a large prediction as a lazy pyramid, if it sits beside it."""
    image_path = source_image(path)
    if image_path is None:
        return None
    try:
        image = open_lazy_image(image_path)
    except (ImageReadError, OSError, ValueError) as error:
        warnings.warn(f"{path}: not showing the image beside it ({error})", stacklevel=4)
        return None
    if (image.height, image.width) != shape:
        warnings.warn(f"{path}: not showing {os.path.basename(image_path)}: its size "
                      f"{image.height}x{image.width} does not match the prediction's "
                      f"{shape[0]}x{shape[1]}", stacklevel=4)
        return None
    da = require_big_extra("dask.array")
    array = da.from_array(image.array)
    order = [image.axes.index("Y"), image.axes.index("X")]
    channel = next((index for index, axis in enumerate(image.axes)
                    if axis not in "YX" and image.array.shape[index] > 1), None)
    if channel is not None:
        order.append(channel)
    array = array.transpose(order + [index for index in range(array.ndim) if index not in order])
    array = array.reshape(array.shape[:len(order)])
    data, multiscale = large.as_layer_data(large.label_pyramid(array))
    kwargs: dict[str, Any] = {"name": _stem(path), "visible": visible, "multiscale": multiscale}
    if channel is not None and array.shape[-1] in (3, 4):
        kwargs["rgb"] = True
    elif channel is not None:
        kwargs["channel_axis"] = 2
    return data, kwargs, "image"


def _read_one(path: str, with_image: bool, visible: bool) -> list[LayerData]:
    if _is_large(path):
        layers = _read_large(path, with_image, visible)
        if layers is not None:
            return layers
    try:
        stack = read_label_stack(path)
    except (ImageReadError, OSError) as error:
        raise PredictionReadError(" ".join(str(error).split())) from None
    if num_objects(stack) == 0:
        warnings.warn(f"{path}: the prediction holds no objects", stacklevel=3)
    image = _image_beside(path, stack.shape[1:]) if with_image else None
    return prediction_layer_data(stack, _stem(path), image=image, visible=visible,
                                 metadata={"source": os.path.abspath(path)})


def read_prediction(path: PathLike | Sequence[PathLike], with_image: bool = True
                    ) -> list[LayerData]:
    """Layer data of a prediction file, a folder of them, or a list of either.

    Parameters
    ----------
    path : str, os.PathLike or sequence of them
        ``*.layers.tif`` files and/or folders holding them.
    with_image : bool, optional
        Add the input image of each prediction when it sits beside it.

    Returns
    -------
    list of LayerData
        For every prediction: ``[image,] <name> slice <k>..., <name> outlines``; the layers of
        all but the first prediction start hidden.

    Raises
    ------
    PredictionReadError
        For a missing or unreadable file, a file that holds no valid label stack, or a folder
        without ``*.layers.tif`` files (one line naming the file or folder).
    """
    paths = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [
        os.fspath(item) for item in path]
    files: list[str] = []
    for item in paths:
        if _is_zarr_prediction(item):
            files.append(item)
        elif os.path.isdir(item):
            found = prediction_files(item)
            if not found:
                raise PredictionReadError(f"{item}: folder holds no *.layers.tif predictions")
            files.extend(found)
        elif not os.path.exists(item):
            raise PredictionReadError(f"{item}: file not found")
        else:
            files.append(item)
    layers: list[LayerData] = []
    for index, file in enumerate(files):
        layers.extend(_read_one(file, with_image, visible=index == 0))
    logger.info("opened %d prediction(s): %d layers", len(files), len(layers))
    return layers


def napari_get_reader(path: str | list[str]) -> Callable[..., list[LayerData]] | None:
    """npe2 reader contribution: :func:`read_prediction` for predictions, ``None`` otherwise.

    Parameters
    ----------
    path : str or list of str
        What napari is asked to open.

    Returns
    -------
    callable or None
        :func:`read_prediction` if every path is a ``*.layers.tif`` file or a folder holding
        one; ``None`` (napari tries other readers) otherwise.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for item in paths:
        if _is_zarr_prediction(item):
            continue
        if os.path.isdir(item):
            if not prediction_files(item):
                return None
        elif not is_prediction_file(item):
            return None
    return read_prediction


def open_prediction(viewer: Any, path: PathLike | Sequence[PathLike], with_image: bool = True
                    ) -> list[Any]:
    """Add the layers of :func:`read_prediction` to a napari viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    path : str, os.PathLike or sequence of them
        ``*.layers.tif`` files and/or folders holding them.
    with_image : bool, optional
        Add the input image of each prediction when it sits beside it.

    Returns
    -------
    list of napari.layers.Layer
        The added layers, bottom to top.

    Raises
    ------
    PredictionReadError
        As :func:`read_prediction`; nothing is added then.
    """
    return add_layer_data(viewer, read_prediction(path, with_image=with_image))


def add_layer_data(viewer: Any, layers: Sequence[LayerData]) -> list[Any]:
    """Add layer data tuples to a viewer (``viewer.add_<type>(data, **kwargs)``).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    layers : sequence of LayerData
        ``(data, kwargs, layer type)`` tuples.

    Returns
    -------
    list of napari.layers.Layer
        The added layers (an image with ``channel_axis`` adds one per channel).
    """
    added: list[Any] = []
    for data, kwargs, layer_type in layers:
        result = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        added.extend(result if isinstance(result, list) else [result])
    return added
