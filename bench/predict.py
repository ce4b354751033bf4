#!/usr/bin/env python
"""Where the time of predicting one image goes, for a 448 x 448 and a 2048 x 2048 image.

For each side, a synthetic cell scene (a mosaic of 256 px synthetic scenes, so objects are dense
at every size) is predicted exactly as ``predict.py`` does (:func:`layernet.tiling.predict_image`;
2048 px is tiled, 512 px tiles) and written with the default outputs (``.layers.tif`` and
``.overlay.png``). Reported, as the median over ``--repeats`` runs after one warm-up run:

* normalize:   percentile normalisation of the whole image;
* network:     the network on the image or on all its tiles;
* postprocess: Algorithm 1 (and, when tiled, tile stitching) on the network's maps;
* write:       writing the label stack TIFF and the overlay PNG;
* ideal pp:    post-processing of *ideal* maps made from the ground truth (foreground = objects,
               one layer per label-stack slice), i.e. what a well-trained model produces — an
               untrained model's noisy maps hold thousands of fragments and are the worst case;
* peak MB:     peak of memory allocated by Python/NumPy during one whole prediction + writing
               (tracemalloc; TensorFlow's own buffers are not included), and the process's
               maximum resident set size (ru_maxrss) at the end of that size.

Without ``--model`` an untrained UNet with the default architecture (UNet-M, 64 filters, 8 layers;
``--size``/``--filters`` change it) is used: the weights do not change the network time. The
ideal-map post-processing of the untiled size is the median of at least 10 runs. Example::

    python bench/predict.py --model runs/demo-overlap --sides 448 2048 --repeats 3

``--folder K`` times what ``predict.py`` does on a folder instead: K synthetic ``side`` x ``side``
16-bit TIFFs (``--sides``, first value) read, predicted and written (default outputs) by
:func:`layernet.batch_predict.predict_files`, in the same run:

* network only: the network alone on the K normalised images (the speed to approach);
* sequential:   read, normalise, network, post-process, write, one image after the other
                (``predict.py --sequential``);
* overlapped:   post-processing and writing in a background thread while the network runs on
                the next image (``predict.py``, the default);
* workers N:    ``predict.py --workers N`` (``--workers``, default 2), total wall time with the
                workers' start-up (importing TensorFlow, loading the model), and per image once
                all workers are ready.

Seconds per image and the ratio to the sequential time (``x faster``), and whether the written
files are byte-identical. The in-process model is traced on one image first. Example::

    python bench/predict.py --size S --filters 16 --folder 8 --sides 448 --workers 2
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

POSTPROCESS_GOAL_MS = 20.0
"""Goal of the issue: post-processing of a 448 x 448 image in at most 20 ms."""


def synthetic_mosaic(side: int, block_size: int = 256, seed: int = 0, kind: str = "cells"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A ``side`` x ``side`` synthetic image made of ``block_size`` px synthetic scenes.

    Parameters
    ----------
    side : int
        Side of the result (the mosaic is cropped to it).
    block_size : int, optional
        Side of each synthetic scene.
    seed : int, optional
        Seed; scene ``i`` uses ``default_rng([seed, i])``.
    kind : str, optional
        Synthetic scene kind (``cells`` or ``worms``).

    Returns
    -------
    image : numpy.ndarray
        float32 ``(side, side, 1)`` raw intensities.
    stack : numpy.ndarray
        int32 label stack ``(L, side, side)`` with ids unique over the mosaic.
    """
    from datasets.synthetic import generate_sample

    blocks = -(-side // block_size)
    samples = [generate_sample(np.random.default_rng([seed, index]), kind, block_size)
               for index in range(blocks * blocks)]
    layers = max(sample.stack.shape[0] for sample in samples)
    full = blocks * block_size
    image = np.zeros((full, full, 1), np.float32)
    stack = np.zeros((layers, full, full), np.int32)
    offset = 0
    for index, sample in enumerate(samples):
        y, x = divmod(index, blocks)
        window = (slice(y * block_size, (y + 1) * block_size),
                  slice(x * block_size, (x + 1) * block_size))
        image[window] = sample.image
        block = sample.stack
        stack[(slice(0, block.shape[0]),) + window] = np.where(block > 0, block + offset, 0)
        offset += int(block.max())
    return image[:side, :side], stack[:, :side, :side]


def ideal_maps(stack: np.ndarray, layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps of a perfect network: foreground 0.9 on objects, layer ``k`` 0.9 on slice ``k``."""
    foreground = np.where(np.any(stack > 0, axis=0), 0.9, 0.1).astype(np.float32)
    layering = np.full(stack.shape[1:] + (layers,), 0.05, np.float32)
    for index in range(min(stack.shape[0], layers)):
        layering[stack[index] > 0, index] = 0.9
    return foreground, layering


def _load_predictor(model: str | None, size: str | None, filters: int | None):
    from layernet.config import Config
    from layernet.inference import Predictor

    if model:
        from layernet import runfolder

        net, config = runfolder.load_trained_model(model)
    else:
        from layernet.model import build_model

        changes = {key: value for key, value in (("size", size), ("filters", filters)) if value}
        config = Config(**changes).validate()
        net = build_model(config)
    return Predictor(net, config)


def bench_side(predictor, side: int, repeats: int, folder: str) -> dict[str, float]:
    """Time one side; return medians in ms and memory in MB."""
    from layernet.export import write_prediction
    from layernet.postprocess import postprocess
    from layernet.tiling import auto_tile_size, default_overlap, predict_image, predict_tiled

    config = predictor.config
    image, stack = synthetic_mosaic(side)
    prefix = os.path.join(folder, f"bench-{side}")
    runs: dict[str, list[float]] = {key: [] for key in
                                    ("normalize", "network", "postprocess", "write", "ideal")}
    tiles = 1
    for repeat in range(repeats + 1):
        timings: dict[str, float] = {}
        result = predict_image(predictor, image, timings=timings)
        clock = time.perf_counter()
        write_prediction(prefix, result.stack, image)
        timings["write"] = time.perf_counter() - clock
        tiles = result.tiles
        if repeat:  # the first run traces the network
            for key in ("normalize", "network", "postprocess", "write"):
                runs[key].append(timings.get(key, 0.0))
    foreground, layering = ideal_maps(stack, config.layers)
    tile = auto_tile_size(config.stride)
    maps = np.concatenate([foreground[..., None], layering], axis=-1)
    for _ in range(max(10, repeats) if side <= tile else repeats):  # cheap: more runs, less noise
        clock = time.perf_counter()
        if side <= tile:
            postprocess(foreground, layering, tau=config.tau, min_size=config.min_size,
                        overlap_layers=config.overlap_layers, connectivity=config.connectivity)
        else:
            predict_tiled(maps, lambda batch: (batch[..., 0], batch[..., 1:]), tile,
                          default_overlap(tile, config.stride), tau=config.tau,
                          min_size=config.min_size, overlap_layers=config.overlap_layers,
                          connectivity=config.connectivity)
        runs["ideal"].append(time.perf_counter() - clock)
    tracemalloc.start()
    result = predict_image(predictor, image)
    write_prediction(prefix, result.stack, image)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    row = {key: 1000.0 * statistics.median(values) for key, values in runs.items()}
    row.update(side=side, tiles=tiles, objects=int(np.unique(result.stack).size - 1),
               peak_mb=peak / 2 ** 20,
               rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return row


def _save_untrained_run(folder: str, size: str | None, filters: int | None) -> str:
    """A run folder holding an untrained model (``config.json`` + ``best.h5``); return it."""
    import keras

    from layernet import runfolder
    from layernet.config import Config
    from layernet.model import build_model

    changes = {key: value for key, value in (("size", size), ("filters", filters)) if value}
    config = Config(**changes).validate()
    keras.utils.set_random_seed(0)
    run = os.path.join(folder, "run")
    os.makedirs(run, exist_ok=True)
    config.save(os.path.join(run, runfolder.CONFIG_FILE))
    runfolder.save_model_atomic(build_model(config), os.path.join(run, runfolder.BEST_FILE))
    return run


def _same_outputs(first: str, second: str) -> bool:
    import filecmp

    names = sorted(os.listdir(first))
    return names == sorted(os.listdir(second)) and \
        filecmp.cmpfiles(first, second, names, shallow=False)[0] == names


def bench_folder(args: argparse.Namespace) -> int:
    """Time predict.py's folder modes (see the module doc); print one table."""
    import tifffile

    from layernet.batch_predict import (PredictOptions, load_predictor, predict_files,
                                        predict_files_in_processes)

    side, count = args.sides[0], args.folder
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or _save_untrained_run(folder, args.size, args.filters)
        images = os.path.join(folder, "images")
        os.makedirs(images)
        paths = []
        for index in range(count + 1):  # image 0 traces the network
            image, _ = synthetic_mosaic(side, seed=index)
            paths.append(os.path.join(images, f"image{index:03d}.tif"))
            tifffile.imwrite(paths[-1], (image[..., 0] * 100).astype(np.uint16))
        predictor = load_predictor(model)
        config = predictor.config

        def jobs(out: str) -> list[tuple[int, str, str]]:
            os.makedirs(out, exist_ok=True)
            return [(index, path, os.path.join(out, os.path.splitext(os.path.basename(path))[0]))
                    for index, path in enumerate(paths[1:])]

        failures: list[str] = []
        objects: list[int] = []

        def report(result) -> None:
            if result.error:
                failures.append(result.error)
            objects.append(result.objects)

        predict_files(predictor, jobs(os.path.join(folder, "warm-up"))[:1],
                      PredictOptions(overlapped=False), report)
        from layernet.io import as_channels, read_image

        normalized = [predictor.normalize(as_channels(read_image(path))) for path in paths[1:]]
        clock = time.perf_counter()
        for image in normalized:
            predictor.maps_batch_normalized(image[None])
        rows = [("network only", time.perf_counter() - clock, None)]
        outputs = {}
        for name, overlapped in (("sequential", False), ("overlapped", True)):
            outputs[name] = os.path.join(folder, name)
            work = jobs(outputs[name])
            clock = time.perf_counter()
            predict_files(predictor, work, PredictOptions(overlapped=overlapped), report)
            rows.append((name, time.perf_counter() - clock, None))
        ready: list[float] = []
        done_after_ready: list[float] = []

        def report_worker(result) -> None:
            report(result)
            if len(ready) == args.workers:
                done_after_ready.append(time.perf_counter())

        name = f"workers {args.workers}"
        outputs[name] = os.path.join(folder, "workers")
        work = jobs(outputs[name])
        clock = time.perf_counter()
        predict_files_in_processes(model, work, PredictOptions(), args.workers, report_worker,
                                   on_ready=lambda _: ready.append(time.perf_counter()))
        end = time.perf_counter()
        steady = ((end - ready[-1]) * count / len(done_after_ready)
                  if len(ready) == args.workers and done_after_ready else None)
        rows.append((name, end - clock, steady))
        identical = all(_same_outputs(outputs["sequential"], outputs[key])
                        for key in outputs if key != "sequential")
    print(f"model: {args.model or 'untrained'} UNet-{config.size}, {config.filters} filters, "
          f"{config.layers} layers; {count} images of {side} x {side} px, "
          f"{os.cpu_count()} CPU cores (load average before: {load:.1f}); "
          f"{sum(objects) // max(len(objects), 1)} objects per image")
    print(f"{'mode':<14} {'total s':>8} {'s/image':>8} {'x faster':>9}")
    baseline = rows[1][1]
    for mode, seconds, steady in rows:
        print(f"{mode:<14} {seconds:>8.2f} {seconds / count:>8.3f} {baseline / seconds:>9.2f}")
        if steady is not None:
            print(f"{'  once ready':<14} {'':>8} {steady / count:>8.3f} {baseline / steady:>9.2f}")
    print(f"identical files in every mode: {'yes' if identical else 'NO'}"
          + (f"; {len(failures)} failed: {failures[:2]}" if failures else ""))
    return 0 if identical and not failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="run folder or model file (default: untrained UNet-M)")
    parser.add_argument("--size", choices=("S", "M", "L"),
                        help="untrained model: UNet size (default M)")
    parser.add_argument("--filters", type=int, help="untrained model: first-level filters (64)")
    parser.add_argument("--sides", type=int, nargs="+", default=[448, 2048],
                        help="image sides (default 448 2048)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    parser.add_argument("--folder", type=int, default=0, metavar="K",
                        help="time predict.py on a folder of K images instead (see above)")
    parser.add_argument("--workers", type=int, default=2,
                        help="--folder: processes of the multi-process mode (default 2)")
    args = parser.parse_args(argv)
    if args.folder:
        return bench_folder(args)
    predictor = _load_predictor(args.model, args.size, args.filters)
    config = predictor.config
    print(f"model: {args.model or 'untrained'} UNet-{config.size}, {config.filters} filters, "
          f"{config.layers} layers; median of {args.repeats} runs; times in ms per image")
    header = (f"{'side':>6} {'tiles':>5} {'objects':>7} {'normalize':>9} {'network':>9} "
              f"{'postproc':>9} {'write':>8} {'ideal pp':>9} {'peak MB':>8} {'RSS MB':>8}")
    print(header)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for side in args.sides:
            row = bench_side(predictor, side, args.repeats, folder)
            rows.append(row)
            print(f"{row['side']:>6} {row['tiles']:>5} {row['objects']:>7} "
                  f"{row['normalize']:>9.1f} {row['network']:>9.1f} {row['postprocess']:>9.1f} "
                  f"{row['write']:>8.1f} {row['ideal']:>9.1f} {row['peak_mb']:>8.1f} "
                  f"{row['rss_mb']:>8.1f}", flush=True)
    for row in rows:
        if row["side"] == 448:
            ideal, actual = row["ideal"], row["postprocess"]
            verdict = "met" if ideal <= POSTPROCESS_GOAL_MS else "NOT met"
            print(f"goal: post-processing at 448 px <= {POSTPROCESS_GOAL_MS:.0f} ms: {verdict} "
                  f"({ideal:.1f} ms on ideal maps, {actual:.1f} ms on this model's maps)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
