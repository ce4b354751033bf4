"""Export label stacks to the formats other tools read; every file is written atomically.

* :func:`save_masks` — one binary PNG per object in a folder (``0001.png``, ...);
* :func:`save_rois` — a Fiji/ImageJ ROI Manager zip (:mod:`roifile`), one polygon per connected
  part of each object, traced between pixel centres so that Fiji's polygon filling gives back
  exactly the object's pixels (holes are filled);
* :func:`coco_annotations` / :func:`save_coco` — COCO instance annotations with compressed RLE
  masks (:mod:`pycocotools`), which represent overlapping objects exactly;
* :func:`save_flat` — one label image (uint16 TIFF), overlaps resolved by
  :func:`layernet.instances.flatten_stack`;
* :func:`save_probability_maps` — the network's raw maps as a float32 TIFF.

:func:`write_prediction` writes the outputs of ``predict.py`` for one image, named
``<prefix><suffix>`` with the suffixes of :data:`OUTPUT_SUFFIXES`.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import pycocotools.mask as coco_mask
import roifile
from skimage import measure

from layernet.instances import flatten_stack, object_crops, pack_stack, validate_stack
from layernet.files import atomic_output, write_atomic, write_text_atomic
from layernet.io import _imwrite_imagej_stack, write_image_atomic, write_label_stack
from layernet.viz import display_image, outline_overlay

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_SUFFIXES",
    "object_crops",
    "save_masks",
    "object_polygons",
    "object_rois",
    "save_rois",
    "write_rois",
    "rle_encode",
    "coco_annotation",
    "coco_annotations",
    "coco_document",
    "save_coco",
    "write_coco",
    "save_flat",
    "save_probability_maps",
    "write_prediction",
]

OUTPUT_SUFFIXES = {
    "layers": ".layers.tif",
    "layers_zarr": ".layers.zarr",  # the label stack as OME-Zarr (--output-format zarr)
    "overlay": ".overlay.png",
    "masks": ".masks",
    "rois": ".rois.zip",
    "coco": ".coco.json",
    "flat": ".flat.tif",
    "prob": ".prob.tif",
    "layer_maps": ".layermaps.png",  # written by predict.py --save-layer-maps (layernet.viz)
}
"""File name suffix of each output of :func:`write_prediction` (``masks`` is a folder)."""


def save_masks(folder: str | os.PathLike, stack: np.ndarray) -> list[str]:
    """Write one 0/255 PNG per object (``<id>.png``, ids zero-padded to 4 digits) into a folder.

    The folder is filled under a temporary name and renamed, replacing an older folder of the
    same name, so it never holds a mix of old and new masks.

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder (created).
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    list of str
        Paths of the written masks (inside ``folder``).
    """
    folder = os.fspath(folder)
    stack = validate_stack(np.asarray(stack), name=folder)
    names = []
    with atomic_output(folder, folder=True) as temporary:
        height, width = stack.shape[1:]
        for label, _, box, crop in object_crops(stack):
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[box][crop] = 255
            name = f"{label:04d}.png"
            write_image_atomic(os.path.join(temporary, name), mask)
            names.append(name)
    return [os.path.join(folder, name) for name in names]


def object_polygons(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[np.ndarray]:
    """Outer outlines of the connected parts of a binary mask as ``(x, y)`` polygons.

    The outlines run through the midpoints between object and background pixel centres
    (marching squares at level 0.5), in ImageJ pixel coordinates (pixel ``(x, y)`` covers
    ``[x, x + 1) x [y, y + 1)``), so a pixel is inside the polygon exactly when it belongs to the
    mask (holes excepted). Parts are returned largest first.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean ``(h, w)`` mask.
    offset : tuple of int, optional
        ``(y, x)`` of the mask's top-left pixel in the image.

    Returns
    -------
    list of numpy.ndarray
        float32 ``(P, 2)`` arrays of ``x, y`` vertices.
    """
    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    polygons = []
    for contour in measure.find_contours(padded, 0.5):
        rows, cols = contour[:, 0], contour[:, 1]
        signed_area = 0.5 * float(np.sum(cols[:-1] * rows[1:] - cols[1:] * rows[:-1]))
        if signed_area <= 0:
            continue  # a hole
        points = np.stack([cols - 1 + 0.5 + offset[1], rows - 1 + 0.5 + offset[0]], axis=1)
        polygons.append((signed_area, points[:-1].astype(np.float32)))
    polygons.sort(key=lambda item: -item[0])
    return [points for _, points in polygons]


def save_rois(path: str | os.PathLike, stack: np.ndarray) -> int:
    """Write a Fiji ROI Manager zip with one polygon ROI per connected part of each object.

    ROI names are ``<id>-L<slice>`` (slice 1-based, as in Fiji), with ``-<part>`` appended for
    the second and further parts of an object split into several pieces.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.zip``.
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.

    Returns
    -------
    int
        Number of ROIs written.
    """
    path = os.fspath(path)
    stack = validate_stack(np.asarray(stack), name=path)
    rois = [roi for label, layer_index, box, crop in object_crops(stack)
            for roi in object_rois(label, layer_index, box, crop)]
    write_rois(path, rois)
    return len(rois)


def object_rois(label: int, layer_index: int, box: tuple[slice, slice], crop: np.ndarray
                ) -> list[Any]:
    """The ImageJ polygon ROIs of one object (one per connected part), named as in
    :func:`save_rois`.

    Parameters
    ----------
    label : int
        The object's id.
    layer_index : int
        Its slice (0-based).
    box : tuple of slice
        Its bounding box in the image.
    crop : numpy.ndarray
        Its boolean mask inside ``box``.

    Returns
    -------
    list of roifile.ImagejRoi
    """
    offset = (box[0].start, box[1].start)
    return [roifile.ImagejRoi.frompoints(
                points, name=f"{label:04d}-L{layer_index + 1}" + (f"-{part + 1}" if part else ""))
            for part, points in enumerate(object_polygons(crop, offset))]


def write_rois(path: str | os.PathLike, rois: list[Any]) -> None:
    """Write ImageJ ROIs as a Fiji ROI Manager zip, atomically."""
    # the temporary name ends with the destination's: a .zip name makes roifile write a zip
    write_atomic(os.fspath(path), lambda temporary: roifile.roiwrite(temporary, rois, mode="w"))


def rle_encode(crop: np.ndarray, box: tuple[slice, slice], shape: tuple[int, int]
               ) -> dict[str, Any]:
    """COCO compressed RLE of an object given by its crop, without forming the full mask.

    Parameters
    ----------
    crop : numpy.ndarray
        Boolean mask inside ``box``.
    box : tuple of slice
        Bounding box of the crop in the image.
    shape : tuple of int
        ``(H, W)`` of the image.

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": str}`` as in COCO annotation files.
    """
    height, width = shape
    columns = np.zeros((box[1].stop - box[1].start, height), dtype=np.uint8)
    columns[:, box[0]] = crop.T  # column-major order: one row per image column
    flat = columns.reshape(-1)
    start = box[1].start * height
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat[0]:
        runs = [0] + runs
    runs[0] += start
    if len(runs) % 2 == 0:  # ends with a run of ones
        runs.append(0)
    runs[-1] += height * width - start - flat.size
    rle = coco_mask.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def coco_annotations(stack: np.ndarray, file_name: str, image_id: int = 1,
                     category: str = "object") -> dict[str, Any]:
    """COCO instance-segmentation dict (images, annotations, categories) of one label stack.

    Each object becomes one annotation with a compressed RLE ``segmentation``, its ``area`` in
    pixels, ``bbox`` ``[x, y, width, height]``, ``iscrowd`` 0, ``category_id`` 1 and, for the
    way back, ``layernet_id`` (the id) and ``layernet_slice`` (its slice, 0-based).

    Parameters
    ----------
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.
    file_name : str
        Name of the image file recorded in ``images``.
    image_id : int, optional
        COCO image id.
    category : str, optional
        Name of the single category.

    Returns
    -------
    dict
    """
    stack = np.asarray(stack)
    height, width = stack.shape[1:]
    annotations = [coco_annotation(number, label, layer_index, box, crop, (height, width),
                                   image_id)
                   for number, (label, layer_index, box, crop)
                   in enumerate(object_crops(stack), start=1)]
    return coco_document(annotations, file_name, (height, width), image_id, category)


def coco_annotation(number: int, label: int, layer_index: int, box: tuple[slice, slice],
                    crop: np.ndarray, shape: tuple[int, int], image_id: int = 1
                    ) -> dict[str, Any]:
    """The COCO annotation of one object (see :func:`coco_annotations`).

    Parameters
    ----------
    number : int
        The annotation id.
    label, layer_index : int
        The object's id and slice (0-based).
    box : tuple of slice
        Its bounding box in the image.
    crop : numpy.ndarray
        Its boolean mask inside ``box``.
    shape : tuple of int
        ``(H, W)`` of the image.
    image_id : int, optional
        COCO image id.

    Returns
    -------
    dict
    """
    return {
        "id": int(number),
        "image_id": image_id,
        "category_id": 1,
        "segmentation": rle_encode(crop, box, shape),
        "area": int(crop.sum()),
        "bbox": [box[1].start, box[0].start, box[1].stop - box[1].start,
                 box[0].stop - box[0].start],
        "iscrowd": 0,
        "layernet_id": int(label),
        "layernet_slice": int(layer_index),
    }


def coco_document(annotations: list[dict[str, Any]], file_name: str, shape: tuple[int, int],
                  image_id: int = 1, category: str = "object") -> dict[str, Any]:
    """The COCO dict of one image (``images``, ``annotations``, ``categories``)."""
    height, width = shape
    return {
        "images": [{"id": image_id, "file_name": file_name, "height": height, "width": width}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": category}],
    }


def write_coco(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write a COCO dict as compact JSON, atomically."""
    write_text_atomic(os.fspath(path), json.dumps(data, separators=(",", ":")) + "\n")


def save_coco(path: str | os.PathLike, stack: np.ndarray, file_name: str) -> int:
    """Write :func:`coco_annotations` of a stack as JSON; return the number of annotations."""
    path = os.fspath(path)
    stack = validate_stack(np.asarray(stack), name=path)
    data = coco_annotations(stack, file_name)
    write_coco(path, data)
    return len(data["annotations"])


def save_flat(path: str | os.PathLike, stack: np.ndarray, rule: str = "smallest") -> None:
    """Write the stack flattened to one label image (``(1, H, W)`` uint16 ImageJ TIFF).

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.tif``.
    stack : numpy.ndarray
        Label stack ``(L, H, W)``.
    rule : {"smallest", "first", "last"}, optional
        Owner of overlap pixels, see :func:`layernet.instances.flatten_stack`.
    """
    write_label_stack(path, flatten_stack(np.asarray(stack), rule=rule)[None])


def save_probability_maps(path: str | os.PathLike, foreground: np.ndarray,
                          layering: np.ndarray) -> None:
    """Write the raw maps as a float32 ImageJ TIFF: slice 1 foreground, slices 2.. the layers.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.tif``.
    foreground : numpy.ndarray
        ``(H, W)`` foreground probability.
    layering : numpy.ndarray
        ``(H, W, N)`` layer activations.
    """
    data = np.concatenate([np.asarray(foreground, np.float32)[None],
                           np.moveaxis(np.asarray(layering, np.float32), -1, 0)])
    write_atomic(path, lambda temporary: _imwrite_imagej_stack(temporary, data))


def write_prediction(
    prefix: str,
    stack: np.ndarray,
    image: np.ndarray | None = None,
    overlay: bool = True,
    masks: bool = False,
    rois: bool = False,
    coco: bool = False,
    flat: bool = False,
    maps: tuple[np.ndarray, np.ndarray] | None = None,
    file_name: str | None = None,
    layers_format: str = "tif",
) -> list[str]:
    """Write the outputs of one predicted image as ``<prefix><suffix>`` (:data:`OUTPUT_SUFFIXES`).

    Parameters
    ----------
    prefix : str
        Output path without suffix, e.g. ``out/img`` for ``out/img.layers.tif``.
    stack : numpy.ndarray
        Predicted label stack ``(L, H, W)``; always written (``.layers.tif``). Its objects are
        first packed into as few slices as they need (:func:`layernet.instances.pack_stack`;
        ids unchanged), and every output names those slices.
    image : numpy.ndarray, optional
        Raw ``(H, W, C)`` image, needed for the overlay.
    overlay, masks, rois, coco, flat : bool, optional
        Which additional outputs to write.
    maps : tuple of numpy.ndarray, optional
        ``(foreground, layering)`` to write as ``.prob.tif``.
    file_name : str, optional
        Image file name recorded in the COCO file (default: the prefix's base name).
    layers_format : {"tif", "bigtiff", "zarr"}, optional
        The label stack as an ImageJ TIFF, a tiled BigTIFF (both ``.layers.tif``) or an OME-Zarr
        folder (``.layers.zarr``), see :mod:`layernet.label_store`.

    Returns
    -------
    list of str
        The written paths.
    """
    written = []
    stack = pack_stack(stack)
    if layers_format == "tif":
        path = prefix + OUTPUT_SUFFIXES["layers"]
        write_label_stack(path, stack)
    else:
        from layernet.label_store import write_label_stack_as

        path = prefix + OUTPUT_SUFFIXES["layers_zarr" if layers_format == "zarr" else "layers"]
        write_label_stack_as(path, stack, layers_format)
    written.append(path)
    if overlay:
        if image is None:
            raise ValueError(f"{prefix}: the overlay needs the image")
        path = prefix + OUTPUT_SUFFIXES["overlay"]
        write_image_atomic(path, outline_overlay(display_image(image), stack))
        written.append(path)
    if masks:
        path = prefix + OUTPUT_SUFFIXES["masks"]
        save_masks(path, stack)
        written.append(path)
    if rois:
        path = prefix + OUTPUT_SUFFIXES["rois"]
        save_rois(path, stack)
        written.append(path)
    if coco:
        path = prefix + OUTPUT_SUFFIXES["coco"]
        save_coco(path, stack, file_name or os.path.basename(prefix))
        written.append(path)
    if flat:
        path = prefix + OUTPUT_SUFFIXES["flat"]
        save_flat(path, stack)
        written.append(path)
    if maps is not None:
        path = prefix + OUTPUT_SUFFIXES["prob"]
        save_probability_maps(path, *maps)
        written.append(path)
    return written
