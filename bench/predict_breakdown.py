#!/usr/bin/env python
"""What one prediction costs, stage by stage, on real images: a trained layernet model against a
trained StarDist2D, timed in the same run (calls interleaved, medians).

    python bench/predict_breakdown.py --model models/worms --data bbbc010 \\
        --data-dir ../shared/data/BBBC010 --split val --stardist runs/sd-bbbc/model

The images of one split of a dataset (e.g. BBBC010's 7 validation wells) are cropped to their
central ``--side``² pixels and written as TIFF files in their original intensities, so that every
candidate starts from a file on disk as ``predict.py`` does. Per image and candidate the stages
are timed separately:

* layernet (once per ``--precision``): read the file, percentile normalisation, the network
  (padding and, for ``input_scale`` models, resizing included), Algorithm 1, writing the label
  stack (``.layers.tif``) and writing the overlay PNG (what ``predict.py`` writes by default);
* StarDist (``--stardist``, a model folder as written by ``bench/stardist_baseline.py``): read,
  the same normalisation, its network (``model.predict``), its non-maximum suppression and
  polygon rendering (``predict_instances`` minus ``predict``, both timed), writing its label image.

Each stage is the median of ``--repeats`` calls; the table gives the mean over the images of
these medians (ms per image), the end-to-end sum, and the network's convolution GFLOP per image.
Before the stages, the end-to-end call of the library itself (``predict_image`` then
``write_prediction``) is timed too, so that the sum of the stages can be checked against it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from layernet.cli import parse_key_values, quiet_tensorflow

quiet_tensorflow()

import numpy as np  # noqa: E402


def central_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The central ``side`` x ``side`` pixels of an ``(H, W, ...)`` image (all of a smaller
    axis)."""
    top = max(0, (image.shape[0] - side) // 2)
    left = max(0, (image.shape[1] - side) // 2)
    return image[top:top + side, left:left + side]


def as_file_dtype(image: np.ndarray) -> np.ndarray:
    """The image as uint8 / uint16 when its float values are integers in range, else float32."""
    if np.all(np.mod(image, 1) == 0) and image.min() >= 0:
        if image.max() <= 255:
            return image.astype(np.uint8)
        if image.max() <= 65535:
            return image.astype(np.uint16)
    return image.astype(np.float32)


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of one call and its result."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def layernet_stages(predictor: Any, path: str, prefix: str) -> tuple[dict[str, float], int]:
    """Seconds of each stage of predicting one image file, and the number of objects."""
    from layernet.export import write_prediction
    from layernet.io import as_channels, read_image
    from layernet.instances import num_objects

    seconds: dict[str, float] = {}
    seconds["read"], raw = timed(lambda: as_channels(
        read_image(path), expected_channels=predictor.config.channels))
    seconds["normalise"], image = timed(lambda: predictor.normalize(raw))
    seconds["network"], (foreground, layering) = timed(
        lambda: predictor.maps_normalized(image))
    seconds["post-processing"], stack = timed(
        lambda: predictor.instances_from_maps(foreground, layering))
    seconds["write label stack"], _ = timed(
        lambda: write_prediction(prefix, stack, raw, overlay=False))
    seconds["write overlay PNG"], _ = timed(
        lambda: write_prediction(prefix + "-overlay", stack, raw, overlay=True))
    # the second call also writes the label stack again: count only the overlay
    seconds["write overlay PNG"] = max(0.0, seconds["write overlay PNG"]
                                       - seconds["write label stack"])
    return seconds, num_objects(stack)


def stardist_stages(model: Any, path: str, out: str, low: float, high: float
                    ) -> tuple[dict[str, float], int]:
    """Seconds of each stage of StarDist on one image file, and the number of objects."""
    from layernet.io import as_channels, read_image, write_label_stack
    from layernet.normalize import percentile_normalize

    seconds: dict[str, float] = {}
    seconds["read"], raw = timed(lambda: as_channels(read_image(path), expected_channels=1))
    seconds["normalise"], image = timed(lambda: percentile_normalize(raw, low, high)[..., 0])
    seconds["network"], _ = timed(lambda: model.predict(image))
    whole, (labels, _) = timed(lambda: model.predict_instances(image,
                                                               show_tile_progress=False))
    seconds["post-processing"] = max(0.0, whole - seconds["network"])
    seconds["write label stack"], _ = timed(lambda: write_label_stack(out, labels[None]))
    seconds["write overlay PNG"] = 0.0
    return seconds, int(labels.max())


def library_end_to_end(predictor: Any, path: str, prefix: str) -> float:
    """Seconds of what predict.py runs for one file: read, predict_image, write_prediction."""
    from layernet.export import write_prediction
    from layernet.io import as_channels, read_image
    from layernet.tiling import predict_image

    start = time.perf_counter()
    raw = as_channels(read_image(path), expected_channels=predictor.config.channels)
    result = predict_image(predictor, raw)
    write_prediction(prefix, result.stack, raw, overlay=True)
    return time.perf_counter() - start


STAGES = ("read", "normalise", "network", "post-processing", "write label stack",
          "write overlay PNG")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder, model file or shipped name")
    parser.add_argument("--data", required=True, help="dataset name (e.g. bbbc010)")
    parser.add_argument("--data-dir", help="dataset folder")
    parser.add_argument("--data-option", metavar="KEY=VALUE", action="append", default=[],
                        help="dataset option, as for train.py (repeatable)")
    parser.add_argument("--split", default="val", help="split whose images are timed (val)")
    parser.add_argument("--side", type=int, default=448, help="central crop side (448)")
    parser.add_argument("--stardist", metavar="DIR",
                        help="StarDist2D model folder (bench/stardist_baseline.py's OUT/model)")
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"],
                        help="layernet compute precisions to time (float32 mixed_bfloat16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per image (3)")
    args = parser.parse_args(argv)

    from bench.speed import conv_flops, cpu_description
    from datasets import load_dataset
    from layernet.batch_predict import load_predictor
    from layernet.io import write_image_atomic
    model_path = args.model
    samples = load_dataset(args.data, args.data_dir, split=args.split,
                           **parse_key_values(args.data_option))
    folder = tempfile.mkdtemp(prefix="layernet-breakdown-")
    paths = []
    for sample in samples:
        path = os.path.join(folder, f"{sample.name}.tif")
        crop = central_crop(sample.image, args.side)
        write_image_atomic(path, as_file_dtype(crop[..., 0] if crop.shape[-1] == 1 else crop))
        paths.append(path)
    shape = central_crop(samples[0].image, args.side).shape[:2]

    candidates: dict[str, Callable[[str, str], tuple[dict[str, float], int]]] = {}
    flops: dict[str, float] = {}
    predictors = {}
    for precision in args.precision:
        predictor = load_predictor(model_path, precision=precision)
        predictors[precision] = predictor
        name = f"layernet {'bf16' if 'bfloat16' in precision else precision}"
        candidates[name] = (lambda p: lambda path, out: layernet_stages(p, path, out))(predictor)
        scale = predictor.config.input_scale
        net_side = max(1, round(args.side * scale))
        flops[name] = conv_flops(predictor.net, net_side, predictor.config.channels)
    if args.stardist:
        from stardist.models import StarDist2D

        base, name = os.path.split(os.path.abspath(args.stardist.rstrip("/")))
        star = StarDist2D(None, name=name, basedir=base)
        low, high = (predictors[args.precision[0]].config.normalize_low,
                     predictors[args.precision[0]].config.normalize_high)
        candidates["StarDist"] = lambda path, out: stardist_stages(star, path, out + ".tif",
                                                                   low, high)
        flops["StarDist"] = conv_flops(star.keras_model, args.side, 1)

    print(f"{os.cpu_count()} CPU cores of {cpu_description()}; {len(paths)} {args.data} "
          f"{args.split} images cropped to {shape[0]}x{shape[1]}; model {model_path}; "
          f"medians of {args.repeats} interleaved calls per image", flush=True)
    per_image: dict[str, list[dict[str, float]]] = {name: [] for name in candidates}
    objects: dict[str, int] = {name: 0 for name in candidates}
    whole: dict[str, list[float]] = {name: [] for name in predictors}
    for index, path in enumerate(paths):
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in candidates}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for name, run in candidates.items():
                seconds, count = run(path, os.path.join(folder, f"{name}-{index}"))
                if repeat:
                    runs[name].append(seconds)
                else:
                    objects[name] += count
        for name in candidates:
            per_image[name].append({stage: statistics.median(r[stage] for r in runs[name])
                                    for stage in STAGES})
        for precision, predictor in predictors.items():
            whole[precision].append(statistics.median(
                library_end_to_end(predictor, path, os.path.join(folder, f"whole-{index}"))
                for _ in range(args.repeats)))
        print(f"  image {index + 1}/{len(paths)} done", flush=True)

    names = list(candidates)
    print("\n| stage, ms per image | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    totals = {name: 0.0 for name in names}
    for stage in STAGES:
        cells = []
        for name in names:
            value = statistics.fmean(image[stage] for image in per_image[name]) * 1e3
            totals[name] += value
            cells.append(f"{value:.1f}")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print("| **end to end (sum)** | " + " | ".join(f"**{totals[n]:.0f}**" for n in names) + " |")
    without_overlay = [totals[n] - statistics.fmean(i["write overlay PNG"] for i in per_image[n])
                       * 1e3 for n in names]
    print("| end to end without the overlay | " + " | ".join(f"{v:.0f}" for v in without_overlay)
          + " |")
    print("| network GFLOP per image | " + " | ".join(f"{flops[n] / 1e9:.1f}" for n in names)
          + " |")
    print("| objects found (all images) | " + " | ".join(str(objects[n]) for n in names) + " |")
    for precision in predictors:
        print(f"library end to end (read, predict_image, write_prediction), {precision}: "
              f"{statistics.fmean(whole[precision]) * 1e3:.0f} ms per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
