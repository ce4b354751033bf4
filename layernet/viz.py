"""Pictures of instances: display images, object colours, outline overlays, error panels.

All functions return uint8 RGB arrays ``(H, W, 3)`` (write them with
:func:`layernet.io.write_image_atomic`). Drawing is vectorised per slice of the label stack, so
overlays of large images with thousands of objects stay fast. Overlapping objects stay visible:
every object is tinted with its own translucent colour (overlaps mix the tints) and outlined in
that colour on top.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from layernet.instances import object_ids

__all__ = [
    "display_image",
    "object_colours",
    "outline_mask",
    "outline_overlay",
    "comparison_panel",
    "layer_maps_panel",
    "MATCH_COLOURS",
]

_GOLDEN = 0.618033988749895

MATCH_COLOURS = {
    "matched": (40, 220, 60),
    "missed": (255, 200, 0),
    "false": (255, 40, 40),
}
"""Outline colours of :func:`comparison_panel`: matched objects, missed ground truth, false
predictions."""


def display_limits(image: np.ndarray, low: float = 1.0, high: float = 99.8
                   ) -> list[tuple[float, float]]:
    """Per-channel percentiles ``low``/``high`` that :func:`display_image` maps to 0/255.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` image (only the first three channels are used).
    low, high : float, optional
        Percentiles.

    Returns
    -------
    list of tuple of float
        ``(p_low, p_high)`` of every channel shown.
    """
    array = _display_channels(image)
    return [tuple(float(value) for value in
                  np.percentile(array[..., channel].astype(np.float32), (low, high)))
            for channel in range(array.shape[-1])]


def _display_channels(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"display_image expects (H, W) or (H, W, C), got shape {array.shape}")
    return array[..., :3]


def display_image(image: np.ndarray, low: float = 1.0, high: float = 99.8,
                  limits: list[tuple[float, float]] | None = None) -> np.ndarray:
    """Stretch an image for display: percentiles ``low``/``high`` per channel to 0/255.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` image of any numeric dtype. One channel becomes grey, two
        become red/green, three or more show the first three as RGB.
    low, high : float, optional
        Percentiles mapped to black and white.
    limits : list of tuple of float, optional
        The values mapped to black and white per channel, as :func:`display_limits` returns
        them (then ``low``/``high`` are not used): a band of a large image drawn with the
        limits of the whole image is that band of the whole image drawn at once.

    Returns
    -------
    numpy.ndarray
        uint8 ``(H, W, 3)``.
    """
    array = _display_channels(image)
    if limits is None:
        limits = display_limits(array, low, high)
    if len(limits) != array.shape[-1]:
        raise ValueError(f"{len(limits)} display limits for {array.shape[-1]} channel(s)")
    out = np.zeros(array.shape[:2] + (3,), dtype=np.uint8)
    for channel, (p_low, p_high) in enumerate(limits):
        plane = array[..., channel].astype(np.float32)
        scaled = (plane - np.float32(p_low)) * np.float32(255.0 / max(p_high - p_low, 1e-12))
        out[..., channel] = np.clip(scaled, 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        out[..., 1] = out[..., 0]
        out[..., 2] = out[..., 0]
    return out


def object_colours(count: int, seed: int = 0) -> np.ndarray:
    """Distinct, saturated colours: row ``k`` is the colour of id ``k`` (row 0 is black).

    Hues follow the golden-ratio sequence, so ids next to each other get clearly different
    colours.

    Parameters
    ----------
    count : int
        Largest id to colour.
    seed : int, optional
        Shifts the hue sequence.

    Returns
    -------
    numpy.ndarray
        uint8 ``(count + 1, 3)``.
    """
    hue = ((np.arange(count + 1) + seed) * _GOLDEN) % 1.0
    offsets = np.array([0.0, 4.0, 2.0])
    rgb = np.clip(np.abs((hue[:, None] * 6.0 + offsets) % 6.0 - 3.0) - 1.0, 0.0, 1.0)
    value = 0.75 + 0.25 * ((np.arange(count + 1) * 7) % 3 == 0)  # vary the brightness a little
    colours = (255.0 * rgb * value[:, None]).astype(np.uint8)
    colours[0] = 0
    return colours


def outline_mask(labels: np.ndarray) -> np.ndarray:
    """Inner outline of every object of a 2-D label image: pixels with a 4-neighbour of another id.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer ``(H, W)`` label image.

    Returns
    -------
    numpy.ndarray
        Boolean ``(H, W)``; pixels at the image border count as outline.
    """
    labels = np.asarray(labels)
    padded = np.pad(labels, 1, mode="constant")
    centre = padded[1:-1, 1:-1]
    outline = ((centre != padded[:-2, 1:-1]) | (centre != padded[2:, 1:-1])
               | (centre != padded[1:-1, :-2]) | (centre != padded[1:-1, 2:]))
    return outline & (centre > 0)


def _lut(stack: np.ndarray, colours: np.ndarray | None) -> np.ndarray:
    ids = object_ids(stack)
    largest = int(ids.max()) if ids.size else 0
    if colours is None:
        return object_colours(largest)
    colours = np.asarray(colours, dtype=np.uint8)
    if colours.shape[0] <= largest or colours.shape[1:] != (3,):
        raise ValueError(f"colours must have shape (>= {largest + 1}, 3), got {colours.shape}")
    return colours


def outline_overlay(image: np.ndarray, stack: np.ndarray, colours: np.ndarray | None = None,
                    fill: float = 0.25) -> np.ndarray:
    """Draw every object of a label stack over an image: translucent tint plus outline.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 RGB ``(H, W, 3)`` background (see :func:`display_image`).
    stack : numpy.ndarray
        Label stack ``(L, H, W)`` (or a label image ``(H, W)``).
    colours : numpy.ndarray, optional
        uint8 ``(>= max id + 1, 3)`` colour of each id (default :func:`object_colours`).
    fill : float, optional
        Opacity of each object's tint in ``[0, 1]``; 0 draws outlines only.

    Returns
    -------
    numpy.ndarray
        uint8 RGB ``(H, W, 3)``.
    """
    stack = np.asarray(stack)
    if stack.ndim == 2:
        stack = stack[None]
    background = np.asarray(image)
    if background.shape != stack.shape[1:] + (3,) or background.dtype != np.uint8:
        raise ValueError(f"outline_overlay needs a uint8 RGB image of shape {stack.shape[1:]} + "
                         f"(3,), got {background.dtype} {background.shape}")
    if not 0.0 <= fill <= 1.0:
        raise ValueError(f"fill must be in [0, 1], got {fill}")
    lut = _lut(stack, colours)
    out = background.astype(np.float32)
    if fill > 0:
        for layer in stack:
            on = layer > 0
            if on.any():
                out[on] = (1.0 - fill) * out[on] + fill * lut[layer[on]]
    out = out.astype(np.uint8)
    for layer in stack:
        edge = outline_mask(layer)
        if edge.any():
            out[edge] = lut[layer[edge]]
    return out


def _match_status(gt: np.ndarray, pred: np.ndarray, threshold: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables id -> matched (IoU >= threshold with some object of the other side)."""
    from layernet.metrics import overlaps

    table = overlaps(gt, pred)
    hit = table.iou >= threshold
    gt_lut = np.zeros(int(table.gt_ids.max()) + 1 if table.gt_ids.size else 1, dtype=bool)
    pred_lut = np.zeros(int(table.pred_ids.max()) + 1 if table.pred_ids.size else 1, dtype=bool)
    gt_lut[table.gt_ids[table.gt_index[hit]]] = True
    pred_lut[table.pred_ids[table.pred_index[hit]]] = True
    return gt_lut, pred_lut


def comparison_panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray,
                     threshold: float = 0.5, gap: int = 4) -> np.ndarray:
    """Ground truth and prediction side by side, coloured by whether they were found.

    Left: the image with the ground-truth outlines, green when some prediction has IoU >=
    ``threshold`` with the object, yellow when it was missed. Right: the image with the
    predicted outlines, green when they match an object, red when they are false positives.
    See :data:`MATCH_COLOURS`.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` image (raw intensities; stretched by :func:`display_image`).
    gt, pred : numpy.ndarray
        Ground-truth and predicted label stacks (or label images) of the image.
    threshold : float, optional
        IoU for a match.
    gap : int, optional
        White columns between the two halves.

    Returns
    -------
    numpy.ndarray
        uint8 RGB ``(H, 2 W + gap, 3)``.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    gt = gt[None] if gt.ndim == 2 else gt
    pred = pred[None] if pred.ndim == 2 else pred
    base = display_image(image)
    gt_found, pred_found = _match_status(gt, pred, threshold)
    colours = {name: np.array(value, dtype=np.uint8) for name, value in MATCH_COLOURS.items()}
    gt_colours = np.where(gt_found[:, None], colours["matched"], colours["missed"])
    pred_colours = np.where(pred_found[:, None], colours["matched"], colours["false"])
    left = outline_overlay(base, gt, gt_colours.astype(np.uint8), fill=0.15)
    right = outline_overlay(base, pred, pred_colours.astype(np.uint8), fill=0.15)
    spacer = np.full((base.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def _heat(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB with a perceptually ordered colour map (viridis)."""
    from matplotlib import colormaps

    table = (colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.uint8)
    index = np.clip(np.nan_to_num(np.asarray(values, np.float32)) * 255.0, 0, 255)
    return table[index.astype(np.uint8)]


def _caption(panel: np.ndarray, text: str, height: int) -> np.ndarray:
    """Put a white band with ``text`` above ``panel``."""
    import cv2

    band = np.full((height, panel.shape[1], 3), 255, dtype=np.uint8)
    scale = max(height / 40.0, 0.3)
    cv2.putText(band, text, (2, int(height * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                max(1, int(round(scale * 1.5))), cv2.LINE_AA)
    return np.concatenate([band, panel], axis=0)


def layer_maps_panel(image: np.ndarray, foreground: np.ndarray, maps: np.ndarray,
                     names: Sequence[str] | None = None, columns: int | None = None,
                     gap: int = 4) -> np.ndarray:
    """The image, the foreground and every layer activation map side by side (paper Figs. 3, 5).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` image (raw intensities; stretched by :func:`display_image`).
    foreground : numpy.ndarray
        ``(H, W)`` foreground probability in ``[0, 1]``.
    maps : numpy.ndarray
        ``(H, W, N)`` layer activations in ``[0, 1]`` (for the baselines: class probabilities).
    names : sequence of str, optional
        Caption of each of the ``N`` maps (default ``layer 1`` ... ``layer N``).
    columns : int, optional
        Panels per row (default: all in one row up to 5 panels, else two rows).
    gap : int, optional
        White pixels between panels.

    Returns
    -------
    numpy.ndarray
        uint8 RGB grid of ``N + 2`` captioned panels, maps coloured with viridis (0 dark
        blue, 1 yellow).
    """
    foreground = np.asarray(foreground)
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"layer_maps_panel: maps must be (H, W, N), got shape {maps.shape}")
    if foreground.shape != maps.shape[:2] or np.asarray(image).shape[:2] != maps.shape[:2]:
        raise ValueError(f"layer_maps_panel: image {np.asarray(image).shape[:2]}, foreground "
                         f"{foreground.shape} and maps {maps.shape[:2]} differ in size")
    count = maps.shape[-1]
    names = list(names) if names is not None else [f"layer {k + 1}" for k in range(count)]
    if len(names) != count:
        raise ValueError(f"layer_maps_panel: {len(names)} names for {count} maps")
    height = maps.shape[0]
    caption = int(np.clip(height // 10, 14, 40))
    panels = [_caption(display_image(image), "image", caption),
              _caption(_heat(foreground), "foreground", caption)]
    panels += [_caption(_heat(maps[..., k]), names[k], caption) for k in range(count)]
    if columns is None:
        columns = len(panels) if len(panels) <= 5 else -(-len(panels) // 2)
    columns = max(1, min(int(columns), len(panels)))
    blank = np.full_like(panels[0], 255)
    panels += [blank] * (-len(panels) % columns)
    rows = []
    for start in range(0, len(panels), columns):
        row = panels[start:start + columns]
        spacer = np.full((row[0].shape[0], gap, 3), 255, dtype=np.uint8)
        pieces = [piece for panel in row for piece in (panel, spacer)][:-1]
        rows.append(np.concatenate(pieces, axis=1))
    spacer = np.full((gap, rows[0].shape[1], 3), 255, dtype=np.uint8)
    pieces = [piece for row in rows for piece in (row, spacer)][:-1]
    return np.concatenate(pieces, axis=0)
