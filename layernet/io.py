"""Image, mask and label-stack file input/output (no TensorFlow).

* :func:`read_image` reads TIFF (any compression tifffile supports, also BigTIFF) and the formats
  OpenCV decodes (PNG, JPEG, BMP, ...) in 8/16/32-bit integer or float, grayscale or colour, and
  returns the raw array: ``(H, W)``, ``(H, W, C)`` for colour/multi-channel images, or
  ``(P, H, W)`` for a multi-page TIFF stack. Colour images are returned in RGB(A) order.
* :func:`as_channels` turns such an array into the ``(H, W, C)`` float32 image the model sees.
* :func:`read_mask` / :func:`read_label_image` read one binary mask / one 2-D label image.
* :func:`write_label_stack` / :func:`read_label_stack` write and read ``(L, H, W)`` label stacks as
  uint16 ImageJ hyperstack TIFFs (Fiji opens them as a stack of slices, napari as labels).

Every problem with a file raises :class:`ImageReadError` with a one-line message
``"<path>: <problem>"``. Files are written atomically by :func:`layernet.files.write_atomic`;
:data:`IMAGE_EXTENSIONS` is :data:`layernet.files.IMAGE_EXTENSIONS`.
"""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import tifffile

from layernet.files import IMAGE_EXTENSIONS, write_atomic
from layernet.instances import LabelStackError, validate_stack

logger = logging.getLogger(__name__)

__all__ = [
    "ImageReadError",
    "read_image",
    "as_channels",
    "with_channels",
    "read_mask",
    "read_label_image",
    "write_label_stack",
    "read_label_stack",
    "write_image_atomic",
    "IMAGE_EXTENSIONS",
]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class ImageReadError(ValueError):
    """Raised when an image, mask or label file is missing, unreadable or holds unexpected data."""


def _fail(path: str | os.PathLike, problem: str) -> ImageReadError:
    return ImageReadError(f"{os.fspath(path)}: {problem}")


def _check_file(path: str | os.PathLike) -> bytes:
    """Check that ``path`` is a non-empty regular file and return its first bytes."""
    if not os.path.exists(path):
        raise _fail(path, "file not found")
    if not os.path.isfile(path):
        raise _fail(path, "not a file")
    if os.path.getsize(path) == 0:
        raise _fail(path, "empty file (0 bytes)")
    with open(path, "rb") as handle:
        return handle.read(8)


def _read_tiff(path: str | os.PathLike) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise _fail(path, "TIFF holds no image data")
            series = tif.series[0]
            axes = series.axes
            data = series.asarray()
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, f"cannot read TIFF (truncated or corrupt?): {message}") from None
    # Drop singleton axes except Y and X, then bring a channel axis to the end.
    keep = [i for i, ax in enumerate(axes) if data.shape[i] != 1 or ax in "YX"]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    for channel_axis in "SC":
        if channel_axis in axes and axes.index(channel_axis) != len(axes) - 1 and data.ndim == 3:
            data = np.moveaxis(data, axes.index(channel_axis), -1)
            axes = axes.replace(channel_axis, "") + channel_axis
    if data.ndim > 3:
        raise _fail(path, f"TIFF has {data.ndim} dimensions (axes {axes}, shape {data.shape}); "
                          "expected a 2-D image, a multi-channel image or one stack")
    return data


def _read_with_opencv(path: str | os.PathLike) -> np.ndarray:
    # np.fromfile + imdecode also works for non-ASCII paths.
    buffer = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise _fail(path, "not a readable image (unknown format, truncated or corrupt)")
    if image.ndim == 3:
        if image.shape[2] == 3:
            image = image[..., ::-1]
        elif image.shape[2] == 4:
            image = image[..., [2, 1, 0, 3]]
        image = np.ascontiguousarray(image)
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into its raw array.

    Parameters
    ----------
    path : str or os.PathLike
        TIFF (detected by its magic bytes, whatever the extension), PNG, JPEG or any format OpenCV
        decodes.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` for a grayscale image, ``(H, W, C)`` for a colour/multi-channel image (RGB(A)
        order), ``(P, H, W)`` for a multi-page TIFF stack; original dtype.

    Raises
    ------
    ImageReadError
        If the file is missing, empty, truncated, corrupt or not an image.
    """
    head = _check_file(path)
    if head[:4] in _TIFF_MAGIC:
        image = _read_tiff(path)
    else:
        image = _read_with_opencv(path)
    if image.ndim < 2 or 0 in image.shape:
        raise _fail(path, f"image has no pixels (shape {image.shape})")
    return image


def _identical_channels(image: np.ndarray) -> bool:
    return all(np.array_equal(image[..., 0], image[..., c]) for c in range(1, image.shape[-1]))


def _is_grayscale_copy(image: np.ndarray) -> bool:
    """An ``(H, W, 3|4)`` image whose colour channels are identical (and alpha, if any, is
    constant): a grayscale image saved as RGB(A)."""
    colour = image.shape[-1]
    if colour not in (3, 4):
        return False
    opaque = colour == 3 or np.unique(image[..., 3]).size == 1
    return opaque and _identical_channels(image[..., :3])


def as_channels(
    image: np.ndarray,
    channel: int | None = None,
    expected_channels: int | None = None,
    name: str = "image",
) -> np.ndarray:
    """Convert a raw image array to an ``(H, W, C)`` float32 image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` array as returned by :func:`read_image`.
    channel : int or None, optional
        Keep only this channel (0-based); ``None`` keeps all channels.
    expected_channels : int or None, optional
        Required number of channels of the result. A colour image whose channels are identical
        copies (a grayscale image saved as RGB, possibly with an opaque alpha channel) is reduced
        to one channel when ``expected_channels == 1``.
    name : str, optional
        What to call the image in error messages (usually its file name).

    Returns
    -------
    numpy.ndarray
        ``(H, W, C)`` float32 array with the original intensities.

    Raises
    ------
    ImageReadError
        On a wrong channel index, a channel-count mismatch, a stack where one image was expected,
        a non-numeric dtype, or NaN/Inf values.
    """
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise _fail(name, f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    elif image.ndim == 3:
        if image.shape[-1] > 4 and image.shape[0] <= image.shape[-1]:
            raise _fail(name, f"is a stack of {image.shape[0]} planes of {image.shape[1]}x"
                              f"{image.shape[2]} (shape {image.shape}); expected one 2-D image "
                              "or an (H, W, C) image")
    else:
        raise _fail(name, f"expected a 2-D image or (H, W, C) image, got shape {image.shape}")
    n_channels = image.shape[-1]
    if channel is not None:
        if not -n_channels <= channel < n_channels:
            kind = "grayscale (1 channel)" if n_channels == 1 else f"{n_channels} channels"
            raise _fail(name, f"channel {channel} requested but the image is {kind}")
        image = image[..., channel:channel + 1] if channel >= 0 else image[..., [channel]]
    if expected_channels is not None and image.shape[-1] != expected_channels:
        colour = image.shape[-1]
        if expected_channels == 1 and _is_grayscale_copy(image):
            image = image[..., :1]
        if image.shape[-1] != expected_channels:
            kind = {1: "grayscale", 3: "RGB", 4: "RGBA"}
            raise _fail(
                name,
                f"has {colour} channel(s) ({kind.get(colour, 'multi-channel')}), expected "
                f"{expected_channels} ({kind.get(expected_channels, 'multi-channel')})",
            )
    image = image.astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise _fail(name, "contains NaN or infinite values")
    return image


_grayscale_noted = False  # "read as grayscale" is logged once per process


def with_channels(image: np.ndarray, channels: int, name: str = "image") -> np.ndarray:
    """``image`` ``(H, W, C)`` with ``channels`` channels: unchanged when it has them; a colour
    image whose channels are identical copies (grayscale saved as RGB or opaque RGBA, common
    for microscopy exports) becomes one channel when ``channels == 1`` (logged once).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` image (raw intensities, any numeric dtype).
    channels : int
        Channels the model expects.
    name : str, optional
        What to call the image in the error message.

    Returns
    -------
    numpy.ndarray
        ``image`` itself, or its first channel ``(H, W, 1)`` in its own dtype.

    Raises
    ------
    ImageReadError
        If the channel counts differ otherwise; the message names the image and ``--channels``.
    """
    global _grayscale_noted
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == channels:
        return image
    if image.ndim != 3:
        raise _fail(name, f"expected an (H, W, C) image, got shape {image.shape}")
    colour = image.shape[-1]
    if channels == 1 and _is_grayscale_copy(image):
        if not _grayscale_noted:
            logger.info("%s: its colour channels are identical; read as grayscale (as is "
                        "every such image)", name)
            _grayscale_noted = True
        return image[..., :1]
    raise _fail(name, f"has {colour} channel(s) but the model expects {channels} "
                      "(set --channels, or pick one with channel=)")


def _collapse_colour_mask(image: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Reduce a colour (H, W, 3|4) mask to one plane."""
    colours = image[..., :3] if image.shape[-1] in (3, 4) else image
    if image.shape[-1] == 4:
        alpha = image[..., 3]
        colour_constant = all(np.unique(colours[..., c]).size == 1 for c in range(3))
        if colour_constant and np.unique(alpha).size > 1:
            return alpha  # mask drawn in the alpha channel only
    if image.shape[-1] == 2:  # gray + alpha
        return image[..., 0]
    if not _identical_channels(colours):
        raise _fail(path, "colour mask whose channels differ; expected a gray or black/white mask")
    return colours[..., 0]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read one binary mask.

    Accepted values are ``{0, 1}``, ``{0, 255}`` and ``{0, dtype maximum}`` (or only one of the
    two). Colour masks whose colour channels are identical (for example the RGBA 0/255 PNGs of
    BBBC010) are accepted; an alpha channel is ignored unless the mask is drawn only in it.

    Parameters
    ----------
    path : str or os.PathLike
        Mask file.

    Returns
    -------
    numpy.ndarray
        Boolean ``(H, W)`` array.

    Raises
    ------
    ImageReadError
        If the file cannot be read, is not 2-D, or is not a binary mask.
    """
    image = read_image(path)
    if image.ndim == 3:
        if image.shape[-1] > 4:
            raise _fail(path, f"is a stack of {image.shape[0]} planes (shape {image.shape}); "
                              "expected one 2-D mask")
        image = _collapse_colour_mask(image, path)
    values = np.unique(image)
    if not np.all(np.isfinite(values)):
        raise _fail(path, "mask contains NaN or infinite values")
    allowed = {0, 1, 255}
    if np.issubdtype(image.dtype, np.integer):
        allowed.add(int(np.iinfo(image.dtype).max))
    non_zero = [v for v in values.tolist() if v != 0]
    if len(non_zero) > 1 or (non_zero and non_zero[0] not in allowed):
        shown = ", ".join(str(v) for v in values[:6].tolist()) + (", ..." if values.size > 6 else "")
        raise _fail(path, f"not a binary mask (values {shown}); expected 0/1 or 0/255")
    return image != 0


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a 2-D label image (0 = background, ``1..`` = object ids).

    Parameters
    ----------
    path : str or os.PathLike
        Label image file (integer TIFF/PNG; float files must hold whole numbers).

    Returns
    -------
    numpy.ndarray
        int32 ``(H, W)`` label image with the ids of the file.

    Raises
    ------
    ImageReadError
        If the file cannot be read, is not 2-D, holds non-integer or negative ids, or ids that do
        not fit into int32.
    """
    image = read_image(path)
    if image.ndim == 3 and image.shape[-1] in (3, 4) and _identical_channels(image[..., :3]):
        image = image[..., 0]
    if image.ndim != 2:
        raise _fail(path, f"a label image must be 2-D, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)) or np.any(np.mod(image, 1) != 0):
            raise _fail(path, "label image holds non-integer values")
    elif not np.issubdtype(image.dtype, np.integer) and image.dtype != np.bool_:
        raise _fail(path, f"unsupported pixel type {image.dtype} for a label image")
    if image.size and image.min() < 0:
        raise _fail(path, f"label ids must be >= 0, found {image.min()}")
    if image.size and image.max() > np.iinfo(np.int32).max:
        raise _fail(path, f"label id {image.max()} does not fit into int32")
    return image.astype(np.int32)


def write_label_stack(path: str | os.PathLike, stack: np.ndarray) -> None:
    """Write a label stack as a zlib-compressed uint16 ImageJ hyperstack TIFF, atomically.

    The file is written under a temporary name in the same folder and renamed, so readers never
    see a partial file. Axes are ``ZYX`` (one slice per layer): Fiji opens a stack of ``L``
    slices, napari a labels layer of shape ``(L, H, W)``.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (``.tif``).
    stack : numpy.ndarray
        Label stack ``(L, H, W)`` with ids ``0..65535``.

    Raises
    ------
    LabelStackError
        If ``stack`` is not a valid label stack or has ids above 65535.
    """
    path = os.fspath(path)
    stack = validate_stack(np.asarray(stack), name=path)
    if stack.size and int(stack.max()) > np.iinfo(np.uint16).max:
        raise LabelStackError(f"{path}: label id {int(stack.max())} does not fit into uint16")
    data = stack.astype(np.uint16)
    write_atomic(path, lambda temporary: _imwrite_imagej_stack(temporary, data))


def _imwrite_imagej_stack(path: str, data: np.ndarray) -> None:
    """Write a ``(Z, Y, X)`` array as an ImageJ hyperstack of ``Z`` slices, zlib-compressed
    (ImageJ, Fiji, napari and tifffile read it).

    The array is passed with ImageJ's full axes ``TZCYXS``: given as ``ZYX``, tifffile takes a
    width of 1 for one sample per pixel and writes a single ``(Z, Y)`` page instead of ``Z``
    slices (1-pixel-wide images would come back with the wrong shape).
    """
    depth, height, width = data.shape
    tifffile.imwrite(path, data.reshape(1, depth, 1, height, width, 1), imagej=True,
                     metadata={"axes": "TZCYXS"}, compression="zlib")


def read_label_stack(path: str | os.PathLike) -> np.ndarray:
    """Read a label stack written by :func:`write_label_stack` (or a 2-D label image).

    Parameters
    ----------
    path : str or os.PathLike
        TIFF with ``(L, H, W)`` ids (also a tiled BigTIFF), an OME-Zarr label stack folder
        (``*.layers.zarr``, :func:`layernet.label_store.read_label_store`), or any 2-D label
        image (returned with ``L = 1``).

    Returns
    -------
    numpy.ndarray
        int32 label stack ``(L, H, W)``.

    Raises
    ------
    ImageReadError
        If the file cannot be read, is not integer, or is not a valid label stack (negative ids,
        an id in two slices).
    """
    if os.path.isdir(path) and os.fspath(path).rstrip("/").endswith(".zarr"):
        from layernet.label_store import read_label_store

        image = read_label_store(path)
    else:
        image = read_image(path)
    if image.ndim == 2:
        return read_label_image(path)[None]
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)) or np.any(np.mod(image, 1) != 0):
            raise _fail(path, "label stack holds non-integer values")
    elif not np.issubdtype(image.dtype, np.integer):
        raise _fail(path, f"unsupported pixel type {image.dtype} for a label stack")
    if image.size and image.min() < 0:
        raise _fail(path, f"label ids must be >= 0, found {image.min()}")
    stack = image.astype(np.int32)
    try:
        validate_stack(stack)
    except LabelStackError as exc:
        raise _fail(path, str(exc).split(": ", 1)[-1]) from None
    return stack


def write_image_atomic(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an image with OpenCV (format from the extension) under a temporary name, then rename.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, e.g. ``preview.png``.
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` RGB uint8/uint16 array.
    """
    path = os.fspath(path)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        image = image[..., ::-1]
    extension = os.path.splitext(path)[1] or ".png"
    ok, encoded = cv2.imencode(extension, np.ascontiguousarray(image))
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode an image with extension {extension!r}")
    write_atomic(path, encoded.tofile)
