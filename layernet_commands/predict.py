"""Segment images with a trained layernet model; overlapping objects come out in separate layers.

    python predict.py image.tif
    python predict.py --model worms image.tif              (a pretrained model, by name)
    python predict.py --model runs/demo-overlap plates/*.png --out results --save-rois
    python predict.py --model runs/demo-overlap --backend onnx plates/   (after exporting it)

Inputs are image files (TIFF, PNG, JPEG, ...; 8/16-bit or float; gray or multi-channel, pick one
with --channel), folders (every image file in them) and glob patterns. Each image is normalised
exactly as in training (percentiles of the run's config). Images larger than a tile are predicted
tile by tile with overlap and stitched, so objects crossing tile borders stay whole.

Outputs per image, beside the input or in --out:

    <name>.layers.tif    label stack L x H x W (every object in one slice, overlapping objects
                         in different slices, as few slices as the overlaps need), compressed;
                         Fiji opens it as a stack, napari as labels. --output-format bigtiff:
                         a tiled BigTIFF; zarr: <name>.layers.zarr, an OME-Zarr (NGFF 0.4)
    <name>.overlay.png   the image with every object tinted and outlined in its own colour
    <name>.masks/        --save-masks: one 0/255 PNG per object (0001.png, ...)
    <name>.rois.zip      --save-rois: Fiji ROI Manager zip, one polygon per object
    <name>.coco.json     --save-coco: COCO annotations with RLE masks
    <name>.flat.tif      --save-flat: one label image (overlaps go to the smaller object)
    <name>.prob.tif      --save-prob: float32 maps, slice 1 foreground, then the N layers
    <name>.layermaps.png --save-layer-maps: the image, the foreground and each of the N layer
                         activation maps side by side (as the paper's Figures 3 and 5)

Very large images (TIFF/BigTIFF inputs of more than 25 megapixels, all TIFFs with --strips
always, and zarr/OME-Zarr inputs) are read and predicted strip by strip, with memory bounded by a
strip of tiles: objects are stitched across tiles as they become final and written as they go, the
label stack as a tiled BigTIFF (or --output-format zarr), the overlay at a reduced size (longest
side 4096); --save-rois and --save-coco stay exact. See "Very large images" in the README.

The network runs on the next image (or batch of tiles) while the last one is post-processed and
written (--sequential turns this off; the files are the same). --workers N spreads the files over
N processes with one model each and the CPU cores shared out among them. --tta averages the
network's maps over the 8 flips and rotations of each image (8 times the network's time).

A file that cannot be read or processed is reported on one line and skipped; the exit code is 1
if any input failed, 2 for a usage or model error, 0 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from layernet.backends import BACKENDS
from layernet.cli import (add_tile_options, check_tile_options, quiet_tensorflow, run_command,
                          setup_logging, threshold_overrides)
from layernet.config import PRECISIONS

quiet_tensorflow()

logger = logging.getLogger("predict")

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders of images, or glob patterns")
    parser.add_argument("--model", metavar="RUN", help="run folder, model file (best.h5) or a "
                        "pretrained model's name (worms, cells: see models/README.md); "
                        "default: the newest run folder under runs/")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: beside each input)")
    parser.add_argument("--channel", type=int, metavar="C",
                        help="use only channel C (0-based) of multi-channel images")
    parser.add_argument("--precision", choices=("auto",) + PRECISIONS,
                        help="compute precision of the network (default: the run's, or float32 "
                        "where this machine would only emulate it; auto = bf16 on a GPU or a "
                        "CPU with bf16 instructions, else float32)")
    parser.add_argument("--backend", choices=BACKENDS, default="keras",
                        help="what runs the network: keras (default) or onnx = ONNX Runtime on "
                        "the model.onnx that 'python -m layernet.export_model RUN --format onnx' "
                        "wrote into the run folder (float32; needs requirements-export.txt); "
                        "normalisation, tiling, --tta and post-processing are the same")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the network's maps over the 8 "
                        "flips and rotations of each image (or tile) before post-processing; "
                        "8 network passes instead of 1")
    tiling = parser.add_argument_group("tiling (large images)")
    add_tile_options(tiling)
    tiling.add_argument("--strips", choices=("auto", "always", "never"), default="auto",
                        help="predict TIFF inputs strip by strip, memory bounded by a strip "
                        "of tiles: auto = those of more than 25 megapixels (default), always = "
                        "all of them, never = read them whole; zarr inputs always go in strips")
    tiling.add_argument("--output-format", choices=("auto", "tif", "bigtiff", "zarr"),
                        default="auto",
                        help="label stack format: tif (ImageJ hyperstack), bigtiff (tiled "
                        "BigTIFF, .layers.tif) or zarr (OME-Zarr, .layers.zarr); auto = tif, "
                        "or bigtiff for images predicted in strips (default auto)")
    post = parser.add_argument_group("post-processing (default: the run's values)")
    post.add_argument("--tau", type=float, help="threshold of foreground and layers")
    post.add_argument("--min-size", type=int, help="smallest object in pixels")
    outputs = parser.add_argument_group("additional outputs")
    outputs.add_argument("--save-masks", action="store_true", help="one mask PNG per object")
    outputs.add_argument("--save-rois", action="store_true", help="Fiji ROI Manager zip")
    outputs.add_argument("--save-coco", action="store_true", help="COCO RLE annotations (JSON)")
    outputs.add_argument("--save-flat", action="store_true", help="one flat label image")
    outputs.add_argument("--save-prob", action="store_true", help="raw probability maps")
    outputs.add_argument("--save-layer-maps", action="store_true",
                         help="one PNG with the image, the foreground and every layer map")
    outputs.add_argument("--no-overlay", action="store_true", help="skip the overlay PNG")
    speed = parser.add_argument_group("speed")
    speed.add_argument("--workers", type=int, default=1, metavar="N",
                       help="predict with N processes, one model each, TensorFlow threads "
                       "shared out (default 1: in this process)")
    speed.add_argument("--dask", metavar="SCHEDULER",
                       help="predict on a Dask cluster: a scheduler address (tcp://host:8786) "
                       "or local:N for N worker processes here; each worker loads the model "
                       "once; files go to the workers one each, and the tile batches of an "
                       "image predicted in strips are spread over them (inputs and --out must "
                       "be reachable by the workers under the same paths; needs the big extra)")
    speed.add_argument("--sequential", action="store_true",
                       help="post-process and write each image before the network starts on "
                       "the next (default: overlapped, same results)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, only errors")
    parser.add_argument("--verbose", action="store_true", help="more log output")
    args = parser.parse_args(argv)
    check_tile_options(parser, args)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.dask and args.workers > 1:
        parser.error("--dask and --workers: choose one (local:N starts N Dask workers)")
    if args.dask and args.sequential:
        parser.error("--sequential applies to prediction in this process, not to --dask")
    if args.backend == "onnx" and args.precision not in (None, "float32"):
        parser.error("--precision applies to the keras backend; the ONNX model computes in "
                     "float32")
    return args


def _is_output(path: str) -> bool:
    from layernet.export import OUTPUT_SUFFIXES

    name = os.path.basename(path)
    return name.startswith(".") or any(name.endswith(suffix) for suffix in OUTPUT_SUFFIXES.values())


def collect_inputs(patterns: list[str]) -> tuple[list[str], list[str]]:
    """Expand files, folders and globs into image paths (in order, without repeats).

    A folder gives its image files (and zarr images), a pattern the files it matches
    (:func:`layernet.files.collect_inputs`), a zarr folder itself; outputs of earlier
    predictions (``*.layers.tif``, ``*.layers.zarr``, ...) are left out.

    Returns
    -------
    files : list of str
        Paths to process.
    problems : list of str
        One message per argument that yielded nothing.
    """
    from layernet.files import collect_inputs as collect, is_image_file
    from layernet.lazy_image import is_zarr_path

    def accept(path: str) -> bool:
        return not _is_output(path) and (is_zarr_path(path) or (is_image_file(path)
                                                                and os.path.isfile(path)))

    files: list[str] = []
    problems: list[str] = []
    for pattern in patterns:  # a zarr image is a folder, but one input
        found, trouble = (([pattern], []) if is_zarr_path(pattern) else
                          collect([pattern], accept=accept,
                                  accept_matched=lambda path: (
                                      not _is_output(path)
                                      and (os.path.isfile(path) or is_zarr_path(path)))))
        files.extend(found)
        problems.extend(trouble)
    unique: dict[str, str] = {}
    for path in files:  # a path reached twice (also spelt differently) is kept once
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values()), problems


def output_prefix(path: str, out_dir: str | None) -> str:
    """``<out or input folder>/<input name without extension>``."""
    stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    return os.path.join(out_dir if out_dir else os.path.dirname(os.path.abspath(path)), stem)


def main(argv: list[str] | None = None) -> int:
    """Segment the images that ``argv`` (default ``sys.argv[1:]``) names; write their outputs.

    Returns the exit code: 1 if any input failed (each is reported in one line), else 0. Bad
    options or a bad model raise ``ValueError``, ``OSError`` or ``RuntimeError``.
    """
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    from layernet import runfolder

    files, problems = collect_inputs(args.inputs)
    prefixes = [output_prefix(path, args.out) for path in files]
    seen: dict[str, str] = {}
    for path, prefix in zip(files, prefixes):
        if prefix in seen:
            raise ValueError(f"{path} and {seen[prefix]} would write the same outputs "
                             f"{prefix}.*; rename one or predict them into different --out folders")
        seen[prefix] = path
    if not files:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        raise ValueError("no input images")

    if args.backend == "onnx":
        from layernet.backends import require, resolve_onnx_model

        model_path, config = resolve_onnx_model(args.model or runfolder.newest_run("runs"))
        require("onnxruntime")
    else:
        model_path = runfolder.resolve_model_path(args.model or runfolder.newest_run("runs"))
        config = runfolder.config_for_model(model_path)
    # the heavy imports (TensorFlow) only once the inputs and the model file are checked
    from tqdm import tqdm

    from layernet import batch_predict

    if not args.dask:  # with --dask the workers resolve it (this process needs no TensorFlow)
        from layernet.model import resolve_precision

        args.precision = resolve_precision(args.precision)

    changes = threshold_overrides(args.tau, args.min_size)
    options = batch_predict.PredictOptions(
        channel=args.channel, tile_size=args.tile_size, tile_overlap=args.tile_overlap,
        tile_batch=args.tile_batch, overlay=not args.no_overlay, masks=args.save_masks,
        rois=args.save_rois, coco=args.save_coco, flat=args.save_flat, prob=args.save_prob,
        layer_maps=args.save_layer_maps, overlapped=not args.sequential,
        layers_format=args.output_format, strips=args.strips)
    if changes:
        config = config.replace(**changes)
    jobs = [(index, path, prefix) for index, (path, prefix) in enumerate(zip(files, prefixes))]
    logger.info("model %s (UNet-%s, %d layers, %s backend); %d image(s)", model_path,
                config.size, config.layers, args.backend, len(files))
    if args.tta:
        logger.info("test-time augmentation: 8 network passes per image or tile batch")
    if args.out:
        os.makedirs(args.out, exist_ok=True)

    failures = list(problems)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    total_objects = 0
    bar = tqdm(total=len(files), unit="image", disable=True if args.quiet else None,
               file=sys.stderr)

    def report(result: batch_predict.FileResult) -> None:
        nonlocal total_objects
        bar.set_postfix_str(os.path.basename(result.path), refresh=False)
        bar.update(1)
        if result.error is not None:
            failures.append(result.error)
            tqdm.write(f"error: {result.error}", file=sys.stderr)
            return
        total_objects += result.objects
        logger.debug("%s: %d objects%s", result.path, result.objects,
                     f" ({result.tiles} tiles)" if result.tiles > 1 else "")

    tiles = {"bar": None, "path": None, "done": 0}  # the bar of the tiles of the current file

    def on_tiles(path: str, done: int, total: int) -> None:
        """A second bar for the tiles of a large image (shown on a terminal only)."""
        if tiles["bar"] is not None and (tiles["path"] != path or done < tiles["done"]):
            tiles["bar"].close()  # the last file stopped on an error
            tiles["bar"] = None
        if tiles["bar"] is None:
            tiles.update(bar=tqdm(total=total, unit="tile", leave=False, file=sys.stderr,
                                  desc=os.path.basename(path),
                                  disable=True if args.quiet else None), path=path, done=0)
        tiles["bar"].update(done - tiles["done"])
        tiles["done"] = done
        if done >= total:
            tiles["bar"].close()
            tiles["bar"] = None

    try:
        if args.dask:
            from layernet.distributed import ModelSpec, open_client, predict_files_dask

            spec = ModelSpec(model_path, args.precision, tuple(sorted(changes.items())),
                             args.tta, args.backend)
            with open_client(args.dask) as client:
                predict_files_dask(client, spec, jobs, options, report, on_tiles)
        elif args.workers > 1:
            batch_predict.predict_files_in_processes(
                model_path, jobs, options, args.workers, report, precision=args.precision,
                config_changes=changes, tta=args.tta, backend=args.backend)
        else:
            predictor = batch_predict.load_predictor(model_path, args.precision, changes,
                                                     tta=args.tta, backend=args.backend)
            batch_predict.predict_files(predictor, jobs, options, report, on_tiles)
    finally:
        if tiles["bar"] is not None:
            tiles["bar"].close()
        bar.close()
    done = len(files) - (len(failures) - len(problems))
    print(f"predicted {done} of {len(files)} image(s), {total_objects} objects"
          + (f"; {len(failures)} failed" if failures else ""), file=sys.stderr)
    return 1 if failures else 0


def run(argv: list[str] | None = None) -> NoReturn:
    """The console script ``layernet-predict`` and ``python predict.py``: :func:`main` with
    one-line errors (:func:`layernet.cli.run_command`)."""
    run_command(main, argv)
