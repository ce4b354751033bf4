"""Dataset summaries and previews, shared by the command lines of all dataset modules.

``python -m datasets.<name> --data-dir D [--split S] [--preview out.png]`` prints:

* number of images and their shapes;
* objects per image (min/mean/max);
* fraction of the foreground covered by two or more objects;
* degree of the adjacency graph (objects closer than ``--distance`` pixels, paper t = 15) per
  object (mean/max), from :func:`layernet.targets.adjacency_matrix`;
* how many layers a greedy colouring of that graph needs (largest degree first, as
  :func:`layernet.instances.stack_from_masks` colours the overlap graph), against ``N = --layers``
  (paper: 8). Images needing more than N layers cannot be separated perfectly by the model;

and writes a preview PNG: per image, the normalised image next to the same image with each
object's outline in its own colour.

Library use: :func:`summarize`, :func:`format_summary`, :func:`preview_image`,
:func:`write_preview`, :func:`main` (``main("synthetic", argv)`` works for any dataset name).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys
from typing import Sequence

import cv2
import numpy as np

from datasets import DATASETS, SPLITS, Sample, load_dataset
from layernet.instances import greedy_colouring, coverage, foreground, num_objects
from layernet.io import write_image_atomic
from layernet.targets import adjacency_matrix

logger = logging.getLogger(__name__)

__all__ = ["greedy_layer_count", "summarize", "format_summary", "preview_image",
           "write_preview", "main"]


def greedy_layer_count(adjacency: np.ndarray) -> int:
    """Number of colours a greedy colouring (largest degree first) of a graph uses.

    Parameters
    ----------
    adjacency : numpy.ndarray
        Boolean ``(K + 1, K + 1)`` matrix indexed by object id (row/column 0 = background,
        ignored), as returned by :func:`layernet.targets.adjacency_matrix`.

    Returns
    -------
    int
        0 for an image without objects.
    """
    graph = np.asarray(adjacency, dtype=bool)[1:, 1:]
    count = graph.shape[0]
    if count == 0:
        return 0
    neighbours = [set(np.flatnonzero(row).tolist()) for row in graph]
    order = sorted(range(count), key=lambda k: (-len(neighbours[k]), k))
    return max(greedy_colouring(neighbours, order)) + 1


def summarize(samples: Sequence[Sample], distance: float = 15.0, layers: int = 8) -> dict:
    """Statistics of a list of samples (see the module docstring).

    Parameters
    ----------
    samples : sequence of Sample
        Samples with ids ``1..K``.
    distance : float, optional
        Adjacency threshold in pixels.
    layers : int, optional
        Number of layers ``N`` of the model, for the "needs more layers" count.

    Returns
    -------
    dict
        ``images``, ``shapes`` (sorted distinct ``(H, W, C)``), ``objects`` (per image),
        ``overlap_fraction`` (pooled and per image), ``degree_mean``, ``degree_max``,
        ``layers_needed`` (per image), ``over_budget`` (images needing more than ``layers``).
    """
    objects, overlap, degrees, needed = [], [], [], []
    covered_total = overlapped_total = 0
    for sample in samples:
        objects.append(num_objects(sample.stack))
        covered = int(foreground(sample.stack).sum())
        overlapped = int((coverage(sample.stack) >= 2).sum())
        covered_total += covered
        overlapped_total += overlapped
        overlap.append(overlapped / covered if covered else 0.0)
        adjacency = adjacency_matrix(sample.stack, distance)
        degrees.extend(adjacency[1:, 1:].sum(axis=1).tolist())
        needed.append(greedy_layer_count(adjacency))
    return {
        "images": len(samples),
        "shapes": sorted({tuple(int(v) for v in s.image.shape) for s in samples}),
        "objects": objects,
        "overlap_fraction": overlapped_total / covered_total if covered_total else 0.0,
        "overlap_fraction_per_image": overlap,
        "degree_mean": float(np.mean(degrees)) if degrees else 0.0,
        "degree_max": int(max(degrees)) if degrees else 0,
        "layers_needed": needed,
        "layers": layers,
        "distance": distance,
        "over_budget": int(sum(n > layers for n in needed)),
    }


def _min_mean_max(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "-"
    return f"min {min(values):g}, mean {np.mean(values):.{digits}f}, max {max(values):g}"


def format_summary(summary: dict, title: str = "") -> str:
    """Human-readable multi-line text of :func:`summarize`'s result."""
    shapes = ", ".join("x".join(map(str, shape)) for shape in summary["shapes"]) or "-"
    lines = [
        f"{title}{': ' if title else ''}{summary['images']} images, shape(s) {shapes}",
        f"objects per image: {_min_mean_max(summary['objects'])} "
        f"(total {sum(summary['objects'])})",
        f"foreground under overlap: {100 * summary['overlap_fraction']:.1f}% pooled; per image "
        f"{_min_mean_max([round(100 * v, 1) for v in summary['overlap_fraction_per_image']])} %",
        f"adjacency degree (t = {summary['distance']:g} px): mean {summary['degree_mean']:.2f}, "
        f"max {summary['degree_max']}",
        f"layers a greedy colouring needs: {_min_mean_max(summary['layers_needed'])}; "
        f"{summary['over_budget']} image(s) need more than N = {summary['layers']}",
    ]
    return "\n".join(lines)


def _palette(count: int) -> np.ndarray:
    """``count + 1`` distinct RGB colours (golden-ratio hues); index 0 unused."""
    hues = (np.arange(count + 1) * 0.618033988749895 % 1.0 * 179).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 230), np.full_like(hues, 255)], axis=-1)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def preview_image(sample: Sample) -> np.ndarray:
    """The normalised first image channel next to it with coloured object outlines (uint8 RGB).

    Returns
    -------
    numpy.ndarray
        ``(H, 2 W + 4, 3)`` uint8 array.
    """
    plane = sample.image[..., 0].astype(np.float64)
    low, high = np.percentile(plane, (1.0, 99.8))
    grey = np.clip((plane - low) / max(high - low, 1e-9) * 255.0, 0, 255).astype(np.uint8)
    base = np.repeat(grey[..., None], 3, axis=-1)
    outlined = base.copy()
    colours = _palette(int(sample.stack.max()))
    for layer in sample.stack:
        padded = np.pad(layer, 1, mode="edge")
        edge = np.zeros(layer.shape, dtype=bool)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            edge |= padded[dy:dy + layer.shape[0], dx:dx + layer.shape[1]] != layer
        edge &= layer > 0
        outlined[edge] = colours[layer[edge]]
    gap = np.full((grey.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([base, gap, outlined], axis=1)


def write_preview(samples: Sequence[Sample], path: str, max_images: int = 4) -> None:
    """Write a PNG with :func:`preview_image` of the first ``max_images`` samples, one per row."""
    rows = [preview_image(sample) for sample in list(samples)[:max_images]]
    if not rows:
        raise ValueError(f"{path}: no samples to preview")
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255)
              for row in rows]
    write_image_atomic(path, np.concatenate(padded, axis=0))


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"option {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    if value in ("None", "none", "null"):
        return key, None
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(dataset: str, argv: Sequence[str] | None = None) -> int:
    """Command line of ``python -m datasets.<dataset>``: summary, preview, optional download.

    Parameters
    ----------
    dataset : str
        One of :data:`datasets.DATASETS`.
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0 success, 2 bad data or arguments).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    module = importlib.import_module(f"datasets.{dataset}")
    parser = argparse.ArgumentParser(
        prog=f"python -m datasets.{dataset}",
        description=f"Summarise the {dataset} dataset as layernet sees it (objects, overlap, "
                    "adjacency, layers needed) and optionally write a preview PNG.",
        epilog=f"Example: python -m datasets.{dataset} --data-dir DATA --split train "
               "--preview preview.png",
    )
    parser.add_argument("--data-dir", required=dataset != "synthetic",
                        help="dataset folder (official layout, see the module docstring)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="default train")
    parser.add_argument("--seed", type=int, default=0, help="train/val split seed (default 0)")
    parser.add_argument("--limit", type=int, help="summarise only the first LIMIT images")
    parser.add_argument("--preview", metavar="PNG", help="write a preview image here")
    parser.add_argument("--preview-count", type=int, default=4,
                        help="images in the preview (default 4)")
    parser.add_argument("--distance", type=float, default=15.0,
                        help="adjacency distance in pixels (default 15, the paper's t)")
    parser.add_argument("--layers", type=int, default=8,
                        help="number of layers N of the model (default 8)")
    parser.add_argument("-o", "--option", action="append", type=_parse_option, default=[],
                        metavar="KEY=VALUE",
                        help="loader option, e.g. -o size=None or -o channel=w1 (repeatable)")
    if hasattr(module, "download"):
        parser.add_argument("--download", action="store_true",
                            help="first download and extract the official files into --data-dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    options = dict(args.option)
    if args.limit is not None and "limit" in inspect.signature(module.load).parameters:
        options["limit"] = args.limit  # read only what is summarised
    try:
        if getattr(args, "download", False):
            module.download(args.data_dir)
        samples = load_dataset(dataset, args.data_dir, args.split, args.seed, **options)
        if args.limit is not None:
            samples = samples[: args.limit]
        print(format_summary(summarize(samples, args.distance, args.layers),
                             title=f"{dataset} ({args.split}, seed {args.seed})"))
        if args.preview:
            write_preview(samples, args.preview, args.preview_count)
            print(f"preview written to {args.preview}")
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
