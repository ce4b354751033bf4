"""Built-in synthetic dataset: dense, overlapping objects with exact label stacks.

Two kinds of scenes, each a stand-in for one of the paper's datasets, generated from a seed and
fully deterministic:

* ``kind="worms"``: curved, tapered tubes (6-9 px wide) that touch and cross each other, dark on a
  bright round well with uneven illumination and noise, in a 12-bit intensity range (like the
  BBBC010 bright-field *C. elegans* images);
* ``kind="cells"``: translucent, roundish cells with slightly irregular boundaries and a nucleus
  that overlap heavily; light passing several cells is attenuated by each of them (multiplicative
  transmittance), so overlaps are darker; 8-bit intensity range (like OCC2014).
* ``kind="mixed"``: worms for even, cells for odd image indices.

Every object is drawn with a soft (anti-aliased) edge whose 0.5 level is exactly the object's
mask, and the masks become a label stack through :func:`layernet.instances.stack_from_masks`, so
the ground truth is exact, including under overlaps. Objects are placed one at a time: with
probability ``density`` next to an existing object (touching it, or, with probability ``overlap``,
overlapping or crossing it), otherwise anywhere. A candidate is rejected when its mask is smaller
than ``min_area`` pixels or when it, or an object it lies on, would end up with more than
``max_hidden`` of its area under other objects, so every object keeps a visible part of its own.

Splits: the ``trainval`` pool and the ``test`` pool come from independent seed streams of
``seed``; ``train``/``val`` are the seeded split of the ``trainval`` pool
(:func:`datasets.val_split`: ``val_fraction``, 10 %, but at least 3 images), ``all`` is
``trainval`` followed by ``test``. Image ``i`` of a pool does not depend on the size of the pool.

Run ``python -m datasets.synthetic --help`` for a preview tool.

Why this module is longer than 500 lines: the project keeps one module per dataset (the layout
of ``datasets/``), and this dataset is a generator: two scene models (worms, cells), their
options and checks, the split into pools and the preview command belong to it and to nothing
else.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from datasets import DEFAULT_VAL_FRACTION, SPLITS, Sample, SampleSource, source_key, val_split
from layernet.instances import coverage, foreground, stack_from_masks

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "DEFAULT_COUNTS", "SyntheticOptionError", "generate_sample", "load", "main",
           "source"]

KINDS = ("worms", "cells", "mixed")
#: Default number of images of each pool (``trainval`` and ``test``).
DEFAULT_COUNTS = {"trainval": 48, "test": 16}
#: Seed-stream numbers of the pools; image ``i`` of a pool uses ``SeedSequence(seed, (stream, i))``.
_STREAMS = {"trainval": 0, "test": 1}

# Defaults per kind of the keyword options of :func:`generate_sample`.
_KIND_DEFAULTS = {
    "worms": {"object_count": (8, 14), "max_hidden": 0.5},
    "cells": {"object_count": (6, 12), "max_hidden": 0.65},
}
_COMMON_DEFAULTS = {
    "object_size": 1.0,
    "density": 0.7,
    "overlap": 0.5,
    "noise": 1.0,
    "min_area": 250,
}
OPTION_NAMES = ("object_count", "object_size", "density", "overlap", "noise", "min_area",
                "max_hidden")
_MIN_SIZE = 64
_ATTEMPTS_PER_OBJECT = 12


class SyntheticOptionError(ValueError):
    """Raised for an invalid option of the synthetic dataset."""


@dataclass
class _Object:
    """One placed object: its bounding box in the image and its soft/hard masks inside the box."""

    rows: slice
    cols: slice
    alpha: np.ndarray  # float32 (h, w), 0.5 level = mask boundary
    mask: np.ndarray  # bool (h, w) = alpha > 0.5
    transmittance: np.ndarray  # float32 (h, w), factor applied to the light, 1 outside
    area: int
    centre: np.ndarray  # (2,) float (y, x)
    radius: float  # typical radius (cells) or max half-width (worms)
    centreline: np.ndarray | None = None  # (n, 2) worms only
    half_widths: np.ndarray | None = None  # (n,) worms only


class _Scene:
    """Objects placed so far and their coverage map, with the acceptance rule."""

    def __init__(self, size: int, max_hidden: float, min_area: int) -> None:
        self.size = size
        self.max_hidden = max_hidden
        self.min_area = min_area
        self.count = np.zeros((size, size), dtype=np.int16)
        self.objects: list[_Object] = []

    def try_add(self, candidate: _Object | None) -> bool:
        """Add ``candidate`` if it is big enough and neither it nor a neighbour gets too hidden."""
        if candidate is None or candidate.area < self.min_area:
            return False
        rows, cols = candidate.rows, candidate.cols
        covered = np.count_nonzero(self.count[rows, cols][candidate.mask])
        if covered > self.max_hidden * candidate.area:
            return False
        if covered:
            after = self.count.copy()
            after[rows, cols] += candidate.mask
            for other in self.objects:
                if not _boxes_intersect(other, candidate):
                    continue
                hidden = np.count_nonzero(after[other.rows, other.cols][other.mask] >= 2)
                if hidden > self.max_hidden * other.area:
                    return False
        self.count[rows, cols] += candidate.mask
        self.objects.append(candidate)
        return True

    def transmittance(self) -> np.ndarray:
        """Product of the transmittances of all objects, float32 ``(size, size)``."""
        total = np.ones((self.size, self.size), dtype=np.float32)
        for obj in self.objects:
            total[obj.rows, obj.cols] *= obj.transmittance
        return total

    def full_masks(self) -> list[np.ndarray]:
        """Image-sized boolean masks of the objects, in placement order."""
        masks = []
        for obj in self.objects:
            mask = np.zeros((self.size, self.size), dtype=bool)
            mask[obj.rows, obj.cols] = obj.mask
            masks.append(mask)
        return masks


def _boxes_intersect(a: _Object, b: _Object) -> bool:
    return (a.rows.start < b.rows.stop and b.rows.start < a.rows.stop
            and a.cols.start < b.cols.stop and b.cols.start < a.cols.stop)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only pixel-centre coordinates ``(y, x)`` of a ``size x size`` image, float32."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _illumination(rng: np.random.Generator, size: int, gradient: float,
                  vignetting: float) -> np.ndarray:
    """Smooth multiplicative illumination field: a random linear ramp times a radial fall-off."""
    yy, xx = _grid(size)
    centre = (size - 1) / 2.0
    angle = rng.uniform(0.0, 2.0 * math.pi)
    strength = rng.uniform(0.3, 1.0) * gradient
    ramp = ((yy - centre) * math.sin(angle) + (xx - centre) * math.cos(angle)) / size
    offset = rng.uniform(-0.15, 0.15, size=2) * size
    radius2 = ((yy - centre - offset[0]) ** 2 + (xx - centre - offset[1]) ** 2) / (size / 2.0) ** 2
    return (1.0 + strength * ramp) * (1.0 - rng.uniform(0.4, 1.0) * vignetting * radius2)


# ----------------------------------------------------------------------------------------------
# worms


def _worm_centreline(rng: np.random.Generator, anchor: np.ndarray, heading: float, length: float,
                     anchor_fraction: float) -> np.ndarray:
    """Smooth curve of ``length`` px (1 px steps) through ``anchor`` with direction ``heading``.

    The curvature is a sinusoidal undulation plus a constant bend plus smoothed noise, so the
    heading is a smooth random function of the arc length.
    """
    count = max(int(length), 8)
    arc = np.arange(count, dtype=np.float64)
    wavelength = rng.uniform(45.0, 90.0)
    curvature = (rng.uniform(0.015, 0.05) * np.sin(2 * math.pi * arc / wavelength
                                                  + rng.uniform(0, 2 * math.pi))
                 + rng.normal(0.0, 0.01))
    noise = rng.standard_normal(count + 24)
    kernel = np.exp(-0.5 * (np.arange(-12, 13) / 5.0) ** 2)
    curvature += 0.012 * np.convolve(noise, kernel / np.sqrt(np.sum(kernel**2)), "valid")[:count]
    headings = np.cumsum(curvature)
    index = int(round(anchor_fraction * (count - 1)))
    headings += heading - headings[index]
    steps = np.stack([np.sin(headings), np.cos(headings)], axis=1)
    points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps[:-1], axis=0)])
    return points - points[index] + anchor


def _worm_half_widths(count: int, max_half_width: float) -> np.ndarray:
    """Half-width profile: a rounded head, a full-width body and a longer pointed tail."""
    t = np.linspace(0.0, 1.0, count)
    head = np.sqrt(np.clip(t / 0.1, 0.0, 1.0))
    tail = np.clip((1.0 - t) / 0.3, 0.0, 1.0) ** 0.8
    return np.maximum(max_half_width * np.minimum(head, tail), 1.0)


def _render_tube(points: np.ndarray, half_widths: np.ndarray, size: int
                 ) -> tuple[slice, slice, np.ndarray] | None:
    """Soft alpha of the union of discs (centre ``points``, radius ``half_widths``).

    Returns the bounding box and ``alpha = clip(0.5 - d, 0, 1)`` where ``d`` is the distance to
    the union's boundary (negative inside), or None when the tube leaves the image.
    """
    reach = int(math.ceil(half_widths.max())) + 2
    y0 = int(math.floor(points[:, 0].min())) - reach
    x0 = int(math.floor(points[:, 1].min())) - reach
    y1 = int(math.ceil(points[:, 0].max())) + reach + 1
    x1 = int(math.ceil(points[:, 1].max())) + reach + 1
    if y0 < 0 or x0 < 0 or y1 > size or x1 > size:
        return None
    offsets = np.arange(-reach, reach + 1)
    centres = np.rint(points).astype(np.int64)
    ys = (centres[:, 0, None, None] + offsets[None, :, None]) + 0 * offsets[None, None, :]
    xs = (centres[:, 1, None, None] + offsets[None, None, :]) + 0 * offsets[None, :, None]
    distance = (np.hypot(ys - points[:, 0, None, None], xs - points[:, 1, None, None])
                - half_widths[:, None, None])
    signed = np.full((y1 - y0, x1 - x0), np.inf, dtype=np.float64)
    np.minimum.at(signed, (ys.ravel() - y0, xs.ravel() - x0), distance.ravel())
    alpha = np.clip(0.5 - signed, 0.0, 1.0).astype(np.float32)
    return slice(y0, y1), slice(x0, x1), alpha


def _worm_candidate(rng: np.random.Generator, scene: _Scene, well_centre: np.ndarray,
                    well_radius: float, object_size: float, density: float, overlap: float
                    ) -> _Object | None:
    length = rng.uniform(70.0, 120.0) * object_size
    max_half_width = rng.uniform(3.0, 4.5) * object_size
    if scene.objects and rng.random() < density:
        other = scene.objects[rng.integers(len(scene.objects))]
        line = other.centreline
        index = int(rng.integers(int(0.15 * len(line)), int(0.85 * len(line))))
        tangent = line[min(index + 2, len(line) - 1)] - line[max(index - 2, 0)]
        other_heading = math.atan2(tangent[0], tangent[1])
        side = rng.choice((-1.0, 1.0))
        if rng.random() < overlap:  # cross the other worm through its body
            anchor = line[index] + rng.normal(0.0, 1.0, size=2)
            heading = other_heading + side * rng.uniform(0.6, math.pi - 0.6)
            anchor_fraction = rng.uniform(0.25, 0.75)
        else:  # start right beside it (head or tail touching) and move away
            normal = other_heading + side * math.pi / 2
            gap = other.half_widths[index] + max_half_width + rng.uniform(-1.0, 4.0)
            anchor = line[index] + gap * np.array([math.sin(normal), math.cos(normal)])
            heading = normal + rng.uniform(-1.1, 1.1)
            anchor_fraction = rng.choice((0.0, 1.0)) * 1.0
            if anchor_fraction == 1.0:
                heading += math.pi
    else:
        radius = well_radius * 0.8 * math.sqrt(rng.random())
        angle = rng.uniform(0.0, 2 * math.pi)
        anchor = well_centre + radius * np.array([math.sin(angle), math.cos(angle)])
        heading = rng.uniform(0.0, 2 * math.pi)
        anchor_fraction = rng.uniform(0.3, 0.7)
    points = _worm_centreline(rng, anchor, heading, length, anchor_fraction)
    half_widths = _worm_half_widths(len(points), max_half_width)
    # stay well inside the well, so that the surroundings of every worm are bright background
    if np.max(np.hypot(*(points - well_centre).T) + half_widths) > well_radius - 6.0:
        return None
    rendered = _render_tube(points, half_widths, scene.size)
    if rendered is None:
        return None
    rows, cols, alpha = rendered
    mask = alpha > 0.5
    darkness = rng.uniform(0.4, 0.6)
    transmittance = 1.0 - darkness * alpha
    return _Object(rows, cols, alpha, mask, transmittance.astype(np.float32),
                   int(np.count_nonzero(mask)), points[len(points) // 2], max_half_width,
                   centreline=points, half_widths=half_widths)


def _worms_image(rng: np.random.Generator, size: int, options: dict) -> tuple[np.ndarray, _Scene]:
    well_centre = (size - 1) / 2.0 + rng.uniform(-0.03, 0.03, size=2) * size
    well_radius = size * rng.uniform(0.46, 0.5)
    scene = _Scene(size, options["max_hidden"], options["min_area"])
    _populate(rng, scene, options, lambda: _worm_candidate(
        rng, scene, well_centre, well_radius, options["object_size"], options["density"],
        options["overlap"]))
    yy, xx = _grid(size)
    radius = np.hypot(yy - well_centre[0], xx - well_centre[1])
    inside_well = np.clip((well_radius - radius) / 3.0 + 0.5, 0.0, 1.0)
    level = rng.uniform(2200.0, 3300.0)
    background = level * _illumination(rng, size, gradient=0.3, vignetting=0.25)
    background *= 0.15 + 0.85 * inside_well
    image = background * scene.transmittance()
    sigma = options["noise"] * level * rng.uniform(0.015, 0.03)
    image += sigma * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(np.rint(image), 0, 4095).astype(np.float32), scene


# ----------------------------------------------------------------------------------------------
# cells


def _radial_shape(rng: np.random.Generator, centre: np.ndarray, radius: float, elongation: float,
                  irregularity: float, size: int, margin: int
                  ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Soft alpha of an irregular ellipse ``r(theta) = ellipse(theta) * (1 + harmonics)``.

    Returns the bounding box, alpha and the radial distance to the boundary (positive inside), or
    None when the shape does not fit inside the image with ``margin`` pixels to spare.
    """
    minor = radius * elongation
    harmonics = np.arange(2, 6)
    amplitudes = rng.normal(0.0, irregularity, size=harmonics.size) / harmonics
    phases = rng.uniform(0.0, 2 * math.pi, size=harmonics.size)
    reach = radius * (1.0 + np.abs(amplitudes).sum()) + 2.0
    y0, x0 = (int(math.floor(c - reach)) for c in centre)
    y1, x1 = (int(math.ceil(c + reach)) + 1 for c in centre)
    if min(y0, x0) < margin or max(y1, x1) > size - margin:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - centre[0], xx - centre[1]
    rotation = rng.uniform(0.0, math.pi)
    theta = np.arctan2(dy, dx) - rotation
    ellipse = radius * minor / np.hypot(minor * np.cos(theta), radius * np.sin(theta))
    boundary = ellipse * (1.0 + np.sum(amplitudes[:, None, None]
                                       * np.cos(harmonics[:, None, None] * theta
                                                + phases[:, None, None]), axis=0))
    inside = boundary - np.hypot(dy, dx)
    alpha = np.clip(inside + 0.5, 0.0, 1.0).astype(np.float32)
    return slice(y0, y1), slice(x0, x1), alpha, inside


def _cell_candidate(rng: np.random.Generator, scene: _Scene, object_size: float, density: float,
                    overlap: float) -> _Object | None:
    radius = rng.uniform(15.0, 25.0) * object_size
    size = scene.size
    if scene.objects and rng.random() < density:
        other = scene.objects[rng.integers(len(scene.objects))]
        if rng.random() < overlap:
            factor = rng.uniform(0.35, 0.8)
        else:
            factor = rng.uniform(0.95, 1.1)
        angle = rng.uniform(0.0, 2 * math.pi)
        distance = factor * (other.radius + radius * 0.8)
        centre = other.centre + distance * np.array([math.sin(angle), math.cos(angle)])
    else:
        centre = rng.uniform(radius, size - 1 - radius, size=2)
    shape = _radial_shape(rng, centre, radius, rng.uniform(0.6, 1.0), 0.12, size, margin=1)
    if shape is None:
        return None
    rows, cols, alpha, inside = shape
    cytoplasm = 1.0 - rng.uniform(0.12, 0.25) * alpha
    rim = 1.0 - rng.uniform(0.04, 0.1) * np.exp(-0.5 * (inside / 1.2) ** 2) * (inside > -1.0)
    # nucleus: a small dark ellipse near the centre, drawn in the same box
    offset = rng.normal(0.0, 0.15 * radius, size=2)
    nucleus_centre = centre + offset - np.array([rows.start, cols.start])
    nucleus_radius = rng.uniform(0.2, 0.3) * radius
    ny, nx = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]]
    nucleus_inside = nucleus_radius - np.hypot((ny - nucleus_centre[0]) / rng.uniform(0.8, 1.0),
                                               nx - nucleus_centre[1])
    nucleus = 1.0 - rng.uniform(0.35, 0.55) * np.clip(nucleus_inside + 0.5, 0.0, 1.0) * alpha
    transmittance = (cytoplasm * rim * nucleus).astype(np.float32)
    mask = alpha > 0.5
    return _Object(rows, cols, alpha, mask, transmittance, int(np.count_nonzero(mask)),
                   np.asarray(centre, dtype=np.float64), radius * 0.8)


def _cells_image(rng: np.random.Generator, size: int, options: dict) -> tuple[np.ndarray, _Scene]:
    scene = _Scene(size, options["max_hidden"], options["min_area"])
    _populate(rng, scene, options, lambda: _cell_candidate(
        rng, scene, options["object_size"], options["density"], options["overlap"]))
    level = rng.uniform(180.0, 225.0)
    background = level * _illumination(rng, size, gradient=0.2, vignetting=0.12)
    image = background * scene.transmittance()
    sigma = options["noise"] * rng.uniform(2.0, 5.0)
    image += sigma * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.float32), scene


# ----------------------------------------------------------------------------------------------
# common


def _populate(rng: np.random.Generator, scene: _Scene, options: dict, propose) -> None:
    """Place ``object_count`` objects (as many as fit within a fixed number of attempts)."""
    low, high = options["object_count"]
    target = int(rng.integers(low, high + 1))
    attempts = 0
    while len(scene.objects) < target and attempts < _ATTEMPTS_PER_OBJECT * target:
        attempts += 1
        scene.try_add(propose())
    if len(scene.objects) < low:
        logger.warning("synthetic: placed only %d of at least %d objects after %d attempts",
                       len(scene.objects), low, attempts)


def _resolve_options(kind: str, size: int, params: dict) -> dict:
    """Check the keyword options and fill in the defaults of ``kind``."""
    if kind not in ("worms", "cells"):
        raise SyntheticOptionError(f"synthetic: unknown kind {kind!r}; choose one of "
                                   f"{', '.join(KINDS)}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < _MIN_SIZE:
        raise SyntheticOptionError(f"synthetic: size must be an integer >= {_MIN_SIZE}, "
                                   f"got {size!r}")
    unknown = sorted(set(params) - set(OPTION_NAMES))
    if unknown:
        raise SyntheticOptionError(f"synthetic: unknown option(s) {', '.join(unknown)}; known "
                                   f"options are {', '.join(OPTION_NAMES)}")
    options = {**_COMMON_DEFAULTS, **_KIND_DEFAULTS[kind]}
    options.update({key: value for key, value in params.items() if value is not None})
    count = options["object_count"]
    if (not isinstance(count, (tuple, list)) or len(count) != 2
            or not all(isinstance(c, (int, np.integer)) for c in count)
            or not 1 <= count[0] <= count[1]):
        raise SyntheticOptionError(f"synthetic: object_count must be a pair (low, high) of "
                                   f"integers with 1 <= low <= high, got {count!r}")
    options["object_count"] = (int(count[0]), int(count[1]))
    for key, low, high in (("object_size", 0.5, 3.0), ("density", 0.0, 1.0),
                           ("overlap", 0.0, 1.0), ("noise", 0.0, 10.0),
                           ("max_hidden", 0.0, 1.0)):
        value = options[key]
        if not isinstance(value, (int, float, np.number)) or not low <= float(value) <= high:
            raise SyntheticOptionError(f"synthetic: {key} must be a number in [{low}, {high}], "
                                       f"got {value!r}")
        options[key] = float(value)
    min_area = options["min_area"]
    if not isinstance(min_area, (int, np.integer)) or min_area < 1:
        raise SyntheticOptionError(f"synthetic: min_area must be a positive integer, "
                                   f"got {min_area!r}")
    return options


def generate_sample(rng: np.random.Generator, kind: str = "worms", size: int = 192,
                    **params) -> Sample:
    """Generate one synthetic image with its exact label stack.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; the sample is a deterministic function of its state.
    kind : {"worms", "cells"}, optional
        Scene type (see the module docstring).
    size : int, optional
        Image height and width in pixels (at least 64).
    **params
        Options, all optional (a value of None means the default):
        ``object_count`` (low, high) inclusive range of the number of objects (worms (8, 14),
        cells (6, 12); fewer are placed when they do not fit);
        ``object_size`` scale factor of the object dimensions (default 1.0: worms 70-120 px long
        and 6-9 px wide, cells of radius 15-25 px);
        ``density`` probability in [0, 1] that an object is placed next to an existing one
        (default 0.7);
        ``overlap`` probability in [0, 1] that such an object overlaps (crosses) its neighbour
        instead of touching it (default 0.5);
        ``noise`` scale factor of the noise level (default 1.0);
        ``min_area`` smallest object area in pixels (default 250, the paper's S_min);
        ``max_hidden`` largest fraction of an object's area covered by others (worms 0.5,
        cells 0.65).

    Returns
    -------
    Sample
        ``image`` float32 ``(size, size, 1)`` with integer values in [0, 4095] (worms) or
        [0, 255] (cells), ``stack`` int32 label stack with ids ``1..K``, ``name`` "synthetic-<kind>"
        and ``meta`` with the kind, the bit depth and the options used.

    Raises
    ------
    SyntheticOptionError
        If ``kind``, ``size`` or an option is invalid.
    """
    options = _resolve_options(kind, size, params)
    size = int(size)
    if kind == "worms":
        image, scene = _worms_image(rng, size, options)
        bit_depth = 12
    else:
        image, scene = _cells_image(rng, size, options)
        bit_depth = 8
    stack = stack_from_masks(scene.full_masks(), shape=(size, size), dtype=np.int32)
    meta = {"dataset": "synthetic", "kind": kind, "bit_depth": bit_depth, "options": options}
    return Sample(image=image[:, :, None], stack=stack, name=f"synthetic-{kind}", meta=meta)


def _image_kind(kind: str, index: int) -> str:
    """Scene type of image ``index`` of a pool: ``kind``, or alternating for ``mixed``."""
    return kind if kind != "mixed" else ("worms" if index % 2 == 0 else "cells")


def _pool_sample(seed: int, pool: str, index: int, kind: str, size: int, params: dict) -> Sample:
    """Image ``index`` of ``pool`` ("trainval" or "test"), independent of the pool's size."""
    sequence = np.random.SeedSequence(seed, spawn_key=(_STREAMS[pool], index))
    sample = generate_sample(np.random.default_rng(sequence), _image_kind(kind, index), size,
                             **params)
    sample.meta.update({"pool": pool, "index": index, "seed": seed})
    return sample


def source(data_dir: str | None = None, split: str = "train", seed: int = 0,
           kind: str = "worms", count: int | None = None, size: int = 192,
           val_fraction: float = DEFAULT_VAL_FRACTION, **params) -> SampleSource:
    """List one split of the synthetic dataset; each image is generated when it is read.

    Parameters are those of :func:`load`.

    Returns
    -------
    datasets.SampleSource
        Items named as by :func:`load`, no files.

    Raises
    ------
    SyntheticOptionError
        If the split, kind, count or an option is invalid.
    """
    del data_dir  # generated data, no folder
    if split not in SPLITS:
        raise SyntheticOptionError(f"synthetic: unknown split {split!r}; choose one of "
                                   f"{', '.join(SPLITS)}")
    if kind not in KINDS:
        raise SyntheticOptionError(f"synthetic: unknown kind {kind!r}; choose one of "
                                   f"{', '.join(KINDS)}")
    if count is not None and (not isinstance(count, (int, np.integer)) or isinstance(count, bool)
                              or count < 1):
        raise SyntheticOptionError(f"synthetic: count must be a positive integer, got {count!r}")
    # fail early on bad options, before generating anything
    for checked_kind in (("worms", "cells") if kind == "mixed" else (kind,)):
        _resolve_options(checked_kind, size, params)
    if split == "test":
        pools = [("test", count or DEFAULT_COUNTS["test"])]
    elif split == "all":
        test_count = max(1, round(count / 3)) if count else DEFAULT_COUNTS["test"]
        pools = [("trainval", count or DEFAULT_COUNTS["trainval"]), ("test", test_count)]
    else:
        pools = [("trainval", count or DEFAULT_COUNTS["trainval"])]
    items = []  # (pool, index, part)
    for pool, pool_count in pools:
        if pool == "test":
            parts = {index: "test" for index in range(pool_count)}
        else:
            train, val = val_split(pool_count, val_fraction, seed, log=split == "val")
            parts = {int(index): "train" for index in train}
            parts.update({int(index): "val" for index in val})
        items.extend((pool, index, parts[index]) for index in range(pool_count)
                     if split not in ("train", "val") or parts[index] == split)

    def read(position: int) -> Sample:
        pool, index, part = items[position]
        sample = _pool_sample(seed, pool, index, kind, size, params)
        sample.name = f"synthetic-{sample.meta['kind']}-{part}-{index:04d}"
        sample.meta["part"] = part
        return sample

    names = [f"synthetic-{_image_kind(kind, index)}-{part}-{index:04d}"
             for _, index, part in items]
    return SampleSource(names=names, files=[() for _ in items], read=read,
                        key=source_key("synthetic", seed=seed, kind=kind, size=size, **params))


def load(data_dir: str | None = None, split: str = "train", seed: int = 0, kind: str = "worms",
         count: int | None = None, size: int = 192, val_fraction: float = DEFAULT_VAL_FRACTION,
         **params) -> list[Sample]:
    """Generate one split of the synthetic dataset.

    Parameters
    ----------
    data_dir : str or None
        Ignored (the dataset is generated); accepted for the common dataset interface.
    split : str
        One of :data:`datasets.SPLITS`: ``test`` comes from a seed stream independent of
        ``trainval``; ``train``/``val`` are the split of ``trainval`` by
        :func:`datasets.val_split` with ``seed``; ``all`` is ``trainval`` then ``test``.
    seed : int
        Seed of the generator and of the train/validation split.
    kind : {"worms", "cells", "mixed"}
        Scene type; ``mixed`` alternates worms (even index) and cells (odd index).
    count : int or None
        Size of the pool the split is taken from: the ``trainval`` pool for ``train``, ``val``
        and ``trainval`` (default 48), the ``test`` pool for ``test`` (default 16). For ``all``
        it sets the ``trainval`` pool and the ``test`` pool gets ``max(1, round(count / 3))``.
    size : int
        Image height and width.
    val_fraction : float
        Share of the ``trainval`` pool held out for validation (at least 3 images).
    **params
        Options of :func:`generate_sample`.

    Returns
    -------
    list of Sample
        Named ``synthetic-<kind>-<part>-<index>`` where part is ``train``, ``val`` (membership in
        the seeded split of the trainval pool) or ``test`` and index is the position in its pool.

    Raises
    ------
    SyntheticOptionError
        If the split, kind, count or an option is invalid.
    """
    samples = source(data_dir, split, seed, kind, count, size, val_fraction, **params).load_all()
    logger.info("synthetic: %d %s images (%s split, seed %d)", len(samples), kind, split, seed)
    return samples


# ----------------------------------------------------------------------------------------------
# preview command


def _outline_overlay(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Grey image and the same with each object outlined in its own colour, uint8 RGB."""
    from layernet.viz import display_image, outline_overlay

    grey_rgb = display_image(sample.image)
    return grey_rgb, outline_overlay(grey_rgb, sample.stack, fill=0.0)


def main(argv: list[str] | None = None) -> int:
    """Command line: write a preview PNG of synthetic samples and print a short summary."""
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        description="Generate synthetic dense/overlapping scenes (the built-in dataset of "
                    "layernet) and write a preview: each row shows the image and the exact "
                    "object outlines, one colour per object.",
        epilog="Example: python -m datasets.synthetic --kind cells --count 4 --out preview.png",
    )
    parser.add_argument("--kind", choices=KINDS, default="worms",
                        help="worms: BBBC010-like crossing worms (12-bit); cells: OCC2014-like "
                             "overlapping translucent cells (8-bit); mixed: alternating")
    parser.add_argument("--count", type=int, default=4, help="number of images (default 4)")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="split to draw the images from (default train)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--size", type=int, default=192, help="image side in pixels (default 192)")
    parser.add_argument("--object-count", type=int, nargs=2, metavar=("LOW", "HIGH"),
                        help="range of objects per image (default worms 8 14, cells 6 12)")
    parser.add_argument("--object-size", type=float, help="scale of the objects (default 1.0)")
    parser.add_argument("--density", type=float,
                        help="probability of placing an object next to another (default 0.7)")
    parser.add_argument("--overlap", type=float,
                        help="probability that a neighbour overlaps instead of touching "
                             "(default 0.5)")
    parser.add_argument("--out", default="preview.png", help="output PNG (default preview.png)")
    parser.add_argument("--write-images", metavar="DIR",
                        help="also write every image as <DIR>/<name>.png (16-bit) and its exact "
                             "instances as <DIR>/<name>.gt.tif (uint16 label stack), e.g. to try "
                             "predict.py and evaluate.py --pred/--gt on files")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    params = {"object_count": tuple(args.object_count) if args.object_count else None,
              "object_size": args.object_size, "density": args.density,
              "overlap": args.overlap}
    try:
        pool_count = args.count if args.split in ("test", "trainval") else None
        samples = load(split=args.split, seed=args.seed, kind=args.kind, count=pool_count,
                       size=args.size, **params)[: args.count]
    except SyntheticOptionError as error:
        parser.error(str(error))
    from layernet.io import write_image_atomic, write_label_stack

    rows = [np.concatenate(_outline_overlay(sample), axis=1) for sample in samples]
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0))) for row in rows]
    try:
        write_image_atomic(args.out, np.concatenate(rows, axis=0))
    except (OSError, ValueError) as error:
        print(f"error: could not write {args.out} ({error})", file=sys.stderr)
        return 1
    if args.write_images:
        os.makedirs(args.write_images, exist_ok=True)
        for sample in samples:
            base = os.path.join(args.write_images, sample.name)
            write_image_atomic(base + ".png", sample.image[..., 0].astype(np.uint16))
            write_label_stack(base + ".gt.tif", sample.stack)
        print(f"wrote {len(samples)} images and ground truths to {args.write_images}")
    objects = [int(np.unique(s.stack).size - 1) for s in samples]
    fg = sum(int(foreground(s.stack).sum()) for s in samples)
    overlapped = sum(int((coverage(s.stack) >= 2).sum()) for s in samples)
    print(f"images: {len(samples)} ({args.kind}, split {args.split}, seed {args.seed}, "
          f"{args.size}x{args.size})")
    print(f"objects per image: {' '.join(map(str, objects))} "
          f"(mean {np.mean(objects):.1f})")
    print(f"foreground under overlap: {overlapped / max(fg, 1):.3f}")
    print(f"slices per stack: {' '.join(str(s.stack.shape[0]) for s in samples)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
